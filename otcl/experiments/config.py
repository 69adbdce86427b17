"""Sizes and hyper-parameters of the study, in three presets: ``tiny``, ``quick``, ``full``.

The verdict rule and the margins of the claims are part of the configuration: they are fixed
before anything runs, recorded in ``results.json`` and printed at the top of the report.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

__all__ = [
    "DATASETS",
    "EXTRA_LOSSES",
    "LOSS_NAMES",
    "PRESETS",
    "SECTIONS",
    "LossSettings",
    "Margins",
    "Setting",
    "StudyConfig",
    "preset",
]

LOSS_NAMES = ("INCE", "GCA-INCE", "RINCE", "GCA-RINCE", "GCA-UOT")
"""The paper's five losses (the claims compare these)."""
EXTRA_LOSSES = ("GCA-capacity",)
"""Losses of the family beyond the paper's five, trained beside them where a preset asks for
them: GCA-capacity bounds each negative pair's plan mass (``otcl.torch.GCACapacity``)."""
SECTIONS = ("equivalences", "contrastive", "domain")
DATASETS = ("mnist1d", "latents", "digits", "cifar10")


@dataclass(frozen=True)
class LossSettings:
    """Hyper-parameters of the five losses, passed explicitly to every ``otcl.torch`` module.

    The study calls ``loss(z1, z2)``: the two-view (all-views ``2N x 2N``) problem.

    ``eps`` is the temperature / entropic strength, ``n_iter`` the Sinkhorn rounds of the GCA
    variants, ``q`` and ``lam`` RINCE's exponent and negative weight, ``rho`` GCA-UOT's KL
    marginal penalty (the paper's lambda_1 = lambda_2), ``kappa`` GCA-capacity's bound on a
    negative pair's plan mass (rows carry mass 1: at batch 256 the ``2N - 2 = 510`` negatives of
    a row hold about 0.002 each, so 0.01 caps a negative at five times its uniform share).
    """

    eps: float = 0.5
    n_iter: int = 10
    q: float = 0.6
    lam: float = 0.01
    rho: float = 0.2
    kappa: float = 0.01


@dataclass(frozen=True)
class Margins:
    """The ``X`` of "no effect above X" for each kind of effect (see
    [`stats`][otcl.experiments.stats]).

    ``score``: probe accuracy (fraction; 0.01 = 1 point) or R^2 of latent recovery;
    ``uniformity``: Wang-Isola uniformity; ``auc``: detection AUC; ``overhead``: relative time
    per training step (0.05 = 5%) that still counts as "little overhead".
    """

    score: float = 0.01
    uniformity: float = 0.05
    auc: float = 0.02
    overhead: float = 0.05


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
    dataset: str = "mnist1d"
    data_dir: str | None = None
    seed: int = 0
    n_seeds: int = 5
    level: float = 0.95
    margins: Margins = field(default_factory=Margins)
    device: str = "cpu"
    sections: tuple[str, ...] = SECTIONS
    # -- section 1: equivalences on random embeddings
    eq_n: int = 64
    eq_d: int = 16
    eq_eps: float = 0.5
    kl_half_steps: int = 40
    # -- section 2: contrastive training (dataset sizes: mnist1d / latents; digits uses all)
    n_train: int = 3000
    n_test: int = 4000
    view_shift: int = 4
    view_scale: float = 0.1
    latent_dim: int = 10
    latent_kappa: float = 20.0
    latent_layers: int = 3
    latent_epochs: int = 20
    warmup_steps: int = 3
    timing_rounds: int = 10
    losses: tuple[str, ...] = LOSS_NAMES
    loss: LossSettings = field(default_factory=LossSettings)
    settings: tuple[Setting, ...] = (
        Setting("standard", "standard", 0.0),
        Setting("noisy", "strong", 0.2),
    )
    epochs: int = 5
    batch_size: int = 256
    hidden: int = 128
    out_dim: int = 32
    lr: float = 2e-3
    auc_fp_fraction: float = 0.2
    auc_batch: int = 256
    # -- CIFAR-10 (``dataset="cifar10"``, read from ``data_dir``): ResNet-18 runs per loss
    cifar_epochs: int = 1
    cifar_batch: int = 512
    cifar_seeds: int = 1
    cifar_limit_steps: int | None = None
    # -- section 3: domain prior on synthetic multi-domain data
    domain_deltas: tuple[float, ...] = (-1.0, 1.0)
    domain_base: float = 1.0
    domain_n_per_domain: int = 300
    domain_epochs: int = 20
    domain_batch: int = 256
    domain_seeds: int = 5

    def replace(self, **changes: object) -> StudyConfig:
        """A copy with ``changes`` applied."""
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


PRESETS: dict[str, StudyConfig] = {
    # A smoke test of the whole pipeline (seconds); its numbers mean nothing.
    "tiny": StudyConfig(
        size="tiny",
        n_seeds=2,
        timing_rounds=2,
        latent_epochs=1,
        eq_n=24,
        eq_d=8,
        kl_half_steps=12,
        n_train=512,
        n_test=256,
        epochs=1,
        batch_size=128,
        hidden=32,
        out_dim=16,
        auc_batch=128,
        domain_deltas=(-1.0, 1.0),
        domain_n_per_domain=60,
        domain_epochs=2,
        domain_batch=64,
        domain_seeds=2,
        cifar_batch=8,
        cifar_limit_steps=1,
    ),
    # The default: within 5 minutes on two CPU cores.
    "quick": StudyConfig(size="quick"),
    # Twelve seeds, more training data, a 10 000-sample test set (less probe noise), longer
    # training and a denser alpha - beta sweep: within 45 minutes on two idle CPU cores.
    "full": StudyConfig(
        size="full",
        losses=LOSS_NAMES + EXTRA_LOSSES,
        n_seeds=12,
        n_train=5000,
        n_test=10000,
        epochs=10,
        domain_deltas=(-1.0, -0.5, 0.0, 0.5, 1.0),
        domain_epochs=30,
        # 24 seeds of 1500 samples per domain: with 12 seeds of 300 the domain-prior effect's
        # interval was 1.8 points wide (half-width), with 12 of 1500 still 1.26
        domain_seeds=24,
        domain_n_per_domain=1500,
        cifar_epochs=20,
        cifar_seeds=3,
        latent_epochs=40,
    ),
}


def preset(size: str) -> StudyConfig:
    """The preset called ``size`` (``"tiny"``, ``"quick"`` or ``"full"``)."""
    if size not in PRESETS:
        raise ValueError(f"size must be one of {tuple(PRESETS)}, got {size!r}")
    return PRESETS[size]
