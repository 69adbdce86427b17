"""What one benchmark process measures: one function per case kind.

Each function takes the case's parameters (a JSON-compatible dict, see ``benchmarks.suites``)
and returns ``{"metrics": {...}, "info": {...}}``; it raises :class:`~benchmarks.common.Skip`
when its target is not available here. Timing parameters (``repeat``, ``budget_s``) are added to
every case's parameters by the runner.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import inspect
import math
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from benchmarks.common import (
    Skip,
    backend_array,
    cosine_cost,
    late_over_early,
    measure,
    measure_interleaved,
    minor_faults,
    peak_rss_during,
    require_backend,
    swav_scores,
    synchronizer,
    thread_report,
    torch_module,
)
from benchmarks.floors import base2_inputs, exp_bound, matvec_floor, read_floor
from benchmarks.gradient_memory import gradient_memory

__all__ = ["KINDS"]

WARMUP_ITERS = 10
"""Iterations of the warm-up call before a solver is timed (pages code and buffers in)."""


def _rho(params: dict[str, Any]) -> float:
    rho = params.get("rho")
    return math.inf if rho is None else float(rho)


# --------------------------------------------------------------------------------------------
# probe: capabilities and machine description


_DISTRIBUTIONS = {
    "numpy": "numpy",
    "scipy": "scipy",
    "torch": "torch",
    "pot": "POT",
    "otcl": "otcl",
    "array_api_compat": "array-api-compat",
    "threadpoolctl": "threadpoolctl",
    "jax": "jax",
    "ott": "ott-jax",
    "geomloss": "geomloss",
}
"""Packages whose versions the report states (label: distribution name)."""


def probe(params: dict[str, Any]) -> dict[str, Any]:
    """What this machine can run, and the machine itself (as a benchmark child sees it)."""
    caps: dict[str, bool] = {}
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for label, dist in _DISTRIBUTIONS.items():
        try:
            versions[label] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[label] = None
    caps["torch"] = importlib.util.find_spec("torch") is not None
    caps["pot"] = importlib.util.find_spec("ot") is not None
    # found without importing them (importing jax starts its thread pool in the probe)
    caps["ott"] = versions["ott"] is not None and versions["jax"] is not None
    caps["geomloss"] = versions["geomloss"] is not None and caps["torch"]
    for backend, cap in (("torch-cuda", "cuda"), ("cupy", "cupy")):
        try:
            require_backend(backend)
        except Skip:
            caps[cap] = False
        else:
            caps[cap] = True
    for name in ("GCAInfoNCE", "GCAUOT"):
        caps[f"otcl.torch.{name}"] = _otcl_loss_class(name) is not None
    if caps["cupy"]:
        import cupy

        versions["cupy"] = cupy.__version__
    cuda_name = None
    if caps["cuda"]:
        cuda_name = torch_module().cuda.get_device_name(0)
    machine = {
        "cpu_model": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "platform": platform.platform(),
        "python_executable": sys.executable,
        "cuda_device": cuda_name,
        "versions": versions,
        "threads": thread_report(),
    }
    return {"metrics": {}, "info": {"capabilities": caps, "machine": machine}}


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# --------------------------------------------------------------------------------------------
# solver methods: a run(iters) callable plus a check of the last result


class SolverMethod:
    """One way of running ``iters`` Sinkhorn rounds on a fixed problem.

    ``run(iters)`` performs the rounds; ``warmup()`` prepares (a short run, or for POT's
    unbalanced solver a full run that also verifies the round count); ``check(result)`` returns
    facts about the last timed result (rounds actually run, domain used) and raises
    ``RuntimeError`` if the run did not do what the row claims.
    """

    def __init__(
        self,
        run: Callable[[int], Any],
        check: Callable[[Any, int], dict[str, Any]],
        warmup: Callable[[int], Any] | None = None,
    ) -> None:
        self.run, self.check, self._warmup = run, check, warmup

    def warmup(self, iters: int) -> Any:
        if self._warmup is not None:
            return self._warmup(iters)
        return self.run(min(WARMUP_ITERS, iters))


def solver_method(method: str, params: dict[str, Any]) -> SolverMethod:
    """Build the inputs of a solver case (cosine cost, uniform marginals) and its method."""
    backend, dtype = params["backend"], params["dtype"]
    n, eps, rho = int(params["n"]), float(params["eps"]), _rho(params)
    batch = params.get("batch")
    cost64 = cosine_cost(n, n, batch=batch, seed=int(params.get("seed", 0)))
    if method.startswith("ott-"):
        return _ott_method(method.removeprefix("ott-"), cost64, dtype, eps, rho)
    require_backend(backend)
    cost = backend_array(cost64, backend, dtype)
    lead = () if batch is None else (batch,)
    a = backend_array(np.full((*lead, n), 1.0 / n), backend, dtype)
    if method.startswith("otcl-"):
        return _otcl_method(method.removeprefix("otcl-"), cost, a, eps, rho)
    if method in ("pot-sinkhorn", "pot-sinkhorn_log"):
        _need_pot()
        return _pot_balanced(method.removeprefix("pot-"), cost, a, eps)
    if method == "pot-unbalanced":
        _need_pot()
        return _pot_unbalanced(cost, a, eps, rho)
    if method == "pot-loop":
        _need_pot()
        return _pot_loop(cost, a, eps)
    if method == "geomloss-solve":
        return _geomloss_solve(cost, a, eps, rho)
    lib = _array_lib(backend)
    if method in ("floor-matvec", "floor-read"):
        kernel = lib.exp(-cost / eps)
        ones = backend_array(np.ones(n), backend, dtype)
        if method == "floor-read":
            return SolverMethod(lambda it: read_floor(kernel, ones, it), _no_check)
        return SolverMethod(lambda it: matvec_floor(kernel, ones, ones, it), _no_check)
    if method == "bound-exp":
        log_kernel, zeros = base2_inputs(-cost / eps, backend_array(np.zeros(n), backend, dtype))
        buf = backend_array(np.empty((n, n)), backend, dtype)
        return SolverMethod(lambda it: exp_bound(log_kernel, zeros, buf, it, lib), _no_check)
    raise ValueError(f"unknown solver method {method!r}")


def _array_lib(backend: str) -> Any:
    if backend == "numpy":
        return np
    if backend == "cupy":
        import cupy

        return cupy
    return torch_module()


def _no_check(result: Any, iters: int) -> dict[str, Any]:
    return {}


def _need_pot() -> None:
    try:
        import ot  # noqa: F401
    except ImportError as err:
        raise Skip("not available: POT is not installed") from err


def _otcl_method(domain: str, cost: Any, a: Any, eps: float, rho: float) -> SolverMethod:
    import otcl
    from otcl.backend import to_numpy

    def run(iters: int) -> Any:
        return otcl.sinkhorn(
            cost, a, a, eps=eps, rho_a=rho, rho_b=rho, max_iter=iters, tol=None, domain=domain
        )

    def check(result: Any, iters: int) -> dict[str, Any]:
        rounds = int(np.max(result.n_iter))
        if rounds != iters:
            raise RuntimeError(f"otcl ran {rounds} rounds, expected {iters}")
        if not (
            np.all(np.isfinite(to_numpy(result.f))) and np.all(np.isfinite(to_numpy(result.g)))
        ):
            raise RuntimeError("otcl returned non-finite potentials")
        return {"rounds": rounds, "domain_used": result.domain}

    return SolverMethod(run, check)


def _ott_method(mode: str, cost64: np.ndarray, dtype: str, eps: float, rho: float) -> SolverMethod:
    """OTT-JAX's ``Sinkhorn(lse_mode=...)`` jitted, exactly ``iters`` rounds
    (``min_iterations = max_iterations``), ``tau = rho / (rho + eps)``. Its plan is checked
    against otcl's (same problem, rounds and domain) before the result is accepted."""
    try:
        import jax
        from ott.geometry import geometry
        from ott.problems.linear import linear_problem
        from ott.solvers.linear import sinkhorn as ott_sinkhorn
    except ImportError as err:
        raise Skip("not available: ott-jax is not installed") from err
    import otcl

    n = cost64.shape[0]
    cost_np = np.ascontiguousarray(cost64, dtype=dtype)
    a_np = np.full(n, 1.0 / n, dtype=dtype)
    cost, a = jax.device_put(cost_np), jax.device_put(a_np)
    tau = 1.0 if math.isinf(rho) else rho / (rho + eps)
    solvers: dict[int, Any] = {}

    def solver(iters: int) -> Any:
        if iters not in solvers:

            def solve(c: Any, a: Any) -> Any:
                geom = geometry.Geometry(cost_matrix=c, epsilon=eps)
                prob = linear_problem.LinearProblem(geom, a, a, tau_a=tau, tau_b=tau)
                out = ott_sinkhorn.Sinkhorn(
                    lse_mode=mode == "lse", min_iterations=iters, max_iterations=iters
                )(prob)
                return out.f, out.g, out.n_iters

            solvers[iters] = jax.jit(solve)
        return solvers[iters]

    def run(iters: int) -> Any:
        return jax.block_until_ready(solver(iters)(cost, a))

    def check(result: Any, iters: int) -> dict[str, Any]:
        f, g, rounds = result
        rounds = int(rounds)
        if rounds != iters:
            raise RuntimeError(f"OTT ran {rounds} rounds, expected {iters}")
        plan = np.exp((np.asarray(f)[:, None] + np.asarray(g)[None, :] - cost_np) / eps)
        ref = otcl.sinkhorn(cost_np, a_np, a_np, eps=eps, rho_a=rho, rho_b=rho, max_iter=iters,
                            tol=None, domain="log" if mode == "lse" else "kernel").plan
        diff = float(np.max(np.abs(plan - ref)) / np.max(ref))
        if not diff <= 1e-4:
            raise RuntimeError(f"OTT's plan differs from otcl's by {diff:.3g} (relative to max)")
        return {"rounds": rounds, "plan_diff_vs_otcl": diff, "jax": jax.__version__}

    # the warm-up call compiles the timed call's round count
    return SolverMethod(run, check, warmup=run)


