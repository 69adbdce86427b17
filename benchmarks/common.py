"""Helpers shared by the benchmark processes: threads, backends, inputs, measurement.

Everything here runs inside the child process of one case (``benchmarks.case``); the parent
process (``benchmarks.runner``) only imports the names it needs to start children.
"""

from __future__ import annotations

import contextlib
import gc
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = [
    "THREAD_ENV_VARS",
    "Skip",
    "backend_array",
    "configure_threads",
    "cosine_cost",
    "measure",
    "minor_faults",
    "peak_rss_during",
    "require_backend",
    "reset_peak_rss",
    "status_kib",
    "swav_scores",
    "synchronizer",
    "thread_report",
    "torch_module",
    "unit_vectors",
]

THREAD_ENV_VARS = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)
"""Environment variables the parent sets to the thread count before starting a child."""

_LIMITS: list[Any] = []  # keeps threadpoolctl's limiter alive for the life of the process
_THREADS: list[int | None] = [None]  # the thread count of this process, once configured


class Skip(Exception):  # noqa: N818 (a control-flow signal, not an error)
    """Raised by a case whose target (library, device or API) is not available here."""


# --------------------------------------------------------------------------------------------
# threads


def configure_threads(n: int, blas: bool = True) -> None:
    """Limit the BLAS/OpenMP pools loaded so far (threadpoolctl, when installed) to ``n`` threads,
    and remember ``n`` for torch's pools (set by :func:`torch_module` when torch is first used).

    The environment variables in :data:`THREAD_ENV_VARS`, set by the parent before this process
    started, cover the pools of libraries loaded later. ``blas=False`` sets torch's pools only
    (the ``threads`` rows, which measure what otcl does with NumPy's pool at its default size).
    """
    _THREADS[0] = n
    if not blas:
        if "torch" in sys.modules:
            _set_torch_threads(sys.modules["torch"])
        return
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        pass
    else:
        _LIMITS.append(threadpool_limits(limits=n))
    if "torch" in sys.modules:
        _set_torch_threads(sys.modules["torch"])


def _set_torch_threads(torch: Any) -> None:
    if _THREADS[0] is not None and torch.get_num_threads() != _THREADS[0]:
        torch.set_num_threads(_THREADS[0])
    with contextlib.suppress(RuntimeError):  # already set, or parallel work has started
        torch.set_num_interop_threads(1)


def torch_module() -> Any:
    """``import torch`` with this process's thread count applied; :class:`Skip` if missing.

    Cases import torch through this function so that processes that do not need torch never
    pay for importing it.
    """
    try:
        import torch
    except ImportError as err:
        raise Skip("not available: torch is not installed") from err
    _set_torch_threads(torch)
    return torch


def thread_report() -> dict[str, Any]:
    """The thread pools as this process sees them (threadpoolctl's view plus torch's counts)."""
    out: dict[str, Any] = {k: os.environ.get(k) for k in THREAD_ENV_VARS}
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        out["threadpools"] = "threadpoolctl not installed"
    else:
        out["threadpools"] = [
            {k: info.get(k) for k in ("internal_api", "version", "num_threads", "filepath")}
            for info in threadpool_info()
        ]
    if "torch" in sys.modules:
        torch = torch_module()
        out["torch_num_threads"] = torch.get_num_threads()
        out["torch_num_interop_threads"] = torch.get_num_interop_threads()
    return out


# --------------------------------------------------------------------------------------------
# backends

BACKENDS = ("numpy", "torch", "torch-cuda", "cupy")


def require_backend(backend: str) -> None:
    """Raise :class:`Skip` when ``backend`` cannot run in this process."""
    if backend == "numpy":
        return
    if backend in ("torch", "torch-cuda"):
        torch = torch_module()
        if backend == "torch-cuda" and not torch.cuda.is_available():
            raise Skip("not available: no CUDA device")
        return
    if backend == "cupy":
        try:
            import cupy
        except ImportError as err:
            raise Skip("not available: cupy is not installed") from err
        try:
            if cupy.cuda.runtime.getDeviceCount() < 1:
                raise Skip("not available: no CUDA device")
        except cupy.cuda.runtime.CUDARuntimeError as err:
            raise Skip("not available: no CUDA device") from err
        return
    raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


def backend_array(x: np.ndarray, backend: str, dtype: str) -> Any:
    """``x`` (host float64) as a ``backend`` array of ``dtype`` (``"float32"`` or ``"float64"``)."""
    x = np.ascontiguousarray(x, dtype=dtype)
    if backend == "numpy":
        return x
    if backend in ("torch", "torch-cuda"):
        t = torch_module().from_numpy(x)
        return t.to("cuda") if backend == "torch-cuda" else t
    if backend == "cupy":
        import cupy

        return cupy.asarray(x)
    raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


def synchronizer(backend: str) -> Callable[[], None]:
    """A function that waits for the device's queued work (a no-op on the host)."""
    if backend == "torch-cuda":
        return torch_module().cuda.synchronize
    if backend == "cupy":
        import cupy

        return cupy.cuda.Device().synchronize
    return lambda: None


# --------------------------------------------------------------------------------------------
# inputs


