"""The benchmark plan: every case, its parameters, and the baselines its ratios are taken against.

A case id reads like a path, e.g. ``solver/eps=0.1/balanced/numpy/float32/n=1024/otcl-kernel``;
``--only`` selects cases by a regular expression on it. Each case names its baselines as
``{column label: case id}``; the ratio in that column is the case's primary metric divided by the
baseline's (so ``> 1`` means slower, or more memory, than the baseline).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from benchmarks.common import THREAD_ENV_VARS

__all__ = ["PRIMARY", "SIZES", "Case", "build_plan", "select"]

PRIMARY = {
    "solver": "ms_per_iter",
    "stability": "late_over_early",
    "batched": "total_ms",
    "losses": "ms",
    "memory": "peak_mib",
    "scale": "peak_mib",
    "swav": "ms",
    "external": "ms_per_iter",
    "threads": "cpu_over_wall",
    "gradmem": "backward_peak_mib",
    "default-threads": "torch_over_numpy",
    "losses-paired": "gca-ince_over_ntxent",
    "pot-paired": "pot_over_otcl",
}
"""The metric of each suite that ratios compare."""

SIZES: dict[str, dict[str, Any]] = {
    "full": {
        "solver_n": (256, 1024, 4096),
        # the unbalanced comparison with POT in one process, calls interleaved
        "pot_paired_n": (1024, 2048, 4096),
        "stability_n": 2048,
        "batched": (512, 64),
        "loss_batch": (1024, 2048),
        "all_views_batch": (512, 2048),  # 2N = 1024 and 4096 rows
        "memory_batch": 1024,
        "scale_batch": 8192,  # 2N = 16384 rows
        "swav": (4096, 3000),  # samples, prototypes
        "external_n": (1024, 2048, 4096),
        "threads_batch": 2048,
        "gradmem_batch": 2048,
    },
    "quick": {
        "solver_n": (48,),
        "pot_paired_n": (40,),
        "stability_n": 48,
        "batched": (8, 16),
        "loss_batch": (48,),
        "all_views_batch": (24,),
        "memory_batch": 48,
        "scale_batch": 64,
        "swav": (64, 24),
        "external_n": (48,),
        "threads_batch": 48,
        "gradmem_batch": 48,
    },
}
"""Problem sizes of the full suite and of ``--quick`` (a smoke test of the instrument)."""

SOLVER_ITERS = 100
SOLVER_EPS = 0.1
SMALL_EPS = 0.01
TINY_EPS = 0.001
UNBALANCED_RHO = 1.0
STABILITY_CALLS = 20
LOSS = {"d": 128, "eps": 0.5, "n_iter": 10}
UOT_RHO = 0.2
MEMORY_ITERS = (1, 100)
KEEP_FREED = "keep-freed"
KEEP_FREED_ENV = {
    "MALLOC_MMAP_THRESHOLD_": str(32 * 2**20),  # glibc's largest threshold
    "MALLOC_MMAP_MAX_": "0",  # no mmap at all: larger arrays come from the heap too
    "MALLOC_TRIM_THRESHOLD_": str(2**40),  # freed heap memory is never returned
}
"""glibc settings under which freed memory stays in the process (the ``keep-freed`` loss rows):
a repeated call reuses pages it has already touched instead of faulting in fresh ones."""
SWAV = {"d": 128, "eps": 0.05, "rounds": 3, "tol": 1e-4}
"""SwAV's codes: its default epsilon and 3 rounds, and the prototype-marginal error of the
time-to-tolerance rows."""

CPU_BACKENDS = ("numpy", "torch")
GPU_BACKENDS = ("torch-cuda", "cupy")
DTYPES = ("float32", "float64")

_BACKEND_NEEDS = {
    "numpy": (),
    "torch": ("torch",),
    "torch-cuda": ("torch", "cuda"),
    "cupy": ("cupy",),
}


@dataclass(frozen=True)
class Case:
    """One benchmark case: run as ``python -m benchmarks.case <kind> <params>``.

    ``env`` is added to the case process's environment (e.g. glibc's ``MALLOC_*`` settings);
    an empty value removes the variable.
    ``needs`` are capabilities (``"torch"``, ``"pot"``, ``"cuda"``, ``"cupy"``,
    ``"otcl.torch.GCAInfoNCE"``, ...) without which the case is reported as skipped.
    """

    id: str
    suite: str
    kind: str
    params: dict[str, Any]
    baselines: dict[str, str] = field(default_factory=dict)
    needs: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)


def _needs(backend: str, method: str) -> tuple[str, ...]:
    return _BACKEND_NEEDS[backend] + (("pot",) if method.startswith("pot-") else ())


def _solver_group(
    backend: str, dtype: str, n: int, problem: str, floors: dict[str, str]
) -> list[Case]:
    """The rows of one problem type on one backend, dtype and size (eps = 0.1 and eps = 0.01)."""
    rho = None if problem == "balanced" else UNBALANCED_RHO
    cases: list[Case] = []

    def add(eps: float, method: str, baselines: dict[str, str]) -> str:
        cid = f"solver/eps={eps}/{problem}/{backend}/{dtype}/n={n}/{method}"
        params = {
            "backend": backend,
            "dtype": dtype,
            "n": n,
            "iters": SOLVER_ITERS,
            "eps": eps,
            "rho": rho,
            "method": method,
        }
        cases.append(Case(cid, "solver", "solver", params, baselines, _needs(backend, method)))
        return cid

    floor = {"floor": floors["floor"]}
    both = {**floor, "exp1": floors["exp1"]}
    kernel = add(SOLVER_EPS, "otcl-kernel", {**floor, "read": floors["read"]})
    add(SOLVER_EPS, "otcl-auto", floor)
    log = add(SOLVER_EPS, "otcl-log", both)
    if problem == "balanced":
        add(SOLVER_EPS, "pot-sinkhorn", {**floor, "otcl": kernel})
        add(SOLVER_EPS, "pot-sinkhorn_log", {**both, "otcl": log})
    else:
        add(SOLVER_EPS, "pot-unbalanced", {**floor, "otcl": kernel})
    small_log = add(SMALL_EPS, "otcl-log", both)
    add(SMALL_EPS, "otcl-auto", {**floor, "otcl-log": small_log, "otcl-kernel": kernel})
    return cases


def _underflow_cases(sizes: dict[str, Any]) -> list[Case]:
    """The log domain at eps = 1e-3 (most exponentials underflow) against eps = 0.1, balanced,
    float32, the middle solver size, CPU backends."""
    n = sizes["solver_n"][len(sizes["solver_n"]) // 2]
    cases = []
    for backend in CPU_BACKENDS:
        params = {"backend": backend, "dtype": "float32", "n": n, "iters": SOLVER_ITERS,
                  "eps": TINY_EPS, "rho": None, "method": "otcl-log"}
        base = f"solver/eps={SOLVER_EPS}/balanced/{backend}/float32/n={n}/otcl-log"
        cases.append(Case(f"solver/eps={TINY_EPS}/balanced/{backend}/float32/n={n}/otcl-log",
                          "solver", "solver", params, {"eps=0.1": base}, _needs(backend, "")))
    return cases


def _solver_cases(sizes: dict[str, Any]) -> list[Case]:
    cases: list[Case] = []
    for backend in CPU_BACKENDS + GPU_BACKENDS:
        for dtype in DTYPES:
            for n in sizes["solver_n"]:
                floors = {
                    "floor": f"solver/floor/{backend}/{dtype}/n={n}/matvec",
                    "exp1": f"solver/floor/{backend}/{dtype}/n={n}/exp1",
                    "read": f"solver/floor/{backend}/{dtype}/n={n}/read",
                }
                for label, method in (("floor", "floor-matvec"), ("exp1", "bound-exp"),
                                      ("read", "floor-read")):
                    params = {
                        "backend": backend,
                        "dtype": dtype,
                        "n": n,
                        "iters": SOLVER_ITERS,
                        "eps": SOLVER_EPS,
                        "method": method,
                    }
                    cases.append(
                        Case(floors[label], "solver", "solver", params, {}, _needs(backend, ""))
                    )
                for problem in ("balanced", "unbalanced"):
                    cases += _solver_group(backend, dtype, n, problem, floors)
    return cases


def _stability_cases(sizes: dict[str, Any]) -> list[Case]:
    cases = []
    n = sizes["stability_n"]
    for backend in CPU_BACKENDS + GPU_BACKENDS:
        for method in ("otcl-kernel", "otcl-auto", "otcl-log", "pot-sinkhorn"):
            params = {
                "backend": backend,
                "dtype": "float32",
                "n": n,
                "iters": SOLVER_ITERS,
                "eps": SOLVER_EPS,
                "method": method,
                "calls": STABILITY_CALLS,
            }
            cid = f"stability/{backend}/float32/n={n}/{method}"
            cases.append(Case(cid, "stability", "stability", params, {}, _needs(backend, method)))
    return cases


def _batched_cases(sizes: dict[str, Any]) -> list[Case]:
    cases = []
    batch, n = sizes["batched"]
    for backend in CPU_BACKENDS + GPU_BACKENDS:
        for dtype in DTYPES:
            group = f"batched/{backend}/{dtype}/{batch}x{n}x{n}"
            base = {
                "backend": backend,
                "dtype": dtype,
                "n": n,
                "batch": batch,
                "iters": SOLVER_ITERS,
                "eps": SOLVER_EPS,
            }
            loop_id = f"{group}/pot-loop"
            for method in ("pot-loop", "otcl-kernel", "otcl-auto", "otcl-log"):
                baselines = {} if method == "pot-loop" else {"pot-loop": loop_id}
                cases.append(
                    Case(
                        f"{group}/{method}",
                        "batched",
                        "solver",
                        {**base, "method": method},
                        baselines,
                        _needs(backend, method),
                    )
                )
    return cases


def _loss_cases(sizes: dict[str, Any]) -> list[Case]:
    cases = []
    settings = [("cross", f"B={b}", b) for b in sizes["loss_batch"]]
    settings += [("all-views", f"2N={2 * b}", b) for b in sizes["all_views_batch"]]
    for layout, size, batch in settings:
        group = f"losses/{layout}/{size}"
        base = {**LOSS, "layout": layout, "batch": batch}
        ntxent = f"{group}/ntxent"
        cases.append(Case(ntxent, "losses", "loss", {**base, "impl": "ntxent"}, {}, ("torch",)))
        for family, rho, cls in (("gca-ince", None, "GCAInfoNCE"), ("gca-uot", UOT_RHO, "GCAUOT")):
            refs = ["official-style", "kernel-autograd"]
            ref_ids = {r: f"{group}/{family}/{r}" for r in refs}
            for impl in [*refs, "otcl"]:
                # every row against NT-Xent and the references before it in ``refs``
                earlier = refs[: refs.index(impl)] if impl in refs else refs
                baselines = {"ntxent": ntxent, **{r: ref_ids[r] for r in earlier}}
                needs = ("torch",) + ((f"otcl.torch.{cls}",) if impl == "otcl" else ())
                params = {**base, "family": family, "rho": rho, "impl": impl}
                cases.append(
                    Case(f"{group}/{family}/{impl}", "losses", "loss", params, baselines, needs)
                )
        # NT-Xent and otcl again with glibc keeping freed memory (no page faults on either side)
        keep = f"{group}/{KEEP_FREED}"
        params = {**base, "impl": "ntxent", "malloc": KEEP_FREED}
        cases.append(Case(f"{keep}/ntxent", "losses", "loss", params, {}, ("torch",),
                          env=dict(KEEP_FREED_ENV)))
        # NT-Xent plus the passes any exact unrolled derivative needs (benchmarks.baselines)
        plus = f"{keep}/ntxent-plus-passes"
        params = {**base, "impl": "ntxent-plus-passes", "malloc": KEEP_FREED}
        cases.append(Case(plus, "losses", "loss", params, {"ntxent": f"{keep}/ntxent"},
                          ("torch",), env=dict(KEEP_FREED_ENV)))
        # the same losses in one process, calls interleaved (the ratios the targets read)
        cases.append(Case(f"{keep}/paired", "losses-paired", "paired-loss",
                          {**base, "rho": UOT_RHO, "malloc": KEEP_FREED}, {},
                          ("torch", "otcl.torch.GCAInfoNCE", "otcl.torch.GCAUOT"),
                          env=dict(KEEP_FREED_ENV)))
        for family, rho, cls in (("gca-ince", None, "GCAInfoNCE"), ("gca-uot", UOT_RHO, "GCAUOT")):
            params = {**base, "family": family, "rho": rho, "impl": "otcl", "malloc": KEEP_FREED}
            cases.append(Case(f"{keep}/{family}/otcl", "losses", "loss", params,
                              {"ntxent": f"{keep}/ntxent", "plus-passes": plus},
                              ("torch", f"otcl.torch.{cls}"), env=dict(KEEP_FREED_ENV)))
    return cases


def _memory_cases(sizes: dict[str, Any]) -> list[Case]:
    cases = []
    batch = sizes["memory_batch"]
    impls: list[tuple[str, dict[str, Any], tuple[str, ...]]] = [
        ("kernel-autograd", {"impl": "kernel-autograd"}, ()),
        ("official-style", {"impl": "official-style"}, ()),
        ("log-autograd", {"impl": "log-autograd"}, ()),
    ]
    for mode in ("unroll", "implicit", "detach"):
        impls.append((f"otcl-{mode}", {"impl": "otcl", "mode": mode}, ("otcl.torch.GCAInfoNCE",)))
    for label, impl, needs in impls:
        first = f"memory/B={batch}/gca-ince/{label}/L={MEMORY_ITERS[0]}"
        for n_iter in MEMORY_ITERS:
            plain = f"memory/B={batch}/gca-ince/kernel-autograd/L={n_iter}"
            params = {
                **LOSS,
                **impl,
                "layout": "cross",
                "family": "gca-ince",
                "batch": batch,
                "n_iter": n_iter,
            }
            cid = f"memory/B={batch}/gca-ince/{label}/L={n_iter}"
            baselines = {} if cid == first else {"L=1": first}
            if label != "kernel-autograd":
                baselines["kernel-autograd"] = plain
            cases.append(Case(cid, "memory", "memory", params, baselines, ("torch", *needs)))
    return cases


def _scale_cases(sizes: dict[str, Any]) -> list[Case]:
    """Peak memory of one forward + backward on a large all-views batch (NT-Xent and otcl)."""
    batch = sizes["scale_batch"]
    group = f"scale/all-views/2N={2 * batch}"
    base = {**LOSS, "layout": "all-views", "batch": batch}
    ntxent = f"{group}/ntxent"
    cases = [Case(ntxent, "scale", "memory", {**base, "impl": "ntxent"}, {}, ("torch",))]
    for family, rho, cls in (("gca-ince", None, "GCAInfoNCE"), ("gca-uot", UOT_RHO, "GCAUOT")):
        params = {**base, "family": family, "rho": rho, "impl": "otcl"}
        needs = ("torch", f"otcl.torch.{cls}")
        cases.append(
            Case(f"{group}/{family}/otcl", "scale", "memory", params, {"ntxent": ntxent}, needs)
        )
    return cases


def _swav_cases(sizes: dict[str, Any]) -> list[Case]:
    """SwAV's codes: ``otcl.swav_codes`` vs SwAV's Sinkhorn-Knopp loop (``benchmarks.baselines``)
    at its 3 rounds, and to a prototype-marginal error (``tol``), per CPU backend (float32)."""
    samples, protos = sizes["swav"]
    cases = []
    for backend in CPU_BACKENDS:
        group = f"swav/B={samples}/K={protos}/{backend}/float32"
        base = {"backend": backend, "dtype": "float32", "samples": samples, "protos": protos,
                "d": SWAV["d"], "eps": SWAV["eps"]}
        for label, stop in ((f"rounds={SWAV['rounds']}", {"rounds": SWAV["rounds"]}),
                            (f"tol={SWAV['tol']:g}", {"tol": SWAV["tol"]})):
            ref = f"{group}/{label}/reference"
            needs = _BACKEND_NEEDS[backend]
            cases.append(Case(ref, "swav", "swav", {**base, **stop, "impl": "reference"}, {},
                              needs))
            cases.append(Case(f"{group}/{label}/otcl", "swav", "swav",
                              {**base, **stop, "impl": "otcl"}, {"reference": ref}, needs))
    return cases


def _external_cases(sizes: dict[str, Any]) -> list[Case]:
    """otcl against OTT-JAX (``lse_mode=True`` and ``False``, jitted) and GeomLoss (its matrix
    solver ``geomloss.ot.solve``) per round, float32, eps = 0.1, 100 rounds. Every process is
    pinned to as many cores as it has threads (``pin``) before anything is imported: JAX's CPU
    runtime ignores the thread variables, so a one-thread comparison needs the affinity."""
    cases = []
    sizes_n = sizes["external_n"]
    # unbalanced at the middle size only; GeomLoss (about 40 ms per round at n = 1024 on one
    # core) up to the middle size
    middle = sizes_n[len(sizes_n) // 2]
    for problem in ("balanced", "unbalanced"):
        rho = None if problem == "balanced" else UNBALANCED_RHO
        for n in sizes_n if problem == "balanced" else (middle,):
            group = f"external/eps={SOLVER_EPS}/{problem}/float32/n={n}"
            base = {"dtype": "float32", "n": n, "iters": SOLVER_ITERS, "eps": SOLVER_EPS,
                    "rho": rho, "pin": True}
            ott = {}
            for mode in ("lse", "kernel"):
                ott[mode] = f"{group}/jax/ott-{mode}"
                params = {**base, "backend": "jax", "method": f"ott-{mode}"}
                cases.append(Case(ott[mode], "external", "solver", params, {}, ("ott",)))
            for backend in CPU_BACKENDS:
                for domain, mode in (("log", "lse"), ("kernel", "kernel")):
                    params = {**base, "backend": backend, "method": f"otcl-{domain}"}
                    cases.append(Case(f"{group}/{backend}/otcl-{domain}", "external", "solver",
                                      params, {"ott": ott[mode]}, _BACKEND_NEEDS[backend]))
            if n > middle:
                continue
            params = {**base, "backend": "torch", "method": "geomloss-solve"}
            cases.append(Case(f"{group}/torch/geomloss-solve", "external", "solver", params,
                              {"otcl-log": f"{group}/torch/otcl-log"}, ("torch", "geomloss")))
    return cases


def _thread_cases(sizes: dict[str, Any]) -> list[Case]:
    """CPU time over wall time of a loss step under ``torch.set_num_threads(1)`` alone: the
    process starts without the thread variables and without a threadpoolctl limit, so NumPy's
    BLAS pool has its default size and only otcl can keep it to torch's one thread."""
    batch = sizes["threads_batch"]
    group = f"threads/torch/float32/cross/B={batch}"
    unset = {var: "" for var in THREAD_ENV_VARS}
    base = {**LOSS, "layout": "cross", "batch": batch, "pools": "torch-only"}
    cases = [Case(f"{group}/ntxent", "threads", "cputime", {**base, "impl": "ntxent"}, {},
                  ("torch",), env=dict(unset))]
    for family, rho, cls in (("gca-ince", None, "GCAInfoNCE"), ("gca-uot", UOT_RHO, "GCAUOT")):
        params = {**base, "family": family, "rho": rho, "impl": "otcl"}
        cases.append(Case(f"{group}/{family}/otcl", "threads", "cputime", params,
                          {"ntxent": f"{group}/ntxent"}, ("torch", f"otcl.torch.{cls}"),
                          env=dict(unset)))
    return cases


