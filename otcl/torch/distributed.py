"""Multi-process training: losses over the samples of every rank (``torch.distributed``).

A contrastive loss couples every sample of the batch with every other one (they are each other's
negatives, and the Sinkhorn rounds couple rows and columns globally). Under data parallelism each
rank holds only its own ``N_r`` samples; with ``distributed=False`` the loss is computed on them
alone (each rank sees only its local negatives). With ``distributed=True`` (on every loss module and
functional form of [`otcl.torch.losses`][otcl.torch.losses]) the loss is the one of the **global
batch**, the concatenation of all ranks' samples in rank order, and is trained exactly as a single
process would train it on that batch.

How ([`global_loss`][otcl.torch.distributed.global_loss]):

1. One small collective exchanges every rank's batch size, embedding width, dtype, the kind of
   ``labels``, a checksum of the hyper-parameters and a 128-bit hash of ``target``'s bytes (so
   targets that differ anywhere, even by two swapped rows of equal sums, are told apart);
   inconsistent calls, and input that one rank rejects, raise ``ValueError`` on every rank
   (never a hang in a later collective, never different losses on different ranks).
   Unequal per-rank batch sizes are supported.
2. The embeddings are gathered with [`gather_with_grad`][otcl.torch.distributed.gather_with_grad]
   (one all-gather) and re-assembled into the global layout: cross-view ``(z1, z2)`` becomes ``(Z1,
   Z2)`` with ``Z1 = [z1_0; z1_1; ...]``; an all-views ``"blocked"`` batch ``[v1_r; v2_r; ...]`` per
   rank becomes the global blocked batch ``[v1_0; v1_1; ...; v2_0; v2_1; ...]``; ``"interleaved"``
   stays interleaved (rank blocks of whole samples are concatenated). ``labels`` (one per sample or
   one per row) are gathered the same way.
3. Every rank computes the per-row losses ``ℓ_1..ℓ_n`` of the whole global problem (identical
   input and the fixed ``n_iter`` rounds, hence identical work and values on every rank, and no
   collective inside the solver).
4. The returned value carries the global loss as its value and a gradient arranged for DDP.

Why the gradient is exact (``reduction="mean"``). Let ``Z`` be the gathered global batch,
``L = (1/n) Σ_i ℓ_i(Z)`` the global loss and ``I_r`` the global rows of rank ``r`` (the ``I_r``
partition the ``n`` rows). Rank ``r`` returns ::

    v_r = stop(L) + (W / n) (S_r - stop(S_r)),      S_r = Σ_{i ∈ I_r} ℓ_i(Z),

with ``W`` the world size. Its value is ``L`` exactly (``x - x = 0``). Its gradient w.r.t. ``Z``
is ``(W/n) ∂S_r/∂Z``; the backward of the gather sums these over ranks (all-reduce) and keeps
rank ``r``'s slice: ``Σ_r' (W/n) ∂S_r'/∂z_r = W ∂L/∂z_r`` — rank ``r``'s samples also receive
the gradient of the rows of the other ranks in which they appear as negatives. A parameter
``θ`` of the model thus gets ``W ∂L/∂z_r · ∂z_r/∂θ`` on rank ``r`` (plus ``(W/n) ∂S_r/∂θ``
directly, for parameters of the loss such as a learnable ``eps``). DDP averages over ranks:
``(1/W) Σ_r`` of these is ``Σ_r ∂L/∂z_r ∂z_r/∂θ + (1/n) Σ_r ∂S_r/∂θ = dL/dθ``, the
single-process gradient on the concatenated batch, with no approximation. Without DDP (plain
autograd on one rank) ``z_r.grad`` is ``W ∂L/∂z_r``.

``reduction="sum"``: the same with ``L = Σ_i ℓ_i`` and the factor ``W`` instead of ``W / n``.

``reduction="none"``: each rank gets the per-row losses of **its own rows** (in its local row
order, shape ``(N_r,)`` cross-view, ``(V N_r,)`` all-views), with their plain gradient (no
factor ``W``). Under DDP the gradient is then the one of ``(1/W) Σ_r u_r`` where ``u_r`` is
what rank ``r`` back-propagates, exactly as for any per-sample loss under DDP, with the global
coupling counted: ``rows.mean()`` gives the global mean when the ranks hold equally many rows,
``rows.sum() * W / n`` does so for any sizes.

``return_details=True``: the [`LossDetails`][otcl.LossDetails] describe the global
problem (``n x n`` potentials, masses and per-row values over all ranks' rows), identical on
every rank.

``target=``: a target is a matrix over the rows and columns of the global problem, so only
the global target is accepted: the same ``(n, n)`` tensor on every rank (``n`` = the global
number of rows, in the global layout above); a per-rank ``(n_r, n_r)`` target raises
``ValueError`` (it does not define the off-diagonal rank blocks).

[`sharded_log_sinkhorn`][otcl.torch.distributed.sharded_log_sinkhorn] is a solver in which each rank
holds only its rows of the kernel.
"""