def _geomloss_solve(cost: Any, a: Any, eps: float, rho: float) -> SolverMethod:
    """GeomLoss's matrix solver ``geomloss.ot.solve(C, reg=eps, max_iter=iters)``: symmetric
    Sinkhorn updates with eps-annealing (its only method), so only the time per round compares;
    its plan is a different iterate from otcl's."""
    try:
        from geomloss import ot as gl_ot
    except ImportError as err:
        raise Skip("not available: geomloss is not installed") from err

    unbalanced = None if math.isinf(rho) else rho

    def run(iters: int) -> Any:
        return gl_ot.solve(cost, reg=eps, a=a, b=a, unbalanced=unbalanced, max_iter=iters).plan

    def check(result: Any, iters: int) -> dict[str, Any]:
        if not bool(result.isfinite().all()):
            raise RuntimeError("GeomLoss returned a non-finite plan")
        return {"rounds": iters, "algorithm": "symmetric Sinkhorn with eps-annealing"}

    return SolverMethod(run, check)


def _pot_balanced(method: str, cost: Any, a: Any, eps: float) -> SolverMethod:
    import ot

    def run(iters: int) -> Any:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            _, log = ot.sinkhorn(
                a, a, cost, eps, method=method, numItermax=iters, stopThr=0.0, log=True, warn=False
            )
        return log["niter"] + 1, [str(w.message) for w in caught]

    def check(result: Any, iters: int) -> dict[str, Any]:
        rounds, messages = result
        if rounds != iters or messages:
            raise RuntimeError(f"POT ran {rounds} of {iters} rounds; warnings: {messages}")
        return {"rounds": rounds}

    return SolverMethod(run, check)


