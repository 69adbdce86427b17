"""Agreement of ``otcl.sinkhorn`` with POT, the reference implementation.

Convention map (otcl ↔ POT)
---------------------------
* ``otcl.sinkhorn(C, a, b, eps=eps)`` ↔ ``ot.sinkhorn(a, b, M=C, reg=eps)`` (order differs).
* ``rho_a``, ``rho_b`` ↔ ``reg_m=(rho_a, rho_b)`` of ``ot.unbalanced.sinkhorn_unbalanced``;
  ``inf`` is a hard constraint on both sides (POT accepts ``float("inf")`` in ``reg_m``, so the
  semi-relaxed problems are compared with a genuinely infinite penalty, not a large stand-in).
* Entropy ``eps * KL(P || 1)`` ↔ POT ``reg_type="entropy"`` (POT's default ``"kl"`` uses the
  reference ``a b^T`` instead, which changes the unbalanced solution).
* Potentials: ``P_ij = exp((f_i + g_j - C_ij) / eps)`` and POT's ``P = diag(u) K diag(v)``,
  ``K = exp(-C / eps)``, so ``f = eps * log(u)`` and ``g = eps * log(v)``.
* Balanced potentials are unique only up to the gauge ``(f + c, g - c)``; they are compared after
  removing the mean difference. Unbalanced potentials (any finite ``rho``) are unique and are
  compared directly.

Tolerances
----------
POT is run once per problem in float64 to ``stopThr = 1e-15`` (it reaches it in a few hundred
rounds), so it is an oracle accurate to roundoff. otcl runs to ``tol = 1e-12`` in float64: the plan
then agrees to ``1e-11`` absolute (entries are O(1 / (n m)); measured worst 3e-13) and the
scaled potentials ``f / eps`` to ``1e-9`` (the marginal error is amplified by the inverse spectral
gap of the Sinkhorn map, ~1e1–1e2 for ``eps`` in [0.02, 0.05] on unit costs; measured worst
3e-11).

In float32 every log-kernel entry ``-C_ij / eps`` carries a rounding error of about
``kappa * u`` with ``kappa = max |C| / eps`` and ``u = 2**-24``, and so does every ``f_i / eps``.
The plan's entries therefore have a relative error of about ``kappa * u + tol`` (``tol = 1e-6``,
the stopping tolerance); the bound used is 5 times that (measured worst: 0.65 times it). The
scaled potentials accumulate ``kappa * u`` per update through the fixed point, which the spectral
gap amplifies; the bound used is ``100 * kappa * u`` (measured worst: 10 times ``kappa * u``).
"""

from __future__ import annotations

import functools
import math
import warnings

import numpy as np
import ot
import pytest

import otcl

SHAPES = {"square": (8, 8), "rect": (9, 5)}
DOMAINS = ["kernel", "stabilized", "log", "auto"]
U32 = float(np.finfo(np.float32).eps) / 2  # unit roundoff of float32
TOL = {"float64": 1e-12, "float32": 1e-6}


def _cases() -> list:
    """(dtype, eps, domain): every domain wherever it is valid.

    ``eps = 0.05`` on unit costs (``kappa = 20``) is inside the float32 kernel range (43.6);
    ``eps = 0.02`` (``kappa = 50``) is inside the float64 kernel range (354) only, so it is
    float64 only (float32 at small ``eps`` is covered by the property tests).
    """
    out = []
    for dtype, eps in (("float64", 0.05), ("float32", 0.05), ("float64", 0.02)):
        for domain in DOMAINS:
            out.append(pytest.param(dtype, eps, domain, id=f"{dtype}-eps{eps}-{domain}"))
    return out