from __future__ import annotations

import hashlib
import math
import operator
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as dist

__all__ = [
    "gather_with_grad",
    "global_loss",
    "is_initialized",
    "local_negatives_warning",
    "require_process_group",
    "sharded_log_sinkhorn",
]

_DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int64,
           torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool)
_MAX_DIMS = 8

LOCAL_NEGATIVES = (
    "torch.distributed is initialised with world size {w} but the loss has distributed=False: "
    "each rank sees only its local negatives (the loss and its gradient are those of the "
    "rank's own batch). Pass distributed=True for the loss of the global batch."
)


def is_initialized() -> bool:
    """Whether a default ``torch.distributed`` process group exists."""
    return dist.is_available() and dist.is_initialized()


def require_process_group() -> None:
    """Raise ``RuntimeError`` unless a default process group is initialised."""
    if not is_initialized():
        raise RuntimeError(
            "distributed=True needs an initialised torch.distributed process group; call "
            "torch.distributed.init_process_group(...) first (or use distributed=False)"
        )


def local_negatives_warning() -> str | None:
    """The warning text when a group of world size > 1 exists (else ``None``): a loss with
    ``distributed=False`` then sees only the rank's own negatives."""
    if is_initialized():
        w = dist.get_world_size()
        if w > 1:
            return LOCAL_NEGATIVES.format(w=w)
    return None


def _dtype_code(dtype: torch.dtype) -> int:
    return _DTYPES.index(dtype) if dtype in _DTYPES else len(_DTYPES)


def _all_gather_rows(x: torch.Tensor, sizes: Sequence[int], group: Any) -> torch.Tensor:
    """All-gather ``x`` of shape ``(sizes[rank], ...)`` from every rank, concatenated in rank
    order along dim 0 (unequal sizes are padded to the largest, then trimmed)."""
    big = max(sizes)
    x = x.contiguous()
    if x.shape[0] < big:
        pad = x.new_zeros((big - x.shape[0], *x.shape[1:]))
        x = torch.cat([x, pad])
    bufs = [torch.empty_like(x) for _ in sizes]
    dist.all_gather(bufs, x, group=group)
    if all(s == big for s in sizes):
        return torch.cat(bufs)
    return torch.cat([b[:s] for b, s in zip(bufs, sizes, strict=True)])


