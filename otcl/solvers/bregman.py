r"""KL (Bregman) projections onto intersections of constraint sets, by Dykstra's algorithm.

For a cost ``C`` (``n x m``) and entropic strength ``eps`` the kernel is ``K = exp(-C / eps)``.
[`bregman_projection`][otcl.bregman_projection] computes

    P* = argmin_P  KL(P || K) + sum_k F_k(P),       KL(P || Q) = sum P log(P / Q) - P + Q,

where each ``F_k`` is either the indicator of a closed convex set (``0`` on the set, ``+inf`` off
it; then ``P*`` is the KL projection of ``K`` onto the intersection of the sets) or a relaxed
marginal penalty ``(rho / eps) KL(P 1 || a)``. Since ``eps KL(P || K) = <C, P> + eps KL(P || 1) +
const``, a row and a column marginal give back entropic OT
([`otcl.sinkhorn`][otcl.solvers.sinkhorn.sinkhorn]), and relaxed marginals give unbalanced OT.

Every constraint has a closed-form KL proximal step ``prox_k(Q) = argmin_P KL(P || Q) + F_k(P)``
(see each class). Dykstra's algorithm visits the constraints cyclically and keeps, for each one,
a correction ``lambda_k`` (a log-scaling), with the invariant ``log P = log K + sum_k lambda_k``:

    log Q     = log P - lambda_k              # undo constraint k's previous contribution
    log P     = log prox_k(Q)                 # its proximal step
    lambda_k  = log P - log Q                 # its new contribution

This is exact block-coordinate ascent on the dual problem, and it converges to ``P*``
(Bregman 1967; Censor & Reich 1998; Bauschke & Lewis 2000). For an *affine* set (a hard marginal,
a total mass) the step is a scaling that does not see a scaling of its own kind, ``prox_k(Q
e^{lambda_k}) = prox_k(Q)``, so the correction can be dropped: for those sets Dykstra is plain
cyclic projection, and ``[RowMarginal(a), ColumnMarginal(b)]`` is exactly Sinkhorn. For the
other sets (bounds, relaxed marginals) the corrections are essential: without them cyclic
projections reach a point of the intersection that is not the KL projection of ``K``, and
relaxed marginals collapse to hard ones.

Everything runs in the log domain (``log P`` and log-corrections; sums by
[`otcl.backend.logsumexp`][otcl.backend.logsumexp]), so any ``eps`` is safe. Zero entries (masked,
or ``kappa = 0``) are ``-inf`` and stay so. Solvers accept ``(n, m)`` or batched ``(B, n, m)``
input.
"""

from __future__ import annotations

import dataclasses
import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, ClassVar

import numpy as np

from otcl.backend import (
    Array,
    check_compatible,
    copy_array,
    device_of,
    dtype_eps,
    is_array,
    logsumexp,
    picklable_state,
    quiet_numerics,
    restore_state,
    safe_log,
    to_numpy,
)
from otcl.solvers.problem import make_problem, validate_positive
from otcl.solvers.result import finish_diagnostics

__all__ = [
    "BregmanResult",
    "ColumnMarginal",
    "Constraint",
    "LowerBound",
    "RowMarginal",
    "TotalMass",
    "UpperBound",
    "bregman_projection",
]

_NEG_INF = -math.inf


# --------------------------------------------------------------------------------------------
# Bound (validated, batch-shaped) proximal steps, all in the log domain.


class _Step(ABC):
    """A constraint bound to a problem of shape ``(B, n, m)``.

    ``delta(log_q)`` returns the log-scaling ``log prox(Q) - log Q`` in a compact shape that
    broadcasts against ``(B, n, m)``: ``(B, n, 1)`` for row steps, ``(B, 1, m)`` for column
    steps, ``(B, 1, 1)`` for a total mass and ``(B, n, m)`` for elementwise bounds.
    """

    affine: bool

    def __init__(self, xp: Any) -> None:
        self.xp = xp

    def __getstate__(self) -> dict[str, Any]:
        return picklable_state(self)

    def __setstate__(self, state: dict[str, Any]) -> None:
        restore_state(self, state)

    @abstractmethod
    def delta(self, log_q: Array) -> Array: ...

    @abstractmethod
    def zeros(self, log_k: Array) -> Array:
        """A zero correction of the compact shape."""

    @abstractmethod
    def squeeze(self, dual: Array) -> Array:
        """Compact shape to the user-facing one: ``(B, n)``, ``(B, m)``, ``(B,)``, ``(B, n, m)``."""


