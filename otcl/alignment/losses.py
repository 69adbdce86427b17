"""The GCA family of losses as compositions: geometry -> target -> inner OT solve -> divergence.

Every loss here is ``d_M(P_tgt || P_θ)`` where ``P_θ`` is the plan after ``n_iter`` Sinkhorn
rounds on ``K = exp(-C/eps)`` followed by one row step (``docs/architecture.md``):

==============  =========================  ====================  ==========================
loss            inner constraints          rounds ``n_iter``     outer divergence
==============  =========================  ====================  ==========================
``info_nce``    rows (one projection)      0                     KL
``gca_ince``    rows + columns             10                    KL
``rince``       rows (one projection)      0                     RINCE(q, lam)
``gca_rince``   rows + columns             10                    RINCE(q, lam)
``gca_uot``     KL-relaxed (``rho``)       10                    r1 KL + r2 RINCE
``iot``         rows + columns (1/n)       10, ends on columns   cross-entropy
``iot_uni``     as ``iot``                 10                    iot + lam_p KL(Q || P)
==============  =========================  ====================  ==========================

Each function accepts NumPy, CuPy, PyTorch or array-API arrays and returns that library's
0-d array (``reduction="mean"`` / ``"sum"``) or the ``(n,)`` per-row values
(``reduction="none"``); with ``return_details=True`` it returns ``(value, LossDetails)``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any, Protocol

from otcl.alignment.divergences import cross_entropy_rows, kl_rows, rince_rows, validate_rince
from otcl.alignment.targets import Target, as_target, label_target, pair_target
from otcl.backend import Array, logsumexp, safe_log
from otcl.geometry import ViewBatch, view_batch
from otcl.solvers.bregman import ColumnMarginal, Constraint, RowMarginal, bregman_projection
from otcl.solvers.problem import make_problem, validate_positive
from otcl.solvers.result import ConvergenceWarning
from otcl.solvers.sinkhorn import log_col_update, log_row_update

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


class InnerSolve(Protocol):
    """The inner solve of a loss: ``n_iter`` rounds and a final row step (batch-first).

    ``(log_kernel (B,n,m), log_a (B,n), log_b (B,m), t_a, t_b, n_iter)
    -> (phi (B,n), gamma (B,m))``.
    ``detached`` is True when the returned potentials carry no derivative.
    """

    detached: bool

    def __call__(self, log_kernel: Array, log_a: Array, log_b: Array, t_a: Any, t_b: Any,
                 n_iter: int) -> tuple[Array, Array]: ...


class UnrolledInner:
    """Log-domain rounds written with array-API operations: autodiff libraries differentiate
    through them as written (``grad="unroll"`` by the framework's own autograd)."""

    detached = False

    def __call__(self, log_kernel: Array, log_a: Array, log_b: Array, t_a: Any, t_b: Any,
                 n_iter: int) -> tuple[Array, Array]:
        from otcl.backend import namespace

        xp = namespace(log_kernel)
        gamma = xp.zeros_like(log_b)
        for _ in range(n_iter):
            phi = log_row_update(log_kernel, log_a, gamma, t_a, xp)
            gamma = log_col_update(log_kernel, log_b, phi, t_b, xp)
        return log_row_update(log_kernel, log_a, gamma, t_a, xp), gamma


class FastInner:
    """The fast forward of :func:`otcl.solvers.adjoint.fixed_round_potentials` (kernel domain
    where exact), for arrays that carry no autograd record. Arrays that do (a torch tensor with
    ``requires_grad``) go through :class:`UnrolledInner`, so the framework's autograd sees every
    operation; :mod:`otcl.torch` provides the faster custom backward."""

    detached = False

    def __call__(self, log_kernel: Array, log_a: Array, log_b: Array, t_a: Any, t_b: Any,
                 n_iter: int) -> tuple[Array, Array]:
        tracked = any(getattr(x, "requires_grad", False) for x in (log_kernel, log_a, log_b, t_a))
        if tracked:
            return UnrolledInner()(log_kernel, log_a, log_b, t_a, t_b, n_iter)
        from otcl.solvers.adjoint import fixed_round_potentials

        phi, gamma, _ = fixed_round_potentials(log_kernel, log_a, log_b, t_a, t_b, n_iter,
                                               record=False)
        return phi, gamma


def default_inner() -> InnerSolve:
    """The inner solve used when a loss is called without ``inner``."""
    return FastInner()


@dataclass(eq=False)
class LossDetails:
    """What the loss saw: per-row values, potentials and the plan's marginals.

    ``f``, ``g`` are potentials with ``P_ij = exp((f_i + g_j - C_ij) / eps)``; ``row_mass`` is
    ``P 1`` (for GCA-UOT the per-sample weight: low mass flags a noisy pair).
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
    xp: Any = field(repr=False)

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


DivergenceSpec = str | Mapping[str, float] | Callable[..., Array]


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
        ``P_tgt``: an ``(n, m)`` non-negative array, a :class:`Target`, or ``None`` for the
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
        half-step); ``"uniform"``: uniform marginals with the target's total mass.
    divergence:
        ``"kl"`` (generalised KL with mass terms), ``"cross_entropy"``, ``"rince"``, a mapping of
        those names to weights (a weighted mixture), or a callable
        ``f(target, phi, gamma, log_kernel, row_mass, xp) -> (n,)``.
    q, lam:
        RINCE parameters (``q`` in ``(0, 1]``, ``lam > 0``).
    final_step:
        ``"row"`` (default, ``P^(2L+1)``) or ``"column"`` (``P^(2L)``, needs ``n_iter >= 1``).
    reduction:
        ``"mean"`` over rows, ``"sum"``, or ``"none"``.
    return_details:
        Also return a :class:`LossDetails`.
    inner:
        The inner solve (gradient mode); default: fast fixed rounds with the unrolled derivative.
    constraints:
        Instead of ``rho_a``/``rho_b``: any sequence of constraint sets of
        :func:`otcl.bregman_projection` (e.g. ``[RowMarginal(), ColumnMarginal(),
        UpperBound(kappa)]``); ``P_θ`` is then the Bregman–Dykstra projection of ``K`` after
        ``n_iter`` cycles (differentiated by the array library's own autograd). A marginal set
        given without its marginal uses the target's. Divergences: ``"kl"``,
        ``"cross_entropy"`` or a mapping of them.
    """
    from otcl.backend import check_compatible

    xp = check_compatible(cost=cost)
    if cost.ndim != 2:
        raise ValueError(f"cost must have shape (n, m), got {tuple(cost.shape)}")
    # validates cost (finite, non-empty), mask and eps like any solver input
    make_problem(cost, None, None, eps=eps, mask=mask, mass_rtol=math.inf)
    n, m = cost.shape
    idx = xp.arange(n, dtype=xp.int64)
    batch = ViewBatch(cost, mask, idx, xp.arange(m, dtype=xp.int64), None, "cross")
    if target is None:
        if n != m:
            raise ValueError("target=None means the identity, which needs a square cost")
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
    like = batch.reference
    if isinstance(n_iter, bool) or not isinstance(n_iter, int) or n_iter < 0:
        raise ValueError(f"n_iter must be a non-negative integer, got {n_iter!r}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if final_step not in ("row", "column"):
        raise ValueError(f"final_step must be 'row' or 'column', got {final_step!r}")
    if final_step == "column" and n_iter < 1:
        raise ValueError("final_step='column' needs n_iter >= 1")
    terms = _divergence_terms(divergence, q, lam)

    a, b = target.row_sums(like), target.col_sums(like)
    if marginals == "uniform":
        mass = xp.sum(a)
        a = xp.ones_like(a) * (mass / a.shape[0])
        b = xp.ones_like(b) * (mass / b.shape[0])
    elif marginals != "target":
        raise ValueError(f"marginals must be 'target' or 'uniform', got {marginals!r}")
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
    phi3, gamma3 = inner(log_k3, log_a3, log_b3, t_a, t_b, rounds)
    if final_step == "column":
        gamma3 = log_col_update(log_k3, log_b3, phi3, t_b, xp)
    phi, gamma = phi3[0, ...], gamma3[0, ...]

    if final_step == "row" and not inner.detached:
        # the final row step phi = t_a (log a - r) gives the row mass exp(phi + r) in closed
        # form, a exp(phi (1 - 1/t_a)) (= a when the rows are hard): no pass over the plan
        if t_a == 1.0:
            row_mass = a
        else:
            expo = xp.where(a > 0, phi * (1 - 1 / t_a), xp.zeros_like(phi))
            row_mass = a * xp.exp(expo)
    else:
        row_mass = xp.exp(phi + logsumexp(log_k + gamma[None, :], 1, xp))

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
        val = term(target, phi, gamma, log_k_terms if builtin else log_k, row_mass, xp)
        per_row = weight * val if per_row is None else per_row + weight * val
    if extra is not None:
        val = extra(target, phi, gamma, log_k, row_mass, xp)
        per_row = val if per_row is None else per_row + val
    if per_row is None:
        per_row = xp.zeros_like(phi)
    if not bool(xp.all(xp.isfinite(per_row))):
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
    details = LossDetails(
        per_sample=per_row, f=phi * eps, g=gamma * eps, row_mass=row_mass,
        a=a, b=b, n_iter=n_iter, eps=eps, cost=batch.cost, mask=batch.mask, xp=xp,
    )
    return value, details


def _constrained_loss(batch: ViewBatch, target: Target, constraints: Sequence[Constraint], *,
                      eps: Any, n_iter: int, divergence: DivergenceSpec, reduction: str,
                      return_details: bool) -> Any:
    """``d_M(T || P)`` with ``P`` the Bregman–Dykstra projection of ``K`` onto ``constraints``."""
    xp, cost = batch.xp, batch.cost
    if isinstance(n_iter, bool) or not isinstance(n_iter, int) or n_iter < 1:
        raise ValueError(f"n_iter must be a positive integer with constraints, got {n_iter!r}")
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
    details = LossDetails(per_sample=per_row, f=f, g=g, row_mass=xp.sum(P, axis=1),
                          a=a, b=b, n_iter=n_iter, eps=eps, cost=cost, mask=batch.mask, xp=xp)
    details.__dict__["log_plan"] = log_p  # the projection is not of the potential form
    return value, details


def _validate_eps(eps: Any, xp: Any) -> Any:
    from otcl.backend import is_array, to_float

    if is_array(eps):
        if eps.ndim != 0:
            raise ValueError(f"eps must be a scalar (0-d array), got shape {tuple(eps.shape)}")
        value = to_float(eps)
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"eps must be positive and finite, got {value}")
        return eps
    return validate_positive("eps", eps)


def _exponent(rho: float, eps: Any) -> Any:
    return 1.0 if math.isinf(rho) else rho / (rho + eps)


def _divergence_terms(
    spec: DivergenceSpec, q: float, lam: float
) -> list[tuple[float, Callable, bool]]:
    """``(weight, term, builtin)`` per divergence; built-in terms accept, for a pair target,
    the ``(n,)`` entries ``Λ[i, partner[i]]`` in place of the ``(n, m)`` log-kernel."""
    if callable(spec):
        return [(1.0, spec, False)]
    weights = {spec: 1.0} if isinstance(spec, str) else dict(spec)
    terms = []
    for name, w in weights.items():
        if name == "kl":
            terms.append((w, kl_rows, True))
        elif name == "cross_entropy":
            terms.append(
                (w, lambda t, p, g, lk, rm, xp: cross_entropy_rows(t, p, g, lk), True)
            )
        elif name == "rince":
            qq, ll = validate_rince(q, lam)
            terms.append(
                (w, lambda t, p, g, lk, rm, xp, qq=qq, ll=ll: rince_rows(t, p, g, lk, q=qq,
                                                                          lam=ll, xp=xp), True)
            )
        else:
            raise ValueError(
                f"unknown divergence {name!r}; use 'kl', 'cross_entropy', 'rince', a mapping of "
                "them to weights, or a callable"
            )
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w):
            raise ValueError(f"divergence weight for {name!r} must be a finite number, got {w!r}")
    return terms


