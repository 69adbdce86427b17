"""Properties of ``otcl.sinkhorn`` that hold for every problem, checked with hypothesis.

Each property is checked against an independent oracle or an exact identity: the marginal
constraints, symmetries of the problem (transpose, cost shift, permutations), the first-order
conditions of the unbalanced problem, ``ot.emd2`` for ``eps -> 0``, a direct NumPy/SciPy
implementation of the Sinkhorn rounds for ``tol=None``, and separate solves for a batch.
Problem sizes are small (``n, m <= 12``) and hypothesis is bounded (25 examples, no deadline).

Conventions: ``P_ij = exp((f_i + g_j - C_ij) / eps)``, ``t = rho / (rho + eps)``,
``K = exp(-C / eps)``, ``u = exp(f / eps)``, ``v = exp(g / eps)``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import ot
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.special import logsumexp

import otcl

SETTINGS = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
    derandomize=True,  # a fixed set of examples: the suite is reproducible on every machine
)
DOMAINS = ("kernel", "stabilized", "log")
MAX_ITER = 20_000
TOL = 1e-11


@dataclass(frozen=True)
class Spec:
    """A random problem, described by what hypothesis draws (the arrays come from a seed)."""

    n: int
    m: int
    seed: int
    scale: float  # costs are uniform in [0, scale]
    eps: float  # eps / scale in [0.05, 1]: every domain is valid in float64
    zero_a: int
    zero_b: int
    rho_a: float
    rho_b: float
    mass_b: float

    def arrays(self, factory: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rng = np.random.default_rng(self.seed)
        return factory(
            rng,
            self.n,
            self.m,
            cost_scale=self.scale,
            mass_b=self.mass_b,
            zero_a=self.zero_a,
            zero_b=self.zero_b,
        )

    def solve(self, C, a, b, **kw) -> otcl.Transport:
        kw.setdefault("tol", TOL)
        kw.setdefault("max_iter", MAX_ITER)
        kw.setdefault("rho_a", self.rho_a)
        kw.setdefault("rho_b", self.rho_b)
        return otcl.sinkhorn(C, a, b, eps=self.eps, **kw)


@st.composite
def specs(draw: Any, *, relaxed: bool | None = False, max_n: int = 12) -> Spec:
    """Problems; ``relaxed=False`` balanced, ``True`` unbalanced or semi-relaxed, ``None`` any."""
    n = draw(st.integers(1, max_n))
    m = draw(st.integers(1, max_n))
    scale = draw(st.sampled_from([0.1, 1.0, 10.0]))
    eps = scale * draw(st.floats(0.05, 1.0))
    if relaxed is None:
        relaxed = draw(st.booleans())
    rho_a = rho_b = math.inf
    mass_b = 1.0
    if relaxed:
        choices = [math.inf, 0.3 * scale, 3.0 * scale]
        rho_a, rho_b = draw(
            st.tuples(st.sampled_from(choices), st.sampled_from(choices)).filter(
                lambda r: not (math.isinf(r[0]) and math.isinf(r[1]))
            )
        )
        mass_b = draw(st.sampled_from([0.5, 1.0, 2.0]))
    return Spec(
        n=n,
        m=m,
        seed=draw(st.integers(0, 2**32 - 1)),
        scale=scale,
        eps=eps,
        zero_a=draw(st.integers(0, (n - 1) // 3)),
        zero_b=draw(st.integers(0, (m - 1) // 3)),
        rho_a=rho_a,
        rho_b=rho_b,
        mass_b=mass_b,
    )


def _exponent(rho: float, eps: float) -> float:
    return 1.0 if math.isinf(rho) else rho / (rho + eps)


def _reference_rounds(C, a, b, eps, rho_a, rho_b, rounds):
    """``rounds`` Sinkhorn rounds written directly with SciPy (the oracle for ``tol=None``)."""
    t_a, t_b = _exponent(rho_a, eps), _exponent(rho_b, eps)
    f, g = np.zeros(C.shape[0]), np.zeros(C.shape[1])
    with np.errstate(divide="ignore"):
        log_a, log_b = np.log(a), np.log(b)
    for _ in range(rounds):
        f = t_a * eps * (log_a - logsumexp((g[None, :] - C) / eps, axis=1))
        g = t_b * eps * (log_b - logsumexp((f[:, None] - C) / eps, axis=0))
    with np.errstate(invalid="ignore"):
        return np.exp((f[:, None] + g[None, :] - C) / eps)


# ------------------------------------------------------------------------ feasibility, symmetries


@SETTINGS
@given(spec=specs())
def test_balanced_plan_is_feasible(problem_factory, spec):
    C, a, b = spec.arrays(problem_factory)
    for domain in DOMAINS:
        T = spec.solve(C, a, b, domain=domain)
        assert T.converged is True, (domain, T.error)
        assert np.all(T.plan >= 0)
        # the row error is the stopping criterion; the column marginal is exact up to roundoff
        assert np.abs(T.plan.sum(1) - a).sum() <= 2 * TOL
        assert np.abs(T.plan.sum(0) - b).sum() <= 1e-13
        assert T.marginal_error_a <= 2 * TOL and T.marginal_error_b <= 1e-13
        np.testing.assert_allclose(T.row_mass, T.plan.sum(1), rtol=1e-12, atol=1e-300)
        # zero-mass entries carry exactly zero mass
        assert np.all(T.plan[a == 0] == 0.0) and np.all(T.plan[:, b == 0] == 0.0)


@SETTINGS
@given(spec=specs(relaxed=None))
def test_transposed_problem_gives_transposed_plan(problem_factory, spec):
    C, a, b = spec.arrays(problem_factory)
    T = spec.solve(C, a, b)
    Tt = spec.solve(C.T.copy(), b, a, rho_a=spec.rho_b, rho_b=spec.rho_a)
    assert T.converged and Tt.converged
    np.testing.assert_allclose(Tt.plan, T.plan.T, rtol=0, atol=1e-8 * T.plan.max())


@SETTINGS
@given(spec=specs(), shift=st.floats(-50.0, 50.0))
def test_balanced_plan_invariant_to_cost_shift(problem_factory, spec, shift):
    """``C + c`` changes ``f + g`` by ``c`` and leaves the balanced plan unchanged."""
    C, a, b = spec.arrays(problem_factory)
    T = spec.solve(C, a, b)
    Ts = spec.solve(C + shift * spec.scale, a, b)
    assert T.converged and Ts.converged
    np.testing.assert_allclose(Ts.plan, T.plan, rtol=0, atol=1e-8 * T.plan.max())


@SETTINGS
@given(spec=specs(relaxed=None), data=st.data())
def test_permuting_rows_and_columns_permutes_the_plan(problem_factory, spec, data):
    C, a, b = spec.arrays(problem_factory)
    pi = np.array(data.draw(st.permutations(range(spec.n))))
    sigma = np.array(data.draw(st.permutations(range(spec.m))))
    T = spec.solve(C, a, b)
    Tp = spec.solve(C[pi][:, sigma], a[pi], b[sigma])
    assert T.converged and Tp.converged
    np.testing.assert_allclose(Tp.plan, T.plan[pi][:, sigma], rtol=0, atol=1e-8 * T.plan.max())


@SETTINGS
@given(spec=specs(relaxed=None))
def test_domains_agree(problem_factory, spec):
    """Kernel, stabilized and log domains compute the same iteration (all valid here)."""
    C, a, b = spec.arrays(problem_factory)
    plans = {}
    for domain in DOMAINS:
        T = spec.solve(C, a, b, domain=domain)
        assert T.converged is True and T.domain == domain
        plans[domain] = T.plan
    scale = plans["log"].max()
    for domain in ("kernel", "stabilized"):
        np.testing.assert_allclose(plans[domain], plans["log"], rtol=0, atol=1e-8 * scale)


@SETTINGS
@given(spec=specs())
def test_large_rho_recovers_the_balanced_plan(problem_factory, spec):
    """``rho = 1e8``: ``t = 1 - eps / (rho + eps)`` differs from 1 by ~1e-9, and so does the
    plan (relative; checked to 1e-6).

    The unbalanced stopping residual ``max |Δ log u|`` is stopped at 1e-7, not lower: the gauge
    ``(f + c, g - c)``, which leaves the plan unchanged, is fixed only by the marginal penalties
    and contracts at the rate ``1 - (1 - t_a) - (1 - t_b) ≈ 1 - 2e-9`` per round, so the residual
    stays near ``(1 - t) |c| / eps`` long after the plan has converged.
    """
    C, a, b = spec.arrays(problem_factory)
    T = spec.solve(C, a, b)
    rho = 1e8 * spec.scale
    Tr = spec.solve(C, a, b, rho_a=rho, rho_b=rho, tol=1e-7, max_iter=5000)
    assert T.converged and Tr.converged
    np.testing.assert_allclose(Tr.plan, T.plan, rtol=0, atol=1e-6 * T.plan.max())


@pytest.mark.parametrize("seed", range(4))
def test_small_eps_approaches_exact_ot(problem_factory, seed):
    """``eps -> 0``: ``<C, P_eps>`` tends to ``OT(a, b) = ot.emd2``.

    Bound: ``P_eps`` minimises ``<C, P> - eps H(P)`` over the transport polytope, so
    ``0 <= <C, P_eps> - OT <= eps (H(P_eps) - H(P*)) <= eps min(H(a), H(b))`` since
    ``H(P_eps) <= H(a) + H(b)`` and ``H(P*) >= max(H(a), H(b))`` (this is below the textbook
    ``eps log(n m)``). ``1e-9`` absorbs the row-marginal error (``<= tol`` times ``max C``).
    """
    rng = np.random.default_rng(100 + seed)
    n, m = 6 + seed, 8 - seed
    C, a, b = problem_factory(rng, n, m)
    exact = ot.emd2(a, b, C)
    h = min(-np.sum(a * np.log(a)), -np.sum(b * np.log(b)))
    gaps = []
    for eps in (0.1, 0.03, 0.01, 0.003):
        T = otcl.sinkhorn(C, a, b, eps=eps, tol=1e-10, max_iter=200_000)
        assert T.converged is True
        gap = float(T.transport_cost) - exact
        assert -1e-9 <= gap <= eps * h + 1e-9, (eps, gap, eps * h)
        gaps.append(gap)
    assert gaps[-1] <= 0.003 * h + 1e-9


@SETTINGS
@given(spec=specs(relaxed=True))
def test_unbalanced_first_order_conditions(problem_factory, spec):
    """``P 1 = a^t_a (K v)^(1 - t_a)`` and ``P^T 1 = b^t_b (K^T u)^(1 - t_b)`` at the solution.

    The column equation holds to roundoff (the last update is a column update); the row
    equation to the stopping tolerance on ``max |Δ log u|``.
    """
    C, a, b = spec.arrays(problem_factory)
    T = spec.solve(C, a, b)
    assert T.converged is True
    t_a, t_b = _exponent(spec.rho_a, spec.eps), _exponent(spec.rho_b, spec.eps)
    K = np.exp(-C / spec.eps)
    u, v = np.exp(T.f / spec.eps), np.exp(T.g / spec.eps)
    np.testing.assert_allclose(T.plan.sum(1), a**t_a * (K @ v) ** (1 - t_a), rtol=1e-9)
    np.testing.assert_allclose(T.plan.sum(0), b**t_b * (K.T @ u) ** (1 - t_b), rtol=1e-12)
    np.testing.assert_allclose(T.row_mass, T.plan.sum(1), rtol=1e-12)
    np.testing.assert_allclose(T.col_mass, T.plan.sum(0), rtol=1e-12)


# ------------------------------------------------------------------------------------ batches


@SETTINGS
@given(spec=specs(relaxed=None, max_n=8), batch=st.integers(1, 4), domain=st.sampled_from(DOMAINS))
def test_batch_equals_separate_solves(problem_factory, spec, batch, domain):
    """Each slice of a ``(B, n, m)`` solve equals its own solve, with its own ``n_iter`` and
    ``converged`` (converged slices keep iterating with the batch, so plans agree to tol)."""
    rng = np.random.default_rng(spec.seed)
    C, a, b = problem_factory(rng, spec.n, spec.m, batch=batch, mass_b=spec.mass_b)
    C = C * spec.scale * rng.uniform(0.3, 1.0, size=(batch, 1, 1))  # different conditioning
    Tb = spec.solve(C, a, b, domain=domain, tol=1e-10)
    assert Tb.plan.shape == (batch, spec.n, spec.m)
    assert Tb.n_iter.shape == Tb.converged.shape == Tb.error.shape == (batch,)
    for k in range(batch):
        T = spec.solve(C[k], a[k], b[k], domain=domain, tol=1e-10)
        assert T.n_iter == Tb.n_iter[k]
        assert T.converged == Tb.converged[k]
        np.testing.assert_allclose(Tb.plan[k], T.plan, rtol=0, atol=1e-8 * T.plan.max())
        np.testing.assert_allclose(Tb.f[k] + Tb.g[k][0], T.f + T.g[0], rtol=0, atol=1e-7)


def test_batch_reports_per_problem_convergence(problem_factory):
    """A batch with an easy and a hard problem: only the easy one converges in the budget."""
    rng = np.random.default_rng(5)
    C, a, b = problem_factory(rng, 6, 6, batch=2)
    C[0] *= 0.01  # nearly constant cost: converges in a few rounds
    with pytest.warns(otcl.ConvergenceWarning, match="1 of 2 OT problem"):
        T = otcl.sinkhorn(C, a, b, eps=0.02, tol=1e-9, max_iter=40)
    assert T.converged.tolist() == [True, False]
    assert T.n_iter[0] < 40 and T.n_iter[1] == 40
    assert T.error[0] <= 1e-9 < T.error[1]


# ------------------------------------------------------------------------- numerics, contracts


@pytest.mark.parametrize("domain", ["auto", "kernel", "stabilized", "log"])
@pytest.mark.parametrize("rho", [math.inf, 0.1], ids=["balanced", "unbalanced"])
@pytest.mark.parametrize("eps", [1e-2, 3e-3, 1e-3])
def test_float32_small_eps_is_finite(backend, domain, rho, eps):
    """float32, costs in [0, 2], ``eps`` down to 1e-3 (``C / eps`` up to 2000, far outside the
    float32 exponent range of the kernel): results are finite and the plan is a valid measure.
    The kernel domain may stop early, with a warning; nothing may be NaN."""
    rng = np.random.default_rng(9)
    C = 2.0 * rng.random((10, 7))
    a = rng.random(10) + 0.05
    b = rng.random(7) + 0.05
    a, b = a / a.sum(), b / b.sum()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", otcl.ConvergenceWarning)
        T = otcl.sinkhorn(
            backend.asarray(C, "float32"),
            backend.asarray(a, "float32"),
            backend.asarray(b, "float32"),
            eps=eps,
            rho_a=rho,
            rho_b=rho,
            domain=domain,
            max_iter=300,
            tol=1e-6,
        )
    P = backend.to_numpy(T.plan)
    assert P.dtype == np.float32
    for x in (T.f, T.g, T.plan, T.row_mass, T.col_mass):
        assert np.all(np.isfinite(backend.to_numpy(x)))
    assert np.all(P >= 0)
    # the error may be +inf when the kernel domain stops at once, but never NaN
    assert not math.isnan(T.error) and np.isfinite(float(T.transport_cost))
    if domain != "kernel" and math.isinf(rho):
        # stabilized / log really iterate: the last (column) update matches b to roundoff
        np.testing.assert_allclose(P.sum(0), b, rtol=1e-4)


@pytest.mark.parametrize("domain", ["auto", "kernel", "stabilized", "log"])
@pytest.mark.parametrize("rho", [math.inf, 0.5], ids=["balanced", "unbalanced"])
def test_inputs_are_not_modified(backend, domain, rho, problem_factory):
    rng = np.random.default_rng(3)
    C, a, b = problem_factory(rng, 5, 4, batch=2, zero_a=1)
    mask = np.ones((2, 5, 4), dtype=bool)
    mask[:, 1, 2] = False
    args = [backend.asarray(x) for x in (C, a, b)]
    xmask = backend.asarray(mask, None)
    init = (backend.asarray(np.zeros((2, 5))), backend.asarray(np.zeros((2, 4))))
    copies = [backend.to_numpy(x).copy() for x in (*args, xmask, *init)]
    T = otcl.sinkhorn(*args, eps=0.1, rho_a=rho, rho_b=rho, mask=xmask, init=init, domain=domain)
    _ = (T.plan, T.log_plan, T.row_mass, T.col_mass, T.marginal_error_a, T.transport_cost)
    for before, x in zip(copies, (*args, xmask, *init), strict=True):
        np.testing.assert_array_equal(backend.to_numpy(x), before)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("domain", ["auto", "kernel", "stabilized", "log"])
def test_dtype_and_device_are_preserved(backend, dtype, domain, problem_factory):
    C, a, b = problem_factory(np.random.default_rng(4), 6, 5, batch=3)
    xC = backend.asarray(C, dtype)
    T = otcl.sinkhorn(
        xC,
        backend.asarray(a, dtype),
        backend.asarray(b, dtype),
        eps=backend.asarray(0.2, dtype),  # a 0-d array eps keeps the dtype too
        rho_b=1.0,
        domain=domain,
        tol=1e-5,
    )
    outputs = (T.f, T.g, T.plan, T.log_plan, T.row_mass, T.col_mass)
    outputs += (T.marginal_error_a, T.marginal_error_b, T.transport_cost)
    for x in outputs:
        assert type(x) is type(xC)
        assert x.dtype == backend.dtype(dtype)
        assert backend.device_of(x) == backend.device_of(xC)
    assert T.plan.shape == (3, 6, 5) and T.f.shape == (3, 6) and T.g.shape == (3, 5)


@SETTINGS
@given(spec=specs(relaxed=None))
def test_warm_start_from_the_solution_stops_at_the_first_check(problem_factory, spec):
    C, a, b = spec.arrays(problem_factory)
    cold = spec.solve(C, a, b, tol=1e-9)
    warm = spec.solve(C, a, b, tol=1e-9, init=(cold.f, cold.g))
    assert warm.converged is True
    assert warm.n_iter <= 12  # the first check is after 10 rounds (+1 log round to start)
    np.testing.assert_allclose(warm.plan, cold.plan, rtol=0, atol=1e-7 * cold.plan.max())


@pytest.mark.parametrize("domain", ["auto", "kernel", "stabilized", "log"])
@pytest.mark.parametrize("rho", [math.inf, 1.0], ids=["balanced", "unbalanced"])
def test_warm_start_after_a_perturbation_needs_fewer_rounds(problem_factory, domain, rho):
    """The use case of warm starts: re-solving after a small change of the cost."""
    rng = np.random.default_rng(12)
    C, a, b = problem_factory(rng, 10, 9)
    C2 = C + 0.02 * rng.random(C.shape)
    first = otcl.sinkhorn(C, a, b, eps=0.05, rho_a=rho, rho_b=rho, tol=1e-10, domain=domain)
    cold = otcl.sinkhorn(C2, a, b, eps=0.05, rho_a=rho, rho_b=rho, tol=1e-10, domain=domain)
    warm = otcl.sinkhorn(
        C2, a, b, eps=0.05, rho_a=rho, rho_b=rho, tol=1e-10, domain=domain,
        init=(first.f, first.g),
    )  # fmt: skip
    assert cold.converged and warm.converged
    assert warm.n_iter < cold.n_iter
    np.testing.assert_allclose(warm.plan, cold.plan, rtol=0, atol=1e-8)


@pytest.mark.parametrize("domain", ["auto", "kernel", "stabilized", "log"])
@pytest.mark.parametrize("rho", [(math.inf, math.inf), (1.0, 0.3), (math.inf, 0.3)])
@pytest.mark.parametrize("rounds", [0, 1, 2, 7, 10, 11, 23])
def test_fixed_rounds_mode(problem_factory, domain, rho, rounds):
    """``tol=None`` runs exactly ``max_iter`` rounds (checked against a direct SciPy loop),
    sets ``converged`` and ``error`` to None and never warns."""
    C, a, b = problem_factory(np.random.default_rng(rounds), 7, 5, zero_b=1)
    if not math.isinf(rho[1]):
        b = 1.5 * b
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        T = otcl.sinkhorn(
            C, a, b, eps=0.07, rho_a=rho[0], rho_b=rho[1], max_iter=rounds, tol=None, domain=domain
        )
    assert T.n_iter == rounds
    assert T.converged is None and T.error is None
    ref = _reference_rounds(C, a, b, 0.07, rho[0], rho[1], rounds)
    np.testing.assert_allclose(T.plan, ref, rtol=0, atol=1e-13)


@pytest.mark.parametrize("domain", ["auto", "kernel", "stabilized", "log"])
@pytest.mark.parametrize("rho", [math.inf, 0.5], ids=["balanced", "unbalanced"])
@pytest.mark.parametrize("max_iter", [0, 1, 3])
def test_non_convergence_warns_and_is_never_nan(cpu_backend, domain, rho, max_iter):
    be = cpu_backend
    C, a, b = (be.asarray(x) for x in _hard_problem())
    with pytest.warns(otcl.ConvergenceWarning, match="did not converge"):
        T = otcl.sinkhorn(C, a, b, eps=0.05, rho_a=rho, rho_b=rho, max_iter=max_iter, tol=1e-12,
                          domain=domain)  # fmt: skip
    assert T.converged is False
    assert T.n_iter == max_iter
    assert math.isfinite(T.error) and T.error > 1e-12
    for x in (T.f, T.g, T.plan):
        assert not np.any(np.isnan(be.to_numpy(x)))


def _hard_problem() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(21)
    C = rng.random((8, 6))
    a = rng.random(8) + 0.05
    b = rng.random(6) + 0.05
    return C, a / a.sum(), b / b.sum()


def test_warnings_can_be_switched_off():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        T = otcl.sinkhorn(*_hard_problem(), eps=0.05, max_iter=2, tol=1e-12, warn=False)
    assert T.converged is False


@SETTINGS
@given(spec=specs(relaxed=None, max_n=8), data=st.data())
def test_masked_entries_get_exactly_zero_mass(problem_factory, spec, data):
    """A mask is an infinite cost: masked entries have ``P = 0`` exactly (not just tiny) in every
    domain, and the solution is that of the kernel ``K = exp(-C / eps) * mask``: the balanced
    marginals, or the unbalanced first-order conditions, hold with that kernel."""
    C, a, b = spec.arrays(problem_factory)
    rng = np.random.default_rng(spec.seed + 1)
    mask = rng.random((spec.n, spec.m)) < data.draw(st.floats(0.2, 0.9))
    mask[np.arange(spec.n), rng.integers(0, spec.m, spec.n)] = True  # every row keeps an entry
    mask[rng.integers(0, spec.n, spec.m), np.arange(spec.m)] = True  # and every column
    t_a, t_b = _exponent(spec.rho_a, spec.eps), _exponent(spec.rho_b, spec.eps)
    K = np.exp(-C / spec.eps) * mask
    for domain in DOMAINS:
        T = spec.solve(C, a, b, mask=mask, domain=domain)
        assert T.converged is True, (domain, T.error)
        assert np.all(T.plan[~mask] == 0.0)
        assert np.all(np.isneginf(T.log_plan[~mask]))
        u, v = np.exp(T.f / spec.eps), np.exp(T.g / spec.eps)
        with np.errstate(divide="ignore"):  # 0 ** 0 = 1 where a or b has a zero entry
            rows = a**t_a * (K @ v) ** (1 - t_a)
            cols = b**t_b * (K.T @ u) ** (1 - t_b)
        np.testing.assert_allclose(T.plan.sum(1), rows, rtol=1e-9, atol=1e-300)
        np.testing.assert_allclose(T.plan.sum(0), cols, rtol=1e-12, atol=1e-300)