class _MarginalStep(_Step):
    """``delta_i = t (log a_i - LSE_j log Q_ij)`` along ``axis`` (2: rows, 1: columns)."""

    def __init__(self, xp: Any, log_m: Array, t: Any, axis: int) -> None:
        super().__init__(xp)
        self.log_m, self.t, self.axis = log_m, t, axis
        self.affine = isinstance(t, float) and t == 1.0

    def delta(self, log_q: Array) -> Array:
        xp = self.xp
        lse = logsumexp(log_q, self.axis, xp)
        raw = self.log_m - xp.where(lse > _NEG_INF, lse, xp.zeros_like(lse))
        out = raw if self.affine else self.t * raw
        # a zero-mass target (log a_i = -inf) zeroes the row, whatever its current mass
        out = xp.where(self.log_m > _NEG_INF, out, xp.full_like(out, _NEG_INF))
        return xp.expand_dims(out, axis=self.axis)

    def zeros(self, log_k: Array) -> Array:
        return self.xp.zeros_like(self.xp.expand_dims(self.log_m, axis=self.axis))

    def squeeze(self, dual: Array) -> Array:
        return self.xp.squeeze(dual, axis=self.axis)


class _TotalStep(_Step):
    """``delta = log mass - LSE_ij log Q_ij``."""

    affine = True

    def __init__(self, xp: Any, log_mass: float) -> None:
        super().__init__(xp)
        self.log_mass = log_mass

    def delta(self, log_q: Array) -> Array:
        xp = self.xp
        lse = logsumexp(logsumexp(log_q, 2, xp, keepdims=True), 1, xp, keepdims=True)
        return self.log_mass - xp.where(lse > _NEG_INF, lse, xp.zeros_like(lse))

    def zeros(self, log_k: Array) -> Array:
        return self.xp.zeros_like(log_k[:, :1, :1])

    def squeeze(self, dual: Array) -> Array:
        return dual[:, 0, 0]


class _BoundStep(_Step):
    """Elementwise ``log P = min(log Q, log kappa)`` (upper) or ``max(log Q, log ell)`` (lower)."""

    affine = False

    def __init__(self, xp: Any, log_bound: Array | float, upper: bool) -> None:
        super().__init__(xp)
        self.log_bound, self.upper = log_bound, upper

    def delta(self, log_q: Array) -> Array:
        xp = self.xp
        if self.upper:
            active = log_q > self.log_bound
        else:
            active = (log_q < self.log_bound) & (log_q > _NEG_INF)
        return xp.where(active, self.log_bound - log_q, xp.zeros_like(log_q))

    def zeros(self, log_k: Array) -> Array:
        return self.xp.zeros_like(log_k)

    def squeeze(self, dual: Array) -> Array:
        return dual


# --------------------------------------------------------------------------------------------
# Public constraint sets.


class Constraint(ABC):
    """A convex constraint (or relaxed penalty) on the plan, with its KL prox in closed form.

    Subclasses are small frozen dataclasses.
    [`log_project`][otcl.solvers.bregman.Constraint.log_project] applies the KL proximal step
    ``argmin_P KL(P || Q) + F(P)`` to ``log Q``; [`bregman_projection`][otcl.bregman_projection]
    combines several.
    """

    #: Whether ``F`` is the indicator of an affine set (its Dykstra correction can be dropped).
    affine: ClassVar[bool] = False

    @abstractmethod
    def _bind(self, ref: Array, eps: float | Array, xp: Any) -> _Step:
        """Validate the parameters against ``ref`` (``(B, n, m)``) and return the bound step."""

    def log_project(self, log_q: Array, *, eps: float | Array | None = None) -> Array:
        """``log`` of the KL projection (proximal step) of ``Q = exp(log_q)``.

        ``log_q`` has shape ``(n, m)`` or ``(B, n, m)`` (``-inf`` = zero entry; no NaN or
        ``+inf``). ``eps`` is needed only by relaxed marginals (finite ``rho``). Returns an
        array of the same shape; ``log_q`` is not modified.
        """
        xp = check_compatible(log_q=log_q)
        if log_q.ndim not in (2, 3):
            raise ValueError(f"log_q must have shape (n, m) or (B, n, m), got {tuple(log_q.shape)}")
        if bool(xp.any(xp.isnan(log_q))) or bool(xp.any(log_q == math.inf)):
            raise ValueError("log_q contains NaN or +inf")
        ref = log_q if log_q.ndim == 3 else log_q[None, ...]
        if eps is None:
            if self._needs_eps():
                raise ValueError(f"eps is required by {type(self).__name__} with a finite rho")
            eps = 1.0  # not used by this constraint
        elif not is_array(eps):
            eps = validate_positive("eps", eps)
        step = self._bind(ref, eps, xp)
        with quiet_numerics(xp):
            out = ref + step.delta(ref)
        return out if log_q.ndim == 3 else out[0, ...]

    def _needs_eps(self) -> bool:
        return False


def _check_rho(rho: Any) -> float:
    return validate_positive("rho", rho, allow_inf=True)


