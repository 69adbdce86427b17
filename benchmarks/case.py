"""One benchmark case in this (fresh) process: ``python -m benchmarks.case <kind> <params-json>``.

The parameters are a JSON object (see ``benchmarks.suites``); ``threads`` in it sets the thread
pools before anything is measured. The result is printed as one line ``BENCH-RESULT <json>`` on
standard output: ``{"status": "ok" | "skipped" | "error", "metrics", "info", "reason"}``. The exit
status is 0 for ``ok`` and ``skipped``, 1 for ``error``.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
import warnings
from typing import Any

RESULT_PREFIX = "BENCH-RESULT "


def pin_cores(threads: int) -> list[int]:
    """Restrict this process to its first ``threads`` usable cores (Linux CPU affinity), before
    any library that sizes its thread pool from the machine (JAX's CPU runtime) is imported."""
    if not hasattr(os, "sched_setaffinity"):
        return []
    cores = sorted(os.sched_getaffinity(0))[:threads]
    os.sched_setaffinity(0, cores)
    return cores


def run_case(kind: str, params: dict[str, Any]) -> dict[str, Any]:
    """Run one case in this process and return its result record (never raises)."""
    from benchmarks.cases import KINDS
    from benchmarks.common import Skip, configure_threads

    if kind not in KINDS:
        return {"status": "error", "reason": f"unknown case kind {kind!r}; known: {sorted(KINDS)}"}
    try:
        cores = pin_cores(int(params.get("threads", 1))) if params.get("pin") else None
        pools = params.get("pools")
        if pools != "default":  # "default": every library keeps its own thread count
            configure_threads(int(params.get("threads", 1)), blas=pools != "torch-only")
        with warnings.catch_warnings():
            # fixed-round solves (tol=None) and POT's stopThr=0 are meant not to converge
            warnings.simplefilter("ignore")
            out = KINDS[kind](params)
    except Skip as skip:
        return {"status": "skipped", "reason": str(skip)}
    except Exception as err:  # report any failure as this case's result
        tail = traceback.format_exc().strip().splitlines()[-6:]
        return {"status": "error", "reason": f"{type(err).__name__}: {err}", "traceback": tail}
    if cores is not None:
        out.setdefault("info", {})["pinned_cores"] = cores
    if "torch" in sys.modules:  # the pool torch actually used (POT imports torch too)
        out.setdefault("info", {})["torch_threads"] = sys.modules["torch"].get_num_threads()
    return {"status": "ok", **out}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m benchmarks.case <kind> <params-json>", file=sys.stderr)
        return 2
    result = run_case(args[0], json.loads(args[1]))
    print(RESULT_PREFIX + json.dumps(result, default=float), flush=True)
    return 1 if result["status"] == "error" else 0


if __name__ == "__main__":
    raise SystemExit(main())
