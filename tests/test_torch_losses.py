"""The PyTorch loss modules: call forms, reductions, details, the temperature (float, buffer,
learnable parameter), half precision, autocast and input errors.

Oracles: ``torch.nn.functional.cross_entropy`` / ``log_softmax`` for InfoNCE and SupCon, a plain
log-domain Sinkhorn loop written here in torch (value and autograd gradient) for GCA-INCE,
central finite differences for the temperature gradient, and float32 computations on the
up-cast inputs for half precision. The gradient modes themselves are tested elsewhere.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from finite_differences import central_differences
from torch import nn
from torch.nn import functional as tnf

import otcl
import otcl.torch as ott
from otcl.alignment.losses import LossDetails

MODULES = {
    "info_nce": ott.InfoNCE,
    "gca_ince": ott.GCAInfoNCE,
    "rince": ott.RINCE,
    "gca_rince": ott.GCARINCE,
    "gca_uot": ott.GCAUOT,
    "iot": ott.IOT,
    "iot_uni": ott.IOTUni,
}


def pairs(N: int = 8, d: int = 5, seed: int = 0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    z1 = torch.randn(N, d, generator=g, dtype=torch.float64)
    z2 = z1 + 0.5 * torch.randn(N, d, generator=g, dtype=torch.float64)
    return z1.to(dtype), z2.to(dtype)


def plain_gca_ince(z1: torch.Tensor, z2: torch.Tensor, eps: float, n_iter: int,
                   target: torch.Tensor | None = None) -> torch.Tensor:
    """``(1/N) KL(T || P)`` with ``P`` after ``n_iter`` log-domain rounds and a row step."""
    lk = tnf.normalize(z1, dim=1) @ tnf.normalize(z2, dim=1).T / eps
    T = torch.eye(len(z1), dtype=z1.dtype) if target is None else target
    log_a, log_b = T.sum(1).log(), T.sum(0).log()
    gamma = torch.zeros(len(z2), dtype=z1.dtype)
    for _ in range(n_iter):
        phi = log_a - torch.logsumexp(lk + gamma[None, :], dim=1)
        gamma = log_b - torch.logsumexp(lk + phi[:, None], dim=0)
    phi = log_a - torch.logsumexp(lk + gamma[None, :], dim=1)
    log_p = phi[:, None] + gamma[None, :] + lk
    pos = T > 0
    kl = torch.where(pos, T * (torch.where(pos, T, 1.0).log() - log_p), 0.0) - T + log_p.exp()
    return kl.sum() / len(z1)


# ------------------------------------------------------------------------------------------
# call forms and values


def test_info_nce_module_is_cross_entropy_value_and_gradient():
    eps = 0.3
    z1, z2 = pairs()
    a = z1.clone().requires_grad_()
    b = z2.clone().requires_grad_()
    loss = ott.InfoNCE(eps=eps, layout="cross")(a, b)
    loss.backward()
    a0 = z1.clone().requires_grad_()
    b0 = z2.clone().requires_grad_()
    logits = tnf.normalize(a0, dim=1) @ tnf.normalize(b0, dim=1).T / eps
    ref = tnf.cross_entropy(logits, torch.arange(len(z1)))
    ref.backward()
    assert loss.item() == pytest.approx(ref.item(), abs=1e-12)
    torch.testing.assert_close(a.grad, a0.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(b.grad, b0.grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("n_iter", [1, 5])
def test_gca_ince_module_matches_a_plain_loop_value_and_gradient(n_iter):
    eps = 0.5
    z1, z2 = pairs(seed=1)
    a, b = z1.clone().requires_grad_(), z2.clone().requires_grad_()
    loss = ott.GCAInfoNCE(eps=eps, n_iter=n_iter, layout="cross")(a, b)
    loss.backward()
    a0, b0 = z1.clone().requires_grad_(), z2.clone().requires_grad_()
    ref = plain_gca_ince(a0, b0, eps, n_iter)
    ref.backward()
    assert loss.item() == pytest.approx(ref.item(), abs=1e-12)
    torch.testing.assert_close(a.grad, a0.grad, rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(b.grad, b0.grad, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("layout", ["blocked", "interleaved"])
def test_call_form_labels_is_supcon_plus_entropy(layout):
    eps = 0.5
    z1, z2 = pairs(6, seed=2)
    z = torch.cat([z1, z2]) if layout == "blocked" else torch.stack([z1, z2], 1).reshape(12, -1)
    y = torch.tensor([0, 1, 0, 2, 1, 0])
    y_rows = y.repeat(2) if layout == "blocked" else y.repeat_interleave(2)
    allowed = ~torch.eye(12, dtype=torch.bool)
    logits = (tnf.normalize(z, dim=1) @ tnf.normalize(z, dim=1).T / eps).masked_fill(
        ~allowed, -math.inf)
    log_sm = tnf.log_softmax(logits, dim=1)
    positive = (y_rows[:, None] == y_rows[None, :]) & allowed
    n_pos = positive.sum(1).double()
    supcon = (-torch.where(positive, log_sm, 0.0).sum(1) / n_pos).mean()
    expected = supcon - n_pos.log().mean()  # + sum_j T_ij log T_ij, the target's constant
    got = ott.InfoNCE(eps=eps, layout=layout)(z, labels=y)
    assert got.item() == pytest.approx(expected.item(), abs=1e-12)
    # one label per row gives the same target
    assert ott.InfoNCE(eps=eps, layout=layout)(z, labels=y_rows).item() == pytest.approx(
        expected.item(), abs=1e-12)


def test_call_form_target():
    eps, n_iter = 0.5, 4
    z1, z2 = pairs(6, seed=3)
    D = torch.tensor([0, 0, 1, 1, 2, 0])
    T = otcl.domain_prior(D, 0.3, 0.1, like=z1)
    loss = ott.GCAInfoNCE(eps=eps, n_iter=n_iter, layout="cross")
    got = loss(z1, z2, target=T)
    assert got.item() == pytest.approx(plain_gca_ince(z1, z2, eps, n_iter, T).item(), abs=1e-12)
    assert got.item() != pytest.approx(loss(z1, z2).item())


@pytest.mark.parametrize("name", list(MODULES))
@pytest.mark.parametrize("form", ["cross", "interleaved_labels", "three_views"])
def test_modules_equal_the_numpy_functions(name, form):
    z1, z2 = pairs(6, seed=4)
    y = np.array([0, 1, 0, 2, 1, 2])
    fn = getattr(otcl, name)
    if form == "cross":
        got = MODULES[name]()(z1, z2)
        ref = fn(z1.numpy(), z2.numpy())
    elif form == "interleaved_labels":
        z = torch.stack([z1, z2], 1).reshape(12, -1)
        got = MODULES[name](layout="interleaved")(z, labels=torch.tensor(y))
        ref = fn(z.numpy(), layout="interleaved", labels=y)
    else:
        z = torch.cat([z1, z2, z1 + 0.1 * z2])
        got = MODULES[name](layout="blocked", n_views=3)(z)
        ref = fn(z.numpy(), layout="blocked", n_views=3)
    assert isinstance(got, torch.Tensor) and got.dtype == torch.float64 and got.ndim == 0
    assert got.item() == pytest.approx(float(ref), abs=1e-12)


def test_functional_forms_equal_modules():
    z1, z2 = pairs(6, seed=5)
    for name, cls in MODULES.items():
        f = getattr(ott, name)
        assert f(z1, z2).item() == pytest.approx(cls()(z1, z2).item(), abs=1e-14)


def test_alignment_loss_module():
    eps = 0.5
    z1, z2 = pairs(6, seed=6)
    T = torch.eye(6, dtype=torch.float64) + 0.2
    m = ott.AlignmentLoss(eps=eps, n_iter=3, divergence={"kl": 0.5, "rince": 0.5}, q=0.7,
                          lam=0.1, layout="cross")
    got = m(z1, z2, target=T)
    kl = otcl.gca_ince(z1.numpy(), z2.numpy(), eps=eps, n_iter=3, target=T.numpy(),
                       layout="cross")
    rn = otcl.gca_rince(z1.numpy(), z2.numpy(), eps=eps, n_iter=3, q=0.7, lam=0.1,
                        target=T.numpy(), layout="cross")
    assert got.item() == pytest.approx(0.5 * float(kl) + 0.5 * float(rn), abs=1e-12)
    assert plain_gca_ince(z1, z2, eps, 3, T).item() == pytest.approx(float(kl), abs=1e-12)


@pytest.mark.parametrize("name", list(MODULES))
def test_module_reduction_and_details(name):
    z1, z2 = pairs(6, seed=7)
    rows = MODULES[name](reduction="none")(z1, z2)
    assert rows.shape == (12,)  # the SimCLR problem: one row per view
    assert MODULES[name](reduction="sum")(z1, z2).item() == pytest.approx(rows.sum().item(),
                                                                          abs=1e-12)
    default = MODULES[name]()(z1, z2)
    assert isinstance(default, torch.Tensor)
    assert default.item() == pytest.approx(rows.mean().item(), abs=1e-12)
    out = MODULES[name]()(z1, z2, return_details=True)
    assert isinstance(out, tuple) and len(out) == 2
    value, det = out
    assert isinstance(det, LossDetails)
    assert value.item() == default.item()
    torch.testing.assert_close(det.per_sample, rows)
    # asking for details once does not change later calls
    again = MODULES[name]()(z1, z2)
    assert isinstance(again, torch.Tensor) and again.item() == default.item()


# ------------------------------------------------------------------------------------------
# temperature


def test_eps_float_buffer_and_parameter_give_the_same_value():
    z1, z2 = pairs(seed=8)
    ref = ott.GCAInfoNCE(eps=0.4)(z1, z2).item()
    buf = ott.GCAInfoNCE(eps=torch.tensor(0.4, dtype=torch.float64))
    assert "eps" in dict(buf.named_buffers()) and not list(buf.parameters())
    assert buf(z1, z2).item() == pytest.approx(ref, abs=1e-14)
    par = ott.GCAInfoNCE(eps=nn.Parameter(torch.tensor(0.4, dtype=torch.float64)))
    assert [p for p in par.parameters()] == [par.eps]
    assert par(z1, z2).item() == pytest.approx(ref, abs=1e-14)
    # a float32 buffer with float64 embeddings: computed in the embeddings' dtype
    buf32 = ott.GCAInfoNCE(eps=torch.tensor(0.4))
    out = buf32(z1, z2)
    assert out.dtype == torch.float64
    assert out.item() == pytest.approx(ref, abs=1e-7)


def test_eps_buffer_follows_module_to():
    m = ott.InfoNCE(eps=torch.tensor(0.5))
    m = m.to(torch.float64)
    assert m.eps.dtype == torch.float64
    assert "eps" in m.state_dict()


@pytest.mark.parametrize("name", list(MODULES))
def test_learnable_eps_gradient_matches_finite_differences(name):
    z1, z2 = pairs(6, seed=9)
    eps0, h = 0.4, 1e-6
    kw = {"rho": 0.3} if name == "gca_uot" else {}
    p = nn.Parameter(torch.tensor(eps0, dtype=torch.float64))
    m = MODULES[name](eps=p, **kw)
    m(z1, z2).backward()
    assert p.grad is not None and torch.isfinite(p.grad)
    with torch.no_grad():
        fd = (MODULES[name](eps=eps0 + h, **kw)(z1, z2)
              - MODULES[name](eps=eps0 - h, **kw)(z1, z2)) / (2 * h)
    assert p.grad.item() == pytest.approx(fd.item(), rel=1e-6, abs=1e-7)


def test_learnable_eps_trains():
    """A few optimiser steps on the temperature alone change it and lower the loss."""
    z1, z2 = pairs(16, seed=10)
    p = nn.Parameter(torch.tensor(1.0, dtype=torch.float64))
    m = ott.GCAInfoNCE(eps=p, n_iter=3)
    opt = torch.optim.SGD(m.parameters(), lr=0.05)
    first = m(z1, z2).item()
    for _ in range(5):
        opt.zero_grad()
        m(z1, z2).backward()
        opt.step()
    assert p.item() != 1.0
    assert m(z1, z2).item() < first


# ------------------------------------------------------------------------------------------
# precision


@pytest.mark.parametrize("half", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", list(MODULES))
def test_half_precision_inputs(name, half):
    z1, z2 = pairs(8, seed=11)
    a = z1.to(half).requires_grad_()
    b = z2.to(half).requires_grad_()
    loss = MODULES[name]()(a, b)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    # the same as float32 on the up-cast inputs
    ref = MODULES[name]()(a.detach().float(), b.detach().float())
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6, abs=1e-6)
    loss.backward()
    for t in (a, b):
        assert t.grad is not None and t.grad.dtype == half
        assert torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0


def test_half_precision_with_learnable_eps_and_labels():
    z1, z2 = pairs(6, seed=12)
    z = torch.cat([z1, z2]).to(torch.bfloat16).requires_grad_()
    p = nn.Parameter(torch.tensor(0.5))
    loss = ott.GCAUOT(eps=p, layout="blocked")(z, labels=torch.tensor([0, 1, 0, 1, 2, 2]))
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(p.grad) and p.grad.dtype == torch.float32
    assert z.grad.dtype == torch.bfloat16 and torch.isfinite(z.grad).all()


@pytest.mark.parametrize("name", list(MODULES))
def test_autocast_bfloat16_gives_no_nan(name):
    torch.manual_seed(13)
    enc = nn.Linear(6, 4)
    x1, x2 = torch.randn(8, 6), torch.randn(8, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z1, z2 = enc(x1), enc(x1 + 0.3 * x2)
        assert z1.dtype == torch.bfloat16
        loss = MODULES[name]()(z1, z2)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    for prm in enc.parameters():
        assert prm.grad is not None and torch.isfinite(prm.grad).all()


def test_float32_stays_float32():
    z1, z2 = pairs(6, seed=14, dtype=torch.float32)
    for cls in MODULES.values():
        out = cls()(z1, z2)
        assert out.dtype == torch.float32


def test_inputs_not_modified():
    z1, z2 = pairs(6, seed=15)
    a, b = z1.clone(), z2.clone()
    y = torch.tensor([0, 1, 0, 1, 2, 2])
    for cls in MODULES.values():
        cls()(a, b)
        cls(layout="blocked")(torch.cat([a, b]), labels=y)
    assert torch.equal(a, z1) and torch.equal(b, z2)
    assert torch.equal(y, torch.tensor([0, 1, 0, 1, 2, 2]))


@pytest.mark.parametrize("name", list(MODULES))
def test_repeated_calls_keep_no_buffer_alive(name):
    """After forward + backward, no large buffer of the loss stays in use: the pool does not
    grow from call to call (a buffer held by a leftover graph would be replaced by a fresh one
    each time, growing memory by ``n x n`` per training step)."""
    from otcl.buffers import BUFFER_POOL, POOL_MIN_BYTES

    n = 512  # n x n float32 = POOL_MIN_BYTES: the loss's kernel buffers are pooled
    assert 4 * n * n >= POOL_MIN_BYTES
    z1, z2 = pairs(n, 16, seed=16, dtype=torch.float32)
    z1.requires_grad_()
    loss = MODULES[name]()
    sizes = []
    for _ in range(3):
        loss(z1, z2).backward()
        sizes.append(BUFFER_POOL.nbytes)
        assert BUFFER_POOL.free_nbytes == BUFFER_POOL.nbytes
    assert sizes[2] == sizes[1]


# ------------------------------------------------------------------------------------------
# errors


@pytest.mark.parametrize("name", list(MODULES))
def test_bad_inputs_raise_clear_errors(name):
    cls = MODULES[name]
    z1, z2 = pairs(6, seed=16)
    with pytest.raises(ValueError, match="same shape"):
        cls()(z1, z2[:5])
    with pytest.raises(TypeError, match="real floating"):
        cls()(z1.long(), z2.long())
    with pytest.raises(TypeError, match="torch tensors"):
        cls()(z1.numpy(), z2.numpy())
    with pytest.raises(TypeError, match="z2 has dtype"):
        cls()(z1, z2.float())
    for eps in (0.0, -0.5, math.nan, math.inf):
        with pytest.raises(ValueError, match="eps"):
            cls(eps=eps)
    for eps in (0.0, -0.5):
        with pytest.raises(ValueError, match="eps"):
            cls(eps=torch.tensor(eps))(z1, z2)
    with pytest.raises(ValueError, match="eps"):
        cls(eps=torch.tensor([0.5, 0.5]))(z1, z2)
    with pytest.raises(ValueError, match="labels has length"):
        cls(layout="blocked")(torch.cat([z1, z2]), labels=torch.arange(5))
    with pytest.raises(ValueError, match="layout"):
        cls()(torch.cat([z1, z2]))
    with pytest.raises(ValueError, match="reduction"):
        cls(reduction="avg")(z1, z2)
    with pytest.raises(ValueError, match="grad"):
        cls(grad="exact")
    with pytest.raises(ValueError, match="contains NaN or inf"):
        cls()(z1.masked_fill(torch.eye(6, 5, dtype=torch.bool), math.nan), z2)


def test_learnable_eps_that_turns_negative_raises():
    z1, z2 = pairs(6, seed=17)
    p = nn.Parameter(torch.tensor(0.5, dtype=torch.float64))
    m = ott.InfoNCE(eps=p)
    with torch.no_grad():
        p.fill_(-0.1)
    with pytest.raises(ValueError, match="eps must be positive"):
        m(z1, z2)


@pytest.mark.parametrize("cls", [ott.RINCE, ott.GCARINCE, ott.GCAUOT])
def test_rince_hyper_parameters_checked_at_construction(cls):
    for q in (0.0, 1.5):
        with pytest.raises(ValueError, match="q"):
            cls(q=q)
    with pytest.raises(ValueError, match="lam"):
        cls(lam=0.0)


@pytest.mark.parametrize("grad", ["unroll", "implicit"])
def test_loss_products_run_in_one_thread_pool_at_several_threads(monkeypatch, grad):
    """At two torch threads, the NumPy products of a loss's own autograd steps (the log-kernel
    product and the inner solve, forward and backward) run while torch's own operations are on
    the calling thread; torch gets its two threads back after the step."""
    pytest.importorskip("threadpoolctl")
    from otcl import backend
    from otcl.ops.torch_ops import TorchCpuOps

    seen: list[int] = []
    matmul, product = backend.host_matmul, TorchCpuOps._host_product

    def recording_matmul(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return matmul(*args, **kwargs)

    def recording_product(self, *args, **kwargs):
        seen.append(torch.get_num_threads())
        return product(self, *args, **kwargs)

    monkeypatch.setattr(backend, "host_matmul", recording_matmul)
    monkeypatch.setattr(TorchCpuOps, "_host_product", recording_product)
    gen = torch.Generator().manual_seed(4)
    z1 = torch.randn(40, 8, generator=gen, requires_grad=True)
    z2 = torch.randn(40, 8, generator=gen, requires_grad=True)
    loss = otcl.torch.GCAInfoNCE(eps=0.5, n_iter=5, layout="cross", grad=grad)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        value = loss(z1, z2)
        value.backward()
        after = torch.get_num_threads()
    finally:
        torch.set_num_threads(threads)
    assert seen and all(t == 1 for t in seen)
    assert after == 2
    ref = otcl.torch.GCAInfoNCE(eps=0.5, n_iter=5, layout="cross", grad=grad)
    z1r, z2r = z1.detach().clone().requires_grad_(), z2.detach().clone().requires_grad_()
    ref(z1r, z2r).backward()  # the same step on one thread (no pool to manage)
    torch.testing.assert_close(z1.grad, z1r.grad)


@pytest.mark.parametrize("make", [
    lambda: ott.GCARINCE(grad="implicit"),
    lambda: ott.GCAUOT(rho=math.inf, grad="implicit"),
], ids=["GCARINCE", "GCAUOT-balanced"])
def test_implicit_refuses_balanced_losses_that_read_the_gauge(make) -> None:
    """The RINCE term of a balanced plan reads (K v)_i: its implicit derivative is not defined
    (the unrolled one is), so backward raises, naming the mode to use."""
    torch.manual_seed(0)
    z1 = torch.randn(8, 4, dtype=torch.float64, requires_grad=True)
    z2 = torch.randn(8, 4, dtype=torch.float64)
    value = make()(z1, z2)
    with pytest.raises(ValueError, match="Use grad='unroll'"):
        value.backward()


@pytest.mark.parametrize("make", [
    lambda g: ott.GCAInfoNCE(grad=g, n_iter=300),
    lambda g: ott.IOT(grad=g, n_iter=300),
    lambda g: ott.GCAUOT(grad=g, n_iter=300),  # unbalanced (rho = 0.2): no gauge
], ids=["GCAInfoNCE", "IOT", "GCAUOT"])
def test_implicit_equals_unroll_at_convergence_for_gauge_free_losses(make) -> None:
    torch.manual_seed(1)
    z2 = torch.randn(8, 4, dtype=torch.float64)
    grads = []
    for mode in ("unroll", "implicit"):
        z1 = torch.randn(8, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
        z1.requires_grad_()
        make(mode)(z1, z2).backward()
        grads.append(z1.grad)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("n_iter", [300, 301], ids=["row-final", "column-final"])
@pytest.mark.parametrize("loss", ["iot", "gca_ince"])
def test_detach_is_exact_at_convergence_for_the_cross_entropy_too(loss, n_iter) -> None:
    """Balanced, matched marginals, converged: the envelope theorem makes "detach" exact.
    IOT's cross-entropy has no mass term, so its detached gradient needs the plan's own
    (P - T, not -T); checked against central finite differences of the NumPy loss, for the
    embeddings and for eps."""
    rng = np.random.default_rng(3)
    z1 = rng.standard_normal((6, 3))
    z2 = z1 + 0.7 * rng.standard_normal((6, 3))
    fn = getattr(otcl, loss)

    def value(x, eps=0.5):
        return float(fn(x, z2, eps=eps, n_iter=n_iter))

    fd = central_differences(value, z1)
    fd_eps = float(central_differences(lambda e: value(z1, float(e)), np.array(0.5)))
    x = torch.tensor(z1, requires_grad=True)
    eps = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    out = getattr(ott, loss)(x, torch.tensor(z2), eps=eps, n_iter=n_iter, grad="detach")
    out.backward()
    np.testing.assert_allclose(float(out.detach()), value(z1), rtol=1e-12)  # value unchanged
    np.testing.assert_allclose(x.grad.numpy(), fd, atol=1e-7)
    np.testing.assert_allclose(float(eps.grad), fd_eps, rtol=1e-6)


def test_implicit_under_a_transform_warns_and_unrolls() -> None:
    """torch.func differentiates the rounds as written: the gradient is the unrolled one, and
    the loss says so instead of changing mode silently."""
    torch.manual_seed(4)
    z1 = torch.randn(8, 4, dtype=torch.float64)
    z2 = torch.randn(8, 4, dtype=torch.float64)
    with pytest.warns(UserWarning, match="grad='implicit' under torch.compile or a torch.func"):
        g = torch.func.grad(lambda x: ott.GCAInfoNCE(n_iter=3, grad="implicit")(x, z2))(z1)
    x = z1.clone().requires_grad_()
    ott.GCAInfoNCE(n_iter=3, grad="unroll")(x, z2).backward()
    torch.testing.assert_close(g, x.grad, rtol=1e-10, atol=1e-12)