@dataclass(frozen=True, eq=False)
class RowMarginal(Constraint):
    r"""Row marginal ``P 1 = a`` (``rho = inf``), or its KL relaxation (finite ``rho``).

    Parameters
    ----------
    a:
        Row marginal of shape ``(n,)`` or ``(B, n)``, non-negative; ``None`` = uniform ``1/n``.
    rho:
        ``inf`` (default): the affine set ``{P >= 0 : P 1 = a}``, whose KL projection is the row
        scaling ``Proj(Q) = diag(a / (Q 1)) Q``, i.e. ``log P_ij = log Q_ij + log a_i - LSE_j
        log Q_ij``. Finite ``rho``: the penalty ``F(P) = (rho / eps) KL(P 1 || a)`` (``rho``
        times ``KL(P 1 || a)`` in units of the entropic objective ``<C, P> + eps KL(P || 1)``).
        Its KL prox ``argmin_P KL(P || Q) + (rho / eps) KL(P 1 || a)`` is again a row scaling
        ``P = diag(s) Q``: the optimality condition ``log s_i + (rho / eps) log(s_i (Q 1)_i /
        a_i) = 0`` gives ``s = (a / (Q 1))^t`` with ``t = rho / (rho + eps)``, the unbalanced
        Sinkhorn step (``t -> 1`` as ``rho -> inf``).
    """

    a: Array | None = None
    rho: float = math.inf

    def __post_init__(self) -> None:
        object.__setattr__(self, "rho", _check_rho(self.rho))

    @property
    def affine(self) -> bool:  # type: ignore[override]
        return math.isinf(self.rho)

    def _needs_eps(self) -> bool:
        return not math.isinf(self.rho)

    def _bind(self, ref: Array, eps: float | Array, xp: Any) -> _Step:
        B, n, _ = ref.shape
        a = _vector("a", self.a, B, n, ref, xp)
        return _MarginalStep(xp, safe_log(a, xp), _exponent(self.rho, eps), axis=2)


@dataclass(frozen=True, eq=False)
class ColumnMarginal(Constraint):
    r"""Column marginal ``P^T 1 = b`` (``rho = inf``), or its KL relaxation (finite ``rho``).

    The column counterpart of [`RowMarginal`][otcl.RowMarginal]: ``Proj(Q) = Q diag(b / (Q^T 1))``,
    and for finite ``rho`` the prox of ``(rho / eps) KL(P^T 1 || b)`` is ``Q diag((b / (Q^T
    1))^t)``, ``t = rho / (rho + eps)``. ``b`` has shape ``(m,)`` or ``(B, m)``; ``None`` = uniform.
    """

    b: Array | None = None
    rho: float = math.inf

    def __post_init__(self) -> None:
        object.__setattr__(self, "rho", _check_rho(self.rho))

    @property
    def affine(self) -> bool:  # type: ignore[override]
        return math.isinf(self.rho)

    def _needs_eps(self) -> bool:
        return not math.isinf(self.rho)

    def _bind(self, ref: Array, eps: float | Array, xp: Any) -> _Step:
        B, _, m = ref.shape
        b = _vector("b", self.b, B, m, ref, xp)
        return _MarginalStep(xp, safe_log(b, xp), _exponent(self.rho, eps), axis=1)


@dataclass(frozen=True, eq=False)
class TotalMass(Constraint):
    r"""Total mass ``sum_ij P_ij = mass`` (affine).

    KL projection: the global scaling ``Proj(Q) = (mass / sum Q) Q``, i.e. ``log P = log Q +
    log mass - LSE_ij log Q_ij``.
    """

    mass: float = 1.0
    affine: ClassVar[bool] = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "mass", validate_positive("mass", self.mass))

    def _bind(self, ref: Array, eps: float | Array, xp: Any) -> _Step:
        return _TotalStep(xp, math.log(self.mass))


@dataclass(frozen=True, eq=False)
class UpperBound(Constraint):
    r"""Capacity constraint ``P_ij <= kappa_ij`` (elementwise; convex, not affine).

    The KL projection is separable: ``argmin_{p <= k} p log(p / q) - p + q = min(q, k)``, so
    ``log P = min(log Q, log kappa)``. Its Dykstra correction ``log P - log Q = -mu <= 0`` is the
    (scaled) multiplier of the bound; at the solution ``log P_ij = -C_ij / eps + phi_i +
    gamma_j - mu_ij`` with ``mu >= 0`` and ``mu_ij = 0`` wherever ``P_ij < kappa_ij``.

    ``kappa``: a positive number, or a non-negative array of shape ``(n, m)`` or ``(B, n, m)``
    (``0`` forbids an entry, like a mask; ``inf`` leaves it free).
    """

    kappa: float | Array
    affine: ClassVar[bool] = False

    def __post_init__(self) -> None:
        if not is_array(self.kappa):
            object.__setattr__(self, "kappa", validate_positive("kappa", self.kappa))

    def _bind(self, ref: Array, eps: float | Array, xp: Any) -> _Step:
        return _BoundStep(xp, _log_bound("kappa", self.kappa, ref, xp), upper=True)


