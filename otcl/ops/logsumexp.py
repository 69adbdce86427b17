"""Buffered log-sum-exp over rows or columns of a shifted matrix, in a scratch buffer.

Three ways, from the cheapest:

* **From a row pass's exponentials**
  ([`lse_cols_from_rows`][otcl.ops.base.ArrayOps.lse_cols_from_rows]): a Sinkhorn round's
  column log-sum-exp ``LSE_i(Λ_ij + φ_i)`` is a matrix-vector product with the exponentials
  ``E_ij = exp(Λ_ij + γ_j + h_i)`` its row pass left behind,
  ``LSE_i = -γ_j + M + log sum_i E_ij exp(φ_i - h_i - M)``: one exponential per entry and
  round instead of two.
* **Hinted** (``hint`` ``h``, an estimate of ``-LSE`` such as the previous round's):
  ``LSE = log(sum exp(x + h)) - h``, one pass fewer than with the maximum.
* **With each slice's maximum** subtracted first: always in range.

The first two check every slice's sum: one that lies in ``[sqrt(tiny), max]`` (row pass) or
above ``count * tiny / (1e-3 eps)`` (columns) is exact to rounding, since no term overflowed and
the terms flushed to zero add at most ``count * tiny``; the other slices (a poor hint, an
all-``-inf`` slice) are computed again from their maximum, or everything is when more than a
quarter of them need it.
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import numpy as np

from otcl.backend import Array, logsumexp, safe_log
from otcl.ops import blocking
from otcl.ops.base import LOG2E, Base2

__all__ = ["BufferedLogSumExp", "RowExps"]

_REDO_FRACTION = 4
"""More than one slice in this many needing its maximum: all of them are computed again."""


@functools.cache
def _dtype_info(dtype: str) -> tuple[float, float, float]:
    """``(tiny, eps, max)`` of a float dtype (NumPy or PyTorch name)."""
    info = np.finfo(np.dtype(dtype.removeprefix("torch.")))
    return float(info.smallest_normal), float(info.eps), float(info.max)


class RowExps(NamedTuple):
    """What a row pass leaves for
    [`lse_cols_from_rows`][otcl.ops.base.ArrayOps.lse_cols_from_rows] beside the exponentials
    ``E_ij = exp(Λ_ij + γ_j + h_i)`` in its scratch: their shifts ``γ`` ``(B, m)`` and ``h``
    ``(B, n)`` (or ``(B, 1)``)."""

    col_shift: Array
    row_shift: Array


class BufferedLogSumExp:
    """``LSE`` over rows or columns of ``base + shift`` (a mixin for
    [`BufferedOps`][otcl.ops.buffered.BufferedOps]; see
    [`ArrayOps.logsumexp_shifted`][otcl.ops.base.ArrayOps.logsumexp_shifted]).

    The library-specific primitives are ``_max`` and ``_sum`` here and the elementwise
    ``_exp``, ``_exp2`` and ``_raise`` of [`BufferedOps`][otcl.ops.buffered.BufferedOps]; the rest
    is written once.
    """

    xp: Any
    lib: Any
    _exp: Any
    _exp2: Any
    _raise: Any

    def _max(self, x: Array, axis: int) -> Array:
        return self.lib.max(x, axis=axis)

    def _sum(self, x: Array, axis: int) -> Array:
        return self.lib.sum(x, axis=axis)

    def _finite_or_zero(self, x: Array) -> Array:
        return self.lib.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)

    def _min(self, x: Array, axis: int | None = None) -> Array:
        return self.lib.min(x, axis=axis)

    def _min_max(self, x: Array, axis: int | None = None) -> tuple[Array, Array]:
        """Minimum and maximum over ``axis`` (all of ``x`` for ``None``); NaN if any is."""
        return self.lib.min(x, axis=axis), self.lib.max(x, axis=axis)

    def _out_of_range(self, sums: Array, low: float, high: float) -> tuple[Array | None, int]:
        """The slices whose sum is not in ``[low, high]`` (NaN included) and their number:
        one reduction and one host synchronisation when all are in range."""
        smallest, largest = self._min_max(sums)
        if float(smallest) >= low and float(largest) <= high:  # False for NaN
            return None, 0
        bad = ~((sums >= low) & (sums <= high))
        return bad, int(bad.sum())

    # -- the public operations

    def logsumexp_shifted(self, base: Array, shift: Array, axis: int,
                          work: Array | None = None, hint: Array | None = None,
                          base2: Base2 | None = None) -> Array:
        if work is None:
            work = self.buffer(tuple(base.shape), base)  # type: ignore[attr-defined]
        if hint is not None:
            hinted = self._lse_hinted(base, shift, axis, work, hint, base2=base2)
            if hinted is not None:
                return hinted[0]
        return self._lse_max_shifted(base, shift, axis, work, base2)

    def lse_rows_keep(self, base: Array, shift: Array, work: Array,
                      hint: Array | None,
                      base2: Base2 | None = None) -> tuple[Array, RowExps | None]:
        if hint is not None:
            hinted = self._lse_hinted(base, shift, 2, work, hint, keep=True, base2=base2)
            if hinted is not None:
                out, row_shift = hinted
                return out, (None if row_shift is None else RowExps(shift, row_shift))
        return self._lse_max_shifted(base, shift, 2, work, base2), None

    def lse_cols_from_rows(self, base: Array, shift: Array, rows: RowExps | None,
                           work: Array, hint: Array | None = None,
                           base2: Base2 | None = None) -> Array:
        if rows is None:
            return self.logsumexp_shifted(base, shift, 1, work, hint, base2)
        lib = self.lib
        with np.errstate(all="ignore"):
            # weights exp(shift_i - h_i - M) <= 1 with M the per-problem maximum of the exponent
            log_w = lib.subtract(shift, rows.row_shift)
            top = self._finite_or_zero(self._max(log_w, 1))  # (B,)
            weights = lib.exp(lib.subtract(log_w, top[:, None], out=log_w), out=log_w)
            sums = self.rmatvec(work, weights,  # type: ignore[attr-defined]
                                out=self.buffer(tuple(rows.col_shift.shape), base))  # type: ignore[attr-defined]
            tiny, eps, high = _dtype_info(str(base.dtype))
            bad, n_bad = self._out_of_range(sums, base.shape[1] * tiny / (1e-3 * eps), high)
            if _REDO_FRACTION * n_bad > int(sums.shape[0]) * int(sums.shape[1]):
                return self._lse_max_shifted(base, shift, 1, work, base2)
            if n_bad:
                sums[bad] = 1.0
            out = lib.log(sums, out=sums)
            out += top[:, None]
            out -= rows.col_shift
        if n_bad:
            self._redo(out, bad, base, shift, 1, base2 is not None)
        return out

    # -- the exponential of a block, in the base's units

    def _exp_units(self, w: Array, units2: bool, low: Any = None) -> Array:
        """The exponentials of ``w`` in place: ``exp(w)``, or with ``units2`` ``2^w``. ``low``
        ``(B,)`` is a lower bound of each problem's entries of ``w``, or ``None`` where no entry
        may be raised: where ``exp2`` has a slow path below
        [`exp2_floor`][otcl.ops.base.ArrayOps.exp2_floor] and ``low`` does not rule such entries
        out, every entry below the floor is raised to it. Their powers were below the smallest
        normal number ``tiny``, so a sum changes by at most ``count * tiny``, which the range
        checks of every way already allow for."""
        if not units2:
            return self._exp(w, out=w)
        floor = self.exp2_floor  # type: ignore[attr-defined]
        if floor is not None and low is not None and not float(self._min(low)) >= floor:
            self._raise(w, floor)
        return self._exp2(w, out=w)

    # -- the three ways

    def _lse_hinted(self, base: Array, shift: Array, axis: int, work: Array, hint: Array,
                    keep: bool = False,
                    base2: Base2 | None = None) -> tuple[Array, Array | None] | None:
        """The hinted log-sum-exp and the row shift its exponentials used, ``None`` when too
        many slices need their maximum. With ``keep`` (rows only) every block is written in its
        place in ``work``, and the shift is returned when no row needed its maximum (so that
        ``work`` holds every row's exponentials); otherwise it is ``None``. With ``base2`` the
        vectors are scaled to ``base``'s base-2 units before they are added to it."""
        lib = self.lib
        units2 = base2 is not None
        tiny, _, high = _dtype_info(str(base.dtype))
        with np.errstate(all="ignore"):  # overflowing or NaN slices are found and redone
            # a hint that varies by less than half the dtype's exponent range over the slices
            # of a problem is replaced by its midpoint: folded into the shift, it saves a pass
            limit = 0.5 * -math.log(tiny)
            bottom, top = self._min_max(hint, 1)  # (B,)
            folded = float(self._max(top - bottom, 0)) <= limit  # False for inf, NaN
            h = hint
            if not folded:
                h = self._finite_or_zero(hint)
                bottom, top = self._min_max(h, 1)
                folded = float(self._max(top - bottom, 0)) <= limit
            terms = shift
            if folded:
                mid = 0.5 * (top + bottom)  # (B,)
                terms = shift + mid[:, None]
                h = mid[:, None]
            h_units = h
            low = None
            if base2 is not None:
                terms = terms * LOG2E
                h_units = h * LOG2E
                if base2.low is not None and self.exp2_floor is not None:  # type: ignore[attr-defined]
                    low = base2.low + self._min(terms, 1)
                    if not folded:
                        low = low + self._min(h_units, 1)
            shape = (base.shape[0], base.shape[axis - 1 if axis == 2 else 2])
            sums = self.buffer(shape, base)  # type: ignore[attr-defined]
            if axis == 1:
                self.zero(sums)  # type: ignore[attr-defined]
            for probs, r in blocking.pieces(base):
                x = base[probs, r]
                # kept: every block in its place; otherwise the blocks share the first one's
                w = work[probs, r] if keep else work[probs, : x.shape[1]]
                part_low = None if low is None else low[probs]
                if axis == 2:
                    self._add_cols(x, terms[probs], out=w)  # type: ignore[attr-defined]
                    if not folded:
                        lib.add(w, h_units[probs, r][:, :, None], out=w)
                    self._exp_units(w, units2, part_low)
                    sums[probs, r] = self._sum(w, 2)
                else:
                    lib.add(x, terms[probs, r][:, :, None], out=w)
                    if not folded:
                        self._add_cols(w, h_units[probs], out=w)  # type: ignore[attr-defined]
                    self._exp_units(w, units2, part_low)
                    sums[probs] += self._sum(w, 1)
            bad, n_bad = self._out_of_range(sums, math.sqrt(tiny), high)
            if _REDO_FRACTION * n_bad > int(sums.shape[0]) * int(sums.shape[1]):
                return None
            if n_bad:
                sums[bad] = 1.0
            out = lib.log(sums, out=sums)
            out -= h
        if n_bad:
            self._redo(out, bad, base, shift, axis, units2)
            return out, None
        return out, (h if keep else None)

    def _redo(self, out: Array, bad: Array, base: Array, shift: Array, axis: int,
              units2: bool = False) -> None:
        """``out`` on the slices ``bad`` from their maximum (gathered, allocating)."""
        lib = self.lib
        probs, idx = np.nonzero(bad) if lib is np else lib.nonzero(bad, as_tuple=True)
        rows = base[probs, idx, :] if axis == 2 else base[probs, :, idx]
        if units2:
            rows = rows / LOG2E
        out[probs, idx] = logsumexp(rows + shift[probs, :], 1, self.xp)

    def _lse_max_shifted(self, base: Array, shift: Array, axis: int, work: Array,
                         base2: Base2 | None = None) -> Array:
        """Each slice's maximum subtracted first; large matrices block by block (rows), the
        columns (``axis=1``) combining the blocks' partial sums with a running maximum
        (``s <- s exp(M_old - M_new) + sum_i exp(x_ij - M_new)``). With ``base2`` the
        maxima are taken in ``base``'s base-2 units and converted back."""
        lib = self.lib
        units2 = base2 is not None
        low2 = None if base2 is None or self.exp2_floor is None else base2.low  # type: ignore[attr-defined]
        unit = LOG2E if units2 else 1.0
        if units2:
            shift = shift * LOG2E
        plan = blocking.plan(base, blocking.PASSES_MIN_BYTES)
        if plan is None:
            plan = [(slice(None), [slice(None)])]
        if axis == 2:
            out = self.buffer(tuple(base.shape[:2]), base)  # type: ignore[attr-defined]
            for probs, rows in plan:
                for r in rows:
                    x = base[probs, r]
                    w = work[probs, : x.shape[1]]
                    self._add_cols(x, shift[probs], out=w)  # type: ignore[attr-defined]
                    m = self._finite_or_zero(self._max(w, 2))
                    lib.subtract(w, m[:, :, None], out=w)
                    low = None
                    if low2 is not None:
                        low = low2[probs] + self._min(shift[probs], 1) - self._max(m, 1)
                    self._exp_units(w, units2, low)
                    out[probs, r] = safe_log(self._sum(w, 2), self.xp) + m / unit
            return out
        out = self.buffer((base.shape[0], base.shape[2]), base)  # type: ignore[attr-defined]
        for probs, rows in plan:
            total = level = top = None
            for r in rows:
                x = base[probs, r]
                w = work[probs, : x.shape[1]]
                lib.add(x, shift[probs, r][:, :, None], out=w)
                top = self._max(w, 1) if top is None else lib.maximum(self._max(w, 1), top)
                m = self._finite_or_zero(top)  # still -inf: all terms so far are 0
                lib.subtract(w, m[:, None, :], out=w)
                low = None
                if low2 is not None:
                    low = low2[probs] + self._min(shift[probs, r], 1) - self._max(m, 1)
                self._exp_units(w, units2, low)
                part = self._sum(w, 1)
                if total is None:
                    total = part
                else:
                    # level <= m wherever total > 0, so the factor is at most 1
                    factor = lib.exp((level - m) / unit)
                    total = lib.where(total > 0, total * factor, total) + part
                level = m
            out[probs] = safe_log(total, self.xp) + level / unit
        return out
