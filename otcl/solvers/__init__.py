"""Solvers: entropic / unbalanced Sinkhorn and Bregman–Dykstra projections."""

from otcl.solvers.result import ConvergenceWarning, Transport
from otcl.solvers.sinkhorn import row_projection, sinkhorn

__all__ = ["ConvergenceWarning", "Transport", "row_projection", "sinkhorn"]
