"""The GCA family of losses against direct formulas.

Oracles, all written here and independent of otcl: cosine similarities in NumPy, log-sum-exp
InfoNCE, NT-Xent and SupCon with ``torch.nn.functional``, a naive kernel-domain Sinkhorn
(``u = (a / K v)^t_a``, ``v = (b / K^T u)^t_b``) for the multi-step plans, POT's converged
``ot.sinkhorn`` plan, the RINCE formula of Chuang et al. from ``exp(s_ij)``, the generalised KL
``sum T log(T/P) - T + P`` and the IOT / IOT-uni definitions of their docstrings.
Everything is float64 with small batches, so the kernel domain is exact to rounding.

A two-view call ``f(z1, z2)`` is the all-views ``2N x 2N`` problem of ``[z1; z2]`` (SimCLR);
tests whose oracle is the one-direction ``N x N`` problem pass ``layout="cross"``. The official
GCA-UOT, IOT and IOT-uni are checked in detail in ``test_official_losses.py``.
"""

from __future__ import annotations

import itertools
import math

import array_api_strict
import numpy as np
import ot
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import logsumexp
from torch.nn import functional as tnf

import otcl
from otcl import alignment_loss, domain_prior, gca_ince, gca_rince, gca_uot, info_nce, rince

NAMED = ("info_nce", "gca_ince", "rince", "gca_rince", "gca_uot", "iot", "iot_uni")


# ------------------------------------------------------------------------------------------
# oracles


