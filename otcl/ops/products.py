"""Buffered matrix-vector products of a solver loop (into preallocated outputs)."""

from __future__ import annotations

from typing import Any

from otcl.backend import Array

__all__ = ["BufferedProducts"]


class BufferedProducts:
    """``K v``, ``K^T u`` and ``acc + K^T u`` into ``out`` with the library's ``matmul``
    (a mixin for [`BufferedOps`][otcl.ops.buffered.BufferedOps]: it uses ``self.lib`` and falls
    back to the allocating products when no ``out`` is given).

    One matrix, or a stack of one, is a plain matrix-vector product; a stack is a batched
    product of ``(B, n, m)`` with ``(B, m, 1)``.
    """

    lib: Any

    def matvec(self, kernel: Array, v: Array, out: Array | None = None) -> Array:
        if out is None:
            return super().matvec(kernel, v)  # type: ignore[misc]
        if kernel.ndim == 2:
            self.lib.matmul(kernel, v, out=out)
        elif kernel.shape[0] == 1:  # one matrix: a plain matrix-vector product
            self.lib.matmul(kernel[0], v[0], out=out[0])
        else:
            self.lib.matmul(kernel, v[:, :, None], out=out[:, :, None])
        return out

    def rmatvec(self, kernel: Array, u: Array, out: Array | None = None) -> Array:
        if out is None:
            return super().rmatvec(kernel, u)  # type: ignore[misc]
        if kernel.ndim == 2:
            self.lib.matmul(u, kernel, out=out)
        elif kernel.shape[0] == 1:
            self.lib.matmul(u[0], kernel[0], out=out[0])
        else:
            self.lib.matmul(u[:, None, :], kernel, out=out[:, None, :])
        return out

    def rmatvec_add(self, kernel: Array, u: Array, acc: Array, tmp: Array | None = None) -> Array:
        return self.add(acc, self.rmatvec(kernel, u, out=tmp), out=acc)  # type: ignore[attr-defined]
