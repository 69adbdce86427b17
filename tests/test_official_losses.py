"""The losses as the paper's official code and the standard libraries define them.

Oracles, all written here in NumPy float64 and independent of otcl:

* NT-Xent (SimCLR, lightly's and pytorch-metric-learning's ``NTXentLoss``): the ``2N x 2N``
  softmax over ``z = [z1; z2]`` with the self-pair excluded, averaged over the ``2N`` rows;
* SupCon (Khosla et al. 2020, pytorch-metric-learning's ``SupConLoss``) on one batch;
* MoCo's InfoNCE with a queue of extra negatives;
* the official GCA-UOT (``gca_uot`` of ``gca_loss_cifar.py``) in the log domain: ``n_iter``
  rounds ``u = (a / K v)^t``, ``v = (b / K^T u)^t`` from ``v = b``, ``a = 1/n``, ``b = 1/m``,
  ``K = exp(-(1 - cos) / eps)`` with a hard self-mask, then ``r1 CE(log P) + r2 RINCE(P / u)``;
  and a literal kernel-domain transcription of the official loop;
* the official ``iot`` / ``iot_uni`` loop (row normalise, column normalise, transpose), with a
  hard self-mask in place of the official largest-cost diagonal (GCA-NOTES D2).
"""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
import torch
from scipy.special import logsumexp

import otcl
from otcl import alignment_loss, gca_ince, gca_uot, info_nce, official_config, rince

NAMED = ("info_nce", "gca_ince", "rince", "gca_rince", "gca_uot", "iot", "iot_uni")
ITERATED = ("gca_ince", "gca_rince", "gca_uot", "iot", "iot_uni")


def _call(name: str, *args, **kw):
    return getattr(otcl, name)(*args, **kw)


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.sqrt((x * x).sum(1, keepdims=True))


def pairs(N: int, d: int = 8, seed: int = 0, noise: float = 0.6) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    z1 = rng.standard_normal((N, d))
    return z1, z1 + noise * rng.standard_normal((N, d))


