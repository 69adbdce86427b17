"""The GCA family of losses as compositions: geometry -> target -> inner OT solve -> divergence.

Every loss here is ``d_M(P_tgt || P_θ)`` where ``P_θ`` is the plan after ``n_iter`` Sinkhorn
rounds on ``K = exp(-C/eps)`` followed by one row step (``docs/architecture.md``):

==============  =========================  ====================  ==================================
loss            inner constraints          rounds ``n_iter``     outer divergence
==============  =========================  ====================  ==================================
``info_nce``    rows (one projection)      0                     KL
``gca_ince``    rows + columns             10                    KL
``rince``       rows (one projection)      0                     RINCE(q, lam)
``gca_rince``   rows + columns             10                    RINCE(q, lam)
``gca_uot``     KL-relaxed (``rho``), 1/n  10                    r1 row-KL + r2 RINCE (official)
``iot``         rows + columns             ``n_iter + 1`` steps  cross-entropy
``iot_uni``     as ``iot``                 as ``iot``            iot + lam_p KL(Q || P)
==============  =========================  ====================  ==================================

A two-view call ``f(z1, z2)`` is the SimCLR problem: all ``2N`` views, self-pairs excluded, each
view's partner as its positive, averaged over the ``2N`` rows
([`otcl.view_batch`][otcl.view_batch]); ``layout="cross"`` selects the one-direction ``N x M``
problem. Each function accepts NumPy, CuPy, PyTorch or array-API arrays and returns that library's
0-d array (``reduction="mean"`` / ``"sum"``) or the per-row values (``reduction="none"``); with
``return_details=True`` it returns ``(value, LossDetails)``.
"""

from __future__ import annotations

import math
import operator
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any, Protocol

from otcl._api import checked_keywords
from otcl.alignment.divergences import (
    cross_entropy_rows,
    kl_rows,
    rince_rows,
    row_kl_rows,
    validate_rince,
)
from otcl.alignment.targets import Target, as_target, label_target, pair_target
from otcl.backend import Array, device_of, logsumexp, safe_log
from otcl.geometry import ViewBatch, index_dtype, view_batch
from otcl.solvers.bregman import ColumnMarginal, Constraint, RowMarginal, bregman_projection
from otcl.solvers.problem import make_problem, validate_positive
from otcl.solvers.result import ConvergenceWarning
from otcl.solvers.sinkhorn import log_col_update, log_row_update
from otcl.tracing import concrete, definitely

__all__ = [
    "InnerSolve",
    "LossDetails",
    "alignment_loss",
    "gca_ince",
    "gca_rince",
    "gca_uot",
    "hs_ince",
    "hs_rince",
    "info_nce",
    "iot",
    "iot_uni",
    "rince",
]

REDUCTIONS = ("mean", "sum", "none")
MARGINALS = ("target", "uniform", "probability")


class InnerSolve(Protocol):
    """The inner solve of a loss: ``n_iter`` rounds and a final row step (batch-first).

    ``(log_kernel (B,n,m), log_a (B,n), log_b (B,m), t_a, t_b, n_iter, init=None)
    -> (phi (B,n), gamma (B,m))``; ``init`` is the starting ``gamma_0`` ``(B, m)`` (``None``:
    zeros, i.e. ``v_0 = 1``), passed only by losses whose value depends on it (unbalanced
    rounds started from ``v_0 = b``, as the official GCA-UOT does).
    ``detached`` is True when the returned potentials carry no derivative.
    """

    detached: bool

    def __call__(self, log_kernel: Array, log_a: Array, log_b: Array, t_a: Any, t_b: Any,
                 n_iter: int, init: Array | None = None) -> tuple[Array, Array]: ...


class UnrolledInner:
    """Log-domain rounds written with array-API operations: autodiff libraries differentiate
    through them as written (``grad="unroll"`` by the framework's own autograd)."""

    detached = False

    def __call__(self, log_kernel: Array, log_a: Array, log_b: Array, t_a: Any, t_b: Any,
                 n_iter: int, init: Array | None = None) -> tuple[Array, Array]:
        from otcl.backend import namespace

        xp = namespace(log_kernel)
        gamma = xp.zeros_like(log_b) if init is None else init
        for _ in range(n_iter):
            phi = log_row_update(log_kernel, log_a, gamma, t_a, xp)
            gamma = log_col_update(log_kernel, log_b, phi, t_b, xp)
        return log_row_update(log_kernel, log_a, gamma, t_a, xp), gamma


class FastInner:
    """The fast forward of
    [`otcl.solvers.adjoint.fixed_round_potentials`][otcl.solvers.adjoint.fixed_round_potentials]
    (kernel domain where exact), for arrays that carry no autograd record. Arrays that do (a torch
    tensor with ``requires_grad``) go through
    [`UnrolledInner`][otcl.alignment.losses.UnrolledInner], so the framework's autograd sees every
    operation; [`otcl.torch`][otcl.torch] provides the faster custom backward."""

    detached = False

    def __call__(self, log_kernel: Array, log_a: Array, log_b: Array, t_a: Any, t_b: Any,
                 n_iter: int, init: Array | None = None) -> tuple[Array, Array]:
        tracked = any(getattr(x, "requires_grad", False) for x in (log_kernel, log_a, log_b, t_a))
        if tracked or not concrete(log_kernel, log_a, log_b, t_a, init):
            # autodiff frameworks and tracers (jax.jit / grad / vmap) see every operation
            return UnrolledInner()(log_kernel, log_a, log_b, t_a, t_b, n_iter, init)
        from otcl.solvers.adjoint import fixed_round_potentials

        phi, gamma, _ = fixed_round_potentials(log_kernel, log_a, log_b, t_a, t_b, n_iter,
                                               init=init, record=False)
        return phi, gamma


