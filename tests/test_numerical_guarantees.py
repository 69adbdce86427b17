"""Numerical guarantees of the PyTorch loss modules, kept as tests.

For every loss module of :mod:`otcl.torch`, both call forms (two views ``loss(z1, z2)`` and an
all-views batch ``z = [z1; z2]`` with ``layout="blocked"``), both cosine metrics and
``eps`` in {0.01, 0.05, 0.5}, on correlated views (``z2 = z1 + 0.1 noise``, ``N`` = 32 or 64,
``d`` = 16):

* the loss and its gradient are finite in float32 and in float64;
* the float32 loss agrees with the float64 loss to ``1e-5`` (``|l32 - l64| <= 1e-5 (1 +
  |l64|)``: relative for large values, absolute near zero); losses with a RINCE term (RINCE,
  GCA-RINCE, GCA-UOT) also admit the float32 conditioning of their powers ``exp(q x)``, whose
  exponents reach ``|x| <= 1/eps`` with ``"neg_cosine"`` (values up to ``e^{q/eps}``, about
  ``e^60`` at ``eps = 0.01``): ``4 q eps32 / eps`` relative;
* the float32 gradient agrees with the float64 one to ``2e-4`` in max-norm relative to the
  largest float64 gradient entry, above the float32 resolution of the gradient:
  ``max |g32 - g64| <= 2e-4 max |g64| + 16 eps32 / (eps n)`` with ``eps32 = 1.19e-7`` and ``n``
  the number of rows of the problem. The plan's entries carry a relative rounding of ``eps32``
  and reach the gradient divided by ``eps`` and averaged over ``n`` rows; at ``eps = 0.01`` on
  these views the positives dominate, the float64 gradient is ``1e-10``-``1e-16`` and float32
  returns rounding noise of about ``2e-8``, which the second term admits.

Oracle: the same loss evaluated in float64 (an independent precision; the float64 values
themselves are checked against direct formulas in the loss and solver tests). The tests assume
nothing about a loss's formula or its defaults beyond finiteness and precision agreement, and
pass ``metric=`` explicitly.
"""

from __future__ import annotations

import warnings
import zlib

import pytest
import torch

import otcl.torch as ott

MODULES = {
    "InfoNCE": ott.InfoNCE,
    "GCAInfoNCE": ott.GCAInfoNCE,
    "RINCE": ott.RINCE,
    "GCARINCE": ott.GCARINCE,
    "GCAUOT": ott.GCAUOT,
    "IOT": ott.IOT,
    "IOTUni": ott.IOTUni,
}
EPS = [0.01, 0.05, 0.5]
METRICS = ["cosine", "neg_cosine"]
FORMS = ["two_view", "all_views"]
D = 16
LOSS_TOL = 1e-5
GRAD_TOL = 2e-4
RINCE_TYPE = {"RINCE", "GCARINCE", "GCAUOT"}  # q = 0.6 by default
EPS32 = float(torch.finfo(torch.float32).eps)


def _loss_tol(name: str, eps: float, v64: float) -> float:
    tol = LOSS_TOL * (1 + abs(v64))
    if name in RINCE_TYPE:
        tol += 4 * 0.6 * EPS32 / eps * abs(v64)
    return tol


