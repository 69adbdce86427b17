"""The benchmark command: plan, run every case in its own process, write JSON and Markdown.

    python -m benchmarks [--out DIR] [--quick] [--only REGEX ...] [--threads N] [--repeat K]
                         [--budget SECONDS] [--timeout SECONDS] [--processes R]
                         [--process-budget SECONDS] [--list] [--readme FILE] [--report-only]

Results go to ``DIR/results.json`` (every record, machine, settings), ``DIR/results.md`` (the
tables) and ``DIR/summary.md`` (the performance targets, met or not, and the machine); all are
rewritten after each case, so an interrupted run keeps what it measured. With ``--readme FILE``
the summary also replaces the block between the benchmark markers of ``FILE`` (the README).
``--report-only`` rewrites the reports from an existing ``results.json`` without running cases;
with ``--merge FILE`` it first replaces the rows that the run in ``FILE`` measured (a partial
run, ``--only``) and keeps the others, each row with the run it comes from.
The exit status is 1 when a case failed (``error``), 0 otherwise (skipped cases are not failures).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmarks.case import RESULT_PREFIX
from benchmarks.common import THREAD_ENV_VARS
from benchmarks.report import add_ratios, markdown
from benchmarks.suites import PRIMARY, Case, build_plan, select
from benchmarks.targets import summary_markdown

__all__ = ["drop_retired", "interleaved", "main", "merge_runs", "run_child"]

ROOT = Path(__file__).resolve().parent.parent

_MISSING = {
    "torch": "not available: torch is not installed",
    "pot": "not available: POT is not installed",
    "cuda": "not available: no CUDA device",
    "cupy": "not available: cupy is not installed or no CUDA device",
    "ott": "not available: ott-jax is not installed (pip install 'otcl[bench]')",
    "geomloss": "not available: geomloss is not installed (pip install 'otcl[bench]')",
}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Benchmark otcl against floors, POT and reference losses.",
    )
    p.add_argument("--out", default="benchmarks/results", help="output directory")
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test of the suite")
    p.add_argument(
        "--only",
        action="append",
        metavar="REGEX",
        help="run the cases whose id matches (repeatable; baselines are added)",
    )
    p.add_argument("--threads", type=int, default=1, help="threads per case (default 1)")
    p.add_argument("--repeat", type=int, default=5, help="timed calls per case (default 5)")
    p.add_argument(
        "--budget",
        type=float,
        default=3.0,
        help="stop repeating a case once its timed calls took this long (s)",
    )
    p.add_argument("--timeout", type=float, default=900.0, help="per-case limit (s)")
    p.add_argument(
        "--processes",
        type=int,
        default=1,
        help="fresh processes per case; the median process is reported (default 1)",
    )
    p.add_argument(
        "--process-budget",
        type=float,
        default=20.0,
        help="start no further process for a case once its processes took this long (s)",
    )
    p.add_argument("--list", action="store_true", help="print the selected case ids and exit")
    p.add_argument(
        "--readme",
        metavar="FILE",
        help="also rewrite the targets table between the benchmark markers of FILE",
    )
    p.add_argument(
        "--report-only",
        action="store_true",
        help="rewrite results.md, summary.md (and --readme) from OUT/results.json; run nothing",
    )
    p.add_argument(
        "--merge",
        action="append",
        metavar="FILE",
        help="with --report-only: replace OUT/results.json's rows by those of the run in FILE "
        "(a results.json) and keep the others; repeatable; each row keeps its run",
    )
    return p


def run_provenance(run: dict[str, Any]) -> dict[str, Any]:
    """What identifies one run of the suite: its command, date, revision, load and settings."""
    keys = ("command", "started", "git", "load_before", "load_after", "wall_s", "settings")
    return {k: run.get(k) for k in keys}


def merge_runs(base: dict[str, Any], newer: dict[str, Any]) -> dict[str, Any]:
    """``base`` with every row that ``newer`` measured replaced by ``newer``'s (rows ``newer``
    did not run are kept). Each row records its run (``record["run"]``, an index into
    ``runs``), so that ratios are only taken between rows of one run; the top-level fields are
    ``newer``'s."""
    runs = list(base.get("runs") or [run_provenance(base)])
    cases = [{"run": 0, **c} if "run" not in c else dict(c) for c in base["cases"]]
    index = len(runs)
    runs.append(run_provenance(newer))
    fresh = {c["id"]: {**c, "run": index} for c in newer["cases"]}
    merged = [fresh.pop(c["id"], c) for c in cases]
    merged += list(fresh.values())
    for k, c in enumerate(merged):
        c.pop("ratios", None)
        merged[k] = c
    return {**newer, "runs": runs, "cases": merged}