def default_inner() -> InnerSolve:
    """The inner solve used when a loss is called without ``inner``."""
    return FastInner()


@dataclass(eq=False)
class LossDetails:
    """What the loss saw: per-row values, potentials and the plan's marginals.

    ``f``, ``g`` are potentials with ``P_ij = exp((f_i + g_j - C_ij) / eps)``; ``row_mass`` is
    ``P 1`` (for GCA-UOT the per-sample weight: low mass flags a noisy pair).

    A snapshot: every field is an array the loss created (a user-given cost, mask or array
    ``eps`` is copied when the details are built), so later writes to the caller's arrays
    change nothing here. ``plan``, ``log_plan``, ``col_mass`` and the marginal errors are
    computed on first read from those private copies. Details pickle with their arrays.
    """

    per_sample: Array
    f: Array
    g: Array
    row_mass: Array
    a: Array
    b: Array
    n_iter: int
    eps: Any
    cost: Array = field(repr=False)
    mask: Array | None = field(repr=False)

    @property
    def xp(self) -> Any:
        """The array namespace of the details' arrays."""
        from otcl.backend import namespace

        return namespace(self.per_sample)

    @cached_property
    def log_plan(self) -> Array:
        """``log P``, shape ``(n, m)`` (``-inf`` on masked entries)."""
        xp = self.xp
        lp = (self.f[:, None] + self.g[None, :] - self.cost) / self.eps
        if self.mask is not None:
            lp = xp.where(self.mask, lp, xp.full_like(lp, -math.inf))
        return lp

    @cached_property
    def plan(self) -> Array:
        """The plan ``P``, shape ``(n, m)``."""
        return self.xp.exp(self.log_plan)

    @cached_property
    def col_mass(self) -> Array:
        """``P^T 1``, shape ``(m,)``."""
        return self.xp.exp(logsumexp(self.log_plan, 0, self.xp))

    @cached_property
    def marginal_error_a(self) -> Array:
        """``||P 1 - a||_1 / ||a||_1``."""
        xp = self.xp
        return xp.sum(xp.abs(self.row_mass - self.a)) / xp.sum(self.a)

    @cached_property
    def marginal_error_b(self) -> Array:
        """``||P^T 1 - b||_1 / ||b||_1``: how far the columns are from their constraint."""
        xp = self.xp
        return xp.sum(xp.abs(self.col_mass - self.b)) / xp.sum(self.b)


def _own_copy(x: Any, xp: Any) -> Any:
    """A fresh array equal to ``x`` (autograd records kept), so that the details never alias a
    caller's array; floats pass through."""
    from otcl.backend import is_array

    if not is_array(x):
        return x
    if x.dtype == xp.bool:
        return xp.asarray(x, copy=True)
    return x + xp.zeros_like(x)


def as_count(name: str, value: Any, minimum: int = 0) -> int:
    """An integer ``>= minimum`` as ``int``: Python and NumPy integers (and 0-d integer arrays)
    are accepted; ``bool``, floats and anything else raise ``ValueError`` naming ``name``."""
    count = None
    if not isinstance(value, bool):
        try:
            count = operator.index(value)
        except TypeError:
            count = None
    if count is None or count < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(count)


DivergenceSpec = str | Mapping[str, float] | Callable[..., Array]


@checked_keywords
def alignment_loss(
    cost: Array,
    target: Any = None,
    *,
    eps: float | Array = 0.5,
    n_iter: int = 10,
    rho_a: float = math.inf,
    rho_b: float = math.inf,
    mask: Array | None = None,
    marginals: str = "target",
    divergence: DivergenceSpec = "kl",
    q: float = 0.6,
    lam: float = 0.01,
    final_step: str = "row",
    reduction: str = "mean",
    return_details: bool = False,
    inner: InnerSolve | None = None,
    constraints: Sequence[Constraint] | None = None,
) -> Any:
    """The generic GCA loss ``d_M(P_tgt || P_θ)`` on a cost matrix.

    Parameters
    ----------
    cost:
        ``C`` of shape ``(n, m)``.
    target:
        ``P_tgt``: an ``(n, m)`` non-negative array, a [`Target`][otcl.Target], or ``None`` for the
        identity (``n == m``).
    eps:
        Entropic strength = temperature (float or 0-d array).
    n_iter:
        Sinkhorn rounds before the final row step; ``0`` = the one-step row projection.
    rho_a, rho_b:
        KL marginal penalties of the inner problem (``inf`` = hard constraint).
    mask:
        Optional ``(n, m)`` boolean allowed-entry mask (hard exclusion).
    marginals:
        ``"target"`` (default): ``a = T 1``, ``b = T^T 1`` (matched, so KL decreases with every
        half-step); ``"uniform"``: uniform marginals with the target's total mass;
        ``"probability"``: ``a_i = 1/n``, ``b_j = 1/m`` (total mass 1, the official GCA-UOT's).
    divergence:
        ``"kl"`` (generalised KL with mass terms, ``sum_j T log(T/P) - T + P``),
        ``"row_kl"`` (``KL(T_i / |T_i| || P_i / |P_i|)`` per row: rows renormalised, the
        cross-entropy of the official code), ``"cross_entropy"`` (``-sum_j T_ij log P_ij``),
        ``"rince"``, a mapping of those names to weights (a weighted mixture), or a callable
        ``f(target, phi, gamma, log_kernel, row_mass, xp) -> (n,)``.
    q, lam:
        RINCE parameters (``q`` in ``(0, 1]``, ``lam > 0``).
    final_step:
        ``"row"`` (default, ``P^(2L+1)``) or ``"column"`` (``P^(2L)``, needs ``n_iter >= 1``).
    reduction:
        ``"mean"`` over rows, ``"sum"``, or ``"none"``.
    return_details:
        Also return a [`LossDetails`][otcl.LossDetails].
    inner:
        The inner solve (gradient mode); default: fast fixed rounds with the unrolled derivative.
    constraints:
        Instead of ``rho_a``/``rho_b``: any sequence of constraint sets of
        [`otcl.bregman_projection`][otcl.bregman_projection] (e.g. ``[RowMarginal(),
        ColumnMarginal(), UpperBound(kappa)]``); ``P_θ`` is then the Bregman–Dykstra projection of
        ``K`` after ``n_iter`` cycles (differentiated by the array library's own autograd). A
        marginal set given without its marginal uses the target's. Divergences: ``"kl"``,
        ``"cross_entropy"`` or a mapping of them.
    """
    from otcl.backend import check_compatible

    xp = check_compatible(cost=cost)
    if cost.ndim != 2:
        raise ValueError(f"cost must have shape (n, m), got {tuple(cost.shape)}")
    # validates cost (finite, non-empty), mask and eps like any solver input
    make_problem(cost, None, None, eps=eps, mask=mask, mass_rtol=math.inf)
    n, m = cost.shape
    idx = xp.arange(n, dtype=index_dtype(xp), device=device_of(cost))
    batch = ViewBatch(cost, mask, idx, xp.arange(m, dtype=index_dtype(xp), device=device_of(cost)),
                      None, "cross")
    if target is None:
        if n != m:
            raise ValueError("target=None means the identity, which needs a square cost")
        if mask is not None and not bool(xp.all(xp.linalg.diagonal(mask))):
            raise ValueError(
                "target=None means the identity, but mask excludes diagonal entries: the "
                "target would put mass on masked entries (give a target that the mask allows)"
            )
        tgt = Target(xp, (n, m), partner=idx)
    else:
        tgt = as_target(target, batch)
    if constraints is not None:
        if not (math.isinf(rho_a) and math.isinf(rho_b)) or final_step != "row":
            raise ValueError("give either constraints or rho_a/rho_b/final_step, not both")
        return _constrained_loss(batch, tgt, constraints, eps=eps, n_iter=n_iter,
                                 divergence=divergence, reduction=reduction,
                                 return_details=return_details)
    return _gca_loss(batch, tgt, eps=eps, n_iter=n_iter, rho_a=rho_a, rho_b=rho_b,
                     marginals=marginals, divergence=divergence, q=q, lam=lam,
                     final_step=final_step, reduction=reduction, return_details=return_details,
                     inner=inner)