class _GatherRows(torch.autograd.Function):
    """Forward: all-gather along dim 0; backward: all-reduce(SUM), then this rank's slice."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, sizes: tuple[int, ...], rank: int,
                group: Any) -> torch.Tensor:  # type: ignore[override]
        ctx.sizes, ctx.rank, ctx.group = sizes, rank, group
        return _all_gather_rows(x, sizes, group)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        total = grad.clone(memory_format=torch.contiguous_format)  # never reduce in place
        dist.all_reduce(total, op=dist.ReduceOp.SUM, group=ctx.group)
        start = sum(ctx.sizes[: ctx.rank])
        return total[start : start + ctx.sizes[ctx.rank]], None, None, None


def _exchange_shapes(x: torch.Tensor, group: Any) -> list[list[int]]:
    """Every rank's ``[ndim, dtype code, *shape]`` (padded), gathered. A rank whose ``x`` has
    no dimension or too many sends ``ndim = -1``, and every rank raises ``ValueError``."""
    ok = 1 <= x.ndim <= _MAX_DIMS
    if ok:
        info = [x.ndim, _dtype_code(x.dtype), *x.shape] + [-1] * (_MAX_DIMS - x.ndim)
    else:
        info = [-1] * (_MAX_DIMS + 2)
    mine = torch.tensor(info, dtype=torch.int64, device=x.device)
    bufs = [torch.empty_like(mine) for _ in range(dist.get_world_size(group))]
    dist.all_gather(bufs, mine, group=group)
    shapes = [b.tolist() for b in bufs]
    bad = [r for r, s in enumerate(shapes) if s[0] < 0]
    if bad:
        here = "" if ok else f" (here x has {x.ndim} dimensions)"
        raise ValueError(
            f"gather_with_grad: x on rank(s) {bad} must have between 1 and {_MAX_DIMS} "
            f"dimensions{here}"
        )
    return shapes


def gather_with_grad(x: torch.Tensor, group: Any = None) -> torch.Tensor:
    """Autograd-aware all-gather along dim 0.

    Forward: every rank's ``(N_r, ...)`` block, concatenated in rank order, shape
    ``(Σ_r N_r, ...)``. Backward: the incoming gradient is summed over ranks (all-reduce) and
    this rank's rows ``[Σ_{r'<r} N_r', Σ_{r'<=r} N_r')`` are returned, so that ``x.grad`` is the
    derivative of ``Σ_r u_r`` (``u_r`` what rank ``r`` back-propagates) w.r.t. ``x``.

    Unequal ``N_r`` are supported (the sizes are gathered first); the trailing dimensions and
    the dtype must agree on all ranks (``ValueError`` on every rank otherwise). Every rank must
    call it (and, when gradients flow, call backward): it is a collective.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not is_initialized():
        raise RuntimeError("gather_with_grad needs an initialised torch.distributed process group")
    shapes = _exchange_shapes(x, group)
    ref = shapes[0]
    for r, s in enumerate(shapes):
        if s[0] != ref[0] or s[1] != ref[1] or s[3:] != ref[3:]:
            raise ValueError(
                f"gather_with_grad: rank {r} has x of dtype code {s[1]} and shape "
                f"{tuple(v for v in s[2:] if v >= 0)}, rank 0 has dtype code {ref[1]} and shape "
                f"{tuple(v for v in ref[2:] if v >= 0)}: all but the first dimension and the "
                "dtype must agree"
            )
    sizes = tuple(s[2] for s in shapes)
    return _GatherRows.apply(x, sizes, dist.get_rank(group), group)


# ---------------------------------------------------------------------------------------------
# the global loss


def _digest_words(data: bytes, words: int) -> list[float]:
    """``words`` 32-bit pieces of a BLAKE2b digest of ``data``, as floats (exact in float64)."""
    digest = hashlib.blake2b(data, digest_size=4 * words).digest()
    return [float(int.from_bytes(digest[4 * k: 4 * k + 4], "little")) for k in range(words)]


def _hyper_fingerprint(signature: str, kwargs: dict[str, Any]) -> float:
    """A 32-bit checksum of the loss and its non-array hyper-parameters (``eps`` by value)."""
    parts = [signature]
    for key in sorted(kwargs):
        if key in ("labels", "target"):
            continue
        val = kwargs[key]
        if isinstance(val, torch.Tensor):
            val = float(val.detach()) if val.numel() == 1 else tuple(val.shape)
        parts.append(f"{key}={val!r}")
    return _digest_words("|".join(parts).encode(), 1)[0]


TARGET_WORDS = 4
"""32-bit words of the target's digest compared across ranks (a 128-bit BLAKE2b hash)."""


def _target_fingerprint(target: torch.Tensor) -> list[float]:
    """A 128-bit hash of the target's dtype, shape and bytes: equal exactly when the tensors
    are bitwise equal (up to a hash collision), so any difference between the ranks' targets
    (two swapped rows with equal sums included) is caught."""
    t = target.detach().contiguous().cpu()
    header = f"{t.dtype}|{tuple(t.shape)}|".encode()
    raw = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
    return _digest_words(header + raw, TARGET_WORDS)


