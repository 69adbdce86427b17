"""Sizes and hyper-parameters of the study, in three presets: ``tiny``, ``quick``, ``full``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

__all__ = ["LOSS_NAMES", "PRESETS", "SECTIONS", "LossSettings", "Setting", "StudyConfig", "preset"]

LOSS_NAMES = ("INCE", "GCA-INCE", "RINCE", "GCA-RINCE", "GCA-UOT")
SECTIONS = ("equivalences", "contrastive", "domain")


@dataclass(frozen=True)
class LossSettings:
    """Hyper-parameters of the five losses (cosine cost, cross-view ``N x N`` plan).

    ``eps`` is the temperature / entropic strength, ``n_iter`` the Sinkhorn rounds of the GCA
    variants, ``q`` and ``lam`` RINCE's exponent and negative weight, ``rho`` GCA-UOT's KL
    marginal penalty (the paper's lambda_1 = lambda_2).
    """

    eps: float = 0.5
    n_iter: int = 10
    q: float = 0.6
    lam: float = 0.01
    rho: float = 0.2


@dataclass(frozen=True)
class Setting:
    """A training condition: an augmentation strength and a share of false-positive pairs."""

    name: str
    augmentation: str
    fp_fraction: float


@dataclass(frozen=True)
class StudyConfig:
    """Everything that determines a study run (recorded verbatim in ``results.json``)."""

    size: str
    seed: int = 0
    n_seeds: int = 3
    device: str = "cpu"
    sections: tuple[str, ...] = SECTIONS
    # -- section 1: equivalences on random embeddings
    eq_n: int = 64
    eq_d: int = 16
    eq_eps: float = 0.5
    kl_half_steps: int = 40
    # -- section 2: contrastive training on digits
    losses: tuple[str, ...] = LOSS_NAMES
    loss: LossSettings = field(default_factory=LossSettings)
    settings: tuple[Setting, ...] = (
        Setting("standard", "standard", 0.0),
        Setting("noisy", "strong", 0.2),
    )
    epochs: int = 50
    batch_size: int = 256
    hidden: int = 256
    out_dim: int = 32
    lr: float = 1e-3
    shots: int = 5
    shot_draws: int = 4
    auc_fp_fraction: float = 0.2
    auc_batch: int = 256
    auc_eps: tuple[float, ...] = (0.05, 0.1, 0.2, 0.5)
    # -- section 3: domain prior on synthetic multi-domain data
    domain_deltas: tuple[float, ...] = (-2.0, -0.5, 0.0, 0.5, 2.0)
    domain_base: float = 1.0
    domain_n_per_domain: int = 300
    domain_epochs: int = 45
    domain_batch: int = 256
    domain_seeds: int = 2

    def replace(self, **changes: object) -> StudyConfig:
        """A copy with ``changes`` applied."""
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


PRESETS: dict[str, StudyConfig] = {
    # A smoke test of the whole pipeline (tens of seconds); its numbers mean nothing.
    "tiny": StudyConfig(
        size="tiny",
        n_seeds=1,
        eq_n=24,
        eq_d=8,
        kl_half_steps=12,
        epochs=2,
        batch_size=128,
        hidden=64,
        out_dim=16,
        shot_draws=1,
        auc_batch=128,
        domain_deltas=(-1.0, 0.0, 1.0),
        domain_n_per_domain=60,
        domain_epochs=2,
        domain_batch=64,
        domain_seeds=1,
    ),
    # The default: a few minutes on two CPU cores.
    "quick": StudyConfig(size="quick"),
    # More seeds, longer training, a denser alpha - beta sweep.
    "full": StudyConfig(
        size="full",
        n_seeds=5,
        epochs=150,
        shot_draws=10,
        settings=(
            Setting("standard", "standard", 0.0),
            Setting("strong-aug", "strong", 0.0),
            Setting("false-pos", "standard", 0.2),
            Setting("noisy", "strong", 0.2),
        ),
        domain_deltas=(-2.0, -1.0, -0.5, -0.2, 0.0, 0.2, 0.5, 1.0, 2.0),
        domain_n_per_domain=500,
        domain_epochs=100,
        domain_seeds=3,
    ),
}


def preset(size: str) -> StudyConfig:
    """The preset called ``size`` (``"tiny"``, ``"quick"`` or ``"full"``)."""
    if size not in PRESETS:
        raise ValueError(f"size must be one of {tuple(PRESETS)}, got {size!r}")
    return PRESETS[size]