def _gca_loss(batch: ViewBatch, target: Target, *, eps: Any, n_iter: int, rho_a: float,
              rho_b: float, marginals: str, divergence: DivergenceSpec, q: float, lam: float,
              final_step: str, reduction: str, return_details: bool,
              inner: InnerSolve | None, extra: Callable[..., Array] | None = None) -> Any:
    xp = batch.xp
    n_iter = as_count("n_iter", n_iter)
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if final_step not in ("row", "column"):
        raise ValueError(f"final_step must be 'row' or 'column', got {final_step!r}")
    if final_step == "column" and n_iter < 1:
        raise ValueError("final_step='column' needs n_iter >= 1")
    terms = _divergence_terms(divergence, q, lam)

    a, b = problem_marginals(batch, target, marginals)
    # the batch was validated when it was built (finite embeddings, target checked), so the
    # problem is assembled directly: no pass over the n x m cost beyond Λ itself
    eps = _validate_eps(eps, xp)
    t_a = _exponent(validate_positive("rho_a", rho_a, allow_inf=True), eps)
    t_b = _exponent(validate_positive("rho_b", rho_b, allow_inf=True), eps)
    inner = inner if inner is not None else default_inner()
    log_k = batch.log_kernel(eps)
    log_k3 = log_k[None, ...]
    log_a3, log_b3 = safe_log(a, xp)[None, :], safe_log(b, xp)[None, :]
    rounds = n_iter - 1 if final_step == "column" else n_iter
    # where the rounds start: v_0 = b, as the official GCA-UOT and POT do, for unbalanced rounds
    # (whose plan depends on it) and for marginals 1/n (the scale of v, which RINCE terms read,
    # follows that of v_0 through balanced rounds too); v_0 = 1 otherwise (b = 1 for pairs)
    unbalanced = not (math.isinf(rho_a) and math.isinf(rho_b))
    if unbalanced or marginals == "probability":
        phi3, gamma3 = inner(log_k3, log_a3, log_b3, t_a, t_b, rounds, init=log_b3)
    else:
        phi3, gamma3 = inner(log_k3, log_a3, log_b3, t_a, t_b, rounds)
    if final_step == "column":
        gamma3 = log_col_update(log_k3, log_b3, phi3, t_b, xp)
    phi, gamma = phi3[0, ...], gamma3[0, ...]

    if final_step == "row" and not inner.detached:
        # the final row step phi = t_a (log a - r), r = log (K v), gives r and the row mass
        # exp(phi + r) in closed form: no pass over the plan
        log_a = safe_log(a, xp)
        if math.isinf(rho_a):
            log_kv = log_a - phi
            row_mass = a
        else:
            log_kv = log_a - phi / t_a
            expo = xp.where(a > 0, phi * (1 - 1 / t_a), xp.zeros_like(phi))
            row_mass = a * xp.exp(expo)
    else:
        log_kv = logsumexp(log_k + gamma[None, :], 1, xp)
        row_mass = xp.exp(phi + log_kv)

    # the built-in terms read Λ only at the target's entries: for a pair target of an embedding
    # batch they get those n entries from the embeddings (an (n,) array), so that the gradient
    # of the loss reaches Λ only through the inner solve (no n x m gather-and-scatter)
    log_k_terms = log_k
    if target.partner is not None:
        at_pairs = batch.log_kernel_at(eps, None, target.partner)
        log_k_terms = log_k if at_pairs is None else at_pairs
    per_row = None
    for weight, term, builtin in terms:
        if weight == 0:
            continue
        if builtin:
            val = term(target, phi, gamma, log_k_terms, row_mass, xp, log_kv)
        else:
            val = term(target, phi, gamma, log_k, row_mass, xp)
        per_row = weight * val if per_row is None else per_row + weight * val
    if extra is not None:
        val = extra(target, phi, gamma, log_k, row_mass, xp)
        per_row = val if per_row is None else per_row + val
    if inner.detached and final_step == "row":
        envelope = detached_envelope(divergence, row_mass)
        if envelope is not None:
            per_row = envelope if per_row is None else per_row + envelope
    if per_row is None:
        per_row = xp.zeros_like(phi)
    if definitely(xp.any(~xp.isfinite(per_row))):
        warnings.warn(
            "the loss has non-finite rows: a term overflowed the dtype (for RINCE terms, "
            "exp(q / eps) grows quickly as eps shrinks) or the inner solve left its range",
            ConvergenceWarning, stacklevel=3,
        )
    value = per_row if reduction == "none" else xp.sum(per_row)
    if reduction == "mean":
        value = value / per_row.shape[0]
    if not return_details:
        return value
    user_owned = batch._cost is not None  # a caller's cost and mask: copied, never aliased
    cost = _own_copy(batch.cost, xp) if user_owned else batch.cost
    mask = _own_copy(batch.mask, xp) if user_owned and batch.mask is not None else batch.mask
    details = LossDetails(
        per_sample=per_row, f=phi * eps, g=gamma * eps, row_mass=row_mass,
        a=a, b=b, n_iter=n_iter, eps=_own_copy(eps, xp), cost=cost, mask=mask,
    )
    return value, details


