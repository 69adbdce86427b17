"""PyTorch adapters: loss modules with gradient modes, the differentiable inner solve, and
distributed training. Importing this module imports torch."""

from otcl.torch.losses import (
    GCARINCE,
    GCAUOT,
    GRAD_MODES,
    IOT,
    AlignmentLoss,
    GCAInfoNCE,
    InfoNCE,
    IOTUni,
    RINCE,
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
    "IOT",
    "RINCE",
    "AlignmentLoss",
    "GCAInfoNCE",
    "IOTUni",
    "InfoNCE",
    "TorchInner",
    "gca_ince",
    "gca_rince",
    "gca_uot",
    "info_nce",
    "iot",
    "iot_uni",
    "rince",
]
