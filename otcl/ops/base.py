"""The interface of a solver loop's dense primitives, allocating and differentiable.

[`ArrayOps`][otcl.ops.base.ArrayOps] is written against the Python array API: it runs on any
supported library and on arrays that an autograd engine records. The buffered versions for NumPy
and PyTorch CPU tensors ([`otcl.ops.numpy_ops`][otcl.ops.numpy_ops],
[`otcl.ops.torch_ops`][otcl.ops.torch_ops]) override it method by method.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

from otcl.backend import Array, logsumexp, masked_fill

__all__ = ["LOG2E", "ArrayOps", "Base2"]

LOG2E = 1.0 / math.log(2.0)
"""``log2(e)``: a log-kernel in base-2 units is ``LOG2E * Λ``, and ``exp2`` of it is ``exp(Λ)``."""


class Base2(NamedTuple):
    """Marks a log-sum-exp's ``base`` as held in base-2 units, ``LOG2E * Λ`` (its exponentials
    taken by ``exp2``; the shifts, hints and results stay in natural units).

    ``low`` ``(B,)`` bounds each problem's entries of ``base`` from below, or is ``None`` when
    no entry may be raised to [`exp2_floor`][otcl.ops.base.ArrayOps.exp2_floor] (a ``-inf``,
    masked entry or a zero marginal's potential would then get mass).
    """

    low: Array | None


class ArrayOps:
    """The dense primitives of a solver loop, with optional preallocated outputs.

    Every method returns its result. This base class, used for any array-API library and for arrays
    that an autograd engine is recording, allocates each result and ignores ``out``: `inplace` is
    False and [`buffer`][otcl.ops.base.ArrayOps.buffer] returns ``None``, so a loop written against
    this interface runs unchanged and stays differentiable. The NumPy and PyTorch (CPU) versions
    ([`array_ops`][otcl.ops.array_ops]) write into ``out`` instead, so that a loop reuses a
    fixed set of buffers and touches no fresh memory per iteration. Shapes are batch-first: kernels
    ``(B, n, m)``, row vectors ``(B, n)``, column vectors ``(B, m)``; the products also take one
    matrix ``(n, m)`` with vectors ``(n,)``, ``(m,)`` (the blocks of a sweep).
    """

    inplace = False

    def __init__(self, xp: Any) -> None:
        self.xp = xp

    def buffer(self, shape: tuple[int, ...], like: Array) -> Array | None:
        """An uninitialised array of ``like``'s dtype and device (``None`` here)."""
        return None

    def snapshot(self, x: Array) -> Array:
        """A copy of ``x`` that later in-place updates cannot change (``x`` itself here)."""
        return x

    def add(self, x: Array, y: Array, out: Array | None = None) -> Array:
        """``x + y``."""
        return x + y

    def divide(self, x: Array, y: Array, out: Array | None = None) -> Array:
        """``x / y``."""
        return x / y

    def multiply(self, x: Array, y: Array, out: Array | None = None) -> Array:
        """``x * y``."""
        return x * y

    def power(self, x: Array, p: Any, out: Array | None = None) -> Array:
        """``x ** p``."""
        return x**p

    def zero(self, x: Array) -> Array:
        """Zeros shaped like ``x`` (the buffered versions fill ``x`` itself)."""
        return self.xp.zeros_like(x)

    def scaled(self, x: Array, divisor: Any, out: Array | None = None) -> Array:
        """``-x / divisor`` (the log-kernel ``-C / eps``)."""
        return -x / divisor

    def fill_where(self, x: Array, where: Array, value: float) -> Array:
        """``x`` with ``value`` where the boolean ``where`` is True."""
        return masked_fill(x, where, value, self.xp)

    def exp_shifted(self, base: Array, row: Array | None, col: Array | None,
                    out: Array | None = None, divisor: Any = None,
                    bounds: tuple[float, float] | None = None) -> Array:
        """``exp(base + row[:, :, None] + col[:, None, :])`` (``None`` terms left out); with a
        ``divisor``, ``base`` is a cost and ``-base / divisor`` takes its place. ``bounds``:
        known lower and upper bounds of every exponent, which let the buffered versions take
        powers of two where those are faster and cannot leave ``exp2``'s fast range (the
        result is the same up to rounding)."""
        x = base if divisor is None else -base / divisor
        if row is not None:
            x = x + row[:, :, None]
        if col is not None:
            x = x + col[:, None, :]
        return self.xp.exp(x)

    def matvec(self, kernel: Array, v: Array, out: Array | None = None) -> Array:
        """``K v``: ``(B, n, m), (B, m) -> (B, n)``."""
        if kernel.ndim == 2:
            return self.xp.matmul(kernel, v)
        return self.xp.matmul(kernel, v[:, :, None])[:, :, 0]

    def rmatvec(self, kernel: Array, u: Array, out: Array | None = None) -> Array:
        """``K^T u``: ``(B, n, m), (B, n) -> (B, m)``."""
        if kernel.ndim == 2:
            return self.xp.matmul(u, kernel)
        return self.xp.matmul(u[:, None, :], kernel)[:, 0, :]

    def rmatvec_add(self, kernel: Array, u: Array, acc: Array, tmp: Array | None = None) -> Array:
        """``acc + K^T u`` (into ``acc``; ``tmp`` is ``(B, m)`` scratch)."""
        return acc + self.rmatvec(kernel, u)

    exp2_floor: float | None = None
    """Where this library's float32 ``exp2`` leaves its fast path: arguments below it (powers
    below the smallest normal number) are raised to it when a call's
    [`Base2`][otcl.ops.base.Base2] bound cannot rule them out (``None``: no slow path)."""

    exp2_unraised_ok = True
    """Whether ``exp2`` of arguments below [`exp2_floor`][otcl.ops.base.ArrayOps.exp2_floor]
    is still about as fast as ``exp`` (False: a problem whose arguments may not be raised keeps
    natural units)."""

    def spread(self, x: Array) -> float:
        """The largest per-problem spread ``max_i x_i - min_i x_i`` of ``x`` ``(B, k)`` (NaN if
        any entry is)."""
        xp = self.xp
        return float(xp.max(xp.max(x, axis=1) - xp.min(x, axis=1)))

    def base2(self, dtype: Any) -> bool:
        """Whether a log-sum-exp over a matrix of ``dtype`` is faster with the matrix in base-2
        units ([`Base2`][otcl.ops.base.Base2]). False here."""
        return False

    def logsumexp_shifted(self, base: Array, shift: Array, axis: int,
                          work: Array | None = None, hint: Array | None = None,
                          base2: Base2 | None = None) -> Array:
        """``LSE`` over ``axis`` of ``base + shift`` broadcast along the other axis.

        ``axis=2``: ``LSE_j(base_ij + shift_j)`` with ``shift (B, m)``, result ``(B, n)``;
        ``axis=1``: ``LSE_i(base_ij + shift_i)`` with ``shift (B, n)``, result ``(B, m)``.
        ``-inf`` where the slice is all ``-inf``; ``work`` is scratch shaped like ``base``.
        ``hint`` (shaped like the result) is an estimate of ``-LSE`` that the buffered versions
        may use as the stabilising shift in place of the slice's maximum (a solver loop passes
        the potential the result replaces); it never changes the result beyond rounding.
        With ``base2`` ([`Base2`][otcl.ops.base.Base2]), ``base`` holds ``LOG2E * Λ`` and the
        result is the log-sum-exp of ``Λ + shift``.
        """
        if base2 is not None:
            base = base / LOG2E
        x = base + (shift[:, None, :] if axis == 2 else shift[:, :, None])
        return logsumexp(x, axis, self.xp)

    def lse_rows_keep(self, base: Array, shift: Array, work: Array | None,
                      hint: Array | None, base2: Base2 | None = None) -> tuple[Array, Any]:
        """``LSE_j(base_ij + shift_j)`` ``(B, n)`` (as
        [`logsumexp_shifted`][otcl.ops.base.ArrayOps.logsumexp_shifted] with ``axis=2``), and
        what [`lse_cols_from_rows`][otcl.ops.base.ArrayOps.lse_cols_from_rows] can reuse of it:
        the buffered versions keep the exponentials ``exp(base_ij + shift_j + h_i)`` in
        ``work`` when every row's hinted sum was in range; ``None`` here."""
        return self.logsumexp_shifted(base, shift, 2, work, hint, base2), None

    def lse_cols_from_rows(self, base: Array, shift: Array, rows: Any, work: Array | None,
                           hint: Array | None = None, base2: Base2 | None = None) -> Array:
        """``LSE_i(base_ij + shift_i)`` ``(B, m)``: from the exponentials that a
        [`lse_rows_keep`][otcl.ops.base.ArrayOps.lse_rows_keep] on the same ``base`` left in
        ``work`` (``rows``, their shifts; one matrix-vector product, no exponential per entry)
        when there are some, otherwise as
        [`logsumexp_shifted`][otcl.ops.base.ArrayOps.logsumexp_shifted] with ``axis=1``."""
        return self.logsumexp_shifted(base, shift, 1, work, hint, base2)

    def blocks(self, kernel: Array) -> list[tuple[slice, list[slice]]] | None:
        """How to sweep ``kernel`` in cache-sized blocks, or ``None`` for whole-matrix products.

        A sweep is a list of groups ``(problems, row_blocks)``: the problems ``kernel[problems]``
        and, for each of them, the row blocks that partition their rows.
        """
        return None