def cos(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    xn = x / np.sqrt((x * x).sum(1, keepdims=True))
    yn = y / np.sqrt((y * y).sum(1, keepdims=True))
    return np.einsum("id,jd->ij", xn, yn)


def pairs(N: int, d: int = 6, seed: int = 0, noise: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    z1 = rng.standard_normal((N, d))
    return z1, z1 + noise * rng.standard_normal((N, d))


def all_views(z1: np.ndarray, z2: np.ndarray, layout: str) -> np.ndarray:
    if layout == "blocked":
        return np.concatenate([z1, z2])
    z = np.empty((2 * len(z1), z1.shape[1]))
    z[0::2], z[1::2] = z1, z2
    return z


def partner(n_rows: int, layout: str) -> np.ndarray:
    N = n_rows // 2
    r = np.arange(n_rows)
    return (r + N) % n_rows if layout == "blocked" else r ^ 1


def kernel(x: np.ndarray, y: np.ndarray | None, eps: float) -> np.ndarray:
    """``K = exp(cos / eps)`` with a zero diagonal for an all-views batch (``y is None``)."""
    if y is None:
        K = np.exp(cos(x, x) / eps)
        np.fill_diagonal(K, 0.0)
        return K
    return np.exp(cos(x, y) / eps)


def sinkhorn_naive(K: np.ndarray, a: np.ndarray, b: np.ndarray, L: int, t_a: float = 1.0,
                   t_b: float = 1.0, final: str = "row") -> tuple[np.ndarray, ...]:
    """``L`` rounds of scaling from ``v = 1`` then a row step (``final="row"``, ``P^(2L+1)``),
    or ``L`` rounds ending on the column step (``final="column"``, ``P^(2L)``)."""
    v = np.ones(K.shape[1])
    u = np.ones(K.shape[0])
    for _ in range(L):
        u = (a / (K @ v)) ** t_a
        v = (b / (K.T @ u)) ** t_b
    if final == "row":
        u = (a / (K @ v)) ** t_a
    return u, v, u[:, None] * K * v[None, :]


def gen_kl(T: np.ndarray, P: np.ndarray) -> float:
    """``sum T log(T / P) - T + P`` with ``0 log 0 = 0``."""
    pos = T > 0
    return float(np.sum(T[pos] * np.log(T[pos] / P[pos])) - T.sum() + P.sum())


def gen_kl_rows(T: np.ndarray, P: np.ndarray) -> np.ndarray:
    return np.array([gen_kl(T[i:i + 1], P[i:i + 1]) for i in range(T.shape[0])])


def supcon_target(y_rows: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    T = ((y_rows[:, None] == y_rows[None, :]) & allowed).astype(float)
    return T / T.sum(1, keepdims=True)


def rince_direct(E: np.ndarray, T: np.ndarray, q: float, lam: float) -> np.ndarray:
    """Chuang et al.: ``-(pos)^q / q + (lam * sum_j E_ij)^q / q`` per row, ``pos = sum_j T_ij
    E_ij`` (``E_ii`` for pairs), with ``E`` the (column-reweighted) kernel."""
    pos = (T * E).sum(1)
    return -(pos**q) / q + (lam * E.sum(1)) ** q / q


# ------------------------------------------------------------------------------------------
# InfoNCE, NT-Xent, SupCon


@pytest.mark.parametrize("eps", [0.1, 0.5, 2.0])
def test_info_nce_is_log_sum_exp_and_kl_of_row_projection(backend, eps):
    z1, z2 = pairs(9, seed=1)
    s = cos(z1, z2) / eps
    direct = np.mean(logsumexp(s, axis=1) - np.diag(s))
    K = np.exp(s)
    P1 = K / K.sum(1, keepdims=True)  # the row projection, built here
    kl = gen_kl(np.eye(9), P1) / 9
    got = float(backend.to_numpy(info_nce(backend.asarray(z1), backend.asarray(z2), eps=eps,
                                          layout="cross")))
    assert got == pytest.approx(direct, abs=1e-12)
    assert got == pytest.approx(kl, abs=1e-12)


@pytest.mark.parametrize("layout", ["blocked", "interleaved"])
@pytest.mark.parametrize("eps", [0.2, 0.5])
def test_info_nce_all_views_is_nt_xent(layout, eps):
    z1, z2 = pairs(7, seed=2)
    z = all_views(z1, z2, layout)
    zt = torch.tensor(z)
    zn = tnf.normalize(zt, dim=1)
    logits = (zn @ zn.T) / eps
    logits = logits.masked_fill(torch.eye(len(z), dtype=torch.bool), -math.inf)
    nt_xent = tnf.cross_entropy(logits, torch.tensor(partner(len(z), layout))).item()
    assert float(info_nce(z, layout=layout, eps=eps)) == pytest.approx(nt_xent, abs=1e-12)
    assert float(info_nce(zt, layout=layout, eps=eps)) == pytest.approx(nt_xent, abs=1e-12)


@pytest.mark.parametrize("layout", ["blocked", "interleaved", "cross"])
def test_info_nce_with_labels_is_supcon_plus_target_entropy(layout):
    """With ``T_ij = 1[y_i = y_j] / |P(i)|`` on allowed entries and the row projection
    ``P``: ``KL(T_i || P_i) = sum_j T_ij log T_ij - sum_j T_ij log P_ij`` (the masses cancel, both
    rows sum to 1). The second sum is SupCon's ``mean_{p in P(i)} -log softmax_ip``; the first is
    the constant ``-log |P(i)|`` (the target's negative entropy), independent of the embeddings."""
    N, eps = 8, 0.5
    y = np.array([0, 1, 2, 0, 1, 0, 2, 3])
    z1, z2 = pairs(N, seed=3)
    if layout == "cross":
        logits = torch.tensor(cos(z1, z2)) / eps
        y_rows = torch.tensor(y)
        allowed = torch.ones(N, N, dtype=torch.bool)
        got = float(info_nce(z1, z2, labels=y, eps=eps, layout="cross"))
    else:
        z = all_views(z1, z2, layout)
        logits = torch.tensor(cos(z, z)) / eps
        allowed = ~torch.eye(2 * N, dtype=torch.bool)
        logits = logits.masked_fill(~allowed, -math.inf)
        y_rows = torch.tensor(np.tile(y, 2) if layout == "blocked" else np.repeat(y, 2))
        got = float(info_nce(z, layout=layout, labels=y, eps=eps))
    log_sm = tnf.log_softmax(logits, dim=1)
    positive = (y_rows[:, None] == y_rows[None, :]) & allowed
    n_pos = positive.sum(1)
    supcon = (-(torch.where(positive, log_sm, torch.zeros_like(log_sm))).sum(1) / n_pos).mean()
    entropy_const = (-torch.log(n_pos.double())).mean()
    assert got == pytest.approx((supcon + entropy_const).item(), abs=1e-12)


@pytest.mark.parametrize("layout", ["cross", "blocked"])
def test_metric_offset_cancels_for_balanced_losses_but_not_for_rince(layout):
    """``"cosine"`` is ``"neg_cosine" + 1``: row/column projections absorb the constant, RINCE
    sees ``e^{(cos - 1) / eps}``."""
    eps, q, lam = 0.5, 0.6, 0.1
    z1, z2 = pairs(6, seed=30)
    args, kw = ((z1, z2), {"layout": "cross"}) if layout == "cross" else (
        (all_views(z1, z2, layout),), {"layout": layout})
    for fn in (info_nce, gca_ince, otcl.iot, otcl.iot_uni):
        assert float(fn(*args, metric="cosine", **kw)) == pytest.approx(
            float(fn(*args, metric="neg_cosine", **kw)), abs=1e-12)
    if layout == "cross":
        E = np.exp((cos(z1, z2) - 1) / eps)
        pos = np.diag(E)
    else:
        E = np.exp((cos(*args, *args) - 1) / eps)
        np.fill_diagonal(E, 0.0)
        pos = E[np.arange(12), partner(12, layout)]
    expected = np.mean(-(pos**q) / q + (lam * E.sum(1)) ** q / q)
    got = float(rince(*args, metric="cosine", eps=eps, q=q, lam=lam, **kw))
    assert got == pytest.approx(expected, abs=1e-12)
    assert got != pytest.approx(float(rince(*args, eps=eps, q=q, lam=lam, **kw)), abs=1e-3)


@pytest.mark.parametrize("metric", ["dot", "sqeuclidean"])
def test_info_nce_with_other_metrics(metric):
    eps = 2.0
    z1, z2 = pairs(6, seed=31)
    C = -z1 @ z2.T if metric == "dot" else ((z1[:, None, :] - z2[None, :, :]) ** 2).sum(-1)
    s = -C / eps
    expected = np.mean(logsumexp(s, axis=1) - np.diag(s))
    got = float(info_nce(z1, z2, eps=eps, metric=metric, layout="cross"))
    assert got == pytest.approx(expected, abs=1e-12)


# ------------------------------------------------------------------------------------------
# GCA-INCE


def _case(kind: str, N: int, seed: int, eps: float) -> dict:
    """A batch, its kernel (zero on masked entries) and its target, built here."""
    z1, z2 = pairs(N, seed=seed)
    y = np.random.default_rng(seed + 100).integers(0, 3, N)
    if kind == "cross":
        return dict(args=(z1, z2), kw={"layout": "cross"}, K=kernel(z1, z2, eps), T=np.eye(N))
    if kind == "cross_labels":
        return dict(args=(z1, z2), kw={"layout": "cross", "labels": y}, K=kernel(z1, z2, eps),
                    T=supcon_target(y, np.ones((N, N), bool)))
    if kind == "blocked":
        z = all_views(z1, z2, "blocked")
        T = np.zeros((2 * N, 2 * N))
        T[np.arange(2 * N), partner(2 * N, "blocked")] = 1.0
        return dict(args=(z,), kw={"layout": "blocked"}, K=kernel(z, None, eps), T=T)
    if kind == "interleaved_labels":
        z = all_views(z1, z2, "interleaved")
        T = supcon_target(np.repeat(y, 2), ~np.eye(2 * N, dtype=bool))
        return dict(args=(z,), kw={"layout": "interleaved", "labels": y},
                    K=kernel(z, None, eps), T=T)
    if kind == "domain_prior":
        D = np.random.default_rng(seed + 200).integers(0, 2, N)
        T = domain_prior(D, 0.3, 0.05)
        return dict(args=(z1, z2), kw={"layout": "cross", "target": T}, K=kernel(z1, z2, eps),
                    T=T)
    raise AssertionError(kind)


KINDS = ("cross", "cross_labels", "blocked", "interleaved_labels", "domain_prior")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("n_iter", [0, 1, 3, 10])
def test_gca_ince_is_kl_to_naive_sinkhorn_plan(kind, n_iter):
    eps = 0.5
    c = _case(kind, 6, seed=4, eps=eps)
    T, K = c["T"], c["K"]
    _, _, P = sinkhorn_naive(K, T.sum(1), T.sum(0), n_iter)
    expected = gen_kl_rows(T, P)
    got = gca_ince(*c["args"], eps=eps, n_iter=n_iter, reduction="none", **c["kw"])
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
    if n_iter == 0:
        assert float(info_nce(*c["args"], eps=eps, **c["kw"])) == pytest.approx(
            expected.mean(), abs=1e-12)


@pytest.mark.parametrize("eps", [0.25, 0.5, 1.0])
def test_gca_ince_converged_is_kl_to_pot_plan(eps):
    """``n_iter`` large: the plan is POT's converged balanced plan followed by a row step."""
    N = 8
    z1, z2 = pairs(N, seed=5)
    C = -cos(z1, z2)
    ones = np.ones(N)
    P = ot.sinkhorn(ones, ones, C, eps, method="sinkhorn_log", numItermax=100_000,
                    stopThr=1e-15)
    P = P / P.sum(1, keepdims=True)  # the final row step (a = 1)
    expected = gen_kl(np.eye(N), P) / N
    got = float(gca_ince(z1, z2, eps=eps, n_iter=2000, layout="cross"))
    assert got == pytest.approx(expected, abs=1e-10)


def _half_step_values(C: np.ndarray, T: np.ndarray, eps: float, n_half: int) -> list:
    """``(value, plan)`` of the loss at half-steps ``k = 1..n_half`` from ``alignment_loss``."""
    out = []
    for k in range(1, n_half + 1):
        L, final = (k // 2, "row") if k % 2 else (k // 2, "column")
        val, det = alignment_loss(C, T, eps=eps, n_iter=L, final_step=final,
                                  return_details=True, reduction="sum")
        out.append((float(val), np.asarray(det.plan)))
    return out


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), N=st.integers(3, 7), eps=st.floats(0.2, 2.0),
       kind=st.sampled_from(["identity", "labels", "domain_prior"]))
def test_kl_non_increasing_over_half_steps_and_pythagorean(seed, N, eps, kind):
    """Matched marginals (``a = T 1``, ``b = T^T 1``): ``KL(T || P^(k))`` never increases, and
    ``KL(T||P^(k)) = KL(T||P^(k+1)) + KL(P^(k+1)||P^(k))`` (GCA-NOTES §3.3)."""
    rng = np.random.default_rng(seed)
    z1 = rng.standard_normal((N, 4))
    z2 = z1 + rng.uniform(0.1, 2.0) * rng.standard_normal((N, 4))
    C = -cos(z1, z2)
    if kind == "identity":
        T = np.eye(N)
    elif kind == "labels":
        T = supcon_target(rng.integers(0, 3, N), np.ones((N, N), bool))
    else:
        T = domain_prior(rng.integers(0, 3, N), float(rng.uniform(0, 1)), float(rng.uniform(0, 1)))
    K = np.exp(-C / eps)
    steps = _half_step_values(C, T, eps, 8)
    for k, (val, plan) in enumerate(steps, start=1):
        _, _, P = sinkhorn_naive(K, T.sum(1), T.sum(0), k // 2, final="row" if k % 2 else "column")
        np.testing.assert_allclose(plan, P, rtol=1e-11, atol=1e-14)
        assert val == pytest.approx(gen_kl(T, P), abs=1e-10)
    scale = max(1.0, abs(steps[0][0]))
    for (v0, P0), (v1, P1) in itertools.pairwise(steps):
        assert v1 <= v0 + 1e-12 * scale
        assert v0 - v1 == pytest.approx(gen_kl(P1, P0), abs=1e-10 * scale)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), N=st.integers(2, 10), eps=st.floats(0.1, 3.0),
       n_iter=st.integers(1, 15), layout=st.sampled_from(["cross", "blocked", "interleaved"]))
def test_gca_ince_below_info_nce(seed, N, eps, n_iter, layout):
    rng = np.random.default_rng(seed)
    z1, z2 = rng.standard_normal((N, 5)), rng.standard_normal((N, 5))
    if layout == "cross":
        args, kw = (z1, z2), {"layout": "cross"}
    else:
        args, kw = (all_views(z1, z2, layout),), {"layout": layout}
    ince = float(info_nce(*args, eps=eps, **kw))
    assert float(gca_ince(*args, eps=eps, n_iter=n_iter, **kw)) <= ince + 1e-12 * max(1, ince)


# ------------------------------------------------------------------------------------------
# RINCE and GCA-RINCE


@pytest.mark.parametrize(("q", "lam"), [(0.6, 0.01), (1.0, 0.5), (0.1, 2.0)])
@pytest.mark.parametrize("eps", [0.3, 1.0])
def test_rince_is_chuang_formula(q, lam, eps):
    z1, z2 = pairs(7, seed=6)
    E = np.exp(cos(z1, z2) / eps)  # e^{s_ij}, s = cos / eps
    expected = np.mean(-(np.diag(E) ** q) / q + (lam * E.sum(1)) ** q / q)
    got = float(rince(z1, z2, q=q, lam=lam, eps=eps, layout="cross"))
    assert got == pytest.approx(expected, abs=1e-12)
    assert float(gca_rince(z1, z2, q=q, lam=lam, eps=eps, n_iter=0, layout="cross")) == (
        pytest.approx(expected, abs=1e-12))


@pytest.mark.parametrize("layout", ["blocked", "interleaved"])
def test_rince_all_views_is_chuang_formula(layout):
    """All views: positive ``e^{s_{i p(i)}}``, the sum over every ``j != i``."""
    q, lam, eps = 0.6, 0.05, 0.5
    z = all_views(*pairs(5, seed=7), layout)
    E = kernel(z, None, eps)
    pos = E[np.arange(10), partner(10, layout)]
    expected = np.mean(-(pos**q) / q + (lam * E.sum(1)) ** q / q)
    got = float(rince(z, layout=layout, q=q, lam=lam, eps=eps))
    assert got == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("n_iter", [1, 4])
def test_gca_rince_is_rince_on_column_reweighted_kernel(kind, n_iter):
    """``-(sum_j T_ij K_ij v_j)^q / q + (lam (K v)_i)^q / q`` with ``v`` the naive Sinkhorn
    scaling (``(K v)_i = (T 1)_i / u_i`` after the final hard row step)."""
    q, lam, eps = 0.6, 0.1, 0.5
    c = _case(kind, 5, seed=8, eps=eps)
    T, K = c["T"], c["K"]
    u, v, _ = sinkhorn_naive(K, T.sum(1), T.sum(0), n_iter)
    pos = (T * K * v[None, :]).sum(1)
    neg = lam * (K @ v)
    expected = -(pos**q) / q + neg**q / q
    np.testing.assert_allclose(neg, lam * T.sum(1) / u, rtol=1e-12)
    got = gca_rince(*c["args"], eps=eps, n_iter=n_iter, q=q, lam=lam, reduction="none", **c["kw"])
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)


