"""The study's view of the library: the losses of ``otcl.torch`` and the alignment helpers.

The study never re-implements a loss: it builds the modules of [`otcl.torch`][otcl.torch] by name.
"""

from __future__ import annotations

import importlib
from typing import Any

from torch import nn

from otcl.experiments.config import EXTRA_LOSSES, LOSS_NAMES, LossSettings

__all__ = ["build_loss", "missing_features"]

_LOSS_CLASSES = {
    "INCE": "InfoNCE",
    "GCA-INCE": "GCAInfoNCE",
    "RINCE": "RINCE",
    "GCA-RINCE": "GCARINCE",
    "GCA-UOT": "GCAUOT",
    "GCA-capacity": "GCACapacity",
}


def _loss_kwargs(name: str, s: LossSettings) -> dict[str, Any]:
    if name == "INCE":
        return {"eps": s.eps}
    if name == "GCA-INCE":
        return {"eps": s.eps, "n_iter": s.n_iter}
    if name == "RINCE":
        return {"eps": s.eps, "q": s.q, "lam": s.lam}
    if name == "GCA-RINCE":
        return {"eps": s.eps, "q": s.q, "lam": s.lam, "n_iter": s.n_iter}
    if name == "GCA-UOT":
        return {"eps": s.eps, "rho": s.rho, "n_iter": s.n_iter}
    if name == "GCA-capacity":
        return {"eps": s.eps, "kappa": s.kappa, "n_iter": s.n_iter}
    raise ValueError(f"loss must be one of {LOSS_NAMES + EXTRA_LOSSES}, got {name!r}")


def build_loss(name: str, settings: LossSettings, layout: str | None = None) -> nn.Module:
    """The ``otcl.torch`` module for loss ``name`` (one of
    [`LOSS_NAMES`][otcl.experiments.config.LOSS_NAMES]).

    ``layout=None`` keeps the library's two-view default (the all-views ``2N x 2N`` problem);
    ``"cross"`` selects the one-direction ``N x N`` problem.
    """
    kwargs = _loss_kwargs(name, settings)
    if layout is not None:
        kwargs["layout"] = layout
    module = importlib.import_module("otcl.torch")
    return getattr(module, _LOSS_CLASSES[name])(**kwargs)


def missing_features(sections: tuple[str, ...]) -> list[str]:
    """Names of the library features that ``sections`` need but that cannot be imported."""
    missing: list[str] = []
    if "equivalences" in sections:
        try:
            eq = importlib.import_module("otcl.alignment.equivalences")
            for fn in ("run_all", "kl_curve"):
                if not hasattr(eq, fn):
                    missing.append(f"otcl.alignment.equivalences.{fn}")
        except ImportError:
            missing.append("otcl.alignment.equivalences")
    need_losses = "contrastive" in sections or "domain" in sections
    if need_losses:
        try:
            module = importlib.import_module("otcl.torch")
            missing.extend(
                f"otcl.torch.{cls}" for cls in _LOSS_CLASSES.values() if not hasattr(module, cls)
            )
        except ImportError:
            missing.append("otcl.torch")
    if "domain" in sections:
        try:
            targets = importlib.import_module("otcl.alignment.targets")
            if not hasattr(targets, "domain_prior"):
                missing.append("otcl.alignment.targets.domain_prior")
        except ImportError:
            missing.append("otcl.alignment.targets")
    return missing
