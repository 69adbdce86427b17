"""The inner solve of the GCA losses as a ``torch.autograd.Function``.

[`inner_potentials`][otcl.torch.autograd.inner_potentials] runs ``L`` fixed Sinkhorn rounds and a
final row step on a log-kernel ``Λ = -C / eps``
([`otcl.solvers.adjoint.fixed_round_potentials`][otcl.solvers.adjoint.fixed_round_potentials]) and
returns the scaled potentials ``(phi, gamma)``, differentiable with respect to ``Λ``, ``log a``,
``log b`` and the exponents ``t_a``, ``t_b`` (when they are tensors, e.g. ``rho / (rho + eps)`` with
a learnable ``eps``). Gradients to ``C`` and ``eps`` then flow through ``Λ = -C / eps`` by ordinary
autograd.

Gradient modes:

* ``"unroll"``: the exact derivative of the rounds
  ([`unrolled_vjp`][otcl.solvers.adjoint.unrolled_vjp]); the forward keeps the kernel plus ``3 (n +
  m)`` numbers per round, and the backward costs about one forward (``2L + 1`` matrix-vector
  products and one low-rank product).
* ``"implicit"``: the implicit-function derivative at the fixed point
  ([`implicit_vjp`][otcl.solvers.adjoint.implicit_vjp], conjugate gradients); the forward keeps
  nothing per round. It equals ``"unroll"`` once the rounds have converged.
* ``"detach"``: the potentials are returned as constants (no graph through the solve).

The forward runs under ``torch.no_grad`` with no host synchronisation inside the loop (one before
it, for the range of ``Λ``, and one after it, the kernel domain's precision check). On PyTorch
CPU float tensors the rounds and their derivative run on NumPy views of the tensors' memory (no
copy; NumPy's BLAS within torch's thread count), as the solver's loops do; the potentials and
cotangents come back as tensors on the same memory, equal to those of the torch operations up to
rounding. First-order
gradients pass ``torch.autograd.gradcheck`` in float64.

Second derivatives are not supported: a backward pass that builds a graph (``create_graph=True``,
as ``torch.autograd.grad(loss, z, create_graph=True)`` for a Hessian or a gradient penalty) raises
``RuntimeError``. The cotangents computed here are not themselves differentiable, and a graph
built around them would give a second derivative that misses the solve's own second-order terms
(off by a factor of about two for the GCA losses) without any error.

The backward pass checks its result once, at its end (one reduction and one host
synchronisation, none inside its loops): non-finite cotangents emit a
[`NonFiniteGradientWarning`][otcl.NonFiniteGradientWarning] (a ``RuntimeWarning``) that names the
solve and the likely cause.

Memory: the one ``(B, n, m)`` array the backward pass needs (the kernel of ``"unroll"``, the
log-kernel of ``"implicit"``) is held as a saved tensor, which autograd frees when the backward
pass has run; a loss value kept after its backward (or computed under ``torch.no_grad()``)
holds no ``n x m`` buffer.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any

import torch

from otcl.backend import check_compatible, host_thread_pool, torch_blas_limit
from otcl.ops import array_ops
from otcl.solvers.adjoint import (
    INNER_DOMAINS,
    Cotangents,
    fixed_round_potentials,
    implicit_cotangents,
    unrolled_cotangents,
)
from otcl.solvers.result import NonFiniteGradientWarning, warn_nonfinite_gradient

SECOND_ORDER_MESSAGE = (
    "second derivatives through the Sinkhorn solve are not supported: the backward pass of "
    "the inner solve (every otcl.torch loss with grad='unroll' or 'implicit') was asked to "
    "build a graph (create_graph=True, e.g. for a Hessian or a gradient penalty), and the "
    "result would silently miss the solve's second-order terms. Use grad='detach' (potentials "
    "as constants) if its second derivative is what you need, or finite differences of the "
    "first-order gradient."
)

__all__ = [
    "INNER_GRAD_MODES",
    "SECOND_ORDER_MESSAGE",
    "InnerSolve",
    "NonFiniteGradientWarning",
    "inner_potentials",
]

INNER_GRAD_MODES = ("unroll", "implicit", "detach")


class InnerSolve(torch.autograd.Function):
    """``(phi, gamma) = InnerSolve.apply(log_kernel, log_a, log_b, t_a, t_b, n_iter, grad, domain,
    init, tol, max_iter)`` with batch-first shapes ``(B, n, m)``, ``(B, n)``, ``(B, m)``; ``grad``
    is ``"unroll"`` or ``"implicit"``. Prefer
    [`inner_potentials`][otcl.torch.autograd.inner_potentials], which validates its input and also
    accepts unbatched shapes and ``grad="detach"``."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        log_kernel: torch.Tensor,
        log_a: torch.Tensor,
        log_b: torch.Tensor,
        t_a: float | torch.Tensor,
        t_b: float | torch.Tensor,
        n_iter: int,
        grad: str,
        domain: str,
        init: torch.Tensor | None,
        tol: float | None,
        max_iter: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        ta, tb = _as_float(t_a), _as_float(t_b)
        unroll = grad == "unroll"
        # PyTorch CPU tensors: the loops run on NumPy views of the same memory
        host = _host_views(log_kernel, log_a, log_b, init)
        ctx.host = host is not None
        loop_k, loop_a, loop_b, loop_init = host or (log_kernel, log_a, log_b, init)
        # one thread pool for the loops (otcl.backend.host_thread_pool)
        with torch.no_grad(), host_thread_pool(log_kernel), _blas_limit(ctx.host):
            phi, gamma, tape = fixed_round_potentials(
                loop_k, loop_a, loop_b, ta, tb, n_iter, domain=domain, init=loop_init,
                record=unroll,
            )
        ctx.grad, ctx.tol, ctx.max_iter = grad, tol, max_iter
        ctx.t_values = (ta, tb)
        ctx.t_specs = (_spec(t_a), _spec(t_b))
        if unroll:
            # The (B, n, m) array of the tape is a saved tensor, freed by autograd once the
            # backward pass has run (an attribute of ctx would live as long as the graph's
            # nodes, i.e. as long as the caller keeps the loss value). The log domain's is the
            # input itself, saved as such (autograd then refuses a backward pass after an
            # in-place change of it); the kernel domain's is otcl's own buffer.
            if tape.kernel is not None:
                ctx.matrix_field = "kernel"
                matrix = torch.from_numpy(tape.kernel) if ctx.host else tape.kernel
            else:
                ctx.matrix_field, matrix = "log_kernel", log_kernel
            ctx.save_for_backward(matrix)
            ctx.tape = dataclasses.replace(tape, kernel=None, log_kernel=None)
            if ctx.host:
                return torch.from_numpy(phi), torch.from_numpy(gamma)
            # The tape records phi and gamma themselves. Returned as they are, they would
            # become the outputs, and output -> grad_fn -> ctx -> tape -> output a reference
            # cycle through the autograd node that Python's collector cannot see: the kernel
            # and the records of every call would stay alive. Aliases (same memory, other
            # tensor objects) break it.
            return phi.detach(), gamma.detach()
        if ctx.host:
            phi, gamma = torch.from_numpy(phi), torch.from_numpy(gamma)
        ctx.save_for_backward(log_kernel, log_a, log_b, phi, gamma)
        return phi, gamma

    @staticmethod
    def backward(ctx: Any, phi_bar: torch.Tensor, gamma_bar: torch.Tensor) -> tuple[Any, ...]:
        # the engine runs a backward pass in grad mode exactly when it builds a graph
        if torch.is_grad_enabled():
            raise RuntimeError(SECOND_ORDER_MESSAGE)
        view = _view if ctx.host else _same
        with host_thread_pool(phi_bar), _blas_limit(ctx.host):
            if ctx.grad == "unroll":
                (matrix,) = ctx.saved_tensors
                tape = dataclasses.replace(ctx.tape, **{ctx.matrix_field: view(matrix)})
                cot = unrolled_cotangents(tape, view(phi_bar), view(gamma_bar))
            else:
                log_kernel, log_a, log_b, phi, gamma = (view(t) for t in ctx.saved_tensors)
                ta, tb = ctx.t_values
                cot = implicit_cotangents(
                    log_kernel, phi, gamma, log_a, log_b, ta, tb, view(phi_bar),
                    view(gamma_bar), tol=ctx.tol, max_iter=ctx.max_iter,
                )
        if ctx.host:
            cot = Cotangents(*(None if x is None else torch.as_tensor(x) for x in (
                cot.log_kernel, cot.log_a, cot.log_b, cot.t_a, cot.t_b, cot.init)))
        _check_finite(cot, phi_bar, gamma_bar, ctx.grad)
        spec_a, spec_b = ctx.t_specs
        return (
            cot.log_kernel,
            cot.log_a,
            cot.log_b,
            _shaped(cot.t_a, spec_a),
            _shaped(cot.t_b, spec_b),
            None, None, None, None, None, None,
        )


