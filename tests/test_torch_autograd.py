"""The inner solve as a torch.autograd.Function (otcl.torch.autograd).

Oracles: ``torch.autograd.gradcheck`` (finite differences) for ``unroll`` and, at convergence,
``implicit``; the envelope theorem for ``detach`` (the gradient of the entropic OT dual at its
optimum needs no derivative of the potentials); torch autograd through a plainly written loop.
"""

from __future__ import annotations

import gc
import math
import weakref

import pytest
import torch

from otcl.torch import InnerSolve, inner_potentials

DT = torch.float64


def _setup(seed: int, B: int = 2, n: int = 5, m: int = 6, masked: bool = True,
           eps: float = 0.7):
    g = torch.Generator().manual_seed(seed)
    C = torch.randn(B, n, m, generator=g, dtype=DT).requires_grad_()
    eps = torch.tensor(eps, dtype=DT, requires_grad=True)
    mask = torch.ones(n, m, dtype=torch.bool)
    if masked:
        k = min(n, m)
        mask[range(k), range(k)] = False
    a = torch.rand(B, n, generator=g, dtype=DT) + 0.5
    b = torch.rand(B, m, generator=g, dtype=DT) + 0.5
    return g, C, eps, mask, a, b


def _log_kernel(C: torch.Tensor, eps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.where(mask, -C / eps, torch.full_like(C, -math.inf))


def _naive(lk, la, lb, t_a, t_b, L):
    gamma = torch.zeros_like(lb)
    for _ in range(L):
        phi = t_a * (la - torch.logsumexp(lk + gamma[:, None, :], 2))
        gamma = t_b * (lb - torch.logsumexp(lk + phi[:, :, None], 1))
    return t_a * (la - torch.logsumexp(lk + gamma[:, None, :], 2)), gamma


RHO = {"balanced": (math.inf, math.inf), "unbalanced": (1.0, 2.0), "semi": (math.inf, 0.5)}


def _exponents(kind: str, eps: torch.Tensor) -> tuple[float | torch.Tensor, ...]:
    return tuple(1.0 if math.isinf(r) else r / (r + eps) for r in RHO[kind])


@pytest.mark.parametrize("kind", list(RHO))
@pytest.mark.parametrize("L", [0, 3])
@pytest.mark.parametrize("domain", ["kernel", "log"])
def test_gradcheck_unroll(kind: str, L: int, domain: str) -> None:
    g, C, eps, mask, a, b = _setup(L + 7 * len(kind))
    la = a.log().requires_grad_()
    lb = b.log().requires_grad_()
    w1 = torch.randn(a.shape, generator=g, dtype=DT)
    w2 = torch.randn(b.shape, generator=g, dtype=DT)

    def f(C, eps, la, lb):
        lk = _log_kernel(C, eps, mask)
        t_a, t_b = _exponents(kind, eps)
        phi, gamma = inner_potentials(lk, la, lb, t_a, t_b, L, grad="unroll", domain=domain)
        plan = torch.exp(phi[:, :, None] + gamma[:, None, :] + lk)
        return (w1 * phi).sum() + (w2 * gamma).sum() + (plan * C).sum()

    assert torch.autograd.gradcheck(f, (C, eps, la, lb))


@pytest.mark.parametrize("kind", list(RHO))
def test_gradcheck_implicit_at_convergence(kind: str) -> None:
    """At the fixed point the implicit derivative is the derivative of the converged map."""
    g, C, eps, mask, a, b = _setup(31, B=1, n=4, m=5, eps=1.5)
    if kind == "balanced":
        b = b / b.sum(1, keepdim=True) * a.sum(1, keepdim=True)
    la, lb = a.log(), b.log()
    w = torch.randn(C.shape, generator=g, dtype=DT)

    def f(C, eps):
        lk = _log_kernel(C, eps, mask)
        t_a, t_b = _exponents(kind, eps)
        phi, gamma = inner_potentials(lk, la, lb, t_a, t_b, 300, grad="implicit")
        plan = torch.exp(phi[:, :, None] + gamma[:, None, :] + lk)
        return (plan * w).sum()  # gauge-invariant, as every loss is

    assert torch.autograd.gradcheck(f, (C, eps), atol=1e-7)


@pytest.mark.parametrize("kind", list(RHO))
def test_detach_is_exact_for_the_dual_at_its_optimum(kind: str) -> None:
    """Envelope theorem: d/dΛ of the entropic OT dual at converged potentials is -P, so the
    detached potentials give the exact gradient of the dual."""
    _, C, eps, mask, a, b = _setup(41, B=1, n=5, m=5, eps=1.5)
    if kind == "balanced":
        b = b / b.sum(1, keepdim=True) * a.sum(1, keepdim=True)
    la, lb = a.log(), b.log()
    rho_a, rho_b = RHO[kind]

    def side(rho, m, pot):
        if math.isinf(rho):
            return (m * pot).sum()
        kappa = rho / eps
        return -(kappa * m * torch.expm1(-pot / kappa)).sum()

    def dual(C, eps):
        lk = _log_kernel(C, eps, mask)
        t_a, t_b = _exponents(kind, eps)
        phi, gamma = inner_potentials(lk, la, lb, t_a, t_b, 300, grad="detach")
        assert not phi.requires_grad and not gamma.requires_grad
        plan = torch.exp(phi[:, :, None] + gamma[:, None, :] + lk)
        return eps * (side(rho_a, a, phi) + side(rho_b, b, gamma) - plan.sum())

    assert torch.autograd.gradcheck(dual, (C, eps), atol=1e-7)


def test_matches_autograd_through_a_plain_loop() -> None:
    g, C, eps, mask, a, b = _setup(51, n=7, m=7)
    w = torch.randn(C.shape, generator=g, dtype=DT)
    grads = []
    for fn in ("ours", "plain"):
        Cx = C.detach().clone().requires_grad_()
        lk = _log_kernel(Cx, eps.detach(), mask)
        if fn == "ours":
            phi, gamma = inner_potentials(lk, a.log(), b.log(), 0.6, 0.8, 10)
        else:
            phi, gamma = _naive(lk, a.log(), b.log(), 0.6, 0.8, 10)
        loss = (torch.exp(phi[:, :, None] + gamma[:, None, :] + lk) * w).sum() + phi.sum()
        grads.append(torch.autograd.grad(loss, Cx)[0])
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-10, atol=1e-12)