def test_rince_q_to_zero_with_lam_one_is_info_nce():
    """``(A^q - B^q) / q = log(A / B) + q (log^2 A - log^2 B) / 2 + O(q^2)`` with ``A = sum_j
    e^{s_ij}``, ``B = e^{s_ii}``: RINCE(lam = 1) -> InfoNCE linearly in ``q``."""
    eps = 0.5
    z1, z2 = pairs(8, seed=9)
    s = cos(z1, z2) / eps
    log_A, log_B = logsumexp(s, axis=1), np.diag(s)
    slope = np.mean(log_A**2 - log_B**2) / 2
    ince = float(info_nce(z1, z2, eps=eps, layout="cross"))
    gaps = []
    for q in (1e-2, 1e-3, 1e-4):
        r = float(rince(z1, z2, q=q, lam=1.0, eps=eps, layout="cross"))
        gaps.append(r - ince)
        assert r - ince == pytest.approx(q * slope, abs=10 * q**2 * (1 + abs(slope)) ** 2)
    assert abs(gaps[2]) < abs(gaps[1]) < abs(gaps[0])


# ------------------------------------------------------------------------------------------
# GCA-UOT


def uot_naive(K: np.ndarray, a: np.ndarray, b: np.ndarray, L: int, t_a: float,
              t_b: float) -> tuple[np.ndarray, ...]:
    """The official GCA-UOT scaling: ``L`` rounds ``u = (a / K v)^t_a``, ``v = (b / K^T u)^t_b``
    started from ``v = b``, then a row step."""
    v = b.copy()
    for _ in range(L):
        u = (a / (K @ v)) ** t_a
        v = (b / (K.T @ u)) ** t_b
    u = (a / (K @ v)) ** t_a
    return u, v, u[:, None] * K * v[None, :]


