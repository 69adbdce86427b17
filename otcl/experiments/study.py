"""``otcl study``: run the sections, then write ``results.json``, the figures and ``report.md``."""

from __future__ import annotations

import json
import math
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from otcl.experiments.claims import assess_claims
from otcl.experiments.config import StudyConfig
from otcl.experiments.registry import missing_features

__all__ = [
    "MissingFeatureError",
    "check_features",
    "prepare_out_dir",
    "resolve_device",
    "run_study",
    "set_threads",
]


class MissingFeatureError(RuntimeError):
    """A section needs a part of the library that cannot be imported in this installation."""


def check_features(sections: tuple[str, ...]) -> None:
    """Raise [`MissingFeatureError`][otcl.experiments.study.MissingFeatureError] naming the parts
    of the library that ``sections`` need but that cannot be imported; return ``None`` otherwise."""
    missing = missing_features(sections)
    if missing:
        raise MissingFeatureError(
            "this installation lacks " + ", ".join(missing)
            + f" needed by the section(s) {', '.join(sections)}"
        )


def prepare_out_dir(out_dir: str | Path) -> Path:
    """Create ``out_dir`` (with its parents) and check that a file can be written in it.

    A temporary file is created and removed again, so an unusable output directory is found
    before any section runs rather than when the results are written. Raises ``OSError`` (for
    example ``NotADirectoryError`` or ``PermissionError``) when the directory cannot be created
    or written.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fd, probe = tempfile.mkstemp(prefix=".otcl-write-test-", dir=out)
    os.close(fd)
    os.unlink(probe)
    return out


def resolve_device(name: str) -> torch.device:
    """``"cpu"`` or ``"cuda"`` (``ValueError`` when CUDA is requested but absent)."""
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device 'cuda' was requested but torch sees no CUDA device")
        return torch.device("cuda")
    raise ValueError(f"device must be 'cpu' or 'cuda', got {name!r}")


def set_threads(threads: int | None) -> int:
    """Set the torch and BLAS thread counts; returns the count used.

    The default is 1: the study's matrices are small (at most a few hundred rows), where extra
    threads cost more in synchronisation than they save, and much more on a shared machine.
    """
    n = 1 if threads is None else int(threads)
    if n < 1:
        raise ValueError(f"threads must be >= 1, got {n}")
    torch.set_num_threads(n)
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(n)
    except ImportError:  # sklearn depends on threadpoolctl, so this is an unusual install
        pass
    return n


def _jsonable(x: Any) -> Any:
    """Replace NaN/inf by ``None`` and numpy scalars by Python numbers, recursively."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items() if not str(k).startswith("_")}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, float)):
        v = float(x)
        return v if math.isfinite(v) else None
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x