def _data(shape: str, mass_b: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n, m = SHAPES[shape]
    rng = np.random.default_rng(1234 + n * m)
    C = rng.random((n, m))
    a = rng.random(n) + 0.05
    b = rng.random(m) + 0.05
    return C, a / a.sum(), mass_b * b / b.sum()


@functools.cache
def _pot_balanced(shape: str, eps: float, method: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """POT's plan and ``(log u, log v)`` in float64 (cached: computed once per case)."""
    C, a, b = _data(shape)
    P, log = ot.sinkhorn(a, b, C, eps, method=method, stopThr=1e-15, numItermax=50_000, log=True)
    if method == "sinkhorn_log":
        log_u, log_v = log["log_u"], log["log_v"]
    else:
        log_u, log_v = np.log(log["u"]), np.log(log["v"])
    return P, log_u, log_v


@functools.cache
def _pot_unbalanced(
    shape: str, eps: float, reg_m: tuple[float, float]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    C, a, b = _data(shape, mass_b=1.5)
    with warnings.catch_warnings():
        # reg_type="entropy" always warns that its reference matrix c is set to ones
        warnings.filterwarnings("ignore", message=".*matrix c is overwritten", category=UserWarning)
        P, log = ot.unbalanced.sinkhorn_unbalanced(
            a, b, C, eps, reg_m, reg_type="entropy", stopThr=1e-15, numItermax=50_000, log=True
        )
    return P, log["logu"], log["logv"]


def _plan_atol(dtype: str, eps: float, P_ref: np.ndarray) -> float:
    if dtype == "float64":
        return 1e-11
    kappa = 1.0 / eps  # costs lie in [0, 1]
    return 5 * (kappa * U32 + TOL["float32"]) * float(P_ref.max())


def _phi_atol(dtype: str, eps: float) -> float:
    """Tolerance on the scaled potentials ``f / eps`` (dimensionless)."""
    if dtype == "float64":
        return 1e-9
    return 100 * U32 / eps


def _solve(backend, dtype, C, a, b, eps, domain, **kw):
    T = otcl.sinkhorn(
        backend.asarray(C, dtype),
        backend.asarray(a, dtype),
        backend.asarray(b, dtype),
        eps=eps,
        domain=domain,
        tol=TOL[dtype] if "tol" not in kw else kw.pop("tol"),
        max_iter=50_000,
        **kw,
    )
    assert T.converged is True
    assert T.plan.dtype == backend.dtype(dtype)
    return T


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize(("dtype", "eps", "domain"), _cases())
def test_balanced_matches_pot(backend, dtype, eps, domain, shape):
    """Balanced: plan equal to ``ot.sinkhorn`` (both ``method="sinkhorn"`` and
    ``"sinkhorn_log"``); ``f / eps = log u + c`` and ``g / eps = log v - c`` for one constant c."""
    C, a, b = _data(shape)
    T = _solve(backend, dtype, C, a, b, eps, domain)
    P = backend.to_numpy(T.plan).astype(np.float64)
    phi = backend.to_numpy(T.f).astype(np.float64) / eps
    gamma = backend.to_numpy(T.g).astype(np.float64) / eps
    for method in ("sinkhorn", "sinkhorn_log"):
        P_ref, log_u, log_v = _pot_balanced(shape, eps, method)
        np.testing.assert_allclose(P, P_ref, rtol=0, atol=_plan_atol(dtype, eps, P_ref))
        c = np.mean(phi - log_u)  # the gauge constant
        atol = _phi_atol(dtype, eps)
        np.testing.assert_allclose(phi - c, log_u, rtol=0, atol=atol)
        np.testing.assert_allclose(gamma + c, log_v, rtol=0, atol=atol)


REG_M = {
    "unbalanced": (1.0, 0.5),
    "unbalanced-small-rho": (0.1, 0.2),
    "semi-relaxed-b": (math.inf, 0.5),
    "semi-relaxed-a": (0.5, math.inf),
}

UNBALANCED_TOL = {"float64": 1e-12, "float32": 1e-5}


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("kind", list(REG_M))
@pytest.mark.parametrize(("dtype", "eps", "domain"), _cases())
def test_unbalanced_matches_pot(backend, dtype, eps, domain, kind, shape):
    """Unbalanced and semi-relaxed (``b`` has mass 1.5, ``a`` mass 1): plan and potentials
    equal to ``ot.unbalanced.sinkhorn_unbalanced(reg_m=(rho_a, rho_b), reg_type="entropy")``.

    The stopping criterion is the fixed-point residual ``max |Δ log u|``; float32 stops at 1e-5,
    just above its roundoff floor ``kappa * u ≈ 1.2e-6``, and that residual enters the float32
    bounds (plan: relative ``5 (kappa u + tol)``; potentials: ``100 kappa u + 20 tol``, measured
    worst 0.3 of it).
    """
    C, a, b = _data(shape, mass_b=1.5)
    rho_a, rho_b = REG_M[kind]
    P_ref, log_u, log_v = _pot_unbalanced(shape, eps, (rho_a, rho_b))
    T = _solve(
        backend, dtype, C, a, b, eps, domain, rho_a=rho_a, rho_b=rho_b, tol=UNBALANCED_TOL[dtype]
    )

    P = backend.to_numpy(T.plan).astype(np.float64)
    tol32 = UNBALANCED_TOL["float32"]
    plan_atol = 1e-11 if dtype == "float64" else 5 * (U32 / eps + tol32) * float(P_ref.max())
    np.testing.assert_allclose(P, P_ref, rtol=0, atol=plan_atol)

    phi_atol = _phi_atol(dtype, eps) + (0.0 if dtype == "float64" else 20 * tol32)
    phi = backend.to_numpy(T.f).astype(np.float64) / eps
    gamma = backend.to_numpy(T.g).astype(np.float64) / eps
    np.testing.assert_allclose(phi, log_u, rtol=0, atol=phi_atol)
    np.testing.assert_allclose(gamma, log_v, rtol=0, atol=phi_atol)


@pytest.mark.parametrize("domain", DOMAINS)
@pytest.mark.parametrize("relaxed", [False, True], ids=["balanced", "unbalanced"])
def test_mask_and_zero_mass_match_pot_with_infinite_cost(backend, domain, relaxed):
    """A mask is the same as an infinite cost: compare with POT on ``M = inf`` off the mask.

    POT's log-domain solver handles ``M = inf`` (``-M / reg = -inf``); the unbalanced
    kernel-domain solver handles it because ``exp(-inf) = 0``. One row of ``a`` and one column
    of ``b`` have zero mass. Masked entries must carry exactly zero mass.
    """
    rng = np.random.default_rng(7)
    n, m, eps = 7, 6, 0.05
    C = rng.random((n, m))
    a = rng.random(n) + 0.05
    a[3] = 0.0
    b = rng.random(m) + 0.05
    b[1] = 0.0
    a, b = a / a.sum(), b / b.sum()
    mask = rng.random((n, m)) > 0.35
    mask[:, 0] = True  # every row keeps an allowed entry
    mask[0, :] = True  # and so does every column
    M = np.where(mask, C, math.inf)
    if relaxed:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*matrix c is overwritten")
            P_ref = ot.unbalanced.sinkhorn_unbalanced(
                a, b, M, eps, (0.7, 0.4), reg_type="entropy", stopThr=1e-15, numItermax=50_000
            )
        kw = {"rho_a": 0.7, "rho_b": 0.4}
    else:
        with np.errstate(divide="ignore"):  # POT takes log(0) of the zero-mass entries
            P_ref = ot.sinkhorn(
                a, b, M, eps, method="sinkhorn_log", stopThr=1e-15, numItermax=50_000
            )
        kw = {}
    T = otcl.sinkhorn(
        backend.asarray(C),
        backend.asarray(a),
        backend.asarray(b),
        eps=eps,
        mask=backend.asarray(mask, None),
        tol=1e-12,
        max_iter=50_000,
        domain=domain,
        **kw,
    )
    assert T.converged is True
    P = backend.to_numpy(T.plan)
    assert np.all(P[~mask] == 0.0)
    assert np.all(P[3, :] == 0.0) and np.all(P[:, 1] == 0.0)
    np.testing.assert_allclose(P, P_ref, rtol=0, atol=1e-11)


def test_batched_matches_pot_per_problem(backend):
    """A batch of three problems of one shape: each slice equals its own POT solve."""
    rng = np.random.default_rng(11)
    B, n, m, eps = 3, 6, 4, 0.05
    C = rng.random((B, n, m))
    a = rng.random((B, n)) + 0.05
    b = rng.random((B, m)) + 0.05
    a, b = a / a.sum(-1, keepdims=True), b / b.sum(-1, keepdims=True)
    T = otcl.sinkhorn(
        backend.asarray(C),
        backend.asarray(a),
        backend.asarray(b),
        eps=eps,
        tol=1e-12,
        max_iter=50_000,
    )
    assert np.all(T.converged)
    P = backend.to_numpy(T.plan)
    for k in range(B):
        P_ref = ot.sinkhorn(a[k], b[k], C[k], eps, stopThr=1e-15, numItermax=50_000)
        np.testing.assert_allclose(P[k], P_ref, rtol=0, atol=1e-11)


def test_auto_finishes_in_the_log_domain_when_the_kernel_domain_leaves_its_range():
    """float32, unbalanced with b four times the mass of a: the cost's range puts "auto" in the
    kernel domain, whose scalings then leave float32's range. "auto" finishes in the log domain
    from the last healthy round and agrees with POT (float64); "kernel" alone stops and says so."""
    rng = np.random.default_rng(5)
    n = 32
    C = rng.uniform(0.0, 1.0, (n, n))
    a = np.full(n, 1.0 / n)
    b = 4.0 * rng.uniform(0.5, 1.5, n) / n
    eps, rho = 0.05, 10.0
    C32, a32, b32 = (x.astype(np.float32) for x in (C, a, b))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = otcl.sinkhorn(C32, a32, b32, eps=eps, rho_a=rho, rho_b=rho, max_iter=5000)
    assert res.converged and res.domain == "log"
    ref = ot.unbalanced.sinkhorn_unbalanced(a, b, C, eps, (rho, rho), reg_type="entropy",
                                            numItermax=100000, stopThr=1e-14)
    # float32: kappa u + tol per entry, amplified by the unbalanced fixed point's slow contraction
    np.testing.assert_allclose(np.asarray(res.plan, dtype=np.float64), ref, rtol=1e-4)
    with pytest.warns(otcl.ConvergenceWarning, match="left the floating-point range"):
        stopped = otcl.sinkhorn(C32, a32, b32, eps=eps, rho_a=rho, rho_b=rho, max_iter=5000,
                                domain="kernel")
    assert not stopped.converged


@pytest.mark.parametrize("dtype, offset, eps", [("float32", 1e3, 0.05), ("float64", 1e8, 1e-3)])
def test_an_offset_cost_warns_of_the_precision_it_leaves(dtype, offset, eps):
    """Balanced OT is unchanged by a constant added to the cost, but -C/eps keeps only the digits
    the offset leaves: the plan of C + offset is off by far more than that of C (POT, float64, on
    the same input values), and the call says so; the unshifted call does not warn."""
    rng = np.random.default_rng(6)
    C = rng.uniform(0.0, 1.0, (8, 6)).astype(dtype)
    shifted = (C.astype(np.float64) + offset).astype(dtype)
    a, b = np.full(8, 1 / 8, dtype=dtype), np.full(6, 1 / 6, dtype=dtype)
    exact = shifted.astype(np.float64)
    ref = ot.sinkhorn(a.astype(np.float64), b.astype(np.float64), exact - exact.min(), eps,
                      numItermax=100000, stopThr=1e-15)
    with pytest.warns(otcl.ConvergenceWarning, match="the cost is offset"):
        off = otcl.sinkhorn(shifted, a, b, eps=eps, max_iter=20000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        clean = otcl.sinkhorn(shifted - shifted.min(), a, b, eps=eps, max_iter=20000)
    err_off = np.abs(np.asarray(off.plan, dtype=np.float64) - ref).max()
    err_clean = np.abs(np.asarray(clean.plan, dtype=np.float64) - ref).max()
    assert err_off > 100 * err_clean  # the warning is about a real loss


def test_a_mass_gap_above_tol_is_named():
    """Masses 1e-8 apart pass the validation (sqrt of float64's epsilon) but keep the balanced
    row error at the gap: the call names the gap instead of only reporting non-convergence."""
    a = np.full(5, 0.2)
    b = np.full(5, 0.2) * (1 + 1e-8)
    C = np.random.default_rng(7).uniform(0, 1, (5, 5))
    with pytest.warns(otcl.ConvergenceWarning, match="total masses of a and b differ by 1e-08"):
        res = otcl.sinkhorn(C, a, b, eps=0.1, max_iter=200)
    assert not res.converged and res.error >= 0.9e-8


def test_a_cost_that_requires_grad_leaks_no_torch_warning():
    torch = pytest.importorskip("torch")
    C = torch.rand(6, 5, dtype=torch.float64, requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = otcl.sinkhorn(C, eps=0.1)
        res.plan.sum().backward()
    assert res.converged and torch.isfinite(C.grad).all()
