"""The alignment family beyond InfoNCE: SwAV codes and loss, BYOL, capacity constraints.

Oracles written here: SwAV's reference Sinkhorn–Knopp loop (prototypes first, fixed count,
kernel domain), the swapped-prediction loss as lightly and SwAV define it, BYOL's
``2 - 2 cos``, the KL of a plan to the target, and central finite differences.
"""

from __future__ import annotations

import math
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest

import otcl

torch = pytest.importorskip("torch")
import otcl.torch as ott  # noqa: E402


def reference_codes(scores: np.ndarray, eps: float, n_iter: int) -> np.ndarray:
    """SwAV's Sinkhorn–Knopp (Caron et al. 2020), in NumPy."""
    Q = np.exp(scores / eps).T  # K x B
    Q = Q / Q.sum()
    K, B = Q.shape
    for _ in range(n_iter):
        Q = Q / Q.sum(axis=1, keepdims=True) / K
        Q = Q / Q.sum(axis=0, keepdims=True) / B
    return (Q * B).T


def unit_scores(B: int, K: int, d: int = 16, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((B, d))
    c = rng.standard_normal((K, d))
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    return z @ c.T


# ---------------------------------------------------------------------------------------------
# SwAV codes


@pytest.mark.parametrize("n_iter", [1, 3, 5])
@pytest.mark.parametrize("eps", [0.05, 0.1])
def test_swav_codes_equal_the_reference_loop(backend, eps, n_iter):
    s = unit_scores(48, 12, seed=n_iter)
    ref = reference_codes(s, eps, n_iter)
    got = backend.to_numpy(otcl.swav_codes(backend.asarray(s), eps=eps, n_iter=n_iter))
    np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-12)


def test_swav_codes_float32_and_torch_module_form():
    s = unit_scores(32, 8, seed=7)
    ref = reference_codes(s, 0.05, 3)
    got = ott.swav_codes(torch.tensor(s, dtype=torch.float32, requires_grad=True))
    assert got.dtype == torch.float32 and not got.requires_grad
    np.testing.assert_allclose(got.numpy(), ref, rtol=2e-4, atol=1e-6)
    half = ott.swav_codes(torch.tensor(s, dtype=torch.bfloat16))
    assert half.dtype == torch.bfloat16


def test_small_eps_is_finite_where_the_reference_overflows():
    s = 3 * unit_scores(64, 10, seed=1)  # scores in [-3, 3]
    eps = 0.02  # exp(3 / 0.02) = exp(150) overflows float32
    with np.errstate(over="ignore", invalid="ignore"):
        ref = reference_codes(s.astype(np.float32), eps, 3)
    assert not np.all(np.isfinite(ref))
    codes, res = otcl.swav_codes(s.astype(np.float32), eps=eps, return_details=True)
    assert np.all(np.isfinite(codes)) and res.domain != "kernel"
    np.testing.assert_allclose(codes.sum(axis=1), 1.0, atol=1e-5)
    # in float64 the reference is finite and the log domain gives the same codes
    np.testing.assert_allclose(otcl.swav_codes(s, eps=eps), reference_codes(s, eps, 3),
                               rtol=1e-9, atol=1e-12)