def test_unbatched_and_broadcast_shapes() -> None:
    _, C, eps, mask, a, b = _setup(61, B=1)
    lk = _log_kernel(C, eps, mask).detach()
    phi3, gamma3 = inner_potentials(lk, a.log(), b.log(), 1.0, 0.5, 4)
    phi2, gamma2 = inner_potentials(lk[0], a.log()[0], b.log()[0], 1.0, 0.5, 4)
    assert phi2.shape == (5,) and gamma2.shape == (6,)
    torch.testing.assert_close(phi2, phi3[0], rtol=0, atol=0)
    torch.testing.assert_close(gamma2, gamma3[0], rtol=0, atol=0)
    lk2 = torch.cat([lk, lk]).requires_grad_()
    la = a.log().requires_grad_()  # (1, n), broadcast over the batch of 2
    phi, gamma = inner_potentials(lk2, la, b.log(), 1.0, 0.5, 4)
    assert phi.shape == (2, 5)
    (phi.sum() + gamma.sum()).backward()
    assert la.grad is not None and la.grad.shape == (1, 5)


def test_graph_and_modes() -> None:
    _, C, eps, mask, a, b = _setup(71)
    lk = _log_kernel(C, eps, mask)
    phi, _ = inner_potentials(lk, a.log(), b.log(), 1.0, 1.0, 2)
    assert phi.grad_fn is not None and "InnerSolve" in type(phi.grad_fn).__name__
    # backward twice with a retained graph gives the same gradient
    (g1,) = torch.autograd.grad(phi.sum(), C, retain_graph=True)
    (g2,) = torch.autograd.grad(phi.sum(), C)
    torch.testing.assert_close(g1, g2, rtol=0, atol=0)
    phi_d, gamma_d = inner_potentials(lk, a.log(), b.log(), 1.0, 1.0, 2, grad="detach")
    torch.testing.assert_close(phi_d, phi.detach(), rtol=0, atol=0)
    assert phi_d.grad_fn is None and gamma_d.grad_fn is None
    phi32, _ = inner_potentials(lk.detach().float(), a.log().float(), b.log().float(), 1.0,
                                1.0, 2)
    assert phi32.dtype == torch.float32
    torch.testing.assert_close(phi32.double(), phi.detach(), rtol=1e-5, atol=1e-5)
    direct = InnerSolve.apply(lk, a.log(), b.log(), 1.0, 1.0, 2, "unroll", "auto", None, None,
                              100)
    torch.testing.assert_close(direct[0], phi, rtol=0, atol=0)


@pytest.mark.parametrize("backward", [True, False])
@pytest.mark.parametrize("domain", ["kernel", "log"])
def test_graph_holds_no_reference_cycle(backward: bool, domain: str) -> None:
    """Once the outputs are gone, the solve's records (the kernel, the per-step vectors) are
    freed by reference counting alone, with or without a backward pass: a reference cycle
    through the autograd node would keep an ``n x m`` kernel alive per call."""
    _, C, eps, mask, a, b = _setup(75)
    lk = _log_kernel(C, eps, mask)
    phi, gamma = inner_potentials(lk, a.log(), b.log(), 1.0, 1.0, 3, domain=domain)
    tape = weakref.ref(phi.grad_fn.tape)
    if backward:
        (phi.sum() + gamma.sum()).backward()
    gc.disable()  # the collector must not be needed
    try:
        del phi, gamma
        assert tape() is None
    finally:
        gc.enable()