def _local_checks(z1: Any, z2: Any, layout: Any, n_views: Any, labels: Any,
                  target: Any) -> tuple[str | None, int, int]:
    """Validate this rank's input; returns (error, samples N_r, label kind)."""
    if not isinstance(z1, torch.Tensor) or (z2 is not None and not isinstance(z2, torch.Tensor)):
        return "otcl.torch losses take torch tensors", 0, 0
    if z1.ndim != 2:
        return f"z1 must have shape (N, d), got {tuple(z1.shape)}", 0, 0
    if z2 is not None:
        if z2.shape != z1.shape:
            return (f"z1 and z2 must have the same shape, got {tuple(z1.shape)} and "
                    f"{tuple(z2.shape)}"), 0, 0
        n_samples, n_rows = z1.shape[0], z1.shape[0]
    else:
        if layout not in ("blocked", "interleaved"):
            return (f"layout must be 'blocked' or 'interleaved' for an all-views batch z, got "
                    f"{layout!r}"), 0, 0
        if isinstance(n_views, bool) or not isinstance(n_views, int) or n_views < 2:
            return f"n_views must be an integer >= 2, got {n_views!r}", 0, 0
        if z1.shape[0] % n_views:
            return (f"an all-views batch with n_views={n_views} needs a multiple of {n_views} "
                    f"rows on each rank, got {z1.shape[0]}"), 0, 0
        n_samples, n_rows = z1.shape[0] // n_views, z1.shape[0]
    if n_samples == 0:
        return "each rank needs at least one sample; z1 is empty", 0, 0
    kind = 0
    if labels is not None:
        if not isinstance(labels, torch.Tensor) or labels.ndim != 1:
            return "labels must be a one-dimensional torch.Tensor", 0, 0
        if labels.shape[0] == n_samples:
            kind = 1
        elif labels.shape[0] == n_rows:
            kind = 2
        else:
            return (f"labels has length {labels.shape[0]} on this rank; expected {n_samples} "
                    f"(one per local sample) or {n_rows} (one per local row)"), 0, 0
    if target is not None and (not isinstance(target, torch.Tensor) or target.ndim != 2):
        return ("with distributed=True, target must be the global target: a 2-d torch.Tensor "
                "of the global problem's shape"), 0, 0
    return None, n_samples, kind


def _blocked_perm(counts: Sequence[int], n_blocks: int, device: Any) -> torch.Tensor:
    """Gathered row of each global row when each rank holds ``n_blocks`` blocks of ``N_r`` rows:
    global ``[block 0 of all ranks; block 1 of all ranks; ...]``."""
    offsets = [0]
    for c in counts[:-1]:
        offsets.append(offsets[-1] + c)
    pieces = [
        torch.arange(c, dtype=torch.int64, device=device) + n_blocks * off + v * c
        for v in range(n_blocks)
        for c, off in zip(counts, offsets, strict=True)
    ]
    return torch.cat(pieces)


def agree_on_inputs(z1: Any, z2: Any, labels: Any, target: Any, error: str | None,
                    n_samples: int, label_kind: int, signature: str, kwargs: dict[str, Any],
                    device: Any, mode: str = "") -> list[int]:
    """The cross-rank consistency exchange of a distributed loss (one all-gather): every rank
    sends whether its local checks failed (``error``), its sample count, the embedding width and
    dtype, the labels' kind and dtype, the global target's shape and fingerprint, a fingerprint
    of the hyper-parameters (``signature``, ``kwargs``) and the call form. Raises on every rank
    if any rank failed or the ranks disagree; returns the per-rank sample counts. ``mode`` names
    the distributed mode in the messages (``" (sharded)"``)."""
    world, rank = dist.get_world_size(), dist.get_rank()
    given = error is None and target is not None
    fp_t = _target_fingerprint(target) if given else [0.0] * TARGET_WORDS
    t_shape = tuple(target.shape) if given else (0, 0)
    label_dtype = float(_dtype_code(labels.dtype)) if label_kind else 0.0
    meta = torch.tensor(
        [
            float(error is not None), float(n_samples),
            float(z1.shape[1]) if error is None else 0.0,
            float(_dtype_code(z1.dtype)) if error is None else 0.0,
            float(label_kind), label_dtype,
            float(target is not None), float(t_shape[0]), float(t_shape[1]), *fp_t,
            _hyper_fingerprint(signature, kwargs), float(z2 is not None),
        ],
        dtype=torch.float64, device=device,
    )
    bufs = [torch.empty_like(meta) for _ in range(world)]
    dist.all_gather(bufs, meta)
    metas = torch.stack(bufs).cpu()
    failed = [r for r in range(world) if metas[r, 0] != 0]
    if error is not None:
        raise ValueError(f"distributed loss{mode}, rank {rank}: {error}")
    if failed:
        raise ValueError(
            f"distributed loss{mode}: rank(s) {failed} rejected their local input (see the "
            "error raised there); no rank computed the loss"
        )
    names = {2: "embedding dimension", 3: "dtype", 4: "labels (none / per sample / per row)",
             5: "labels dtype", 6: "target (given or not)", 7: "target shape",
             8: "target shape"}
    names.update({9 + k: "target (its values differ)" for k in range(TARGET_WORDS)})
    names.update({9 + TARGET_WORDS: "hyper-parameters",
                  10 + TARGET_WORDS: "call form (z1, z2) or z"})
    for col, what in names.items():
        # exact comparison: every column holds an integer below 2**32 (exact in float64)
        if bool((metas[:, col] != metas[0, col]).any()):
            bad = [r for r in range(world) if metas[r, col] != metas[0, col]]
            raise ValueError(
                f"distributed loss: the ranks disagree on the {what} (rank(s) {bad} differ "
                "from rank 0); every rank must call the same loss with the same "
                "hyper-parameters (and the same global target)"
            )
    return [int(c) for c in metas[:, 1].tolist()]