def _pot_unbalanced(cost: Any, a: Any, eps: float, rho: float) -> SolverMethod:
    import ot

    def call(iters: int, log: bool) -> Any:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = ot.unbalanced.sinkhorn_unbalanced(
                a,
                a,
                cost,
                eps,
                rho,
                method="sinkhorn",
                reg_type="entropy",
                numItermax=iters,
                stopThr=0.0,
                log=log,
            )
        messages = [str(w.message) for w in caught if "reg_type = entropy" not in str(w.message)]
        return out, messages

    verified: dict[str, Any] = {}

    def warmup(iters: int) -> Any:
        # a full run with log=True counts the rounds (one error entry per round); timed runs
        # use log=False, which skips POT's extra cost evaluation at the end
        (plan, log), messages = call(iters, True)
        verified.update(rounds=len(log["err"]), messages=messages)
        # like for like: POT's reg_type="entropy" problem is otcl's (KL(P || 1)), same rounds
        import otcl
        from otcl.backend import to_numpy

        ref = to_numpy(otcl.sinkhorn(cost, a, a, eps=eps, rho_a=rho, rho_b=rho, max_iter=iters,
                                     tol=None, domain="kernel").plan)
        diff = float(np.max(np.abs(to_numpy(plan) - ref)) / np.max(ref))
        if not diff <= 1e-4:
            raise RuntimeError(f"POT's plan differs from otcl's by {diff:.3g} (relative to max)")
        verified["plan_diff_vs_otcl"] = diff

    def check(result: Any, iters: int) -> dict[str, Any]:
        _, messages = result
        rounds, early = verified.get("rounds"), verified.get("messages", [])
        if rounds != iters or early or messages:
            raise RuntimeError(
                f"POT ran {rounds} of {iters} rounds (verified by the warm-up call); "
                f"warnings: {early + messages}"
            )
        return {"rounds": rounds, "plan_diff_vs_otcl": verified["plan_diff_vs_otcl"]}

    return SolverMethod(lambda it: call(it, False), check, warmup)


