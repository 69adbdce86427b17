"""Where a multi-step loss's time goes, against NT-Xent, in one process (a profiling aid).

    python -m benchmarks.loss_floor [--batch 2048] [--dim 128] [--rounds 10] [--threads 1]

Prints, for a cross-view batch ``z1, z2`` of shape ``(B, d)`` (float32, CPU), the median
forward + backward time of NT-Xent and of ``otcl.torch.GCAInfoNCE``, and the cost of the work
that ``L`` rounds add at memory bandwidth in the current design: ``4 L`` matrix-vector passes over
the ``B x B`` kernel (two per round forward, two backward) and eight elementwise ``B x B``
passes. NT-Xent plus that work is the floor the loss is compared with.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable


def _median_ms(fn: Callable[[], object], repeat: int = 9) -> float:
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.loss_floor", description=__doc__)
    p.add_argument("--batch", type=int, default=2048)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)

    import torch
    import torch.nn.functional as F  # noqa: N812 (the usual PyTorch spelling)

    import otcl.torch as ot
    from benchmarks.common import configure_threads

    # every pool (torch's and the BLAS that NumPy brings, which otcl's CPU products use)
    configure_threads(args.threads)
    n, eps = args.batch, 0.5
    gen = torch.Generator().manual_seed(0)
    z1, z2 = (torch.randn(n, args.dim, generator=gen).requires_grad_() for _ in range(2))
    labels = torch.arange(n)

    def nt_xent() -> None:
        z1.grad = z2.grad = None
        s = F.normalize(z1, dim=1) @ F.normalize(z2, dim=1).T
        F.cross_entropy(s / eps, labels).backward()

    loss = ot.GCAInfoNCE(eps=eps, n_iter=args.rounds, layout="cross")

    def gca() -> None:
        z1.grad = z2.grad = None
        loss(z1, z2).backward()

    kernel, vec, out = torch.rand(n, n), torch.rand(n), torch.empty(n)
    scratch = torch.empty_like(kernel)

    def kernel_passes() -> None:
        for _ in range(2 * args.rounds):
            torch.mv(kernel, vec, out=out)
            torch.mv(kernel.T, vec, out=out)

    def elementwise_passes() -> None:
        for _ in range(8):
            torch.mul(kernel, 2.0, out=scratch)

    t_nt, t_gca = _median_ms(nt_xent), _median_ms(gca)
    t_k, t_e = _median_ms(kernel_passes), _median_ms(elementwise_passes)
    floor = t_nt + t_k + t_e
    print(f"B = {n}, d = {args.dim}, {args.rounds} rounds, {args.threads} thread(s), float32")
    print(f"NT-Xent fwd+bwd                       {t_nt:8.1f} ms")
    print(f"otcl GCAInfoNCE fwd+bwd               {t_gca:8.1f} ms  ({t_gca / t_nt:.2f}x NT-Xent)")
    print(f"{4 * args.rounds} kernel mat-vec passes              {t_k:8.1f} ms")
    print(f"8 elementwise B x B passes            {t_e:8.1f} ms")
    print(f"floor = NT-Xent + passes              {floor:8.1f} ms  ({floor / t_nt:.2f}x NT-Xent)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