def problem_marginals(batch: ViewBatch, target: Target, marginals: str) -> tuple[Array, Array]:
    """The inner problem's marginals ``(a (n,), b (m,))`` for a batch and target:

    * ``"target"``: ``a = T 1``, ``b = T^T 1``, except that the extra negatives of a cross-view
      batch (columns ``N .. M-1``, no target mass) make ``b`` uniform with the rows' total mass,
      so that every negative takes part in the plan;
    * ``"uniform"``: uniform with the target's total mass on each side;
    * ``"probability"``: ``a_i = 1/n``, ``b_j = 1/m``.
    """
    xp = batch.xp
    like = batch.reference
    a, b = target.row_sums(like), target.col_sums(like)
    n, m = batch.shape
    extra = m > n and batch.layout in ("cross", "queue")
    if marginals == "uniform" or (marginals == "target" and extra):
        mass = xp.sum(a)
        a = xp.ones_like(a) * (mass / n) if marginals == "uniform" else a
        b = xp.ones((m,), dtype=a.dtype, device=device_of(a)) * (mass / m)
    elif marginals == "probability":
        a = xp.ones_like(a) / n
        b = xp.ones((m,), dtype=a.dtype, device=device_of(a)) / m
    elif marginals != "target":
        raise ValueError(f"marginals must be one of {MARGINALS}, got {marginals!r}")
    return a, b


def _constrained_loss(batch: ViewBatch, target: Target, constraints: Sequence[Constraint], *,
                      eps: Any, n_iter: int, divergence: DivergenceSpec, reduction: str,
                      return_details: bool) -> Any:
    """``d_M(T || P)`` with ``P`` the Bregman–Dykstra projection of ``K`` onto ``constraints``."""
    xp, cost = batch.xp, batch.cost
    n_iter = as_count("n_iter", n_iter, minimum=1)
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    weights = {divergence: 1.0} if isinstance(divergence, str) else divergence
    if callable(weights) or not set(weights) <= {"kl", "cross_entropy"}:
        raise ValueError("with constraints, divergence must be 'kl', 'cross_entropy' or a mapping "
                         "of them to weights")
    a, b = target.row_sums(cost), target.col_sums(cost)
    filled = []
    for c in constraints:
        if isinstance(c, RowMarginal) and c.a is None:
            c = replace(c, a=a)
        elif isinstance(c, ColumnMarginal) and c.b is None:
            c = replace(c, b=b)
        filled.append(c)
    res = bregman_projection(cost, filled, eps=eps, mask=batch.mask, max_iter=n_iter, tol=None,
                             warn=False)
    log_p = res.log_plan
    P = xp.exp(log_p)
    T = target.to_dense(cost)
    pos = T > 0
    t_log_p = T * xp.where(pos, log_p, xp.zeros_like(log_p))
    per_row = xp.zeros_like(a)
    for name, w in weights.items():
        if name == "kl":
            term = target.row_entropy(cost) - xp.sum(t_log_p, axis=1) - a + xp.sum(P, axis=1)
        else:
            term = -xp.sum(t_log_p, axis=1)
        per_row = per_row + w * term
    value = per_row if reduction == "none" else xp.sum(per_row)
    if reduction == "mean":
        value = value / per_row.shape[0]
    if not return_details:
        return value
    # f, g: the marginal constraints' duals (zero when absent); bounds add further dual terms,
    # so the plan is given by log_plan rather than by (f, g)
    f, g = xp.zeros_like(a), xp.zeros_like(b)
    for c, dual in zip(filled, res.duals, strict=True):
        if isinstance(c, RowMarginal):
            f = dual * eps
        elif isinstance(c, ColumnMarginal):
            g = dual * eps
    mask = None if batch.mask is None else _own_copy(batch.mask, xp)
    details = LossDetails(per_sample=per_row, f=f, g=g, row_mass=xp.sum(P, axis=1),
                          a=a, b=b, n_iter=n_iter, eps=_own_copy(eps, xp),
                          cost=_own_copy(cost, xp), mask=mask)
    details.__dict__["log_plan"] = log_p  # the projection is not of the potential form
    return value, details