@dataclass(frozen=True, eq=False)
class LowerBound(Constraint):
    r"""Floor constraint ``P_ij >= ell_ij`` (elementwise; convex, not affine).

    KL projection: ``log P = max(log Q, log ell)`` on entries that are not forced to zero. Its
    Dykstra correction ``log P - log Q >= 0`` is the multiplier of the floor. ``ell``: a
    non-negative finite number, or a non-negative finite array of shape ``(n, m)`` or
    ``(B, n, m)``; it must be zero on masked entries.
    """

    ell: float | Array
    affine: ClassVar[bool] = False

    def __post_init__(self) -> None:
        if not is_array(self.ell):
            value = self.ell
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(
                    f"ell must be a non-negative number or an array, got {type(value).__name__}"
                )
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"ell must be non-negative and finite, got {value}")
            object.__setattr__(self, "ell", float(value))

    def _bind(self, ref: Array, eps: float | Array, xp: Any) -> _Step:
        return _BoundStep(xp, _log_bound("ell", self.ell, ref, xp, finite=True), upper=False)


def _exponent(rho: float, eps: float | Array) -> Any:
    if math.isinf(rho):
        return 1.0
    return rho / (rho + eps)


def _vector(name: str, x: Array | None, B: int, size: int, ref: Array, xp: Any) -> Array:
    """A validated marginal of shape ``(B, size)`` (``None`` = uniform)."""
    if x is None:
        return xp.full((B, size), 1.0 / size, dtype=ref.dtype, device=device_of(ref))
    check_compatible(cost=ref, **{name: x})
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2 or x.shape[-1] != size or x.shape[0] not in (1, B):
        raise ValueError(
            f"{name} has shape {tuple(x.shape)} but the cost needs ({size},) or ({B}, {size})"
        )
    if not bool(xp.all(xp.isfinite(x))):
        raise ValueError(f"{name} contains NaN or inf")
    if bool(xp.any(x < 0)):
        raise ValueError(f"{name} has negative entries")
    if bool(xp.any(xp.sum(x, axis=-1) <= 0)):
        raise ValueError(f"{name} has zero total mass")
    return xp.broadcast_to(x, (B, size))


def _log_bound(name: str, x: Any, ref: Array, xp: Any, *, finite: bool = False) -> Array | float:
    """``log`` of a validated bound: a float for a scalar, else an array of shape ``(B, n, m)``."""
    if not is_array(x):
        return math.log(x) if x > 0 else _NEG_INF
    check_compatible(cost=ref, **{name: x})
    B, n, m = ref.shape
    x3 = x[None, ...] if x.ndim == 2 else x
    if x3.ndim != 3 or tuple(x3.shape[1:]) != (n, m) or x3.shape[0] not in (1, B):
        raise ValueError(
            f"{name} must be a number or have shape ({n}, {m}) or ({B}, {n}, {m}),"
            f" got {tuple(x.shape)}"
        )
    if bool(xp.any(xp.isnan(x3))):
        raise ValueError(f"{name} contains NaN")
    if finite and not bool(xp.all(xp.isfinite(x3))):
        raise ValueError(f"{name} contains inf")
    if bool(xp.any(x3 < 0)):
        raise ValueError(f"{name} has negative entries")
    return xp.broadcast_to(safe_log(x3, xp), (B, n, m))


# --------------------------------------------------------------------------------------------
# The result.