def unit_vectors(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Standard normal vectors normalised along the last axis (uniform on the sphere)."""
    x = rng.standard_normal(shape)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def cosine_cost(
    n: int, m: int, *, d: int = 128, batch: int | None = None, seed: int = 0
) -> np.ndarray:
    """``C = 1 - cos(x_i, y_j)`` for random unit vectors in ``d`` dimensions, float64.

    Shape ``(n, m)``, or ``(batch, n, m)`` with independent vectors per problem. Entries lie in
    ``[0, 2]``.
    """
    rng = np.random.default_rng(seed)
    lead = () if batch is None else (batch,)
    x = unit_vectors(rng, (*lead, n, d))
    y = unit_vectors(rng, (*lead, m, d))
    return 1.0 - x @ np.swapaxes(y, -1, -2)


def swav_scores(samples: int, protos: int, *, d: int = 128, seed: int = 0) -> np.ndarray:
    """SwAV-like scores ``(samples, protos)``, float64: cosines of unit embeddings and unit
    prototypes, each embedding a random prototype plus Gaussian noise of about its own norm
    (cosine about 0.7 to its prototype), as after some training. Random embeddings instead
    would give nearly uniform scores, which three rounds already balance."""
    rng = np.random.default_rng(seed)
    prototypes = unit_vectors(rng, (protos, d))
    noise = rng.standard_normal((samples, d)) / np.sqrt(d)
    z = prototypes[rng.integers(0, protos, samples)] + noise
    z /= np.linalg.norm(z, axis=-1, keepdims=True)
    return z @ prototypes.T


# --------------------------------------------------------------------------------------------
# measurement


def minor_faults() -> int:
    """Minor page faults of this process so far (``getrusage(RUSAGE_SELF).ru_minflt``)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def measure(
    run: Callable[[], Any],
    *,
    repeat: int,
    budget_s: float,
    warmup: Callable[[], Any] | None = None,
    sync: Callable[[], None] = lambda: None,
) -> dict[str, Any]:
    """Time ``run`` after one call of ``warmup`` (default: ``run`` itself).

    Runs ``run`` up to ``repeat`` times, stopping early once the timed calls have used
    ``budget_s`` seconds (at least one call is always timed). Returns the median, min and max
    wall time in seconds, the number of timed calls, the minor page faults per timed call, and
    the last call's return value under ``"last"``.
    """
    if repeat < 1:
        raise ValueError(f"repeat must be >= 1, got {repeat}")
    (warmup or run)()
    sync()
    gc.collect()
    times: list[float] = []
    faults0 = minor_faults()
    last = None
    while len(times) < repeat:
        t0 = time.perf_counter()
        last = run()
        sync()
        times.append(time.perf_counter() - t0)
        if sum(times) >= budget_s:
            break
    faults = minor_faults() - faults0
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
        "runs": len(times),
        "minflt_per_run": faults / len(times),
        "last": last,
    }


def measure_interleaved(
    calls: dict[str, Callable[[], Any]], *, repeat: int, budget_s: float
) -> tuple[dict[str, list[float]], dict[str, Any]]:
    """Time several calls in one process, interleaved: one call of each per round (in the
    order of ``calls``), up to ``repeat`` rounds, stopping early once the timed calls have used
    ``budget_s`` seconds (at least one round is always timed). The caller warms them up first.
    Returns the wall times in seconds and the last return value, each by label."""
    if repeat < 1:
        raise ValueError(f"repeat must be >= 1, got {repeat}")
    gc.collect()
    times: dict[str, list[float]] = {label: [] for label in calls}
    last: dict[str, Any] = {}
    for _ in range(repeat):
        for label, call in calls.items():
            t0 = time.perf_counter()
            last[label] = call()
            times[label].append(time.perf_counter() - t0)
        if sum(sum(t) for t in times.values()) >= budget_s:
            break
    return times, last


def status_kib(field: str) -> int | None:
    """A ``/proc/self/status`` field in KiB (``VmRSS``, ``VmHWM``), or None off Linux."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def reset_peak_rss() -> bool:
    """Reset the kernel's resident-set high-water mark to the current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
    except OSError:
        return False
    return True


def late_over_early(call_ms: list[float], window: int = 5) -> float:
    """Drift of a long-lived process: the median time of the last ``window`` calls over the
    median of calls 2 .. window + 1 (the first call, which builds buffers, is left out).

    A ratio of two single calls (20th / 2nd) moves by tens of percent with one slow call on a
    shared machine; medians of five keep the question (is the 20th call as fast as the 2nd?)
    and drop the outliers.
    """
    early, late = call_ms[1 : 1 + window], call_ms[-window:]
    return statistics.median(late) / statistics.median(early)


def peak_rss_during(fn: Callable[[], Any]) -> dict[str, Any]:
    """Peak resident memory that ``fn()`` adds above the RSS at its start, in MiB.

    On Linux the high-water mark ``VmHWM`` is reset to the current RSS just before the call, so
    the peak is exact at page granularity. Elsewhere it falls back to the growth of
    ``ru_maxrss``, a lower bound when an earlier peak was higher.
    """
    gc.collect()
    if reset_peak_rss() and status_kib("VmHWM") is not None:
        before = status_kib("VmRSS") or 0
        fn()
        peak = status_kib("VmHWM") or 0
        return {"peak_mib": (peak - before) / 1024.0, "method": "VmHWM after reset"}
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    fn()
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"peak_mib": max(after - before, 0) / 1024.0, "method": "ru_maxrss growth (lower bound)"}
