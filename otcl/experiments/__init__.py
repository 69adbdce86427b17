"""The main job, ``otcl study``: the paper's claims tested on paired seeds at small scale.

Sections: equivalences on random embeddings on every backend
([`equivalence_section`][otcl.experiments.equivalence_section]), contrastive training on MNIST-1D, a
latent-recovery testbed or sklearn digits ([`contrastive`][otcl.experiments.contrastive],
[`datasets`][otcl.experiments.datasets]), a domain-aware target plan on synthetic multi-domain data
([`domain`][otcl.experiments.domain]); paired effects, confidence intervals and the verdict rule
([`stats`][otcl.experiments.stats]), verdicts on the claims ([`claims`][otcl.experiments.claims]),
figures and ``report.md`` ([`report`][otcl.experiments.report]); ``otcl check``
([`selfcheck`][otcl.experiments.selfcheck]). This package needs torch, scikit-learn, matplotlib and
mnist1d (the ``study`` extra); importing it imports only the configuration.
"""

from typing import Any

from otcl.experiments.config import LOSS_NAMES, PRESETS, SECTIONS, StudyConfig, preset

__all__ = ["LOSS_NAMES", "PRESETS", "SECTIONS", "StudyConfig", "preset", "run_study"]


def __getattr__(name: str) -> Any:
    if name == "run_study":
        from otcl.experiments.study import run_study

        return run_study
    raise AttributeError(f"module 'otcl.experiments' has no attribute {name!r}")
