"""The fixed-round inner solve and its vector-Jacobian products (otcl.solvers.adjoint).

Oracles: a plainly written log-domain loop (NumPy + SciPy's logsumexp) for the forward, torch
autograd through the same loop written in torch for the unrolled derivative, and the unrolled
derivative of a converged solve for the implicit one.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import logsumexp as sp_lse

from otcl.solvers.adjoint import (
    Tape,
    fixed_round_potentials,
    implicit_cotangents,
    implicit_vjp,
    unrolled_cotangents,
    unrolled_vjp,
)
from otcl.solvers.result import ConvergenceWarning

KINDS = {"balanced": (1.0, 1.0), "unbalanced": (0.7, 0.6), "semi": (1.0, 0.5)}


def make_case(
    rng: np.random.Generator, kind: str, *, B: int = 2, n: int = 6, m: int = 7,
    masked: bool = True, zero_row: bool = False, eps: float = 0.5,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, float]:
    """``(Λ, log a, log b, t_a, t_b)`` in float64; ``masked`` puts ``-inf`` on the diagonal."""
    lk = -rng.standard_normal((B, n, m)) / eps
    if masked:
        k = min(n, m)
        lk[:, np.arange(k), np.arange(k)] = -np.inf
    a = rng.uniform(0.5, 1.5, (B, n))
    b = rng.uniform(0.5, 1.5, (B, m))
    if zero_row:
        a[:, 1] = 0.0
    t_a, t_b = KINDS[kind]
    if kind == "balanced":
        b = b / b.sum(1, keepdims=True) * a.sum(1, keepdims=True)
    with np.errstate(divide="ignore"):
        return lk, np.log(a), np.log(b), t_a, t_b


# --------------------------------------------------------------------------------------------
# oracles


def naive_numpy(lk, la, lb, t_a, t_b, L, init=None):
    """The contract's loop, written directly (log domain, float64)."""

    def update(log_m, lse, t):
        lse = np.where(np.isfinite(lse), lse, 0.0)
        with np.errstate(invalid="ignore"):
            out = t * (log_m - lse)
        return np.where(np.isfinite(log_m), out, -np.inf)

    gamma = np.zeros(lb.shape) if init is None else init
    with np.errstate(divide="ignore"):
        for _ in range(L):
            phi = update(la, sp_lse(lk + gamma[:, None, :], axis=2), t_a)
            gamma = update(lb, sp_lse(lk + phi[:, :, None], axis=1), t_b)
        phi = update(la, sp_lse(lk + gamma[:, None, :], axis=2), t_a)
    return phi, gamma


def naive_torch(lk, la, lb, t_a, t_b, L, init):
    """The same loop in torch, differentiable in every input."""

    def update(log_m, lse, t):
        fin = torch.isfinite(log_m)
        lse = torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))
        out = t * (torch.where(fin, log_m, torch.zeros_like(log_m)) - lse)
        return torch.where(fin, out, torch.full_like(out, -math.inf))

    gamma = init
    for _ in range(L):
        phi = update(la, torch.logsumexp(lk + gamma[:, None, :], 2), t_a)
        gamma = update(lb, torch.logsumexp(lk + phi[:, :, None], 1), t_b)
    phi = update(la, torch.logsumexp(lk + gamma[:, None, :], 2), t_a)
    return phi, gamma


def autograd_cotangents(lk, la, lb, t_a, t_b, L, init, phi_bar, gamma_bar):
    """``(Λ̄, log ā, log b̄, t̄_a, t̄_b, init̄)`` by torch autograd through :func:`naive_torch`."""
    ins = [torch.tensor(np.asarray(x, dtype=np.float64), requires_grad=True)
           for x in (lk, la, lb, t_a, t_b, init)]
    phi, gamma = naive_torch(*ins[:5], L, ins[5])
    pb, gb = torch.tensor(phi_bar), torch.tensor(gamma_bar)
    fin_p, fin_g = torch.isfinite(phi), torch.isfinite(gamma)
    obj = torch.where(fin_p, phi * pb, 0.0).sum() + torch.where(fin_g, gamma * gb, 0.0).sum()
    grads = torch.autograd.grad(obj, ins, allow_unused=True, materialize_grads=True)
    return [g.numpy() for g in grads]


