"""Members of the alignment family beyond the InfoNCE branch (GCA-NOTES §2.2, the paper's Table 1).

* [`byol`][otcl.byol]: BYOL / SimSiam's regression loss, the member with ``d_Γ`` = squared L2 and no
  constraint set (the plan is the kernel itself, no iteration): ``2 - 2 cos(p, z')`` per pair,
  summed over the two directions as in BYOL.
* [`gca_capacity`][otcl.gca_capacity]: GCA-INCE with an upper bound on the plan mass of every
  negative pair, ``P_ij <= kappa`` for ``T_ij = 0``, solved by Bregman–Dykstra projections onto rows
  ∩ columns ∩ bound: a row's mass cannot be absorbed by a few false negatives.
"""

from __future__ import annotations

import math
from typing import Any

from otcl._api import checked_keywords
from otcl.backend import Array, check_compatible

__all__ = ["byol", "gca_capacity"]


def _cosine_rows(x: Array, y: Array, xp: Any) -> Array:
    from otcl.geometry import _normalise_rows

    return xp.sum(_normalise_rows("p", x, xp) * _normalise_rows("z", y, xp), axis=1)


@checked_keywords
def byol(p1: Array, z2: Array, p2: Array | None = None, z1: Array | None = None, *,
         reduction: str = "mean") -> Array:
    """BYOL's loss: ``(2 - 2 cos(p1_i, z2_i)) + (2 - 2 cos(p2_i, z1_i))`` per sample (the
    second term when ``p2``, ``z1`` are given: the symmetrised loss of BYOL, Grill et al. 2020).

    ``p`` are the online network's predictions, ``z`` the target network's projections of the
    other view, all ``(N, d)``. ``2 - 2 cos = ||p̂ - ẑ||^2`` for unit vectors. SimSiam's loss
    ``-(cos(p1, z2) + cos(p2, z1)) / 2`` is ``byol / 4 - 1``. The target side carries no gradient
    in BYOL and SimSiam: detach ``z`` ([`otcl.torch.BYOL`][otcl.torch.losses.BYOL] does).
    ``reduction``: ``"mean"`` over samples, ``"sum"`` or ``"none"``.
    """
    xp = check_compatible(p1=p1, z2=z2, p2=p2, z1=z1)
    if (p2 is None) != (z1 is None):
        raise ValueError("give both p2 and z1 (the second direction), or neither")
    pairs = [(p1, z2)] + ([] if p2 is None else [(p2, z1)])
    for p, z in pairs:
        if p.ndim != 2 or p.shape != z.shape:
            raise ValueError(f"predictions and targets must have the same shape (N, d), got "
                             f"{tuple(p.shape)} and {tuple(z.shape)}")
    if pairs[-1][0].shape != p1.shape:
        raise ValueError(f"both directions must have shape {tuple(p1.shape)}")
    per_sample = sum(2 - 2 * _cosine_rows(p, z, xp) for p, z in pairs)
    if reduction == "none":
        return per_sample
    if reduction == "sum":
        return xp.sum(per_sample)
    if reduction == "mean":
        return xp.mean(per_sample)
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


@checked_keywords
def gca_capacity(z1: Array, z2: Array | None = None, *, eps: float | Array | None = None,
                 temperature: float | Array | None = None, kappa: float = 0.1,
                 n_iter: int = 10, layout: str | None = None, n_views: int = 2,
                 metric: str = "neg_cosine", labels: Array | None = None, target: Any = None,
                 reduction: str = "mean", return_details: bool = False) -> Any:
    """GCA-INCE with capacity constraints: ``(1/n) KL(T || P)`` with ``P`` the Bregman–Dykstra
    projection of ``K`` onto ``{P 1 = T 1} ∩ {P^T 1 = T^T 1} ∩ {P_ij <= kappa where T_ij = 0}``
    after ``n_iter`` cycles.

    Each negative pair may hold at most ``kappa`` of the plan's mass (a row holds ``(T 1)_i``, 1
    for pairs of views), so that a few very similar negatives (false negatives, duplicates)
    cannot absorb a row; ``kappa >= 1`` leaves GCA-INCE. The positives are not bounded. The
    gradient is the array library's own autodiff through the projections (the cycles are
    written with array-API operations). Call forms and the other arguments as
    [`otcl.gca_ince`][otcl.gca_ince]; default ``eps = 0.5``, ``kappa = 0.1``.
    """
    from otcl.alignment.losses import (
        _constrained_loss,
        _embedding_batch,
        as_count,
        resolve_temperature,
    )
    from otcl.solvers.bregman import ColumnMarginal, RowMarginal, UpperBound
    from otcl.solvers.problem import validate_positive

    kappa = validate_positive("kappa", kappa, allow_inf=True)
    n_iter = as_count("n_iter", n_iter, minimum=1)
    batch, tgt = _embedding_batch(z1, z2, layout=layout, n_views=n_views, metric=metric,
                                  labels=labels, target=target)
    xp = batch.xp
    T = tgt.to_dense(batch.reference)
    bound = xp.where(T > 0, xp.full_like(T, math.inf), xp.full_like(T, kappa))
    constraints = [RowMarginal(), ColumnMarginal(), UpperBound(bound)]
    return _constrained_loss(batch, tgt, constraints, eps=resolve_temperature(eps, temperature),
                             n_iter=n_iter, divergence="kl", reduction=reduction,
                             return_details=return_details)
