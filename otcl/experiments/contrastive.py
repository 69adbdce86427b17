"""Section 2: contrastive training on sklearn digits with the five losses.

For every setting (augmentation strength, share of false-positive pairs), loss and seed, a fresh
encoder is trained on the training split and evaluated with frozen features:

* ``probe``: linear-probe (logistic regression) test accuracy on all training labels;
* ``few_shot``: the same with ``shots`` labels per class, averaged over random draws;
* ``alignment`` / ``uniformity``: Wang–Isola metrics of the test embeddings (alignment on
  pairs of *standard* views, so that settings are comparable);
* ``auc_row_mass``: on a held-out batch of test images in which a known share of second views
  was replaced by a view of another image, the ROC AUC of GCA-UOT's row mass ``P 1`` for
  flagging those pairs (lower mass = corrupted); ``auc_cosine`` is the same for the plain
  positive-pair cosine, the obvious baseline detector; ``uot_row_mass_mean`` is the mean row
  mass (the target's is 1) and ``uot_positive_share_clean`` the mean share ``P_ii / (P 1)_i``
  of a clean row's mass on its own positive.

All losses share the seeds of a repeat (same initial weights, same batches and views), so
differences between losses are paired.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from otcl.experiments.config import StudyConfig
from otcl.experiments.data import AUGMENTATIONS, DigitsSplit, load_digits_split, make_pairs
from otcl.experiments.metrics import (
    alignment,
    detection_auc,
    few_shot_probe,
    linear_probe,
    summarize,
    uniformity,
)
from otcl.experiments.models import Encoder
from otcl.experiments.registry import build_loss
from otcl.experiments.training import seed_everything, torch_generator, train_encoder

__all__ = ["METRICS", "run_contrastive"]

METRICS = ("probe", "few_shot", "alignment", "uniformity", "auc_row_mass", "auc_cosine",
           "final_loss", "train_seconds")

Tick = Callable[[str], None]


def repeat_seed(cfg: StudyConfig, k: int) -> int:
    """Seed of repeat ``k`` (shared by every loss and setting, so comparisons are paired)."""
    return cfg.seed * 1000 + k


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().double().numpy()


def _evaluate(enc: Encoder, split: DigitsSplit, tensors: dict[str, torch.Tensor],
              cfg: StudyConfig, setting_aug: str, uot: torch.nn.Module,
              seed: int, eps_meters: dict[float, torch.nn.Module] | None = None,
              ) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Metrics of one trained encoder, plus the held-out batch's row masses (for a figure)."""
    h_tr, _ = enc.features(tensors["x_train"])
    h_te, z_te = enc.features(tensors["x_test"])
    h_tr_np, h_te_np = _numpy(h_tr), _numpy(h_te)
    out = {
        "probe": linear_probe(h_tr_np, split.y_train, h_te_np, split.y_test),
        "few_shot": few_shot_probe(h_tr_np, split.y_train, h_te_np, split.y_test,
                                   shots=cfg.shots, draws=cfg.shot_draws,
                                   rng=np.random.default_rng(seed)),
        "uniformity": uniformity(_numpy(z_te)),
    }
    # evaluation draws use a fixed stream, identical for every encoder
    gen = torch_generator(10_007 + cfg.seed, tensors["x_test"].device)
    x_te = tensors["x_test"]
    with torch.no_grad():
        enc.eval()
        v1, v2 = AUGMENTATIONS["standard"](x_te, gen), AUGMENTATIONS["standard"](x_te, gen)
        out["alignment"] = alignment(_numpy(enc(v1)), _numpy(enc(v2)))
        held = x_te[: min(cfg.auc_batch, x_te.shape[0])]
        w1, w2, corrupted = make_pairs(held, AUGMENTATIONS[setting_aug], gen, cfg.auc_fp_fraction)
        z1, z2 = enc(w1), enc(w2)
        _, details = uot(z1, z2, return_details=True)
        row_mass = _numpy(details.row_mass)
        # share of each row's plan mass that sits on its own (possibly corrupted) positive
        diag = torch.diagonal(details.plan)
        share = _numpy(diag / details.row_mass)
        cos = _numpy(torch.nn.functional.cosine_similarity(z1, z2, dim=1))
        by_eps = {}
        for eps, meter in (eps_meters or {}).items():
            by_eps[eps] = _numpy(meter(z1, z2, return_details=True)[1].row_mass)
    flags = _numpy(corrupted).astype(bool)
    for eps, mass in by_eps.items():
        out[f"auc_row_mass_eps{eps:g}"] = detection_auc(-mass, flags)
    out["auc_row_mass"] = detection_auc(-row_mass, flags)
    out["auc_cosine"] = detection_auc(-cos, flags)
    out["uot_row_mass_mean"] = float(row_mass.mean())
    out["uot_positive_share_clean"] = float(share[~flags].mean()) if (~flags).any() else math.nan
    return out, {"row_mass": row_mass, "corrupted": flags}


def _baselines(split: DigitsSplit, tensors: dict[str, torch.Tensor], cfg: StudyConfig) -> dict:
    """Probe accuracies of raw pixels and of a randomly initialised (untrained) encoder."""
    seed_everything(2 * repeat_seed(cfg, 0))
    enc = Encoder(split.x_train.shape[1], hidden=cfg.hidden, out_dim=cfg.out_dim)
    enc = enc.to(tensors["x_train"].device)
    h_tr, _ = enc.features(tensors["x_train"])
    h_te, _ = enc.features(tensors["x_test"])
    out = {}
    for name, (a, b) in {
        "raw_pixels": (split.x_train, split.x_test),
        "random_encoder": (_numpy(h_tr), _numpy(h_te)),
    }.items():
        out[name] = {
            "probe": linear_probe(a, split.y_train, b, split.y_test),
            "few_shot": few_shot_probe(a, split.y_train, b, split.y_test, shots=cfg.shots,
                                       draws=cfg.shot_draws,
                                       rng=np.random.default_rng(cfg.seed)),
        }
    return out