class _Progress:
    """A tqdm bar over all training runs (silent when disabled)."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.bar = None
        if enabled and total > 0:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, unit="run", dynamic_ncols=True, leave=True)

    def __call__(self, label: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(label, refresh=False)
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def dataset_summary(con: dict[str, Any]) -> dict[str, Any]:
    """``raw_probe_accuracy`` and, per loss, ``probe_accuracy`` (mean over seeds, first
    setting) plus the same per setting; for ``latents`` the "accuracy" is the R^2 of recovery."""
    settings = list(con["settings"])
    by_setting = {s: {name: rec["probe"]["mean"] for name, rec in con["settings"][s].items()}
                  for s in settings}
    return {
        "metric": con["data"]["metric"],
        "raw_probe_accuracy": con["data"]["raw_probe"],
        "probe_accuracy": by_setting[settings[0]],
        "probe_accuracy_by_setting": by_setting,
    }


def run_study(cfg: StudyConfig, out_dir: str | Path, *, progress: bool = True,
              threads: int | None = None, command: str | None = None,
              echo: Callable[[str], None] = print, jobs: int = 1) -> dict[str, Any]:
    """Run the configured sections and write ``results.json``, PNG figures and ``report.md``.

    ``jobs`` worker processes share the contrastive section's training runs (CPU only; the
    numbers do not depend on it).

    Returns the results dict (as written to ``results.json``, plus ``claims``). Before doing any
    work it raises [`MissingFeatureError`][otcl.experiments.study.MissingFeatureError] if a
    section needs a part of the library that is not importable, ``ValueError`` for an unusable
    device or ``jobs``, and ``OSError`` if ``out_dir`` cannot be created or written
    ([`prepare_out_dir`][otcl.experiments.study.prepare_out_dir]).
    """
    from otcl import __version__
    from otcl.experiments import contrastive, domain, report
    from otcl.experiments.equivalence_section import run_equivalences

    check_features(cfg.sections)
    device = resolve_device(cfg.device)
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    out = prepare_out_dir(out_dir)
    n_threads = set_threads(threads)

    res: dict[str, Any] = {"config": cfg.as_dict()}
    section_seconds: dict[str, float] = {}
    start = time.perf_counter()

    if "equivalences" in cfg.sections:
        echo("[1/3] equivalences on random embeddings")
        t = time.perf_counter()
        res["equivalences"] = run_equivalences(cfg)
        section_seconds["equivalences"] = time.perf_counter() - t

    examples = None
    if "contrastive" in cfg.sections and cfg.dataset == "cifar10":
        from otcl.experiments.cifar import run_cifar10

        n = len(cfg.losses) * cfg.cifar_seeds
        echo(f"[2/3] contrastive training on CIFAR-10 from {cfg.data_dir} ({n} ResNet-18 runs)")
        t = time.perf_counter()
        bar = _Progress(n, progress)
        try:
            res["cifar10"] = run_cifar10(
                cfg.data_dir or ".", cfg.losses, cfg.loss, epochs=cfg.cifar_epochs,
                batch_size=cfg.cifar_batch, n_seeds=cfg.cifar_seeds, seed=cfg.seed,
                device=device, tick=bar, limit_steps=cfg.cifar_limit_steps)
        finally:
            bar.close()
        res["datasets"] = {"cifar10": {
            "metric": "accuracy", "raw_probe_accuracy": res["cifar10"]["raw_probe"],
            "probe_accuracy": {k: v["probe_accuracy"]
                               for k, v in res["cifar10"]["losses"].items()}}}
        section_seconds["contrastive"] = time.perf_counter() - t
    elif "contrastive" in cfg.sections:
        echo(f"[2/3] contrastive training on {cfg.dataset} ({contrastive.n_runs(cfg)} runs, "
             f"{jobs} process(es))")
        t = time.perf_counter()
        bar = _Progress(contrastive.n_runs(cfg), progress)
        try:
            res["contrastive"] = contrastive.run_contrastive(cfg, device, bar, jobs=jobs)
        finally:
            bar.close()
        trained = res["contrastive"].pop("kl_curve_trained", None)
        if "equivalences" in res and trained is not None:
            res["equivalences"]["kl_curve_trained"] = trained
        examples = contrastive.view_examples(cfg)
        section_seconds["contrastive"] = time.perf_counter() - t

    if "domain" in cfg.sections:
        echo(f"[3/3] domain prior on synthetic multi-domain data ({domain.n_runs(cfg)} runs)")
        t = time.perf_counter()
        bar = _Progress(domain.n_runs(cfg), progress)
        try:
            res["domain"] = domain.run_domain(cfg, device, bar, jobs=jobs)
        finally:
            bar.close()
        section_seconds["domain"] = time.perf_counter() - t

    res["meta"] = {
        "otcl_version": __version__,
        "torch_version": torch.__version__,
        "numpy_version": np.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
        "threads": n_threads,
        "jobs": jobs,
        "cpu_count": os.cpu_count(),
        "command": command or f"otcl study --{cfg.size} --seed {cfg.seed}",
        "section_seconds": section_seconds,
        "seconds": time.perf_counter() - start,
    }
    if "contrastive" in res:
        res["datasets"] = {cfg.dataset: dataset_summary(res["contrastive"])}
    claims = assess_claims(res)
    res["claims"] = [c.as_dict() for c in claims]
    res["figures"] = report.make_figures(res, out, claims, examples)
    (out / "results.json").write_text(
        json.dumps(_jsonable(res), indent=1, allow_nan=False) + "\n", encoding="utf-8")
    report.write_report(res, claims, out)
    echo("")
    echo(report.summary_table(res, claims))
    echo("")
    echo(f"Wrote {out / 'report.md'}, {out / 'results.json'} and {len(res['figures'])} figures.")
    return res
