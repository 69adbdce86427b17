"""The performance targets, checked against the records of one benchmark run.

Every target is a bound on a number the run measured (a ratio of two rows of the same run, or a
row's own metric). :func:`evaluate` turns the records into :class:`Check` rows: the measured
value, the goal, and whether it is met (``None`` when a row it needs did not run, e.g. the GPU
rows on a machine without one). :func:`summary_markdown` is the short table that the README and
the performance page of the docs show.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from benchmarks.common import late_over_early
from benchmarks.suites import SIZES, SWAV

__all__ = ["Check", "evaluate", "largest_batch", "stability_drift", "summary_markdown"]

Record = dict[str, Any]

GIB = 2**30
SCALE_LIMIT_GIB = 8.0
MACHINE_GIB = 24.0

_FULL = SIZES["full"]
_N = max(_FULL["solver_n"])
_STABILITY_N = _FULL["stability_n"]
_BATCH, _SMALL_N = _FULL["batched"]
_MEMORY_B = _FULL["memory_batch"]
_SWAV_B, _SWAV_K = _FULL["swav"]
_EXTERNAL_N = _FULL["external_n"]
_THREADS_B = _FULL["threads_batch"]
_CPU = ("numpy", "torch")
_GPU = ("torch-cuda", "cupy")


@dataclass(frozen=True)
class Check:
    """One measured number against its bound.

    ``target``: what is promised; ``row``: the row(s) it is read from; ``measured``: the value
    as text; ``goal``: the bound as text; ``met``: ``True``/``False``, or ``None`` if not run.
    """

    target: str
    row: str
    measured: str
    goal: str
    met: bool | None


def _fmt(x: float | None, digits: int = 3) -> str:
    if x is None:
        return "–"
    return f"{x:.{digits}g}"


def _by_id(records: list[Record]) -> dict[str, Record]:
    return {r["id"]: r for r in records if r.get("status") == "ok"}


def _ratio(rec: Record | None, label: str) -> float | None:
    if rec is None:
        return None
    value = rec.get("ratios", {}).get(label)
    return None if value is None else float(value)


def _metric(rec: Record | None, key: str) -> float | None:
    if rec is None:
        return None
    value = rec.get("metrics", {}).get(key)
    return None if value is None else float(value)


def _bound(
    target: str,
    row: str,
    value: float | None,
    goal: str,
    ok: Callable[[float], bool],
    show: Callable[[float | None], str] = _fmt,
) -> Check:
    return Check(target, row, show(value), goal, None if value is None else bool(ok(value)))


def stability_drift(rec: Record | None) -> float | None:
    """A stability row's ``late_over_early``, derived from its per-call times for runs written
    before the metric existed; ``None`` if the row did not run."""
    value = _metric(rec, "late_over_early")
    calls = None if rec is None else rec.get("info", {}).get("call_ms")
    if value is None and calls:
        value = late_over_early(calls)
    return value


def largest_batch(peak_bytes: float, n: int, memory_bytes: float) -> int:
    """The largest ``n'`` whose ``n' x n'`` problem fits ``memory_bytes``, if the peak grows as
    ``n^2``: ``n' = floor(n * sqrt(memory / peak))``."""
    return math.floor(n * math.sqrt(memory_bytes / peak_bytes))


