"""The buffer pool: a buffer is handed out again only when nothing refers to it, the pool
keeps at most its limit of unused buffers, and the pooled product equals ``x @ y.T`` with the
gradient of ``x @ y.T`` (oracle: PyTorch's own product and ``torch.autograd.gradcheck``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from otcl.backend import product_t
from otcl.buffers import POOL_MIN_BYTES, BufferPool

SHAPE = (512, 1024)  # 2 MiB in float32: pooled


def test_buffer_is_reused_only_once_unreferenced():
    pool = BufferPool()
    a = pool.empty(SHAPE, np.float32)
    b = pool.empty(SHAPE, np.float32)
    assert a is not b  # a is still referenced
    a_ptr = a.ctypes.data
    del a
    assert pool.empty(SHAPE, np.float32).ctypes.data == a_ptr  # reused


@pytest.mark.parametrize("holder", ["numpy view", "torch tensor", "torch view", "grad"])
def test_buffer_held_through_a_view_or_tensor_is_not_reused(holder):
    pool = BufferPool()
    a = pool.empty(SHAPE, np.float32)
    ptr = a.ctypes.data
    if holder == "numpy view":
        keep = a[1:]
    elif holder == "torch tensor":
        keep = torch.from_numpy(a)
    elif holder == "torch view":
        keep = torch.from_numpy(a)[3:, 5:].T
    else:  # the buffer became a parameter's gradient
        keep = torch.zeros(SHAPE, requires_grad=True)
        keep.grad = torch.from_numpy(a)
    del a
    assert pool.empty(SHAPE, np.float32).ctypes.data != ptr
    del keep
    assert pool.empty(SHAPE, np.float32).ctypes.data == ptr


def test_small_arrays_and_other_shapes_are_not_shared():
    pool = BufferPool()
    small = pool.empty((8, 8), np.float32)
    assert small.nbytes < POOL_MIN_BYTES and pool.nbytes == 0
    a = pool.empty(SHAPE, np.float32)
    ptr = a.ctypes.data
    del a
    assert pool.empty(SHAPE, np.float64).ctypes.data != ptr
    assert pool.empty((1024, 512), np.float32).ctypes.data != ptr


def test_unused_buffers_beyond_the_limit_are_evicted_oldest_first():
    nbytes = SHAPE[0] * SHAPE[1] * 4
    pool = BufferPool(limit_bytes=2 * nbytes)
    for rows in (512, 513, 514):  # three shapes, each released at once
        pool.empty((rows, 1024), np.float32)
    assert pool.free_nbytes <= 2 * nbytes
    kept = pool.empty((514, 1024), np.float32)  # the newest survived ...
    assert pool.nbytes <= 2 * nbytes + kept.nbytes
    pool.clear()
    assert pool.nbytes == 0
    assert kept.shape == (514, 1024)  # ... and a buffer in use outlives clear()
    big = BufferPool(limit_bytes=nbytes // 2).empty(SHAPE, np.float32)
    assert big.shape == SHAPE  # larger than the limit: allocated, never pooled


@pytest.mark.parametrize("lib", ["numpy", "torch"])
def test_product_t_equals_the_plain_product_and_leaves_inputs(lib):
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((600, 40)), rng.standard_normal((700, 40))
    if lib == "torch":
        xt, yt = torch.tensor(x), torch.tensor(y)
        out = product_t(xt, yt, torch)
        torch.testing.assert_close(out, xt @ yt.T, rtol=1e-14, atol=1e-12)
        np.testing.assert_array_equal(xt.numpy(), x)
    else:
        out = product_t(x, y, np)
        np.testing.assert_allclose(out, x @ y.T, rtol=1e-14, atol=1e-12)
    first = out.ctypes.data if lib == "numpy" else out.data_ptr()
    second = product_t(x, y, np) if lib == "numpy" else product_t(xt, yt, torch)
    # the first result is still alive: the second call must not overwrite it
    other = second.ctypes.data if lib == "numpy" else second.data_ptr()
    assert other != first


def test_product_t_gradient_is_that_of_the_product():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(6, 3, dtype=torch.float64, generator=gen, requires_grad=True)
    y = torch.randn(5, 3, dtype=torch.float64, generator=gen, requires_grad=True)
    torch.autograd.gradcheck(lambda a, b: product_t(a, b, torch), (x, y))
    torch.autograd.gradgradcheck(lambda a, b: product_t(a, b, torch), (x, y))
    # a pooled-size product: gradients equal those of x @ y.T
    f64 = {"dtype": torch.float64, "generator": gen}
    x = torch.randn(600, 8, **f64, requires_grad=True)
    y = torch.randn(700, 8, **f64, requires_grad=True)
    w = torch.randn(600, 700, **f64)
    gx, gy = torch.autograd.grad((product_t(x, y, torch) * w).sum(), (x, y))
    ex, ey = torch.autograd.grad(((x @ y.T) * w).sum(), (x, y))
    torch.testing.assert_close(gx, ex, rtol=1e-12, atol=1e-11)
    torch.testing.assert_close(gy, ey, rtol=1e-12, atol=1e-11)
    # float32 (NumPy's BLAS sums in another order than PyTorch's: agreement to rounding)
    x32, y32, w32 = (t.detach().float().requires_grad_(t.requires_grad) for t in (x, y, w))
    gx32, gy32 = torch.autograd.grad((product_t(x32, y32, torch) * w32).sum(), (x32, y32))
    torch.testing.assert_close(gx32.double(), ex, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(gy32.double(), ey, rtol=1e-4, atol=1e-4)


def test_limit_zero_turns_pooling_off():
    pool = BufferPool(limit_bytes=0)
    a = pool.empty(SHAPE, np.float32)
    assert pool.nbytes == 0 and a.shape == SHAPE and a.dtype == np.float32