LIVE_MEMORY_ENV = {"MALLOC_MMAP_THRESHOLD_": str(128 * 2**10)}
"""glibc's initial mmap threshold, fixed (no dynamic raise): every freed block of 128 KiB or more
returns to the system, so the resident set follows live memory (the ``gradmem`` rows)."""
GRADMEM = {"d": 128, "eps": 0.5, "n_iter": 100, "threshold": 1e-6}
"""The gradient-memory problem: GCA-INCE at eps = 0.5; otcl's rounds and OTT's unrolled rounds,
OTT's implicit mode to a marginal error of ``threshold``."""


def _gradmem_cases(sizes: dict[str, Any]) -> list[Case]:
    """Peak memory of the backward of one GCA-INCE loss: otcl's implicit and unrolled gradients
    against OTT-JAX's implicit and unrolled ones (``benchmarks.gradient_memory``), one pinned
    core, both under :data:`LIVE_MEMORY_ENV`."""
    group = f"gradmem/cross/B={sizes['gradmem_batch']}/gca-ince"
    base = {**GRADMEM, "batch": sizes["gradmem_batch"], "pin": True}
    ott = {mode: f"{group}/ott-{mode}" for mode in ("implicit", "unroll")}
    cases = [
        Case(ott[mode], "gradmem", "gradmem", {**base, "impl": "ott", "mode": mode}, {},
             ("ott",), env=dict(LIVE_MEMORY_ENV))
        for mode in ("implicit", "unroll")
    ]
    for mode in ("implicit", "unroll"):
        baselines = {"ott-implicit": ott["implicit"], f"ott-{mode}": ott[mode]}
        cases.append(Case(f"{group}/otcl-{mode}", "gradmem", "gradmem",
                          {**base, "impl": "otcl", "mode": mode}, baselines,
                          ("torch", "otcl.torch.GCAInfoNCE"), env=dict(LIVE_MEMORY_ENV)))
    return cases