def global_loss(compute: Callable[..., Any], z1: Any, z2: Any, kwargs: dict[str, Any], *,
                signature: str = "") -> Any:
    """The loss of the global batch with the DDP-exact gradient (module docstring).

    ``compute(Z1, Z2, kwargs)`` evaluates the single-process loss; it is called once on the
    gathered global batch with ``reduction="none"``. ``kwargs`` are the loss keywords (``layout``,
    ``n_views``, ``labels``, ``target``, ``reduction``, ``return_details``, hyper-parameters);
    ``signature`` names the loss for the cross-rank consistency check. Every rank must call it.
    """
    require_process_group()
    world, rank = dist.get_world_size(), dist.get_rank()
    layout, n_views = kwargs.get("layout"), kwargs.get("n_views", 2)
    labels, target = kwargs.get("labels"), kwargs.get("target")
    reduction = kwargs.get("reduction", "mean")

    # every check below ends in a collective that every rank reaches, so that a failure on
    # one rank raises on all of them (never a hang in a later collective)
    error, n_samples, label_kind = _local_checks(z1, z2, layout, n_views, labels, target)
    if error is None and reduction not in ("mean", "sum", "none"):
        error = f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}"
    device = z1.device if isinstance(z1, torch.Tensor) else torch.device("cpu")
    counts = agree_on_inputs(z1, z2, labels, target, error, n_samples, label_kind, signature,
                             kwargs, device)
    n_total, offset = sum(counts), sum(counts[:rank])
    cross = z2 is not None
    n_global = n_total if cross else n_views * n_total
    if target is not None and tuple(target.shape) != (n_global, n_global):
        raise ValueError(
            f"with distributed=True, target must be the global target of shape "
            f"({n_global}, {n_global}) (all ranks' rows), got {tuple(target.shape)}; a "
            "per-rank target does not define the pairs across ranks"
        )

    # gather and re-assemble the global layout
    if cross:
        local = torch.cat([z1, z2])
        blocks = 2
    else:
        local = z1
        blocks = n_views if layout == "blocked" else 1
    sizes = tuple(c * (2 if cross else n_views) for c in counts)
    gathered = _GatherRows.apply(local, sizes, rank, None)
    dev = gathered.device
    perm = _blocked_perm(counts, blocks, dev) if blocks > 1 else None
    Z = gathered if perm is None else gathered.index_select(0, perm)
    Z1, Z2 = (Z[:n_total], Z[n_total:]) if cross else (Z, None)

    kw = dict(kwargs)
    kw["reduction"] = "none"
    if labels is not None:
        lab = labels.to(device)
        if label_kind == 1:
            kw["labels"] = _all_gather_rows(lab, counts, None)
        else:
            lab_all = _all_gather_rows(lab, sizes, None)
            kw["labels"] = lab_all if perm is None else lab_all.index_select(0, perm)
    result = compute(Z1, Z2, kw)
    per_row, details = result if kwargs.get("return_details") else (result, None)

    # this rank's rows of the global problem, in local order
    if cross:
        own = per_row[offset : offset + counts[rank]]
    elif blocks == 1:
        own = per_row[n_views * offset : n_views * (offset + counts[rank])]
    else:
        idx = torch.cat([
            torch.arange(counts[rank], dtype=torch.int64, device=per_row.device)
            + v * n_total + offset
            for v in range(n_views)
        ])
        own = per_row.index_select(0, idx)
    if reduction == "none":
        value = own
    else:
        total = per_row.sum()
        scale = world if reduction == "sum" else world / per_row.shape[0]
        if reduction == "mean":
            total = total / per_row.shape[0]
        mine = own.sum() * scale
        value = total.detach() + (mine - mine.detach())
    return value if details is None else (value, details)


