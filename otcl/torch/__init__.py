"""PyTorch adapters: loss modules with gradient modes, the differentiable inner solve, and
distributed training. Importing this module imports torch."""

try:
    import torch  # noqa: F401  (imported first, so that a missing torch is one clear line)
except ModuleNotFoundError as exc:
    if exc.name != "torch":
        raise
    raise ImportError('otcl.torch needs PyTorch: pip install "otcl[torch]"', name="torch") from None

from otcl.torch.autograd import INNER_GRAD_MODES, InnerSolve, inner_potentials
from otcl.torch.losses import (
    BYOL,
    GCARINCE,
    GCAUOT,
    GRAD_MODES,
    IOT,
    RINCE,
    AlignmentLoss,
    GCACapacity,
    GCAInfoNCE,
    InfoNCE,
    IOTUni,
    MemoryBank,
    TorchInner,
    gca_ince,
    gca_rince,
    gca_uot,
    info_nce,
    iot,
    iot_uni,
    rince,
)
from otcl.torch.sharded import SHARDED_GRAD_MODES, SHARDED_LOSSES
from otcl.torch.swav import SwAVLoss, swav_codes

__all__ = [
    "BYOL",
    "GCARINCE",
    "GCAUOT",
    "GRAD_MODES",
    "INNER_GRAD_MODES",
    "IOT",
    "RINCE",
    "SHARDED_GRAD_MODES",
    "SHARDED_LOSSES",
    "AlignmentLoss",
    "GCACapacity",
    "GCAInfoNCE",
    "IOTUni",
    "InfoNCE",
    "InnerSolve",
    "MemoryBank",
    "SwAVLoss",
    "TorchInner",
    "gca_ince",
    "gca_rince",
    "gca_uot",
    "info_nce",
    "inner_potentials",
    "iot",
    "iot_uni",
    "rince",
    "swav_codes",
]
