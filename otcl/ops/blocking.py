"""How the buffered operations cut a large ``(B, n, m)`` array into cache-sized blocks.

Two kinds of blocking, with their own thresholds: a *sweep*
([`sweep_plan`][otcl.ops.blocking.sweep_plan]) reads a kernel once per Sinkhorn round for both of
its products, and the *multi-pass* operations ([`pieces`][otcl.ops.blocking.pieces]: shifted
exponentials and log-sum-exps) keep their intermediate passes in cache. The thresholds are read
at call time, so that tests can lower them.
"""

from __future__ import annotations

from otcl.backend import Array

__all__ = ["BLOCK_BYTES", "FUSE_MIN_BYTES", "PASSES_MIN_BYTES", "Plan", "pieces", "plan",
           "sweep_plan"]

FUSE_MIN_BYTES = 24 * 2**20
"""Kernels larger than this (bytes) are swept in cache-sized blocks by
[`ArrayOps.blocks`][otcl.ops.base.ArrayOps.blocks].

Below it the matrix stays in the last-level cache between the two products of a round anyway
(measured on a 32 MiB L3: fusing is 5-10 % slower at 16 MiB, 20-40 % faster from 32 MiB).
"""

PASSES_MIN_BYTES = 8 * 2**20
"""Matrices larger than this (bytes) are processed in blocks of rows by the multi-pass operations
([`ArrayOps.logsumexp_shifted`][otcl.ops.base.ArrayOps.logsumexp_shifted],
[`ArrayOps.exp_shifted`][otcl.ops.base.ArrayOps.exp_shifted]), whose intermediate passes then stay
in cache (10-15 % faster at 16 MiB, 30 % at 64 MiB)."""

BLOCK_BYTES = 4 * 2**20
"""Target size of one block of a fused sweep: a few rows that stay in cache between the row
product that reads them from memory and the column product that reads them again (1-8 MiB
measured; 4 MiB was fastest by a few percent)."""

Plan = list[tuple[slice, list[slice]]]
"""Groups ``(problems, row_blocks)``: the problems ``x[problems]`` and, for each of them, the
row blocks that partition their rows."""


def plan(x: Array, min_bytes: int, block_bytes: int | None = None) -> Plan | None:
    """Blocks of about ``block_bytes`` (default [`BLOCK_BYTES`][otcl.ops.blocking.BLOCK_BYTES])
    for ``x (B, n, m)``, or ``None`` when ``x`` has at most ``min_bytes``.

    Small problems are grouped whole (several per block); a large one is cut into blocks of rows
    (at least 8 rows each).
    """
    B, n, m = (int(s) for s in x.shape)
    item = x.dtype.itemsize
    if B * n * m * item <= min_bytes:
        return None
    block = BLOCK_BYTES if block_bytes is None else block_bytes
    if n * m * item <= block:  # several whole problems per block
        per = max(1, block // (n * m * item))
        return [(slice(s, min(s + per, B)), [slice(0, n)]) for s in range(0, B, per)]
    rows = max(8, block // (m * item))
    row_blocks = [slice(r, min(r + rows, n)) for r in range(0, n, rows)]
    return [(slice(k, k + 1), row_blocks) for k in range(B)]


def sweep_plan(kernel: Array) -> Plan | None:
    """The blocks of a fused Sinkhorn sweep over ``kernel``, or ``None`` below
    [`FUSE_MIN_BYTES`][otcl.ops.blocking.FUSE_MIN_BYTES]."""
    return plan(kernel, FUSE_MIN_BYTES)


def pieces(x: Array) -> list[tuple[slice, slice]]:
    """``(problems, rows)`` pieces of ``x`` ``(B, n, m)`` for a multi-pass operation, in sweep
    order (the whole array when it has at most
    [`PASSES_MIN_BYTES`][otcl.ops.blocking.PASSES_MIN_BYTES])."""
    p = plan(x, PASSES_MIN_BYTES)
    if p is None:
        return [(slice(None), slice(None))]
    return [(probs, r) for probs, rows in p for r in rows]