def _solver_checks(by_id: dict[str, Record], backends: tuple[str, ...]) -> list[Check]:
    out: list[Check] = []
    t1 = f"1. kernel domain, n = {_N} float32: per round within 1.25x of two mat-vecs"
    t1b = f"1. kernel domain, n = {_N} float32: at least 1.5x faster than POT"
    t2 = f"2. log domain, n = {_N} float32: faster than POT `sinkhorn_log`"
    t2b = f"2. log domain, n = {_N} float32: within 3x of one exponential pass per round"
    t3 = "3. `auto` at eps = 0.1 (cosine cost, float32) runs in the kernel domain"
    t3b = "3. `auto` at eps = 0.01: within 2x of the kernel domain's time per round"
    for backend in backends:
        pre = f"solver/eps=0.1/{{problem}}/{backend}/float32/n={_N}"
        for problem in ("balanced", "unbalanced"):
            base = pre.format(problem=problem)
            row = f"{backend} {problem}"
            kernel = by_id.get(f"{base}/otcl-kernel")
            # below two products is possible (a fused sweep reads the kernel once), below one
            # read is not: the row names the one-read ratio where its run measured it
            read = _ratio(kernel, "read")
            note = "" if read is None else f" (over one read of the kernel: {_fmt(read)})"
            out.append(_bound(t1, row + note, _ratio(kernel, "floor"), "<= 1.25",
                              lambda x: x <= 1.25))
            out.append(_bound(t1b, row, _pot_over_otcl(by_id, backend, problem, _N),
                              ">= 1.5 (POT / otcl)", lambda x: x >= 1.5))
        base = pre.format(problem="balanced")
        need = 3.0 if backend in ("numpy", "cupy") else 1.5
        pot_log = by_id.get(f"{base}/pot-sinkhorn_log")
        out.append(
            _bound(
                t2,
                backend,
                _ratio(pot_log, "otcl"),
                f">= {need:g} (POT / otcl)",
                lambda x, need=need: x >= need,
            )
        )
        log = by_id.get(f"{base}/otcl-log")
        out.append(_bound(t2b, backend, _ratio(log, "exp1"), "<= 3", lambda x: x <= 3.0))
        for problem in ("balanced", "unbalanced"):
            auto = by_id.get(f"{pre.format(problem=problem)}/otcl-auto")
            used = None if auto is None else auto.get("info", {}).get("domain_used")
            out.append(
                Check(
                    t3,
                    f"{backend} {problem}",
                    used or "–",
                    "kernel",
                    None if used is None else used == "kernel",
                )
            )
        for problem in ("balanced", "unbalanced"):
            small = by_id.get(f"solver/eps=0.01/{problem}/{backend}/float32/n={_N}/otcl-auto")
            out.append(
                _bound(
                    t3b,
                    f"{backend} {problem}",
                    _ratio(small, "otcl-kernel"),
                    "<= 2 (auto at 0.01 / kernel at 0.1)",
                    lambda x: x <= 2.0,
                )
            )
    return out


def _stability_checks(by_id: dict[str, Record]) -> list[Check]:
    out = []
    target = (
        f"1. stable in a long-lived process (n = {_STABILITY_N}; median of calls 16-20 / "
        "median of calls 2-6)"
    )
    for backend in _CPU:
        rec = by_id.get(f"stability/{backend}/float32/n={_STABILITY_N}/otcl-kernel")
        value = stability_drift(rec)
        faults = _metric(rec, "minflt_per_iter_last")
        row = f"{backend} kernel" + ("" if faults is None else f" ({faults:.2g} page faults/round)")
        out.append(_bound(target, row, value, "<= 1.2", lambda x: x <= 1.2))
    return out


def _loss_checks(by_id: dict[str, Record]) -> list[Check]:
    out: list[Check] = []
    groups = (
        ("4. B = 2048 cross-view", "losses/cross/B=2048", 1.5, 0.1),
        ("issue 4. 2N = 1024 all-views", "losses/all-views/2N=1024", 2.0, 0.2),
        ("issue 4. 2N = 4096 all-views", "losses/all-views/2N=4096", 2.0, 0.2),
        ("issue 4. B = 1024 cross-view", "losses/cross/B=1024", 2.0, 0.2),
    )
    for label, group, vs_ntxent, vs_official in groups:
        for family in ("gca-ince", "gca-uot"):
            rec = by_id.get(f"{group}/{family}/otcl")
            name = family.upper()
            out.append(
                _bound(
                    f"{label}: loss fwd+bwd at most {vs_ntxent:g}x NT-Xent",
                    name,
                    _ratio(rec, "ntxent"),
                    f"<= {vs_ntxent:g}",
                    lambda x, b=vs_ntxent: x <= b,
                )
            )
            out.append(
                _bound(
                    f"{label}: at least {1 / vs_official:g}x faster than official-style",
                    name,
                    _ratio(rec, "official-style"),
                    f"<= {vs_official:g} (otcl / official)",
                    lambda x, b=vs_official: x <= b,
                )
            )
    return out


