"""The buffered fast paths of ``otcl.sinkhorn`` against independent float64 oracles.

``otcl.ops.array_ops`` gives the solver loops preallocated buffers for NumPy and for PyTorch
CPU tensors that no autograd graph records, and sweeps large kernels in cache-sized blocks
(one fused pass per round, alternating direction). The block thresholds are lowered here so that
small problems take every path: several row blocks per problem, several problems per block,
and PyTorch's small stacked products through NumPy.

Oracles: a direct NumPy float64 loop of the scaling updates
``u = (a / (K v))^t_a``, ``v = (b / (K^T u))^t_b`` for the kernel and stabilized domains, the
same loop in log-sum-exp form (``scipy.special.logsumexp``) for the log domain, and torch
autograd through a plain differentiable loop for gradients. Fixed rounds (``tol=None``) make the
iterates comparable round by round: the tolerance is float64 roundoff amplified by 30 rounds.
"""

from __future__ import annotations

import importlib
import math

import numpy as np
import pytest
import torch
from scipy.special import logsumexp

import otcl
from otcl import backend as be
from otcl import ops
from otcl.ops import blocking

ROUNDS = 30


def _cost(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """``1 - cos`` of random unit vectors: entries in ``[0, 2]``."""
    *lead, n, m = shape
    x = rng.standard_normal((*lead, n, 6))
    y = rng.standard_normal((*lead, m, 6))
    x /= np.linalg.norm(x, axis=-1, keepdims=True)
    y /= np.linalg.norm(y, axis=-1, keepdims=True)
    return 1.0 - x @ np.swapaxes(y, -1, -2)


def _marginal(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    w = rng.uniform(0.5, 1.5, shape)
    return w / w.sum(axis=-1, keepdims=True)


def _oracle_kernel(C, a, b, eps, rho, rounds):
    """Scaling loop in float64 on ``K = exp(-C / eps)``; returns ``(f, g)``."""
    t = 1.0 if math.isinf(rho) else rho / (rho + eps)
    K = np.exp(-C / eps)
    u, v = np.ones(a.shape), np.ones(b.shape)
    for _ in range(rounds):
        u = (a / np.einsum("...ij,...j->...i", K, v)) ** t
        v = (b / np.einsum("...ij,...i->...j", K, u)) ** t
    return eps * np.log(u), eps * np.log(v)


def _oracle_log(C, a, b, eps, rho, rounds):
    """The same rounds as log-sum-exp updates of ``f / eps``, ``g / eps``."""
    t = 1.0 if math.isinf(rho) else rho / (rho + eps)
    lk = -C / eps
    phi, gamma = np.zeros(a.shape), np.zeros(b.shape)
    for _ in range(rounds):
        phi = t * (np.log(a) - logsumexp(lk + gamma[..., None, :], axis=-1))
        gamma = t * (np.log(b) - logsumexp(lk + phi[..., :, None], axis=-2))
    return eps * phi, eps * gamma


def _gauge_free(f, g, balanced):
    """Balanced potentials up to ``(f + c, g - c)``: subtract the mean of ``f`` per problem."""
    if not balanced:
        return f, g
    c = f.mean(axis=-1, keepdims=True)
    return f - c, g + c


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks of 2 KiB and fusion from 4 KiB on: every sweep path on tiny problems."""
    monkeypatch.setattr(blocking, "FUSE_MIN_BYTES", 4096)
    monkeypatch.setattr(blocking, "PASSES_MIN_BYTES", 4096)
    monkeypatch.setattr(blocking, "BLOCK_BYTES", 2048)


def _library(name):
    if name == "numpy":
        return (lambda x: np.array(x, dtype=np.float64)), (lambda x: np.asarray(x))
    return (lambda x: torch.tensor(x, dtype=torch.float64)), (lambda t: t.numpy())


SHAPES = {
    "row-blocks": (1, 40, 33),  # one problem, 33 * 8 bytes a row: 7 rows a block, 6 blocks
    "many-problems": (6, 9, 7),  # 504 bytes a problem: 4 problems a block
    "problem-row-blocks": (3, 30, 20),  # three problems, each in several row blocks
}


@pytest.mark.parametrize("library", ["numpy", "torch"])
@pytest.mark.parametrize("shape", list(SHAPES.values()), ids=list(SHAPES))
@pytest.mark.parametrize("rho", [math.inf, 0.7])
@pytest.mark.parametrize("domain", ["kernel", "stabilized", "log"])
def test_fixed_rounds_match_oracle(small_blocks, library, shape, rho, domain):
    rng = np.random.default_rng(hash((shape, rho, domain)) % 2**32)
    eps = 0.15
    C, a, b = _cost(rng, shape), _marginal(rng, shape[:2]), _marginal(rng, (shape[0], shape[2]))
    to, back = _library(library)
    Ct, at, bt = to(C), to(a), to(b)
    before = [back(x).copy() for x in (Ct, at, bt)]
    res = otcl.sinkhorn(Ct, at, bt, eps=eps, rho_a=rho, rho_b=rho, max_iter=ROUNDS, tol=None,
                        domain=domain)
    assert res.domain == domain
    for x, old in zip((Ct, at, bt), before, strict=True):  # inputs are never written
        np.testing.assert_array_equal(back(x), old)
    if domain == "log":
        f_ref, g_ref = _oracle_log(C, a, b, eps, rho, ROUNDS)
    else:
        f_ref, g_ref = _oracle_kernel(C, a, b, eps, rho, ROUNDS)
    balanced = math.isinf(rho)
    f, g = _gauge_free(back(res.f), back(res.g), balanced)
    f_ref, g_ref = _gauge_free(f_ref, g_ref, balanced)
    np.testing.assert_allclose(f, f_ref, rtol=0, atol=1e-10)
    np.testing.assert_allclose(g, g_ref, rtol=0, atol=1e-10)


@pytest.mark.parametrize("library", ["numpy", "torch"])
@pytest.mark.parametrize("balanced", [True, False])
def test_checked_rounds_with_sweeps_converge(small_blocks, library, balanced):
    """With a tolerance, checked rounds (unfused) and swept rounds alternate; the converged
    plan satisfies the first-order conditions of the problem."""
    rng = np.random.default_rng(3)
    eps, rho = 0.2, (math.inf if balanced else 0.5)
    C, a, b = _cost(rng, (40, 33)), _marginal(rng, (40,)), _marginal(rng, (33,))
    to, back = _library(library)
    res = otcl.sinkhorn(to(C), to(a), to(b), eps=eps, rho_a=rho, rho_b=rho, tol=1e-12,
                        max_iter=5000, domain="kernel", check_every=3)
    assert bool(res.converged)
    P = np.exp((back(res.f)[:, None] + back(res.g)[None, :] - C) / eps)
    if balanced:
        # the reported error is the returned plan's own row-marginal error (the state the
        # last check measured is the one returned)
        row_error = np.abs(P.sum(1) - a).sum() / a.sum()
        np.testing.assert_allclose(float(res.error), row_error, rtol=1e-6, atol=1e-16)
        np.testing.assert_allclose(P.sum(1), a, rtol=1e-9)
        np.testing.assert_allclose(P.sum(0), b, rtol=1e-9)
    else:
        # unbalanced optimality: f = -rho log(P1 / a), g = -rho log(P^T 1 / b)
        np.testing.assert_allclose(back(res.f), -rho * np.log(P.sum(1) / a), atol=1e-9)
        np.testing.assert_allclose(back(res.g), -rho * np.log(P.sum(0) / b), atol=1e-9)


def test_torch_small_stacked_products_go_through_numpy_views():
    """PyTorch CPU batches of small matrices (NumPy's stacked matmul on shared memory)."""
    rng = np.random.default_rng(5)
    C, a, b = _cost(rng, (7, 12, 10)), _marginal(rng, (7, 12)), _marginal(rng, (7, 10))
    res = otcl.sinkhorn(torch.tensor(C), torch.tensor(a), torch.tensor(b), eps=0.3,
                        max_iter=ROUNDS, tol=None, domain="kernel")
    f_ref, g_ref = _oracle_kernel(C, a, b, 0.3, math.inf, ROUNDS)
    f, g = _gauge_free(res.f.numpy(), res.g.numpy(), True)
    f_ref, g_ref = _gauge_free(f_ref, g_ref, True)
    np.testing.assert_allclose(f, f_ref, atol=1e-10)
    np.testing.assert_allclose(g, g_ref, atol=1e-10)


@pytest.mark.parametrize("domain", ["kernel", "stabilized", "log"])
def test_torch_scaling_loop_runs_on_numpy_views_within_torchs_threads(
        monkeypatch, numpy_blas_threads, domain):
    """The scaling and log-domain loops of PyTorch CPU tensors run on NumPy views of their
    memory, with NumPy's BLAS pool held to ``torch.get_num_threads()``; the potentials come back
    as tensors of the input's dtype, and the inputs are not written."""
    import threadpoolctl

    from otcl.ops.numpy_ops import NumpyOps

    seen: list[tuple[type, list[int]]] = []
    original = NumpyOps.rmatvec

    def recording_rmatvec(self, kernel, u, out=None):
        seen.append((type(kernel), numpy_blas_threads()))
        return original(self, kernel, u, out)

    monkeypatch.setattr(NumpyOps, "rmatvec", recording_rmatvec)
    rng = np.random.default_rng(8)
    C, a, b = _cost(rng, (30, 20)), _marginal(rng, (30,)), _marginal(rng, (20,))
    Ct, at, bt = (torch.tensor(x, dtype=torch.float32) for x in (C, a, b))
    before = [x.clone() for x in (Ct, at, bt)]
    threads = torch.get_num_threads()
    with threadpoolctl.threadpool_limits(limits=2, user_api="blas"):
        try:
            torch.set_num_threads(1)
            res = otcl.sinkhorn(Ct, at, bt, eps=0.2, rho_a=0.7, rho_b=0.7, max_iter=ROUNDS,
                                tol=None, domain=domain)
        finally:
            torch.set_num_threads(threads)
    assert seen and all(kind is np.ndarray and blas and max(blas) == 1 for kind, blas in seen)
    assert isinstance(res.f, torch.Tensor) and res.f.dtype == torch.float32
    assert isinstance(res.g, torch.Tensor) and res.g.dtype == torch.float32
    for x, old in zip((Ct, at, bt), before, strict=True):
        assert torch.equal(x, old)
    f_ref, g_ref = _oracle_kernel(C, a, b, 0.2, 0.7, ROUNDS)
    np.testing.assert_allclose(res.f.numpy(), f_ref, atol=2e-5)
    np.testing.assert_allclose(res.g.numpy(), g_ref, atol=2e-5)


@pytest.mark.parametrize("domain", ["kernel", "log"])
def test_torch_solve_keeps_one_thread_pool_at_several_threads(monkeypatch, numpy_blas_threads,
                                                              domain):
    """With torch on two threads, a solve on PyTorch CPU tensors runs NumPy's BLAS on two
    threads and torch's own operations on the calling thread (its OpenMP workers would otherwise
    spin on the cores NumPy's threads need), and gives torch its two threads back afterwards,
    also when the solve raises."""
    import threadpoolctl

    from otcl.ops.numpy_ops import NumpyOps
    from otcl.ops.torch_ops import TorchCpuOps

    seen: list[tuple[int, list[int]]] = []

    def recorder(original):
        def record(self, kernel, *args, **kwargs):
            seen.append((torch.get_num_threads(), numpy_blas_threads()))
            return original(self, kernel, *args, **kwargs)
        return record

    monkeypatch.setattr(NumpyOps, "matvec", recorder(NumpyOps.matvec))
    monkeypatch.setattr(NumpyOps, "rmatvec", recorder(NumpyOps.rmatvec))
    monkeypatch.setattr(TorchCpuOps, "rmatvec", recorder(TorchCpuOps.rmatvec))
    rng = np.random.default_rng(9)
    C, a, b = _cost(rng, (30, 20)), _marginal(rng, (30,)), _marginal(rng, (20,))
    Ct, at, bt = (torch.tensor(x, dtype=torch.float32) for x in (C, a, b))
    threads = torch.get_num_threads()
    # NumPy's pool larger than torch's: inside the solve it is brought down to torch's two
    with threadpoolctl.threadpool_limits(limits=3, user_api="blas"):
        try:
            torch.set_num_threads(2)
            res = otcl.sinkhorn(Ct, at, bt, eps=0.2, max_iter=ROUNDS, tol=None, domain=domain)
            after = torch.get_num_threads()
            with pytest.raises(ValueError, match="domain"):
                otcl.sinkhorn(Ct, at, bt, eps=0.2, domain="nonsense")
            after_error = torch.get_num_threads()
        finally:
            torch.set_num_threads(threads)
    assert seen and all(t == 1 and blas and set(blas) == {2} for t, blas in seen)
    assert after == 2 and after_error == 2
    f_ref, _ = (_oracle_log if domain == "log" else _oracle_kernel)(C, a, b, 0.2, math.inf,
                                                                    ROUNDS)
    f = res.f.numpy().astype(np.float64)
    np.testing.assert_allclose(f - f.mean(), f_ref - f_ref.mean(), atol=2e-5)


def _plain_torch_loop(C, a, b, eps, rho, rounds):
    """A differentiable reference: the scaling rounds written with out-of-place torch ops."""
    t = 1.0 if math.isinf(rho) else rho / (rho + eps)
    K = torch.exp(-C / eps)
    v = torch.ones_like(b)
    for _ in range(rounds):
        u = (a / (K @ v)) ** t
        v = (b / (K.T @ u)) ** t
    return eps * torch.log(u), eps * torch.log(v)


@pytest.mark.parametrize("domain", ["kernel", "stabilized", "log"])
@pytest.mark.parametrize("rho", [math.inf, 0.7])
def test_requires_grad_cost_backpropagates(small_blocks, domain, rho):
    """A cost with ``requires_grad`` takes the differentiable path: gradients equal autograd
    through a plain torch loop, and no buffer is written in place."""
    rng = np.random.default_rng(11)
    eps = 0.25
    C0, a0, b0 = _cost(rng, (40, 33)), _marginal(rng, (40,)), _marginal(rng, (33,))
    weights = torch.tensor(rng.standard_normal(40))
    C = torch.tensor(C0, requires_grad=True)
    a, b = torch.tensor(a0), torch.tensor(b0)
    res = otcl.sinkhorn(C, a, b, eps=eps, rho_a=rho, rho_b=rho, max_iter=ROUNDS, tol=None,
                        domain=domain)
    f = res.f - res.f.mean() if math.isinf(rho) else res.f
    (weights * f).sum().backward()

    C_ref = torch.tensor(C0, requires_grad=True)
    f_ref, _ = _plain_torch_loop(C_ref, a, b, eps, rho, ROUNDS)
    f_ref = f_ref - f_ref.mean() if math.isinf(rho) else f_ref
    (weights * f_ref).sum().backward()
    assert C.grad is not None
    np.testing.assert_allclose(f.detach().numpy(), f_ref.detach().numpy(), atol=1e-10)
    np.testing.assert_allclose(C.grad.numpy(), C_ref.grad.numpy(), atol=1e-9)


def test_no_grad_mode_uses_buffers_on_a_requires_grad_cost():
    """Under ``torch.no_grad`` nothing is recorded: the buffered path runs and the result
    carries no graph."""
    rng = np.random.default_rng(2)
    C = torch.tensor(_cost(rng, (9, 7)), requires_grad=True)
    assert isinstance(ops.array_ops(be.namespace(C), C), ops.ArrayOps)
    assert not ops.array_ops(be.namespace(C), C).inplace
    with torch.no_grad():
        assert ops.array_ops(be.namespace(C), C).inplace
        res = otcl.sinkhorn(C, eps=0.3, max_iter=ROUNDS, tol=None, domain="kernel")
    assert not res.f.requires_grad
    a = torch.full((9,), 1 / 9, dtype=torch.float64)
    b = torch.full((7,), 1 / 7, dtype=torch.float64)
    f_ref, _ = _oracle_kernel(C.detach().numpy(), a.numpy(), b.numpy(), 0.3, math.inf, ROUNDS)
    f = res.f.numpy()
    np.testing.assert_allclose(f - f.mean(), f_ref - f_ref.mean(), atol=1e-10)


def test_stabilized_small_eps_absorbs_and_matches_log(small_blocks):
    """eps = 0.01 on costs in [0, 2] in float32: exp(-C/eps) spans 87 decades, beyond float32's
    range, so ``auto`` absorbs potentials into the kernel; the plan equals the float64
    log-domain oracle's (float32 rounding of -C/eps: relative error about 200 * 6e-8)."""
    rng = np.random.default_rng(8)
    C, a, b = _cost(rng, (40, 33)), _marginal(rng, (40,)), _marginal(rng, (33,))
    eps = 0.01
    res = otcl.sinkhorn(np.float32(C), np.float32(a), np.float32(b), eps=eps, max_iter=200,
                        tol=None, domain="auto")
    assert res.domain == "stabilized"
    f_ref, g_ref = _oracle_log(C, a, b, eps, math.inf, 200)
    P_ref = np.exp((f_ref[:, None] + g_ref[None, :] - C) / eps)
    np.testing.assert_allclose(res.plan, P_ref, rtol=0, atol=2e-5 * P_ref.max())


@pytest.mark.parametrize("library", ["numpy", "torch"])
@pytest.mark.parametrize("axis", [1, 2])
@pytest.mark.parametrize("blocked", [True, False])
def test_buffered_logsumexp_with_infinities(monkeypatch, library, axis, blocked):
    """The in-place ``logsumexp_shifted``, blocked (running maximum across row blocks for
    columns) or whole (PyTorch's fused kernel), against SciPy, with ``-inf`` entries, a column
    that is ``-inf`` in the first blocks only, wholly ``-inf`` rows and columns, and maxima
    that move by hundreds between blocks."""
    if blocked:
        monkeypatch.setattr(blocking, "PASSES_MIN_BYTES", 4096)
        monkeypatch.setattr(blocking, "BLOCK_BYTES", 2048)
    rng = np.random.default_rng(4)
    base = 300.0 * rng.standard_normal((3, 41, 33))
    base[rng.random(base.shape) < 0.2] = -math.inf
    base[0, :30, 5] = -math.inf  # -inf in the first blocks, finite later
    base[1, 7, :] = -math.inf  # a whole row
    base[2, :, 9] = -math.inf  # a whole column
    base[0, 35:, 2] += 900.0  # the column maximum jumps in the last block
    shift = 50.0 * rng.standard_normal((3, 33 if axis == 2 else 41))
    to, back = _library(library)
    bops = ops.array_ops(be.namespace(to(base)), to(base))
    assert bops.inplace
    got = back(bops.logsumexp_shifted(to(base), to(shift), axis, bops.buffer(base.shape, to(base))))
    expand = shift[:, None, :] if axis == 2 else shift[:, :, None]
    with np.errstate(divide="ignore"):
        ref = logsumexp(base + expand, axis=axis)
    np.testing.assert_array_equal(np.isneginf(got), np.isneginf(ref))
    fin = np.isfinite(ref)
    np.testing.assert_allclose(got[fin], ref[fin], rtol=1e-13, atol=1e-12)


def _lse_case(rng, base, axis, infinities):
    """``(base, shift, ref)`` for a log-sum-exp test over ``axis`` of ``base (3, 41, 33)``:
    with ``infinities``, ``-inf`` on a fifth of the entries, on a whole row and on a whole
    column; ``ref`` is SciPy's float64 log-sum-exp of ``base + shift``."""
    if infinities:
        base[rng.random(base.shape) < 0.2] = -math.inf
        base[1, 7, :] = -math.inf  # a whole row
        base[2, :, 9] = -math.inf  # a whole column
    shift = 5.0 * rng.standard_normal((3, 33 if axis == 2 else 41))
    expand = shift[:, None, :] if axis == 2 else shift[:, :, None]
    with np.errstate(divide="ignore"):
        ref = logsumexp(base + expand, axis=axis)
    return base, shift, ref


@pytest.mark.parametrize("library", ["numpy", "torch"])
@pytest.mark.parametrize("axis", [1, 2])
@pytest.mark.parametrize("blocked", [True, False])
@pytest.mark.parametrize("hint", ["close", "some-off", "all-off"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_hinted_logsumexp(monkeypatch, library, axis, blocked, hint, dtype):
    """The log-sum-exp shifted by a hint of ``-LSE`` instead of each slice's maximum, against
    SciPy: a close hint (the hinted pass alone), one that is off by hundreds on a few slices
    (those recomputed with their maximum; also the wholly ``-inf`` row and column, whose hinted
    sums are 0), and one off everywhere (every slice recomputed)."""
    if blocked:
        monkeypatch.setattr(blocking, "PASSES_MIN_BYTES", 4096)
        monkeypatch.setattr(blocking, "BLOCK_BYTES", 2048)
    rng = np.random.default_rng(5)
    base, shift, ref = _lse_case(rng, 30.0 * rng.standard_normal((3, 41, 33)), axis, True)
    guess = -np.where(np.isfinite(ref), ref, 0.0) + rng.uniform(-3, 3, ref.shape)
    if hint == "some-off":
        guess[0, 3] += 400.0
        guess[2, 1] -= 400.0
    elif hint == "all-off":
        guess += 400.0
    to, back = _library(library)
    b, sh, g = (to(x) for x in (base, shift, guess))
    if library == "torch":
        b, sh, g = (x.to(getattr(torch, dtype)) for x in (b, sh, g))
    else:
        b, sh, g = (x.astype(dtype) for x in (b, sh, g))
    bops = ops.array_ops(be.namespace(b), b)
    got = back(bops.logsumexp_shifted(b, sh, axis, bops.buffer(base.shape, b), hint=g))
    np.testing.assert_array_equal(np.isneginf(got), np.isneginf(ref))
    fin = np.isfinite(ref)
    rtol, atol = (1e-13, 1e-12) if dtype == "float64" else (2e-6, 2e-5)
    np.testing.assert_allclose(got[fin], ref[fin], rtol=rtol, atol=atol)


@pytest.mark.parametrize("library", ["numpy", "torch"])
@pytest.mark.parametrize("eps", [0.1, 0.01])
def test_log_loop_needs_no_maximum_after_its_first_round(monkeypatch, library, eps):
    """From the second round on, the buffered log domain shifts each log-sum-exp by the previous
    round's result (one pass fewer than the maximum), and the first row step by a bound: on a
    well-posed problem no slice after the first round falls back to its maximum, and the result
    is the oracle's."""
    from otcl.ops.logsumexp import BufferedLogSumExp

    calls = []
    original = BufferedLogSumExp._lse_max_shifted

    def counting(self, *args):
        calls.append(1)
        return original(self, *args)

    monkeypatch.setattr(BufferedLogSumExp, "_lse_max_shifted", counting)
    original_logsumexp = be.logsumexp
    monkeypatch.setattr("otcl.ops.logsumexp.logsumexp",
                        lambda *a, **k: calls.append(1) or original_logsumexp(*a, **k))
    rng = np.random.default_rng(3)
    C, a, b = _cost(rng, (2, 30, 25)), _marginal(rng, (2, 30)), _marginal(rng, (2, 25))
    to, back = _library(library)
    otcl.sinkhorn(to(C), to(a), to(b), eps=eps, max_iter=1, tol=None, domain="log")
    first_round = len(calls)
    calls.clear()
    res = otcl.sinkhorn(to(C), to(a), to(b), eps=eps, max_iter=ROUNDS, tol=None, domain="log")
    assert len(calls) == first_round <= 2
    if eps == 0.1:  # costs in [0, 2]: the first row step's bound is close enough too
        assert first_round == 0
    f_ref, g_ref = _oracle_log(C, a, b, eps, math.inf, ROUNDS)
    P_ref = np.exp((f_ref[..., :, None] + g_ref[..., None, :] - C) / eps)
    np.testing.assert_allclose(back(res.plan), P_ref, rtol=0, atol=1e-12 * P_ref.max())


@pytest.mark.parametrize("library", ["numpy", "torch"])
def test_blocked_exp_shifted(small_blocks, library):
    rng = np.random.default_rng(6)
    base = rng.standard_normal((2, 41, 33))
    base[0, 3, 4] = -math.inf
    row, col = rng.standard_normal((2, 41)), rng.standard_normal((2, 33))
    to, back = _library(library)
    bops = ops.array_ops(be.namespace(to(base)), to(base))
    got = back(bops.exp_shifted(to(base), to(row), to(col)))
    np.testing.assert_allclose(got, np.exp(base + row[:, :, None] + col[:, None, :]), rtol=1e-15)
    inplace = to(base)
    bops.exp_shifted(inplace, to(row), None, out=inplace)
    np.testing.assert_allclose(back(inplace), np.exp(base + row[:, :, None]), rtol=1e-15)


@pytest.mark.parametrize("library", ["numpy", "torch"])
@pytest.mark.parametrize("domain", ["kernel", "stabilized", "log"])
def test_masked_fixed_rounds_match_oracle(small_blocks, library, domain):
    """Masked entries (``P_ij = 0``) in every buffered path: the oracles use ``K_ij = 0``."""
    rng = np.random.default_rng(9)
    eps = 0.2
    C, a, b = _cost(rng, (2, 30, 20)), _marginal(rng, (2, 30)), _marginal(rng, (2, 20))
    mask = rng.random(C.shape) > 0.3
    mask[:, np.arange(20), np.arange(20)] = True  # every row and column keeps an entry
    to, back = _library(library)
    mask_t = mask if library == "numpy" else torch.tensor(mask)
    res = otcl.sinkhorn(to(C), to(a), to(b), eps=eps, mask=mask_t, max_iter=ROUNDS, tol=None,
                        domain=domain)
    C_inf = np.where(mask, C, np.inf)  # exp(-inf) = 0: the oracles exclude masked entries
    oracle = _oracle_log if domain == "log" else _oracle_kernel
    f_ref, g_ref = _gauge_free(*oracle(C_inf, a, b, eps, math.inf, ROUNDS), True)
    f, g = _gauge_free(back(res.f), back(res.g), True)
    np.testing.assert_allclose(f, f_ref, atol=1e-10)
    np.testing.assert_allclose(g, g_ref, atol=1e-10)
    assert np.all(back(res.plan)[~mask] == 0)


def _spy(monkeypatch, owner, name):
    """Count the calls of ``owner.name`` (still calling it)."""
    calls = []
    original = getattr(owner, name)

    def counting(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(owner, name, counting)
    return calls


@pytest.mark.parametrize("library", ["numpy", "torch"])
@pytest.mark.parametrize("axis", [1, 2])
@pytest.mark.parametrize("blocked", [True, False])
@pytest.mark.parametrize("hint", ["none", "close", "some-off"])
@pytest.mark.parametrize("raised", [True, False])
def test_base2_logsumexp(monkeypatch, library, axis, blocked, hint, raised):
    """A float32 log-kernel held in base-2 units (``LOG2E * Λ``, exponentials by ``exp2``)
    against SciPy's float64 log-sum-exp of the natural ``Λ + shift``. Entries reach ``-144`` in
    base 2, below ``exp2``'s floor of ``-126``: with a lower bound (``raised``) they are raised
    to the floor, which changes no result beyond float32 rounding; without one (the bound a
    masked problem gets) none is, and ``-inf`` entries keep a zero power."""
    from otcl.ops.base import LOG2E, Base2
    from otcl.ops.buffered import BufferedOps
    from otcl.ops.numpy_ops import NumpyOps
    from otcl.ops.torch_ops import TorchCpuOps

    if blocked:
        monkeypatch.setattr(blocking, "PASSES_MIN_BYTES", 4096)
        monkeypatch.setattr(blocking, "BLOCK_BYTES", 2048)
    raises = _spy(monkeypatch, NumpyOps if library == "numpy" else TorchCpuOps, "_raise")
    exp2s = _spy(monkeypatch, BufferedOps, "_exp2")
    rng = np.random.default_rng(11)
    base, shift, ref = _lse_case(rng, 30.0 * rng.standard_normal((3, 41, 33)) - 20.0, axis,
                                 not raised)
    base2 = (LOG2E * base).astype(np.float32)
    low = base2.min(axis=(1, 2))
    assert low.min() < -126 < np.nanmax(base2)
    guess = None
    if hint != "none":
        guess = (-np.where(np.isfinite(ref), ref, 0.0) + rng.uniform(-3, 3, ref.shape))
        if hint == "some-off":
            guess[0, 3] += 400.0
            guess[2, 1] -= 400.0
        guess = guess.astype(np.float32)
    to = (lambda x: x) if library == "numpy" else torch.from_numpy
    back = np.asarray if library == "numpy" else (lambda t: t.numpy())
    b = to(base2)
    bops = ops.array_ops(be.namespace(b), b)
    assert bops.base2(b.dtype)
    units = Base2(to(low) if raised else None)
    got = back(bops.logsumexp_shifted(b, to(shift.astype(np.float32)), axis,
                                      bops.buffer(base.shape, b),
                                      hint=None if guess is None else to(guess), base2=units))
    assert exp2s  # the exponentials were powers of two
    assert bool(raises) == raised
    np.testing.assert_array_equal(np.isneginf(got), np.isneginf(ref))
    fin = np.isfinite(ref)
    np.testing.assert_allclose(got[fin], ref[fin], rtol=2e-6, atol=5e-5)


@pytest.mark.parametrize("shape", [(1, 64, 1024), (2, 48, 33), (1, 7, 5), (3, 40, 1000)])
def test_numpy_grouped_row_broadcasts(shape):
    """NumPy's row-broadcast addition and raise, run over groups of rows against a repeated
    vector, give NumPy's own broadcast results bit for bit, also on a view that cannot be
    grouped without a copy (a column slice) and with NaN entries, which stay NaN."""
    from otcl.ops.numpy_ops import NumpyOps, _group_size

    rng = np.random.default_rng(12)
    B, r, m = shape
    wide = (200.0 * rng.standard_normal((B, r, m + 3))).astype(np.float32)
    wide[0, 0, 0] = np.nan
    col = rng.standard_normal((B, m)).astype(np.float32)
    nops = NumpyOps(np)
    for x in (np.ascontiguousarray(wide[:, :, :m]), wide[:, :, :m]):
        before = x.copy()
        out = np.empty_like(x)
        assert nops._add_cols(x, col, out=out) is out
        np.testing.assert_array_equal(out, x + col[:, None, :])
        np.testing.assert_array_equal(x, before)  # the input is not written
        raised = x.copy()
        nops._raise(raised, -126.0)
        np.testing.assert_array_equal(raised, np.maximum(x, np.float32(-126.0)))
    assert _group_size(64, 1024) == 32 and _group_size(48, 33) == 16 and _group_size(7, 5) == 1


def _row_offset_cost(rng, shape, offset):
    """A cosine cost plus a row offset in ``[0, offset]``: the row potentials spread by about
    ``offset / eps``."""
    C = _cost(rng, shape)
    return C + offset * rng.random(shape[:2])[:, :, None]


@pytest.mark.parametrize("library", ["numpy", "torch"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("masked", [False, True])
def test_log_loop_units_and_folded_rows(monkeypatch, library, dtype, masked):
    """The buffered log domain holds float32 log-kernels in base-2 units on unmasked problems
    (with the bound that allows raising; NumPy's exp2, which also runs PyTorch CPU tensors' loop,
    is slow below its floor, so masked problems keep natural units) and folds the row
    potentials into the log-kernel's rows when the row
    hints spread too far to fold into one shift (eps = 0.005 and rows offset by up to 3: a spread
    of about 600, beyond float64's 354 and float32's 44). Against the float64 log-sum-exp
    oracle, with the cost never written."""
    module = importlib.import_module("otcl.solvers.sinkhorn")
    absorbs = _spy(monkeypatch, module._LogLoop, "_absorb")
    seen = []
    original = module._LogLoop.__init__

    def recording(self, *args, **kwargs):
        original(self, *args, **kwargs)
        seen.append(self.base2)

    monkeypatch.setattr(module._LogLoop, "__init__", recording)
    rng = np.random.default_rng(13)
    eps = 0.005
    shape = (2, 30, 25)
    C = _row_offset_cost(rng, shape, 3.0)
    a, b = _marginal(rng, shape[:2]), _marginal(rng, (2, 25))
    mask = None
    if masked:
        mask = rng.random(C.shape) > 0.3
        mask[:, np.arange(25), np.arange(25)] = True
    np_dtype = np.dtype(dtype)
    _, back = _library(library)
    Ct, at, bt = (x.astype(np_dtype) for x in (C, a, b))
    mt = mask
    if library == "torch":
        Ct, at, bt = (torch.from_numpy(x) for x in (Ct, at, bt))
        mt = None if mask is None else torch.tensor(mask)
    before = back(Ct).copy()
    res = otcl.sinkhorn(Ct, at, bt, eps=eps, mask=mt, max_iter=ROUNDS, tol=None, domain="log")
    np.testing.assert_array_equal(back(Ct), before)
    units = seen[0]
    if dtype == "float64" or masked:  # PyTorch CPU tensors run NumPy's loop on their memory
        assert units is None
    else:
        assert units is not None and units.low is not None
    # folding needs finite potentials: unmasked problems with positive marginals only
    assert (len(absorbs) > 0) == (not masked)
    assert len(absorbs) <= ROUNDS // 3
    C_inf = C if mask is None else np.where(mask, C, np.inf)
    f_ref, g_ref = _gauge_free(*_oracle_log(C_inf, a, b, eps, math.inf, ROUNDS), True)
    f, g = _gauge_free(back(res.f).astype(np.float64), back(res.g).astype(np.float64), True)
    atol = 1e-10 if dtype == "float64" else 2e-5
    np.testing.assert_allclose(f, f_ref, rtol=0, atol=atol)
    np.testing.assert_allclose(g, g_ref, rtol=0, atol=atol)


@pytest.mark.parametrize("library", ["numpy", "torch"])
@pytest.mark.parametrize("blocked", [True, False])
@pytest.mark.parametrize("divisor", [None, 0.2])
@pytest.mark.parametrize("bounds", ["tight", "below-floor", "none"])
def test_exp_shifted_powers_of_two(monkeypatch, library, blocked, divisor, bounds):
    """``exp_shifted`` with bounds of its exponents takes float32 powers of two when every
    exponent lies in ``exp2``'s fast range (and ``exp`` otherwise): the same values as the
    float64 exponential, to float32 rounding of exponents of up to 60."""
    from otcl.ops.buffered import BufferedOps

    if blocked:
        monkeypatch.setattr(blocking, "PASSES_MIN_BYTES", 4096)
        monkeypatch.setattr(blocking, "BLOCK_BYTES", 2048)
    exp2s = _spy(monkeypatch, BufferedOps, "_exp2")
    rng = np.random.default_rng(14)
    base = rng.uniform(0.0, 2.0, (2, 41, 33)) if divisor else rng.uniform(-20, 0, (2, 41, 33))
    row, col = rng.uniform(-10, 10, (2, 41)), rng.uniform(-10, 10, (2, 33))
    x = (-base / divisor if divisor else base) + row[:, :, None] + col[:, None, :]
    given = {"tight": (float(x.min()), float(x.max())), "below-floor": (-100.0, 0.0),
             "none": None}[bounds]
    to = (lambda v: v) if library == "numpy" else torch.from_numpy
    back = np.asarray if library == "numpy" else (lambda t: t.numpy())
    b32 = to(base.astype(np.float32))
    bops = ops.array_ops(be.namespace(b32), b32)
    got = back(bops.exp_shifted(b32, to(row.astype(np.float32)), to(col.astype(np.float32)),
                                divisor=divisor, bounds=given))
    assert bool(exp2s) == (bounds == "tight")
    np.testing.assert_allclose(got, np.exp(x), rtol=2e-6 * 60)


def test_problem_keeps_its_cost_bounds():
    """Validation's finite check keeps each problem's ``min C``, ``max C`` for the solvers
    (none with a mask, whose bounds are over the allowed entries)."""
    from otcl.solvers.problem import make_problem

    rng = np.random.default_rng(15)
    C = rng.uniform(-3, 5, (3, 7, 6))
    p = make_problem(C, None, None, eps=0.1)
    np.testing.assert_array_equal(p.cost_bounds[0], C.min(axis=(1, 2)))
    np.testing.assert_array_equal(p.cost_bounds[1], C.max(axis=(1, 2)))
    assert make_problem(C, None, None, eps=0.1, mask=C > 0).cost_bounds is None
    bad = C.copy()
    bad[1, 2, 3] = np.nan
    with pytest.raises(ValueError, match="cost contains NaN or inf"):
        make_problem(bad, None, None, eps=0.1)


@pytest.mark.parametrize("library", ["numpy", "torch"])
@pytest.mark.parametrize("domain", ["kernel", "stabilized"])
@pytest.mark.parametrize("rho", [math.inf, 0.7])
def test_float32_scaling_domains_match_oracle(monkeypatch, small_blocks, library, domain, rho):
    """float32 kernel and stabilised solves, whose kernels are built from powers of two when
    the cost's bounds put every exponent in ``exp2``'s fast range, against the float64 oracle."""
    from otcl.ops.buffered import BufferedOps

    exp2s = _spy(monkeypatch, BufferedOps, "_exp2")
    rng = np.random.default_rng(16)
    eps = 0.15
    shape = (2, 30, 20)
    C, a, b = _cost(rng, shape), _marginal(rng, shape[:2]), _marginal(rng, (2, 20))
    args = [x.astype(np.float32) for x in (C, a, b)]
    if library == "torch":
        args = [torch.from_numpy(x) for x in args]
    res = otcl.sinkhorn(*args, eps=eps, rho_a=rho, rho_b=rho, max_iter=ROUNDS, tol=None,
                        domain=domain)
    assert exp2s
    balanced = math.isinf(rho)
    f_ref, g_ref = _gauge_free(*_oracle_kernel(C, a, b, eps, rho, ROUNDS), balanced)
    back = np.asarray if library == "numpy" else (lambda t: t.numpy())
    f, g = _gauge_free(back(res.f).astype(np.float64), back(res.g).astype(np.float64), balanced)
    np.testing.assert_allclose(f, f_ref, rtol=0, atol=2e-6)
    np.testing.assert_allclose(g, g_ref, rtol=0, atol=2e-6)