# --------------------------------------------------------------------------------------------
# forward


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("L", [0, 1, 10])
@pytest.mark.parametrize("domain", ["kernel", "log", "auto"])
def test_forward_matches_naive_loop(kind: str, L: int, domain: str) -> None:
    rng = np.random.default_rng(L + 10 * len(kind))
    lk, la, lb, t_a, t_b = make_case(rng, kind, zero_row=(L == 1))
    phi, gamma, tape = fixed_round_potentials(lk, la, lb, t_a, t_b, L, domain=domain)
    phi_ref, gamma_ref = naive_numpy(lk, la, lb, t_a, t_b, L)
    np.testing.assert_array_equal(np.isfinite(phi), np.isfinite(phi_ref))
    np.testing.assert_allclose(phi, phi_ref, rtol=0, atol=1e-12)
    np.testing.assert_allclose(gamma, gamma_ref, rtol=0, atol=1e-12)
    assert tape.domain == ("log" if domain == "log" else "kernel")
    assert len(tape.rows) == L + 1 and len(tape.cols) == L


def test_zero_rounds_is_the_row_projection() -> None:
    """L = 0 is InfoNCE's row normalisation: phi_i = log a_i - log sum_j K_ij."""
    rng = np.random.default_rng(3)
    lk, la, lb, _t_a, _t_b = make_case(rng, "balanced", B=3, n=8, m=8)
    phi, gamma, _ = fixed_round_potentials(lk, la, lb, 1.0, 1.0, 0)
    np.testing.assert_array_equal(gamma, np.zeros_like(lb))
    plan = np.exp(lk + phi[:, :, None])
    np.testing.assert_allclose(plan.sum(2), np.exp(la), rtol=1e-13)
    softmax = np.exp(lk) / np.exp(lk).sum(2, keepdims=True)
    np.testing.assert_allclose(plan / np.exp(la)[:, :, None], softmax, rtol=1e-12, atol=1e-15)


def test_init_is_gamma_zero() -> None:
    rng = np.random.default_rng(4)
    lk, la, lb, t_a, t_b = make_case(rng, "unbalanced")
    init = rng.standard_normal(lb.shape)
    for domain in ("kernel", "log"):
        phi, gamma, _ = fixed_round_potentials(lk, la, lb, t_a, t_b, 3, domain=domain, init=init)
        phi_ref, gamma_ref = naive_numpy(lk, la, lb, t_a, t_b, 3, init=init)
        np.testing.assert_allclose(phi, phi_ref, atol=1e-12)
        np.testing.assert_allclose(gamma, gamma_ref, atol=1e-12)