def _memory_checks(by_id: dict[str, Record]) -> list[Check]:
    target = f"issue 4. peak memory with 100 rounds / with 1 round (B = {_MEMORY_B})"
    out = []
    for mode in ("unroll", "implicit"):
        rec = by_id.get(f"memory/B={_MEMORY_B}/gca-ince/otcl-{mode}/L=100")
        out.append(_bound(target, f"grad={mode}", _ratio(rec, "L=1"), "<= 1.5", lambda x: x <= 1.5))
    return out


def _batched_checks(by_id: dict[str, Record]) -> list[Check]:
    target = f"5. {_BATCH} problems of {_SMALL_N} x {_SMALL_N} in one call vs a loop over POT"
    out = []
    for backend in _CPU:
        rec = by_id.get(f"batched/{backend}/float32/{_BATCH}x{_SMALL_N}x{_SMALL_N}/otcl-auto")
        ratio = _ratio(rec, "pot-loop")
        speedup = None if ratio is None or ratio <= 0 else 1.0 / ratio
        out.append(
            _bound(
                target,
                backend,
                speedup,
                ">= 20x faster",
                lambda x: x >= 20.0,
                show=lambda x: "–" if x is None else f"{x:.3g}x faster",
            )
        )
    return out


def _scale_checks(records: list[Record], by_id: dict[str, Record]) -> list[Check]:
    out: list[Check] = []
    for rec in records:
        if rec.get("suite") != "scale" or rec.get("params", {}).get("impl") != "otcl":
            continue
        n = 2 * int(rec["params"]["batch"])
        family = rec["params"]["family"].upper()
        peak = _metric(by_id.get(rec["id"]), "peak_mib")
        peak_gib = None if peak is None else peak / 1024
        out.append(
            _bound(
                f"6. 2N = {n} float32 fwd+bwd: peak memory",
                family,
                peak_gib,
                f"<= {SCALE_LIMIT_GIB:g} GiB",
                lambda x: x <= SCALE_LIMIT_GIB,
                show=lambda x: "–" if x is None else f"{x:.3g} GiB",
            )
        )
        if peak:
            biggest = largest_batch(peak * 2**20, n, MACHINE_GIB * GIB)
            out.append(
                Check(
                    f"6. largest 2N whose fwd+bwd fits {MACHINE_GIB:g} GiB (peak grows as n^2)",
                    family,
                    f"about {biggest:,}",
                    "stated",
                    True,
                )
            )
    return out


def _gpu_checks(by_id: dict[str, Record]) -> list[Check]:
    target = f"7. GPU, n = {_N} float32: at least 3x faster than POT on the same GPU"
    out = []
    for backend in _GPU:
        for problem, pot in (("balanced", "pot-sinkhorn"), ("unbalanced", "pot-unbalanced")):
            rec = by_id.get(f"solver/eps=0.1/{problem}/{backend}/float32/n={_N}/{pot}")
            out.append(
                _bound(
                    target,
                    f"{backend} {problem}",
                    _ratio(rec, "otcl"),
                    ">= 3 (POT / otcl)",
                    lambda x: x >= 3.0,
                )
            )
    return out


