"""The official configurations of the paper's code, by name, as keyword arguments of otcl's losses.

Each entry quotes its source in the paper's repository (``nerdslab/gca``): a configuration file
under ``config/`` or a command of its ``README.md``. The code's names map to otcl's as
``epsilon -> eps``, ``iterations -> n_iter``, ``relax_items1 = relax_items2 -> rho``; ``r1``,
``r2``, ``lam``, ``q`` keep their names. Use them as::

    otcl.gca_uot(z1, z2, **otcl.official_config("gca_uot", "cifar100-config"))
    otcl.torch.GCAUOT(**otcl.official_config("gca_uot", "svhn-readme"))

The ImageNet-100 configuration is not listed: its file (``gca_loss_imagenet.py``) swaps the
meaning of ``r1`` and ``r2`` and its column step is not a Sinkhorn step (GCA-NOTES D5, D11), so
no otcl keyword set reproduces it.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

__all__ = ["OFFICIAL_CONFIGS", "official_config"]

_UOT_BASE = {"eps": 0.5, "n_iter": 10, "rho": 0.2, "lam": 0.01, "r1": 1.0}

OFFICIAL_CONFIGS: MappingProxyType = MappingProxyType({
    "gca_uot": MappingProxyType({
        # the default of otcl.gca_uot: README "Pretraining a Model" (CIFAR-10) command,
        # `lam=0.01 q=0.6 r1=1 r2=0.2`, on config/simclr_cifar10.yaml (epsilon 0.5,
        # iterations 10, relax_items 0.2)
        "cifar10-readme": MappingProxyType({**_UOT_BASE, "r2": 0.2, "q": 0.6}),
        # config/simclr_cifar10.yaml alone: q 0.98, r2 0.02
        "cifar10-config": MappingProxyType({**_UOT_BASE, "r2": 0.02, "q": 0.98}),
        # config/simclr_cifar100.yaml: q 0.98, r2 1
        "cifar100-config": MappingProxyType({**_UOT_BASE, "r2": 1.0, "q": 0.98}),
        # config/simclr_svhn.yaml: q 0.6, r2 0.02
        "svhn-config": MappingProxyType({**_UOT_BASE, "r2": 0.02, "q": 0.6}),
        # README SVHN command, `q=0.6 r1=1 r2=0.01`, on config/simclr_svhn.yaml
        "svhn-readme": MappingProxyType({**_UOT_BASE, "r2": 0.01, "q": 0.6}),
        # the class defaults of gca_loss_cifar.gca_uot (relax_items 1e-4, r1 = r2 = 1)
        "class-defaults": MappingProxyType({**_UOT_BASE, "rho": 1e-4, "r2": 1.0, "q": 0.6}),
    }),
    "gca_ince": MappingProxyType({
        # every config file: epsilon 0.5, iterations 10
        "config": MappingProxyType({"eps": 0.5, "n_iter": 10}),
    }),
    "rince": MappingProxyType({
        # config/simclr_imagenet100.yaml and the README commands: lam 0.01, q 0.6
        "readme": MappingProxyType({"eps": 0.5, "lam": 0.01, "q": 0.6}),
        # config/simclr_cifar10.yaml: q 0.98
        "cifar10-config": MappingProxyType({"eps": 0.5, "lam": 0.01, "q": 0.98}),
    }),
})
"""``loss name -> configuration name -> keyword arguments`` (read-only)."""


def official_config(loss: str, name: str) -> dict[str, Any]:
    """The keyword arguments of an official configuration (a fresh ``dict``).

    ``loss`` is ``"gca_uot"``, ``"gca_ince"`` or ``"rince"`` (``"gca_rince"`` shares RINCE's
    entries); ``name`` one of ``OFFICIAL_CONFIGS[loss]`` (module docstring for the sources).
    """
    key = "rince" if loss == "gca_rince" else loss
    if key not in OFFICIAL_CONFIGS:
        raise ValueError(f"loss must be one of {sorted(OFFICIAL_CONFIGS)} or 'gca_rince', "
                         f"got {loss!r}")
    table = OFFICIAL_CONFIGS[key]
    if name not in table:
        raise ValueError(f"no official configuration {name!r} for {loss}; known: {sorted(table)}")
    out = dict(table[name])
    if loss == "gca_rince":
        out["n_iter"] = 10
    return out