@dataclass(eq=False)
class BregmanResult:
    r"""Result of [`bregman_projection`][otcl.bregman_projection].

    Shapes follow the input: ``(n, m)`` for one problem, ``(B, n, m)`` for a batch (per-problem
    scalars become arrays of shape ``(B,)``).

    Attributes
    ----------
    log_plan:
        ``log P`` (``-inf`` on zero entries).
    duals:
        One array per constraint (same order), such that ``log P = -C / eps + sum_k duals[k]`` with
        broadcasting: ``(n,)`` for a row constraint (``= f / eps`` in the potential convention of
        [`otcl.sinkhorn`][otcl.solvers.sinkhorn.sinkhorn]), ``(m,)`` for a column constraint, ``()``
        for a total mass, ``(n, m)`` for a bound (``<= 0`` for [`UpperBound`][otcl.UpperBound], ``>=
        0`` for [`LowerBound`][otcl.LowerBound]; zero where the bound is inactive).
    n_iter:
        Cycles (one proximal step per constraint) until the problem first met ``tol``.
    error:
        Largest per-constraint residual (see
        [`violations`][otcl.solvers.bregman.BregmanResult.violations]) at the check where the
        problem met ``tol``, or at the end. ``None`` when ``tol`` is ``None``.
    converged:
        ``error <= tol``; ``None`` when ``tol`` is ``None``.
    constraints:
        The constraints, with copies of their array parameters.

    A result is a snapshot: ``log_plan``, ``duals`` and the state behind the lazy fields
    (``plan``, masses, ``violations``) are arrays the solve computed (the log-domain iteration
    builds ``-C / eps`` and the marginals' logarithms afresh), never the caller's ``cost`` or
    marginals, and the constraints' arrays and an array ``eps`` are copied; later writes to the
    inputs change nothing here. A result pickles when its arrays do.
    """

    log_plan: Array
    duals: tuple[Array, ...]
    constraints: tuple[Constraint, ...]
    n_iter: Any
    error: Any
    converged: Any
    eps: float | Array
    _state: Any = field(repr=False)

    @cached_property
    def plan(self) -> Array:
        """The plan ``P = exp(log_plan)``."""
        return self._state.xp.exp(self.log_plan)

    @cached_property
    def row_mass(self) -> Array:
        """``P 1``, shape ``(n,)`` / ``(B, n)``."""
        return self._state.xp.exp(logsumexp(self.log_plan, -1, self._state.xp))

    @cached_property
    def col_mass(self) -> Array:
        """``P^T 1``, shape ``(m,)`` / ``(B, m)``."""
        return self._state.xp.exp(logsumexp(self.log_plan, -2, self._state.xp))

    @cached_property
    def violations(self) -> tuple[Any, ...]:
        r"""Per constraint, the residual of its proximal step at the returned plan.

        The largest change ``max |log P_new - log P|`` over non-zero entries that constraint's
        Dykstra step would make now, per problem. It is zero exactly when the constraint is
        satisfied at the optimum:

        * hard marginal: ``max_i |log (P 1)_i - log a_i|`` (a relative marginal error; zero iff
          ``P 1 = a``); total mass likewise;
        * relaxed marginal: the change of its log-scaling, ``max_i |t (log a_i - log (Q 1)_i) -
          lambda_i|`` (zero iff ``P 1 = a^t (Q 1)^(1 - t)``, the marginal optimality condition;
          the marginal itself does not match ``a``);
        * bound: the relative excess ``max (log P - log kappa)_+`` where the bound is inactive and
          ``|log P - log kappa|`` where its multiplier is non-zero (feasibility plus
          complementary slackness).
        """
        st = self._state
        with quiet_numerics(st.xp):
            res = _residuals(st.steps, st.log_p, st.duals, st.xp)
        per = tuple(res[k] for k in range(res.shape[0]))
        return per if st.batched else tuple(float(r[0]) for r in per)


@dataclass(eq=False)
class _State:
    xp: Any
    steps: list[_Step]
    log_p: Array
    duals: list[Array]
    batched: bool

    def __getstate__(self) -> dict[str, Any]:
        return picklable_state(self)

    def __setstate__(self, state: dict[str, Any]) -> None:
        restore_state(self, state)


# --------------------------------------------------------------------------------------------
# The solver.