README_START = "<!-- benchmarks:start (written by `make bench`; do not edit) -->"
README_END = "<!-- benchmarks:end -->"


def replace_block(text: str, block: str) -> str:
    """``text`` with the lines between :data:`README_START` and :data:`README_END` replaced by
    ``block``; a ``ValueError`` if the markers are missing or out of order."""
    start, end = text.find(README_START), text.find(README_END)
    if start < 0 or end < start:
        raise ValueError(f"the markers {README_START!r} ... {README_END!r} were not found")
    head = text[: start + len(README_START)]
    return head + "\n" + block.rstrip("\n") + "\n" + text[end:]


def child_env(threads: int) -> dict[str, str]:
    """The environment of a case process: thread counts fixed, this checkout importable."""
    env = dict(os.environ)
    for var in THREAD_ENV_VARS:
        env[var] = str(threads)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env


def run_child(
    kind: str, params: dict[str, Any], env: dict[str, str], timeout: float
) -> dict[str, Any]:
    """Run ``python -m benchmarks.case kind params`` and return its result record."""
    cmd = [sys.executable, "-m", "benchmarks.case", kind, json.dumps(params)]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(
            cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        return {"status": "error", "reason": f"timeout after {timeout:.0f} s"}
    wall = time.perf_counter() - t0
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            result = json.loads(line[len(RESULT_PREFIX) :])
            result["wall_s"] = wall
            return result
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
    return {
        "status": "error",
        "reason": f"no result (exit code {proc.returncode})",
        "traceback": tail,
        "wall_s": wall,
    }


def drop_retired(run: dict[str, Any], plan_ids: set[str]) -> dict[str, Any]:
    """``run`` without the rows whose case the suite no longer has (removed or renamed since
    they were measured), so that a merged report shows only cases that can be re-measured; the
    dropped ids are printed."""
    retired = [c["id"] for c in run["cases"] if c["id"] not in plan_ids]
    for cid in retired:
        print(f"benchmarks: dropped {cid} (no longer a case of the suite)", file=sys.stderr)
    return {**run, "cases": [c for c in run["cases"] if c["id"] in plan_ids]}


def median_process(records: list[dict[str, Any]], primary: str) -> dict[str, Any]:
    """One record for a case measured in several processes: the process whose ``primary``
    metric is the median (the lower one of the middle two for an even count), so that all its
    metrics come from one process; ``info`` gains ``processes`` and ``per_process`` (the primary
    metric of every process). A failed process makes the case an error."""
    for rec in records:
        if rec["status"] != "ok":
            return rec
    if len(records) == 1:
        return records[0]
    values = [float(r["metrics"][primary]) for r in records]
    middle = sorted(range(len(records)), key=values.__getitem__)[(len(records) - 1) // 2]
    chosen = dict(records[middle])
    chosen["info"] = {**chosen.get("info", {}), "processes": len(records), "per_process": values}
    chosen["wall_s"] = sum(r.get("wall_s", 0.0) for r in records)
    return chosen


def interleaved(
    cases: list[Case],
    records: list[dict[str, Any] | None],
    runs: list[list[dict[str, Any]]],
    args: argparse.Namespace,
) -> Iterator[tuple[int, Case, int]]:
    """The order of the child processes: ``(index, case, process)`` in rounds, one process of
    every case per round (``A1 B1 C1 A2 B2 C2 ...``), so that a drift of the machine's speed over
    the run (load, frequency, a neighbour on the host) reaches every case of a ratio alike
    instead of the cases measured last. A case gets no further process once one failed or its
    processes took ``--process-budget`` seconds; skipped cases (``records[k]`` already set, no
    runs) get none."""
    for process in range(args.processes):
        for k, case in enumerate(cases):
            done = runs[k]
            if records[k] is not None and not done:
                continue  # skipped: a capability is missing
            if done and (
                done[-1]["status"] != "ok"
                or sum(r.get("wall_s", 0.0) for r in done) >= args.process_budget
            ):
                continue
            yield k, case, process


def _rows(cases: list[Case], records: list[dict[str, Any] | None]) -> list[dict[str, Any]]:
    """The rows of the cases with a record so far, in the plan's order."""
    return [_case_row(c, rec) for c, rec in zip(cases, records, strict=True) if rec is not None]


def _case_row(case: Case, rec: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": case.id,
        "suite": case.suite,
        "kind": case.kind,
        "params": case.params,
        "baselines": case.baselines,
        **({"env": case.env} if case.env else {}),
        **rec,
    }


def _git_revision() -> str:
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            # tracked files only: an untracked file is no part of the code a case runs
            ["git", "status", "--porcelain", "--untracked-files=no", "--", "otcl", "benchmarks"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return "?"
    return rev + (" (with uncommitted changes)" if dirty.strip() else "")


def _load() -> str:
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "?"


def _summary(case: Case, rec: dict[str, Any]) -> str:
    if rec["status"] != "ok":
        return f"{rec['status']}: {rec.get('reason', '')}"
    value = rec.get("metrics", {}).get(PRIMARY[case.suite])
    return f"{PRIMARY[case.suite]} = {value:.4g}" if value is not None else "ok"


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def _write(out: Path, run: dict[str, Any], readme: Path | None = None) -> None:
    add_ratios(run["cases"])
    summary = summary_markdown(run)
    _write_atomic(out / "results.json", json.dumps(run, indent=1, default=str))
    _write_atomic(out / "results.md", markdown(run))
    _write_atomic(out / "summary.md", summary)
    if readme is not None:
        _write_atomic(readme, replace_block(readme.read_text(encoding="utf-8"), summary))


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if min(args.threads, args.repeat, args.processes) < 1:
        _parser().error("--threads, --repeat and --processes must be >= 1")
    if min(args.budget, args.timeout, args.process_budget) <= 0:
        _parser().error("--budget, --timeout and --process-budget must be > 0")
    readme = None if args.readme is None else Path(args.readme)
    if readme is not None:
        replace_block(readme.read_text(encoding="utf-8"), "")  # fail early without markers
    if args.merge and not args.report_only:
        _parser().error("--merge needs --report-only")
    if args.report_only:
        source = Path(args.out) / "results.json"
        run = json.loads(source.read_text(encoding="utf-8"))
        for other in args.merge or ():
            run = merge_runs(run, json.loads(Path(other).read_text(encoding="utf-8")))
        if args.merge:
            run = drop_retired(run, {c.id for c in build_plan(quick=False)})
        _write(Path(args.out), run, readme)
        print(f"benchmarks: rewrote the reports of {source}", file=sys.stderr)
        return 0
    cases = select(build_plan(args.quick), args.only)
    if args.list:
        print("\n".join(c.id for c in cases))
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = child_env(args.threads)

    probe = run_child("probe", {"threads": args.threads}, env, args.timeout)
    if probe["status"] != "ok":
        print(f"benchmarks: the probe process failed: {probe.get('reason')}", file=sys.stderr)
        print("\n".join(probe.get("traceback", [])), file=sys.stderr)
        return 1
    caps = probe["info"]["capabilities"]
    settings = {
        "threads": args.threads,
        "repeat": args.repeat,
        "budget_s": args.budget,
        "timeout_s": args.timeout,
        "processes": args.processes,
        "process_budget_s": args.process_budget,
        "quick": args.quick,
        "only": args.only,
    }
    run: dict[str, Any] = {
        "command": "python -m benchmarks " + shlex.join(argv if argv is not None else sys.argv[1:]),
        "started": _dt.datetime.now().isoformat(timespec="seconds"),
        "git": _git_revision(),
        "load_before": _load(),
        "machine": probe["info"]["machine"],
        "capabilities": caps,
        "settings": settings,
        "cases": [],
    }
    t_start = time.perf_counter()
    records: list[dict[str, Any] | None] = [None] * len(cases)
    for k, case in enumerate(cases):
        missing = [need for need in case.needs if not caps.get(need)]
        if missing:
            records[k] = {
                "status": "skipped",
                "reason": _MISSING.get(missing[0], f"not available: {missing[0]}"),
            }
            print(
                f"[{k + 1}/{len(cases)}] {case.id}: {_summary(case, records[k])}", file=sys.stderr
            )
    runs: list[list[dict[str, Any]]] = [[] for _ in cases]
    for k, case, process in interleaved(cases, records, runs, args):
        params = {
            **case.params,
            "threads": args.threads,
            "repeat": args.repeat,
            "budget_s": args.budget,
        }
        case_env = {key: v for key, v in {**env, **case.env}.items() if v != ""}
        runs[k].append(run_child(case.kind, params, case_env, args.timeout))
        records[k] = median_process(runs[k], PRIMARY[case.suite])
        run["cases"] = _rows(cases, records)
        run["wall_s"] = time.perf_counter() - t_start
        run["load_after"] = _load()
        _write(out, run, readme)
        step = f" (process {process + 1} of {args.processes})" if args.processes > 1 else ""
        print(
            f"[{k + 1}/{len(cases)}] {case.id}{step}: {_summary(case, runs[k][-1])}",
            file=sys.stderr,
            flush=True,
        )
    run["cases"] = _rows(cases, records)
    _write(out, run, readme)
    failed = sum(rec is not None and rec["status"] == "error" for rec in records)
    print(
        f"benchmarks: {len(cases)} cases, {failed} failed; results in {out}/results.md",
        file=sys.stderr,
    )
    return 1 if failed else 0