def inner_potentials(
    log_kernel: torch.Tensor,
    log_a: torch.Tensor,
    log_b: torch.Tensor,
    t_a: float | torch.Tensor = 1.0,
    t_b: float | torch.Tensor = 1.0,
    n_iter: int = 0,
    *,
    grad: str = "unroll",
    domain: str = "auto",
    init: torch.Tensor | None = None,
    tol: float | None = None,
    max_iter: int = 1000,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Differentiable ``L = n_iter`` Sinkhorn rounds plus a final row step on a log-kernel.

    Parameters
    ----------
    log_kernel:
        ``Λ = -C / eps`` of shape ``(n, m)`` or ``(B, n, m)``, ``-inf`` on masked entries.
    log_a, log_b:
        ``log a`` of shape ``(n,)`` / ``(B, n)`` (or ``(1, n)``, broadcast) and ``log b``
        likewise; ``-inf`` for zero mass.
    t_a, t_b:
        Update exponents in ``(0, 1]`` (``rho / (rho + eps)``; ``1`` for a hard constraint), a
        float or a 0-d tensor (differentiable).
    n_iter:
        Number of full rounds ``L >= 0`` (``0`` = the InfoNCE row projection).
    grad:
        ``"unroll"``, ``"implicit"`` or ``"detach"`` (module docstring).
    domain:
        ``"auto"``, ``"kernel"`` or ``"log"`` for the forward iteration.
    init:
        Optional ``gamma_0`` of shape ``(m,)`` / ``(B, m)`` (treated as a constant).
    tol, max_iter:
        Conjugate-gradient relative residual and iteration cap of ``grad="implicit"``.

    Returns
    -------
    phi, gamma
        ``(n,)``/``(B, n)`` and ``(m,)``/``(B, m)``: the plan is ``exp(phi_i + gamma_j + Λ_ij)``.
    """
    if not isinstance(log_kernel, torch.Tensor):
        raise TypeError(f"log_kernel must be a torch.Tensor, got {type(log_kernel).__name__}")
    if grad not in INNER_GRAD_MODES:
        raise ValueError(f"grad must be one of {INNER_GRAD_MODES}, got {grad!r}")
    if domain not in INNER_DOMAINS:
        raise ValueError(f"domain must be one of {INNER_DOMAINS}, got {domain!r}")
    check_compatible(log_kernel=log_kernel, log_a=log_a, log_b=log_b, init=init)
    for name, t in (("t_a", t_a), ("t_b", t_b)):
        if isinstance(t, torch.Tensor):
            check_compatible(log_kernel=log_kernel, **{name: t})
            if t.ndim != 0:
                raise ValueError(f"{name} must be a 0-d tensor, got shape {tuple(t.shape)}")
    if log_kernel.ndim not in (2, 3):
        raise ValueError(
            f"log_kernel must have shape (n, m) or (B, n, m), got {tuple(log_kernel.shape)}"
        )
    batched = log_kernel.ndim == 3
    lk = log_kernel if batched else log_kernel[None]
    B, n, m = lk.shape
    la = _batch_vec("log_a", log_a, B, n, batched)
    lb = _batch_vec("log_b", log_b, B, m, batched)
    g0 = None if init is None else _batch_vec("init", init.detach(), B, m, batched)
    if grad == "detach":
        with torch.no_grad():
            phi, gamma, _ = fixed_round_potentials(
                lk, la, lb, _as_float(t_a), _as_float(t_b), n_iter, domain=domain, init=g0,
                record=False,
            )
    else:
        phi, gamma = InnerSolve.apply(lk, la, lb, t_a, t_b, n_iter, grad, domain, g0, tol,
                                      max_iter)
    if not batched:
        phi, gamma = phi[0], gamma[0]
    return phi, gamma


def _host_views(log_kernel: torch.Tensor, log_a: torch.Tensor, log_b: torch.Tensor,
                init: torch.Tensor | None) -> tuple[Any, ...] | None:
    """NumPy views (same memory, no copy) of the inputs of a solve on PyTorch CPU float tensors
    ([`TorchCpuOps.host_views`][otcl.ops.torch_ops.TorchCpuOps.host_views]), or ``None`` (other
    devices and dtypes, or no threadpoolctl to keep NumPy's BLAS within torch's thread count).

    The fixed rounds and their derivatives then run on NumPy: their passes over the matrix cost
    the same, and each of their 20-odd vector operations per step costs 1-2 microseconds in
    NumPy against 5-10 in torch, which at B = 1024 is a few milliseconds per loss call."""
    host_views = getattr(array_ops(torch, log_kernel), "host_views", None)
    if host_views is None:
        return None
    return host_views(log_kernel, log_a, log_b, init)


def _blas_limit(host: bool) -> Any:
    """NumPy's BLAS within torch's thread count while a loop runs on NumPy views
    ([`torch_blas_limit`][otcl.backend.torch_blas_limit]); nothing otherwise."""
    return torch_blas_limit() if host else contextlib.nullcontext()


def _view(t: torch.Tensor) -> Any:
    return t.detach().numpy()


def _same(t: torch.Tensor) -> torch.Tensor:
    return t


def _check_finite(cot: Any, phi_bar: torch.Tensor, gamma_bar: torch.Tensor, grad: str) -> None:
    """Warn when the cotangents are not finite: one reduction of each and one host
    synchronisation, after the backward pass's loops (a sum is non-finite when an entry is)."""
    total = cot.log_kernel.sum() + cot.log_a.sum() + cot.log_b.sum()
    if bool(torch.isfinite(total)):
        return
    where = f"the backward pass of the Sinkhorn inner solve (grad={grad!r})"
    if not bool(torch.isfinite(phi_bar.sum() + gamma_bar.sum())):
        where += ", whose incoming gradient from the loss terms is already non-finite,"
    warn_nonfinite_gradient(where, cot.log_kernel.dtype)


def _batch_vec(name: str, x: torch.Tensor, B: int, size: int, batched: bool) -> torch.Tensor:
    if not batched:
        if x.ndim != 1 or x.shape[0] != size:
            raise ValueError(f"{name} has shape {tuple(x.shape)}, expected ({size},)")
        return x[None]
    if x.ndim != 2 or x.shape[1] != size or x.shape[0] not in (1, B):
        raise ValueError(f"{name} has shape {tuple(x.shape)}, expected ({B}, {size})")
    return x.expand(B, size)


def _as_float(t: float | torch.Tensor) -> float:
    if isinstance(t, torch.Tensor):
        return float(t.detach())
    return t


def _spec(t: Any) -> tuple[torch.dtype, torch.Size] | None:
    if isinstance(t, torch.Tensor) and t.requires_grad:
        return t.dtype, t.shape
    return None


def _shaped(x: torch.Tensor, spec: tuple[torch.dtype, torch.Size] | None) -> Any:
    if spec is None:
        return None
    dtype, shape = spec
    return x.to(dtype).reshape(shape)
