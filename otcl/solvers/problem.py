"""The canonical entropic / unbalanced OT problem: validated, batched, ready for a solver.

A [`Problem`][otcl.solvers.problem.Problem] holds, for ``B`` problems at once,

* ``log_kernel`` of shape ``(B, n, m)``: ``-C / eps`` with ``-inf`` where ``mask`` is False,
* ``log_a``, ``log_b`` of shapes ``(B, n)``, ``(B, m)``: the marginals' logarithms,
* ``t_a = rho_a / (rho_a + eps)``, ``t_b`` likewise (``1`` for a hard constraint, ``rho = inf``).

It is built once by [`make_problem`][otcl.solvers.problem.make_problem], which performs every input
check, so that solvers never compute on bad input silently.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, replace
from typing import Any

from otcl.backend import (
    Array,
    check_compatible,
    copy_array,
    device_of,
    dtype_eps,
    is_array,
    picklable_state,
    restore_state,
    safe_log,
    to_float,
)
from otcl.tracing import definitely

__all__ = ["Problem", "make_problem", "validate_positive"]


@dataclass(eq=False)
class Problem:
    """A validated batch of OT problems (all arrays batch-first)."""

    xp: Any
    cost: Array  # (B, n, m), finite
    mask: Array | None  # (B, n, m) bool, True = allowed entry; None = all allowed
    a: Array  # (B, n), >= 0
    b: Array  # (B, m), >= 0
    eps: float | Array  # python float, or a 0-d array (differentiable temperature)
    rho_a: float
    rho_b: float
    batched: bool
    owned: frozenset[str] = frozenset()  # fields that hold a copy otcl made (not the caller's)
    # per-problem (min C, max C), each (B,), from validation; None with a mask (whose bounds are
    # over the allowed entries only) or when not computed
    cost_bounds: tuple[Array, Array] | None = None

    def snapshot(self) -> Problem:
        """This problem with every array that may be the caller's memory (``cost``, ``mask``,
        ``a``, ``b``, an array ``eps``) replaced by a copy, so that later writes to the caller's
        arrays cannot change a result built on it. Arrays otcl created (uniform marginals) are
        shared. One pass over ``cost`` (and ``mask``); PyTorch copies stay differentiable."""
        xp = self.xp
        fields = {}
        for name in ("cost", "mask", "a", "b", "eps"):
            x = getattr(self, name)
            if name not in self.owned and is_array(x):
                fields[name] = copy_array(x, xp)
        if not fields:
            return self
        return replace(self, **fields, owned=self.owned | frozenset(fields))

    def __getstate__(self) -> dict[str, Any]:
        return picklable_state(self)

    def __setstate__(self, state: dict[str, Any]) -> None:
        restore_state(self, state)

    @property
    def t_a(self) -> float:
        """Exponent of the row update, ``rho_a / (rho_a + eps)`` (1 for a hard constraint)."""
        return _exponent(self.rho_a, self.eps)

    @property
    def t_b(self) -> float:
        """Exponent of the column update, ``rho_b / (rho_b + eps)``."""
        return _exponent(self.rho_b, self.eps)

    @property
    def balanced(self) -> bool:
        return math.isinf(self.rho_a) and math.isinf(self.rho_b)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.cost.shape)  # type: ignore[return-value]

    def log_kernel(self) -> Array:
        """``-C / eps`` with ``-inf`` on masked entries, shape ``(B, n, m)``."""
        xp = self.xp
        lk = -self.cost / self.eps
        if self.mask is not None:
            lk = xp.where(self.mask, lk, xp.full_like(lk, -math.inf))
        return lk

    def log_marginals(self) -> tuple[Array, Array]:
        return safe_log(self.a, self.xp), safe_log(self.b, self.xp)

    def cost_range(self) -> Array:
        """Per-problem ``max C - min C`` over allowed entries, shape ``(B,)``."""
        xp = self.xp
        c = self.cost
        if self.mask is None:
            hi = xp.max(c, axis=(1, 2))
            lo = xp.min(c, axis=(1, 2))
        else:
            hi = xp.max(xp.where(self.mask, c, xp.full_like(c, -math.inf)), axis=(1, 2))
            lo = xp.min(xp.where(self.mask, c, xp.full_like(c, math.inf)), axis=(1, 2))
        return hi - lo


def _exponent(rho: float, eps: float | Array) -> Any:
    if math.isinf(rho):
        return 1.0
    return rho / (rho + eps)


def validate_positive(name: str, value: Any, *, allow_inf: bool = False) -> float:
    """A positive real number (``inf`` allowed when ``allow_inf``); returns it as ``float``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if math.isnan(value) or value <= 0 or (math.isinf(value) and not allow_inf):
        bound = "in (0, inf]" if allow_inf else "positive and finite"
        raise ValueError(f"{name} must be {bound}, got {value}")
    return value


def _validate_eps(eps: Any, xp: Any, ref: Array) -> float | Array:
    # NumPy scalars (np.float32(0.1)) are numbers, not arrays to be matched against the cost
    if is_array(eps) and not isinstance(eps, numbers.Real):
        check_compatible(cost=ref, eps=eps)
        if eps.ndim != 0:
            raise ValueError(f"eps must be a scalar (0-d array), got shape {tuple(eps.shape)}")
        if definitely(~(xp.isfinite(eps) & (eps > 0))):
            raise ValueError(f"eps must be positive and finite, got {to_float(eps)}")
        return eps
    return validate_positive("eps", eps)


def _as_batch(name: str, x: Array, ndim: int, xp: Any) -> Array:
    if x.ndim == ndim:
        return x[None, ...]
    if x.ndim == ndim + 1:
        return x
    raise ValueError(
        f"{name} must have {ndim} or {ndim + 1} dimensions, got shape {tuple(x.shape)}"
    )