def row_kl(T: np.ndarray, P: np.ndarray) -> np.ndarray:
    """``KL(T_i / |T_i| || P_i / |P_i|)`` per row, ``0 log 0 = 0``."""
    Tn, Pn = T / T.sum(1, keepdims=True), P / P.sum(1, keepdims=True)
    pos = Tn > 0
    return np.array([np.sum(Tn[i, pos[i]] * np.log(Tn[i, pos[i]] / Pn[i, pos[i]]))
                     for i in range(T.shape[0])])


@pytest.mark.parametrize("kind", ["cross", "blocked", "interleaved_labels"])
@pytest.mark.parametrize(("rho_a", "rho_b"), [(0.2, 0.2), (0.5, 3.0)])
def test_gca_uot_row_mass_identity_and_value(kind, rho_a, rho_b):
    """The official GCA-UOT: marginals ``1/n``, ``1/m``, rounds from ``v = b`` on
    ``K = exp(-(1 - cos) / eps)``. ``P 1 = a^t (K v)^(1-t)``, ``t = rho_a / (rho_a + eps)``,
    ``v = exp(g / eps)`` from the details; the value is ``r1 row-KL(T || P) + r2 RINCE`` with
    the positive ``sum_j T_ij K_ij v_j`` and the negative ``lam (K v)_i``."""
    eps, n_iter, r1, r2, q, lam = 0.5, 6, 1.0, 0.3, 0.6, 0.05
    c = _case(kind, 6, seed=10, eps=eps)
    T = c["T"]
    K = c["K"] * math.exp(-1.0 / eps)  # metric "cosine": C = 1 - cos
    n, m = T.shape
    a, b = np.full(n, 1.0 / n), np.full(m, 1.0 / m)
    val, det = gca_uot(*c["args"], eps=eps, rho_a=rho_a, rho_b=rho_b, n_iter=n_iter, r1=r1,
                       r2=r2, q=q, lam=lam, return_details=True, **c["kw"])
    t_a, t_b = rho_a / (rho_a + eps), rho_b / (rho_b + eps)
    v = np.exp(np.asarray(det.g) / eps)
    np.testing.assert_allclose(det.row_mass, a**t_a * (K @ v) ** (1 - t_a), rtol=1e-12)
    np.testing.assert_allclose(np.asarray(det.plan).sum(1), det.row_mass, rtol=1e-12)
    np.testing.assert_allclose(det.a, a, rtol=1e-15)
    np.testing.assert_allclose(det.b, b, rtol=1e-15)
    _, v_n, P = uot_naive(K, a, b, n_iter, t_a, t_b)
    np.testing.assert_allclose(v, v_n, rtol=1e-11)
    np.testing.assert_allclose(det.plan, P, rtol=1e-11, atol=1e-300)
    pos = (T * K * v_n[None, :]).sum(1)
    rince_term = -(pos**q) / q + (lam * (K @ v_n)) ** q / q
    expected = np.mean(r1 * row_kl(T, P) + r2 * rince_term)
    assert float(val) == pytest.approx(expected, abs=1e-12)


