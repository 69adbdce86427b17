"""Peak memory per rank and time per step of ``distributed="sharded"`` against the gather mode.

    python -m benchmarks.sharded_memory [--n 4096] [--d 128] [--n-iter 10] [--worlds 1 2 4]
                                        [--out benchmarks/results/sharded.md]

For every mode (``"sharded"``, ``True`` = gather) and world size ``W`` a fresh group of ``W``
gloo processes on the CPU (one thread each) trains GCA-UOT (``n_iter`` rounds, ``grad="unroll"``)
on the two-view SimCLR problem of a fixed global batch of ``2N = n`` views of width ``d``
(float32), each rank holding ``N / W`` samples. Each rank measures

* its peak resident memory added by the training steps: ``ru_maxrss`` (``getrusage``) after the
  steps minus ``ru_maxrss`` after a small warm-up call (imports, code paths and the process
  group are then in place), so the number is the high-water mark of what the loss's forward and
  backward pass allocated on top;
* the wall time of one step (forward and backward, between two barriers), the median of
  ``--steps`` steps.

The rank processes run with ``MALLOC_MMAP_THRESHOLD_=131072``: glibc then serves every large
array by ``mmap`` and returns it on free. Without it glibc raises its mmap threshold (up to
32 MiB) after the first large free and keeps later arrays below that size (the kernel rows of
``W >= 4`` ranks at the default size) on its heap, whose retained pages ``ru_maxrss`` counts:
the resident high-water mark then grows with the allocator's fragmentation, not with the live
arrays (a 16 MiB-row run measured 490 MiB instead of 62 MiB).

The table reports the largest peak and the slowest step over the ranks. The ranks share the
machine's cores: with more processes than cores the times measure contention, not the
algorithm; the memory column does not depend on it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any


def _rss_mib() -> float:
    """The process's peak resident set size so far, MiB (``ru_maxrss`` is KiB on Linux)."""
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib / (1024 * 1024) if sys.platform == "darwin" else kib / 1024


def _entry(rank: int, world: int, rendezvous: str, outdir: str, cfg: dict[str, Any]) -> None:
    import torch
    import torch.distributed as dist

    import otcl.torch as ot

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank,
                            world_size=world, timeout=timedelta(seconds=600))
    try:
        mode = "sharded" if cfg["mode"] == "sharded" else True
        loss_fn = ot.GCAUOT(n_iter=cfg["n_iter"], distributed=mode)
        n_samples = cfg["n"] // 2
        counts = [n_samples // world + (1 if r < n_samples % world else 0) for r in range(world)]
        g = torch.Generator().manual_seed(rank)

        def step(samples: int) -> float:
            x = torch.randn(samples, cfg["d"], generator=g)
            z1 = (x + 0.1 * torch.randn(x.shape, generator=g)).requires_grad_(True)
            z2 = (x + 0.1 * torch.randn(x.shape, generator=g)).requires_grad_(True)
            dist.barrier()
            t0 = time.perf_counter()
            loss_fn(z1, z2).backward()
            dist.barrier()
            return time.perf_counter() - t0

        step(4)  # warm-up: imports, code paths, the group's buffers
        base = _rss_mib()
        times = [step(counts[rank]) for _ in range(cfg["steps"])]
        out = {"rank": rank, "base_mib": base, "peak_mib": _rss_mib(),
               "added_mib": _rss_mib() - base, "step_s": statistics.median(times)}
        (Path(outdir) / f"rank{rank}.json").write_text(json.dumps(out))
    finally:
        dist.destroy_process_group()


def run_config(mode: str, world: int, cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """One fresh group of ``world`` processes; the per-rank measurements."""
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        ctx = mp.start_processes(_entry, args=(world, os.path.join(tmp, "rendezvous"), tmp,
                                               {**cfg, "mode": mode}),
                                 nprocs=world, join=False, start_method="spawn")
        while not ctx.join(timeout=5):
            pass
        return [json.loads((Path(tmp) / f"rank{r}.json").read_text()) for r in range(world)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=4096, help="global number of views 2N")
    parser.add_argument("--d", type=int, default=128, help="embedding width")
    parser.add_argument("--n-iter", type=int, default=10, help="Sinkhorn rounds")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per configuration")
    parser.add_argument("--worlds", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--modes", nargs="+", default=["sharded", "gather"],
                        choices=["sharded", "gather"])
    parser.add_argument("--out", type=Path, default=None, help="also write the table here")
    args = parser.parse_args(argv)
    # set before the ranks start (glibc reads it at start-up; spawned children inherit it)
    os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", "131072")
    cfg = {"n": args.n, "d": args.d, "n_iter": args.n_iter, "steps": args.steps}
    kernel_mib = args.n * args.n * 4 / 2**20
    lines = [
        "### Sharded vs gather mode: peak memory per rank and time per step",
        "",
        f"GCA-UOT, two-view call, global 2N = {args.n} views, d = {args.d}, float32, "
        f"{args.n_iter} rounds, grad=\"unroll\"; gloo on the CPU, one thread per rank; "
        f"{os.cpu_count()} CPU cores shared by the ranks ({platform.processor() or 'cpu'}, "
        f"torch {_torch_version()}). The whole float32 kernel is {kernel_mib:.0f} MiB.",
        "",
        "Command: `python -m benchmarks.sharded_memory"
        + (f" --n {args.n}" if args.n != 4096 else "")
        + (f" --d {args.d}" if args.d != 128 else "")
        + (f" --n-iter {args.n_iter}" if args.n_iter != 10 else "")
        + "`",
        "",
        "Peak memory added per rank: `ru_maxrss` after the steps minus after a warm-up call "
        "(largest over ranks; ranks run with `MALLOC_MMAP_THRESHOLD_="
        f"{os.environ['MALLOC_MMAP_THRESHOLD_']}`, so that freed arrays leave the resident "
        "set). Kernel rows per rank: n/W x n float32. Time per step: forward and backward, "
        "median of the steps, slowest rank.",
        "",
        "| mode | W | kernel rows per rank (MiB) | peak memory added per rank (MiB) | "
        "ratio to W = 1 | time per step (s) |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for mode in args.modes:
        first = None
        for world in args.worlds:
            res = run_config(mode, world, cfg)
            added = max(r["added_mib"] for r in res)
            step = max(r["step_s"] for r in res)
            first = added if first is None else first
            rows_mib = (kernel_mib / world) if mode == "sharded" else kernel_mib
            lines.append(f"| {mode} | {world} | {rows_mib:.0f} | {added:.0f} | "
                         f"{added / first:.2f} | {step:.2f} |")
            print(lines[-1], flush=True)
    lines.append("")
    text = "\n".join(lines)
    print(text)
    if args.out is not None:
        args.out.write_text(text)
    return 0


def _torch_version() -> str:
    import torch

    return torch.__version__


if __name__ == "__main__":
    raise SystemExit(main())