def problem(z1: np.ndarray, z2: np.ndarray, form: str) -> tuple[np.ndarray, ...]:
    """``(rows x, columns y, positive column p(i), self-masked)`` of a call form.

    ``"two_views"``: SimCLR, ``z = [z1; z2]``, ``p(i) = (i + N) mod 2N``; ``"cross"``: ``z1``
    against ``z2`` (which may hold extra rows, negatives only), ``p(i) = i``."""
    if form == "two_views":
        z = np.concatenate([z1, z2])
        n = len(z)
        return z, z, (np.arange(n) + n // 2) % n, True
    return z1, z2, np.arange(len(z1)), False


# ------------------------------------------------------------------------------------------
# GCA-UOT, the official loss


def gca_uot_oracle(x: np.ndarray, y: np.ndarray, p: np.ndarray, self_mask: bool, *, eps: float,
                   rho: float, n_iter: int, r1: float, r2: float, q: float,
                   lam: float) -> np.ndarray:
    """Per row ``r1 KL(e_p(i) || P_i / sum_j P_ij) + r2 [-(P_ip / u_i)^q / q
    + (lam sum_j P_ij / u_i)^q / q]`` with ``log(P_ij / u_i) = log K_ij + log v_j``."""
    n, m = len(x), len(y)
    log_k = -(1.0 - unit(x) @ unit(y).T) / eps
    if self_mask:
        np.fill_diagonal(log_k, -np.inf)
    t = 1.0 if math.isinf(rho) else rho / (rho + eps)
    log_a, log_b = np.full(n, -math.log(n)), np.full(m, -math.log(m))
    log_v = log_b.copy()  # the official loop starts from v = b
    for _ in range(n_iter):
        log_u = t * (log_a - logsumexp(log_k + log_v[None, :], axis=1))
        log_v = t * (log_b - logsumexp(log_k + log_u[:, None], axis=0))
    log_kv = logsumexp(log_k + log_v[None, :], axis=1)  # log sum_j P_ij / u_i
    log_pos = log_k[np.arange(n), p] + log_v[p]  # log P_ip / u_i
    kl = log_kv - log_pos  # -log (P_ip / sum_j P_ij): F.cross_entropy(P.log(), targets)
    rince_term = -np.exp(q * log_pos) / q + np.exp(q * (math.log(lam) + log_kv)) / q
    return r1 * kl + r2 * rince_term


def gca_uot_literal(z: np.ndarray, targets: np.ndarray, *, eps: float = 0.5, rho: float = 0.2,
                    n_iter: int = 10, r1: float = 1.0, r2: float = 0.2, q: float = 0.6,
                    lam: float = 0.01) -> float:
    """The official ``gca_uot.forward`` line by line in the kernel domain (no absorption, which
    never triggers here), with ``K_ii = 0`` and ``(P / u).sum(1)`` in the RINCE term."""
    zn = unit(z)
    n = len(z)
    K = np.exp(-(1.0 - zn @ zn.T) / eps)
    np.fill_diagonal(K, 0.0)
    u = np.ones(n) / n
    v = np.ones(n) / n
    a, b = u, v
    f1 = f2 = rho / (rho + eps)
    for _ in range(n_iter):
        u = (a / (K @ v)) ** f1
        v = (b / (K.T @ u)) ** f2
    P = np.diag(u) @ K @ np.diag(v)
    rows = np.arange(n)
    with np.errstate(divide="ignore"):
        log_p = np.log(P)
    ce = logsumexp(log_p, axis=1) - log_p[rows, targets]
    ratio = P / u[:, None]
    rince_term = -ratio[rows, targets] ** q / q + (lam * ratio.sum(1)) ** q / q
    return float(np.mean(r1 * ce + r2 * rince_term))


R_PAIRS = ((1.0, 0.2), (1.0, 1.0), (0.5, 0.02))


@pytest.mark.parametrize("form", ["two_views", "cross", "cross_queue"])
@pytest.mark.parametrize("N", [4, 16, 33])
@pytest.mark.parametrize("rho", [0.05, 0.2, 1.0, math.inf])
@pytest.mark.parametrize("eps", [0.1, 0.5])
def test_gca_uot_is_the_official_formula(eps, rho, N, form):
    z1, z2 = pairs(N, seed=N)
    if form == "cross_queue":
        z2 = np.concatenate([z2, np.random.default_rng(N + 1).standard_normal((N // 2 + 3, 8))])
    kw = {} if form == "two_views" else {"layout": "cross"}
    x, y, p, masked = problem(z1, z2, "two_views" if form == "two_views" else "cross")
    q, lam, n_iter = 0.6, 0.01, 10
    for r1, r2 in R_PAIRS:
        expected = gca_uot_oracle(x, y, p, masked, eps=eps, rho=rho, n_iter=n_iter, r1=r1, r2=r2,
                                  q=q, lam=lam)
        got = gca_uot(z1, z2, eps=eps, rho=rho, n_iter=n_iter, r1=r1, r2=r2, q=q, lam=lam, **kw)
        assert float(got) == pytest.approx(expected.mean(), rel=1e-10, abs=1e-10)
        rows = gca_uot(z1, z2, eps=eps, rho=rho, n_iter=n_iter, r1=r1, r2=r2, q=q, lam=lam,
                       reduction="none", **kw)
        assert rows.shape == (len(x),)
        np.testing.assert_allclose(rows, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("n_iter", [0, 1, 3])
@pytest.mark.parametrize("q", [0.3, 0.98])
def test_gca_uot_other_rounds_and_q(n_iter, q):
    z1, z2 = pairs(7, seed=3)
    x, y, p, masked = problem(z1, z2, "two_views")
    expected = gca_uot_oracle(x, y, p, masked, eps=0.3, rho=0.5, n_iter=n_iter, r1=1.0, r2=0.5,
                              q=q, lam=0.1)
    got = gca_uot(z1, z2, eps=0.3, rho=0.5, n_iter=n_iter, r2=0.5, q=q, lam=0.1,
                  reduction="none")
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-10)


def test_gca_uot_defaults_are_the_official_cifar10_run():
    """Defaults ``eps 0.5, n_iter 10, rho 0.2, r1 1, r2 0.2, q 0.6, lam 0.01``, metric
    ``"cosine"``: the official loop transcribed literally, on both layouts of the views."""
    z1, z2 = pairs(12, seed=5)
    N = len(z1)
    blocked = np.concatenate([z1, z2])
    expected = gca_uot_literal(blocked, (np.arange(2 * N) + N) % (2 * N))
    assert float(gca_uot(z1, z2)) == pytest.approx(expected, rel=1e-10, abs=1e-10)
    assert float(gca_uot(blocked, layout="blocked")) == pytest.approx(expected, rel=1e-10,
                                                                      abs=1e-10)
    inter = np.empty_like(blocked)
    inter[0::2], inter[1::2] = z1, z2
    targets = np.arange(2 * N) ^ 1  # the official targets: 2k <-> 2k + 1
    expected_i = gca_uot_literal(inter, targets)
    assert expected_i == pytest.approx(expected, rel=1e-12)  # a relabelling of the same batch
    assert float(gca_uot(inter, layout="interleaved")) == pytest.approx(expected_i, rel=1e-10,
                                                                        abs=1e-10)
    x, y, p, masked = problem(z1, z2, "two_views")
    oracle = gca_uot_oracle(x, y, p, masked, eps=0.5, rho=0.2, n_iter=10, r1=1.0, r2=0.2, q=0.6,
                            lam=0.01)
    assert oracle.mean() == pytest.approx(expected, rel=1e-12)  # the two oracles agree


@pytest.mark.parametrize("form", ["two_views", "cross"])
def test_gca_uot_generalized_kl_first_term(form):
    """``kl="generalized"``: the first term is ``sum_j [T_ij log(T_ij / P_ij) - T_ij + P_ij]``
    on the same official plan ``P = diag(u) K diag(v)`` (final row step ``u = (a / K v)^t``)."""
    eps, rho, n_iter, r1, r2, q, lam = 0.5, 0.2, 10, 0.7, 0.2, 0.6, 0.01
    z1, z2 = pairs(6, seed=7)
    kw = {} if form == "two_views" else {"layout": "cross"}
    x, y, p, masked = problem(z1, z2, form)
    n, m = len(x), len(y)
    log_k = -(1.0 - unit(x) @ unit(y).T) / eps
    if masked:
        np.fill_diagonal(log_k, -np.inf)
    t = rho / (rho + eps)
    log_a, log_b = np.full(n, -math.log(n)), np.full(m, -math.log(m))
    log_v = log_b.copy()
    for _ in range(n_iter):
        log_u = t * (log_a - logsumexp(log_k + log_v[None, :], axis=1))
        log_v = t * (log_b - logsumexp(log_k + log_u[:, None], axis=0))
    log_u = t * (log_a - logsumexp(log_k + log_v[None, :], axis=1))
    log_p = log_u[:, None] + log_k + log_v[None, :]
    rows = np.arange(n)
    gen_kl = -log_p[rows, p] - 1.0 + np.exp(logsumexp(log_p, axis=1))
    rince_part = gca_uot_oracle(x, y, p, masked, eps=eps, rho=rho, n_iter=n_iter, r1=0.0,
                                r2=r2, q=q, lam=lam)
    got = gca_uot(z1, z2, eps=eps, rho=rho, n_iter=n_iter, r1=r1, r2=r2, q=q, lam=lam,
                  kl="generalized", reduction="none", **kw)
    np.testing.assert_allclose(got, r1 * gen_kl + rince_part, rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="kl"):
        gca_uot(z1, z2, kl="balanced")


@pytest.mark.parametrize("N", [64, 256, 1024])
def test_gca_uot_grows_like_log_batch(N):
    """On random 128-d embeddings the official loss is about ``log(2N)`` (an InfoNCE-like value)
    for every batch size: no term grows with the batch."""
    rng = np.random.default_rng(N)
    z1, z2 = rng.standard_normal((N, 128)), rng.standard_normal((N, 128))
    value = float(gca_uot(z1, z2))
    assert abs(value - math.log(2 * N)) < 1.0


# ------------------------------------------------------------------------------------------
# InfoNCE: NT-Xent, temperature, SupCon, extra negatives


def nt_xent(z1: np.ndarray, z2: np.ndarray, tau: float) -> np.ndarray:
    """SimCLR's NT-Xent per row of ``[z1; z2]`` (lightly / PML ``NTXentLoss``)."""
    z = unit(np.concatenate([z1, z2]))
    n = len(z)
    s = z @ z.T / tau
    np.fill_diagonal(s, -np.inf)
    positive = (np.arange(n) + n // 2) % n
    return logsumexp(s, axis=1) - s[np.arange(n), positive]


@pytest.mark.parametrize("tau", [0.05, 0.1, 0.5, 1.0])
def test_info_nce_two_view_call_is_nt_xent(tau):
    z1, z2 = pairs(9, seed=11)
    expected = nt_xent(z1, z2, tau)
    assert float(info_nce(z1, z2, eps=tau)) == pytest.approx(expected.mean(), abs=1e-12)
    assert float(info_nce(z1, z2, temperature=tau)) == pytest.approx(expected.mean(), abs=1e-12)
    np.testing.assert_allclose(info_nce(z1, z2, temperature=tau, reduction="none"), expected,
                               rtol=0, atol=1e-12)
    got = info_nce(torch.tensor(z1), torch.tensor(z2), temperature=tau)
    assert float(got) == pytest.approx(expected.mean(), abs=1e-12)


def test_info_nce_default_temperature_is_lightly_default():
    z1, z2 = pairs(6, seed=12)
    assert float(info_nce(z1, z2)) == pytest.approx(nt_xent(z1, z2, 0.5).mean(), abs=1e-12)


@pytest.mark.parametrize("name", NAMED)
def test_temperature_is_an_alias_of_eps(name):
    z1, z2 = pairs(6, seed=13)
    for layout in (None, "cross"):
        kw = {} if layout is None else {"layout": layout}
        by_eps = np.asarray(_call(name, z1, z2, eps=0.3, reduction="none", **kw))
        by_t = np.asarray(_call(name, z1, z2, temperature=0.3, reduction="none", **kw))
        np.testing.assert_array_equal(by_t, by_eps)
    assert float(_call(name, z1, z2)) == float(_call(name, z1, z2, eps=0.5))
    with pytest.raises(TypeError, match="eps"):
        _call(name, z1, z2, eps=0.3, temperature=0.3)


def supcon_rows(z: np.ndarray, y: np.ndarray, tau: float) -> tuple[np.ndarray, np.ndarray]:
    """SupCon (Khosla et al. 2020, PML ``SupConLoss``) per anchor, and ``|P(i)|``: every row an
    anchor, the self-pair excluded from the softmax, positives the other rows with its label."""
    zn = unit(z)
    n = len(z)
    s = zn @ zn.T / tau
    np.fill_diagonal(s, -np.inf)
    log_prob = s - logsumexp(s, axis=1, keepdims=True)
    positive = (y[:, None] == y[None, :]) & ~np.eye(n, dtype=bool)
    n_pos = positive.sum(1)
    rows = -np.array([log_prob[i, positive[i]].sum() for i in range(n)]) / n_pos
    return rows, n_pos


@pytest.mark.parametrize("tau", [0.1, 0.5])
def test_supervised_info_nce_is_supcon(tau):
    rng = np.random.default_rng(14)
    y = np.array([0, 1, 2, 0, 1, 2, 0, 1, 3, 3, 2, 0])
    z = rng.standard_normal((len(y), 6))
    rows, n_pos = supcon_rows(z, y, tau)
    got = info_nce(z, labels=y, divergence="cross_entropy", eps=tau)
    assert float(got) == pytest.approx(rows.mean(), abs=1e-12)
    np.testing.assert_allclose(
        info_nce(z, labels=y, divergence="cross_entropy", eps=tau, reduction="none"), rows,
        rtol=0, atol=1e-12)
    kl = info_nce(z, labels=y, eps=tau)  # the default divergence "kl"
    assert float(kl) == pytest.approx(rows.mean() - np.log(n_pos).mean(), abs=1e-12)
    # GCA-INCE after no rounds is the same row projection
    assert float(gca_ince(z, labels=y, divergence="cross_entropy", eps=tau, n_iter=0)) == (
        pytest.approx(rows.mean(), abs=1e-12))
    with pytest.raises(ValueError, match="divergence"):
        info_nce(z, labels=y, divergence="w1")


@pytest.mark.parametrize("name", NAMED)
def test_single_array_needs_labels_target_or_layout(name):
    z = np.random.default_rng(15).standard_normal((6, 4))
    with pytest.raises(ValueError, match="labels"):
        _call(name, z)


def moco_info_nce(q: np.ndarray, k: np.ndarray, queue: np.ndarray, tau: float) -> np.ndarray:
    """MoCo's InfoNCE per query: logits ``[q.k+, q.k_j (j != i), q.queue] / tau``, label 0."""
    qn, kn, Qn = unit(q), unit(k), unit(queue)
    N = len(q)
    l_pos = (qn * kn).sum(1)[:, None]
    l_batch = (qn @ kn.T)[~np.eye(N, dtype=bool)].reshape(N, N - 1)
    l_queue = qn @ Qn.T
    logits = np.concatenate([l_pos, l_batch, l_queue], axis=1) / tau
    return logsumexp(logits, axis=1) - logits[:, 0]


@pytest.mark.parametrize("tau", [0.07, 0.5])
def test_info_nce_with_a_queue_is_moco(tau):
    z1, z2 = pairs(6, seed=16)
    queue = np.random.default_rng(17).standard_normal((10, 8))
    keys = np.concatenate([z2, queue])
    expected = moco_info_nce(z1, z2, queue, tau)
    got = info_nce(z1, keys, layout="cross", eps=tau, reduction="none")
    assert got.shape == (6,)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
    # RINCE with the queue: the negative sum runs over every column
    E = np.exp(unit(z1) @ unit(keys).T / tau)
    qq, lam = 0.6, 0.05
    expected_r = -(np.diag(E[:, :6]) ** qq) / qq + (lam * E.sum(1)) ** qq / qq
    np.testing.assert_allclose(rince(z1, keys, layout="cross", eps=tau, q=qq, lam=lam,
                                     reduction="none"), expected_r, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="extra negatives"):
        info_nce(z1, keys, layout="cross", labels=np.arange(6))


@pytest.mark.parametrize("n_iter", [0, 1, 3, 10])
def test_gca_ince_with_a_queue_is_sinkhorn_with_spread_column_mass(n_iter):
    """``a = 1`` on the ``N`` rows, ``b = N / M`` on the ``M`` columns, ``n_iter`` rounds from
    ``v = 1`` and a final row step; the KL to the identity on the first ``N`` columns."""
    eps = 0.5
    z1, z2 = pairs(5, seed=18)
    keys = np.concatenate([z2, np.random.default_rng(19).standard_normal((7, 8))])
    N, M = len(z1), len(keys)
    K = np.exp(unit(z1) @ unit(keys).T / eps)
    a, b = np.ones(N), np.full(M, N / M)
    v = np.ones(M)
    for _ in range(n_iter):
        u = a / (K @ v)
        v = b / (K.T @ u)
    u = a / (K @ v)
    P = u[:, None] * K * v[None, :]
    T = np.zeros((N, M))
    T[np.arange(N), np.arange(N)] = 1.0
    expected = (T * np.log(np.where(T > 0, T / P, 1.0))).sum(1) - T.sum(1) + P.sum(1)
    got, det = gca_ince(z1, keys, layout="cross", eps=eps, n_iter=n_iter, reduction="none",
                        return_details=True)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(det.b, b, rtol=1e-15)
    np.testing.assert_allclose(det.plan, P, rtol=1e-11)


# ------------------------------------------------------------------------------------------
# IOT and IOT-uni, the official loop


def iot_official(z: np.ndarray, positive: np.ndarray, *, eps: float, n_iter: int,
                 lam_p: float) -> tuple[float, float, np.ndarray, np.ndarray]:
    """The official ``iot`` / ``iot_uni`` forward with a hard self-mask.

    Returns the IOT and IOT-uni means as the official code forms them, and their per-row values
    in the batch's own orientation (the loop transposes the plan once per round)."""
    zn = unit(z)
    n = len(z)
    Probs = np.exp(-(1.0 - zn @ zn.T) / eps)
    np.fill_diagonal(Probs, 0.0)
    for _ in range(n_iter):
        Probs = Probs / Probs.sum(1, keepdims=True)
        Probs = (Probs / Probs.sum(0, keepdims=True)).T
    if n_iter >= 1:  # each round leaves unit row sums: a last row normalisation is a no-op ...
        np.testing.assert_allclose(Probs.sum(1), 1.0, rtol=1e-13)
    # ... and with no round it is the one projection of "n_iter + 1 projections, rows first"
    Probs = Probs / Probs.sum(1, keepdims=True)
    rows = np.arange(n)
    L_iot = -np.log(Probs[rows, positive]).sum() / n  # positive is an involution
    allowed = ~np.eye(n, dtype=bool)
    mean_off = Probs[allowed].mean()
    # F.kl_div(Probs.log(), Q, reduction="batchmean") over the allowed entries (Q = P = 0 on the
    # hard-masked diagonal contributes nothing)
    uni = np.sum(mean_off * (np.log(mean_off) - np.log(Probs[allowed]))) / n
    P = Probs.T if n_iter % 2 else Probs  # back to the batch's orientation
    iot_rows = -np.log(P[rows, positive])
    Q = np.where(allowed, mean_off, 0.0)
    logs = np.log(np.where(allowed, Q / np.where(allowed, P, 1.0), 1.0))
    uni_rows = (Q * logs - Q + P).sum(1)
    return L_iot, L_iot + lam_p * uni, iot_rows, iot_rows + lam_p * uni_rows


@pytest.mark.parametrize("form", ["two_views", "interleaved"])
@pytest.mark.parametrize("n_iter", [0, 1, 2, 5, 10])
@pytest.mark.parametrize("eps", [0.1, 0.5])
def test_iot_and_iot_uni_are_the_official_loop(eps, n_iter, form):
    lam_p = 0.2
    z1, z2 = pairs(7, seed=20)
    N = len(z1)
    if form == "two_views":
        z = np.concatenate([z1, z2])
        positive = (np.arange(2 * N) + N) % (2 * N)  # the official P.diag(N), P.diag(-N)
        args, kw = (z1, z2), {}
    else:
        z = np.empty((2 * N, z1.shape[1]))
        z[0::2], z[1::2] = z1, z2
        positive = np.arange(2 * N) ^ 1  # the interleaved partners (GCA-NOTES D10)
        args, kw = (z,), {"layout": "interleaved"}
    L_iot, L_uni, iot_rows, uni_rows = iot_official(z, positive, eps=eps, n_iter=n_iter,
                                                    lam_p=lam_p)
    assert float(otcl.iot(*args, eps=eps, n_iter=n_iter, **kw)) == pytest.approx(
        L_iot, rel=1e-11, abs=1e-11)
    assert float(otcl.iot_uni(*args, eps=eps, n_iter=n_iter, lam_p=lam_p, **kw)) == (
        pytest.approx(L_uni, rel=1e-11, abs=1e-11))
    np.testing.assert_allclose(otcl.iot(*args, eps=eps, n_iter=n_iter, reduction="none", **kw),
                               iot_rows, rtol=1e-11, atol=1e-11)
    np.testing.assert_allclose(otcl.iot_uni(*args, eps=eps, n_iter=n_iter, lam_p=lam_p,
                                            reduction="none", **kw),
                               uni_rows, rtol=1e-11, atol=1e-11)


def test_iot_default_is_ten_official_rounds():
    z1, z2 = pairs(6, seed=21)
    z = np.concatenate([z1, z2])
    positive = (np.arange(12) + 6) % 12
    L_iot, L_uni, _, _ = iot_official(z, positive, eps=0.5, n_iter=10, lam_p=0.2)
    assert float(otcl.iot(z1, z2)) == pytest.approx(L_iot, rel=1e-11)
    assert float(otcl.iot_uni(z1, z2)) == pytest.approx(L_uni, rel=1e-11)


# ------------------------------------------------------------------------------------------
# official configurations


DOCUMENTED = {
    ("gca_uot", "cifar10-readme"): dict(eps=0.5, n_iter=10, rho=0.2, lam=0.01, r1=1.0, r2=0.2,
                                        q=0.6),
    ("gca_uot", "cifar10-config"): dict(eps=0.5, n_iter=10, rho=0.2, lam=0.01, r1=1.0, r2=0.02,
                                        q=0.98),
    ("gca_uot", "cifar100-config"): dict(eps=0.5, n_iter=10, rho=0.2, lam=0.01, r1=1.0, r2=1.0,
                                         q=0.98),
    ("gca_uot", "svhn-config"): dict(eps=0.5, n_iter=10, rho=0.2, lam=0.01, r1=1.0, r2=0.02,
                                     q=0.6),
    ("gca_uot", "svhn-readme"): dict(eps=0.5, n_iter=10, rho=0.2, lam=0.01, r1=1.0, r2=0.01,
                                     q=0.6),
    ("gca_uot", "class-defaults"): dict(eps=0.5, n_iter=10, rho=1e-4, lam=0.01, r1=1.0, r2=1.0,
                                        q=0.6),
    ("gca_ince", "config"): dict(eps=0.5, n_iter=10),
    ("rince", "readme"): dict(eps=0.5, lam=0.01, q=0.6),
    ("rince", "cifar10-config"): dict(eps=0.5, lam=0.01, q=0.98),
    ("gca_rince", "readme"): dict(eps=0.5, lam=0.01, q=0.6, n_iter=10),
}


@pytest.mark.parametrize(("loss", "name"), sorted(DOCUMENTED))
def test_official_config_values(loss, name):
    cfg = official_config(loss, name)
    assert cfg == DOCUMENTED[loss, name]
    cfg["eps"] = 99.0  # a fresh dict each call
    assert official_config(loss, name) == DOCUMENTED[loss, name]
    z1, z2 = pairs(5, seed=22)
    value = float(_call(loss, z1, z2, **official_config(loss, name)))
    assert math.isfinite(value)
    if loss == "gca_uot":
        x, y, p, masked = problem(z1, z2, "two_views")
        expected = gca_uot_oracle(x, y, p, masked, **DOCUMENTED[loss, name])
        assert value == pytest.approx(expected.mean(), rel=1e-10, abs=1e-10)


def test_gca_uot_defaults_equal_the_readme_config():
    z1, z2 = pairs(5, seed=23)
    assert float(gca_uot(z1, z2)) == float(
        gca_uot(z1, z2, **official_config("gca_uot", "cifar10-readme")))


def test_official_config_unknown_names():
    with pytest.raises(ValueError, match="no official configuration"):
        official_config("gca_uot", "imagenet100")
    with pytest.raises(ValueError, match="loss must be one of"):
        official_config("simclr", "config")
    assert "cifar100-config" in otcl.alignment.OFFICIAL_CONFIGS["gca_uot"]


# ------------------------------------------------------------------------------------------
# details are snapshots, n_iter as NumPy integers, scale safety, mask with identity target


def _cross_cost(seed: int = 24, N: int = 6) -> np.ndarray:
    z1, z2 = pairs(N, seed=seed)
    return -(unit(z1) @ unit(z2).T)


def test_details_do_not_alias_the_callers_cost_mask_or_eps():
    eps, L = 0.5, 3
    C = _cross_cost()
    C0 = C.copy()
    K = np.exp(-C0 / eps)
    v = np.ones(6)
    for _ in range(L):
        u = 1.0 / (K @ v)
        v = 1.0 / (K.T @ u)
    u = 1.0 / (K @ v)
    P = u[:, None] * K * v[None, :]
    eps_arr = np.asarray(eps)
    _, det = alignment_loss(C, eps=eps_arr, n_iter=L, return_details=True)
    C[:] = 0.0
    eps_arr[...] = 3.0
    np.testing.assert_allclose(det.plan, P, rtol=1e-12)
    np.testing.assert_allclose(det.log_plan, np.log(P), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(det.col_mass, P.sum(0), rtol=1e-12)
    np.testing.assert_allclose(det.cost, C0, rtol=0, atol=0)

    # a mask: masked entries stay excluded after the caller's mask is changed
    mask = np.ones((6, 6), dtype=bool)
    mask[0, 3] = mask[4, 1] = False
    C = C0.copy()
    Km = np.where(mask, K, 0.0)
    v = np.ones(6)
    for _ in range(L):
        u = 1.0 / (Km @ v)
        v = 1.0 / (Km.T @ u)
    u = 1.0 / (Km @ v)
    Pm = u[:, None] * Km * v[None, :]
    _, det = alignment_loss(C, mask=mask, eps=eps, n_iter=L, return_details=True)
    C[:] = 0.0
    mask[:] = True
    np.testing.assert_allclose(det.plan, Pm, rtol=1e-12, atol=0)
    assert det.plan[0, 3] == 0.0 and det.plan[4, 1] == 0.0
    np.testing.assert_allclose(det.col_mass, Pm.sum(0), rtol=1e-12)


@pytest.mark.parametrize("name", NAMED)
def test_details_pickle_round_trip(name):
    z1, z2 = pairs(5, seed=25)
    _, det = _call(name, z1, z2, return_details=True, reduction="none")
    back = pickle.loads(pickle.dumps(det))
    for field in ("per_sample", "f", "g", "row_mass", "a", "b", "cost", "plan", "col_mass"):
        np.testing.assert_array_equal(np.asarray(getattr(back, field)),
                                      np.asarray(getattr(det, field)))
    assert back.n_iter == det.n_iter and back.xp is det.xp
    _, det = alignment_loss(_cross_cost(), return_details=True)
    back = pickle.loads(pickle.dumps(det))
    np.testing.assert_array_equal(back.plan, det.plan)


@pytest.mark.parametrize("name", ITERATED)
def test_n_iter_accepts_numpy_integers(name):
    z1, z2 = pairs(5, seed=26)
    ref = float(_call(name, z1, z2, n_iter=3))
    for n in (np.int64(3), np.int32(3), np.asarray(3)):
        assert float(_call(name, z1, z2, n_iter=n)) == ref
    for bad in (True, np.bool_(True), 3.0, np.float64(3.0), "3"):
        with pytest.raises(ValueError, match="n_iter"):
            _call(name, z1, z2, n_iter=bad)


def test_alignment_loss_n_iter_accepts_numpy_integers():
    C = _cross_cost()
    assert float(alignment_loss(C, n_iter=np.int64(3))) == float(alignment_loss(C, n_iter=3))
    for bad in (True, 3.0, np.float64(3.0)):
        with pytest.raises(ValueError, match="n_iter"):
            alignment_loss(C, n_iter=bad)


@pytest.mark.parametrize("name", NAMED)
@pytest.mark.parametrize("layout", [None, "cross"])
@pytest.mark.parametrize("lib", ["numpy", "torch"])
def test_cosine_losses_are_scale_safe_in_float32(name, layout, lib):
    """Rows scaled by ``1e25`` (squares overflow float32) or ``1e-25`` (squares underflow) give
    the loss of the unscaled rows."""
    z1, z2 = pairs(6, seed=27)
    z1, z2 = z1.astype(np.float32), z2.astype(np.float32)
    kw = {} if layout is None else {"layout": layout}

    def value(scale: float) -> float:
        a, b = z1 * np.float32(scale), z2 * np.float32(scale)
        if lib == "torch":
            a, b = torch.from_numpy(a), torch.from_numpy(b)
        out = _call(name, a, b, **kw)
        return float(out)

    ref = value(1.0)
    assert math.isfinite(ref)
    for scale in (1e25, 1e-25):
        assert value(scale) == pytest.approx(ref, rel=1e-5, abs=1e-5)


def test_identity_target_with_a_mask_off_the_diagonal_is_rejected():
    C = _cross_cost()
    mask = ~np.eye(6, dtype=bool)
    with pytest.raises(ValueError, match="mask"):
        alignment_loss(C, mask=mask)
    partial = np.ones((6, 6), dtype=bool)
    partial[2, 2] = False
    with pytest.raises(ValueError, match="mask"):
        alignment_loss(C, mask=partial, n_iter=2)
    # a mask that keeps the diagonal is accepted
    ok = np.ones((6, 6), dtype=bool)
    ok[0, 1] = False
    assert math.isfinite(float(alignment_loss(C, mask=ok)))