def _embedding_loss(z1: Array, z2: Array | None, *, layout: str | None, n_views: int,
                    metric: str, labels: Array | None, target: Any, **kw: Any) -> Any:
    batch = view_batch(z1, z2, layout=layout, n_views=n_views, metric=metric)
    if labels is not None and target is not None:
        raise ValueError("give either labels or target, not both")
    if labels is not None:
        tgt = label_target(batch, labels)
    elif target is not None:
        tgt = as_target(target, batch)
    else:
        tgt = pair_target(batch)
    return _gca_loss(batch, tgt, **kw)


_COMMON_DOC = """
    Call forms: ``f(z1, z2)`` (cross-view ``N x N``, positives on the diagonal) or
    ``f(z, layout="blocked" | "interleaved", n_views=V)`` (all views, self-pairs hard-masked).
    ``labels`` (one per sample) gives the supervised-contrastive target; ``target`` an explicit
    ``P_tgt`` (e.g. :func:`otcl.domain_prior`). ``metric`` is the cost (default ``"neg_cosine"``,
    ``C = -cos``). ``reduction`` is ``"mean"`` (default), ``"sum"`` or ``"none"``;
    ``return_details=True`` returns ``(value, LossDetails)``. ``inner`` selects the gradient mode
    (see :mod:`otcl.torch`).
"""


