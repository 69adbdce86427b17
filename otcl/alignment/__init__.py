"""The GCA alignment layer: target plans, outer divergences and the family of losses."""

from otcl.alignment.codes import swav_codes
from otcl.alignment.family import byol, gca_capacity
from otcl.alignment.losses import (
    LossDetails,
    alignment_loss,
    gca_ince,
    gca_rince,
    gca_uot,
    hs_ince,
    hs_rince,
    info_nce,
    iot,
    iot_uni,
    rince,
)
from otcl.alignment.official import OFFICIAL_CONFIGS, official_config
from otcl.alignment.targets import Target, domain_prior, label_target, pair_target

__all__ = [
    "OFFICIAL_CONFIGS",
    "LossDetails",
    "Target",
    "alignment_loss",
    "byol",
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
    "rince",
    "swav_codes",
]
