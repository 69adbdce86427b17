"""The main job, ``otcl study``: the paper's claims reproduced at toy scale on embedded data.

Sections: equivalences on random embeddings on every backend (:mod:`.equivalence_section`),
contrastive training on sklearn digits (:mod:`.contrastive`), a domain-aware target plan on
synthetic multi-domain data (:mod:`.domain`); verdicts on the claims (:mod:`.claims`), figures
and ``report.md`` (:mod:`.report`); ``otcl check`` (:mod:`.selfcheck`). This package imports
torch, scikit-learn and matplotlib (the ``study`` extra).
"""

from otcl.experiments.config import LOSS_NAMES, PRESETS, SECTIONS, StudyConfig, preset
from otcl.experiments.study import run_study

__all__ = ["LOSS_NAMES", "PRESETS", "SECTIONS", "StudyConfig", "preset", "run_study"]