def info_nce(z1: Array, z2: Array | None = None, *, eps: float | Array = 0.5,
             layout: str | None = None, n_views: int = 2, metric: str = "neg_cosine",
             labels: Array | None = None, target: Any = None, reduction: str = "mean",
             return_details: bool = False, inner: InnerSolve | None = None) -> Any:
    """InfoNCE / NT-Xent as ``(1/n) KL(P_tgt || Proj_rows(K))`` (GCA-NOTES §2.3).

    With ``s_ij = cos(z_i, z'_j) / eps``: ``mean_i [-s_ip(i) + log sum_j exp(s_ij)]``, the sum
    over all allowed ``j``. Default ``eps = 0.5``.
    """
    return _embedding_loss(z1, z2, layout=layout, n_views=n_views, metric=metric, labels=labels,
                           target=target, eps=eps, n_iter=0, rho_a=math.inf, rho_b=math.inf,
                           marginals="target", divergence="kl", q=0.6, lam=0.01,
                           final_step="row", reduction=reduction, return_details=return_details,
                           inner=inner)


def gca_ince(z1: Array, z2: Array | None = None, *, eps: float | Array = 0.5, n_iter: int = 10,
             layout: str | None = None, n_views: int = 2, metric: str = "neg_cosine",
             labels: Array | None = None, target: Any = None, reduction: str = "mean",
             return_details: bool = False, inner: InnerSolve | None = None) -> Any:
    """GCA-INCE: ``(1/n) KL(P_tgt || P^(2L+1))`` with the balanced Sinkhorn iterate after
    ``L = n_iter`` rounds and a row step (GCA-NOTES §2.4). Defaults ``eps = 0.5``, ``n_iter = 10``.

    With matched marginals the value is ``<= info_nce`` and decreases with ``n_iter``.
    """
    return _embedding_loss(z1, z2, layout=layout, n_views=n_views, metric=metric, labels=labels,
                           target=target, eps=eps, n_iter=n_iter, rho_a=math.inf, rho_b=math.inf,
                           marginals="target", divergence="kl", q=0.6, lam=0.01,
                           final_step="row", reduction=reduction, return_details=return_details,
                           inner=inner)


