"""Row-sharded losses: ``distributed="sharded"`` (the kernel of the global batch split by rows).

With ``distributed=True`` ([`otcl.torch.distributed`][otcl.torch.distributed], the *gather* mode)
every rank forms the whole ``n x m`` log-kernel of the global batch. With ``distributed="sharded"``
(on the loss modules and functional forms of [`otcl.torch.losses`][otcl.torch.losses] that support
it, [`SHARDED_LOSSES`][otcl.torch.sharded.SHARDED_LOSSES]) rank ``r`` forms and keeps only **its own
rows** ``I_r`` of it, an ``n_r x m`` block:

1. The same consistency exchange as the gather mode (batch sizes, widths, dtypes, label kinds,
   a checksum of the hyper-parameters, a 128-bit hash of a target): an inconsistent call, or
   input that one rank rejects, raises ``ValueError`` on every rank.
2. The embeddings are gathered once with
   [`gather_with_grad`][otcl.torch.distributed.gather_with_grad]'s autograd-aware all-gather (``n x
   d`` numbers) and put in the global layout of the gather mode; rank ``r`` multiplies its rows by
   all columns: ``Λ_r = -C[I_r, :] / eps``.
3. The inner rounds::

       phi_i   = t_a (log a_i - LSE_j(Λ_ij + gamma_j))          i in I_r: local
       gamma_j = t_b (log b_j - LSE_i(Λ_ij + phi_i))            all rows: all-reduces

   As in the single-process forward ([`otcl.solvers.adjoint`][otcl.solvers.adjoint]), in the kernel
   domain where that is exact: ``K' = exp(Λ_r - M)`` once, one matrix-vector product per half-step,
   the column ones summed over the ranks (an all-reduce of ``m`` numbers after one of a single
   number, the largest ``phi``). The ranks agree (two small all-reduces) on falling back to the log
   domain when a marginal has a zero entry or a normaliser fell below ``m tiny / eps_mach`` on some
   rank; there the column log-sum-exp takes an all-reduce ``MAX`` of the column maxima and an
   all-reduce ``SUM`` of the shifted sums, ``2 m`` numbers.
4. Each rank evaluates the divergence terms ``ℓ_i`` of its own rows; the value is combined
   across ranks as in the gather mode, ``v_r = stop(L) + (W/n)(S_r - stop(S_r))`` with
   ``S_r = Σ_{i in I_r} ℓ_i``: the value of the global loss on every rank and a gradient that
   DDP's averaging turns into the single-process gradient (``reduction="sum"``: factor ``W``;
   ``"none"``: the rank's own rows, their plain gradient).

Gradients (``grad=``):

* ``"unroll"``: the exact derivative of the rounds, by an adjoint recursion on vectors (one
  autograd function for all the rounds): the backward walks the half-steps in reverse, one
  matrix-vector product each, and all-reduces (``SUM``) the length-``m`` cotangent of every column
  step. Kernel domain: the gradient of ``Λ_r`` is ``K' ⊙ (A B^T)`` with the rank-one factors of the
  ``2L + 1`` half-steps stacked (one matrix product). Log domain: each half-step's softmax weights
  are recomputed in one scratch array and added into one gradient array
  ([`col_logsumexp`][otcl.torch.sharded.col_logsumexp] is that column step as a stand-alone
  differentiable function). Memory per rank ``O(n_r m)`` **independent of the number of rounds**
  (autograd through ``torch.logsumexp`` would keep an ``n_r x m`` array per half-step, ``O(L n_r
  m)``). Communication in the backward pass: ``m`` numbers per round, plus the ``n x d`` gradient of
  the gather.
* ``"implicit"``: the implicit-function derivative at the fixed point, the optimality system of
  the single-process ``"implicit"`` mode
  ([`otcl.solvers.adjoint.implicit_cotangents`][otcl.solvers.adjoint.implicit_cotangents]) solved by
  conjugate gradients on the replicated length-``m`` column variable: every product with the plan's
  transpose sums the ranks' ``m``-vectors (one all-reduce per CG iteration, and one every ten
  iterations to agree on the stop). The forward keeps nothing per round; the backward forms the
  plan's rows once (``O(n_r m)``).
* ``"detach"``: the potentials are constants (rounds under ``torch.no_grad``); the gradient
  reaches ``Λ_r`` through the divergence terms only, no collective but the gather's.

Every rank must call the loss, and call ``backward``, in the same order: the backward pass
holds collectives (the column log-sum-exps and the gather). The custom functions are
differentiable once (no double backward).

What is supported: [`SHARDED_LOSSES`][otcl.torch.sharded.SHARDED_LOSSES] (InfoNCE, GCA-INCE, RINCE,
GCA-RINCE, GCA-UOT, IOT, modules and functional forms), the two-view SimCLR call ``loss(z1, z2)``,
``layout="cross"``, all-views ``z`` with ``layout="blocked"`` or ``"interleaved"`` (any
``n_views``), ``labels`` (per sample or per row), a global ``target`` (the same ``(n, n)`` tensor on
every rank, as in the gather mode, of which each rank reads its rows), unequal numbers of samples
per rank, ``reduction`` ``"mean"``, ``"sum"`` and ``"none"``, every metric, a learnable ``eps``,
float16 / bfloat16 input (computed in float32). A global target is an ``n x n`` tensor on every
rank, so with a target the memory per rank is again ``O(n^2)``; labels cost ``O(n)``. Not supported
(``ValueError`` on every rank): the other losses (IOT-uni, ``AlignmentLoss``, GCA-capacity; use
``distributed=True``) and ``layout="queue"``.

``return_details=True`` returns [`LossDetails`][otcl.LossDetails] of **this rank's
rows**: ``per_sample``, ``f``, ``row_mass``, ``a`` of shape ``(n_r,)`` in the local row order,
``g`` and ``b`` over all ``m`` columns, ``cost`` and ``mask`` the ``n_r x m`` rows of the rank.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.autograd.function import once_differentiable

from otcl.alignment import losses as _alg
from otcl.solvers.adjoint import require_gauge_invariant
from otcl.torch.distributed import (
    _all_gather_rows,
    _blocked_perm,
    _GatherRows,
    _local_checks,
    agree_on_inputs,
    is_initialized,
)

__all__ = ["SHARDED_GRAD_MODES", "SHARDED_LOSSES", "col_logsumexp", "sharded_loss"]

SHARDED_GRAD_MODES = ("unroll", "implicit", "detach")
"""The gradient modes of ``distributed="sharded"``."""

SHARDED_LOSSES = ("InfoNCE", "GCAInfoNCE", "RINCE", "GCARINCE", "GCAUOT", "IOT")
"""The loss modules (and their functional forms) that take ``distributed="sharded"``."""


# ---------------------------------------------------------------------------------------------
# the two log-sum-exps


def _finite_or_zero(x: torch.Tensor) -> torch.Tensor:
    return torch.where(torch.isfinite(x), x, torch.zeros_like(x))


class _RowLSE(torch.autograd.Function):
    """``LSE_j(Λ_ij + v_j)`` over the local rows; the weights are recomputed in backward."""

    @staticmethod
    def forward(ctx: Any, lk: torch.Tensor, vec: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        lse = _row_lse_into(torch.empty_like(lk), lk, vec)
        ctx.save_for_backward(lk, vec, lse)
        return lse

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        lk, vec, lse = ctx.saved_tensors
        w = lk + vec[None, :]
        w.sub_(_finite_or_zero(lse)[:, None]).exp_().mul_(grad[:, None])
        grad_vec = w.sum(dim=0) if ctx.needs_input_grad[1] else None
        return (w if ctx.needs_input_grad[0] else None), grad_vec


class _ColLSE(torch.autograd.Function):
    """``LSE_i(Λ_ij + u_i)`` over the rows of every rank; backward all-reduces the cotangent."""

    @staticmethod
    def forward(ctx: Any, lk: torch.Tensor, vec: torch.Tensor,  # type: ignore[override]
                group: Any) -> torch.Tensor:
        lse = _col_lse_into(torch.empty_like(lk), lk, vec, group)
        ctx.group = group
        ctx.save_for_backward(lk, vec, lse)
        return lse

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        lk, vec, lse = ctx.saved_tensors
        total = grad.clone(memory_format=torch.contiguous_format)  # never reduce in place
        dist.all_reduce(total, op=dist.ReduceOp.SUM, group=ctx.group)
        w = lk + vec[:, None]
        w.sub_(_finite_or_zero(lse)[None, :]).exp_().mul_(total[None, :])
        grad_vec = w.sum(dim=1) if ctx.needs_input_grad[1] else None
        return (w if ctx.needs_input_grad[0] else None), grad_vec, None


def col_logsumexp(log_kernel_rows: torch.Tensor, phi_rows: torch.Tensor,
                  group: Any = None) -> torch.Tensor:
    """``LSE_i(Λ_ij + phi_i)`` over the rows of **every** rank, shape ``(m,)``, differentiable.

    Rank ``r`` passes its rows ``Λ_r`` ``(n_r, m)`` and ``phi_r`` ``(n_r,)``. Forward: an
    all-reduce ``MAX`` of the column maxima and an all-reduce ``SUM`` of the shifted sums
    (``2 m`` numbers). Backward: the incoming ``(m,)`` cotangents of all ranks are summed
    (all-reduce, ``m`` numbers) and each rank returns its softmax weights
    ``exp(Λ_ij + phi_i - LSE_j)`` times the sum, for ``Λ_r`` and ``phi_r``: the gradient of
    ``Σ_r u_r`` (``u_r`` what rank ``r`` back-propagates). A collective, forward and backward.
    """
    if not is_initialized():
        raise RuntimeError("col_logsumexp needs an initialised torch.distributed process group")
    return _ColLSE.apply(log_kernel_rows, phi_rows, group)


def _scaled(t: Any, x: torch.Tensor) -> torch.Tensor:
    return x if isinstance(t, (int, float)) and t == 1.0 else t * x


def _row_lse_into(buf: torch.Tensor, lk: torch.Tensor, vec: torch.Tensor) -> torch.Tensor:
    """``LSE_j(Λ_ij + v_j)`` (no gradient), computed in the scratch array ``buf``."""
    torch.add(lk, vec[None, :], out=buf)
    shift = _finite_or_zero(buf.amax(dim=1))
    buf.sub_(shift[:, None]).exp_()
    return torch.log(buf.sum(dim=1)) + shift


def _col_lse_into(buf: torch.Tensor, lk: torch.Tensor, vec: torch.Tensor,
                  group: Any) -> torch.Tensor:
    """``LSE_i(Λ_ij + u_i)`` over every rank's rows (no gradient), in the scratch ``buf``."""
    torch.add(lk, vec[:, None], out=buf)
    if buf.shape[0]:
        top = buf.amax(dim=0)
    else:
        top = torch.full((buf.shape[1],), -math.inf, dtype=buf.dtype, device=buf.device)
    dist.all_reduce(top, op=dist.ReduceOp.MAX, group=group)
    shift = _finite_or_zero(top)
    buf.sub_(shift[None, :]).exp_()
    s = buf.sum(dim=0)
    dist.all_reduce(s, op=dist.ReduceOp.SUM, group=group)
    return torch.log(s) + shift


