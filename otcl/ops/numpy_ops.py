"""Buffered operations for NumPy arrays."""

from __future__ import annotations

from typing import Any

import numpy as np

from otcl.backend import Array
from otcl.ops.buffered import BufferedOps
from otcl.ops.logsumexp import BufferedLogSumExp
from otcl.ops.products import BufferedProducts

__all__ = ["NumpyOps"]

ROW_GROUP_ENTRIES = 32768
"""A row-broadcast operation on NumPy arrays runs over groups of rows of about this many entries
(see [`NumpyOps`][otcl.ops.numpy_ops.NumpyOps])."""


def _grouped(x: Array, k: int) -> Array | None:
    """``x (B, r, m)`` as a view ``(B, r / k, k m)``, or ``None`` when that needs a copy."""
    B, r, m = x.shape
    try:
        return np.reshape(x, (B, r // k, k * m), copy=False)
    except ValueError:
        return None


def _group_size(r: int, m: int) -> int:
    """The largest power of two ``k`` dividing ``r`` with ``k m`` at most
    [`ROW_GROUP_ENTRIES`][otcl.ops.numpy_ops.ROW_GROUP_ENTRIES]."""
    k = 1
    while r % (2 * k) == 0 and 2 * k * m <= ROW_GROUP_ENTRIES:
        k *= 2
    return k


class NumpyOps(BufferedLogSumExp, BufferedProducts, BufferedOps):
    """NumPy: every primitive into preallocated, pooled buffers.

    A vector broadcast along the rows of a matrix (``x + col[None, :]``, ``max(x, floor)``) is
    applied to groups of ``k`` rows at once, against the vector repeated ``k`` times: NumPy calls
    its inner loop once per row of the broadcast, and on rows of 1024 entries the calls cost as
    much as the arithmetic (1024 x 1024 float32: 0.16 ms instead of 0.28; 4096 x 4096: 6.2
    instead of 9.0).
    """

    exp2_floor = -126.0
    """float32's smallest normal exponent: NumPy's vectorised ``exp2`` takes a slow path for
    every vector with an argument below it (ten times slower when most are, as at small eps)."""

    exp2_unraised_ok = False
    """Raised to the floor (grouped rows, 0.15 ms per million entries) and then ``exp2`` (0.35)
    costs less than ``exp`` (0.59); unraised, ten times more."""

    def __init__(self, xp: Any) -> None:
        super().__init__(xp, np)

    def base2(self, dtype: Any) -> bool:
        # float32 exp2 runs at 2.3x the speed of exp (0.23 vs 0.56 ms per million entries on
        # AVX-512); in float64 they are level
        return np.dtype(dtype) == np.float32

    # the reductions of a log-sum-exp's checks act on vectors: NumPy's ufunc reductions directly
    # (np.min and np.max add 2 microseconds of dispatch each, np.nan_to_num 8; a round at
    # n = 1024 makes about twenty such calls)

    def _max(self, x: Array, axis: int) -> Array:
        return np.maximum.reduce(x, axis=axis)

    def _min(self, x: Array, axis: int | None = None) -> Array:
        return np.minimum.reduce(x, axis=axis)

    def _min_max(self, x: Array, axis: int | None = None) -> tuple[Array, Array]:
        return np.minimum.reduce(x, axis=axis), np.maximum.reduce(x, axis=axis)

    def _finite_or_zero(self, x: Array) -> Array:
        return np.where(np.isfinite(x), x, x.dtype.type(0))

    def spread(self, x: Array) -> float:
        return float(np.maximum.reduce(
            np.maximum.reduce(x, axis=1) - np.minimum.reduce(x, axis=1), axis=None))

    def _sum(self, x: Array, axis: int) -> Array:
        if axis == x.ndim - 1 and x.dtype.kind == "f":
            # along the contiguous axis BLAS's matrix-vector product with ones is 3x faster
            # than NumPy's pairwise sum
            return np.matmul(x, np.ones(x.shape[-1], dtype=x.dtype))
        return np.sum(x, axis=axis)

    def _add_cols(self, x: Array, col: Array, out: Array) -> Array:
        _, r, m = x.shape
        k = _group_size(r, m)
        xg, og = _grouped(x, k), _grouped(out, k)
        if k == 1 or xg is None or og is None:
            return np.add(x, col[:, None, :], out=out)
        np.add(xg, np.tile(col, (1, k))[:, None, :], out=og)
        return out

    def _raise(self, x: Array, floor: float) -> Array:
        _, r, m = x.shape
        k = _group_size(r, m)
        xg = _grouped(x, k)
        if xg is None:
            return np.maximum(x, floor, out=x)
        # against a row of the floor: NumPy's maximum with a scalar is 3x slower
        np.maximum(xg, np.full(k * m, floor, dtype=x.dtype), out=xg)
        return x

    def fill_where(self, x: Array, where: Array, value: float) -> Array:
        np.copyto(x, value, where=where)
        return x
