"""Buffered operations for PyTorch CPU tensors that no autograd graph records."""

from __future__ import annotations

from typing import Any

import numpy as np

from otcl.backend import Array, _blas_libraries, torch_blas_limit
from otcl.buffers import BUFFER_POOL
from otcl.ops.buffered import BufferedOps
from otcl.ops.logsumexp import BufferedLogSumExp
from otcl.ops.products import BufferedProducts

__all__ = ["SMALL_MATVEC", "TorchCpuOps"]

SMALL_MATVEC = 128 * 128
"""Stacked matrices of at most this many entries are multiplied by NumPy's stacked ``matmul``
(one BLAS call per matrix, no threading at this size), also for PyTorch CPU tensors, whose
batched product costs several microseconds per matrix at this size."""


class TorchCpuOps(BufferedLogSumExp, BufferedProducts, BufferedOps):
    """PyTorch CPU tensors that no autograd graph records.

    Large buffers are NumPy arrays from [`otcl.buffers.BUFFER_POOL`][otcl.buffers.BUFFER_POOL]
    (reused across calls once unreferenced; NumPy also asks the kernel for transparent huge pages),
    so that a solve or a loss touches no fresh ``n x m`` memory in a long-lived process. Small
    stacked matrix-vector products go through NumPy on the same memory (zero copy), under
    [`torch_blas_limit`][otcl.backend.torch_blas_limit].
    """

    def __init__(self, xp: Any, torch: Any) -> None:
        super().__init__(xp, torch)
        self._np_dtypes = {torch.float32: np.float32, torch.float64: np.float64}

    def buffer(self, shape: tuple[int, ...], like: Array) -> Array:
        np_dtype = self._np_dtypes.get(like.dtype)
        if np_dtype is None:
            return self.lib.empty(shape, dtype=like.dtype)
        return self.lib.from_numpy(BUFFER_POOL.empty(shape, np_dtype))

    def power(self, x: Array, p: Any, out: Array | None = None) -> Array:
        return self.lib.pow(x, p, out=out)

    def zero(self, x: Array) -> Array:
        return x.zero_()

    def scaled(self, x: Array, divisor: Any, out: Array | None = None) -> Array:
        return self.lib.div(x, -divisor, out=out)

    def fill_where(self, x: Array, where: Array, value: float) -> Array:
        return x.masked_fill_(where, value)

    exp2_floor = -126.0
    """float32's smallest normal exponent: torch's ``exp2`` of arguments below it (subnormal or
    zero powers) runs at half its speed."""

    exp2_unraised_ok = True
    """Unraised, torch's ``exp2`` of arguments that mostly underflow (small eps) takes 0.7 ms
    per million entries, against 0.6 for NumPy's ``exp``; raised by ``torch.clamp`` (a tenth
    of ``exp2``'s time), 0.46-0.51."""

    def base2(self, dtype: Any) -> bool:
        # torch.exp2 in float32 takes 0.34 ms per million entries where NumPy's exp takes 0.56
        # (and torch.exp 1.0, or 12 where most underflow); in float64 they are level
        return bool(dtype == self.lib.float32)

    def _raise(self, x: Array, floor: float) -> Array:
        return self.lib.clamp(x, min=floor, out=x)

    def _exp(self, x: Array, out: Array) -> Array:
        # NumPy's exp on the same memory: torch's is 2x slower on ordinary arguments and 20x
        # on arguments whose exp underflows, which small eps makes most of a log-sum-exp's
        # (NumPy's is single-threaded, so it adds no thread pool)
        if x.dtype in self._np_dtypes and out.dtype == x.dtype:
            with np.errstate(all="ignore"):  # as torch.exp: inf on overflow, no warning
                np.exp(x.detach().numpy(), out=out.detach().numpy())
            return out
        return self.lib.exp(x, out=out)

    # -- the kernel-domain loop on the host

    def host_views(self, *tensors: Array | None) -> list[np.ndarray | None] | None:
        """NumPy views of ``tensors`` (same memory, no copy; ``None`` stays ``None``), or
        ``None`` when one of them has no NumPy view (a dtype other than float32/float64/bool,
        a non-CPU tensor) or threadpoolctl is not installed to keep NumPy's BLAS pool within
        torch's thread count ([`torch_blas_limit`][otcl.backend.torch_blas_limit])."""
        if _blas_libraries() is None:
            return None
        views: list[np.ndarray | None] = []
        for t in tensors:
            if t is None:
                views.append(None)
                continue
            if not isinstance(t, self.lib.Tensor) or t.device.type != "cpu" or not (
                    t.dtype in self._np_dtypes or t.dtype == self.lib.bool):
                return None
            views.append(t.detach().numpy())
        return views

    def from_host(self, x: np.ndarray) -> Array:
        """A tensor on the memory of the NumPy array ``x`` (no copy)."""
        return self.lib.from_numpy(x)

    # -- products: NumPy's BLAS for one matrix and for many small ones (on the same memory,
    # under torch's thread limit), torch's batched product otherwise

    def _on_host(self, kernel: Array) -> bool:
        """Products NumPy's BLAS computes: one matrix (or a stack of one; its matrix-vector
        products are 1.3x (n = 1024) to 1.8x (n = 2048) faster than ``torch.mv`` on the
        reference machine) or a stack of small ones (``torch.bmm`` costs several microseconds
        per matrix at that size)."""
        if kernel.dtype not in self._np_dtypes or _blas_libraries() is None:
            return False
        return kernel.ndim == 2 or kernel.shape[0] == 1 or (
            kernel.shape[1] * kernel.shape[2] <= SMALL_MATVEC)

    def _host_product(self, x: Array, y: Array, out: Array) -> Array:
        # torch does not warn about inf or NaN; the loops detect them themselves
        with torch_blas_limit(), np.errstate(all="ignore"):
            np.matmul(x.detach().numpy(), y.detach().numpy(), out=out.detach().numpy())
        return out

    def matvec(self, kernel: Array, v: Array, out: Array | None = None) -> Array:
        if out is None or not self._on_host(kernel):
            return self._torch_matvec(kernel, v, out)
        if kernel.ndim == 3 and kernel.shape[0] == 1:  # one matrix: a matrix-vector product
            self._host_product(kernel[0], v[0], out[0])
        elif kernel.ndim == 2:
            self._host_product(kernel, v, out)
        else:
            self._host_product(kernel, v[:, :, None], out[:, :, None])
        return out

    def rmatvec(self, kernel: Array, u: Array, out: Array | None = None) -> Array:
        if out is None or not self._on_host(kernel):
            return self._torch_rmatvec(kernel, u, out)
        if kernel.ndim == 3 and kernel.shape[0] == 1:
            self._host_product(u[0], kernel[0], out[0])
        elif kernel.ndim == 2:
            self._host_product(u, kernel, out)
        else:
            self._host_product(u[:, None, :], kernel, out[:, None, :])
        return out

    def _torch_matvec(self, kernel: Array, v: Array, out: Array | None) -> Array:
        if out is not None and kernel.ndim == 2:
            return self.lib.mv(kernel, v, out=out)
        if out is not None and kernel.shape[0] == 1:
            self.lib.mv(kernel[0], v[0], out=out[0])
            return out
        return super().matvec(kernel, v, out)

    def _torch_rmatvec(self, kernel: Array, u: Array, out: Array | None) -> Array:
        if out is not None and kernel.ndim == 2:
            return self.lib.mv(kernel.T, u, out=out)
        if out is not None and kernel.shape[0] == 1:
            self.lib.mv(kernel[0].T, u[0], out=out[0])
            return out
        return super().rmatvec(kernel, u, out)

    def rmatvec_add(self, kernel: Array, u: Array, acc: Array, tmp: Array | None = None) -> Array:
        if kernel.ndim == 2:
            acc.addmv_(kernel.T, u)
        elif kernel.shape[0] == 1:
            acc[0].addmv_(kernel[0].T, u[0])
        else:
            acc[:, None, :].baddbmm_(u[:, None, :], kernel)
        return acc

    # -- log-sum-exp primitives

    def _max(self, x: Array, axis: int) -> Array:
        return self.lib.amax(x, dim=axis)

    def _min(self, x: Array, axis: int | None = None) -> Array:
        return self.lib.amin(x) if axis is None else self.lib.amin(x, dim=axis)

    def _min_max(self, x: Array, axis: int | None = None) -> tuple[Array, Array]:
        return self.lib.aminmax(x, dim=axis)

    def spread(self, x: Array) -> float:
        low, high = self.lib.aminmax(x, dim=1)
        return float((high - low).max())

    def _sum(self, x: Array, axis: int) -> Array:
        return self.lib.sum(x, dim=axis)
