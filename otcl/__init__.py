"""otcl: contrastive losses as entropic / unbalanced optimal-transport alignment problems.

The same algorithms run on NumPy, CuPy, PyTorch (CPU and CUDA) and any array-API library.

* Solvers: :func:`sinkhorn` (balanced, semi-relaxed, unbalanced; kernel / stabilized / log
  domain), :func:`row_projection` (the one-step projection behind InfoNCE).
* Geometry: :func:`cost_matrix`, :func:`view_batch`, :func:`partner_index`.
* Losses: :func:`info_nce`, :func:`gca_ince`, :func:`rince`, :func:`gca_rince`, :func:`gca_uot`,
  :func:`iot`, :func:`iot_uni`, and the generic :func:`alignment_loss`.
* Targets: :func:`pair_target`, :func:`label_target`, :func:`domain_prior`.
* PyTorch modules live in :mod:`otcl.torch` (imported on demand).
"""

from otcl.alignment import (
    LossDetails,
    Target,
    alignment_loss,
    domain_prior,
    gca_ince,
    gca_rince,
    gca_uot,
    hs_ince,
    hs_rince,
    info_nce,
    iot,
    iot_uni,
    label_target,
    pair_target,
    rince,
)
from otcl.geometry import cost_matrix, partner_index, view_batch
from otcl.solvers import ConvergenceWarning, Transport, row_projection, sinkhorn

__version__ = "0.1.0"

__all__ = [
    "ConvergenceWarning",
    "LossDetails",
    "Target",
    "Transport",
    "__version__",
    "alignment_loss",
    "cost_matrix",
    "domain_prior",
    "gca_ince",
    "gca_rince",
    "gca_uot",
    "hs_ince",
    "hs_rince",
    "info_nce",
    "iot",
    "iot_uni",
    "label_target",
    "pair_target",
    "partner_index",
    "rince",
    "row_projection",
    "sinkhorn",
    "view_batch",
]
