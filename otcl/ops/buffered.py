"""Buffered elementwise operations: results written into preallocated arrays.

[`BufferedOps`][otcl.ops.buffered.BufferedOps] is the common base of the NumPy and PyTorch CPU
operations: the library's functions take ``out=`` as NumPy's do, large buffers come from
[`otcl.buffers.BUFFER_POOL`][otcl.buffers.BUFFER_POOL], and the shifted exponential runs block
by block in cache. The products and the log-sum-exp are separate mixins
([`otcl.ops.products`][otcl.ops.products], [`otcl.ops.logsumexp`][otcl.ops.logsumexp]).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from otcl.backend import Array
from otcl.buffers import BUFFER_POOL
from otcl.ops import blocking
from otcl.ops.base import LOG2E, ArrayOps

__all__ = ["BufferedOps"]

_EXP2_CEILING = 127.0
"""Largest base-2 exponent whose power float32 holds (``2^128`` overflows)."""


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
        """``exp(x)`` into ``out`` (the natural-units exponential of every buffered
        operation)."""
        return self.lib.exp(x, out=out)

    def _exp2(self, x: Array, out: Array) -> Array:
        """``2^x`` into ``out`` (the base-2 one)."""
        return self.lib.exp2(x, out=out)

    def _raise(self, x: Array, floor: float) -> Array:
        """``max(x, floor)`` in place, ``x (B, r, m)`` (NaN stays NaN)."""
        return self.lib.maximum(x, floor, out=x)

    def _exp2_safe(self, dtype: Any, bounds: tuple[float, float] | None) -> bool:
        """Whether exponents within ``bounds`` (natural units) are faster as powers of two:
        the dtype's ``exp2`` is the faster one ([`base2`][otcl.ops.base.ArrayOps.base2]) and
        every exponent lies in its fast range (above the floor, below float32's overflow)."""
        if bounds is None or not self.base2(dtype):
            return False
        low, high = bounds[0] * LOG2E, bounds[1] * LOG2E
        floor = -math.inf if self.exp2_floor is None else self.exp2_floor
        return low >= floor and high <= _EXP2_CEILING  # False for NaN

    def scaled(self, x: Array, divisor: Any, out: Array | None = None) -> Array:
        # -x / d and x / -d are the same IEEE operation (the sign of a quotient is exact)
        return self.lib.divide(x, -divisor, out=out)

    def exp_shifted(self, base: Array, row: Array | None, col: Array | None,
                    out: Array | None = None, divisor: Any = None,
                    bounds: tuple[float, float] | None = None) -> Array:
        lib = self.lib
        if out is None:
            out = self.buffer(tuple(base.shape), base)
        units2 = self._exp2_safe(base.dtype, bounds)
        if units2:  # the same powers in base 2: every term scaled by log2(e)
            row = None if row is None else row * LOG2E
            col = None if col is None else col * LOG2E
            divisor = None if divisor is None else divisor / LOG2E
        # block by block, so that the additions and the exponential run in cache
        for probs, r in blocking.pieces(base):
            o = out[probs, r]
            if divisor is not None:
                x = self.scaled(base[probs, r], divisor, out=o)
            else:
                x = lib.multiply(base[probs, r], LOG2E, out=o) if units2 else base[probs, r]
            if row is not None:
                x = lib.add(x, row[probs, r][:, :, None], out=o)
            if col is not None:
                x = self._add_cols(x, col[probs], out=o)
            if units2:
                self._exp2(x, out=o)
            else:
                self._exp(x, out=o)
        return out

    def blocks(self, kernel: Array) -> blocking.Plan | None:
        return blocking.sweep_plan(kernel)