def rince(z1: Array, z2: Array | None = None, *, eps: float | Array = 0.5, q: float = 0.6,
          lam: float = 0.01, layout: str | None = None, n_views: int = 2,
          metric: str = "neg_cosine", labels: Array | None = None, target: Any = None,
          reduction: str = "mean", return_details: bool = False,
          inner: InnerSolve | None = None) -> Any:
    """RINCE (Chuang et al. 2022): ``mean_i [-(e^{s_ii})^q / q + (lam sum_j e^{s_ij})^q / q]``,
    computed as the one-step GCA-RINCE. Defaults ``eps = 0.5``, ``q = 0.6``, ``lam = 0.01``."""
    return _embedding_loss(z1, z2, layout=layout, n_views=n_views, metric=metric, labels=labels,
                           target=target, eps=eps, n_iter=0, rho_a=math.inf, rho_b=math.inf,
                           marginals="target", divergence="rince", q=q, lam=lam,
                           final_step="row", reduction=reduction, return_details=return_details,
                           inner=inner)


def gca_rince(z1: Array, z2: Array | None = None, *, eps: float | Array = 0.5, n_iter: int = 10,
              q: float = 0.6, lam: float = 0.01, layout: str | None = None, n_views: int = 2,
              metric: str = "neg_cosine", labels: Array | None = None, target: Any = None,
              reduction: str = "mean", return_details: bool = False,
              inner: InnerSolve | None = None) -> Any:
    """GCA-RINCE (poster, T1): ``mean_i [-(K_ii v_i)^q / q + (lam (K v)_i / a_i)^q / q]`` with
    ``v = exp(g / eps)`` after ``n_iter`` balanced rounds; RINCE on the column-reweighted kernel.
    ``n_iter = 0`` is RINCE. Defaults ``eps = 0.5``, ``n_iter = 10``, ``q = 0.6``,
    ``lam = 0.01``."""
    return _embedding_loss(z1, z2, layout=layout, n_views=n_views, metric=metric, labels=labels,
                           target=target, eps=eps, n_iter=n_iter, rho_a=math.inf, rho_b=math.inf,
                           marginals="target", divergence="rince", q=q, lam=lam,
                           final_step="row", reduction=reduction, return_details=return_details,
                           inner=inner)