def _check_finite(name: str, x: Array, xp: Any) -> None:
    # max and min propagate NaN (array API): both finite <=> every entry finite; two reductions
    # instead of an n x m boolean temporary (x is never empty here)
    if definitely(~(xp.isfinite(xp.max(x)) & xp.isfinite(xp.min(x)))):
        raise ValueError(f"{name} contains NaN or inf")


def _finite_bounds(name: str, x: Array, xp: Any) -> tuple[Array, Array]:
    """Per-problem ``(min, max)`` of ``x`` ``(B, n, m)``, each ``(B,)``, after checking that
    every entry is finite (as [`_check_finite`][otcl.solvers.problem._check_finite]: the same
    two passes, kept for the solvers' range checks)."""
    lo, hi = xp.min(x, axis=(1, 2)), xp.max(x, axis=(1, 2))
    if definitely(~xp.all(xp.isfinite(lo) & xp.isfinite(hi))):
        raise ValueError(f"{name} contains NaN or inf")
    return lo, hi


def _marginal(name: str, x: Array | None, B: int, size: int, ref: Array, xp: Any) -> Array:
    if x is None:
        return xp.full((B, size), 1.0 / size, dtype=ref.dtype, device=device_of(ref))
    check_compatible(cost=ref, **{name: x})
    x = _as_batch(name, x, 1, xp)
    if x.shape[-1] != size:
        raise ValueError(f"{name} has length {x.shape[-1]} but the cost has {size} on that side")
    if x.shape[0] not in (1, B):
        raise ValueError(f"{name} has batch size {x.shape[0]} but the cost has {B}")
    _check_finite(name, x, xp)
    if definitely(xp.any(x < 0)):
        raise ValueError(f"{name} has negative entries")
    if definitely(xp.any(xp.sum(x, axis=-1) <= 0)):
        raise ValueError(f"{name} has zero total mass")
    return xp.broadcast_to(x, (B, size))


def make_problem(
    cost: Array,
    a: Array | None,
    b: Array | None,
    *,
    eps: Any,
    rho_a: Any = math.inf,
    rho_b: Any = math.inf,
    mask: Array | None = None,
    mass_rtol: float | None = None,
) -> Problem:
    """Validate inputs and build a batch-first [`Problem`][otcl.solvers.problem.Problem].

    Raises ``TypeError``/``ValueError`` naming the argument for: non-arrays, integer or complex
    dtypes, mixed libraries/dtypes/devices, NaN or inf in ``cost``/``a``/``b``, negative or
    all-zero marginals, shape mismatches, empty arrays, ``eps <= 0``, ``rho <= 0``, rows or
    columns with positive mass but no allowed entry, and balanced problems whose total masses
    differ by more than ``mass_rtol`` (default ``sqrt`` of the dtype's epsilon, relative).
    """
    xp = check_compatible(cost=cost)
    if cost.ndim not in (2, 3):
        raise ValueError(f"cost must have shape (n, m) or (B, n, m), got {tuple(cost.shape)}")
    batched = cost.ndim == 3
    cost3 = _as_batch("cost", cost, 2, xp)
    B, n, m = cost3.shape
    if n == 0 or m == 0 or B == 0:
        raise ValueError(f"cost must not be empty, got shape {tuple(cost.shape)}")
    bounds: tuple[Array, Array] | None = _finite_bounds("cost", cost3, xp)
    eps_v = _validate_eps(eps, xp, cost3)
    rho_a = validate_positive("rho_a", rho_a, allow_inf=True)
    rho_b = validate_positive("rho_b", rho_b, allow_inf=True)
    a2 = _marginal("a", a, B, n, cost3, xp)
    b2 = _marginal("b", b, B, m, cost3, xp)
    owned = frozenset(name for name, x in (("a", a), ("b", b)) if x is None)

    mask3 = None
    if mask is not None:
        check_compatible(floating=False, same_dtype=False, cost=cost3, mask=mask)
        if not is_array(mask) or mask.dtype != xp.bool:
            raise TypeError(
                f"mask must be a boolean array, got dtype {getattr(mask, 'dtype', None)}"
            )
        mask3 = _as_batch("mask", mask, 2, xp)
        if tuple(mask3.shape[1:]) != (n, m) or mask3.shape[0] not in (1, B):
            raise ValueError(
                f"mask has shape {tuple(mask.shape)}, which does not match cost {tuple(cost.shape)}"
            )
        mask3 = xp.broadcast_to(mask3, (B, n, m))
        bounds = None  # the solvers need the bounds over the allowed entries
        rows_ok = xp.any(mask3, axis=2) | (a2 == 0)
        cols_ok = xp.any(mask3, axis=1) | (b2 == 0)
        if definitely(~xp.all(rows_ok)):
            raise ValueError(
                "mask leaves a row with positive mass (in a) without any allowed entry"
            )
        if definitely(~xp.all(cols_ok)):
            raise ValueError(
                "mask leaves a column with positive mass (in b) without any allowed entry"
            )

    if math.isinf(rho_a) and math.isinf(rho_b):
        rtol = math.sqrt(dtype_eps(xp, cost3.dtype)) if mass_rtol is None else mass_rtol
        ma, mb = xp.sum(a2, axis=-1), xp.sum(b2, axis=-1)
        gap = xp.max(xp.abs(ma - mb) / xp.maximum(ma, mb))
        if definitely(gap > rtol):
            raise ValueError(
                f"a and b must have equal total mass for a balanced problem (rho_a = rho_b = inf);"
                f" their relative difference is {float(gap):.3g} > {rtol:.3g}."
                " Normalise them, or relax one side with a finite rho."
            )
    return Problem(xp, cost3, mask3, a2, b2, eps_v, rho_a, rho_b, batched, owned, bounds)