def _validate_eps(eps: Any, xp: Any) -> Any:
    from otcl.backend import is_array, to_float

    if is_array(eps):
        if eps.ndim != 0:
            raise ValueError(f"eps must be a scalar (0-d array), got shape {tuple(eps.shape)}")
        if not concrete(eps):
            return eps
        value = to_float(eps)
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"eps must be positive and finite, got {value}")
        return eps
    return validate_positive("eps", eps)


def _exponent(rho: float, eps: Any) -> Any:
    return 1.0 if math.isinf(rho) else rho / (rho + eps)


def detached_envelope(divergence: DivergenceSpec, row_mass: Array) -> Array | None:
    """The term that makes ``grad="detach"`` exact at convergence for a cross-entropy, or
    ``None`` when ``divergence`` has none: ``w (row_mass - row_mass.detach())`` per row.

    With both potentials constants (detached rounds ending on a row step), the cross-entropy,
    which has no mass term, would miss the envelope term ``P`` of the projection it scores. The
    row mass minus its constant copy adds exactly that: 0 to the value, ``P`` to the gradient,
    as the KL's ``+ P_ij`` term carries it. (A final column step is differentiated as computed
    and needs none.) ``row_mass`` is a torch tensor: only the torch inner solves detach."""
    w = _weight_of(divergence, "cross_entropy")
    return None if w == 0 else w * (row_mass - row_mass.detach())


def _divergence_weights(spec: DivergenceSpec) -> dict[str, Any] | None:
    """``{name: weight}`` of a divergence given by name or mapping; ``None`` for a callable;
    ``ValueError`` for anything else."""
    if callable(spec):
        return None
    if isinstance(spec, str):
        return {spec: 1.0}
    if isinstance(spec, Mapping):
        return dict(spec)
    raise ValueError(f"divergence must be a name, a mapping of names to weights or a "
                     f"callable, got {spec!r}")


def _weight_of(spec: DivergenceSpec, name: str) -> float:
    """The weight of divergence ``name`` in ``spec`` (0 for a callable)."""
    weights = _divergence_weights(spec)
    return 0.0 if weights is None else float(weights.get(name, 0.0))


def _divergence_terms(
    spec: DivergenceSpec, q: float, lam: float
) -> list[tuple[float, Callable, bool]]:
    """``(weight, term, builtin)`` per divergence. Built-in terms take
    ``(target, phi, gamma, log_kernel, row_mass, xp, log_kv)`` with ``log_kv = log (K v)`` per
    row, and accept, for a pair target, the ``(n,)`` entries ``Λ[i, partner[i]]`` in place of
    the ``(n, m)`` log-kernel; a user callable takes the first six."""
    weights = _divergence_weights(spec)
    if weights is None:
        return [(1.0, spec, False)]
    terms = []
    for name, w in weights.items():
        if name == "kl":
            terms.append((w, lambda t, p, g, lk, rm, xp, lkv: kl_rows(t, p, g, lk, rm, xp), True))
        elif name == "row_kl":
            terms.append((w, lambda t, p, g, lk, rm, xp, lkv: row_kl_rows(t, g, lk, lkv, xp),
                          True))
        elif name == "cross_entropy":
            terms.append(
                (w, lambda t, p, g, lk, rm, xp, lkv: cross_entropy_rows(t, p, g, lk), True)
            )
        elif name == "rince":
            qq, ll = validate_rince(q, lam)
            terms.append(
                (w, lambda t, p, g, lk, rm, xp, lkv, qq=qq, ll=ll: rince_rows(
                    t, g, lk, lkv, q=qq, lam=ll, xp=xp), True)
            )
        else:
            raise ValueError(
                f"unknown divergence {name!r}; use 'kl', 'row_kl', 'cross_entropy', 'rince', a "
                "mapping of them to weights, or a callable"
            )
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w):
            raise ValueError(f"divergence weight for {name!r} must be a finite number, got {w!r}")
    return terms


def resolve_temperature(eps: Any, temperature: Any, default: float = 0.5) -> Any:
    """``eps`` and ``temperature`` name one parameter: give one or the other (or neither, for
    ``default``); both raise ``TypeError``."""
    if temperature is not None:
        if eps is not None:
            raise TypeError("give either eps or temperature (the same parameter), not both")
        return temperature
    return default if eps is None else eps


def _embedding_batch(z1: Array, z2: Array | None, *, layout: str | None, n_views: int,
                     metric: str, labels: Array | None, target: Any) -> tuple[ViewBatch, Target]:
    if labels is not None and target is not None:
        raise ValueError("give either labels or target, not both")
    if z2 is None and layout is None and labels is None and target is None:
        raise ValueError(
            "a single array z needs labels= or target= (supervised: every row an anchor), or "
            "layout='blocked' | 'interleaved' for a batch of views; two views go as f(z1, z2)"
        )
    batch = view_batch(z1, z2, layout=layout, n_views=n_views, metric=metric)
    if labels is not None:
        if batch.layout in ("cross", "queue") and batch.shape[1] > batch.shape[0]:
            raise ValueError("labels with extra negatives (z2 longer than z1) are not supported: "
                             "the extra rows have no labels; give target= instead")
        return batch, label_target(batch, labels)
    if target is not None:
        return batch, as_target(target, batch)
    return batch, pair_target(batch)


def _embedding_loss(z1: Array, z2: Array | None, *, layout: str | None, n_views: int,
                    metric: str, labels: Array | None, target: Any, **kw: Any) -> Any:
    batch, tgt = _embedding_batch(z1, z2, layout=layout, n_views=n_views, metric=metric,
                                  labels=labels, target=target)
    return _gca_loss(batch, tgt, **kw)