def _pot_loop(cost: Any, a: Any, eps: float) -> SolverMethod:
    """POT's ``sinkhorn`` called once per problem of a ``(B, n, n)`` batch, in a Python loop."""
    import ot

    def run(iters: int) -> Any:
        rounds = []
        for k in range(cost.shape[0]):
            _, log = ot.sinkhorn(
                a[k], a[k], cost[k], eps, numItermax=iters, stopThr=0.0, log=True, warn=False
            )
            rounds.append(log["niter"] + 1)
        return min(rounds)

    def check(result: Any, iters: int) -> dict[str, Any]:
        if result != iters:
            raise RuntimeError(f"POT stopped after {result} of {iters} rounds on some problem")
        return {"rounds": result}

    return SolverMethod(run, check)


# --------------------------------------------------------------------------------------------
# solver, batched and stability cases


def solver(params: dict[str, Any]) -> dict[str, Any]:
    """Per-round time of one solver method on an ``n x n`` cosine-cost problem (or a batch)."""
    iters = int(params["iters"])
    method = solver_method(params["method"], params)
    sync = synchronizer(params["backend"])
    timing = measure(
        lambda: method.run(iters),
        warmup=lambda: method.warmup(iters),
        repeat=int(params["repeat"]),
        budget_s=float(params["budget_s"]),
        sync=sync,
    )
    info = method.check(timing.pop("last"), iters)
    info.update(runs=timing["runs"], min_ms=1e3 * timing["min_s"], max_ms=1e3 * timing["max_s"])
    if params.get("pools") == "default":  # the pools the libraries chose themselves
        info["threadpools"] = thread_report().get("threadpools")
    metrics = {
        "total_ms": 1e3 * timing["median_s"],
        "ms_per_iter": 1e3 * timing["median_s"] / iters,
        "minflt_per_iter": timing["minflt_per_run"] / iters,
    }
    return {"metrics": metrics, "info": info}


def _interleaved_solves(methods: dict[str, SolverMethod],
                        params: dict[str, Any]) -> tuple[dict[str, float], dict[str, Any]]:
    """Warm up ``methods`` and time ``params["iters"]`` rounds of each in one process, the calls
    interleaved in the order of ``methods`` (up to ``repeat`` rounds of calls within
    ``budget_s``). Returns each method's median time per round in ms, and the info: every
    call's time and each method's check of its last result."""
    iters = int(params["iters"])
    for method in methods.values():
        method.warmup(iters)
    times, last = measure_interleaved(
        {label: functools.partial(method.run, iters) for label, method in methods.items()},
        repeat=int(params["repeat"]), budget_s=float(params["budget_s"]),
    )
    info: dict[str, Any] = {"rounds_of_calls": len(next(iter(times.values())))}
    for label, method in methods.items():
        info[label] = method.check(last[label], iters)
        info[f"{label}_call_ms"] = [1e3 * t for t in times[label]]
    ms = {label: 1e3 * statistics.median(times[label]) / iters for label in methods}
    return ms, info