def _swav_checks(by_id: dict[str, Record]) -> list[Check]:
    rounds, tol = SWAV["rounds"], SWAV["tol"]
    t_fixed = (
        f"issue 19. SwAV codes, B = {_SWAV_B}, K = {_SWAV_K} float32, {rounds} rounds: "
        "at least as fast as SwAV's loop"
    )
    t_tol = (
        f"issue 19. SwAV codes to a prototype-marginal error <= {tol:g}: faster than SwAV's "
        "loop at the fewest rounds that reach it"
    )
    out = []
    for backend in _CPU:
        group = f"swav/B={_SWAV_B}/K={_SWAV_K}/{backend}/float32"
        rec = by_id.get(f"{group}/rounds={rounds}/otcl")
        out.append(_bound(t_fixed, backend, _ratio(rec, "reference"), "<= 1 (otcl / SwAV)",
                          lambda x: x <= 1.0))
        rec = by_id.get(f"{group}/tol={tol:g}/otcl")
        out.append(_bound(t_tol, backend, _ratio(rec, "reference"), "< 1 (otcl / SwAV)",
                          lambda x: x < 1.0))
    return out


def _external_checks(by_id: dict[str, Record]) -> list[Check]:
    target = "issue 17.1 log domain per round at least 1.2x faster than OTT-JAX `lse_mode`"
    out = []
    for backend in _CPU:
        for n in _EXTERNAL_N:
            rec = by_id.get(f"external/eps=0.1/balanced/float32/n={n}/{backend}/otcl-log")
            out.append(_bound(target, f"{backend} n = {n}", _ratio(rec, "ott"),
                              "<= 0.833 (otcl / OTT)", lambda x: x <= 1 / 1.2))
    return out


def _pot_over_otcl(by_id: dict[str, Record], backend: str, problem: str, n: int,
                   metric: str = "pot_over_otcl") -> float | None:
    """POT / otcl (kernel domain, eps = 0.1, float32) on ``problem`` at size ``n``: from the
    ``pot-paired`` row where the run has one (unbalanced only: the two in one process, calls
    interleaved), else from the separate solver rows. ``metric="pot_over_floor"`` reads POT over
    the two bare products instead."""
    paired = (by_id.get(f"pot-paired/eps=0.1/unbalanced/{backend}/float32/n={n}/floor-otcl-pot")
              if problem == "unbalanced" else None)
    pot = "pot-unbalanced" if problem == "unbalanced" else "pot-sinkhorn"
    rec = by_id.get(f"solver/eps=0.1/{problem}/{backend}/float32/n={n}/{pot}")
    return _paired_or_separate(paired, metric, rec,
                               "otcl" if metric == "pot_over_otcl" else "floor")


def _paired_or_separate(paired: Record | None, metric: str, separate: Record | None,
                        label: str) -> float | None:
    """``metric`` of a row measured in one process with its baselines (``paired``) where the
    run has one, else the ratio ``label`` of the row measured on its own (``separate``)."""
    return _metric(paired, metric) if paired is not None else _ratio(separate, label)


def _unbalanced_checks(by_id: dict[str, Record]) -> list[Check]:
    """POT's ``sinkhorn_unbalanced(reg_type="entropy")`` over otcl's kernel domain on the same
    problem (POT's warm-up call checks that the plans agree to 1e-4 of the largest entry), read
    from the ``pot-paired`` row (the two in one process, calls interleaved) or, where a run has
    no paired row, from the separate solver rows. Each NumPy row also names POT over two bare
    matrix-vector products (NumPy's BLAS, which otcl's products use too): the most that a round
    reading the kernel twice can reach (a fused sweep reads it once, which pays above
    ``otcl.ops.blocking.FUSE_MIN_BYTES``, 24 MiB). The Torch rows' floor is ``torch.mv``, which
    otcl does not use on the CPU, so it bounds nothing there and is not named."""
    target = "issue 17.3 unbalanced (rho = 1) per round at least 1.5x faster than POT"
    out = []
    for backend in _CPU:
        for n in sorted(set(_FULL["solver_n"][1:]) | set(_FULL["pot_paired_n"])):
            value = _pot_over_otcl(by_id, backend, "unbalanced", n)
            ceiling = (_pot_over_otcl(by_id, backend, "unbalanced", n, "pot_over_floor")
                       if backend == "numpy" else None)
            note = "" if ceiling is None else f" (POT / two bare mat-vecs: {_fmt(ceiling)})"
            out.append(_bound(target, f"{backend} n = {n}{note}", value,
                              ">= 1.5 (POT / otcl)", lambda x: x >= 1.5))
    return out


