"""Gradients through the inner solve never come back silently wrong.

* Second derivatives (a backward pass with ``create_graph=True``) raise ``RuntimeError`` for
  every gradient mode that differentiates the solve; with ``grad="detach"`` (potentials as
  constants) the second derivative is that of the detached loss, checked against central finite
  differences of the first-order gradient.
* A non-finite gradient is never returned without a ``NonFiniteGradientWarning`` (a
  ``RuntimeWarning``), in the torch backward and in :func:`otcl.value_and_grad`.
* A loss value kept by the caller (after its backward, or computed under ``torch.no_grad()``)
  holds no pooled ``n x n`` buffer: the pool's buffers are all free again.
"""

from __future__ import annotations

import gc
import math

import numpy as np
import pytest
import torch
from finite_differences import central_differences

import otcl
import otcl.torch as ott
from otcl.solvers.result import NonFiniteGradientWarning


def _views(N: int = 12, d: int = 4, seed: int = 0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    z1 = torch.randn(N, d, generator=g, dtype=torch.float64)
    z2 = z1 + 0.3 * torch.randn(N, d, generator=g, dtype=torch.float64)
    return z1.to(dtype), z2.to(dtype)


# ------------------------------------------------------------------------------------------
# second derivatives


@pytest.mark.parametrize("grad", ["unroll", "implicit"])
@pytest.mark.parametrize("module", [ott.InfoNCE, ott.GCAInfoNCE, ott.GCAUOT])
def test_second_derivative_raises(module, grad):
    z1, z2 = _views()
    z = z1.clone().requires_grad_()
    loss = module(eps=0.5, grad=grad, metric="cosine")(z, z2)
    with pytest.raises(RuntimeError, match="second derivatives through the Sinkhorn solve"):
        (gz,) = torch.autograd.grad(loss, z, create_graph=True)
        (gz * torch.ones_like(gz)).sum().backward()


def test_first_order_gradient_with_create_graph_false_still_works():
    z1, z2 = _views()
    z = z1.clone().requires_grad_()
    loss = ott.GCAInfoNCE(eps=0.5, metric="cosine")(z, z2)
    (gz,) = torch.autograd.grad(loss, z)
    assert torch.isfinite(gz).all()


def test_detached_mode_allows_second_derivatives():
    """``grad="detach"`` has no derivative through the solve (the potentials are constants),
    so a graph-building backward pass is that of an ordinary torch function and works."""
    z1, z2 = _views(N=6, d=3)
    z = z1.clone().requires_grad_()
    loss = ott.GCAInfoNCE(eps=0.5, grad="detach", metric="cosine")(z, z2)
    (gz,) = torch.autograd.grad(loss, z, create_graph=True)
    (hv,) = torch.autograd.grad(gz.sum(), z)
    assert torch.isfinite(hv).all()


# ------------------------------------------------------------------------------------------
# non-finite gradients


@pytest.mark.filterwarnings("ignore:implicit gradient")  # CG meets the forced inf as well
@pytest.mark.filterwarnings("ignore:invalid value encountered")  # NumPy's products of inf
@pytest.mark.parametrize("grad", ["unroll", "implicit"])
def test_torch_backward_warns_on_non_finite_gradient(grad):
    n = 5
    lk = torch.randn(n, n, dtype=torch.float64, requires_grad=True)
    la = torch.full((n,), -math.log(n), dtype=torch.float64)
    phi, _ = ott.inner_potentials(lk, la, la, 1.0, 1.0, 3, grad=grad)
    bad = torch.ones(n, dtype=torch.float64)
    bad[2] = math.inf
    with pytest.warns(NonFiniteGradientWarning, match="inner solve.*eps too small"):
        (phi * bad).sum().backward()
    assert not torch.isfinite(lk.grad).all()  # returned as computed, not hidden


def test_torch_backward_is_quiet_on_finite_gradient():
    import warnings

    z1, z2 = _views()
    z = z1.clone().requires_grad_()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ott.GCAInfoNCE(eps=0.1, metric="cosine")(z, z2).backward()
    assert torch.isfinite(z.grad).all()


@pytest.mark.parametrize("grad", ["unroll", "implicit"])
def test_value_and_grad_warns_on_non_finite_gradient(monkeypatch, grad):
    """Forced: the adjoint of the inner solve returns a NaN entry (as an overflow would)."""
    import dataclasses

    import otcl.grad as og

    def poisoned(fn):
        def wrapper(*args, **kwargs):
            cot = fn(*args, **kwargs)
            lk = cot.log_kernel.copy()
            lk[0, 0, 1] = np.nan
            return dataclasses.replace(cot, log_kernel=lk)
        return wrapper

    monkeypatch.setattr(og, "unrolled_cotangents", poisoned(og.unrolled_cotangents))
    monkeypatch.setattr(og, "implicit_cotangents", poisoned(og.implicit_cotangents))
    z1, z2 = (x.numpy() for x in _views(N=8, d=3))
    with pytest.warns(NonFiniteGradientWarning, match=r"value_and_grad\('gca_ince'\).*eps"):
        _, (g1, _) = otcl.value_and_grad("gca_ince", z1, z2, eps=0.5, metric="cosine",
                                         layout="cross", grad=grad)
    assert not np.isfinite(g1).all()  # returned as computed, not hidden


def test_value_and_grad_is_quiet_on_finite_gradient():
    import warnings

    z1, z2 = (x.numpy() for x in _views(N=8, d=3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, (g1, g2) = otcl.value_and_grad("gca_uot", z1, z2, eps=0.1, metric="cosine")
    assert np.isfinite(g1).all() and np.isfinite(g2).all()


# ------------------------------------------------------------------------------------------
# kept loss values hold no pooled buffer

MODULES = [ott.InfoNCE, ott.GCAInfoNCE, ott.RINCE, ott.GCARINCE, ott.GCAUOT, ott.IOT,
           ott.IOTUni]


@pytest.mark.parametrize("grad", ["unroll", "implicit"])
@pytest.mark.parametrize("mode", ["after_backward", "no_grad"])
@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__)
def test_kept_loss_holds_no_pooled_buffer(module, mode, grad):
    from otcl.buffers import BUFFER_POOL, POOL_MIN_BYTES

    if module is ott.GCARINCE and grad == "implicit":
        pytest.skip("a balanced GCA-RINCE has no implicit derivative (it reads the gauge)")

    n = 512  # n x n float32 = 1 MiB: pooled
    assert 4 * n * n >= POOL_MIN_BYTES
    z1, z2 = _views(N=n, d=8, seed=1, dtype=torch.float32)
    z1.requires_grad_()
    loss_fn = module(eps=0.5, grad=grad, metric="cosine", layout="cross")
    kept = []
    for _ in range(2):
        if mode == "no_grad":
            with torch.no_grad():
                kept.append(loss_fn(z1, z2))
        else:
            value = loss_fn(z1, z2)
            value.backward()
            kept.append(value)
    gc.collect()
    assert BUFFER_POOL.nbytes > 0  # the loss did use pooled buffers
    assert BUFFER_POOL.free_nbytes == BUFFER_POOL.nbytes
    assert all(torch.isfinite(v) for v in kept)


def test_torch_func_hessian_is_the_exact_second_derivative() -> None:
    """Under torch.func the rounds are traced as written: hessian() equals central finite
    differences of the (exact, unrolled) eager gradient."""
    z1, z2 = _views(N=5, d=3, seed=7)
    loss = ott.GCAInfoNCE(eps=0.5, n_iter=5)

    def grad_at(x):
        x = x.clone().requires_grad_()
        loss(x, z2).backward()
        return x.grad

    hess = torch.func.hessian(lambda x: loss(x, z2))(z1)
    fd = central_differences(lambda z: grad_at(torch.from_numpy(z)).numpy(), z1.numpy(), h=1e-5)
    torch.testing.assert_close(hess, torch.from_numpy(fd), rtol=1e-6, atol=1e-8)