def test_gca_uot_gives_corrupted_pairs_less_row_mass():
    rng = np.random.default_rng(11)
    N, d = 32, 16
    z1 = rng.standard_normal((N, d))
    z2 = z1 + 0.3 * rng.standard_normal((N, d))
    corrupted = rng.choice(N, 8, replace=False)
    z2[corrupted] = rng.standard_normal((8, d))  # positives replaced by unrelated vectors
    _, det = gca_uot(z1, z2, eps=0.5, rho=0.2, return_details=True, layout="cross")
    mass = np.asarray(det.row_mass)
    clean = np.setdiff1d(np.arange(N), corrupted)
    assert mass[corrupted].mean() < mass[clean].mean()
    # and the ordering follows the row's kernel mass K v, as the identity says (the cosine
    # metric's kernel is exp(cos / eps) times a constant, which leaves the order unchanged)
    v = np.exp(np.asarray(det.g) / 0.5)
    kv = kernel(z1, z2, 0.5) @ v
    assert np.all(np.argsort(mass) == np.argsort(kv))


def test_gca_uot_large_rho_approaches_balanced_kl():
    z1, z2 = pairs(8, seed=12)
    balanced = float(gca_ince(z1, z2, n_iter=10))
    gaps = [abs(float(gca_uot(z1, z2, rho=rho, r2=0.0, n_iter=10)) - balanced)
            for rho in (1e2, 1e4, 1e6)]
    assert gaps[0] > gaps[1] > gaps[2]
    assert gaps[2] < 1e-5
    assert float(gca_uot(z1, z2, rho=math.inf, r2=0.0, n_iter=10)) == pytest.approx(
        balanced, abs=1e-13)


# ------------------------------------------------------------------------------------------
# IOT


@pytest.mark.parametrize("kind", ["cross", "blocked", "interleaved_labels"])
@pytest.mark.parametrize("n_iter", [0, 1, 2, 5])
def test_iot_and_iot_uni_match_their_definitions(kind, n_iter):
    """IOT: ``-mean_i sum_j T_ij log P_ij``, ``P`` after ``n_iter + 1`` alternating projections,
    rows first, with uniform marginals of the target's mass (the official loop of ``n_iter``
    rounds). IOT-uni adds ``lam_p sum_j [Q log(Q / P) - Q + P]`` per row, with ``Q`` the mean of
    ``P`` over all allowed entries (positives included) on every allowed entry."""
    eps, lam_p = 0.5, 0.3
    c = _case(kind, 6, seed=13, eps=eps)
    T, K = c["T"], c["K"]
    n = T.shape[0]
    mass = T.sum()
    half_steps = n_iter + 1
    _, _, P = sinkhorn_naive(K, np.full(n, mass / n), np.full(n, mass / n), half_steps // 2,
                             final="row" if half_steps % 2 else "column")
    pos = T > 0
    ce = -np.array([np.sum(T[i, pos[i]] * np.log(P[i, pos[i]])) for i in range(n)])
    got_iot = otcl.iot(*c["args"], eps=eps, n_iter=n_iter, reduction="none", **c["kw"])
    np.testing.assert_allclose(got_iot, ce, rtol=0, atol=1e-12)
    allowed = K > 0
    Q = np.where(allowed, P[allowed].mean(), 0.0)
    uni = gen_kl_rows(Q, P)
    got = otcl.iot_uni(*c["args"], eps=eps, n_iter=n_iter, lam_p=lam_p, reduction="none",
                       **c["kw"])
    np.testing.assert_allclose(got, ce + lam_p * uni, rtol=0, atol=1e-12)


@pytest.mark.parametrize("layout", ["cross", "blocked"])
def test_iot_uni_of_a_uniform_plan_is_iot(layout):
    """Identical embeddings give a constant kernel on the allowed entries, so the plan is uniform
    there and ``Q = P``: no penalty. Otherwise the penalty is positive."""
    z = np.tile(np.array([[0.3, -1.0, 2.0]]), (5, 1))
    args, kw = ((z, z), {"layout": layout})
    with np.errstate(all="raise"):
        got = float(otcl.iot_uni(*args, lam_p=0.5, **kw))
    assert got == pytest.approx(float(otcl.iot(*args, **kw)), abs=1e-14)
    z1, z2 = pairs(5, seed=14)
    assert float(otcl.iot_uni(z1, z2, lam_p=0.5, layout=layout)) > float(
        otcl.iot(z1, z2, layout=layout)) + 1e-6