def _keep_freed_checks(by_id: dict[str, Record]) -> list[Check]:
    """Read from the group's ``paired`` row (the losses in one process, calls interleaved), or
    from its separate rows where a run has no paired row. Each row also names, when it ran,
    NT-Xent plus the passes over the kernel that any exact unrolled derivative of the rounds
    needs, over NT-Xent: how close the goal is to what the machine allows an exact gradient."""
    out = []
    for label, group in (("B = 2048 cross-view", "losses/cross/B=2048"),
                         ("2N = 4096 all-views", "losses/all-views/2N=4096")):
        paired = by_id.get(f"{group}/keep-freed/paired")
        plus = _paired_or_separate(paired, "ntxent-plus-passes_over_ntxent",
                                   by_id.get(f"{group}/keep-freed/ntxent-plus-passes"), "ntxent")
        note = ("" if plus is None
                else f" (NT-Xent plus the exact derivative's passes: {_fmt(plus)})")
        kind = ", in one process" if paired is not None else ""
        for family, bound in (("gca-ince", 1.4), ("gca-uot", 1.5)):
            value = _paired_or_separate(paired, f"{family}_over_ntxent",
                                        by_id.get(f"{group}/keep-freed/{family}/otcl"), "ntxent")
            out.append(_bound(
                f"issue 17.5 {label}, glibc keeping freed memory{kind}: loss fwd+bwd / NT-Xent",
                family.upper() + note, value, f"<= {bound:g}", lambda x, b=bound: x <= b,
                show=lambda x: _fmt(x, 4),  # enough digits to tell a value from its bound
            ))
    return out


