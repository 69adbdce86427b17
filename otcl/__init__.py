"""otcl: contrastive losses as entropic / unbalanced optimal-transport alignment problems.

The same algorithms run on NumPy, CuPy, PyTorch (CPU and CUDA) and any array-API library.

* Solvers: [`sinkhorn`][otcl.solvers.sinkhorn.sinkhorn] (balanced, semi-relaxed, unbalanced; kernel
  / stabilized / log domain), [`row_projection`][otcl.row_projection] (the one-step projection
  behind InfoNCE).
* Geometry: [`cost_matrix`][otcl.cost_matrix], [`view_batch`][otcl.view_batch],
  [`partner_index`][otcl.partner_index].
* Losses: [`info_nce`][otcl.info_nce], [`gca_ince`][otcl.gca_ince], [`rince`][otcl.rince],
  [`gca_rince`][otcl.gca_rince], [`gca_uot`][otcl.gca_uot], [`iot`][otcl.iot],
  [`iot_uni`][otcl.iot_uni], and the generic [`alignment_loss`][otcl.alignment_loss]; the paper's
  official configurations by name: [`official_config`][otcl.official_config]; beyond InfoNCE:
  [`swav_codes`][otcl.swav_codes] (SwAV's Sinkhorn–Knopp codes), [`byol`][otcl.byol],
  [`gca_capacity`][otcl.gca_capacity].
* Targets: [`pair_target`][otcl.pair_target], [`label_target`][otcl.label_target],
  [`domain_prior`][otcl.domain_prior].
* Constraint sets: [`bregman_projection`][otcl.bregman_projection] with
  [`RowMarginal`][otcl.RowMarginal], [`ColumnMarginal`][otcl.ColumnMarginal],
  [`UpperBound`][otcl.UpperBound], [`LowerBound`][otcl.LowerBound], [`TotalMass`][otcl.TotalMass]
  (Bregman–Dykstra).
* Gradients without autograd: [`value_and_grad`][otcl.value_and_grad] (NumPy, CuPy, array-API).
* PyTorch modules live in [`otcl.torch`][otcl.torch] (imported on demand).
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