# ------------------------------------------------------------------------------------------
# common behaviour of the named losses


def _call(name: str, *args, **kw):
    return getattr(otcl, name)(*args, **kw)


@pytest.mark.parametrize("name", NAMED)
@pytest.mark.parametrize(("layout", "n_rows"), [(None, 12), ("cross", 6)])
def test_reductions_are_consistent(name, layout, n_rows):
    """A two-view call has ``2N`` rows (every view an anchor); ``layout="cross"`` has ``N``."""
    z1, z2 = pairs(6, seed=14)
    kw = {} if layout is None else {"layout": layout}
    rows = np.asarray(_call(name, z1, z2, reduction="none", **kw))
    assert rows.shape == (n_rows,)
    assert float(_call(name, z1, z2, reduction="sum", **kw)) == pytest.approx(rows.sum(),
                                                                            abs=1e-12)
    assert float(_call(name, z1, z2, **kw)) == pytest.approx(rows.mean(), abs=1e-12)
    assert float(_call(name, z1, z2, reduction="mean", **kw)) == pytest.approx(rows.mean(),
                                                                             abs=1e-12)
    val, det = _call(name, z1, z2, return_details=True, reduction="none", **kw)
    np.testing.assert_array_equal(val, det.per_sample)


@pytest.mark.parametrize("name", NAMED)
@pytest.mark.parametrize("layout", ["cross", "interleaved"])
def test_details_fields(name, layout):
    eps = 0.5
    z1, z2 = pairs(6, seed=15)
    offset = 1.0 if name == "gca_uot" else 0.0  # its metric is "cosine", C = 1 - cos
    if layout == "cross":
        args, kw = (z1, z2), {"layout": "cross"}
        C, allowed = offset - cos(z1, z2), np.ones((6, 6), bool)
    else:
        z = all_views(z1, z2, layout)
        args, kw, C = (z,), {"layout": layout}, offset - cos(z, z)
        allowed = ~np.eye(12, dtype=bool)
    value, det = _call(name, *args, eps=eps, return_details=True, **kw)
    assert float(value) == pytest.approx(float(_call(name, *args, eps=eps, **kw)), abs=0)
    P = np.asarray(det.plan)
    f, g = np.asarray(det.f), np.asarray(det.g)
    np.testing.assert_allclose(P[allowed], np.exp((f[:, None] + g[None, :] - C) / eps)[allowed],
                               rtol=1e-12)
    assert (P[~allowed] == 0).all()
    np.testing.assert_allclose(P.sum(1), det.row_mass, rtol=1e-12)
    np.testing.assert_allclose(det.col_mass, P.sum(0), rtol=1e-12)
    a, b = np.asarray(det.a), np.asarray(det.b)
    assert float(det.marginal_error_a) == pytest.approx(
        np.abs(P.sum(1) - a).sum() / a.sum(), abs=1e-12)
    assert float(det.marginal_error_b) == pytest.approx(
        np.abs(P.sum(0) - b).sum() / b.sum(), abs=1e-12)
    if name in ("info_nce", "gca_ince", "rince", "gca_rince"):  # a final balanced row step
        assert float(det.marginal_error_a) < 1e-14


def test_gca_ince_marginal_error_b_decays():
    z1, z2 = pairs(10, seed=16)
    errs = [float(gca_ince(z1, z2, n_iter=L, return_details=True)[1].marginal_error_b)
            for L in (0, 2, 8, 32)]
    assert errs[0] > errs[1] > errs[2] > errs[3]
    assert errs[3] < 1e-8


def _to(lib: str, x: np.ndarray, dtype: str = "float64"):
    x = x.astype(dtype) if x.dtype.kind == "f" else x
    if lib == "torch":
        return torch.tensor(x)
    if lib == "array_api_strict":
        return array_api_strict.asarray(x)
    return x.copy()


def _f(x) -> np.ndarray:
    return otcl.backend.to_numpy(x).astype(np.float64) if hasattr(x, "shape") else x


@pytest.mark.parametrize("name", NAMED)
@pytest.mark.parametrize("form", ["cross", "two_views", "blocked", "interleaved_labels",
                                  "target"])
