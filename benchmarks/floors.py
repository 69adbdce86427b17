"""Floors for the Sinkhorn solver: the least work one iteration must do on an ``n x m`` matrix.

Kernel domain: two matrix-vector products (``K v`` and ``K^T u``). Log domain: one exponential
of the log-kernel shifted by a potential per entry (a round's column step can reuse the row
step's exponentials, as otcl's does: one pass of exponentials is what a round must do). Both run
on any array library with ``@`` (NumPy, PyTorch, CuPy); ``lib`` is the module whose
``add``/``exp`` accept ``out=``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["exp_bound", "matvec_floor"]


def matvec_floor(kernel: Any, u: Any, v: Any, iters: int) -> None:
    """``iters`` times the two products of a kernel-domain iteration: ``K v`` and ``K^T u``.

    ``kernel`` has shape ``(n, m)``, ``u`` ``(n,)``, ``v`` ``(m,)``. The products are not fed back
    into the scalings, so this is the bare cost of the two matrix-vector products.
    """
    kt = kernel.T
    for _ in range(iters):
        kernel @ v
        kt @ u


def exp_bound(log_kernel: Any, g: Any, buf: Any, iters: int, lib: Any) -> None:
    """``iters`` times the one ``n x m`` exponential of a log-domain round, in place.

    Computes ``exp(log_kernel + g[None, :])`` into the preallocated ``buf`` (shape ``(n, m)``)
    with ``lib.add`` / ``lib.exp`` (``numpy``, ``cupy`` or ``torch``): the broadcast add and the
    exponential, without allocation and without the reductions that a log-sum-exp adds on top.
    """
    g_row = g[None, :]
    for _ in range(iters):
        lib.add(log_kernel, g_row, out=buf)
        lib.exp(buf, out=buf)