def _underflow_checks(by_id: dict[str, Record]) -> list[Check]:
    n = _FULL["solver_n"][len(_FULL["solver_n"]) // 2]
    target = (
        f"issue 17.2 log domain per round at eps = 0.001 over eps = 0.1 (n = {n}, float32)"
    )
    return [
        _bound(target, backend,
               _ratio(by_id.get(f"solver/eps=0.001/balanced/{backend}/float32/n={n}/otcl-log"),
                      "eps=0.1"),
               "<= 1.5", lambda x: x <= 1.5)
        for backend in _CPU
    ]


def _thread_checks(by_id: dict[str, Record]) -> list[Check]:
    target = (
        f"issue 17.4 one thread pool: CPU time / wall time of a loss step on one torch thread "
        f"(cross-view B = {_THREADS_B})"
    )
    out = []
    for family in ("gca-ince", "gca-uot"):
        rec = by_id.get(f"threads/torch/float32/cross/B={_THREADS_B}/{family}/otcl")
        out.append(_bound(target, family.upper(), _metric(rec, "cpu_over_wall"), "<= 1.25",
                          lambda x: x <= 1.25))
    return out


def _default_thread_checks(by_id: dict[str, Record]) -> list[Check]:
    n = _N
    target = (
        f"issue 17.4 at the default thread counts: Torch per round over NumPy per round "
        f"(balanced, n = {n}, float32, interleaved in one process)"
    )
    return [
        _bound(target, f"{domain} domain",
               _metric(by_id.get(f"default-threads/eps=0.1/balanced/float32/n={n}/"
                                 f"otcl-{domain}/torch-and-numpy"), "torch_over_numpy"),
               "<= 1 (Torch / NumPy)", lambda x: x <= 1.0)
        for domain in ("kernel", "log")
    ]


def _gradient_memory_checks(by_id: dict[str, Record]) -> list[Check]:
    group = f"gradmem/cross/B={_FULL['gradmem_batch']}/gca-ince"
    target = (
        f"issue 17.6 peak memory of the backward of GCA-INCE (cross-view B = "
        f"{_FULL['gradmem_batch']}) over OTT-JAX's implicit differentiation"
    )
    return [
        _bound(target, f"otcl {mode}", _ratio(by_id.get(f"{group}/otcl-{mode}"), "ott-implicit"),
               f"<= {bound:g} (otcl / OTT implicit)", lambda x, b=bound: x <= b)
        for mode, bound in (("implicit", 1.0), ("unroll", 2.0))
    ]


def _grouped(checks: list[Check]) -> list[Check]:
    """``checks`` with equal targets adjacent, targets in first-seen order (stable)."""
    order = list(dict.fromkeys(c.target for c in checks))
    return sorted(checks, key=lambda c: order.index(c.target))


def evaluate(records: list[Record]) -> list[Check]:
    """Every target row, in the order of the performance issue's list (the loss targets of the
    trainable-losses issue after target 4, SwAV's codes before the GPU rows)."""
    by_id = _by_id(records)
    solver = _grouped(_solver_checks(by_id, _CPU))
    return [
        *[c for c in solver if c.target.startswith("1.")],
        *_stability_checks(by_id),
        *[c for c in solver if not c.target.startswith("1.")],
        *_grouped(_loss_checks(by_id)),
        *_keep_freed_checks(by_id),
        *_memory_checks(by_id),
        *_batched_checks(by_id),
        *_scale_checks(records, by_id),
        *_grouped(_swav_checks(by_id)),
        *_external_checks(by_id),
        *_underflow_checks(by_id),
        *_unbalanced_checks(by_id),
        *_thread_checks(by_id),
        *_default_thread_checks(by_id),
        *_gradient_memory_checks(by_id),
        *_gpu_checks(by_id),
    ]


REMEASURE: tuple[tuple[str, str], ...] = (
    ("1. kernel domain, n = 4096 float32: per round",
     r"^solver/eps=0\.1/.*/float32/n=4096/otcl-kernel$"),
    ("1. kernel domain, n = 4096 float32: at least",
     r"^(solver/eps=0\.1/balanced/.*/float32/n=4096/pot-sinkhorn|pot-paired/.*/n=4096/.*)$"),
    ("1. stable", r"^stability/(numpy|torch)/.*/otcl-kernel$"),
    ("2. log domain, n = 4096 float32: faster",
     r"^solver/eps=0\.1/balanced/.*/float32/n=4096/pot-sinkhorn_log$"),
    ("2. log domain, n = 4096 float32: within",
     r"^solver/eps=0\.1/balanced/.*/float32/n=4096/otcl-log$"),
    ("3. `auto` at eps = 0.1", r"^solver/eps=0\.1/.*/float32/n=4096/otcl-auto$"),
    ("3. `auto` at eps = 0.01", r"^solver/eps=0\.01/.*/float32/n=4096/otcl-auto$"),
    ("4. B = 2048 cross-view", r"^losses/cross/B=2048/gca-[a-z]+/otcl$"),
    ("issue 4. 2N = 1024", r"^losses/all-views/2N=1024/gca-[a-z]+/otcl$"),
    ("issue 4. 2N = 4096", r"^losses/all-views/2N=4096/gca-[a-z]+/otcl$"),
    ("issue 4. B = 1024", r"^losses/cross/B=1024/gca-[a-z]+/otcl$"),
    ("issue 17.5 B = 2048", r"^losses/cross/B=2048/keep-freed/"),
    ("issue 17.5 2N = 4096", r"^losses/all-views/2N=4096/keep-freed/"),
    ("issue 4. peak memory", r"^memory/.*/otcl-(unroll|implicit)/L=100$"),
    ("5. ", r"^batched/(numpy|torch)/float32/.*/otcl-auto$"),
    ("6. ", r"^scale/"),
    ("issue 19. ", r"^swav/"),
    ("issue 17.1 ", r"^external/eps=0\.1/balanced/.*/otcl-log$"),
    ("issue 17.4 at the default", r"^default-threads/"),
    ("issue 17.4 ", r"^threads/"),
    ("issue 17.2 ", r"^solver/eps=0\.001/"),
    ("issue 17.3 ", r"^pot-paired/"),
    ("issue 17.6 ", r"^gradmem/"),
    ("7. GPU", r"^solver/eps=0\.1/.*/(torch-cuda|cupy)/float32/n=4096/pot-"),
)
"""The ``--only`` pattern that re-measures each target's rows (their baselines come along),
by the start of the target's text."""


def remeasure(target: str) -> str | None:
    """The command that re-measures the rows of ``target`` (``None`` if none is listed)."""
    for prefix, pattern in REMEASURE:
        if target.startswith(prefix):
            return f"python -m benchmarks --only '{pattern}'"
    return None


def _met(check: Check) -> str:
    return {True: "yes", False: "**no**", None: "not run"}[check.met]


def _families(records: list[Record]) -> str:
    """The row families of ``records`` (first two parts of their ids), briefly."""
    groups = list(dict.fromkeys("/".join(r["id"].split("/")[:2]) for r in records
                                if r.get("status") == "ok"))
    return ", ".join(f"`{g}`" for g in groups)


def runs_lines(run: dict[str, Any]) -> list[str]:
    """For merged results (``run["runs"]``): one Markdown line per run with its command, date,
    revision and the row families it measured; nothing for a single run."""
    runs = run.get("runs")
    if not runs:
        return []
    lines = [f"- Rows from {len(runs)} runs (ratios only within one run):"]
    for k, r in enumerate(runs):
        own = [c for c in run["cases"] if c.get("run") == k]
        if not own:
            continue
        lines.append(
            f"  - run {k + 1}: `{r.get('command')}` on {str(r.get('started', '?'))[:10]} "
            f"(git {r.get('git', '?')}; load average {r.get('load_before', '?')} before, "
            f"{r.get('load_after', '?')} after): {len(own)} rows: {_families(own)}"
        )
    return lines


def summary_markdown(run: dict[str, Any]) -> str:
    """The targets table of a run, with the machine and the date it ran on (Markdown)."""
    m = run.get("machine", {})
    checks = evaluate(run["cases"])
    met = sum(c.met is True for c in checks)
    missed = sum(c.met is False for c in checks)
    not_run = sum(c.met is None for c in checks)
    if run.get("runs"):
        head = ["Measured on " f"{m.get('cpu_model', '?')}, {m.get('usable_cpus', '?')} CPUs, "
                f"one thread per case, GPU: {m.get('cuda_device') or 'none'}. "
                f"{met} met, {missed} missed, {not_run} not run.", "", *runs_lines(run)]
    else:
        head = [
            f"Measured by `{run.get('command', 'python -m benchmarks')}` on "
            f"{run.get('started', '?')[:10]} (git {run.get('git', '?')}): "
            f"{m.get('cpu_model', '?')}, {m.get('usable_cpus', '?')} CPUs, "
            f"one thread per case, GPU: {m.get('cuda_device') or 'none'}. "
            f"{met} met, {missed} missed, {not_run} not run."
        ]
    lines = [
        *head,
        "",
        "| target | row | measured | goal | met | re-measure |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    last = None
    for c in checks:
        first = c.target != last
        name = c.target if first else "〃"
        last = c.target
        command = remeasure(c.target) if first else None
        cells = [name, c.row, c.measured, c.goal, _met(c), f"`{command}`" if command else ""]
        lines.append("| " + " | ".join(x.replace("|", "\\|") for x in cells) + " |")
    return "\n".join(lines) + "\n"