_COMMON_DOC = """
    Call forms: ``f(z1, z2)`` is the SimCLR problem (all ``2N`` views of ``z = [z1; z2]``,
    self-pairs excluded, each view's partner its positive, mean over the ``2N`` rows; lightly's and
    pytorch-metric-learning's ``NTXentLoss`` for InfoNCE); ``f(z1, z2, layout="cross")`` the
    one-direction cross-view ``N x M`` problem (CLIP-style; ``z2`` may have ``M > N`` rows, the
    extra ones negatives only: a memory bank or MoCo queue; for the OT losses the columns then carry
    uniform marginals of the rows' total mass); ``layout="queue"`` the same with the extra rows as
    the only negatives (MoCo, lightly's memory bank); ``f(z, layout="blocked" | "interleaved",
    n_views=V)`` a batch of ``V`` views; ``f(z, labels=y)`` supervised contrastive on one batch
    (every row an anchor, positives the other rows with its label). ``labels`` (one per sample, or
    one per row) gives the supervised target; ``target`` an explicit ``P_tgt`` (e.g.
    [`otcl.domain_prior`][otcl.domain_prior]). ``temperature`` is another name for ``eps`` (give
    one). ``reduction`` is ``"mean"`` (default), ``"sum"`` or ``"none"``; ``return_details=True``
    returns ``(value, LossDetails)``. ``inner`` selects the gradient mode (see
    [`otcl.torch`][otcl.torch]).
"""


@checked_keywords
def info_nce(z1: Array, z2: Array | None = None, *, eps: float | Array | None = None,
             temperature: float | Array | None = None, divergence: str = "kl",
             layout: str | None = None, n_views: int = 2, metric: str = "neg_cosine",
             labels: Array | None = None, target: Any = None, reduction: str = "mean",
             return_details: bool = False, inner: InnerSolve | None = None) -> Any:
    """InfoNCE / NT-Xent as ``(1/n) KL(P_tgt || Proj_rows(K))`` (GCA-NOTES §2.3).

    With ``s_ij = cos(z_i, z_j) / eps``: ``mean_i [-s_ip(i) + log sum_{j != i} exp(s_ij)]``,
    the sum over all allowed ``j``. Default ``eps = 0.5`` (lightly's ``NTXentLoss``).

    ``divergence="kl"`` (default) is ``KL(T_i || P_i)``; ``"cross_entropy"`` is
    ``-sum_j T_ij log P_ij = KL + H(T_i)``. They agree for pairs of views; with ``labels`` the
    cross-entropy is SupCon's value (Khosla et al. 2020, pytorch-metric-learning's
    ``SupConLoss``) and the KL is SupCon minus the mean ``log |positives(i)|`` (the same
    gradient). Metric ``"neg_cosine"`` (``C = -cos``): the value is unchanged by any constant
    offset of the cost, since the row projection removes it.
    """
    if divergence not in ("kl", "cross_entropy"):
        raise ValueError(f"divergence must be 'kl' or 'cross_entropy', got {divergence!r}")
    return _embedding_loss(z1, z2, layout=layout, n_views=n_views, metric=metric, labels=labels,
                           target=target, eps=resolve_temperature(eps, temperature), n_iter=0,
                           rho_a=math.inf, rho_b=math.inf, marginals="target",
                           divergence=divergence, q=0.6, lam=0.01, final_step="row",
                           reduction=reduction, return_details=return_details, inner=inner)


@checked_keywords
def gca_ince(z1: Array, z2: Array | None = None, *, eps: float | Array | None = None,
             temperature: float | Array | None = None, n_iter: int = 10,
             divergence: str = "kl", layout: str | None = None, n_views: int = 2,
             metric: str = "neg_cosine", labels: Array | None = None, target: Any = None,
             reduction: str = "mean", return_details: bool = False,
             inner: InnerSolve | None = None) -> Any:
    """GCA-INCE: ``(1/n) KL(P_tgt || P^(2L+1))`` with the balanced Sinkhorn iterate after
    ``L = n_iter`` rounds and a row step (GCA-NOTES §2.4). Defaults ``eps = 0.5``, ``n_iter = 10``
    (the official configuration files).

    With matched marginals the value is ``<= info_nce`` and decreases with ``n_iter``. The official
    ``gca_ince`` (marginals 1, ``F.cross_entropy(P.log(), targets)``) gives the same number (minus
    its clamped cosine and soft self-mask, GCA-NOTES D1 / D2). ``divergence`` as in
    [`info_nce`][otcl.info_nce]. Metric ``"neg_cosine"``: the balanced plan is unchanged by a
    constant offset of the cost.
    """
    if divergence not in ("kl", "cross_entropy"):
        raise ValueError(f"divergence must be 'kl' or 'cross_entropy', got {divergence!r}")
    return _embedding_loss(z1, z2, layout=layout, n_views=n_views, metric=metric, labels=labels,
                           target=target, eps=resolve_temperature(eps, temperature),
                           n_iter=n_iter, rho_a=math.inf, rho_b=math.inf, marginals="target",
                           divergence=divergence, q=0.6, lam=0.01, final_step="row",
                           reduction=reduction, return_details=return_details, inner=inner)