def paired_solver(params: dict[str, Any]) -> dict[str, Any]:
    """Per-round time of one otcl method on the NumPy and the PyTorch CPU path of the same
    problem, measured in one process with the calls interleaved (NumPy, Torch, NumPy, ...), so
    that the ratio compares the code paths and not two processes' memory placement or the
    machine's load at two moments. Up to ``repeat`` pairs within ``budget_s``; ``torch_over_numpy``
    is the median Torch time over the median NumPy time."""
    methods = {b: solver_method(params["method"], {**params, "backend": b})
               for b in ("numpy", "torch")}
    ms, info = _interleaved_solves(methods, params)
    info["pairs"] = info.pop("rounds_of_calls")
    if params.get("pools") == "default":
        info["threadpools"] = thread_report().get("threadpools")
    metrics = {"torch_over_numpy": ms["torch"] / ms["numpy"], "ms_per_iter": ms["torch"],
               "numpy_ms_per_iter": ms["numpy"]}
    return {"metrics": metrics, "info": info}


def paired_pot(params: dict[str, Any]) -> dict[str, Any]:
    """Per-round time of two bare matrix-vector products (``floor``), otcl's kernel domain
    (``otcl``) and POT's ``sinkhorn_unbalanced`` (``pot``) on the same unbalanced problem, in
    one process with the calls interleaved (floor, otcl, POT, floor, ...): the ratios compare
    the code and not two processes' memory placement or the load of a shared cache at two
    moments. POT's warm-up call checks that its plan equals otcl's. Up to ``repeat`` rounds of
    calls within ``budget_s``; each ratio is of the medians."""
    methods = {label: solver_method(method, {**params, "method": method})
               for label, method in (("floor", "floor-matvec"), ("otcl", "otcl-kernel"),
                                     ("pot", "pot-unbalanced"))}
    ms, info = _interleaved_solves(methods, params)
    metrics = {"pot_over_otcl": ms["pot"] / ms["otcl"], "ms_per_iter": ms["otcl"],
               "pot_ms_per_iter": ms["pot"], "floor_ms_per_iter": ms["floor"],
               "otcl_over_floor": ms["otcl"] / ms["floor"],
               "pot_over_floor": ms["pot"] / ms["floor"]}
    return {"metrics": metrics, "info": info}


def stability(params: dict[str, Any]) -> dict[str, Any]:
    """Twenty consecutive solves in one process: the 20th call's time over the 2nd's, and the
    minor page faults per round of each call."""
    iters, calls = int(params["iters"]), int(params["calls"])
    method = solver_method(params["method"], params)
    sync = synchronizer(params["backend"])
    times, faults = [], []
    result = None
    for _ in range(calls):
        f0, t0 = minor_faults(), time.perf_counter()
        result = method.run(iters)
        sync()
        times.append(time.perf_counter() - t0)
        faults.append((minor_faults() - f0) / iters)
    info = method.check(result, iters)
    info.update(call_ms=[1e3 * t for t in times], minflt_per_iter_by_call=faults)
    metrics = {
        "t2_ms": 1e3 * times[1],
        "tlast_ms": 1e3 * times[-1],
        "tlast_over_t2": times[-1] / times[1],
        "late_over_early": late_over_early([1e3 * t for t in times]),
        "minflt_per_iter_2": faults[1],
        "minflt_per_iter_last": faults[-1],
        "minflt_per_iter_max_after_first": max(faults[1:]),
    }
    return {"metrics": metrics, "info": info}


# --------------------------------------------------------------------------------------------
# losses


def _otcl_loss_class(name: str) -> Any:
    try:
        import otcl.torch as otcl_torch
    except ImportError:
        return None
    return getattr(otcl_torch, name, None)


def _init_keywords(cls: type) -> set[str]:
    """Keyword names that ``cls(...)`` accepts, following ``**kwargs`` up the base classes."""
    names: set[str] = set()
    for klass in cls.__mro__:
        if "__init__" in vars(klass):
            names.update(inspect.signature(klass.__init__).parameters)
    return names


