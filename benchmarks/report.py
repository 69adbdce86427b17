"""Ratios against baselines and the Markdown report of a benchmark run.

A result record (one per case, as stored in ``results.json``) has the case's ``id``, ``suite``,
``params``, ``baselines`` (column label -> case id), ``status`` (``ok``/``skipped``/``error``),
``metrics``, ``info`` and, after :func:`add_ratios`, ``ratios`` (column label -> primary metric
of the row divided by the baseline's, both from this run).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

from benchmarks.suites import PRIMARY
from benchmarks.targets import runs_lines, stability_drift, summary_markdown

__all__ = ["add_ratios", "markdown"]

Record = dict[str, Any]


def add_ratios(records: list[Record]) -> None:
    """Set ``record["ratios"]`` for every record: row / baseline on the suite's primary metric.

    A ratio is ``None`` when the row or its baseline did not run (skipped, error, not selected)
    or, in merged results, ran in another run.
    """
    by_id = {r["id"]: r for r in records}
    for rec in records:
        key = PRIMARY[rec["suite"]]
        ratios: dict[str, float | None] = {}
        for label, base_id in rec.get("baselines", {}).items():
            base = by_id.get(base_id)
            if base is not None and base.get("run") != rec.get("run"):
                base = None  # merged runs: a ratio only between rows of one run
            ratios[label] = _ratio(_metric(rec, key), None if base is None else _metric(base, key))
        rec["ratios"] = ratios


def _metric(rec: Record, key: str) -> float | None:
    if rec.get("status") != "ok":
        return None
    value = rec.get("metrics", {}).get(key)
    return None if value is None else float(value)


def _ratio(num: float | None, den: float | None) -> float | None:
    if num is None or den is None or not den > 0:
        return None
    return num / den


# --------------------------------------------------------------------------------------------
# formatting


def _num(x: Any, digits: int = 3) -> str:
    if x is None:
        return "–"
    x = float(x)
    if not math.isfinite(x):
        return str(x)
    if x == 0:
        return "0"
    if abs(x) >= 10 ** (digits + 2) or abs(x) < 10 ** -(digits + 1):
        return f"{x:.{digits - 1}e}"
    return f"{x:.{digits}g}" if abs(x) < 10**digits else f"{x:.0f}"


def _table(headers: list[str], rows: Iterable[list[str]]) -> list[str]:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    out = [line(headers), line(["---"] * len(headers))]
    out += [line(r) for r in rows]
    return out


Column = tuple[str, Callable[[Record], Any]]


def _rows(records: list[Record], columns: list[Column]) -> list[str]:
    return _table([h for h, _ in columns], ([str(f(r)) for _, f in columns] for r in records))


def _p(key: str) -> Callable[[Record], Any]:
    return lambda r: r["params"].get(key, "")


def _m(key: str, digits: int = 3) -> Callable[[Record], str]:
    return lambda r: _num(r.get("metrics", {}).get(key), digits)


def _i(key: str) -> Callable[[Record], Any]:
    return lambda r: r.get("info", {}).get(key, "")


def _r(label: str) -> Callable[[Record], str]:
    return lambda r: _num(r.get("ratios", {}).get(label), 3)


def _procs(r: Record) -> Any:
    """The number of processes a row was measured in (1 unless ``--processes`` said more)."""
    return r.get("info", {}).get("processes", 1)


def _ok(records: list[Record], suite: str, prefix: str = "") -> list[Record]:
    return [
        r
        for r in records
        if r["suite"] == suite and r["status"] == "ok" and r["id"].startswith(prefix)
    ]


# --------------------------------------------------------------------------------------------
# sections


def _solver_section(records: list[Record]) -> list[str]:
    out = ["## 1. Sinkhorn solver: time per round (100 fixed rounds, `tol=None`)", ""]
    out += [
        "Cost `C = 1 - cos` of random unit vectors in 128-d, uniform marginals, `n x n`. "
        "`floor` = two bare matrix-vector products per round (`K v`, `K^T u`); `read` = one "
        "(`K v` alone: one read of the kernel, the least a kernel-domain round can read; a "
        "fused sweep computes both products from one read of each block and may go below "
        "`floor`, never below `read`); `exp1` = one "
        "in-place pass of `exp(Λ + potential)` over the matrix per round, the addition and the "
        "exponential each at their fastest (float32: powers of two of the base-2 log-kernel; "
        "NumPy: the addition over groups of rows) (a log-domain round must exponentiate every "
        "entry once; otcl's reuses the row step's exponentials for the column step). Ratios are "
        "this "
        "row's time per round over the named row's (same backend, dtype and n): "
        "`× otcl` on a POT row is POT / otcl in the same domain. At eps = 0.1 `otcl-auto` "
        "chooses the kernel domain, so its difference from `otcl-kernel` shows the noise; at "
        "eps = 0.01 it is compared with the log domain at 0.01 and the kernel domain at 0.1; the "
        "log domain at eps = 0.001 (most exponentials underflow) is compared with itself at 0.1.",
        "",
    ]
    floors = _ok(records, "solver", "solver/floor/")
    if floors:
        out += ["### Floors", ""]
        out += _rows(
            floors,
            [
                ("backend", _p("backend")),
                ("dtype", _p("dtype")),
                ("n", _p("n")),
                ("floor", lambda r: r["id"].rsplit("/", 1)[1]),
                ("ms/round", _m("ms_per_iter")),
                ("runs", _i("runs")),
                ("procs", _procs),
                ("minflt/round", _m("minflt_per_iter", 2)),
            ],
        )
        out.append("")
    cols: list[Column] = [
        ("backend", _p("backend")),
        ("dtype", _p("dtype")),
        ("n", _p("n")),
        ("method", _p("method")),
        ("ms/round", _m("ms_per_iter")),
        ("runs", _i("runs")),
        ("procs", _procs),
        ("minflt/round", _m("minflt_per_iter", 2)),
        ("× floor", _r("floor")),
        ("× one read", _r("read")),
        ("× exp1", _r("exp1")),
        ("× otcl", _r("otcl")),
        ("× otcl-log", _r("otcl-log")),
        ("× kernel at eps 0.1", _r("otcl-kernel")),
        ("× log at eps 0.1", _r("eps=0.1")),
        ("domain used", _i("domain_used")),
    ]
    for eps in ("0.1", "0.01", "0.001"):
        for problem in ("balanced", "unbalanced"):
            rows = _ok(records, "solver", f"solver/eps={eps}/{problem}/")
            if rows:
                what = (
                    "rho = 1 (POT reg_m = 1, reg_type='entropy')" if problem == "unbalanced" else ""
                )
                out += [f"### eps = {eps}, {problem} {what}".rstrip(), ""]
                out += _rows(rows, cols)
                out.append("")
    return out


def _pot_paired_section(records: list[Record]) -> list[str]:
    rows = _ok(records, "pot-paired")
    if not rows:
        return []
    out = ["## 1c. Unbalanced against POT in one process, calls interleaved", ""]
    out += [
        "rho = 1, eps = 0.1, float32, 100 rounds: two bare matrix-vector products per round "
        "(`floor`), otcl's kernel domain and POT's `sinkhorn_unbalanced(reg_type='entropy')` on "
        "the same problem, one call of each per round of calls (`calls` rounds) in one process; "
        "ms per round are medians, ratios are of the medians. POT's warm-up call checks that its "
        "plan equals otcl's to 1e-4 of the largest entry (`plan diff`). Target 17.3 reads "
        "`POT / otcl` here: measured in separate processes, the same ratio also compares two "
        "processes' memory placement and the load of a shared cache at two moments.",
        "",
    ]
    out += _rows(
        rows,
        [
            ("backend", _p("backend")),
            ("n", _p("n")),
            ("floor ms/round", _m("floor_ms_per_iter")),
            ("otcl ms/round", _m("ms_per_iter")),
            ("POT ms/round", _m("pot_ms_per_iter")),
            ("otcl / floor", _m("otcl_over_floor")),
            ("POT / floor", _m("pot_over_floor")),
            ("POT / otcl", _m("pot_over_otcl")),
            ("plan diff", lambda r: _num(r.get("info", {}).get("pot", {})
                                         .get("plan_diff_vs_otcl"), 2)),
            ("calls", _i("rounds_of_calls")),
            ("procs", _procs),
        ],
    )
    return [*out, ""]


def _stability_section(records: list[Record]) -> list[str]:
    rows = _ok(records, "stability")
    if not rows:
        return []
    out = ["## 1b. Stability in a long-lived process (20 consecutive solves)", ""]
    out += [
        "Balanced, eps = 0.1, 100 rounds per call. `20th/2nd` is the time of the 20th call "
        "over the 2nd; `late/early` the median of calls 16-20 over the median of calls 2-6 "
        "(the target's measure: one slow call moves a single-call ratio by tens of percent); "
        "minor page faults per round of the 2nd and 20th call, and the most of any call "
        "after the first."
        + (
            " This run predates the `late/early` metric: it is computed from the per-call "
            "times of the process reported, which was chosen as the median by `20th/2nd`."
            if any("late_over_early" not in r.get("metrics", {}) for r in rows)
            else ""
        ),
        "",
    ]
    out += _rows(
        rows,
        [
            ("backend", _p("backend")),
            ("dtype", _p("dtype")),
            ("n", _p("n")),
            ("method", _p("method")),
            ("2nd call ms", _m("t2_ms")),
            ("20th call ms", _m("tlast_ms")),
            ("20th/2nd", _m("tlast_over_t2")),
            ("late/early", lambda r: _num(stability_drift(r))),
            ("minflt/round 2nd", _m("minflt_per_iter_2", 2)),
            ("minflt/round 20th", _m("minflt_per_iter_last", 2)),
            ("max minflt/round (2..20)", _m("minflt_per_iter_max_after_first", 2)),
        ],
    )
    return [*out, ""]


def _batched_section(records: list[Record]) -> list[str]:
    rows = _ok(records, "batched")
    if not rows:
        return []
    out = ["## 2. Batched problems", ""]
    out += [
        "One call on a `(B, n, n)` batch (otcl) vs a Python loop of POT `ot.sinkhorn` over "
        "the B problems (same backend), eps = 0.1, 100 rounds. `× POT loop` < 1: otcl faster.",
        "",
    ]

    def per_problem_round(r: Record) -> str:
        p = r["params"]
        return _num(1e3 * r["metrics"]["total_ms"] / (p["batch"] * p["iters"]))

    out += _rows(
        rows,
        [
            ("backend", _p("backend")),
            ("dtype", _p("dtype")),
            (
                "problems",
                lambda r: f"{r['params']['batch']} x {r['params']['n']}x{r['params']['n']}",
            ),
            ("method", _p("method")),
            ("total ms", _m("total_ms")),
            ("µs / problem / round", per_problem_round),
            ("runs", _i("runs")),
            ("procs", _procs),
            ("minflt/round", _m("minflt_per_iter", 2)),
            ("× POT loop", _r("pot-loop")),
        ],
    )
    return [*out, ""]


def _loss_section(records: list[Record]) -> list[str]:
    rows = _ok(records, "losses")
    if not rows:
        return []
    out = ["## 3. Losses: forward + backward (CPU, float32)", ""]
    out += [
        "Random embeddings, d = 128, eps = 0.5, 10 rounds; GCA-UOT rho = 0.2. "
        "`official-style`: explicit kernel, vector Sinkhorn with autograd, plan formed as "
        "`diag(u) @ K @ diag(v)`, cross-entropy on `log P`; `kernel-autograd`: the same "
        "rounds without forming the plan; `otcl`: `otcl.torch.GCAInfoNCE` / `GCAUOT`. "
        "The reference GCA-UOT value is the cross-entropy term only (otcl's adds the "
        "weighted RINCE and mass terms), so only INCE values must agree. Allocator "
        "`keep-freed`: the process runs with glibc's `MALLOC_MMAP_MAX_=0` and a huge "
        "`MALLOC_TRIM_THRESHOLD_` (`benchmarks.suites.KEEP_FREED_ENV`), so freed memory is "
        "reused and neither side pays page faults on repeated calls; `default`: glibc as is. "
        "`ntxent-plus-passes` (keep-freed groups): NT-Xent as torch computes it plus the passes "
        "over the kernel that any exact unrolled derivative of the 10 rounds needs, each at its "
        "fastest: one exponential pass, 2 (2L + 1) = 42 matrix-vector products with the kernel "
        "(forward and backward; two per read of the kernel above 24 MiB, where that is faster) "
        "and the rank-21 gradient matrix (`benchmarks.baselines.nt_xent_plus_passes`); "
        "`× plus-passes` is a loss over it. A loss can take less (its own products faster than "
        "torch's, fewer reads of the kernel).",
        "",
    ]
    out += _rows(
        rows,
        [
            ("layout", _p("layout")),
            ("batch", lambda r: r["id"].split("/")[2]),
            (
                "loss",
                lambda r: (
                    r["params"].get("family", "nt-xent")
                    if r["params"]["impl"] != "ntxent"
                    else "nt-xent"
                ),
            ),
            ("implementation", _p("impl")),
            ("allocator", lambda r: r["params"].get("malloc", "default")),
            ("ms fwd+bwd", _m("ms")),
            ("runs", _i("runs")),
            ("procs", _procs),
            ("value", _m("value", 6)),
            ("× NT-Xent", _r("ntxent")),
            ("× official-style", _r("official-style")),
            ("× kernel-autograd", _r("kernel-autograd")),
            ("× plus-passes", _r("plus-passes")),
        ],
    )
    return [*out, ""]


def _paired_loss_section(records: list[Record]) -> list[str]:
    rows = _ok(records, "losses-paired")
    if not rows:
        return []
    out = ["## 3b. Losses in one process, calls interleaved (glibc keeping freed memory)", ""]
    out += [
        "The losses of a keep-freed group on the same embeddings in one process: one forward + "
        "backward of each per round (NT-Xent, GCA-INCE, GCA-UOT, NT-Xent plus the exact "
        "derivative's passes), up to the repeat count within the budget; ms are medians per "
        "loss, `/ NT-Xent` is a median over NT-Xent's median. The targets read these ratios: "
        "they compare the code, where separate processes also compare their memory placement.",
        "",
    ]
    out += _rows(
        rows,
        [
            ("layout", _p("layout")),
            ("batch", lambda r: r["id"].split("/")[2]),
            ("NT-Xent ms", _m("ntxent_ms")),
            ("GCA-INCE ms", _m("gca-ince_ms")),
            ("GCA-UOT ms", _m("gca-uot_ms")),
            ("plus-passes ms", _m("ntxent-plus-passes_ms")),
            ("GCA-INCE / NT-Xent", _m("gca-ince_over_ntxent")),
            ("GCA-UOT / NT-Xent", _m("gca-uot_over_ntxent")),
            ("plus-passes / NT-Xent", _m("ntxent-plus-passes_over_ntxent")),
            ("rounds", _i("rounds")),
            ("procs", _procs),
        ],
    )
    return [*out, ""]


def _memory_section(records: list[Record]) -> list[str]:
    rows = _ok(records, "memory")
    if not rows:
        return []
    out = ["## 4. Memory: peak of one forward + backward (GCA-INCE, CPU, float32)", ""]
    out += [
        "Peak resident memory added by the call (Linux `VmHWM` reset before it). "
        "`× L=1`: peak with L rounds over the peak with 1 round of the same implementation; "
        "`× kernel-autograd`: over the plain kernel-domain autograd loss with the same L.",
        "",
    ]
    out += _rows(
        rows,
        [
            ("implementation", lambda r: r["id"].split("/")[3]),
            ("L", _p("n_iter")),
            ("batch", _p("batch")),
            ("peak MiB", _m("peak_mib")),
            ("one n x n float32, MiB", lambda r: _num(r["info"].get("n_by_n_float32_mib"))),
            ("× L=1", _r("L=1")),
            ("× kernel-autograd", _r("kernel-autograd")),
        ],
    )
    return [*out, ""]


def _scale_section(records: list[Record]) -> list[str]:
    rows = _ok(records, "scale")
    if not rows:
        return []
    out = ["## 5. Scale: peak memory of one forward + backward on a large batch", ""]
    out += [
        "All-views batch (blocked layout, hard self-mask), float32, d = 128, eps = 0.5, 10 "
        "rounds, default gradient mode. `n x n arrays` = peak over one `2N x 2N` float32 array.",
        "",
    ]

    def arrays(r: Record) -> str:
        per = r["info"].get("n_by_n_float32_mib")
        return _num(r["metrics"]["peak_mib"] / per if per else None)

    out += _rows(
        rows,
        [
            ("2N", lambda r: 2 * int(r["params"]["batch"])),
            ("loss", lambda r: r["params"].get("family", "nt-xent")),
            ("implementation", _p("impl")),
            ("peak GiB", lambda r: _num(r["metrics"]["peak_mib"] / 1024)),
            ("n x n arrays", arrays),
            ("× NT-Xent", _r("ntxent")),
        ],
    )
    return [*out, ""]


def _swav_section(records: list[Record]) -> list[str]:
    rows = _ok(records, "swav")
    if not rows:
        return []
    out = ["## 6. SwAV codes: `otcl.swav_codes` vs SwAV's Sinkhorn-Knopp loop", ""]
    out += [
        "Scores of `B` samples and `K` prototypes (cosines; each sample a prototype plus noise), "
        "float32, eps = 0.05, one thread. `reference`: SwAV's loop (`benchmarks/baselines.py`, "
        "the same code in PyTorch and NumPy). `rounds=3`: both run SwAV's 3 rounds (the codes "
        "are checked to agree). `tol=…`: otcl runs `swav_codes(tol=…)` (the prototype-marginal "
        "relative L1 error, checked every round); the reference runs the fewest rounds whose "
        "error is within `tol`, found before timing. `× reference` = otcl / reference.",
        "",
    ]
    out += _rows(
        rows,
        [
            ("backend", _p("backend")),
            ("B x K", lambda r: f"{r['params']['samples']} x {r['params']['protos']}"),
            ("stop", lambda r: r["id"].split("/")[-2]),
            ("implementation", _p("impl")),
            ("ms", _m("ms")),
            ("rounds", lambda r: r.get("info", {}).get("otcl_rounds", _i("rounds")(r))),
            ("prototype error", lambda r: _num(r.get("info", {}).get("prototype_error"))),
            ("runs", _i("runs")),
            ("procs", _procs),
            ("× reference", _r("reference")),
        ],
    )
    return [*out, ""]


def _external_section(records: list[Record]) -> list[str]:
    rows = _ok(records, "external")
    if not rows:
        return []
    out = ["## 7. otcl vs OTT-JAX and GeomLoss: time per round (100 fixed rounds)", ""]
    out += [
        "The solver problem of section 1 (float32, eps = 0.1; unbalanced: rho = 1, OTT's "
        "`tau = rho / (rho + eps)`), each process pinned to one core before any import (JAX's "
        "CPU runtime ignores the thread variables). `ott-lse` / `ott-kernel`: "
        "`ott.solvers.linear.sinkhorn.Sinkhorn(lse_mode=True / False, min_iterations = "
        "max_iterations = 100)` under `jax.jit` (compiled by the warm-up call); its plan is "
        "checked against otcl's to 1e-4 of the largest entry. `× ott` on an otcl row = otcl / "
        "OTT in the same domain (`< 1`: otcl faster). `geomloss-solve`: `geomloss.ot.solve(C, "
        "reg=eps, max_iter=100)` on the torch tensor, GeomLoss's only matrix method (symmetric "
        "updates with eps-annealing: a different iterate, so only the time per round compares); "
        "`× otcl-log` = GeomLoss / otcl's log domain on torch.",
        "",
    ]
    out += _rows(
        rows,
        [
            ("problem", lambda r: r["id"].split("/")[2]),
            ("n", _p("n")),
            ("backend", _p("backend")),
            ("method", _p("method")),
            ("ms/round", _m("ms_per_iter")),
            ("runs", _i("runs")),
            ("procs", _procs),
            ("× ott", _r("ott")),
            ("× otcl-log", _r("otcl-log")),
        ],
    )
    return [*out, ""]


def _pools(r: Record) -> str:
    """The thread pools a row's process reported (threadpoolctl's view), as ``api xN`` pairs."""
    info = r.get("info", {}).get("threadpools")
    if not isinstance(info, list):
        return str(info)
    return ", ".join(f"{p.get('internal_api')} x{p.get('num_threads')}" for p in info)


def _threads_section(records: list[Record]) -> list[str]:
    rows = _ok(records, "threads")
    if not rows:
        return []
    out = ["## 8. One thread pool: CPU time over wall time on one torch thread", ""]
    out += [
        "A loss's forward + backward (cross-view, d = 128, eps = 0.5, 10 rounds) in a process "
        "that calls only `torch.set_num_threads(1)`: no thread variables, no threadpoolctl "
        "limit, so NumPy's BLAS pool keeps its default size (`pools`). `cpu/wall` = "
        "`time.process_time()` / `time.perf_counter()` over the timed calls: about 1 when all "
        "work runs on torch's one thread, up to the pool size when a second pool computes. "
        "On a machine whose other processes take the cores, it reads below 1.",
        "",
    ]

    out += _rows(
        rows,
        [
            ("loss", lambda r: r["params"].get("family", "nt-xent")),
            ("batch", _p("batch")),
            ("cpu/wall", _m("cpu_over_wall")),
            ("ms fwd+bwd", _m("ms")),
            ("calls", _i("calls")),
            ("pools", _pools),
            ("procs", _procs),
        ],
    )
    return [*out, ""]


def _default_threads_section(records: list[Record]) -> list[str]:
    rows = _ok(records, "default-threads")
    if not rows:
        return []
    out = ["## 8b. The solver at the libraries' default thread counts", ""]
    out += [
        "Balanced, eps = 0.1, float32, 100 rounds, in a process with no thread variables, no "
        "threadpoolctl limit and no `torch.set_num_threads`: NumPy's BLAS and torch keep their "
        "own pools (`pools`; torch's intra-op threads in `torch threads`). Each row solves the "
        "same problem on NumPy arrays and on PyTorch CPU tensors in one process, the calls "
        "interleaved (`pairs` of calls); `torch / numpy` is the median Torch call over the "
        "median NumPy call.",
        "",
    ]

    out += _rows(
        rows,
        [
            ("n", _p("n")),
            ("method", _p("method")),
            ("numpy ms/round", _m("numpy_ms_per_iter")),
            ("torch ms/round", _m("ms_per_iter")),
            ("torch / numpy", _m("torch_over_numpy")),
            ("pairs", _i("pairs")),
            ("torch threads", lambda r: r.get("info", {}).get("torch_threads", "–")),
            ("pools", _pools),
            ("procs", _procs),
        ],
    )
    return [*out, ""]


def _gradmem_section(records: list[Record]) -> list[str]:
    rows = _ok(records, "gradmem")
    if not rows:
        return []
    out = ["## 9. Gradient memory: otcl's gradient modes against OTT-JAX's", ""]
    out += [
        "The cross-view GCA-INCE loss of random float32 embeddings (d = 128, eps = 0.5) and its "
        "gradient with respect to both views (`benchmarks/gradient_memory.py`): otcl's "
        "`GCAInfoNCE(grad=...)` with 100 rounds, OTT-JAX's jitted `Sinkhorn(lse_mode=True)` "
        "with `ImplicitDiff()` to a marginal error of 1e-6 or unrolled through 100 rounds. Each "
        "row checks its loss and gradient against an independent computation. Linux `VmHWM` "
        "reset before each phase, glibc's mmap threshold fixed at 128 KiB on both sides (freed "
        "blocks return to the system). `backward peak MiB`: peak during the backward above the "
        "memory before the call (what the forward keeps for it plus what it adds); `kept`: "
        "what the forward keeps; `added`: what the backward adds on top; `total`: peak of the "
        "whole call. otcl is measured on its first call at this size (its buffer pool "
        "counted), OTT on its second (the first compiles). `× ott-implicit`: backward over OTT's "
        "implicit one.",
        "",
    ]
    out += _rows(
        rows,
        [
            ("implementation", lambda r: r["id"].rsplit("/", 1)[-1]),
            ("batch", _p("batch")),
            ("backward peak MiB", _m("backward_peak_mib")),
            ("kept MiB", _m("kept_mib")),
            ("added MiB", _m("backward_added_mib")),
            ("total MiB", _m("total_mib")),
            ("one n x n float32, MiB", lambda r: _num(r["info"].get("n_by_n_float32_mib"))),
            ("grad gap", lambda r: _num(r["info"].get("grad_gap"), 2)),
            ("× ott-implicit", _r("ott-implicit")),
        ],
    )
    return [*out, ""]


def _targets_section(run: dict[str, Any]) -> list[str]:
    return ["## Targets", "", summary_markdown(run).rstrip(), ""]


def _not_run_section(records: list[Record]) -> list[str]:
    errors = [r for r in records if r["status"] == "error"]
    skipped = [r for r in records if r["status"] == "skipped"]
    out: list[str] = []
    if errors:
        out += ["## Errors", ""]
        out += [f"- `{r['id']}`: {r.get('reason', '')}" for r in errors]
        out.append("")
    if skipped:
        reasons: dict[str, int] = {}
        for r in skipped:
            reasons[r.get("reason", "")] = reasons.get(r.get("reason", ""), 0) + 1
        out += ["## Skipped", ""]
        out += [f"- {count} case(s): {reason}" for reason, count in sorted(reasons.items())]
        out.append("")
    return out


def _processes(settings: dict[str, Any]) -> str:
    count = int(settings.get("processes", 1))
    if count == 1:
        return "a fresh process"
    return (
        f"up to {count} fresh processes (none started once a case's processes took "
        f"{settings.get('process_budget_s')} s), the median process reported"
    )


def _header(run: dict[str, Any]) -> list[str]:
    m = run.get("machine", {})
    versions = m.get("versions", {})
    threads = m.get("threads", {})
    pools = threads.get("threadpools")
    if isinstance(pools, list):
        pool_text = ", ".join(
            f"{p['internal_api']} {p.get('version') or ''} x{p['num_threads']}".replace("  ", " ")
            for p in pools
        )
    else:
        pool_text = str(pools)
    s = run["settings"]
    lines = [
        "# otcl benchmark results",
        "",
        *runs_lines(run),
        f"- Command{' of the latest run' if run.get('runs') else ''}: `{run.get('command', '')}`",
        f"- Date: {run.get('started', '')}; total wall time {_num(run.get('wall_s'))} s; "
        f"git {run.get('git', '?')}",
        f"- CPU: {m.get('cpu_model', '?')}, {m.get('logical_cpus', '?')} logical CPUs "
        f"({m.get('usable_cpus', '?')} usable); {m.get('platform', '')}",
        f"- GPU: {m.get('cuda_device') or 'none'}",
        f"- Load average (1 min) before / after: {run.get('load_before', '?')} / "
        f"{run.get('load_after', '?')}",
        "- Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items() if v is not None),
        f"- Threads per case: {s['threads']} (torch intra-op {threads.get('torch_num_threads')}, "
        f"inter-op {threads.get('torch_num_interop_threads')}); thread pools: {pool_text}",
        f"- Timing: each case in {_processes(s)}; one warm-up call, then up to "
        f"{s['repeat']} timed calls or until {s['budget_s']} s of timed calls; the median is "
        "reported"
        f"{'; QUICK sizes (smoke test)' if s.get('quick') else ''}.",
        "",
    ]
    return lines


def markdown(run: dict[str, Any]) -> str:
    """The Markdown report of a run (``run["cases"]`` are records with ratios)."""
    records = run["cases"]
    parts = _header(run) + _targets_section(run)
    for section in (
        _solver_section,
        _stability_section,
        _pot_paired_section,
        _batched_section,
        _loss_section,
        _paired_loss_section,
        _memory_section,
        _scale_section,
        _swav_section,
        _external_section,
        _threads_section,
        _default_threads_section,
        _gradmem_section,
        _not_run_section,
    ):
        parts += section(records)
    return "\n".join(parts).rstrip() + "\n"
