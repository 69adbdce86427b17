"""PyTorch adapters: loss modules with gradient modes, the differentiable inner solve, and
distributed training. Importing this module imports torch."""

from otcl.torch.autograd import INNER_GRAD_MODES, InnerSolve, inner_potentials
from otcl.torch.losses import (
    GCARINCE,
    GCAUOT,
    GRAD_MODES,
    IOT,
    RINCE,
    AlignmentLoss,
    GCAInfoNCE,
    InfoNCE,
    IOTUni,
    TorchInner,
    gca_ince,
    gca_rince,
    gca_uot,
    info_nce,
    iot,
    iot_uni,
    rince,
)

__all__ = [
    "GCARINCE",
    "GCAUOT",
    "GRAD_MODES",
    "INNER_GRAD_MODES",
    "IOT",
    "RINCE",
    "AlignmentLoss",
    "GCAInfoNCE",
    "IOTUni",
    "InfoNCE",
    "InnerSolve",
    "TorchInner",
    "gca_ince",
    "gca_rince",
    "gca_uot",
    "info_nce",
    "inner_potentials",
    "iot",
    "iot_uni",
    "rince",
]