@checked_keywords
def rince(z1: Array, z2: Array | None = None, *, eps: float | Array | None = None,
          temperature: float | Array | None = None, q: float = 0.6, lam: float = 0.01,
          layout: str | None = None, n_views: int = 2, metric: str = "neg_cosine",
          labels: Array | None = None, target: Any = None, reduction: str = "mean",
          return_details: bool = False, inner: InnerSolve | None = None) -> Any:
    """RINCE (Chuang et al. 2022): ``mean_i [-(e^{s_ip})^q / q + (lam sum_{j != i} e^{s_ij})^q
    / q]``, computed as the one-step GCA-RINCE. Defaults ``eps = 0.5``, ``q = 0.6``,
    ``lam = 0.01``.

    Metric ``"neg_cosine"``: ``e^{s_ij} = exp(cos_ij / eps)`` as in the official ImageNet
    ``rince`` (the value depends on the cost's offset, so ``"cosine"`` gives another number).
    """
    return _embedding_loss(z1, z2, layout=layout, n_views=n_views, metric=metric, labels=labels,
                           target=target, eps=resolve_temperature(eps, temperature), n_iter=0,
                           rho_a=math.inf, rho_b=math.inf, marginals="target",
                           divergence="rince", q=q, lam=lam, final_step="row",
                           reduction=reduction, return_details=return_details, inner=inner)


@checked_keywords
def gca_rince(z1: Array, z2: Array | None = None, *, eps: float | Array | None = None,
              temperature: float | Array | None = None, n_iter: int = 10, q: float = 0.6,
              lam: float = 0.01, layout: str | None = None, n_views: int = 2,
              metric: str = "neg_cosine", labels: Array | None = None, target: Any = None,
              reduction: str = "mean", return_details: bool = False,
              inner: InnerSolve | None = None) -> Any:
    """GCA-RINCE (poster, T1): ``mean_i [-(K_ip v_p)^q / q + (lam (K v)_i)^q / q]`` with
    ``v = exp(g / eps)`` after ``n_iter`` balanced rounds (marginals 1); RINCE on the
    column-reweighted kernel. ``n_iter = 0`` is RINCE. Defaults ``eps = 0.5``, ``n_iter = 10``,
    ``q = 0.6``, ``lam = 0.01``.

    Metric ``"neg_cosine"`` (``K = exp(cos / eps)``), as [`rince`][otcl.rince], whose value it
    equals at ``n_iter = 0``.
    """
    return _embedding_loss(z1, z2, layout=layout, n_views=n_views, metric=metric, labels=labels,
                           target=target, eps=resolve_temperature(eps, temperature),
                           n_iter=n_iter, rho_a=math.inf, rho_b=math.inf, marginals="target",
                           divergence="rince", q=q, lam=lam, final_step="row",
                           reduction=reduction, return_details=return_details, inner=inner)


GCA_UOT_KL = ("row", "generalized")


@checked_keywords
def gca_uot(z1: Array, z2: Array | None = None, *, eps: float | Array | None = None,
            temperature: float | Array | None = None, rho: float = 0.2,
            rho_a: float | None = None, rho_b: float | None = None, n_iter: int = 10,
            r1: float = 1.0, r2: float = 0.2, q: float = 0.6, lam: float = 0.01,
            kl: str = "row", layout: str | None = None, n_views: int = 2,
            metric: str = "cosine", labels: Array | None = None, target: Any = None,
            reduction: str = "mean", return_details: bool = False,
            inner: InnerSolve | None = None) -> Any:
    """GCA-UOT, the official loss (``gca_uot`` of the paper's CIFAR code, GCA-NOTES §4):

    ``r1 mean_i KL(T_i || P_i / sum_j P_ij) + r2 mean_i [-(P_ip / u_i)^q / q
    + (lam sum_j P_ij / u_i)^q / q]``

    where ``P = diag(u) K diag(v)`` is the unbalanced plan after ``n_iter`` rounds
    ``u = (a / K v)^{t_a}``, ``v = (b / K^T u)^{t_b}``, ``t = rho / (rho + eps)``, started from
    ``v = b``, with marginals ``a_i = 1/n``, ``b_j = 1/m`` and KL penalties ``rho_a``, ``rho_b``
    (both default to ``rho``). Both terms depend on the plan only through ``v``:
    ``P_i / sum_j P_ij = K_ij v_j / (K v)_i``, ``P_ip / u_i = K_ip v_p``,
    ``sum_j P_ij / u_i = (K v)_i``. On random embeddings the value grows like an InfoNCE loss,
    about ``log n``.

    Defaults: the official CIFAR-10 run of the paper's README (``ssl_pretrain.py --config-name
    simclr_cifar10.yaml ... lam=0.01 q=0.6 r1=1 r2=0.2``, with ``epsilon: 0.5``,
    ``iterations: 10`` and ``relax_items1 = relax_items2 = 0.2`` from
    ``config/simclr_cifar10.yaml``): ``eps = 0.5``, ``n_iter = 10``, ``rho = 0.2``, ``r1 = 1``,
    ``r2 = 0.2``, ``q = 0.6``, ``lam = 0.01``. Other official configurations:
    ``gca_uot(z1, z2, **otcl.official_config("gca_uot", "cifar100-config"))``
    ([`otcl.alignment.official.OFFICIAL_CONFIGS`][otcl.alignment.official.OFFICIAL_CONFIGS]).

    Metric ``"cosine"`` (``C = 1 - cos``), as the official code: for unbalanced OT the offset
    does not cancel, it sets how much mass the plan keeps. Differences from the official code:
    no clamp of the cosine and a hard self-mask (GCA-NOTES D1, D2), no absorption step (D3), and
    the RINCE term's ``(P_tgt / u).sum(1)`` is read as ``(P / u).sum(1)`` (the RINCE form).

    ``kl="generalized"`` replaces the first term by the generalised KL with mass terms,
    ``mean_i sum_j [T_ij log(T_ij / P_ij) - T_ij + P_ij]`` on the same plan (the first term of
    otcl's GCA-UOT before 0.2, which solved with marginals 1): its mass terms do not cancel
    against the target's unit entries, so it does not behave like an InfoNCE loss.
    """
    rho = validate_positive("rho", rho, allow_inf=True)
    ra = rho if rho_a is None else rho_a
    rb = rho if rho_b is None else rho_b
    if kl not in GCA_UOT_KL:
        raise ValueError(f"kl must be one of {GCA_UOT_KL}, got {kl!r}")
    first = "row_kl" if kl == "row" else "kl"
    return _embedding_loss(z1, z2, layout=layout, n_views=n_views, metric=metric, labels=labels,
                           target=target, eps=resolve_temperature(eps, temperature),
                           n_iter=n_iter, rho_a=ra, rho_b=rb, marginals="probability",
                           divergence={first: r1, "rince": r2}, q=q, lam=lam, final_step="row",
                           reduction=reduction, return_details=return_details, inner=inner)