def gca_uot(z1: Array, z2: Array | None = None, *, eps: float | Array = 0.5, rho: float = 0.2,
            rho_a: float | None = None, rho_b: float | None = None, n_iter: int = 10,
            r1: float = 1.0, r2: float = 0.02, q: float = 0.6, lam: float = 0.01,
            layout: str | None = None, n_views: int = 2, metric: str = "neg_cosine",
            labels: Array | None = None, target: Any = None, reduction: str = "mean",
            return_details: bool = False, inner: InnerSolve | None = None) -> Any:
    """GCA-UOT: ``r1 (1/n) KL(P_tgt || P) + r2 RINCE-term(P / u)`` with ``P`` the unbalanced
    iterate (KL penalties ``rho_a``, ``rho_b``; both default to ``rho``) after ``n_iter`` rounds
    and a row step. Row masses satisfy ``P 1 = a^t (K v)^(1 - t)``, ``t = rho_a / (rho_a + eps)``:
    rows with little kernel mass (noisy pairs) get less mass (``details.row_mass``).

    Defaults: ``eps = 0.5``, ``rho = 0.2``, ``n_iter = 10``, ``r1 = 1``, ``r2 = 0.02``, ``q = 0.6``,
    ``lam = 0.01`` (the official CIFAR-10 configuration).
    """
    rho = validate_positive("rho", rho, allow_inf=True)
    ra = rho if rho_a is None else rho_a
    rb = rho if rho_b is None else rho_b
    return _embedding_loss(z1, z2, layout=layout, n_views=n_views, metric=metric, labels=labels,
                           target=target, eps=eps, n_iter=n_iter, rho_a=ra, rho_b=rb,
                           marginals="target", divergence={"kl": r1, "rince": r2}, q=q, lam=lam,
                           final_step="row", reduction=reduction, return_details=return_details,
                           inner=inner)


