"""Section 1: the paper's equivalences, measured on random embeddings on every backend.

Runs [`otcl.alignment.equivalences.run_all`][otcl.alignment.equivalences.run_all] (each identity
computed by two independent routes; the record holds both sides and their gap) on NumPy, PyTorch-CPU
and, where a GPU is present, PyTorch-CUDA and CuPy, and records the half-step curve ``KL(I || P^(k))
/ N`` of [`otcl.alignment.equivalences.kl_curve`][otcl.alignment.equivalences.kl_curve], whose first
point is InfoNCE and whose later points are GCA-INCE after more and more Sinkhorn half-steps.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from otcl.experiments.config import StudyConfig
from otcl.experiments.selfcheck import available_backends, equivalence_device

__all__ = ["curve_summary", "run_equivalences"]


def _finite(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def curve_summary(curve: np.ndarray) -> dict[str, Any]:
    """The curve plus what the claims need: first and last value, largest rise between steps."""
    curve = np.asarray(curve, dtype=float)
    rises = np.diff(curve)
    return {
        "kl": curve.tolist(),
        "first": float(curve[0]),
        "last": float(curve[-1]),
        "max_rise": float(rises.max()) if rises.size else 0.0,
        "decrease": float(curve[0] - curve[-1]),
    }


def run_equivalences(cfg: StudyConfig) -> dict[str, Any]:
    """Equivalence records on all backends and the KL curve on one random batch."""
    from otcl.alignment import equivalences

    records = []
    backends = available_backends(None)
    for be in backends:
        for r in equivalences.run_all(be.library, device=equivalence_device(be), n=cfg.eq_n,
                                      d=cfg.eq_d, eps=cfg.eq_eps, seed=cfg.seed):
            records.append({
                "backend": be.name,
                "name": str(r.name),
                "lhs": _finite(float(r.lhs)),
                "rhs": _finite(float(r.rhs)),
                "gap": float(r.gap),
                "tol": float(r.tol),
                "holds": bool(r.holds),
                "one_sided": bool(getattr(r, "one_sided", False)),
            })
    rng = np.random.default_rng(cfg.seed)
    z1 = rng.standard_normal((cfg.eq_n, cfg.eq_d))
    z2 = z1 + 0.5 * rng.standard_normal((cfg.eq_n, cfg.eq_d))
    curve = equivalences.kl_curve(z1, z2, eps=cfg.eq_eps, n_half_steps=cfg.kl_half_steps)
    return {
        "backends": [be.name for be in backends],
        "n": cfg.eq_n,
        "d": cfg.eq_d,
        "eps": cfg.eq_eps,
        "records": records,
        "all_hold": all(r["holds"] for r in records),
        "kl_curve_random": curve_summary(curve),
    }