def test_kernel_domain_handles_a_wide_cost_range() -> None:
    """Per-step shifts keep K' v' in range even when exp(Λ) alone would overflow/underflow."""
    rng = np.random.default_rng(5)
    lk, la, lb, t_a, t_b = make_case(rng, "unbalanced", eps=0.005)  # |Λ| up to ~600
    lk = lk + 300.0  # exp(Λ) itself would overflow: the kernel is shifted by max Λ
    phi, gamma, tape = fixed_round_potentials(lk, la, lb, t_a, t_b, 5)
    assert tape.domain == "kernel"
    phi_ref, gamma_ref = naive_numpy(lk, la, lb, t_a, t_b, 5)
    np.testing.assert_allclose(phi, phi_ref, rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(gamma, gamma_ref, rtol=1e-12, atol=1e-9)
    pb, gb = rng.standard_normal(la.shape), rng.standard_normal(lb.shape)
    ref = autograd_cotangents(lk, la, lb, t_a, t_b, 5, np.zeros_like(lb), pb, gb)
    np.testing.assert_allclose(unrolled_vjp(tape, pb, gb), ref[0], rtol=1e-9, atol=1e-10)


def test_auto_falls_back_to_log_when_kernel_products_lose_precision() -> None:
    """float32 with a spread of ~300 in Λ: some K' v' underflow, so "auto" uses the log domain
    and stays accurate, and an explicit "kernel" warns."""
    rng = np.random.default_rng(6)
    lk, la, lb, t_a, t_b = make_case(rng, "balanced", n=8, m=8, eps=0.01)
    phi_ref, gamma_ref = naive_numpy(lk, la, lb, t_a, t_b, 4)
    lk32, la32, lb32 = (x.astype(np.float32) for x in (lk, la, lb))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        phi, gamma, tape = fixed_round_potentials(lk32, la32, lb32, t_a, t_b, 4)
    assert tape.domain == "log"
    scale = np.abs(phi_ref).max()
    np.testing.assert_allclose(phi, phi_ref, atol=1e-5 * scale)
    np.testing.assert_allclose(gamma, gamma_ref, atol=1e-5 * scale)
    with pytest.warns(ConvergenceWarning, match="precision"):
        fixed_round_potentials(lk32, la32, lb32, t_a, t_b, 4, domain="kernel")


def test_inputs_are_not_modified() -> None:
    rng = np.random.default_rng(7)
    lk, la, lb, t_a, t_b = make_case(rng, "semi")
    copies = [x.copy() for x in (lk, la, lb)]
    _, _, tape = fixed_round_potentials(lk, la, lb, t_a, t_b, 3)
    unrolled_vjp(tape, np.ones_like(la), np.ones_like(lb))
    for x, c in zip((lk, la, lb), copies, strict=True):
        np.testing.assert_array_equal(x, c)


# --------------------------------------------------------------------------------------------
# unrolled derivative


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("L", [0, 1, 10])
@pytest.mark.parametrize("domain", ["kernel", "log"])
def test_unrolled_vjp_matches_torch_autograd(kind: str, L: int, domain: str) -> None:
    rng = np.random.default_rng(100 + L)
    lk, la, lb, t_a, t_b = make_case(rng, kind, zero_row=(L == 10))
    init = 0.3 * rng.standard_normal(lb.shape)
    pb, gb = rng.standard_normal(la.shape), rng.standard_normal(lb.shape)
    _, _, tape = fixed_round_potentials(lk, la, lb, t_a, t_b, L, domain=domain, init=init)
    cot = unrolled_cotangents(tape, pb, gb)
    ref = autograd_cotangents(lk, la, lb, t_a, t_b, L, init, pb, gb)
    got = [cot.log_kernel, cot.log_a, cot.log_b, cot.t_a, cot.t_b, cot.init]
    for name, x, r in zip(["log_kernel", "log_a", "log_b", "t_a", "t_b", "init"], got, ref,
                          strict=True):
        np.testing.assert_allclose(x, r, rtol=1e-10, atol=1e-10, err_msg=name)
    assert np.all(cot.log_kernel[np.isneginf(lk)] == 0)
    np.testing.assert_array_equal(unrolled_vjp(tape, pb, gb), cot.log_kernel)


@settings(max_examples=20, deadline=None)
@given(
    n=st.integers(1, 6), m=st.integers(1, 6), L=st.integers(0, 6),
    t_a=st.sampled_from([1.0, 0.5]), t_b=st.sampled_from([1.0, 0.8]),
    eps=st.sampled_from([0.1, 1.0, 5.0]), seed=st.integers(0, 2**16),
)
def test_unrolled_vjp_property(n: int, m: int, L: int, t_a: float, t_b: float, eps: float,
                               seed: int) -> None:
    rng = np.random.default_rng(seed)
    lk = -rng.standard_normal((1, n, m)) / eps
    la, lb = rng.standard_normal((1, n)), rng.standard_normal((1, m))
    pb, gb = rng.standard_normal((1, n)), rng.standard_normal((1, m))
    _, _, tape = fixed_round_potentials(lk, la, lb, t_a, t_b, L)
    ref = autograd_cotangents(lk, la, lb, t_a, t_b, L, np.zeros((1, m)), pb, gb)
    np.testing.assert_allclose(unrolled_vjp(tape, pb, gb), ref[0], rtol=1e-9, atol=1e-10)


def test_numpy_and_torch_paths_agree() -> None:
    """The same functions on NumPy arrays and on torch tensors give the same cotangents."""
    rng = np.random.default_rng(8)
    lk, la, lb, t_a, t_b = make_case(rng, "unbalanced")
    pb, gb = rng.standard_normal(la.shape), rng.standard_normal(lb.shape)
    _, _, tape_np = fixed_round_potentials(lk, la, lb, t_a, t_b, 5)
    tt = [torch.tensor(x) for x in (lk, la, lb, pb, gb)]
    _, _, tape_t = fixed_round_potentials(tt[0], tt[1], tt[2], t_a, t_b, 5)
    c_np = unrolled_cotangents(tape_np, pb, gb)
    c_t = unrolled_cotangents(tape_t, tt[3], tt[4])
    assert isinstance(c_t.log_kernel, torch.Tensor) and isinstance(c_np.log_kernel, np.ndarray)
    for f in ("log_kernel", "log_a", "log_b", "t_a", "t_b"):
        np.testing.assert_allclose(getattr(c_np, f), getattr(c_t, f).numpy(), rtol=1e-13,
                                   atol=1e-14, err_msg=f)


def test_array_api_strict() -> None:
    """Forward and both derivatives use only array-API operations."""
    xps = pytest.importorskip("array_api_strict")
    rng = np.random.default_rng(9)
    lk, la, lb, t_a, t_b = make_case(rng, "semi")
    pb, gb = rng.standard_normal(la.shape), rng.standard_normal(lb.shape)
    s = [xps.asarray(x) for x in (lk, la, lb, pb, gb)]
    for domain in ("kernel", "log"):
        phi, gamma, tape = fixed_round_potentials(s[0], s[1], s[2], t_a, t_b, 3, domain=domain)
        phi_ref, _gamma_ref = naive_numpy(lk, la, lb, t_a, t_b, 3)
        np.testing.assert_allclose(np.asarray(phi), phi_ref, atol=1e-12)
        ref = autograd_cotangents(lk, la, lb, t_a, t_b, 3, np.zeros_like(lb), pb, gb)
        np.testing.assert_allclose(np.asarray(unrolled_vjp(tape, s[3], s[4])), ref[0],
                                   atol=1e-10)
    lam_bar = implicit_vjp(s[0], phi, gamma, s[1], s[2], t_a, t_b, s[3], s[4])
    ref = implicit_vjp(lk, np.asarray(phi), np.asarray(gamma), la, lb, t_a, t_b, pb, gb)
    np.testing.assert_allclose(np.asarray(lam_bar), ref, rtol=1e-12, atol=1e-12)


def test_tape_memory_is_linear_in_rounds() -> None:
    """Kernel domain: one (B, n, m) matrix for the whole solve, vectors per round."""
    B, n, m, itemsize = 2, 48, 40, 8
    rng = np.random.default_rng(10)
    lk, la, lb, t_a, t_b = make_case(rng, "unbalanced", B=B, n=n, m=m)
    sizes = {}
    for L in (5, 20):
        _, _, tape = fixed_round_potentials(lk, la, lb, t_a, t_b, L, domain="kernel")
        assert tape.matrix_nbytes == B * n * m * itemsize
        assert all(x.ndim == 2 and x.size <= B * max(n, m) for x in tape.step_arrays())
        assert tape.step_nbytes <= 3 * (L + 1) * (n + m) * B * itemsize
        sizes[L] = tape.step_nbytes
        _, _, log_tape = fixed_round_potentials(lk, la, lb, t_a, t_b, L, domain="log")
        assert log_tape.step_nbytes <= 2 * (L + 1) * (n + m) * B * itemsize
        assert all(x.ndim == 2 for x in log_tape.step_arrays())
        _, _, bare = fixed_round_potentials(lk, la, lb, t_a, t_b, L, record=False)
        assert bare.step_nbytes == 0
    # per-round cost: exactly 15 rounds' worth of vectors between L = 5 and L = 20
    assert sizes[20] - sizes[5] == 15 * 3 * (n + m) * B * itemsize


# --------------------------------------------------------------------------------------------
# implicit derivative


def _plan_cotangents(rng, lk, phi, gamma):
    """Cotangents of the gauge-invariant loss sum(W ⊙ P), P = exp(phi + gamma + Λ)."""
    plan = np.exp(lk + phi[:, :, None] + gamma[:, None, :])
    wp = rng.standard_normal(plan.shape) * plan
    return wp.sum(2), wp.sum(1), wp


@pytest.mark.parametrize("kind", list(KINDS))
def test_implicit_matches_converged_unroll(kind: str) -> None:
    rng = np.random.default_rng(11)
    lk, la, lb, t_a, t_b = make_case(rng, kind, eps=0.7)
    phi, gamma, tape = fixed_round_potentials(lk, la, lb, t_a, t_b, 2000)
    _phi_next, gamma_next = naive_numpy(lk, la, lb, t_a, t_b, 1, init=gamma)
    assert np.abs(gamma_next - gamma).max() < 1e-12  # converged: a fixed point
    pb, gb, _ = _plan_cotangents(rng, lk, phi, gamma)
    if kind != "balanced":  # arbitrary cotangents are fine without a gauge
        pb, gb = pb + rng.standard_normal(pb.shape), gb + rng.standard_normal(gb.shape)
    unr = unrolled_cotangents(tape, pb, gb)
    imp = implicit_cotangents(lk, phi, gamma, la, lb, t_a, t_b, pb, gb)
    scale = np.abs(unr.log_kernel).max()
    np.testing.assert_allclose(imp.log_kernel, unr.log_kernel, atol=1e-7 * scale)
    if kind != "balanced":
        np.testing.assert_allclose(imp.log_a, unr.log_a, atol=1e-7)
        np.testing.assert_allclose(imp.log_b, unr.log_b, atol=1e-7)
        np.testing.assert_allclose(imp.t_a, unr.t_a, rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(imp.t_b, unr.t_b, rtol=1e-6, atol=1e-8)
    assert imp.init is None


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_implicit_refuses_gauge_dependent_cotangents(dtype) -> None:
    """Balanced fixed points form the line (phi + c, gamma - c): a functional that moves along
    it (sum phi, whose cotangent sums to n against 0) has no implicit derivative, and the call
    says so; its gauge-invariant part (phī centred, sum 0 = sum gammā) is accepted, and on an
    unbalanced problem (no gauge) any cotangent is."""
    rng = np.random.default_rng(14)
    lk, la, lb, _, _ = make_case(rng, "balanced", eps=0.7)
    phi, gamma, _ = fixed_round_potentials(lk, la, lb, 1.0, 1.0, 500)
    lk, phi, gamma, la, lb = (x.astype(dtype) for x in (lk, phi, gamma, la, lb))
    ones, zeros = np.ones_like(phi), np.zeros_like(gamma)
    with pytest.raises(ValueError, match="grad='implicit' is not defined for this loss"):
        implicit_vjp(lk, phi, gamma, la, lb, 1.0, 1.0, ones, zeros)
    centred = rng.standard_normal(phi.shape).astype(dtype)
    centred -= centred.mean(axis=1, keepdims=True)
    assert np.all(np.isfinite(implicit_vjp(lk, phi, gamma, la, lb, 1.0, 1.0, centred, zeros)))
    ulk, ula, ulb, t_a, t_b = make_case(rng, "unbalanced", eps=0.7)
    uphi, ugamma, _ = fixed_round_potentials(ulk, ula, ulb, t_a, t_b, 500)
    out = implicit_vjp(ulk, uphi, ugamma, ula, ulb, t_a, t_b, np.ones_like(uphi),
                       np.zeros_like(ugamma))
    assert np.all(np.isfinite(out))


def test_implicit_balanced_with_zero_mass_row_and_float32() -> None:
    rng = np.random.default_rng(12)
    lk, la, lb, _t_a, _t_b = make_case(rng, "balanced", zero_row=True, eps=1.0)
    phi, gamma, tape = fixed_round_potentials(lk, la, lb, 1.0, 1.0, 1500)
    pb, gb, _ = _plan_cotangents(rng, lk, phi, gamma)
    unr = unrolled_vjp(tape, pb, gb)
    imp = implicit_vjp(lk, phi, gamma, la, lb, 1.0, 1.0, pb, gb)
    assert np.all(imp[:, 1, :] == 0)
    np.testing.assert_allclose(imp, unr, atol=1e-8 * np.abs(unr).max())
    f32 = [x.astype(np.float32) for x in (lk, phi, gamma, la, lb, pb, gb)]
    imp32 = implicit_vjp(f32[0], f32[1], f32[2], f32[3], f32[4], 1.0, 1.0, f32[5], f32[6])
    assert imp32.dtype == np.float32
    np.testing.assert_allclose(imp32, unr, atol=1e-4 * np.abs(unr).max())


def test_implicit_warns_when_cg_stops_early() -> None:
    rng = np.random.default_rng(13)
    lk, la, lb, t_a, t_b = make_case(rng, "unbalanced", n=20, m=20, eps=0.2)
    phi, gamma, _ = fixed_round_potentials(lk, la, lb, t_a, t_b, 300)
    pb, gb = rng.standard_normal(la.shape), rng.standard_normal(lb.shape)
    with pytest.warns(ConvergenceWarning, match="conjugate gradients"):
        implicit_vjp(lk, phi, gamma, la, lb, t_a, t_b, pb, gb, max_iter=1)


# --------------------------------------------------------------------------------------------
# input checks


def test_bad_input_raises() -> None:
    rng = np.random.default_rng(14)
    lk, la, lb, _t_a, _t_b = make_case(rng, "balanced")
    with pytest.raises(ValueError, match="log_kernel"):
        fixed_round_potentials(lk[0], la[0], lb[0], 1.0, 1.0, 1)
    with pytest.raises(ValueError, match="log_a"):
        fixed_round_potentials(lk, la[:, :-1], lb, 1.0, 1.0, 1)
    with pytest.raises(ValueError, match="log_b"):
        fixed_round_potentials(lk, la, lb[:1], 1.0, 1.0, 1)
    with pytest.raises(ValueError, match="t_a"):
        fixed_round_potentials(lk, la, lb, 0.0, 1.0, 1)
    with pytest.raises(ValueError, match="t_b"):
        fixed_round_potentials(lk, la, lb, 1.0, 1.5, 1)
    with pytest.raises(TypeError, match="t_a"):
        fixed_round_potentials(lk, la, lb, "1", 1.0, 1)
    with pytest.raises(ValueError, match="n_iter"):
        fixed_round_potentials(lk, la, lb, 1.0, 1.0, -1)
    with pytest.raises(ValueError, match="n_iter"):
        fixed_round_potentials(lk, la, lb, 1.0, 1.0, 2.5)
    with pytest.raises(ValueError, match="domain"):
        fixed_round_potentials(lk, la, lb, 1.0, 1.0, 1, domain="stabilized")
    with pytest.raises(ValueError, match="init"):
        fixed_round_potentials(lk, la, lb, 1.0, 1.0, 1, init=la)
    with pytest.raises(TypeError, match="log_a"):
        fixed_round_potentials(lk, la.astype(np.float32), lb, 1.0, 1.0, 1)
    with pytest.raises(TypeError, match="log_b"):
        fixed_round_potentials(lk, la, torch.tensor(lb), 1.0, 1.0, 1)
    _, _, bare = fixed_round_potentials(lk, la, lb, 1.0, 1.0, 2, record=False)
    with pytest.raises(ValueError, match="record=False"):
        unrolled_vjp(bare, la, lb)
    _, _, tape = fixed_round_potentials(lk, la, lb, 1.0, 1.0, 2)
    with pytest.raises(ValueError, match="phi_bar"):
        unrolled_vjp(tape, lb, lb)
    with pytest.raises(TypeError, match="tape"):
        unrolled_vjp(None, la, lb)  # type: ignore[arg-type]
    assert isinstance(tape, Tape)
    with pytest.raises(ValueError, match="gamma"):
        implicit_vjp(lk, la, la, la, lb, 1.0, 1.0, la, lb)
    with pytest.raises(ValueError, match="max_iter"):
        implicit_vjp(lk, la, lb, la, lb, 1.0, 1.0, la, lb, max_iter=0)


@pytest.mark.parametrize("batch", [1, 3])
def test_matrix_vector_helpers_match_einsum(batch):
    from otcl.solvers.adjoint import _matvec, _rmatvec

    rng = np.random.default_rng(11)
    K = rng.random((batch, 4, 5))
    v, u = rng.random((batch, 5)), rng.random((batch, 4))
    for xp, make in ((np, np.asarray), (torch, torch.from_numpy)):
        kv = _matvec(xp, make(K), make(v))
        ktu = _rmatvec(xp, make(K), make(u))
        np.testing.assert_allclose(np.asarray(kv), np.einsum("bij,bj->bi", K, v), rtol=1e-14)
        np.testing.assert_allclose(np.asarray(ktu), np.einsum("bij,bi->bj", K, u), rtol=1e-14)
        assert tuple(kv.shape) == (batch, 4) and tuple(ktu.shape) == (batch, 5)