def test_tolerance_runs_to_the_marginal_error():
    s = unit_scores(80, 16, seed=2)
    codes, res = otcl.swav_codes(s, eps=0.05, tol=1e-8, return_details=True)
    assert bool(res.converged) and int(res.n_iter) > 3
    B, K = s.shape
    np.testing.assert_allclose(codes.sum(axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(codes.sum(axis=0) / B, np.full(K, 1.0 / K), atol=1e-9)
    # three rounds leave the prototype marginal off by much more
    three = otcl.swav_codes(s, eps=0.05)
    assert np.max(np.abs(three.sum(axis=0) / B - 1.0 / K)) > 1e-6


def test_relaxed_prototype_marginal_follows_imbalanced_data():
    rng = np.random.default_rng(3)
    c = rng.standard_normal((4, 8))
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    # 70 % of the samples near prototype 0
    z = np.concatenate([c[0] + 0.1 * rng.standard_normal((70, 8)),
                        c[rng.integers(1, 4, 30)] + 0.1 * rng.standard_normal((30, 8))])
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    s = z @ c.T
    hard = otcl.swav_codes(s, eps=0.05, tol=1e-9)
    soft = otcl.swav_codes(s, eps=0.05, tol=1e-9, rho=0.05)
    mass_hard, mass_soft = hard.mean(axis=0), soft.mean(axis=0)
    np.testing.assert_allclose(mass_hard, 0.25, atol=1e-7)
    assert mass_soft[0] > 0.4  # the relaxed marginal lets the large cluster keep its samples
    np.testing.assert_allclose(soft.sum(axis=1), 1.0, atol=1e-12)
    big = otcl.swav_codes(s, eps=0.05, tol=1e-8, max_iter=5000, rho=1e8)
    np.testing.assert_allclose(big, otcl.swav_codes(s, eps=0.05, tol=1e-10), atol=1e-5)


def test_swav_codes_errors():
    s = unit_scores(8, 3)
    with pytest.raises(ValueError, match="scores"):
        otcl.swav_codes(s[0])
    with pytest.raises(ValueError, match="eps"):
        otcl.swav_codes(s, eps=0.0)
    with pytest.raises(ValueError, match="n_iter"):
        otcl.swav_codes(s, n_iter=0)
    with pytest.raises(TypeError, match="epsilon"):
        otcl.swav_codes(s, epsilon=0.05)


# ---------------------------------------------------------------------------------------------
# SwAV loss


def reference_swav_loss(high, low, queue, temperature, eps, n_iter):
    crops = list(high) + list(low)
    total = 0.0
    for i, h in enumerate(high):
        s = h.detach().double().numpy()
        if queue is not None:
            s = np.concatenate([s, queue[i].double().numpy()])
        q = torch.tensor(reference_codes(s, eps, n_iter)[: h.shape[0]])
        sub = 0.0
        for v, z in enumerate(crops):
            if v == i:
                continue
            log_p = torch.log_softmax(z.double() / temperature, dim=1)
            sub = sub - torch.mean(torch.sum(q * log_p, dim=1))
        total = total + sub / (len(crops) - 1)
    return total / len(high)


@pytest.mark.parametrize("with_queue", [False, True])
def test_swav_loss_equals_the_reference(with_queue):
    g = torch.Generator().manual_seed(0)
    high = [torch.randn(16, 6, generator=g, dtype=torch.float64).requires_grad_()
            for _ in range(2)]
    low = [torch.randn(16, 6, generator=g, dtype=torch.float64).requires_grad_()
           for _ in range(3)]
    queue = [torch.randn(24, 6, generator=g, dtype=torch.float64) for _ in range(2)]
    queue = queue if with_queue else None
    loss = ott.SwAVLoss()(high, low, queue)
    ref = reference_swav_loss(high, low, queue, 0.1, 0.05, 3)
    assert loss.item() == pytest.approx(ref.item(), abs=1e-10)
    loss.backward()
    ref_high = [h.detach().clone().requires_grad_() for h in high]
    ref_low = [x.detach().clone().requires_grad_() for x in low]
    reference_swav_loss(ref_high, ref_low, queue, 0.1, 0.05, 3).backward()
    for a, b in zip(high + low, ref_high + ref_low, strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-9, atol=1e-12)


def test_swav_loss_arguments():
    with pytest.raises(TypeError, match="sinkhorn_iterations"):
        ott.SwAVLoss(sinkhorn_iteration=3)
    with pytest.raises(ValueError, match="temperature"):
        ott.SwAVLoss(temperature=0.0)
    with pytest.raises(ValueError, match="two crops"):
        ott.SwAVLoss()([torch.randn(4, 3)])


# ---------------------------------------------------------------------------------------------
# SwAV codes across ranks (gloo, 2 processes)


def _codes_entry(rank: int, world: int, rendezvous: str, outdir: str, blocks: list) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank,
                            world_size=world, timeout=timedelta(seconds=60))
    try:
        codes = ott.swav_codes(blocks[rank], distributed=True)
        torch.save(codes, Path(outdir) / f"codes{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_distributed_codes_equal_the_global_problem(tmp_path):
    import torch.multiprocessing as mp

    s = unit_scores(30, 7, seed=5)
    blocks = [torch.tensor(s[:13]), torch.tensor(s[13:])]  # unequal shards
    ctx = mp.start_processes(_codes_entry, args=(2, str(tmp_path / "rv"), str(tmp_path), blocks),
                             nprocs=2, join=True, start_method="spawn")
    del ctx
    got = torch.cat([torch.load(tmp_path / f"codes{r}.pt") for r in range(2)]).numpy()
    np.testing.assert_allclose(got, reference_codes(s, 0.05, 3), rtol=1e-10, atol=1e-13)


# ---------------------------------------------------------------------------------------------
# BYOL


def test_byol_is_two_minus_two_cosine_symmetrised(backend):
    rng = np.random.default_rng(8)
    p1, p2, z1, z2 = (rng.standard_normal((10, 5)) for _ in range(4))

    def cos(x, y):
        return np.sum(x * y, 1) / np.linalg.norm(x, axis=1) / np.linalg.norm(y, axis=1)

    one = 2 - 2 * cos(p1, z2)
    both = one + 2 - 2 * cos(p2, z1)
    a = [backend.asarray(x) for x in (p1, z2, p2, z1)]
    assert float(otcl.byol(a[0], a[1])) == pytest.approx(one.mean(), abs=1e-12)
    assert float(otcl.byol(*a)) == pytest.approx(both.mean(), abs=1e-12)
    np.testing.assert_allclose(backend.to_numpy(otcl.byol(*a, reduction="none")), both,
                               atol=1e-12)
    # SimSiam's symmetrised negative cosine
    simsiam = -(cos(p1, z2) + cos(p2, z1)).mean() / 2
    assert float(otcl.byol(*a)) / 4 - 1 == pytest.approx(simsiam, abs=1e-12)


def test_byol_module_stops_the_target_gradient():
    p = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    z = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    ott.BYOL()(p, z).backward()
    assert p.grad is not None and z.grad is None
    with pytest.raises(ValueError, match="both p2 and z1"):
        otcl.byol(p.detach().numpy(), z.detach().numpy(), p.detach().numpy())


# ---------------------------------------------------------------------------------------------
# capacity constraints


def _views(n: int = 10, d: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    z1 = rng.standard_normal((n, d))
    return z1, z1 + 0.4 * rng.standard_normal((n, d))


@pytest.mark.parametrize("layout", [None, "cross"])
def test_capacity_plan_respects_the_bound_and_the_value_is_its_kl(layout):
    z1, z2 = _views(seed=1)
    kappa = 0.08
    value, det = otcl.gca_capacity(z1, z2, kappa=kappa, n_iter=50, layout=layout,
                                   return_details=True)
    P = det.plan
    n = P.shape[0]
    # cross-view: the identity; two views: the blocked partners i <-> i + N
    T = np.eye(n) if layout == "cross" else np.roll(np.eye(n), n // 2, axis=1)
    negatives = T == 0
    assert P[negatives].max() <= kappa * (1 + 1e-9)
    assert P[negatives].max() >= 0.5 * kappa  # the bound is active
    pos = T > 0
    kl = np.sum(T[pos] * np.log(T[pos] / P[pos])) - T.sum() + P.sum()
    assert float(value) == pytest.approx(kl / n, abs=1e-10)
    # the unbounded problem converges to GCA-INCE's balanced plan
    loose = otcl.gca_capacity(z1, z2, kappa=10.0, n_iter=400, layout=layout)
    assert float(loose) == pytest.approx(float(otcl.gca_ince(z1, z2, n_iter=400, layout=layout)),
                                         abs=1e-9)


def test_capacity_gradient_matches_finite_differences():
    z1, z2 = _views(n=6, d=4, seed=2)
    t1 = torch.tensor(z1, requires_grad=True)
    loss = ott.GCACapacity(kappa=0.1, n_iter=20)(t1, torch.tensor(z2))
    loss.backward()
    h = 1e-6
    fd = np.zeros_like(z1)
    for idx in np.ndindex(*z1.shape):
        up, down = z1.copy(), z1.copy()
        up[idx] += h
        down[idx] -= h
        fd[idx] = (float(otcl.gca_capacity(up, z2, kappa=0.1, n_iter=20))
                   - float(otcl.gca_capacity(down, z2, kappa=0.1, n_iter=20))) / (2 * h)
    np.testing.assert_allclose(t1.grad.numpy(), fd, rtol=1e-5, atol=1e-8)


def test_capacity_errors():
    z1, z2 = _views()
    with pytest.raises(ValueError, match="kappa"):
        otcl.gca_capacity(z1, z2, kappa=0.0)
    with pytest.raises(ValueError, match="n_iter"):
        otcl.gca_capacity(z1, z2, n_iter=0)
    assert math.isfinite(float(otcl.gca_capacity(z1, z2, kappa=math.inf)))


def test_swav_codes_on_array_api_strict():
    xps = pytest.importorskip("array_api_strict")
    s = unit_scores(20, 6, seed=9)
    got = otcl.swav_codes(xps.asarray(s))
    np.testing.assert_allclose(np.asarray(got), reference_codes(s, 0.05, 3), rtol=1e-10,
                               atol=1e-13)