def otcl_loss(
    kind: str,
    *,
    eps: float,
    n_iter: int,
    rho: float,
    mode: str | None = None,
    layout: str | None = None,
) -> Any:
    """``otcl.torch.GCAInfoNCE(eps, n_iter)`` / ``GCAUOT(eps, rho, n_iter)``, or :class:`Skip`.

    ``mode`` (the gradient mode, keyword ``grad``) and ``layout`` (``"blocked"`` for all-views
    batches, ``"cross"`` for the one-direction cross-view problem) are passed only when given;
    a requested option that the class does not accept skips the case rather than measuring
    something else.
    """
    name = {"gca-ince": "GCAInfoNCE", "gca-uot": "GCAUOT"}[kind]
    cls = _otcl_loss_class(name)
    if cls is None:
        raise Skip(f"not available: otcl.torch.{name}")
    accepted = _init_keywords(cls)
    kwargs: dict[str, Any] = {"eps": eps, "n_iter": n_iter}
    if kind == "gca-uot":
        kwargs["rho"] = rho
    if mode is not None:
        if "grad" not in accepted:
            raise Skip(f"not available: otcl.torch.{name} has no grad (gradient mode) option")
        kwargs["grad"] = mode
    if layout is not None:
        if "layout" not in accepted:
            raise Skip(f"not available: otcl.torch.{name} has no layout option")
        kwargs["layout"] = layout
    return cls(**kwargs)


def loss_function(params: dict[str, Any]) -> Callable[..., Any]:
    """The loss of a case as ``f(z1, z2)`` (cross-view) or ``f(z)`` (all-views)."""
    from benchmarks import baselines as ref

    impl, family = params["impl"], params.get("family", "gca-ince")
    eps, n_iter = float(params["eps"]), int(params["n_iter"])
    rho = _rho(params) if family == "gca-uot" else math.inf
    all_views = params["layout"] == "all-views"
    if impl == "otcl":
        layout = "blocked" if all_views else "cross"
        return otcl_loss(
            family, eps=eps, n_iter=n_iter, rho=rho, mode=params.get("mode"), layout=layout
        )
    reference = {
        "ntxent": lambda s: ref.nt_xent(s, eps, all_views),
        "official-style": lambda s: ref.gca_official_style(s, eps, n_iter, rho, all_views),
        "kernel-autograd": lambda s: ref.gca_kernel_autograd(s, eps, n_iter, rho, all_views),
        "log-autograd": lambda s: ref.gca_log_autograd(s, eps, n_iter, rho, all_views),
        "ntxent-plus-passes": lambda s: ref.nt_xent_plus_passes(s, eps, n_iter, all_views),
    }[impl]
    return lambda *z: reference(ref.similarity(*z))


def _loss_inputs(params: dict[str, Any], batch: int) -> list[Any]:
    """Random float32 embeddings: ``z1, z2`` of shape ``(batch, d)`` (cross-view), or one ``z``
    of shape ``(2 batch, d)`` holding both views (all-views, ``2N = 2 batch`` rows)."""
    torch = torch_module()
    gen = torch.Generator().manual_seed(int(params.get("seed", 0)))
    d = int(params["d"])
    shapes = [(2 * batch, d)] if params["layout"] == "all-views" else [(batch, d)] * 2
    return [
        torch.randn(*shape, generator=gen, dtype=torch.float32).requires_grad_() for shape in shapes
    ]


def _forward_backward(fn: Callable[..., Any], inputs: list[Any]) -> float:
    for z in inputs:
        z.grad = None
    value = fn(*inputs)
    value.backward()
    return float(value.detach())