def _forward_rounds(lk: torch.Tensor, log_a: torch.Tensor, log_b: torch.Tensor, ta: float,
                    tb: float, rounds: int, gamma: torch.Tensor, final_column: bool,
                    group: Any, tape: list[Any] | None = None) -> tuple[torch.Tensor,
                                                                         torch.Tensor]:
    """The rounds without a graph, in one scratch array; ``tape`` receives
    ``(kind, input vector, lse)`` per half-step."""
    buf = torch.empty_like(lk)
    lse = _row_lse_into(buf, lk, gamma)
    if tape is not None:
        tape.append(("row", gamma, lse))
    phi = _scaled(ta, log_a - lse)
    for k in range(rounds + (1 if final_column else 0)):
        lse = _col_lse_into(buf, lk, phi, group)
        if tape is not None:
            tape.append(("col", phi, lse))
        gamma = _scaled(tb, log_b - lse)
        if k == rounds:
            break
        lse = _row_lse_into(buf, lk, gamma)
        if tape is not None:
            tape.append(("row", gamma, lse))
        phi = _scaled(ta, log_a - lse)
    return phi, gamma


def _kernel_rounds(lk: torch.Tensor, log_a: torch.Tensor, log_b: torch.Tensor, ta: float,
                   tb: float, rounds: int, gamma: torch.Tensor, final_column: bool, group: Any,
                   tape: list[Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """The rounds in the kernel domain, as the single-process forward
    ([`otcl.solvers.adjoint`][otcl.solvers.adjoint]): ``K' = exp(Λ_r - M)`` once (``M`` the global
    maximum of ``Λ`` where ``|M|`` exceeds a quarter of the exponent range, else 0), then one
    matrix-vector product per half-step (the column ones summed over the ranks). ``tape`` receives
    ``(kind, scaling, normaliser, lse)`` per half-step. Returns ``(phi, gamma, K')``, or ``None``
    (on every rank) when a marginal has a zero entry or a normaliser fell below ``max(n, m) tiny /
    eps_mach`` on some rank: the log domain is then used."""
    dtype, dev = lk.dtype, lk.device
    n_r, m = lk.shape
    local = torch.stack([
        lk.amax() if n_r else torch.tensor(-math.inf, dtype=dtype, device=dev),
        -(torch.isfinite(log_a).all() & torch.isfinite(log_b).all()).to(dtype),
    ])
    dist.all_reduce(local, op=dist.ReduceOp.MAX, group=group)
    peak, not_full = float(local[0]), float(local[1]) == 0.0  # -1: finite everywhere
    if not_full or not math.isfinite(peak):
        return None
    tiny, eps_mach = torch.finfo(dtype).tiny, torch.finfo(dtype).eps
    shift = 0.0 if abs(peak) <= 0.25 * -math.log(tiny) else peak
    kernel = torch.exp(lk - shift) if shift else torch.exp(lk)
    low = torch.full((), math.inf, dtype=dtype, device=dev)

    def row(gamma: torch.Tensor) -> torch.Tensor:
        nonlocal low
        s = gamma.amax()
        scaling = torch.exp(gamma - s)
        norm = kernel @ scaling
        low = torch.minimum(low, norm.amin()) if n_r else low
        lse = torch.log(norm) + (s + shift)
        tape.append(("row", scaling, norm, lse))
        return _scaled(ta, log_a - lse)

    def col(phi: torch.Tensor) -> torch.Tensor:
        nonlocal low
        s = phi.amax() if n_r else torch.tensor(-math.inf, dtype=dtype, device=dev)
        dist.all_reduce(s, op=dist.ReduceOp.MAX, group=group)
        scaling = torch.exp(phi - s)
        norm = _all_sum(scaling @ kernel, group)
        low = torch.minimum(low, norm.amin())
        lse = torch.log(norm) + (s + shift)
        tape.append(("col", scaling, norm, lse))
        return _scaled(tb, log_b - lse)

    phi = row(gamma)
    for k in range(rounds + (1 if final_column else 0)):
        gamma = col(phi)
        if k == rounds:
            break
        phi = row(gamma)
    floor = torch.full((1,), m * tiny / eps_mach, dtype=dtype, device=dev)  # n = m here
    ok = (low.reshape(1) >= floor).to(dtype)
    dist.all_reduce(ok, op=dist.ReduceOp.MIN, group=group)
    if float(ok) == 0.0:
        tape.clear()
        return None
    return phi, gamma, kernel


def _plain_rounds(lk: torch.Tensor, log_a: torch.Tensor, log_b: torch.Tensor, ta: float,
                  tb: float, rounds: int, gamma: torch.Tensor, final_column: bool,
                  group: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """The rounds without a graph: kernel domain where exact, else log domain."""
    fast = _kernel_rounds(lk, log_a, log_b, ta, tb, rounds, gamma, final_column, group, [])
    if fast is not None:
        return fast[0], fast[1]
    return _forward_rounds(lk, log_a, log_b, ta, tb, rounds, gamma, final_column, group)


class _UnrolledRounds(torch.autograd.Function):
    """The rounds on the local rows with their exact (unrolled) derivative, by an adjoint
    recursion on vectors, all-reducing the length-``m`` cotangent of every column step: in the
    kernel domain (`_kernel_rounds`, `_kernel_backward`) or, where that is not
    exact, in the log domain (the forward keeps ``Λ_r`` and two vectors per half-step; the
    backward recomputes each half-step's softmax weights in one scratch array and adds their
    products with the cotangents into one gradient array). Memory ``O(n_r m)`` whatever the
    number of rounds."""

    @staticmethod
    def forward(ctx: Any, lk: torch.Tensor, log_a: torch.Tensor,  # type: ignore[override]
                log_b: torch.Tensor, t_a: Any, t_b: Any, rounds: int, gamma0: torch.Tensor,
                final_column: bool, group: Any) -> tuple[torch.Tensor, torch.Tensor]:
        ta, tb = _as_float(t_a), _as_float(t_b)
        tape: list[Any] = []
        fast = _kernel_rounds(lk, log_a, log_b, ta, tb, rounds, gamma0, final_column, group,
                              tape)
        if fast is not None:
            phi, gamma, kernel = fast
            ctx.save_for_backward(kernel, log_a, log_b)
        else:
            phi, gamma = _forward_rounds(lk, log_a, log_b, ta, tb, rounds, gamma0,
                                         final_column, group, tape)
            ctx.save_for_backward(lk, log_a, log_b)
        ctx.kernel_domain = fast is not None
        ctx.t, ctx.group, ctx.tape = (ta, tb), group, tape
        ctx.t_tensor = (isinstance(t_a, torch.Tensor), isinstance(t_b, torch.Tensor))
        # copies: the tape may hold the output tensors themselves, and output -> node -> tape
        # -> output would be a reference cycle through the autograd node
        return phi.clone(), gamma.clone()

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, phi_bar: torch.Tensor,  # type: ignore[override]
                 gamma_bar: torch.Tensor) -> tuple[Any, ...]:
        if ctx.kernel_domain:
            return _kernel_backward(ctx, phi_bar, gamma_bar)
        lk, log_a, log_b = ctx.saved_tensors
        ta, tb = ctx.t
        buf = torch.empty_like(lk)
        grad_lk = torch.zeros_like(lk) if ctx.needs_input_grad[0] else None
        cot_phi, cot_gamma = phi_bar.clone(), gamma_bar.clone()
        a_bar, b_bar = torch.zeros_like(log_a), torch.zeros_like(log_b)
        ta_bar = torch.zeros((), dtype=lk.dtype, device=lk.device)
        tb_bar = torch.zeros((), dtype=lk.dtype, device=lk.device)
        for kind, vec, lse in reversed(ctx.tape):
            if kind == "row":  # phi = t_a (log a - lse), lse_i = LSE_j(Λ_ij + gamma_j)
                ta_bar += torch.sum(cot_phi * (log_a - lse))
                a_bar += ta * cot_phi
                lse_bar = -ta * cot_phi
                torch.add(lk, vec[None, :], out=buf)
                buf.sub_(_finite_or_zero(lse)[:, None]).exp_().mul_(lse_bar[:, None])
                cot_gamma = cot_gamma + buf.sum(dim=0)  # this rank's part
                cot_phi = torch.zeros_like(cot_phi)
            else:  # gamma = t_b (log b - lse), lse_j = LSE_i(Λ_ij + phi_i) over all ranks
                tb_bar += torch.sum(cot_gamma * (log_b - lse))
                b_bar += tb * cot_gamma
                lse_bar = _all_sum(-tb * cot_gamma, ctx.group)  # every rank's part
                torch.add(lk, vec[:, None], out=buf)
                buf.sub_(_finite_or_zero(lse)[None, :]).exp_().mul_(lse_bar[None, :])
                cot_phi = cot_phi + buf.sum(dim=1)
                cot_gamma = torch.zeros_like(cot_gamma)
            if grad_lk is not None:
                grad_lk.add_(buf)
        return (grad_lk, a_bar, b_bar, ta_bar if ctx.t_tensor[0] else None,
                tb_bar if ctx.t_tensor[1] else None, None, cot_gamma, None, None)


def _kernel_backward(ctx: Any, phi_bar: torch.Tensor, gamma_bar: torch.Tensor) -> tuple[Any, ...]:
    """The adjoint recursion of the kernel-domain rounds
    ([`otcl.solvers.adjoint`][otcl.solvers.adjoint]): per half-step one matrix-vector product, and
    the gradient of ``Λ_r`` as ``K' ⊙ (A B^T)`` with the stacked rank-one factors of the ``2L + 1``
    half-steps (one matrix product at the end)."""
    kernel, log_a, log_b = ctx.saved_tensors
    ta, tb = ctx.t
    cot_phi, cot_gamma = phi_bar.clone(), gamma_bar.clone()
    a_bar, b_bar = torch.zeros_like(log_a), torch.zeros_like(log_b)
    ta_bar = torch.zeros((), dtype=kernel.dtype, device=kernel.device)
    tb_bar = torch.zeros((), dtype=kernel.dtype, device=kernel.device)
    left: list[torch.Tensor] = []
    right: list[torch.Tensor] = []
    for kind, scaling, norm, lse in reversed(ctx.tape):
        if kind == "row":  # Prow = diag(1 / K'v') K' diag(v')
            ta_bar += torch.sum(cot_phi * (log_a - lse))
            a_bar += ta * cot_phi
            alpha = -ta * cot_phi / norm
            left.append(alpha)
            right.append(scaling)
            cot_gamma = cot_gamma + scaling * (alpha @ kernel)  # this rank's part
            cot_phi = torch.zeros_like(cot_phi)
        else:  # Pcol = diag(u') K' diag(1 / K'^T u'), the cotangent of every rank summed
            tb_bar += torch.sum(cot_gamma * (log_b - lse))
            b_bar += tb * cot_gamma
            beta = -tb * _all_sum(cot_gamma, ctx.group) / norm
            left.append(scaling)
            right.append(beta)
            cot_phi = cot_phi + scaling * (kernel @ beta)
            cot_gamma = torch.zeros_like(cot_gamma)
    grad_lk = None
    if ctx.needs_input_grad[0]:
        grad_lk = torch.stack(left, dim=1) @ torch.stack(right, dim=0)
        grad_lk.mul_(kernel)
    return (grad_lk, a_bar, b_bar, ta_bar if ctx.t_tensor[0] else None,
            tb_bar if ctx.t_tensor[1] else None, None, cot_gamma, None, None)


def _rounds(lk: torch.Tensor, log_a: torch.Tensor, log_b: torch.Tensor, t_a: Any, t_b: Any,
            rounds: int, gamma: torch.Tensor, final_column: bool,
            group: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``rounds`` full rounds and a final row step (or, ``final_column``, a final column step
    after the last row step), on the local rows, differentiable (unrolled)."""
    return _UnrolledRounds.apply(lk, log_a, log_b, t_a, t_b, rounds, gamma, final_column, group)


def _all_sum(x: torch.Tensor, group: Any) -> torch.Tensor:
    out = x.clone(memory_format=torch.contiguous_format)
    dist.all_reduce(out, op=dist.ReduceOp.SUM, group=group)
    return out


class _ImplicitRounds(torch.autograd.Function):
    """The rounds (and final row step) on the local rows, differentiated implicitly at the fixed
    point: the optimality system of
    [`otcl.solvers.adjoint.implicit_cotangents`][otcl.solvers.adjoint.implicit_cotangents], solved
    by conjugate gradients on the (replicated) column variable, with every product ``P^T x`` summed
    over the ranks (an all-reduce of ``m`` numbers per iteration)."""

    @staticmethod
    def forward(ctx: Any, lk: torch.Tensor, log_a: torch.Tensor,  # type: ignore[override]
                log_b: torch.Tensor, t_a: Any, t_b: Any, rounds: int, gamma0: torch.Tensor,
                group: Any) -> tuple[torch.Tensor, torch.Tensor]:
        ta, tb = _as_float(t_a), _as_float(t_b)
        phi, gamma = _plain_rounds(lk, log_a, log_b, ta, tb, rounds, gamma0, False, group)
        ctx.t, ctx.group = (ta, tb), group
        ctx.t_tensor = (isinstance(t_a, torch.Tensor), isinstance(t_b, torch.Tensor))
        ctx.save_for_backward(lk, log_a, log_b, phi, gamma)
        return phi, gamma

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, phi_bar: torch.Tensor,  # type: ignore[override]
                 gamma_bar: torch.Tensor) -> tuple[Any, ...]:
        lk, log_a, log_b, phi, gamma = ctx.saved_tensors
        ta, tb = ctx.t
        group, world = ctx.group, dist.get_world_size(ctx.group)
        plan = torch.exp(lk + phi[:, None] + gamma[None, :])
        mu, nu = plan.sum(dim=1), _all_sum(plan.sum(dim=0), group)
        act_r = (mu > 0) & (log_a > -math.inf)
        act_c = (nu > 0) & (log_b > -math.inf)
        zero_n, zero_m = torch.zeros_like(mu), torch.zeros_like(nu)
        inv_mu = torch.where(act_r, 1.0 / torch.where(act_r, mu, torch.ones_like(mu)), zero_n)
        root_nu = torch.where(act_c, torch.sqrt(nu), zero_m)
        inv_root_nu = torch.where(act_c, 1.0 / torch.where(act_c, root_nu, torch.ones_like(nu)),
                                  zero_m)
        pb = torch.where(act_r, phi_bar, zero_n)
        gb = torch.where(act_c, _all_sum(gamma_bar, group), zero_m)  # every rank's part
        balanced = ta == 1.0 and tb == 1.0
        if balanced:  # the sums over all ranks' rows (gb is already the whole of it)
            sums = _all_sum(torch.stack([pb.sum(), pb.abs().sum()]), group)
            scale = float(sums[1] + gb.abs().sum())
            gap = abs(float(sums[0] - gb.sum()))
            require_gauge_invariant(gap / scale if scale > 0 else 0.0,
                                    torch.finfo(pb.dtype).eps)
        mass = nu.sum()

        def project(y: torch.Tensor) -> torch.Tensor:
            return y - (torch.sum(root_nu * y) / mass) * root_nu if balanced else y

        def rmat(u: torch.Tensor) -> torch.Tensor:  # P^T u over all ranks' rows
            return _all_sum(u @ plan, group)

        def op(y: torch.Tensor) -> torch.Tensor:
            inner = rmat(inv_mu * (plan @ (y * inv_root_nu)))
            return project(torch.where(act_c, y / tb - ta * inv_root_nu * inner, y))

        rhs = project((gb - ta * rmat(pb * inv_mu)) * inv_root_nu)
        y = _cg(op, rhs, group)
        z2 = y * inv_root_nu
        z1 = ta * inv_mu * (pb - plan @ z2)
        lam_bar = plan.mul_(z1[:, None] + z2[None, :]).neg_()
        w1, w2 = mu * z1, nu * z2
        phi_f = torch.where(act_r, phi, zero_n)
        gamma_f = torch.where(act_c, gamma, zero_m)
        # the rows' terms are this rank's part of a sum over ranks; the column terms are
        # replicated (every rank holds the whole of them): each rank returns 1/W of them
        ta_bar = torch.sum(w1 * phi_f) / (ta * ta) if ctx.t_tensor[0] else None
        tb_bar = torch.sum(w2 * gamma_f) / (tb * tb) / world if ctx.t_tensor[1] else None
        return lam_bar, w1, w2 / world, ta_bar, tb_bar, None, None, None


def _as_float(t: Any) -> float:
    return float(t.detach()) if isinstance(t, torch.Tensor) else float(t)


def _cg(op: Any, rhs: torch.Tensor, group: Any, max_iter: int = 1000,
        check_every: int = 10) -> torch.Tensor:
    """Conjugate gradients for ``op(y) = rhs`` on a replicated vector, as
    [`otcl.solvers.adjoint.implicit_cotangents`][otcl.solvers.adjoint.implicit_cotangents] solves it
    (relative residual ``0.01 sqrt(eps)`` of the dtype); the ranks agree on when to stop (one
    all-reduce)."""
    from otcl.solvers.result import ConvergenceWarning

    tol = 0.01 * math.sqrt(torch.finfo(rhs.dtype).eps)
    y = torch.zeros_like(rhs)
    r = rhs
    p = r
    rs = torch.sum(r * r)
    target = (tol * tol) * rs
    done = rs <= target
    zero = torch.zeros_like(rs)
    for k in range(max_iter):
        q = op(p)
        pq = torch.sum(p * q)
        step = torch.where(~done & (pq > 0), rs / torch.where(pq > 0, pq, zero + 1), zero)
        y = y + step * p
        r = r - step * q
        rs_new = torch.sum(r * r)
        beta = torch.where(rs > 0, rs_new / torch.where(rs > 0, rs, zero + 1), zero)
        p = r + beta * p
        rs = rs_new
        done = done | (rs <= target)
        if (k + 1) % check_every == 0:
            # the ranks hold the same numbers; they also agree on the stop
            flag = done.to(torch.float64).reshape(1)
            dist.all_reduce(flag, op=dist.ReduceOp.MIN, group=group)
            if bool(flag > 0):
                break
    residual = rhs - op(y)
    if not bool(torch.sum(residual * residual) <= (4 * tol * tol) * torch.sum(rhs * rhs)):
        import warnings

        warnings.warn(
            f"implicit gradient (sharded): conjugate gradients did not reach the relative "
            f"residual {tol:.3g} in {max_iter} iterations; the gradient is inaccurate. Use "
            "grad='unroll'.", ConvergenceWarning, stacklevel=2,
        )
    return y


# ---------------------------------------------------------------------------------------------
# the losses


def _spec(fn: Any, kw: dict[str, Any]) -> dict[str, Any]:
    """The inner problem and divergence of a supported loss (as
    [`otcl.alignment.losses`][otcl.alignment.losses] composes it); ``ValueError`` for an unsupported
    loss or a bad hyper-parameter."""
    from otcl.alignment.divergences import validate_rince
    from otcl.solvers.problem import validate_positive

    A = _alg
    inf = math.inf
    base = {"rho_a": inf, "rho_b": inf, "marginals": "target", "final_column": False,
            "q": 0.6, "lam": 0.01}
    if fn is A.info_nce or fn is A.gca_ince:
        div = kw.get("divergence", "kl")
        if div not in ("kl", "cross_entropy"):
            raise ValueError(f"divergence must be 'kl' or 'cross_entropy', got {div!r}")
        n_iter = 0 if fn is A.info_nce else A.as_count("n_iter", kw.get("n_iter", 10))
        return {**base, "n_iter": n_iter, "rounds": n_iter, "divergence": div}
    if fn is A.rince or fn is A.gca_rince:
        q, lam = validate_rince(kw.get("q", 0.6), kw.get("lam", 0.01))
        n_iter = 0 if fn is A.rince else A.as_count("n_iter", kw.get("n_iter", 10))
        return {**base, "n_iter": n_iter, "rounds": n_iter, "divergence": "rince", "q": q,
                "lam": lam}
    if fn is A.gca_uot:
        rho = validate_positive("rho", kw.get("rho", 0.2), allow_inf=True)
        ra = rho if kw.get("rho_a") is None else kw["rho_a"]
        rb = rho if kw.get("rho_b") is None else kw["rho_b"]
        ra = validate_positive("rho_a", ra, allow_inf=True)
        rb = validate_positive("rho_b", rb, allow_inf=True)
        kl = kw.get("kl", "row")
        if kl not in A.GCA_UOT_KL:
            raise ValueError(f"kl must be one of {A.GCA_UOT_KL}, got {kl!r}")
        q, lam = validate_rince(kw.get("q", 0.6), kw.get("lam", 0.01))
        n_iter = A.as_count("n_iter", kw.get("n_iter", 10))
        first = "row_kl" if kl == "row" else "kl"
        return {**base, "n_iter": n_iter, "rounds": n_iter, "rho_a": ra, "rho_b": rb,
                "marginals": "probability", "q": q, "lam": lam,
                "divergence": {first: kw.get("r1", 1.0), "rince": kw.get("r2", 0.2)}}
    if fn is A.iot:
        rounds, final = A._iot_steps(kw.get("n_iter", 10))
        column = final == "column"
        return {**base, "n_iter": rounds, "rounds": rounds - 1 if column else rounds,
                "final_column": column, "marginals": "uniform",
                "divergence": "cross_entropy"}
    name = getattr(fn, "__qualname__", repr(fn))
    raise ValueError(
        f"distributed='sharded' supports the losses {', '.join(SHARDED_LOSSES)} (and their "
        f"functional forms), not {name}; use distributed=True (gather mode) for it"
    )


def _input_error(fn: Any, z1: Any, z2: Any, grad: str, kwargs: dict[str, Any]) -> str | None:
    """This rank's reason to reject the call (checked before any collective), or ``None``."""
    from otcl.alignment.losses import REDUCTIONS
    from otcl.geometry import METRICS

    if grad not in SHARDED_GRAD_MODES:
        return f"distributed='sharded' supports grad in {SHARDED_GRAD_MODES}, got {grad!r}"
    try:
        _spec(fn, kwargs)
    except ValueError as exc:
        return str(exc)
    layout = kwargs.get("layout")
    if z2 is not None and layout not in (None, "cross"):
        return (f"distributed='sharded' takes two arrays with layout None (the two-view "
                f"problem) or 'cross', got layout={layout!r}")
    if kwargs.get("reduction", "mean") not in REDUCTIONS:
        return f"reduction must be 'mean', 'sum' or 'none', got {kwargs.get('reduction')!r}"
    if kwargs.get("metric", "neg_cosine") not in METRICS:
        return f"metric must be one of {METRICS}, got {kwargs.get('metric')!r}"
    if kwargs.get("labels") is not None and kwargs.get("target") is not None:
        return "give either labels or target, not both"
    eps = kwargs.get("eps", 0.5)
    if isinstance(eps, torch.Tensor):
        value = float(eps.detach()) if eps.numel() == 1 else math.nan
    elif isinstance(eps, (int, float)) and not isinstance(eps, bool):
        value = float(eps)
    else:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        return f"eps must be a positive finite number (or 0-d tensor), got {eps!r}"
    # a two-view call arrives here as one batch [z1; z2] (otcl.torch.losses._call)
    first = "z1" if z2 is not None else "z1 (the batch [z1; z2] of a two-view call)"
    for name, z in ((first, z1), ("z2", z2)):
        if isinstance(z, torch.Tensor) and z.ndim == 2 and z.numel():
            if not bool(torch.isfinite(z).all()):
                return f"{name} contains NaN or inf"
            if kwargs.get("metric", "neg_cosine") in ("neg_cosine", "cosine") and bool(
                (z.abs().amax(dim=1) == 0).any()
            ):
                return f"{name} has a row of zero norm; the cosine cost is undefined there"
    return None


def _agree(error: str | None, device: Any, what: str) -> None:
    """Raise on every rank if any rank has an error (one all-reduce)."""
    flag = torch.tensor([0.0 if error is None else 1.0], dtype=torch.float64, device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    if error is not None:
        raise ValueError(f"distributed loss (sharded), rank {dist.get_rank()}: {error}")
    if float(flag) != 0:
        raise ValueError(f"distributed loss (sharded): another rank rejected the {what} (see "
                         "the error raised there); no rank computed the loss")


def _exchange(fn: Any, z1: Any, z2: Any, grad: str, kwargs: dict[str, Any],
              device: Any) -> tuple[list[int], int]:
    """The consistency exchange of the gather mode; returns the per-rank sample counts and the
    label kind (0 none, 1 per sample, 2 per row)."""
    layout, n_views = kwargs.get("layout"), kwargs.get("n_views", 2)
    labels, target = kwargs.get("labels"), kwargs.get("target")
    error, n_samples, label_kind = _local_checks(z1, z2, layout, n_views, labels, target)
    if error is None:
        error = _input_error(fn, z1, z2, grad, kwargs)
    signature = f"{getattr(fn, '__qualname__', fn)!s}|grad={grad}|sharded"
    counts = agree_on_inputs(z1, z2, labels, target, error, n_samples, label_kind, signature,
                             kwargs, device, mode=" (sharded)")
    return counts, label_kind


def _check_target(T: torch.Tensor, self_masked: bool) -> str | None:
    """The checks of [`otcl.alignment.targets.as_target`][otcl.alignment.targets.as_target] on the
    global target (every rank holds the same one, so every rank reaches the same verdict)."""
    if not bool(torch.isfinite(T).all()):
        return "target contains NaN or inf"
    if bool((T < 0).any()):
        return "target has negative entries"
    if self_masked and bool((torch.diagonal(T) > 0).any()):
        return "target puts mass on masked (self-pair) entries"
    if bool((T.sum(dim=1) <= 0).any()) or bool((T.sum(dim=0) <= 0).any()):
        return "target has a row or column with zero mass"
    return None


def sharded_loss(fn: Any, z1: Any, z2: Any, grad: str, kwargs: dict[str, Any]) -> Any:
    """The loss ``fn`` (a loss of [`otcl.alignment.losses`][otcl.alignment.losses] in
    [`SHARDED_LOSSES`][otcl.torch.sharded.SHARDED_LOSSES]) of the global batch of all ranks, each
    rank holding only its rows of the kernel (module docstring). ``z1``, ``z2`` and ``kwargs`` as
    for ``distributed=True``; a two-view call arrives as the all-views blocked batch ``[z1; z2]``.
    Every rank must call it, on the default process group."""
    if not is_initialized():
        raise RuntimeError(
            "distributed='sharded' needs an initialised torch.distributed process group; call "
            "torch.distributed.init_process_group(...) first (or use distributed=False)"
        )
    device = z1.device if isinstance(z1, torch.Tensor) else torch.device("cpu")
    counts, label_kind = _exchange(fn, z1, z2, grad, kwargs, device)
    rows = _Rows.build(z1, z2, kwargs, counts)
    target = kwargs.get("target")
    if target is not None and tuple(target.shape) != (rows.m, rows.m):
        raise ValueError(
            f"with distributed='sharded', target must be the global target of shape "
            f"({rows.m}, {rows.m}) (all ranks' rows), got {tuple(target.shape)}; a per-rank "
            "target does not define the pairs across ranks"
        )
    with torch.autocast(device_type=device.type, enabled=False):
        return _loss_rows(_spec(fn, kwargs), rows, kwargs, label_kind, grad)


@dataclass
class _Rows:
    """This rank's rows of the global problem (in its local row order) and the gathered
    embeddings ``X`` (rows) and ``Y`` (columns) in the global layout of the gather mode."""

    X: torch.Tensor
    Y: torch.Tensor
    rows: torch.Tensor  # (n_r,) global row of each local row
    col_sample: torch.Tensor  # (m,) sample of each global column
    counts: list[int]  # samples per rank
    sizes: tuple[int, ...]  # rows of z per rank
    perm: torch.Tensor | None  # gathered row -> global row (blocked layouts)
    cross: bool
    layout: Any
    n_views: int

    @property
    def m(self) -> int:
        return int(self.Y.shape[0])

    @property
    def n_total(self) -> int:
        return sum(self.counts)

    @classmethod
    def build(cls, z1: torch.Tensor, z2: torch.Tensor | None, kwargs: dict[str, Any],
              counts: list[int]) -> _Rows:
        rank = dist.get_rank()
        layout, n_views = kwargs.get("layout"), kwargs.get("n_views", 2)
        cross = z2 is not None
        n_total, offset, mine = sum(counts), sum(counts[:rank]), counts[rank]
        # gather once (autograd-aware), then the global layout of the gather mode
        local = torch.cat([z1, z2]) if cross else z1
        blocks = 2 if cross else (n_views if layout == "blocked" else 1)
        sizes = tuple(c * (2 if cross else n_views) for c in counts)
        gathered = _GatherRows.apply(local, sizes, rank, None)
        dev = gathered.device
        perm = _blocked_perm(counts, blocks, dev) if blocks > 1 else None
        Z = gathered if perm is None else gathered.index_select(0, perm)
        if Z.dtype in (torch.float16, torch.bfloat16):
            Z = Z.to(torch.float32)  # mixed precision: computed in float32
        X, Y = (Z[:n_total], Z[n_total:]) if cross else (Z, Z)
        ar = torch.arange(mine, dtype=torch.int64, device=dev)
        cols = torch.arange(Y.shape[0], dtype=torch.int64, device=dev)
        if cross:
            rows, col_sample = ar + offset, cols
        elif layout == "blocked":
            rows = torch.cat([ar + v * n_total + offset for v in range(n_views)])
            col_sample = cols % n_total
        else:
            rows = torch.arange(n_views * mine, dtype=torch.int64, device=dev) + n_views * offset
            col_sample = cols // n_views
        return cls(X, Y, rows, col_sample, counts, sizes, perm, cross, layout, n_views)


def _log_kernel_rows(r: _Rows, metric: str, inv: Any,
                     xp: Any) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
    """``Λ_r = -C[I_r, :] / eps`` (self-pairs ``-inf`` in the all-views layouts), and for the
    cosine metrics the unit rows ``(x̂_r, ŷ)`` it was built from."""
    from otcl.geometry import _normalise_rows, cost_matrix

    if metric in ("neg_cosine", "cosine"):
        yn = _normalise_rows("z2" if r.cross else "z", r.Y, xp)
        xn = _normalise_rows("z1", r.X, xp) if r.cross else yn
        xn_r = xn.index_select(0, r.rows)
        lk = (xn_r * inv) @ yn.T
        if metric == "cosine":
            lk.sub_(inv)  # a fresh array that no backward reads: shifted in place
        units: tuple[torch.Tensor, torch.Tensor] | None = (xn_r, yn)
    else:
        lk = cost_matrix(r.X.index_select(0, r.rows), r.Y, metric) * (-inv)
        units = None
    if not r.cross:
        # the self-pairs (local row i, global column rows[i]), written in place
        local = torch.arange(r.rows.shape[0], dtype=torch.int64, device=lk.device)
        lk.index_put_((local, r.rows), torch.tensor(-math.inf, dtype=lk.dtype, device=lk.device))
    return lk, units


def _target_rows(r: _Rows, kwargs: dict[str, Any], label_kind: int, dtype: Any,
                 xp: Any) -> tuple[Any, torch.Tensor]:
    """The target's rows of this rank (a [`Target`][otcl.Target] of shape
    ``(n_r, m)``) and its column sums ``T^T 1`` over all ranks' rows, ``(m,)``."""
    from otcl.alignment.targets import Target

    dev, m, rows = r.rows.device, r.m, r.rows
    labels, target = kwargs.get("labels"), kwargs.get("target")
    shape = (rows.shape[0], m)
    mask = None if r.cross else rows[:, None] != torch.arange(m, device=dev)[None, :]
    error = None
    if target is not None:
        T = target.to(device=dev, dtype=dtype)
        error = _check_target(T, not r.cross)  # the same verdict on every rank
        tgt, col_sums = Target(xp, shape, dense=T.index_select(0, rows)), T.sum(dim=0)
    elif labels is not None:
        lab = labels.to(dev)
        if label_kind == 1:  # one per sample
            y_col = _all_gather_rows(lab, r.counts, None).index_select(0, r.col_sample)
        else:  # one per row of z
            y_all = _all_gather_rows(lab, r.sizes, None)
            y_col = y_all if r.perm is None else y_all.index_select(0, r.perm)
        same = y_col.index_select(0, rows)[:, None] == y_col[None, :]
        if mask is not None:
            same = same & mask
        Tm = same.to(dtype)
        cnt = Tm.sum(dim=1, keepdim=True)
        if bool((cnt == 0).any()):
            error = ("labels leave a row without any positive (its label occurs in no other "
                     "allowed entry); give every row at least one partner with the same label")
        dense = Tm / torch.where(cnt > 0, cnt, torch.ones_like(cnt))
        col_sums = dense.sum(dim=0)
        dist.all_reduce(col_sums, op=dist.ReduceOp.SUM)
        tgt = Target(xp, shape, dense=dense)
    elif r.cross or r.n_views == 2:
        if r.cross:
            partner = rows
        elif r.layout == "blocked":
            partner = (rows + r.n_total) % (2 * r.n_total)
        else:
            partner = rows + 1 - 2 * (rows % 2)
        tgt, col_sums = Target(xp, shape, partner=partner), torch.ones(m, dtype=dtype,
                                                                        device=dev)
    else:  # V > 2 views: weight 1 / (V - 1) on the other views of the sample
        same = (r.col_sample.index_select(0, rows)[:, None] == r.col_sample[None, :]) & mask
        Tm = same.to(dtype)
        tgt = Target(xp, shape, dense=Tm / Tm.sum(dim=1, keepdim=True))
        col_sums = torch.ones(m, dtype=dtype, device=dev)
    _agree(error, dev, "target or labels")
    return tgt, col_sums


def _loss_rows(spec: dict[str, Any], r: _Rows, kwargs: dict[str, Any], label_kind: int,
               grad: str) -> Any:
    """The per-row terms of this rank's rows, reduced across ranks."""
    from otcl.backend import namespace, safe_log

    world = dist.get_world_size()
    xp = namespace(r.X)
    dev, dtype, m = r.X.device, r.X.dtype, r.m
    n = m  # the global problem is square (no extra negatives)
    eps = kwargs.get("eps", 0.5)
    if isinstance(eps, torch.Tensor):
        eps = eps.to(dtype=dtype, device=dev).reshape(())
    inv = 1 / eps
    metric, reduction = kwargs.get("metric", "neg_cosine"), kwargs.get("reduction", "mean")
    lk, units = _log_kernel_rows(r, metric, inv, xp)
    tgt, col_sums = _target_rows(r, kwargs, label_kind, dtype, xp)

    # the marginals (problem_marginals of the single-process loss)
    a = tgt.row_sums(lk)
    b = col_sums
    marginals = spec["marginals"]
    if marginals == "uniform":
        mass = a.sum()
        dist.all_reduce(mass, op=dist.ReduceOp.SUM)
        a = torch.ones_like(a) * (mass / n)
        b = torch.ones(m, dtype=dtype, device=dev) * (mass / m)
    elif marginals == "probability":
        a = torch.ones_like(a) / n
        b = torch.ones(m, dtype=dtype, device=dev) / m
    log_a, log_b = safe_log(a, xp), safe_log(b, xp)

    # the rounds (v_0 = b for unbalanced rounds and marginals 1/n, as the single-process loss)
    rho_a, rho_b = spec["rho_a"], spec["rho_b"]
    t_a, t_b = _alg._exponent(rho_a, eps), _alg._exponent(rho_b, eps)
    unbalanced = not (math.isinf(rho_a) and math.isinf(rho_b))
    gamma0 = log_b if (unbalanced or marginals == "probability") else torch.zeros_like(log_b)
    column = spec["final_column"]
    if grad == "detach":
        # the rounds' potentials are constants; a final column step (IOT) is differentiated,
        # as in the single-process loss
        with torch.no_grad():
            phi, gamma = _plain_rounds(lk.detach(), log_a, log_b, _as_float(t_a),
                                       _as_float(t_b), spec["rounds"], gamma0, False, None)
        if column:
            gamma = _scaled(t_b, log_b - _ColLSE.apply(lk, phi, None))
    elif grad == "implicit" and spec["rounds"] > 0:
        # (with no rounds there is no fixed point: the row step's exact derivative is the
        # unrolled one, as in the single-process loss)
        phi, gamma = _ImplicitRounds.apply(lk, log_a, log_b, t_a, t_b, spec["rounds"], gamma0,
                                           None)
        if column:
            gamma = _scaled(t_b, log_b - _ColLSE.apply(lk, phi, None))
    else:
        phi, gamma = _rounds(lk, log_a, log_b, t_a, t_b, spec["rounds"], gamma0, column, None)
    if not column and grad != "detach":
        # the final row step gives log (K v) and the row mass in closed form
        if math.isinf(rho_a):
            log_kv, row_mass = log_a - phi, a
        else:
            log_kv = log_a - phi / t_a
            row_mass = a * torch.exp(phi * (1 - 1 / t_a))
    else:
        log_kv = _RowLSE.apply(lk, gamma)
        row_mass = torch.exp(phi + log_kv)

    # the divergence terms of the local rows; for pairs and the cosine metrics the terms read
    # Λ at the pairs from the unit rows (an (n_r,) array)
    lk_terms = lk
    if tgt.partner is not None and units is not None:
        xn_r, yn = units
        lk_terms = (xn_r * yn.index_select(0, tgt.partner)).sum(dim=1) * inv
        if metric == "cosine":
            lk_terms = lk_terms - inv
    per_row = torch.zeros_like(phi)
    for weight, term, _ in _alg._divergence_terms(spec["divergence"], spec["q"], spec["lam"]):
        if weight != 0:
            per_row = per_row + weight * term(tgt, phi, gamma, lk_terms, row_mass, xp, log_kv)
    if grad == "detach" and not column:  # as the single-process loss (detached_envelope)
        envelope = _alg.detached_envelope(spec["divergence"], row_mass)
        if envelope is not None:
            per_row = per_row + envelope

    if reduction == "none":
        value = per_row
    else:
        mine = per_row.sum() * (world if reduction == "sum" else world / n)
        total = per_row.sum().detach().clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        if reduction == "mean":
            total = total / n
        value = total + (mine - mine.detach())
    if not kwargs.get("return_details", False):
        return value
    if units is not None:
        sim = units[0] @ units[1].T
        cost = -sim if metric == "neg_cosine" else 1 - sim
    else:
        from otcl.geometry import cost_matrix

        cost = cost_matrix(r.X.index_select(0, r.rows), r.Y, metric)
    mask = None if r.cross else r.rows[:, None] != torch.arange(m, device=dev)[None, :]
    details = _alg.LossDetails(per_sample=per_row, f=phi * eps, g=gamma * eps,
                               row_mass=row_mass, a=a, b=b, n_iter=spec["n_iter"],
                               eps=_alg._own_copy(eps, xp), cost=cost, mask=mask)
    return value, details

