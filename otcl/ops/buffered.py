"""Buffered elementwise operations: results written into preallocated arrays.

[`BufferedOps`][otcl.ops.buffered.BufferedOps] is the common base of the NumPy and PyTorch CPU
operations: the library's functions take ``out=`` as NumPy's do, large buffers come from
[`otcl.buffers.BUFFER_POOL`][otcl.buffers.BUFFER_POOL], and the shifted exponential runs block
by block in cache. The products and the log-sum-exp are separate mixins
([`otcl.ops.products`][otcl.ops.products], [`otcl.ops.logsumexp`][otcl.ops.logsumexp]).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from otcl.backend import Array
from otcl.buffers import BUFFER_POOL
from otcl.ops import blocking
from otcl.ops.base import ArrayOps

__all__ = ["BufferedOps"]


class BufferedOps(ArrayOps):
    """Elementwise operations for a library ``lib`` whose functions take ``out=``."""

    inplace = True

    def __init__(self, xp: Any, lib: Any) -> None:
        super().__init__(xp)
        self.lib = lib

    def buffer(self, shape: tuple[int, ...], like: Array) -> Array:
        if self.lib is np:
            return BUFFER_POOL.empty(shape, like.dtype)
        return self.lib.empty(shape, dtype=like.dtype)

    def snapshot(self, x: Array) -> Array:
        return self.lib.clone(x) if hasattr(self.lib, "clone") else x.copy()

    def add(self, x: Array, y: Array, out: Array | None = None) -> Array:
        return self.lib.add(x, y, out=out)

    def divide(self, x: Array, y: Array, out: Array | None = None) -> Array:
        return self.lib.divide(x, y, out=out)

    def multiply(self, x: Array, y: Array, out: Array | None = None) -> Array:
        return self.lib.multiply(x, y, out=out)

    def power(self, x: Array, p: Any, out: Array | None = None) -> Array:
        return self.lib.power(x, p, out=out)

    def zero(self, x: Array) -> Array:
        x[...] = 0
        return x

    def _add_cols(self, x: Array, col: Array, out: Array) -> Array:
        """``x + col[:, None, :]`` into ``out``: ``x (B, r, m)``, ``col (B, m)`` added to every
        row (the operation of every log-sum-exp's row pass)."""
        return self.lib.add(x, col[:, None, :], out=out)

    def _exp(self, x: Array, out: Array) -> Array:
        """``exp(x)`` into ``out`` (the one exponential every buffered operation uses)."""
        return self.lib.exp(x, out=out)

    def scaled(self, x: Array, divisor: Any, out: Array | None = None) -> Array:
        # -x / d and x / -d are the same IEEE operation (the sign of a quotient is exact)
        return self.lib.divide(x, -divisor, out=out)

    def exp_shifted(self, base: Array, row: Array | None, col: Array | None,
                    out: Array | None = None, divisor: Any = None) -> Array:
        lib = self.lib
        if out is None:
            out = self.buffer(tuple(base.shape), base)
        # block by block, so that the additions and the exponential run in cache
        for probs, r in blocking.pieces(base):
            o = out[probs, r]
            x = base[probs, r] if divisor is None else self.scaled(base[probs, r], divisor, out=o)
            if row is not None:
                x = lib.add(x, row[probs, r][:, :, None], out=o)
            if col is not None:
                x = self._add_cols(x, col[probs], out=o)
            self._exp(x, out=o)
        return out

    def blocks(self, kernel: Array) -> blocking.Plan | None:
        return blocking.sweep_plan(kernel)