def loss(params: dict[str, Any]) -> dict[str, Any]:
    """Forward + backward time of one loss on random float32 embeddings (CPU)."""
    require_backend("torch")
    fn = loss_function(params)
    inputs = _loss_inputs(params, int(params["batch"]))
    timing = measure(
        lambda: _forward_backward(fn, inputs),
        repeat=int(params["repeat"]),
        budget_s=float(params["budget_s"]),
    )
    grad_norm = math.sqrt(sum(float((z.grad**2).sum()) for z in inputs))
    if not (math.isfinite(timing["last"]) and math.isfinite(grad_norm)):
        raise RuntimeError(f"non-finite loss {timing['last']} or gradient norm {grad_norm}")
    info = {"runs": timing["runs"], "min_ms": 1e3 * timing["min_s"], "grad_norm": grad_norm}
    return {"metrics": {"ms": 1e3 * timing["median_s"], "value": timing["last"]}, "info": info}


PAIRED_LOSSES = (
    ("ntxent", {"impl": "ntxent"}),
    ("gca-ince", {"impl": "otcl", "family": "gca-ince"}),
    ("gca-uot", {"impl": "otcl", "family": "gca-uot"}),
    ("ntxent-plus-passes", {"impl": "ntxent-plus-passes"}),
)
"""The losses a ``paired-loss`` case times, by label, as :func:`loss_function` parameters."""


def paired_loss(params: dict[str, Any]) -> dict[str, Any]:
    """Forward + backward of NT-Xent, otcl's GCA-INCE and GCA-UOT and NT-Xent plus the passes
    of an exact unrolled derivative (:data:`PAIRED_LOSSES`) on the same embeddings, in one
    process with the calls interleaved (one call of each per round, up to ``repeat`` rounds
    within ``budget_s``), so that each ``<label>_over_ntxent`` compares code, not two processes'
    memory placement or the machine's load at two moments. Metrics: ``<label>_ms`` (median per
    label) and ``<label>_over_ntxent`` (median over median); ``ms`` is GCA-INCE's."""
    require_backend("torch")
    inputs = _loss_inputs(params, int(params["batch"]))
    fns = {label: loss_function({**params, **spec}) for label, spec in PAIRED_LOSSES}
    for fn in fns.values():
        _forward_backward(fn, inputs)  # warm-up
    times, values = measure_interleaved(
        {label: functools.partial(_forward_backward, fn, inputs) for label, fn in fns.items()},
        repeat=int(params["repeat"]), budget_s=float(params["budget_s"]),
    )
    if not all(math.isfinite(v) for v in values.values()):
        raise RuntimeError(f"non-finite loss values {values}")
    ms = {label: 1e3 * statistics.median(t) for label, t in times.items()}
    metrics: dict[str, float] = {"ms": ms["gca-ince"]}
    for label, value in ms.items():
        metrics[f"{label}_ms"] = value
        if label != "ntxent":
            metrics[f"{label}_over_ntxent"] = value / ms["ntxent"]
    info = {"rounds": len(times["ntxent"]), "values": values,
            "call_ms": {label: [1e3 * x for x in t] for label, t in times.items()}}
    return {"metrics": metrics, "info": info}


def cputime(params: dict[str, Any]) -> dict[str, Any]:
    """CPU time over wall time of a loss's forward + backward on one torch thread
    (``time.process_time`` and ``time.perf_counter`` around the timed calls): about 1 when
    everything runs on torch's one thread, about the pool size when a second pool spins."""
    require_backend("torch")
    fn = loss_function(params)
    inputs = _loss_inputs(params, int(params["batch"]))
    _forward_backward(fn, inputs)
    cpu = wall = 0.0
    calls = 0
    while calls < int(params["repeat"]) and wall < float(params["budget_s"]):
        c0, w0 = time.process_time(), time.perf_counter()
        _forward_backward(fn, inputs)
        cpu += time.process_time() - c0
        wall += time.perf_counter() - w0
        calls += 1
    pools = thread_report().get("threadpools")
    info = {"calls": calls, "cpu_ms": 1e3 * cpu / calls, "threadpools": pools}
    return {"metrics": {"cpu_over_wall": cpu / wall, "ms": 1e3 * wall / calls}, "info": info}


