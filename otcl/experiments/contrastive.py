"""Section 2: contrastive training with the five losses on the chosen dataset.

For every setting (share of false-positive pairs), seed and loss, a fresh encoder is trained and
evaluated with frozen features:

* ``probe``: the dataset's probe metric (linear-probe accuracy, or R^2 of latent recovery, see
  [`datasets`][otcl.experiments.datasets]);
* ``alignment`` / ``uniformity``: Wang–Isola metrics of the test embeddings (alignment on clean
  pairs of views, so that settings are comparable);
* ``auc_row_mass``: on a held-out batch of test samples in which a known share of second views
  was replaced by a view of another sample, the ROC AUC of GCA-UOT's row mass for flagging those
  pairs (lower mass = corrupted). The loss is the two-view all-views problem: rows ``i`` and
  ``i + N`` are the two views of sample ``i``, and a pair's score is the mean of its two rows'
  masses. ``auc_cosine`` is the same for the plain cosine of the pair, the obvious baseline;
* ``step_seconds``: the median wall time of one training step (encoder forward and backward,
  loss, optimiser step) on a fixed batch, measured after training with the losses *interleaved*
  (one step of each loss in turn, ``timing_rounds`` rounds after ``warmup_steps`` warm-up rounds),
  so that a change in the machine's load affects every loss alike;
  ``train_step_seconds`` is the median step time during training, after the warm-up steps.

Within a seed every loss sees the same data, initial weights, batches and views (the views are
drawn once per seed and setting and replayed), so differences between losses are paired. The
same seed also gives the same initial weights and batch order in every setting.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from otcl.experiments.config import StudyConfig
from otcl.experiments.metrics import alignment, detection_auc, summarize, uniformity
from otcl.experiments.registry import build_loss

__all__ = ["METRICS", "n_runs", "run_contrastive", "run_group"]

METRICS = ("probe", "alignment", "uniformity", "auc_row_mass", "auc_cosine", "final_loss",
           "step_seconds", "train_step_seconds", "train_seconds")

Tick = Callable[[str], None]
_DATA_CACHE: dict[Any, Any] = {}


def repeat_seed(cfg: StudyConfig, k: int) -> int:
    """Seed of repeat ``k`` (shared by every loss and setting, so comparisons are paired)."""
    return cfg.seed * 1000 + k


def n_runs(cfg: StudyConfig) -> int:
    """Number of training runs of this section (for progress bars)."""
    return len(cfg.settings) * len(cfg.losses) * cfg.n_seeds


def _data(cfg: StudyConfig) -> Any:
    from otcl.experiments.datasets import load_data

    key = (cfg.dataset, cfg.seed, cfg.n_train, cfg.n_test, cfg.view_shift,
           cfg.view_scale, cfg.latent_dim, cfg.latent_kappa, cfg.latent_layers)
    if key not in _DATA_CACHE:
        _DATA_CACHE.clear()
        _DATA_CACHE[key] = load_data(cfg)
    return _DATA_CACHE[key]


def epochs_of(cfg: StudyConfig) -> int:
    """Training epochs of the contrastive section (the latent testbed has its own count: its
    steps are cheap and its encoder needs more of them)."""
    return cfg.latent_epochs if cfg.dataset == "latents" else cfg.epochs


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().double().numpy()


def _view_bank(data: Any, cfg: StudyConfig, setting_idx: int, k: int,
               ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Every training batch of a run: ``[(v1, v2)]`` over all epochs, drawn once and replayed."""
    setting = cfg.settings[setting_idx]
    n = len(data.x_train)
    batch = min(cfg.batch_size, n)
    order_rng = np.random.default_rng([repeat_seed(cfg, k), 1])
    view_rng = np.random.default_rng([repeat_seed(cfg, k), 2, setting_idx])
    out = []
    for _ in range(epochs_of(cfg)):
        perm = order_rng.permutation(n)
        for b in range(n // batch):
            idx = perm[b * batch : (b + 1) * batch]
            v1, v2, _ = data.pairs(idx, view_rng, setting.fp_fraction,
                                   augmentation=setting.augmentation)
            out.append((v1, v2))
    return out


def _train(data: Any, cfg: StudyConfig, bank: list, loss: torch.nn.Module, seed: int,
           device: torch.device) -> tuple[torch.nn.Module, list[float], float, float]:
    """Train a fresh encoder on ``bank``: (encoder, per-epoch losses, median step s, total s)."""
    torch.manual_seed(2 * seed)
    enc = data.make_encoder(cfg).to(device)
    opt = torch.optim.Adam(enc.parameters(), lr=cfg.lr, weight_decay=1e-5)
    enc.train()
    steps_per_epoch = len(bank) // epochs_of(cfg)
    epoch_losses, total, step_times = [], 0.0, []
    start = time.perf_counter()
    for s, (v1, v2) in enumerate(bank):
        t0 = time.perf_counter()
        x = torch.from_numpy(np.concatenate([v1, v2])).to(device)
        z = enc(x)
        value = loss(z[: len(v1)], z[len(v1):])
        opt.zero_grad(set_to_none=True)
        value.backward()
        torch.nn.utils.clip_grad_norm_(enc.parameters(), 10.0)
        opt.step()
        v = float(value.detach())
        if device.type == "cuda":
            torch.cuda.synchronize()
        if s >= cfg.warmup_steps:
            step_times.append(time.perf_counter() - t0)
        total += v
        if (s + 1) % steps_per_epoch == 0:
            epoch_losses.append(total / steps_per_epoch)
            total = 0.0
            if not math.isfinite(epoch_losses[-1]):
                break
    enc.eval()
    median = float(np.median(step_times)) if step_times else math.nan
    return enc, epoch_losses, median, time.perf_counter() - start


def _evaluate(enc: torch.nn.Module, data: Any, cfg: StudyConfig, k: int, uot: torch.nn.Module,
              device: torch.device) -> tuple[dict[str, float], dict[str, list]]:
    x_tr = torch.from_numpy(data.x_train).to(device)
    x_te = torch.from_numpy(data.x_test).to(device)
    h_tr, z_tr = enc.features(x_tr)
    h_te, z_te = enc.features(x_te)
    if data.probe_space == "z":
        # the losses see directions only (cosine cost): probe the unit-norm embedding
        f_tr = _numpy(torch.nn.functional.normalize(z_tr, dim=1))
        f_te = _numpy(torch.nn.functional.normalize(z_te, dim=1))
    else:
        f_tr, f_te = _numpy(h_tr), _numpy(h_te)
    out = {"probe": data.score(f_tr, f_te),
           "uniformity": uniformity(_numpy(z_te[: cfg.auc_batch * 4]))}
    # evaluation draws: a fixed stream per seed, identical for every loss and setting
    rng = np.random.default_rng([repeat_seed(cfg, k), 3])
    n_held = min(cfg.auc_batch, len(data.x_test))
    idx = np.arange(n_held)
    c1, c2, _ = data.pairs(idx, rng, 0.0, split="test")
    w1, w2, corrupted = data.pairs(idx, rng, cfg.auc_fp_fraction, split="test")
    with torch.no_grad():
        a1 = enc(torch.from_numpy(c1).to(device))
        a2 = enc(torch.from_numpy(c2).to(device))
        out["alignment"] = alignment(_numpy(a1), _numpy(a2))
        z1 = enc(torch.from_numpy(w1).to(device))
        z2 = enc(torch.from_numpy(w2).to(device))
        _, details = uot(z1, z2, return_details=True)
        mass = _numpy(details.row_mass).reshape(-1)
        cos = _numpy(torch.nn.functional.cosine_similarity(z1, z2, dim=1))
    pair_mass = mass.reshape(-1, n_held).mean(axis=0) if mass.size % n_held == 0 else mass
    out["auc_row_mass"] = detection_auc(-pair_mass, corrupted)
    out["auc_cosine"] = detection_auc(-cos, corrupted)
    out["row_mass_mean"] = float(mass.mean())
    return out, {"row_mass": pair_mass.tolist(), "corrupted": corrupted.tolist(),
                 "clean_views": (a1, a2)}


def run_group(cfg: StudyConfig, setting_idx: int, k: int, device_name: str = "cpu",
              threads: int | None = None) -> list[dict[str, Any]]:
    """Train and evaluate every loss for one setting and one seed (one unit of parallel work)."""
    if threads is not None:
        torch.set_num_threads(threads)
    device = torch.device(device_name)
    data = _data(cfg)
    bank = _view_bank(data, cfg, setting_idx, k)
    uot_meter = build_loss("GCA-UOT", cfg.loss)
    records = []
    for loss_name in cfg.losses:
        loss = build_loss(loss_name, cfg.loss)
        enc, curve, step, total = _train(data, cfg, bank, loss, repeat_seed(cfg, k), device)
        metrics, extra = _evaluate(enc, data, cfg, k, uot_meter, device)
        metrics["final_loss"] = curve[-1] if curve else math.nan
        metrics["train_step_seconds"] = step
        metrics["train_seconds"] = total
        rec: dict[str, Any] = {"setting": cfg.settings[setting_idx].name, "k": k,
                               "loss": loss_name, "metrics": metrics, "curve": curve}
        if loss_name == "GCA-UOT" and k == 0:
            rec["row_mass"] = {"row_mass": extra["row_mass"], "corrupted": extra["corrupted"]}
        if (loss_name == "INCE" and k == 0 and setting_idx == 0
                and "equivalences" in cfg.sections):
            from otcl.alignment.equivalences import kl_curve
            from otcl.experiments.equivalence_section import curve_summary

            a1, a2 = extra["clean_views"]
            rec["kl_curve_trained"] = curve_summary(kl_curve(
                _numpy(a1), _numpy(a2), eps=cfg.loss.eps, n_half_steps=cfg.kl_half_steps))
        records.append(rec)
    for rec, seconds in zip(records, _interleaved_step_times(data, cfg, bank, k, device),
                            strict=True):
        rec["metrics"]["step_seconds"] = seconds
    return records


def _interleaved_step_times(data: Any, cfg: StudyConfig, bank: list, k: int,
                            device: torch.device) -> list[float]:
    """Median seconds per training step of each loss, timed round-robin on one batch."""
    losses = [build_loss(name, cfg.loss) for name in cfg.losses]
    torch.manual_seed(2 * repeat_seed(cfg, k))
    encs = [data.make_encoder(cfg).to(device) for _ in losses]
    for e in encs[1:]:
        e.load_state_dict(encs[0].state_dict())
    opts = [torch.optim.Adam(e.parameters(), lr=cfg.lr) for e in encs]
    v1, v2 = bank[0]
    x = torch.from_numpy(np.concatenate([v1, v2])).to(device)
    times: list[list[float]] = [[] for _ in losses]
    for r in range(cfg.warmup_steps + cfg.timing_rounds):
        for i, (enc, opt, loss) in enumerate(zip(encs, opts, losses, strict=True)):
            t0 = time.perf_counter()
            z = enc(x)
            value = loss(z[: len(v1)], z[len(v1):])
            opt.zero_grad(set_to_none=True)
            value.backward()
            opt.step()
            float(value.detach())
            if device.type == "cuda":
                torch.cuda.synchronize()
            if r >= cfg.warmup_steps:
                times[i].append(time.perf_counter() - t0)
    return [float(np.median(t)) for t in times]


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(threads)
    except ImportError:
        pass


def run_contrastive(cfg: StudyConfig, device: torch.device, tick: Tick,
                    jobs: int = 1) -> dict[str, Any]:
    """Train and evaluate every (setting, seed, loss); ``tick`` is called after each run.

    ``jobs`` > 1 runs the (setting, seed) groups in that many worker processes (CPU only); the
    numbers do not depend on ``jobs``. Returns a JSON-ready dict: ``data`` (name, metric, sizes,
    view recipe, ``raw_probe``), ``settings[setting][loss][metric]`` summaries (mean, std,
    per-seed values in seed order), per-epoch training losses, the held-out row masses of the
    GCA-UOT encoder at seed 0, and (with the equivalence section) the KL curve of a trained
    INCE encoder.
    """
    data = _data(cfg)
    groups = [(s, k) for k in range(cfg.n_seeds) for s in range(len(cfg.settings))]
    records: list[dict[str, Any]] = []

    def collect(recs: list[dict[str, Any]]) -> None:
        records.extend(recs)
        for r in recs:
            tick(f"{r['setting']}/{r['loss']}/seed{r['k']}")

    if jobs > 1 and device.type == "cpu" and len(groups) > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed

        with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn"),
                                 initializer=_init_worker, initargs=(1,)) as pool:
            futures = [pool.submit(run_group, cfg, s, k, "cpu") for s, k in groups]
            for fut in as_completed(futures):
                collect(fut.result())
    else:
        for s, k in groups:
            collect(run_group(cfg, s, k, device.type))

    result: dict[str, Any] = {
        "data": {"name": data.name, "metric": data.metric, "probe_space": data.probe_space,
                 "n_train": len(data.x_train), "n_test": len(data.x_test),
                 "dim": int(data.x_train.shape[1]), "floor": data.floor, "views": data.views,
                 "raw_probe": data.raw_score()},
        "settings": {},
        "curves": {},
        "row_mass_example": {},
    }
    for setting in cfg.settings:
        per_loss: dict[str, Any] = {}
        result["curves"][setting.name] = {}
        for loss_name in cfg.losses:
            mine = sorted((r for r in records
                           if r["setting"] == setting.name and r["loss"] == loss_name),
                          key=lambda r: r["k"])
            names = list(dict.fromkeys(m for r in mine for m in r["metrics"]))
            per_loss[loss_name] = {
                m: summarize([float(r["metrics"].get(m, math.nan)) for r in mine]).as_dict()
                for m in names
            }
            result["curves"][setting.name][loss_name] = [r["curve"] for r in mine]
            for r in mine:
                if "row_mass" in r:
                    result["row_mass_example"][setting.name] = r["row_mass"]
                if "kl_curve_trained" in r:
                    result["kl_curve_trained"] = r["kl_curve_trained"]
        result["settings"][setting.name] = per_loss
    return result


def view_examples(cfg: StudyConfig, n: int = 4) -> dict[str, Any] | None:
    """A few training samples, two views of each and one false pair (for the views figure)."""
    data = _data(cfg)
    if data.metric != "accuracy":
        return None
    labels = data.t_train
    idx = np.array([int(np.flatnonzero(labels == c)[0]) for c in np.unique(labels)[:n]])
    rng = np.random.default_rng([cfg.seed, 4])
    v1, v2, _ = data.pairs(idx, rng, 0.0)
    f1, f2, flags = data.pairs(idx[:2], rng, 0.5)
    row = int(np.flatnonzero(flags)[0]) if flags.any() else 0
    out: dict[str, Any] = {"x": data.x_train[idx], "v1": v1, "v2": v2, "labels": labels[idx]}
    if flags.any():
        out.update(fp_v1=f1[row], fp_v2=f2[row],
                   fp_labels=(int(labels[idx[row]]), int(labels[idx[1 - row]])))
    return out
