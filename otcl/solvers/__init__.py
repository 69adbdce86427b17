"""Solvers: entropic / unbalanced Sinkhorn and Bregman–Dykstra projections."""

from otcl.solvers.bregman import (
    BregmanResult,
    ColumnMarginal,
    Constraint,
    LowerBound,
    RowMarginal,
    TotalMass,
    UpperBound,
    bregman_projection,
)
from otcl.solvers.result import ConvergenceWarning, NonFiniteGradientWarning, Transport
from otcl.solvers.sinkhorn import row_projection, sinkhorn

__all__ = [
    "BregmanResult",
    "ColumnMarginal",
    "Constraint",
    "ConvergenceWarning",
    "LowerBound",
    "NonFiniteGradientWarning",
    "RowMarginal",
    "TotalMass",
    "Transport",
    "UpperBound",
    "bregman_projection",
    "row_projection",
    "sinkhorn",
]