def test_named_losses_agree_across_libraries(name, form):
    z1, z2 = pairs(6, seed=17)
    y = np.array([0, 1, 0, 2, 1, 2])
    values = {}
    for lib in ("numpy", "torch", "array_api_strict"):
        if form == "cross":
            out = _call(name, _to(lib, z1), _to(lib, z2), reduction="none", layout="cross")
        elif form == "two_views":
            out = _call(name, _to(lib, z1), _to(lib, z2), reduction="none")
        elif form == "blocked":
            out = _call(name, _to(lib, all_views(z1, z2, "blocked")), layout="blocked",
                        reduction="none")
        elif form == "interleaved_labels":
            out = _call(name, _to(lib, all_views(z1, z2, "interleaved")), layout="interleaved",
                        labels=_to(lib, y), reduction="none")
        else:
            T = np.eye(6) + 0.2 * (y[:, None] == y[None, :])
            out = _call(name, _to(lib, z1), _to(lib, z2), target=_to(lib, T), reduction="none",
                        layout="cross")
        values[lib] = _f(out)
    assert np.isfinite(values["numpy"]).all()
    np.testing.assert_allclose(values["torch"], values["numpy"], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(values["array_api_strict"], values["numpy"], rtol=1e-12,
                               atol=1e-12)


@pytest.mark.parametrize("name", NAMED)
@pytest.mark.parametrize("layout", ["cross", "blocked", "interleaved"])
def test_pair_target_value_and_gradient_equal_the_dense_target(name, layout):
    """The pair target reads Λ at its entries from the embeddings; the same target given as a
    dense matrix contracts the full log-kernel. Values and torch gradients must agree."""
    z1, z2 = pairs(6, seed=21)
    if layout == "cross":
        args, kw, T = (z1, z2), {"layout": "cross"}, np.eye(6)
    else:
        args, kw = (all_views(z1, z2, layout),), {"layout": layout}
        T = np.zeros((12, 12))
        T[np.arange(12), partner(12, layout)] = 1.0
    values, grads = [], []
    for target in (None, T):
        zs = [torch.tensor(z, requires_grad=True) for z in args]
        extra = {} if target is None else {"target": torch.tensor(target)}
        out = _call(name, *zs, **kw, **extra)
        out.backward()
        values.append(float(out.detach()))
        grads.append(np.concatenate([z.grad.numpy().ravel() for z in zs]))
    assert values[0] == pytest.approx(values[1], rel=1e-12, abs=1e-12)
    np.testing.assert_allclose(grads[0], grads[1], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", NAMED)
@pytest.mark.parametrize("lib", ["numpy", "torch", "array_api_strict"])
def test_float32_in_float32_out(name, lib):
    z1, z2 = pairs(6, seed=18)
    ref = float(_call(name, z1, z2))
    out = _call(name, _to(lib, z1, "float32"), _to(lib, z2, "float32"))
    assert str(out.dtype).endswith("float32")
    assert float(_f(out)) == pytest.approx(ref, rel=1e-5, abs=1e-5)
    rows, det = _call(name, _to(lib, z1, "float32"), _to(lib, z2, "float32"), reduction="none",
                      return_details=True)
    for arr in (rows, det.f, det.g, det.row_mass, det.plan):
        assert str(arr.dtype).endswith("float32")


@pytest.mark.parametrize("name", NAMED)
@pytest.mark.parametrize("lib", ["numpy", "torch"])
def test_inputs_are_not_modified(name, lib):
    z1, z2 = pairs(6, seed=19)
    y = np.array([0, 1, 0, 2, 1, 2])
    T = np.eye(6) + 0.1
    arrays = [_to(lib, z1), _to(lib, z2), _to(lib, all_views(z1, z2, "blocked")), _to(lib, y),
              _to(lib, T)]
    before = [_f(x).copy() for x in arrays]
    a1, a2, z, yy, TT = arrays
    _call(name, a1, a2, return_details=True)
    _call(name, a1, a2, target=TT, layout="cross")
    _call(name, z, layout="blocked", labels=yy)
    for x, x0 in zip(arrays, before, strict=True):
        np.testing.assert_array_equal(_f(x), x0)


@pytest.mark.parametrize("name", NAMED)
def test_eps_as_0d_array_equals_float(name):
    z1, z2 = pairs(6, seed=20)
    ref = float(_call(name, z1, z2, eps=0.3))
    assert float(_call(name, z1, z2, eps=np.asarray(0.3))) == pytest.approx(ref, abs=1e-13)
    t = torch.tensor(0.3, dtype=torch.float64)
    assert float(_call(name, torch.tensor(z1), torch.tensor(z2), eps=t)) == pytest.approx(
        ref, abs=1e-13)


@pytest.mark.parametrize("name", NAMED)
def test_named_loss_errors(name):
    z1, z2 = pairs(4, seed=21)
    with pytest.raises(ValueError, match="reduction"):
        _call(name, z1, z2, reduction="avg")
    for bad in (0.0, -0.5, math.nan, math.inf):
        with pytest.raises(ValueError, match="eps"):
            _call(name, z1, z2, eps=bad)
    with pytest.raises(ValueError, match="eps"):
        _call(name, z1, z2, eps=np.array([0.5, 0.5]))
    with pytest.raises(ValueError, match="labels or target"):
        _call(name, z1, z2, labels=np.arange(4), target=np.eye(4))
    with pytest.raises(ValueError, match="labels has length"):
        _call(name, z1, z2, labels=np.arange(3))
    with pytest.raises(ValueError, match="same shape"):
        _call(name, z1, z2[:3])
    with pytest.raises(TypeError, match="real floating"):
        _call(name, z1.astype(np.int64), z2.astype(np.int64))
    if name not in ("info_nce", "rince"):
        for bad in (-1, 1.5, True):
            with pytest.raises(ValueError, match="n_iter"):
                _call(name, z1, z2, n_iter=bad)


@pytest.mark.parametrize("name", ["rince", "gca_rince", "gca_uot"])
def test_rince_parameter_errors(name):
    z1, z2 = pairs(4, seed=22)
    for q in (0.0, -0.1, 1.5, math.nan):
        with pytest.raises(ValueError, match="q"):
            _call(name, z1, z2, q=q)
    for lam in (0.0, -1.0, math.inf):
        with pytest.raises(ValueError, match="lam"):
            _call(name, z1, z2, lam=lam)


def test_gca_uot_parameter_errors():
    z1, z2 = pairs(4, seed=23)
    for rho in (0.0, -0.2, math.nan):
        with pytest.raises(ValueError, match="rho"):
            gca_uot(z1, z2, rho=rho)
    with pytest.raises(ValueError, match="rho_a"):
        gca_uot(z1, z2, rho_a=-1.0)
    for r in (math.nan, math.inf):
        with pytest.raises(ValueError, match="weight"):
            gca_uot(z1, z2, r1=r)
    with pytest.raises(ValueError, match="lam_p"):
        otcl.iot_uni(z1, z2, lam_p=-0.1)


# ------------------------------------------------------------------------------------------
# alignment_loss


def test_alignment_loss_defaults_equal_gca_ince_on_the_cost():
    z1, z2 = pairs(6, seed=24)
    C = -cos(z1, z2)
    for L in (0, 3):
        assert float(alignment_loss(C, eps=0.5, n_iter=L)) == pytest.approx(
            float(gca_ince(z1, z2, eps=0.5, n_iter=L, layout="cross")), abs=1e-13)


def test_alignment_loss_divergence_mixture_and_callable():
    eps, L = 0.5, 3
    z1, z2 = pairs(6, seed=25)
    C = -cos(z1, z2)
    T = np.eye(6) + 0.2
    _, _, P = sinkhorn_naive(np.exp(-C / eps), T.sum(1), T.sum(0), L)
    kl = gen_kl_rows(T, P)
    ce = -(T * np.log(P)).sum(1)
    mix = alignment_loss(C, T, eps=eps, n_iter=L, divergence={"kl": 0.7, "cross_entropy": 0.3},
                         reduction="none")
    np.testing.assert_allclose(mix, 0.7 * kl + 0.3 * ce, atol=1e-12)

    def log_diag(target, phi, gamma, log_kernel, row_mass, xp):
        return -(phi + gamma + xp.linalg.diagonal(log_kernel))  # -log P_ii

    got = alignment_loss(C, T, eps=eps, n_iter=L, divergence=log_diag, reduction="none")
    np.testing.assert_allclose(got, -np.log(np.diag(P)), atol=1e-12)
    # a zero weight removes a term
    only_kl = alignment_loss(C, T, eps=eps, n_iter=L, divergence={"kl": 1.0, "rince": 0.0})
    assert float(only_kl) == pytest.approx(kl.mean(), abs=1e-12)


def test_alignment_loss_uniform_marginals_and_column_final_step():
    eps = 0.5
    z1, z2 = pairs(6, seed=26)
    C = -cos(z1, z2)
    K = np.exp(-C / eps)
    T = domain_prior(np.array([0, 0, 1, 1, 2, 0]), 0.5, 0.1)
    uni = np.full(6, T.sum() / 6)
    _, _, P = sinkhorn_naive(K, uni, uni, 4)
    got = alignment_loss(C, T, eps=eps, n_iter=4, marginals="uniform", reduction="none")
    np.testing.assert_allclose(got, gen_kl_rows(T, P), atol=1e-12)
    _, _, P = sinkhorn_naive(K, T.sum(1), T.sum(0), 4, final="column")
    val, det = alignment_loss(C, T, eps=eps, n_iter=4, final_step="column", reduction="none",
                              return_details=True)
    np.testing.assert_allclose(val, gen_kl_rows(T, P), atol=1e-12)
    np.testing.assert_allclose(det.plan, P, rtol=1e-12)
    assert float(det.marginal_error_b) < 1e-14  # ends on the column projection


def test_alignment_loss_with_mask():
    eps = 0.5
    z = all_views(*pairs(4, seed=27), "blocked")
    C = -cos(z, z)
    mask = ~np.eye(8, dtype=bool)
    C_filled = C.copy()
    np.fill_diagonal(C_filled, 0.0)
    T = np.zeros((8, 8))
    T[np.arange(8), partner(8, "blocked")] = 1.0
    got = alignment_loss(C_filled, T, eps=eps, n_iter=5, mask=mask)
    assert float(got) == pytest.approx(float(gca_ince(z, layout="blocked", eps=eps, n_iter=5)),
                                       abs=1e-12)


def test_alignment_loss_errors():
    C = -cos(*pairs(4, seed=28))
    with pytest.raises(ValueError, match="unknown divergence 'w1'"):
        alignment_loss(C, divergence="w1")
    with pytest.raises(ValueError, match="unknown divergence"):
        alignment_loss(C, divergence={"kl": 1.0, "l2": 1.0})
    with pytest.raises(ValueError, match="weight"):
        alignment_loss(C, divergence={"kl": math.nan})
    for q in (0.0, 1.01, -1.0, math.inf):
        with pytest.raises(ValueError, match="q"):
            alignment_loss(C, divergence="rince", q=q)
    for lam in (0.0, -0.1):
        with pytest.raises(ValueError, match="lam"):
            alignment_loss(C, divergence="rince", lam=lam)
    for n_iter in (-1, 2.0, None):
        with pytest.raises(ValueError, match="n_iter"):
            alignment_loss(C, n_iter=n_iter)
    for reduction in ("avg", None, "MEAN"):
        with pytest.raises(ValueError, match="reduction"):
            alignment_loss(C, reduction=reduction)
    with pytest.raises(ValueError, match="marginals"):
        alignment_loss(C, marginals="balanced")
    with pytest.raises(ValueError, match="final_step"):
        alignment_loss(C, final_step="both")
    with pytest.raises(ValueError, match="final_step='column' needs n_iter"):
        alignment_loss(C, n_iter=0, final_step="column")
    with pytest.raises(ValueError, match="square"):
        alignment_loss(C[:, :3])
    with pytest.raises(ValueError, match="cost"):
        alignment_loss(C[None])
    bad = C.copy()
    bad[0, 0] = math.nan
    with pytest.raises(ValueError):
        alignment_loss(bad)
    for eps in (0.0, -1.0):
        with pytest.raises(ValueError, match="eps"):
            alignment_loss(C, eps=eps)
    with pytest.raises(ValueError, match="rho_a"):
        alignment_loss(C, rho_a=-1.0)