def n_runs(cfg: StudyConfig) -> int:
    """Number of training runs of this section (for progress bars)."""
    return len(cfg.settings) * len(cfg.losses) * cfg.n_seeds


def run_contrastive(cfg: StudyConfig, device: torch.device, tick: Tick) -> dict[str, Any]:
    """Train and evaluate every (setting, loss, seed); ``tick`` is called after each run.

    Returns a JSON-ready dict: ``baselines``, ``settings[name][loss][metric]`` summaries
    (mean, std, per-seed values), ``paired_vs_ince`` differences, per-epoch training losses,
    and the held-out row masses of the GCA-UOT encoder (``row_mass_example``). The trained
    encoders of INCE and GCA-INCE at repeat 0 are returned under ``_encoders`` (not JSON).
    """
    split = load_digits_split(cfg.seed)
    tensors = {
        "x_train": torch.from_numpy(split.x_train).to(device),
        "x_test": torch.from_numpy(split.x_test).to(device),
    }
    uot_meter = build_loss("GCA-UOT", cfg.loss)
    eps_meters = {e: build_loss("GCA-UOT", dataclasses.replace(cfg.loss, eps=e))
                  for e in cfg.auc_eps}
    result: dict[str, Any] = {
        "data": {"n_train": len(split.y_train), "n_test": len(split.y_test), "dim": 64},
        "baselines": _baselines(split, tensors, cfg),
        "settings": {},
        "curves": {},
        "row_mass_example": {},
        "_encoders": {},
    }
    for setting in cfg.settings:
        aug = AUGMENTATIONS[setting.augmentation]
        per_loss: dict[str, Any] = {}
        curves: dict[str, list[list[float]]] = {}
        for loss_name in cfg.losses:
            loss = build_loss(loss_name, cfg.loss)
            values: dict[str, list[float]] = {m: [] for m in METRICS}
            curves[loss_name] = []
            for k in range(cfg.n_seeds):
                seed = repeat_seed(cfg, k)

                def sample(xb: torch.Tensor, gen: torch.Generator, _aug=aug,
                           _fp=setting.fp_fraction) -> tuple[torch.Tensor, torch.Tensor]:
                    v1, v2, _ = make_pairs(xb, _aug, gen, _fp)
                    return v1, v2

                def call(z1: torch.Tensor, z2: torch.Tensor, _idx: torch.Tensor,
                         _loss=loss) -> torch.Tensor:
                    return _loss(z1, z2)

                start = time.perf_counter()
                trained = train_encoder(
                    tensors["x_train"], call, sample, epochs=cfg.epochs,
                    batch_size=min(cfg.batch_size, len(split.y_train)), seed=seed,
                    hidden=cfg.hidden, out_dim=cfg.out_dim, lr=cfg.lr,
                )
                seconds = time.perf_counter() - start
                metrics, masses = _evaluate(
                    trained.encoder, split, tensors, cfg, setting.augmentation, uot_meter, seed,
                    eps_meters if loss_name == "GCA-UOT" else None,
                )
                metrics["final_loss"] = trained.losses[-1]
                metrics["train_seconds"] = seconds
                for m, v in metrics.items():
                    values.setdefault(m, []).append(float(v))
                curves[loss_name].append(trained.losses)
                if k == 0 and loss_name == "GCA-UOT":
                    result["row_mass_example"][setting.name] = {
                        "row_mass": masses["row_mass"].tolist(),
                        "corrupted": masses["corrupted"].tolist(),
                    }
                if k == 0 and loss_name in ("INCE", "GCA-INCE"):
                    result["_encoders"][(setting.name, loss_name)] = trained.encoder
                tick(f"{setting.name}/{loss_name}/seed{k}")
            per_loss[loss_name] = {m: summarize(v).as_dict() for m, v in values.items()}
        result["settings"][setting.name] = per_loss
        result["curves"][setting.name] = curves
        result["paired_vs_ince"] = result.get("paired_vs_ince", {})
        result["paired_vs_ince"][setting.name] = _paired(per_loss)
    return result


def _paired(per_loss: dict[str, Any]) -> dict[str, Any]:
    """Per-seed differences ``metric(loss) - metric(INCE)`` for the probe metrics."""
    if "INCE" not in per_loss:
        return {}
    out: dict[str, Any] = {}
    for name, rec in per_loss.items():
        if name == "INCE":
            continue
        out[name] = {}
        for m in ("probe", "few_shot", "uniformity", "alignment"):
            diff = np.asarray(rec[m]["values"]) - np.asarray(per_loss["INCE"][m]["values"])
            out[name][m] = summarize(diff.tolist()).as_dict()
    return out


def held_out_pairs(cfg: StudyConfig, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Clean (uncorrupted) standard views of the held-out images, for the KL-curve figure."""
    split = load_digits_split(cfg.seed)
    x = torch.from_numpy(split.x_test[: cfg.auc_batch]).to(device)
    gen = torch_generator(20_011 + cfg.seed, device)
    v1, v2, _ = make_pairs(x, AUGMENTATIONS["standard"], gen, 0.0)
    return v1, v2