def test_bad_input_raises() -> None:
    _, C, eps, mask, a, b = _setup(81)
    lk = _log_kernel(C, eps, mask).detach()
    la, lb = a.log(), b.log()
    with pytest.raises(ValueError, match="grad"):
        inner_potentials(lk, la, lb, 1.0, 1.0, 1, grad="implicitly")
    with pytest.raises(ValueError, match="domain"):
        inner_potentials(lk, la, lb, 1.0, 1.0, 1, domain="stabilized")
    with pytest.raises(TypeError, match="log_kernel"):
        inner_potentials(lk.numpy(), la, lb, 1.0, 1.0, 1)
    with pytest.raises(TypeError, match="log_a"):
        inner_potentials(lk, la.float(), lb, 1.0, 1.0, 1)
    with pytest.raises(ValueError, match="log_b"):
        inner_potentials(lk, la, lb[:, :-1], 1.0, 1.0, 1)
    with pytest.raises(ValueError, match="log_kernel"):
        inner_potentials(lk[0, 0], la, lb, 1.0, 1.0, 1)
    with pytest.raises(ValueError, match="t_a"):
        inner_potentials(lk, la, lb, torch.ones(2, dtype=DT), 1.0, 1)
    with pytest.raises(ValueError, match="t_b"):
        inner_potentials(lk, la, lb, 1.0, 2.0, 1)
    with pytest.raises(ValueError, match="n_iter"):
        inner_potentials(lk, la, lb, 1.0, 1.0, -2)


def test_unroll_matches_plain_autograd_at_n1024_float32() -> None:
    """At a contrastive size in float32 (n = 1024, d = 128, L = 10, kernel domain), the unrolled
    adjoint's embedding gradient agrees with torch autograd through the plain log-domain loop
    (timings are the benchmark suite's job: ``losses/`` rows)."""
    n, d, L, eps = 1024, 128, 10, 0.5
    g = torch.Generator().manual_seed(0)
    z1 = torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=1)
    z2 = torch.nn.functional.normalize(z1 + 0.5 * torch.randn(n, d, generator=g), dim=1)
    zeros = torch.zeros(1, n)
    idx = torch.arange(n)

    def ince(solve):
        z = z1.clone().requires_grad_()
        lk = (z @ z2.T / eps)[None]
        phi, gamma = solve(lk, zeros, zeros, 1.0, 1.0, L)
        (-(phi[0] + gamma[0] + lk[0, idx, idx]).mean()).backward()
        return z.grad

    ours, plain = ince(inner_potentials), ince(_naive)
    assert ours.abs().max() > 0
    torch.testing.assert_close(ours, plain, rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("grad", ["unroll", "implicit"])
@pytest.mark.parametrize("domain", ["kernel", "log"])
@pytest.mark.parametrize("kind", ["balanced", "unbalanced"])
def test_cpu_tensors_run_on_numpy_views_like_torch_operations(
        monkeypatch: pytest.MonkeyPatch, grad: str, domain: str, kind: str) -> None:
    """On PyTorch CPU tensors the rounds and their derivative run on NumPy views of the same
    memory; with the views refused they run on torch operations. Both give the same potentials
    and gradients (float64: to rounding), and the NumPy loop is the one that ran."""
    import numpy as np

    import otcl.solvers.adjoint as adjoint
    import otcl.torch.autograd as autograd

    seen = []
    forward = adjoint.fixed_round_potentials

    def spy(log_kernel, *args, **kwargs):
        seen.append(type(log_kernel))
        return forward(log_kernel, *args, **kwargs)

    monkeypatch.setattr(autograd, "fixed_round_potentials", spy)

    def run():
        _, C, eps, mask, a, b = _setup(91, masked=False)
        la, lb = a.log().requires_grad_(), b.log().requires_grad_()
        t_a, t_b = _exponents(kind, eps)
        lk = _log_kernel(C, eps, mask)
        n_iter = 60 if grad == "implicit" else 4
        phi, gamma = inner_potentials(lk, la, lb, t_a, t_b, n_iter, grad=grad, domain=domain)
        # gauge-invariant (sum w = 0, gamma centred): the balanced implicit derivative needs it
        w = torch.linspace(-1.0, 1.0, phi.shape[-1], dtype=DT)
        centred = gamma - gamma.mean(dim=-1, keepdim=True)
        (phi * w).sum().add((centred**2).sum()).backward()
        return [phi.detach(), gamma.detach(), C.grad, eps.grad, la.grad, lb.grad]

    on_views = run()
    assert seen == [np.ndarray]
    monkeypatch.setattr(autograd, "_host_views", lambda *tensors: None)
    on_torch = run()
    assert seen == [np.ndarray, torch.Tensor]
    assert on_views[2].abs().max() > 0 and on_views[3].abs() > 0
    for x, y in zip(on_views, on_torch, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-12)