def bregman_projection(
    cost: Array,
    constraints: Sequence[Constraint],
    *,
    eps: float | Array,
    mask: Array | None = None,
    max_iter: int = 1000,
    tol: float | None = 1e-9,
    check_every: int = 10,
    warn: bool = True,
) -> BregmanResult:
    r"""KL projection of ``K = exp(-C / eps)`` onto an intersection of constraint sets.

    Computes ``argmin_P KL(P || K) + sum_k F_k(P)`` (module docstring) by cyclic KL proximal
    steps with Dykstra's corrections, in the log domain.

    Parameters
    ----------
    cost:
        ``C`` of shape ``(n, m)`` or ``(B, n, m)``, finite, real floating.
    constraints:
        Non-empty sequence of [`Constraint`][otcl.solvers.bregman.Constraint]
        ([`RowMarginal`][otcl.RowMarginal], [`ColumnMarginal`][otcl.ColumnMarginal],
        [`TotalMass`][otcl.TotalMass], [`UpperBound`][otcl.UpperBound],
        [`LowerBound`][otcl.LowerBound]), visited in this order in every cycle; at most one of each
        marginal kind and one [`TotalMass`][otcl.TotalMass]. ``[RowMarginal(a), ColumnMarginal(b)]``
        is Sinkhorn.
    eps:
        Entropic strength ``> 0`` (float or 0-d array).
    mask:
        Optional boolean array of shape ``(n, m)`` (one mask for every problem of a batch) or
        ``(B, n, m)``; ``False`` entries are zero
        (``C = +inf``). A row (column) that the mask excludes entirely must have zero mass in
        the row (column) marginal (uniform when there is none).
    max_iter:
        Maximum number of cycles.
    tol:
        Stop when every constraint's residual
        ([`BregmanResult.violations`][otcl.solvers.bregman.BregmanResult.violations], in log units,
        i.e. relative) is ``<= tol`` for every problem. ``None``: run exactly ``max_iter`` cycles
        without checks.
    check_every:
        Cycles between checks (each check costs about one cycle and one host synchronisation).
    warn:
        Emit a [`ConvergenceWarning`][otcl.ConvergenceWarning] when a problem does not converge.

    Returns
    -------
    BregmanResult

    Raises
    ------
    TypeError, ValueError
        Bad input, naming the argument (as [`otcl.sinkhorn`][otcl.solvers.sinkhorn.sinkhorn]; for
        constraint parameters ``a``, ``b``, ``rho``, ``kappa``, ``ell``, ``mass``), and constraints
        that are infeasible together: hard marginals of different masses, an upper bound too small
        to carry a row, a column or the total mass (for a scalar ``kappa`` with two hard marginals
        and no mask, the exact transport-with-capacities condition ``sum of the k largest a_i <= sum
        of the l smallest b_j + kappa k (m - l)`` for all ``k, l``), a lower bound above an upper
        bound or above a marginal. With array bounds the check is necessary only; an undetected
        infeasible problem does not converge and says so.
    """
    steps_in = _check_constraints(constraints)
    row = next((c for c in steps_in if isinstance(c, RowMarginal)), None)
    col = next((c for c in steps_in if isinstance(c, ColumnMarginal)), None)
    both_hard = row is not None and col is not None and row.affine and col.affine
    problem = make_problem(
        cost,
        None if row is None else row.a,
        None if col is None else col.b,
        eps=eps,
        mask=mask,
        mass_rtol=None if both_hard else math.inf,
    )
    max_iter, tol, check_every = _validate_loop(max_iter, tol, check_every)
    xp = problem.xp
    log_k = problem.log_kernel()
    steps = [c._bind(log_k, problem.eps, xp) for c in steps_in]
    log_k = _fold_zero_capacity(log_k, steps, xp)
    _check_feasible(steps_in, steps, log_k, problem.mask is not None, xp)

    with quiet_numerics(xp):
        state, n_iter, error = _run(log_k, steps, max_iter, tol, check_every, xp)
    state.batched = problem.batched
    trouble = None
    if bool(xp.any(xp.isnan(state.log_p))) or bool(xp.any(state.log_p == math.inf)):
        trouble = "The Bregman–Dykstra iteration produced NaN or +inf."
        error = np.full(log_k.shape[0], math.inf) if tol is not None else None
        tol = 0.0 if tol is None else tol
    n_it, err, conv = finish_diagnostics(
        n_iter, error, tol, problem.batched, warn=warn, domain="log", trouble=trouble
    )
    log_plan = state.log_p if problem.batched else state.log_p[0, ...]
    duals = tuple(
        s.squeeze(d) if problem.batched else s.squeeze(d)[0, ...]
        for s, d in zip(steps, state.duals, strict=True)
    )
    # a snapshot: the derived fields are computed from arrays of the solve (never the
    # caller's); the constraints and an array eps are copied
    return BregmanResult(
        log_plan=log_plan,
        duals=duals,
        constraints=tuple(_copied(c, xp) for c in steps_in),
        n_iter=n_it,
        error=err,
        converged=conv,
        eps=copy_array(problem.eps, xp) if is_array(problem.eps) else problem.eps,
        _state=state,
    )


def _copied(constraint: Constraint, xp: Any) -> Constraint:
    """``constraint`` with each array parameter replaced by a copy."""
    arrays = {f.name: copy_array(getattr(constraint, f.name), xp)
              for f in dataclasses.fields(constraint) if is_array(getattr(constraint, f.name))}
    return dataclasses.replace(constraint, **arrays) if arrays else constraint


def _run(
    log_k: Array, steps: list[_Step], max_iter: int, tol: float | None, check_every: int, xp: Any
) -> tuple[_State, np.ndarray, np.ndarray | None]:
    B = log_k.shape[0]
    log_p = log_k
    duals = [s.zeros(log_k) for s in steps]
    n_iter = np.full(B, max_iter, dtype=np.int64)
    done = np.zeros(B, dtype=bool)
    error: np.ndarray | None = None

    def check(it: int) -> bool:
        nonlocal error, done
        err = np.max(_residuals(steps, log_p, duals, xp), axis=0)
        err = np.where(np.isnan(err), math.inf, err)
        error = err if error is None else np.where(done, error, err)
        newly = (err <= tol) & ~done
        n_iter[newly] = it
        done = done | newly
        return bool(done.all())

    if tol is not None and max_iter == 0 and check(0):
        return _State(xp, steps, log_p, duals, True), n_iter, error
    for it in range(1, max_iter + 1):
        for k, step in enumerate(steps):
            log_p, duals[k] = _dykstra_step(step, log_p, duals[k], xp)
        if it % check_every == 0 or it == max_iter:
            log_p = _resync(log_k, log_p, duals, xp)
            if tol is not None and check(it):
                break
    return _State(xp, steps, log_p, duals, True), n_iter, error