def iot(z1: Array, z2: Array | None = None, *, eps: float | Array = 0.5, n_iter: int = 10,
        layout: str | None = None, n_views: int = 2, metric: str = "neg_cosine",
        labels: Array | None = None, target: Any = None, reduction: str = "mean",
        return_details: bool = False, inner: InnerSolve | None = None) -> Any:
    """IOT (Shi et al. 2023): ``-mean_i sum_j T_ij log P_ij`` with ``P`` the balanced plan with
    uniform marginals of the target's mass after ``n_iter`` full rounds (ending on a column
    step)."""
    return _embedding_loss(z1, z2, layout=layout, n_views=n_views, metric=metric, labels=labels,
                           target=target, eps=eps, n_iter=n_iter, rho_a=math.inf, rho_b=math.inf,
                           marginals="uniform", divergence="cross_entropy", q=0.6, lam=0.01,
                           final_step="column", reduction=reduction,
                           return_details=return_details, inner=inner)


def iot_uni(z1: Array, z2: Array | None = None, *, eps: float | Array = 0.5, n_iter: int = 10,
            lam_p: float = 0.2, layout: str | None = None, n_views: int = 2,
            metric: str = "neg_cosine", labels: Array | None = None, target: Any = None,
            reduction: str = "mean", return_details: bool = False,
            inner: InnerSolve | None = None) -> Any:
    """IOT-uni: IOT plus ``lam_p KL(Q || P)`` per row, where ``Q`` keeps ``P`` on the target's
    entries and replaces every other allowed entry by the mean of ``P`` over those entries (a
    uniformity prior on the negatives). Default ``lam_p = 0.2``."""
    lam_p = validate_positive("lam_p", lam_p)

    def uniformity(tgt: Target, phi: Array, gamma: Array, log_k: Array, row_mass: Array,
                   xp: Any) -> Array:
        log_p = phi[:, None] + gamma[None, :] + log_k
        P = xp.exp(log_p)
        positive = tgt.to_dense(P) > 0
        negative = ~positive & (log_k > -math.inf)
        n_neg = xp.sum(xp.astype(negative, P.dtype))
        # a target that covers every allowed entry leaves no negatives: Q = P, no penalty
        mean_neg = xp.sum(xp.where(negative, P, xp.zeros_like(P))) / xp.maximum(
            n_neg, xp.ones_like(n_neg))
        Q = xp.where(positive, P, xp.where(negative, xp.zeros_like(P) + mean_neg,
                                              xp.zeros_like(P)))
        ratio = xp.where(Q > 0, safe_log(Q, xp) - xp.where(Q > 0, log_p, xp.zeros_like(P)),
                         xp.zeros_like(P))
        return lam_p * xp.sum(Q * ratio - Q + P, axis=1)

    batch = view_batch(z1, z2, layout=layout, n_views=n_views, metric=metric)
    if labels is not None and target is not None:
        raise ValueError("give either labels or target, not both")
    tgt = (label_target(batch, labels) if labels is not None
           else as_target(target, batch) if target is not None else pair_target(batch))
    return _gca_loss(batch, tgt, eps=eps, n_iter=n_iter, rho_a=math.inf, rho_b=math.inf,
                     marginals="uniform", divergence="cross_entropy", q=0.6, lam=0.01,
                     final_step="column", reduction=reduction, return_details=return_details,
                     inner=inner, extra=uniformity)


hs_ince = info_nce
"""The paper's "INCE" (half-step INCE): one row projection, identical to :func:`info_nce`."""

hs_rince = rince
"""Half-step RINCE: GCA-RINCE after one row step, identical to :func:`rince`."""

for _f in (info_nce, gca_ince, rince, gca_rince, gca_uot, iot, iot_uni):
    _f.__doc__ = (_f.__doc__ or "") + _COMMON_DOC
