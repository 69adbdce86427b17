"""A pool of large host buffers, reused across calls instead of allocated afresh.

A fresh ``n x m`` array is not free: the operating system maps its pages on first touch, one
page fault per 4 KiB page (``n m / 1024`` faults in float32), and on some machines that costs
more than the arithmetic the array is for (a 16 MiB ``exp`` took 7 ms into a reused buffer and
up to 20 ms into a fresh one on the 2-core reference machine). The buffered operations of
[`otcl.backend`][otcl.backend] therefore take their large buffers (the kernel of a solve, the kernel
gradient of a loss, the solver's work arrays) from [`BUFFER_POOL`][otcl.buffers.BUFFER_POOL].

A pooled NumPy array is handed out again only when nothing else refers to it: the pool reads
its reference count, which every NumPy view and every PyTorch tensor made with
``torch.from_numpy`` (and every view of that tensor) raises for as long as it lives. So a
buffer returned to the caller, kept in an autograd graph or stored as a ``.grad`` is never
overwritten; it returns to service once the last of them is gone.

The pool holds at most `BufferPool.limit_bytes` (default 512 MiB; when a new buffer would exceed it,
unused buffers go, least recently used first), pools only arrays of at least
[`POOL_MIN_BYTES`][otcl.buffers.POOL_MIN_BYTES] (smaller ones come from the allocator's heap, which
reuses them anyway), and [`BufferPool.clear`][otcl.buffers.BufferPool.clear] drops every buffer not
in use.
"""

from __future__ import annotations

import math
import sys
import threading
from typing import Any

import numpy as np

__all__ = ["BUFFER_POOL", "POOL_MIN_BYTES", "BufferPool"]

POOL_MIN_BYTES = 2**20
"""Arrays smaller than this (bytes) are allocated directly, never pooled."""


def _baseline_refs() -> int:
    """Reference count of a pooled array that nothing else refers to, read as the pool reads
    it (through its list; the count includes the list's reference and the call's argument)."""
    arrays = [np.empty(1)]
    return sys.getrefcount(arrays[0])


_FREE_REFS = _baseline_refs()


class BufferPool:
    """Large NumPy buffers by shape and dtype, handed out again once unreferenced."""

    def __init__(self, limit_bytes: int = 512 * 2**20) -> None:
        self.limit_bytes = limit_bytes
        self._arrays: list[np.ndarray] = []  # least recently used first
        self._lock = threading.Lock()

    def empty(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        """An uninitialised array of ``shape`` and ``dtype`` (a NumPy dtype), pooled when large."""
        dtype = np.dtype(dtype)
        nbytes = math.prod(shape) * dtype.itemsize
        if nbytes < POOL_MIN_BYTES or nbytes > self.limit_bytes:
            return np.empty(shape, dtype=dtype)
        shape = tuple(int(s) for s in shape)
        with self._lock:
            arrays = self._arrays
            for i in range(len(arrays)):
                if arrays[i].shape == shape and arrays[i].dtype == dtype and self._free(i):
                    arr = arrays.pop(i)
                    arrays.append(arr)
                    return arr
            arr = np.empty(shape, dtype=dtype)
            arrays.append(arr)
            self._trim()
            return arr

    @property
    def nbytes(self) -> int:
        """Bytes held by the pool, in use or not."""
        with self._lock:
            return sum(a.nbytes for a in self._arrays)

    @property
    def free_nbytes(self) -> int:
        """Bytes of pooled buffers that nothing refers to (what
        [`clear`][otcl.buffers.BufferPool.clear] releases)."""
        with self._lock:
            return sum(self._arrays[i].nbytes for i in range(len(self._arrays)) if self._free(i))

    def clear(self) -> None:
        """Drop every pooled buffer that is not in use (buffers in use leave the pool too, and
        are freed by their last user)."""
        with self._lock:
            self._arrays.clear()

    def _free(self, i: int) -> bool:
        return sys.getrefcount(self._arrays[i]) <= _FREE_REFS

    def _trim(self) -> None:
        """Evict unused buffers, least recently used first, while the pool holds more than
        ``limit_bytes`` (buffers in use count, and stay)."""
        arrays = self._arrays
        free = [i for i in range(len(arrays)) if self._free(i)]
        excess = sum(a.nbytes for a in arrays) - self.limit_bytes
        drop = set()
        for i in free:
            if excess <= 0:
                break
            drop.add(i)
            excess -= arrays[i].nbytes
        if drop:
            self._arrays = [a for i, a in enumerate(arrays) if i not in drop]


BUFFER_POOL = BufferPool()
"""The pool the buffered operations of [`otcl.backend`][otcl.backend] use
(``BUFFER_POOL.limit_bytes`` bounds the unused buffers it keeps; ``BUFFER_POOL.clear()`` releases
them)."""