def _dykstra_step(step: _Step, log_p: Array, dual: Array, xp: Any) -> tuple[Array, Array]:
    """One proximal step with its correction: returns the new ``log P`` and correction."""
    if step.affine:
        d = step.delta(log_p)
        return log_p + d, dual + d
    log_q = log_p - _finite(dual, xp)
    d = step.delta(log_q)
    return log_q + d, d


def _resync(log_k: Array, log_p: Array, duals: list[Array], xp: Any) -> Array:
    """Recompute ``log P = log K + sum_k lambda_k`` on non-zero entries (removes rounding drift)."""
    total = log_k
    for d in duals:
        total = total + _finite(d, xp)
    return xp.where(log_p > _NEG_INF, total, xp.full_like(log_p, _NEG_INF))


def _residuals(steps: list[_Step], log_p: Array, duals: list[Array], xp: Any) -> np.ndarray:
    """``(K, B)`` host array: per constraint and problem, the largest change its step would make."""
    alive = log_p > _NEG_INF
    out = []
    for step, dual in zip(steps, duals, strict=True):
        # affine: the projection of P itself; otherwise the new correction minus the old one
        change = step.delta(log_p) if step.affine else step.delta(log_p - _finite(dual, xp)) - dual
        change = xp.broadcast_to(change, log_p.shape)
        change = xp.where(alive, xp.abs(change), xp.zeros_like(log_p))
        out.append(np.asarray(to_numpy(xp.max(change, axis=(1, 2))), dtype=np.float64))
    return np.stack(out)


def _finite(x: Array, xp: Any) -> Array:
    return xp.where(xp.isfinite(x), x, xp.zeros_like(x))


# --------------------------------------------------------------------------------------------
# Validation.


def _check_constraints(constraints: Any) -> list[Constraint]:
    if isinstance(constraints, Constraint) or not isinstance(constraints, Sequence):
        raise TypeError(
            "constraints must be a sequence of Constraint objects (e.g. [RowMarginal(a),"
            f" ColumnMarginal(b)]), got {type(constraints).__name__}"
        )
    out = list(constraints)
    if not out:
        raise ValueError("constraints must not be empty")
    for i, c in enumerate(out):
        if not isinstance(c, Constraint):
            raise TypeError(f"constraints[{i}] must be a Constraint, got {type(c).__name__}")
    for kind in (RowMarginal, ColumnMarginal, TotalMass):
        if sum(isinstance(c, kind) for c in out) > 1:
            raise ValueError(f"constraints contains more than one {kind.__name__}")
    return out


def _validate_loop(max_iter: Any, tol: Any, check_every: Any) -> tuple[int, float | None, int]:
    if isinstance(max_iter, bool) or not isinstance(max_iter, (int, np.integer)) or max_iter < 0:
        raise ValueError(f"max_iter must be a non-negative integer, got {max_iter!r}")
    if tol is not None:
        if isinstance(tol, bool) or not isinstance(tol, (int, float, np.floating, np.integer)):
            raise TypeError(f"tol must be a number or None, got {type(tol).__name__}")
        if not (tol >= 0 and math.isfinite(tol)):
            raise ValueError(f"tol must be finite and >= 0 (or None), got {tol}")
        tol = float(tol)
    if (
        isinstance(check_every, bool)
        or not isinstance(check_every, (int, np.integer))
        or check_every < 1
    ):
        raise ValueError(f"check_every must be a positive integer, got {check_every!r}")
    return int(max_iter), tol, int(check_every)


def _fold_zero_capacity(log_k: Array, steps: list[_Step], xp: Any) -> Array:
    """Entries with ``kappa = 0`` are zero in every feasible plan: make them ``-inf`` up front."""
    for s in steps:
        if isinstance(s, _BoundStep) and s.upper and is_array(s.log_bound):
            log_k = xp.where(s.log_bound > _NEG_INF, log_k, xp.full_like(log_k, _NEG_INF))
    return log_k