def _iot_steps(n_iter: Any) -> tuple[int, str]:
    """The official ``iot`` loop of ``iterations = L`` rounds (row normalisation, then column
    normalisation and a transpose) makes ``L + 1`` distinct projections, rows first (after the
    first round each round's first normalisation is a no-op): ``(rounds, final_step)`` of
    `_gca_loss` with that many half-steps."""
    L = as_count("n_iter", n_iter)
    if L % 2 == 0:
        return L // 2, "row"
    return (L + 1) // 2, "column"


@checked_keywords
def iot(z1: Array, z2: Array | None = None, *, eps: float | Array | None = None,
        temperature: float | Array | None = None, n_iter: int = 10,
        layout: str | None = None, n_views: int = 2, metric: str = "neg_cosine",
        labels: Array | None = None, target: Any = None, reduction: str = "mean",
        return_details: bool = False, inner: InnerSolve | None = None) -> Any:
    """IOT (Shi et al. 2023), as the paper's official ``iot``: ``-mean_i sum_j T_ij log P_ij``
    with ``P`` the balanced plan (uniform marginals of the target's mass) after the official
    loop's ``n_iter + 1`` alternating projections, rows first (``n_iter = 10``: 11 half-steps,
    ending on a row step; ``n_iter = 0`` is one row projection, InfoNCE with uniform marginals,
    where the official loop with ``iterations = 0`` makes none and scores the raw kernel).
    Metric ``"neg_cosine"``: the balanced plan is unchanged by a
    constant offset of the cost. Differences from the official code: a hard self-mask instead
    of the largest cost on the diagonal (GCA-NOTES D2), and the layout is explicit (D10).
    """
    rounds, final = _iot_steps(n_iter)
    return _embedding_loss(z1, z2, layout=layout, n_views=n_views, metric=metric, labels=labels,
                           target=target, eps=resolve_temperature(eps, temperature),
                           n_iter=rounds, rho_a=math.inf, rho_b=math.inf, marginals="uniform",
                           divergence="cross_entropy", q=0.6, lam=0.01, final_step=final,
                           reduction=reduction, return_details=return_details, inner=inner)


@checked_keywords
def iot_uni(z1: Array, z2: Array | None = None, *, eps: float | Array | None = None,
            temperature: float | Array | None = None, n_iter: int = 10, lam_p: float = 0.2,
            layout: str | None = None, n_views: int = 2, metric: str = "neg_cosine",
            labels: Array | None = None, target: Any = None, reduction: str = "mean",
            return_details: bool = False, inner: InnerSolve | None = None) -> Any:
    """IOT-uni: [`iot`][otcl.iot] plus ``lam_p KL(Q || P)`` with ``Q`` the uniformity prior of the
    official ``iot_uni``: every allowed (off-diagonal) entry of ``P``, positives included,
    replaced by the mean of ``P`` over the allowed entries. Per row
    ``lam_p sum_j [Q_ij log(Q_ij / P_ij) - Q_ij + P_ij]``; the mass terms cancel in the sum over
    rows (``sum Q = sum P``), so the mean equals the official ``F.kl_div(P.log(), Q,
    reduction="batchmean")`` of the ImageNet file (the CIFAR file's element mean divides by
    ``n`` once more, GCA-NOTES D17). Default ``lam_p = 0.2``.
    """
    lam_p = validate_positive("lam_p", lam_p)

    def uniformity(tgt: Target, phi: Array, gamma: Array, log_k: Array, row_mass: Array,
                   xp: Any) -> Array:
        log_p = phi[:, None] + gamma[None, :] + log_k
        P = xp.exp(log_p)
        allowed = log_k > -math.inf
        n_allowed = xp.sum(xp.astype(allowed, P.dtype))
        mean_p = xp.sum(xp.where(allowed, P, xp.zeros_like(P))) / n_allowed
        safe_log_p = xp.where(allowed, log_p, xp.zeros_like(log_p))
        ratio = xp.where(allowed, safe_log(mean_p, xp) - safe_log_p,
                         xp.zeros_like(P))
        Q = xp.where(allowed, xp.zeros_like(P) + mean_p, xp.zeros_like(P))
        return lam_p * xp.sum(Q * ratio - Q + P, axis=1)

    batch, tgt = _embedding_batch(z1, z2, layout=layout, n_views=n_views, metric=metric,
                                  labels=labels, target=target)
    rounds, final = _iot_steps(n_iter)
    return _gca_loss(batch, tgt, eps=resolve_temperature(eps, temperature), n_iter=rounds,
                     rho_a=math.inf, rho_b=math.inf, marginals="uniform",
                     divergence="cross_entropy", q=0.6, lam=0.01, final_step=final,
                     reduction=reduction, return_details=return_details, inner=inner,
                     extra=uniformity)


hs_ince = info_nce
"""The paper's "INCE" (half-step INCE): one row projection, identical to
[`info_nce`][otcl.info_nce]."""

hs_rince = rince
"""Half-step RINCE: GCA-RINCE after one row step, identical to [`rince`][otcl.rince]."""

for _f in (info_nce, gca_ince, rince, gca_rince, gca_uot, iot, iot_uni):
    _f.__doc__ = (_f.__doc__ or "") + _COMMON_DOC
