"""otcl: contrastive losses as entropic / unbalanced optimal-transport alignment problems.

The same algorithms run on NumPy, CuPy, PyTorch (CPU and CUDA) and any array-API library.

* Solvers: :func:`sinkhorn` (balanced, semi-relaxed, unbalanced; kernel / stabilized / log
  domain), :func:`row_projection` (the one-step projection behind InfoNCE).
* Geometry: :func:`cost_matrix`, :func:`view_batch`, :func:`partner_index`.
* Losses: :func:`info_nce`, :func:`gca_ince`, :func:`rince`, :func:`gca_rince`, :func:`gca_uot`,
  :func:`iot`, :func:`iot_uni`, and the generic :func:`alignment_loss`; the paper's official
  configurations by name: :func:`official_config`; beyond InfoNCE: :func:`swav_codes` (SwAV's
  Sinkhorn–Knopp codes), :func:`byol`, :func:`gca_capacity`.
* Targets: :func:`pair_target`, :func:`label_target`, :func:`domain_prior`.
* Constraint sets: :func:`bregman_projection` with :class:`RowMarginal`, :class:`ColumnMarginal`,
  :class:`UpperBound`, :class:`LowerBound`, :class:`TotalMass` (Bregman–Dykstra).
* Gradients without autograd: :func:`value_and_grad` (NumPy, CuPy, array-API).
* PyTorch modules live in :mod:`otcl.torch` (imported on demand).
"""

from otcl._version import __version__
from otcl.alignment import (
    LossDetails,
    Target,
    alignment_loss,
    byol,
    domain_prior,
    gca_capacity,
    gca_ince,
    gca_rince,
    gca_uot,
    hs_ince,
    hs_rince,
    info_nce,
    iot,
    iot_uni,
    label_target,
    official_config,
    pair_target,
    rince,
    swav_codes,
)
from otcl.geometry import cost_matrix, partner_index, view_batch
from otcl.grad import value_and_grad
from otcl.solvers import (
    BregmanResult,
    ColumnMarginal,
    ConvergenceWarning,
    LowerBound,
    NonFiniteGradientWarning,
    RowMarginal,
    TotalMass,
    Transport,
    UpperBound,
    bregman_projection,
    row_projection,
    sinkhorn,
)

__all__ = [
    "BregmanResult",
    "ColumnMarginal",
    "ConvergenceWarning",
    "LossDetails",
    "LowerBound",
    "NonFiniteGradientWarning",
    "RowMarginal",
    "Target",
    "TotalMass",
    "Transport",
    "UpperBound",
    "__version__",
    "alignment_loss",
    "bregman_projection",
    "byol",
    "cost_matrix",
    "domain_prior",
    "gca_capacity",
    "gca_ince",
    "gca_rince",
    "gca_uot",
    "hs_ince",
    "hs_rince",
    "info_nce",
    "iot",
    "iot_uni",
    "label_target",
    "official_config",
    "pair_target",
    "partner_index",
    "rince",
    "row_projection",
    "sinkhorn",
    "swav_codes",
    "value_and_grad",
    "view_batch",
]