def _check_feasible(
    constraints: list[Constraint], steps: list[_Step], log_k: Array, masked: bool, xp: Any
) -> None:
    """Reject constraint combinations with no feasible plan (host-side, once)."""
    B, n, m = log_k.shape
    rtol = math.sqrt(dtype_eps(xp, log_k.dtype))
    allowed = to_numpy(log_k) > _NEG_INF
    upper = np.full((B, n, m), math.inf)
    lower = np.zeros((B, n, m))
    scalar_kappa = True
    for s in steps:
        if not isinstance(s, _BoundStep):
            continue
        bound = np.exp(np.broadcast_to(np.asarray(to_numpy(s.log_bound), float), (B, n, m)))
        if s.upper:
            upper = np.minimum(upper, bound)
            scalar_kappa = scalar_kappa and not is_array(s.log_bound)
        else:
            lower = np.maximum(lower, bound)
    upper = np.where(allowed, upper, 0.0)
    has_upper = any(isinstance(s, _BoundStep) and s.upper for s in steps)
    has_lower = any(isinstance(s, _BoundStep) and not s.upper for s in steps)
    if has_lower and np.any(lower > upper * (1 + rtol)):
        if np.any((lower > 0) & ~allowed):
            raise ValueError(
                "ell is positive on an entry that the mask (or kappa = 0) forces to zero"
            )
        raise ValueError("ell exceeds kappa on some entry: no plan satisfies both bounds")

    hard: list[tuple[str, str, np.ndarray, int | None]] = []
    for c, s in zip(constraints, steps, strict=True):
        if isinstance(s, _MarginalStep) and s.affine:
            name = "a" if isinstance(c, RowMarginal) else "b"
            hard.append(
                (
                    name,
                    "row" if name == "a" else "column",
                    np.exp(np.asarray(to_numpy(s.log_m), float)),
                    s.axis,
                )
            )
        elif isinstance(c, TotalMass):
            hard.append(("mass", "total", np.full((B, 1), c.mass), None))

    totals = {name: vec.sum(-1) for name, _, vec, _ in hard}
    names = list(totals)
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            ti, tj = totals[names[i]], totals[names[j]]
            if np.any(np.abs(ti - tj) > rtol * np.maximum(ti, tj)):
                raise ValueError(
                    f"infeasible constraints: {names[i]} has total mass {float(ti.max()):.6g} but"
                    f" {names[j]} has {float(tj.max()):.6g}"
                )

    for name, side, vec, axis in hard:
        cap = upper.sum(axis=(1, 2))[:, None] if axis is None else upper.sum(axis=axis)
        floor = lower.sum(axis=(1, 2))[:, None] if axis is None else lower.sum(axis=axis)
        if has_upper and np.any(cap < vec * (1 - rtol)):
            k = np.argwhere(cap < vec * (1 - rtol))[0]
            where = "" if axis is None else f" {side} {int(k[1])}"
            raise ValueError(
                f"infeasible constraints: the upper bound kappa lets{where} carry at most"
                f" {float(cap[tuple(k)]):.6g}, but {name} requires {float(vec[tuple(k)]):.6g}"
            )
        if has_lower and np.any(floor > vec * (1 + rtol)):
            k = np.argwhere(floor > vec * (1 + rtol))[0]
            where = "" if axis is None else f" {side} {int(k[1])}"
            raise ValueError(
                f"infeasible constraints: the lower bound ell puts at least"
                f" {float(floor[tuple(k)]):.6g} on{where}, but {name} allows"
                f" {float(vec[tuple(k)]):.6g}"
            )

    rows = [v for name, _, v, _ in hard if name == "a"]
    cols = [v for name, _, v, _ in hard if name == "b"]
    if has_upper and scalar_kappa and not masked and not has_lower and rows and cols:
        kappa = float(np.min(upper))
        _check_capacitated(rows[0], cols[0], kappa, rtol)


def _check_capacitated(a: np.ndarray, b: np.ndarray, kappa: float, rtol: float) -> None:
    """Exact feasibility of ``{P 1 = a, P^T 1 = b, 0 <= P <= kappa}`` (max-flow / min-cut).

    A cut keeping rows ``I`` and columns ``J`` on the source side has capacity ``a(not I) +
    kappa |I| |not J| + b(J)``; feasibility is ``a(I) <= b(J) + kappa |I| (m - |J|)`` for all
    ``I, J``, and for given sizes ``k = |I|``, ``l = |J|`` the worst case takes the ``k`` largest
    ``a_i`` and the ``l`` smallest ``b_j``.
    """
    B, n = a.shape
    m = b.shape[1]
    top_a = np.concatenate([np.zeros((B, 1)), np.cumsum(-np.sort(-a, axis=1), axis=1)], axis=1)
    low_b = np.concatenate([np.zeros((B, 1)), np.cumsum(np.sort(b, axis=1), axis=1)], axis=1)
    k = np.arange(n + 1)[:, None]
    l_ = np.arange(m + 1)[None, :]
    slack = low_b[:, None, :] + kappa * k * (m - l_) - top_a[:, :, None]
    if np.any(slack < -rtol * a.sum(axis=1)[:, None, None]):
        bb, kk, ll = np.argwhere(slack < -rtol * a.sum(axis=1)[:, None, None])[0]
        raise ValueError(
            f"infeasible constraints: with P <= kappa = {kappa:.6g}, the {kk} rows of largest mass"
            f" in a (total {float(top_a[bb, kk]):.6g}) cannot be served: the {ll} columns of"
            f" smallest mass in b hold {float(low_b[bb, ll]):.6g} and the other {m - ll} columns"
            f" at most kappa * {kk} * {m - ll} = {kappa * kk * (m - ll):.6g}"
        )
