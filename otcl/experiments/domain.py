"""Section 3: a domain-aware target plan on synthetic multi-domain data.

Samples come from 4 domains (class signal + domain offset + per-domain linear distortion, see
[`otcl.experiments.data.make_domain_data`][otcl.experiments.data.make_domain_data]); batches mix the
domains. Views add Gaussian jitter, feature dropout and a random "style" shift along the domain
offsets, so that, as with colour jitter on image domains, the views do not preserve the domain and a
plain ``T = I`` target tends to discard it. GCA-INCE is trained towards the target ``T = I + alpha *
1[same domain, i != j] + beta * 1[other domain]`` of
[`otcl.alignment.targets.domain_prior`][otcl.domain_prior] (the loss uses ``T``'s own marginals, so
they are matched). The sweep varies ``alpha - beta`` around a fixed ``alpha + beta``; for each value
the embeddings ``z`` (where the target acts) and the backbone features ``h`` are probed (logistic
regression) for the domain and for the class.

Scale of alpha and beta: ``T``'s off-diagonal row mass grows with the batch (a row has about
``N / 4`` same-domain entries), so the swept ``alpha``, ``beta`` are the *row totals* given to
same-domain and cross-domain samples, relative to the positive pair's weight 1. The per-entry
weights passed to ``domain_prior`` are ``alpha / n_same`` and ``beta / n_cross``, with
``n_same``, ``n_cross`` the expected number of such entries in a row of a batch.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from otcl.experiments.config import StudyConfig
from otcl.experiments.data import make_domain_data, make_views
from otcl.experiments.metrics import linear_probe, summarize
from otcl.experiments.registry import build_loss
from otcl.experiments.training import train_encoder

__all__ = ["N_DOMAINS", "alpha_beta", "run_domain"]

N_DOMAINS = 4
VIEW_NOISE = 0.1
VIEW_DROP = 0.2
STYLE_JITTER = 1.0
PROBES = ("domain_acc_z", "class_acc_z", "domain_acc_h", "class_acc_h")


def alpha_beta(delta: float, base: float) -> tuple[float, float]:
    """Row totals ``(alpha, beta) = (base + delta / 2, base - delta / 2)``; both must be >= 0."""
    alpha, beta = base + delta / 2.0, base - delta / 2.0
    if alpha < 0 or beta < 0:
        raise ValueError(
            f"alpha - beta = {delta} needs domain_base >= {abs(delta) / 2}, got {base}"
        )
    return alpha, beta


def n_runs(cfg: StudyConfig) -> int:
    """Number of training runs of this section (for progress bars)."""
    return (len(cfg.domain_deltas) + 1) * cfg.domain_seeds


def _setup(cfg: StudyConfig, device: torch.device) -> dict[str, Any]:
    rng = np.random.default_rng(cfg.seed + 3)
    data = make_domain_data(rng, n_per_domain=cfg.domain_n_per_domain, n_domains=N_DOMAINS)
    n = len(data.y)
    test = np.zeros(n, dtype=bool)
    test[rng.permutation(n)[: round(0.3 * n)]] = True
    x_tr = torch.from_numpy(data.x[~test]).to(device)
    return {"data": data, "test": test, "x_tr": x_tr,
            "dom_tr": torch.from_numpy(data.domain[~test]).to(device),
            "batch": min(cfg.domain_batch, x_tr.shape[0])}


def _runs(cfg: StudyConfig) -> list[tuple[str, float, float, float]]:
    runs: list[tuple[str, float, float, float]] = [("identity", math.nan, 0.0, 0.0)]
    for delta in cfg.domain_deltas:
        alpha, beta = alpha_beta(delta, cfg.domain_base)
        runs.append((f"{delta:+g}", delta, alpha, beta))
    return runs


def run_one(cfg: StudyConfig, run: int, k: int, device_name: str = "cpu") -> dict[str, Any]:
    """Train and probe one (target, seed) of the sweep; ``run`` indexes ``identity`` + deltas."""
    from otcl.alignment.targets import domain_prior

    device = torch.device(device_name)
    env = _setup(cfg, device)
    data, test, x_tr, dom_tr, batch = (env[key] for key in
                                       ("data", "test", "x_tr", "dom_tr", "batch"))
    label, _delta, alpha, beta = _runs(cfg)[run]
    n_same = batch / N_DOMAINS - 1.0
    n_cross = batch * (N_DOMAINS - 1) / N_DOMAINS
    per_alpha, per_beta = alpha / n_same, beta / n_cross
    # domain_prior's N x N target is defined on the one-direction cross-view problem
    loss = build_loss("GCA-INCE", cfg.loss, layout="cross")
    style = torch.from_numpy(data.offsets).to(device)

    def sample(xb: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        return tuple(make_views(xb, VIEW_NOISE, VIEW_DROP, gen, style, STYLE_JITTER)
                     for _ in range(2))

    def call(z1: torch.Tensor, z2: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        if per_alpha == 0.0 and per_beta == 0.0:
            return loss(z1, z2)
        return loss(z1, z2, target=domain_prior(dom_tr[idx], per_alpha, per_beta, like=z1))

    trained = train_encoder(x_tr, call, sample, epochs=cfg.domain_epochs, batch_size=batch,
                            seed=cfg.seed * 1000 + 500 + k, hidden=cfg.hidden,
                            out_dim=cfg.out_dim, lr=cfg.lr)
    enc = trained.encoder
    out: dict[str, Any] = {"run": run, "k": k, "label": label, "per_alpha": per_alpha,
                           "per_beta": per_beta, "final_loss": trained.losses[-1]}
    tr = enc.features(x_tr)
    te = enc.features(torch.from_numpy(data.x[test]).to(device))
    for j, space in enumerate(("h", "z")):
        a = tr[j].detach().cpu().double().numpy()
        b = te[j].detach().cpu().double().numpy()
        out[f"domain_acc_{space}"] = linear_probe(a, data.domain[~test], b, data.domain[test])
        out[f"class_acc_{space}"] = linear_probe(a, data.y[~test], b, data.y[test])
    return out


def run_domain(cfg: StudyConfig, device: torch.device, tick: Any,
               jobs: int = 1) -> dict[str, Any]:
    """Sweep ``alpha - beta``; return probe accuracies (domain and class) per value and seed.

    The first entry of the result, ``identity``, is the plain ``T = I`` target for reference.
    ``jobs`` > 1 spreads the runs over worker processes (CPU only; same numbers).
    """
    runs = _runs(cfg)
    units = [(r, k) for k in range(cfg.domain_seeds) for r in range(len(runs))]
    results: list[dict[str, Any]] = []
    if jobs > 1 and device.type == "cpu":
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed

        from otcl.experiments.contrastive import _init_worker

        with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn"),
                                 initializer=_init_worker, initargs=(1,)) as pool:
            futures = [pool.submit(run_one, cfg, r, k, "cpu") for r, k in units]
            for fut in as_completed(futures):
                rec = fut.result()
                results.append(rec)
                tick(f"domain/{rec['label']}/seed{rec['k']}")
    else:
        for r, k in units:
            rec = run_one(cfg, r, k, device.type)
            results.append(rec)
            tick(f"domain/{rec['label']}/seed{rec['k']}")

    sweep = []
    for r, (label, delta, alpha, beta) in enumerate(runs):
        mine = sorted((x for x in results if x["run"] == r), key=lambda x: x["k"])
        sweep.append({
            "label": label,
            "delta": None if math.isnan(delta) else delta,
            "alpha": alpha,
            "beta": beta,
            "alpha_per_entry": mine[0]["per_alpha"],
            "beta_per_entry": mine[0]["per_beta"],
            **{m: summarize([x[m] for x in mine]).as_dict() for m in PROBES},
            "final_loss": summarize([x["final_loss"] for x in mine]).as_dict(),
        })
    env = _setup(cfg, torch.device("cpu"))
    data, test = env["data"], env["test"]
    raw = {
        "domain_acc": linear_probe(data.x[~test], data.domain[~test], data.x[test],
                                   data.domain[test]),
        "class_acc": linear_probe(data.x[~test], data.y[~test], data.x[test], data.y[test]),
    }
    return {
        "data": {"n": len(data.y), "n_domains": N_DOMAINS, "n_classes": int(data.y.max()) + 1,
                 "dim": int(data.x.shape[1]), "batch": env["batch"]},
        "raw_features": raw,
        "sweep": sweep,
    }
