"""``otcl check``: a quick self-test of the solver and loss identities on the user's backends.

Each available backend (NumPy; PyTorch on CPU; PyTorch on CUDA and CuPy where a GPU is present)
runs, in float64:

* ``marginals``: a balanced Sinkhorn solve reaches its row and column marginals;
* ``POT balanced`` / ``POT unbalanced``: the plan equals POT's (``ot.sinkhorn`` and
  ``ot.unbalanced.sinkhorn_unbalanced`` with ``reg_type="entropy"``), when POT is installed;
* ``kernel vs log``: the kernel-domain and log-domain iterations give the same plan;
* the loss equivalences of
  [`otcl.alignment.equivalences.run_all`][otcl.alignment.equivalences.run_all] (InfoNCE as a KL
  projection, GCA-INCE below INCE, ...), when that module is available.

Every check compares against an independent computation, never against stored numbers.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Backend", "CheckRecord", "available_backends", "format_table", "run_checks"]


@dataclass(frozen=True)
class Backend:
    """An array library plus device: ``name`` as shown to users, ``asarray`` from NumPy."""

    name: str
    library: str
    device: str
    asarray: Callable[[np.ndarray], Any]


@dataclass(frozen=True)
class CheckRecord:
    """One line of the self-check: ``value`` is compared with ``tol`` (``value <= tol`` passes)."""

    backend: str
    name: str
    value: float
    tol: float
    passed: bool
    note: str = ""

    def as_dict(self) -> dict:
        return {
            "backend": self.backend,
            "name": self.name,
            "value": self.value,
            "tol": self.tol,
            "passed": self.passed,
            "note": self.note,
        }


def available_backends(device: str | None = None) -> list[Backend]:
    """The backends present here: NumPy, torch (cpu), torch (cuda), CuPy.

    ``device`` restricts the list: ``"cpu"`` keeps NumPy and torch-cpu, ``"cuda"`` keeps the GPU
    backends; ``None`` keeps all.
    """
    out: list[Backend] = []
    if device in (None, "cpu"):
        out.append(Backend("numpy", "numpy", "cpu", lambda a: np.asarray(a, dtype=np.float64)))
    torch = _optional("torch")
    if torch is not None:
        if device in (None, "cpu"):
            out.append(Backend("torch-cpu", "torch", "cpu",
                               lambda a: torch.as_tensor(a, dtype=torch.float64)))
        if device in (None, "cuda") and torch.cuda.is_available():
            out.append(Backend("torch-cuda", "torch", "cuda",
                               lambda a: torch.as_tensor(a, dtype=torch.float64, device="cuda")))
    if device in (None, "cuda"):
        cupy = _optional("cupy")
        if cupy is not None and _cupy_has_device(cupy):
            out.append(Backend("cupy", "cupy", "cuda", lambda a: cupy.asarray(a, dtype=np.float64)))
    return out


def _optional(name: str) -> Any:
    if importlib.util.find_spec(name) is None:
        return None
    try:
        return importlib.import_module(name)
    except Exception:  # a broken install counts as absent
        return None


def _cupy_has_device(cupy: Any) -> bool:
    try:
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


def _problem(seed: int, n: int = 24, m: int = 17) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x, y = rng.standard_normal((n, 3)), rng.standard_normal((m, 3))
    cost = ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)
    cost /= cost.max()
    a = rng.uniform(0.5, 1.5, n)
    b = rng.uniform(0.5, 1.5, m)
    return cost, a / a.sum(), b / b.sum()


def _solver_checks(be: Backend, seed: int) -> list[CheckRecord]:
    from otcl import sinkhorn
    from otcl.backend import to_numpy

    cost, a, b = _problem(seed)
    eps, rho = 0.05, 0.5
    C, A, Bm = be.asarray(cost), be.asarray(a), be.asarray(b)
    out: list[CheckRecord] = []

    res = sinkhorn(C, A, Bm, eps=eps, max_iter=5000, tol=1e-12, domain="log")
    plan = to_numpy(res.plan)
    err = max(np.abs(plan.sum(1) - a).max(), np.abs(plan.sum(0) - b).max())
    out.append(_record(be, "sinkhorn marginals |P1-a|,|P'1-b|", err, 1e-9))

    kern = to_numpy(sinkhorn(C, A, Bm, eps=eps, max_iter=5000, tol=1e-12, domain="kernel").plan)
    out.append(_record(be, "kernel vs log domain plan (rel.)", _rel(kern, plan), 1e-9))

    ot = _optional("ot")
    if ot is None:
        out.append(CheckRecord(be.name, "POT agreement", math.nan, math.nan, True,
                               "skipped: POT (pip install pot) not installed"))
        return out
    ref = ot.sinkhorn(a, b, cost, eps, method="sinkhorn_log", numItermax=5000, stopThr=1e-13)
    out.append(_record(be, "balanced plan vs POT (rel.)", _rel(plan, ref), 1e-8))

    ures = sinkhorn(C, A, Bm, eps=eps, rho_a=rho, rho_b=rho, max_iter=5000, tol=1e-13,
                    domain="log")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # POT notes that reg_type="entropy" ignores its `c`
        uref = ot.unbalanced.sinkhorn_unbalanced(
            a, b, cost, eps, rho, method="sinkhorn_stabilized", reg_type="entropy",
            numItermax=20000, stopThr=1e-14,
        )
    out.append(_record(be, "unbalanced plan vs POT (rel.)", _rel(to_numpy(ures.plan), uref),
                       1e-7))
    return out


def _equivalence_checks(be: Backend, seed: int) -> list[CheckRecord]:
    try:
        from otcl.alignment import equivalences
    except ImportError as exc:
        return [CheckRecord(be.name, "loss equivalences", math.nan, math.nan, True,
                            f"skipped: {exc}")]
    records = equivalences.run_all(be.library, device=equivalence_device(be), n=32, d=8,
                                   eps=0.5, seed=seed)
    return [
        CheckRecord(be.name, str(r.name), abs(float(r.gap)) if not getattr(r, "one_sided", False)
                    else float(r.gap), float(r.tol), bool(r.holds))
        for r in records
    ]


def equivalence_device(be: Backend) -> Any:
    """The ``device`` argument of
    [`otcl.alignment.equivalences.run_all`][otcl.alignment.equivalences.run_all] for a backend."""
    return None if be.library in ("numpy", "cupy") else be.device


def _rel(x: np.ndarray, ref: np.ndarray) -> float:
    """``max |x - ref| / max |ref|``."""
    return float(np.abs(x - ref).max() / np.abs(ref).max())


def _record(be: Backend, name: str, value: float, tol: float) -> CheckRecord:
    value = float(value)
    return CheckRecord(be.name, name, value, tol, bool(math.isfinite(value) and value <= tol))


def run_checks(device: str | None = None, seed: int = 0) -> list[CheckRecord]:
    """Run every check on every available backend (see the module docstring).

    An exception inside a check becomes a failed record carrying the error message, so that one
    broken backend does not hide the results of the others.
    """
    records: list[CheckRecord] = []
    for be in available_backends(device):
        for group in (_solver_checks, _equivalence_checks):
            try:
                records.extend(group(be, seed))
            except Exception as exc:
                last = traceback.extract_tb(exc.__traceback__)[-1]
                where = f"{last.filename.rsplit('/', 1)[-1]}:{last.lineno}"
                records.append(CheckRecord(be.name, group.__name__.strip("_").replace("_", " "),
                                           math.nan, math.nan, False,
                                           f"error: {type(exc).__name__}: {exc} ({where})"))
    return records


def format_table(records: list[CheckRecord]) -> str:
    """A fixed-width text table: backend, check, value, tolerance, PASS/FAIL/skip."""
    rows = [("backend", "check", "value", "tol", "result")]
    for r in records:
        skipped = math.isnan(r.value) and r.passed
        status = "skip" if skipped else ("PASS" if r.passed else "FAIL")
        value = "-" if math.isnan(r.value) else f"{r.value:.2e}"
        tol = "-" if math.isnan(r.tol) else f"{r.tol:.0e}"
        rows.append((r.backend, r.name, value, tol, status))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = []
    for k, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    notes = [f"  {r.backend} / {r.name}: {r.note}" for r in records if r.note]
    if notes:
        lines.append("")
        lines.extend(notes)
    return "\n".join(lines)
