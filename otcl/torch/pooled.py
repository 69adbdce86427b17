"""``x @ y^T`` for PyTorch CPU tensors, written into a pooled buffer (:mod:`otcl.buffers`).

The log-kernel of a contrastive batch is the one ``n x m`` array a loss creates under autograd;
plain ``x @ y.T`` puts it in fresh memory on every call (``n m / 1024`` page faults in float32).
:func:`product_t` computes the same product into a buffer of the pool, which is reused once the
previous call's kernel is gone, and differentiates like ``x @ y.T``:
``x̄ = Ḡ y``, ``ȳ = Ḡ^T x`` (recorded, so double backward works too).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from otcl.backend import host_matmul
from otcl.buffers import BUFFER_POOL

__all__ = ["product_t"]

_NP_DTYPES = {torch.float32: np.float32, torch.float64: np.float64}


class _ProductT(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        out = torch.from_numpy(BUFFER_POOL.empty((x.shape[0], y.shape[0]), _NP_DTYPES[x.dtype]))
        host_matmul(x, y.T, torch, out=out)
        ctx.save_for_backward(x, y)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, Any]:  # type: ignore[override]
        x, y = ctx.saved_tensors
        # host_matmul runs the products through NumPy's BLAS unless a graph records them
        # (create_graph=True), where they stay differentiable torch products
        gx = host_matmul(grad, y, torch) if ctx.needs_input_grad[0] else None
        gy = host_matmul(grad.T, x, torch) if ctx.needs_input_grad[1] else None
        return gx, gy


def product_t(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``x @ y.T`` for ``x (n, d)``, ``y (m, d)``, shape ``(n, m)``; into a pooled buffer for
    float32/float64 CPU tensors, the plain product otherwise."""
    if x.device.type != "cpu" or y.device.type != "cpu" or x.dtype not in _NP_DTYPES \
            or x.dtype != y.dtype or x.ndim != 2 or y.ndim != 2:
        return x @ y.T
    return _ProductT.apply(x, y)