# ---------------------------------------------------------------------------------------------
# a row-sharded solver


def sharded_log_sinkhorn(log_kernel_rows: torch.Tensor, log_a_rows: torch.Tensor,
                         log_b: torch.Tensor, *, n_iter: int, t_a: float = 1.0,
                         t_b: float = 1.0, group: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-domain Sinkhorn rounds with the kernel sharded by rows across ranks (no gradient).

    Rank ``r`` holds the rows ``I_r`` of the log-kernel, ``log_kernel_rows`` of shape
    ``(n_r, m)``, with ``log_a_rows`` ``(n_r,)``; ``log_b`` ``(m,)`` is replicated. The rounds
    are those of the losses' inner solve (``docs/architecture.md``)::

        phi_i   = t_a (log a_i - LSE_j(Λ_ij + gamma_j))              (local rows)
        gamma_j = t_b (log b_j - LSE_i(Λ_ij + phi_i))                 (all rows)

    The column log-sum-exp over all ranks' rows is computed stably by two all-reduces per round:
    ``M_j = max_i (Λ_ij + phi_i)`` (``MAX``), then ``Σ_i exp(Λ_ij + phi_i - M_j)`` (``SUM``),
    ``LSE = M + log(sum)``. Memory per rank is ``O(n_r m)``; communication ``2 m`` numbers per
    round. After ``n_iter`` rounds a final row step is taken.

    Returns ``(phi_rows (n_r,), gamma (m,))``, ``gamma`` identical on every rank; the plan rows
    are ``exp(phi_i + gamma_j + Λ_ij)``.
    """
    require_process_group()
    if log_kernel_rows.ndim != 2:
        raise ValueError(
            f"log_kernel_rows must have shape (n_r, m), got {tuple(log_kernel_rows.shape)}"
        )
    n_r, m = log_kernel_rows.shape
    if log_a_rows.shape != (n_r,):
        raise ValueError(f"log_a_rows has shape {tuple(log_a_rows.shape)}, expected ({n_r},)")
    if log_b.shape != (m,):
        raise ValueError(f"log_b has shape {tuple(log_b.shape)}, expected ({m},)")
    if isinstance(n_iter, bool) or not hasattr(n_iter, "__index__") or operator.index(n_iter) < 0:
        raise ValueError(f"n_iter must be a non-negative integer, got {n_iter!r}")
    n_iter = operator.index(n_iter)
    for name, t in (("t_a", t_a), ("t_b", t_b)):
        if not (0 < t <= 1):
            raise ValueError(f"{name} must be in (0, 1], got {t!r}")
    with torch.no_grad():
        lk = log_kernel_rows
        gamma = torch.zeros_like(log_b)
        for _ in range(n_iter):
            phi = t_a * (log_a_rows - torch.logsumexp(lk + gamma[None, :], dim=1))
            gamma = t_b * (log_b - _global_col_lse(lk + phi[:, None], group))
        phi = t_a * (log_a_rows - torch.logsumexp(lk + gamma[None, :], dim=1))
    return phi, gamma


def _global_col_lse(x: torch.Tensor, group: Any) -> torch.Tensor:
    """``log Σ_i exp(x_ij)`` over the rows of every rank, shape ``(m,)``."""
    if x.shape[0]:
        top = x.max(dim=0).values
    else:
        top = torch.full((x.shape[1],), -math.inf, dtype=x.dtype, device=x.device)
    dist.all_reduce(top, op=dist.ReduceOp.MAX, group=group)
    shift = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    s = torch.exp(x - shift[None, :]).sum(dim=0)
    dist.all_reduce(s, op=dist.ReduceOp.SUM, group=group)
    return torch.log(s) + shift