def _views(N: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    z1 = torch.randn(N, D, generator=g, dtype=torch.float64)
    z2 = z1 + 0.1 * torch.randn(N, D, generator=g, dtype=torch.float64)
    return z1, z2


def _value_and_grads(name: str, form: str, metric: str, eps: float, z1: torch.Tensor,
                     z2: torch.Tensor, dtype: torch.dtype) -> tuple[float, torch.Tensor]:
    """Loss and gradient w.r.t. all embeddings ``[z1; z2]`` (float64 copies of both)."""
    kw = {"eps": eps, "metric": metric}
    if form == "all_views":
        kw["layout"] = "blocked"
    loss_fn = MODULES[name](**kw)
    x1 = z1.detach().to(dtype).clone().requires_grad_()
    x2 = z2.detach().to(dtype).clone().requires_grad_()
    with warnings.catch_warnings():
        # a ConvergenceWarning or non-finite warning here is a failure of the guarantee
        warnings.simplefilter("error")
        value = loss_fn(x1, x2) if form == "two_view" else loss_fn(torch.cat([x1, x2]))
        value.backward()
    grad = torch.cat([x1.grad, x2.grad]).double()
    return float(value.detach().double()), grad


@pytest.mark.parametrize("eps", EPS)
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("name", list(MODULES))
def test_finite_and_float32_agrees_with_float64(name, form, metric, eps):
    N = 32 if eps == 0.01 else 64  # both ends of the range; small eps on the smaller batch
    z1, z2 = _views(N, seed=zlib.crc32(repr((name, form, metric, eps)).encode()))
    v64, g64 = _value_and_grads(name, form, metric, eps, z1, z2, torch.float64)
    v32, g32 = _value_and_grads(name, form, metric, eps, z1, z2, torch.float32)
    for dt, v, g in (("float64", v64, g64), ("float32", v32, g32)):
        assert torch.isfinite(torch.tensor(v)), f"{dt} loss is not finite: {v}"
        assert torch.isfinite(g).all(), f"{dt} gradient is not finite"
    assert abs(v32 - v64) <= _loss_tol(name, eps, v64), (
        f"float32 loss {v32!r} vs float64 {v64!r}: difference {abs(v32 - v64):.3g}"
    )
    scale = float(g64.abs().max())
    err = float((g32 - g64).abs().max())
    rows = 2 * N  # both call forms are the 2N x 2N all-views problem
    floor = 16 * torch.finfo(torch.float32).eps / (eps * rows)
    assert err <= GRAD_TOL * scale + floor, (
        f"float32 gradient error {err:.3g} > {GRAD_TOL} x max |grad| {scale:.3g} + {floor:.3g}"
    )


@pytest.mark.parametrize("name", list(MODULES))
def test_finite_in_float32_down_to_eps_1e_3(name):
    """Below the grid above: at ``eps = 0.001`` (cosine costs span ``2 / eps = 2000`` in units of
    ``eps``, far beyond float32's exponent range) the loss and its gradient stay finite and the
    loss agrees with float64 to ``1e-5 (1 + |l64|)``; the gradient agrees as above."""
    z1, z2 = _views(32, seed=7)
    v64, g64 = _value_and_grads(name, "two_view", "cosine", 1e-3, z1, z2, torch.float64)
    v32, g32 = _value_and_grads(name, "two_view", "cosine", 1e-3, z1, z2, torch.float32)
    assert torch.isfinite(g32).all() and torch.isfinite(torch.tensor(v32))
    assert abs(v32 - v64) <= LOSS_TOL * (1 + abs(v64))
    floor = 16 * torch.finfo(torch.float32).eps / (1e-3 * 64)
    assert float((g32 - g64).abs().max()) <= GRAD_TOL * float(g64.abs().max()) + floor


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("name", list(MODULES))
def test_bfloat16_inputs_are_computed_in_float32(name, form):
    """bfloat16 embeddings: the loss is the float32 loss of the bfloat16 values (bitwise), is
    returned in float32, and its gradient comes back finite in bfloat16."""
    z1, z2 = _views(32, seed=11)
    b1 = z1.to(torch.bfloat16).requires_grad_()
    b2 = z2.to(torch.bfloat16).requires_grad_()
    kw = {"eps": 0.05, "metric": "cosine"}
    if form == "all_views":
        kw["layout"] = "blocked"
    loss_fn = MODULES[name](**kw)
    value = loss_fn(b1, b2) if form == "two_view" else loss_fn(torch.cat([b1, b2]))
    value.backward()
    f1, f2 = b1.detach().float(), b2.detach().float()
    ref = loss_fn(f1, f2) if form == "two_view" else loss_fn(torch.cat([f1, f2]))
    assert value.dtype == torch.float32
    assert torch.equal(value.detach(), ref)
    assert b1.grad.dtype == torch.bfloat16 and torch.isfinite(b1.grad.float()).all()
    assert torch.isfinite(b2.grad.float()).all()