def _pot_paired_cases(sizes: dict[str, Any]) -> list[Case]:
    """The unbalanced problem (rho = 1, eps = 0.1, float32) on the CPU backends: two bare
    products, otcl's kernel domain and POT's ``sinkhorn_unbalanced`` per round, in one process
    with their calls interleaved (``paired-pot``)."""
    cases = []
    for backend in CPU_BACKENDS:
        for n in sizes["pot_paired_n"]:
            params = {"backend": backend, "dtype": "float32", "n": n, "iters": SOLVER_ITERS,
                      "eps": SOLVER_EPS, "rho": UNBALANCED_RHO}
            cid = (f"pot-paired/eps={SOLVER_EPS}/unbalanced/{backend}/float32/n={n}/"
                   "floor-otcl-pot")
            cases.append(Case(cid, "pot-paired", "paired-pot", params, {},
                              _needs(backend, "pot-")))
    return cases


def _default_thread_cases(sizes: dict[str, Any]) -> list[Case]:
    """The solver per round at the libraries' default thread counts (no thread variables, no
    threadpoolctl limit, no ``torch.set_num_threads``): balanced, eps = 0.1, float32, the
    largest solver size, kernel and log domains; the Torch path against the NumPy path, both
    in one process with their calls interleaved (``paired-solver``)."""
    n = max(sizes["solver_n"])
    unset = {var: "" for var in THREAD_ENV_VARS}
    group = f"default-threads/eps={SOLVER_EPS}/balanced/float32/n={n}"
    return [
        Case(f"{group}/otcl-{domain}/torch-and-numpy", "default-threads", "paired-solver",
             {"dtype": "float32", "n": n, "iters": SOLVER_ITERS, "eps": SOLVER_EPS,
              "rho": None, "method": f"otcl-{domain}", "pools": "default"},
             {}, _BACKEND_NEEDS["torch"], env=dict(unset))
        for domain in ("kernel", "log")
    ]


def build_plan(quick: bool = False) -> list[Case]:
    """Every case of the suite, in running order (baselines before the rows that use them)."""
    sizes = SIZES["quick" if quick else "full"]
    return (
        _solver_cases(sizes)
        + _underflow_cases(sizes)
        + _pot_paired_cases(sizes)
        + _stability_cases(sizes)
        + _batched_cases(sizes)
        + _loss_cases(sizes)
        + _memory_cases(sizes)
        + _scale_cases(sizes)
        + _swav_cases(sizes)
        + _external_cases(sizes)
        + _thread_cases(sizes)
        + _default_thread_cases(sizes)
        + _gradmem_cases(sizes)
    )


def select(plan: list[Case], patterns: list[str] | None) -> list[Case]:
    """The cases whose id matches any regular expression in ``patterns`` (all if none), plus
    the baselines they need, in plan order."""
    if not patterns:
        return list(plan)
    compiled = [re.compile(p) for p in patterns]
    by_id = {c.id: c for c in plan}
    wanted = {c.id for c in plan if any(p.search(c.id) for p in compiled)}
    wanted |= {b for cid in list(wanted) for b in by_id[cid].baselines.values()}
    return [c for c in plan if c.id in wanted]
