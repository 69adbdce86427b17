"""Floors for the Sinkhorn solver: the least work one iteration must do on an ``n x m`` matrix.

Kernel domain: two matrix-vector products (``K v`` and ``K^T u``), and below them one read of the
kernel (``K v`` alone), the least any round must do: a fused sweep that computes both products
from one read of each block of rows may go below the two products, never below the one read.
Log domain: one exponential
of the log-kernel shifted by a potential per entry (a round's column step can reuse the row
step's exponentials, as otcl's does: one pass of exponentials is what a round must do). Both run
on any array library with ``@`` (NumPy, PyTorch, CuPy); ``lib`` is the module whose
``add``/``exp`` accept ``out=``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["base2_inputs", "exp_bound", "matvec_floor", "read_floor"]

LOG2E = 1.0 / math.log(2.0)


def matvec_floor(kernel: Any, u: Any, v: Any, iters: int) -> None:
    """``iters`` times the two products of a kernel-domain iteration: ``K v`` and ``K^T u``.

    ``kernel`` has shape ``(n, m)``, ``u`` ``(n,)``, ``v`` ``(m,)``. The products are not fed back
    into the scalings, so this is the bare cost of the two matrix-vector products.
    """
    kt = kernel.T
    for _ in range(iters):
        kernel @ v
        kt @ u


def read_floor(kernel: Any, v: Any, iters: int) -> None:
    """``iters`` times one matrix-vector product ``K v``: one read of the ``(n, m)`` kernel per
    round, the least a kernel-domain round can read."""
    for _ in range(iters):
        kernel @ v


def exp_bound(log_kernel: Any, g: Any, buf: Any, iters: int, lib: Any) -> None:
    """``iters`` times the one ``n x m`` exponential of a log-domain round, in place, each of
    its two passes at its fastest.

    Computes ``exp(log_kernel + g[None, :])`` into the preallocated ``buf`` (shape ``(n, m)``)
    with ``lib.add`` and an exponential (``numpy``, ``cupy`` or ``torch``): the broadcast add and
    the exponential, without allocation and without the reductions that a log-sum-exp adds on
    top. In float32 the exponential is a power of two (``exp2``, 1.6-2.3x faster than ``exp``
    on CPUs with AVX-512): ``log_kernel`` and ``g`` are then in base-2 units, scaled by
    ``log2(e)`` before the timing (:func:`base2_inputs`). NumPy's add runs over groups of 16 rows
    against ``g`` repeated (NumPy calls its inner loop once per row of a broadcast, which at
    1024 entries a row costs as much as the arithmetic).
    """
    n, m = (int(s) for s in log_kernel.shape)
    k = 16 if lib is np and n % 16 == 0 else 1
    x = log_kernel.reshape(n // k, k * m) if k > 1 else log_kernel
    out = buf.reshape(n // k, k * m) if k > 1 else buf
    g_row = (np.tile(g, k) if k > 1 else g)[None, :]
    power = lib.exp2 if str(buf.dtype).endswith("float32") else lib.exp
    for _ in range(iters):
        lib.add(x, g_row, out=out)
        power(buf, out=buf)


def base2_inputs(log_kernel: Any, g: Any) -> tuple[Any, Any]:
    """``(log_kernel, g)`` in the units :func:`exp_bound` exponentiates: scaled by ``log2(e)``
    in float32 (where it takes powers of two), unchanged otherwise."""
    if str(log_kernel.dtype).endswith("float32"):
        return log_kernel * LOG2E, g * LOG2E
    return log_kernel, g