def memory(params: dict[str, Any]) -> dict[str, Any]:
    """Peak resident memory added by one forward + backward of a loss (float32, CPU)."""
    require_backend("torch")
    fn = loss_function(params)
    _forward_backward(fn, _loss_inputs(params, 16))  # initialise lazily built state
    inputs = _loss_inputs(params, int(params["batch"]))
    values: list[float] = []
    peak = peak_rss_during(lambda: values.append(_forward_backward(fn, inputs)))
    n = int(params["batch"]) * (2 if params["layout"] == "all-views" else 1)
    info = {"method": peak["method"], "value": values[0], "n_by_n_float32_mib": 4 * n * n / 2**20}
    return {"metrics": {"peak_mib": peak["peak_mib"]}, "info": info}


# --------------------------------------------------------------------------------------------
# SwAV codes


def _prototype_error(codes: Any) -> float:
    """``sum_k |mean_b codes_bk - 1/K|``: the relative L1 error of the prototype marginal of
    the plan ``codes^T / B`` (its sample marginal is exact by construction)."""
    from otcl.backend import to_numpy

    c = to_numpy(codes).astype(np.float64)
    return float(np.sum(np.abs(c.mean(axis=0) - 1.0 / c.shape[1])))


def swav(params: dict[str, Any]) -> dict[str, Any]:
    """Time of SwAV's codes for ``(B, K)`` scores: ``otcl.swav_codes`` or SwAV's loop.

    ``rounds``: both run that many rounds, and the codes must agree. ``tol``: otcl stops on
    its prototype-marginal error (checked every round); the reference runs the smallest round
    count whose error is ``<= tol``, found before timing by running it and measuring the error
    after every round.
    """
    import otcl
    from benchmarks import baselines as ref

    backend, dtype = params["backend"], params["dtype"]
    require_backend(backend)
    eps = float(params["eps"])
    host = swav_scores(int(params["samples"]), int(params["protos"]), d=int(params["d"]))
    host = host.astype(dtype)
    scores = backend_array(host, backend, dtype)
    reference = ref.swav_codes_torch if backend.startswith("torch") else ref.swav_codes_numpy
    tol = params.get("tol")
    info: dict[str, Any] = {}
    if tol is None:
        rounds = int(params["rounds"])
    else:
        rounds = ref.swav_rounds_to(host, eps, float(tol))
        info["reference_rounds"] = rounds
    if params["impl"] == "reference":
        run = lambda: reference(scores, eps, rounds)  # noqa: E731
    elif tol is None:
        run = lambda: otcl.swav_codes(scores, eps=eps, n_iter=rounds)  # noqa: E731
    else:
        run = lambda: otcl.swav_codes(  # noqa: E731
            scores, eps=eps, tol=float(tol), max_iter=1000, return_details=True
        )
    timing = measure(run, repeat=int(params["repeat"]), budget_s=float(params["budget_s"]),
                     sync=synchronizer(backend))
    out = timing.pop("last")
    codes = out[0] if isinstance(out, tuple) else out
    if isinstance(out, tuple):
        res = out[1]
        if not res.converged:
            raise RuntimeError(f"otcl did not reach tol = {tol} ({res.n_iter} rounds)")
        info.update(otcl_rounds=int(res.n_iter), otcl_error=float(res.error),
                    domain_used=res.domain)
    elif params["impl"] == "otcl":
        # the same codes as the reference loop at the same count (float32 rounding)
        expected = ref.swav_codes_numpy(host, eps, rounds)
        from otcl.backend import to_numpy

        diff = float(np.max(np.abs(to_numpy(codes) - expected)))
        if not diff <= 1e-4 * float(np.max(expected)):
            raise RuntimeError(f"otcl's codes differ from the reference loop's by {diff:.3g}")
        info["max_abs_diff_vs_reference"] = diff
    info.update(rounds=rounds, prototype_error=_prototype_error(codes), runs=timing["runs"],
                min_ms=1e3 * timing["min_s"], max_ms=1e3 * timing["max_s"])
    return {"metrics": {"ms": 1e3 * timing["median_s"]}, "info": info}


KINDS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "probe": probe,
    "solver": solver,
    "paired-solver": paired_solver,
    "paired-loss": paired_loss,
    "paired-pot": paired_pot,
    "stability": stability,
    "loss": loss,
    "memory": memory,
    "swav": swav,
    "cputime": cputime,
    "gradmem": gradient_memory,
}
"""Case kinds by name, as ``python -m benchmarks.case <kind> <params>`` selects them."""
