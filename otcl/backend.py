"""Array-library dispatch: the one place that knows which array library is in use.

Every algorithm in otcl is written once against the Python array API standard and receives its
namespace ``xp`` from [`namespace`][otcl.backend.namespace]. The handful of operations the standard
lacks (``logsumexp``, a log that maps 0 to ``-inf`` without a warning, the dtype's ``tiny``,
conversion to NumPy) live here and nowhere else. Fast paths for a particular library (for instance
PyTorch's fused ``logsumexp``) are chosen here by namespace, never by importing that library.

The dense primitives of the solver loops (matrix-vector products, shifted exponentials and
log-sum-exps, buffered for NumPy and PyTorch CPU tensors) are one layer below, in
[`otcl.ops`][otcl.ops], which uses the helpers here.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import threading
from collections.abc import Iterator
from typing import Any

import array_api_compat
import numpy as np

from otcl.buffers import BUFFER_POOL

Array = Any
"""Any array of a supported library (NumPy, CuPy, PyTorch, array-api-strict)."""

__all__ = [
    "Array",
    "check_compatible",
    "copy_array",
    "device_of",
    "dtype_eps",
    "dtype_tiny",
    "fill_diagonal",
    "from_numpy",
    "full_like",
    "host_matmul",
    "is_array",
    "logsumexp",
    "masked_fill",
    "namespace",
    "product_t",
    "quiet_numerics",
    "safe_log",
    "stop_gradient",
    "to_float",
    "to_numpy",
]


def is_array(x: object) -> bool:
    """True for an array of any library array-api-compat recognises (not Python scalars)."""
    return array_api_compat.is_array_api_obj(x) and not isinstance(x, (int, float, complex, bool))


def namespace(*arrays: Array | None) -> Any:
    """The array-API namespace shared by ``arrays`` (``None`` entries are ignored)."""
    present = [x for x in arrays if x is not None]
    return array_api_compat.array_namespace(*present)


def device_of(x: Array) -> Any:
    """The device an array lives on (``"cpu"`` for NumPy)."""
    return array_api_compat.device(x)


def _library(x: Array) -> str:
    if array_api_compat.is_numpy_array(x):
        return "numpy"
    if array_api_compat.is_torch_array(x):
        return "torch"
    if array_api_compat.is_cupy_array(x):
        return "cupy"
    if array_api_compat.is_jax_array(x):
        return "jax"  # concrete arrays (jaxlib) and tracers (jax.jit / grad / vmap) alike
    return type(x).__module__.split(".")[0]


def check_compatible(
    *, floating: bool = True, same_dtype: bool = True, **arrays: Array | None
) -> Any:
    """Check that the named arrays share one library, dtype and device; return their namespace.

    The first non-``None`` argument is the reference. A mismatch raises ``TypeError`` (library,
    dtype) or ``ValueError`` (device) naming the offending argument, so that nothing is ever
    silently converted. With ``floating=True`` the reference dtype must be real floating of at least
    32 bits (float32 or float64: the solvers' ranges and tolerances are those of these two; float16
    and bfloat16 raise ``TypeError``, see [`ACCEPTED_FLOATS`][otcl.backend.ACCEPTED_FLOATS]); with
    ``same_dtype=False`` only the library and device are compared (e.g. a boolean mask).
    """
    named = [(name, x) for name, x in arrays.items() if x is not None]
    if not named:
        raise TypeError("no arrays given")
    for name, x in named:
        if not is_array(x):
            raise TypeError(
                f"{name} must be an array (NumPy, CuPy, PyTorch or array-API),"
                f" got {type(x).__name__}"
            )
    ref_name, ref = named[0]
    ref_lib = _library(ref)
    xp = namespace(ref)
    if floating:
        if not _is_real_float(xp, ref):
            raise TypeError(f"{ref_name} must have a real floating dtype, got {ref.dtype}")
        if xp.finfo(ref.dtype).bits < 32:
            raise TypeError(
                f"{ref_name} has dtype {ref.dtype}; otcl computes in {ACCEPTED_FLOATS}: convert"
                f" it first (e.g. {ref_name}.float() / .astype(float32)); the otcl.torch loss"
                " modules accept float16 / bfloat16 tensors and compute them in float32"
            )
    for name, x in named[1:]:
        lib = _library(x)
        if lib != ref_lib:
            raise TypeError(f"{name} is a {lib} array but {ref_name} is a {ref_lib} array")
        if same_dtype and x.dtype != ref.dtype:
            raise TypeError(f"{name} has dtype {x.dtype} but {ref_name} has dtype {ref.dtype}")
        dev, ref_dev = device_of(x), device_of(ref)
        # a JAX tracer has no device (None): nothing to compare
        if dev is not None and ref_dev is not None and dev != ref_dev:
            raise ValueError(f"{name} is on device {dev} but {ref_name} is on {ref_dev}")
    return xp


ACCEPTED_FLOATS = "float32 or float64"
"""The floating dtypes the NumPy-style functions (solvers, losses, ``value_and_grad``) accept."""


def _is_real_float(xp: Any, x: Array) -> bool:
    try:
        return bool(xp.isdtype(x.dtype, "real floating"))
    except (TypeError, ValueError):  # a dtype the namespace does not know (torch.bfloat16 ...)
        return False


def copy_array(x: Array, xp: Any) -> Array:
    """A copy of ``x`` that owns its memory (differentiable for PyTorch: ``clone``).

    A PyTorch CPU tensor that no autograd graph records is copied by NumPy into memory NumPy
    allocates (the tensor shares it): NumPy asks the kernel for transparent huge pages for large
    arrays, so the fresh copy of a 64 MiB cost takes one page fault per 2 MiB instead of one per
    4 KiB (12 ms instead of 45 ms at 4096 x 4096 float32 on the reference machine).
    """
    if array_api_compat.is_torch_namespace(xp):
        import torch

        recorded = torch.is_grad_enabled() and x.requires_grad
        if (not recorded and x.device.type == "cpu"
                and x.dtype in (torch.float32, torch.float64, torch.bool)):
            return torch.from_numpy(x.detach().numpy().copy())
        return x.clone()
    if hasattr(x, "copy"):
        return x.copy()
    return xp.asarray(x, copy=True)


class NamespaceRef:
    """A picklable stand-in for an array namespace (a module): its import name."""

    def __init__(self, xp: Any) -> None:
        self.name = xp.__name__

    def resolve(self) -> Any:
        import importlib

        return importlib.import_module(self.name)


def picklable_state(obj: Any) -> dict[str, Any]:
    """``obj.__dict__`` with every module (array namespace) replaced by a
    [`NamespaceRef`][otcl.backend.NamespaceRef] (for ``__getstate__``; undone by
    [`restore_state`][otcl.backend.restore_state])."""
    import types

    return {k: NamespaceRef(v) if isinstance(v, types.ModuleType) else v
            for k, v in obj.__dict__.items()}


def restore_state(obj: Any, state: dict[str, Any]) -> None:
    """Inverse of [`picklable_state`][otcl.backend.picklable_state] (for ``__setstate__``)."""
    obj.__dict__.update({k: v.resolve() if isinstance(v, NamespaceRef) else v
                         for k, v in state.items()})


def dtype_tiny(xp: Any, dtype: Any) -> float:
    """Smallest positive normal number of a floating dtype (float32: 1.2e-38)."""
    return float(xp.finfo(dtype).smallest_normal)


def dtype_eps(xp: Any, dtype: Any) -> float:
    """Machine epsilon of a floating dtype (float32: 1.2e-7, float64: 2.2e-16)."""
    return float(xp.finfo(dtype).eps)


def full_like(x: Array, value: float, xp: Any) -> Array:
    """An array of ``x``'s shape, dtype and device filled with ``value``."""
    return xp.full(x.shape, value, dtype=x.dtype, device=device_of(x))


@contextlib.contextmanager
def quiet_numerics(xp: Any) -> Iterator[None]:
    """Silence NumPy's floating-point warnings inside an iteration loop.

    Overflow or division by zero inside a solver loop is detected explicitly at the next check
    (``converged=False`` plus a warning that says what happened); NumPy's generic warnings would
    only repeat it less clearly. Other libraries do not warn, so this is a no-op for them.
    """
    if array_api_compat.is_numpy_namespace(xp) or array_api_compat.is_array_api_strict_namespace(
        xp
    ):
        with np.errstate(all="ignore"):
            yield
    else:
        yield


def fill_diagonal(x: Array, value: float, xp: Any) -> Array:
    """``x`` with ``value`` on the main diagonal ``x[..., i, i]`` of its last two axes.

    NumPy, CuPy and PyTorch write into ``x`` itself, touching ``min(n, m)`` entries per matrix
    (in PyTorch an autograd-tracked in-place write, whose gradient is zero on the diagonal): pass
    an array the caller owns, such as a fresh intermediate. Other array-API libraries get a new
    array ``where(I, value, x)``.
    """
    n, m = x.shape[-2], x.shape[-1]
    if array_api_compat.is_torch_namespace(xp):
        x.diagonal(dim1=-2, dim2=-1).fill_(value)
        return x
    if array_api_compat.is_numpy_namespace(xp) or array_api_compat.is_cupy_namespace(xp):
        idx = xp.arange(min(n, m))
        x[..., idx, idx] = value
        return x
    eye = xp.eye(n, m, dtype=xp.bool, device=device_of(x))
    return xp.where(eye, xp.asarray(value, dtype=x.dtype, device=device_of(x)), x)


def stop_gradient(x: Array) -> Array:
    """``x`` as a constant for automatic differentiation (the same values): ``detach`` for
    PyTorch, ``jax.lax.stop_gradient`` for JAX; arrays of other libraries carry no derivative
    and are returned as they are."""
    if array_api_compat.is_torch_array(x):
        return x.detach()
    if array_api_compat.is_jax_array(x):
        import jax

        return jax.lax.stop_gradient(x)
    return x


def host_matmul(x: Array, y: Array, xp: Any, out: Array | None = None) -> Array:
    """``x @ y`` (NumPy ``matmul`` semantics: vectors, matrices, stacks), into ``out`` if given.

    PyTorch CPU float32/float64 tensors that no autograd graph records go through NumPy's
    BLAS on the same memory (zero copy): on the reference machine (one thread) its
    matrix-vector products take 0.75 ms where PyTorch's take 1.0-1.2 ms at ``2048 x 2048``, and
    its thin products (``(2048, 21) @ (21, 2048)``, ``(2048, 128) @ (128, 2048)``) half the time
    or less. NumPy's BLAS then runs under
    [`torch_blas_limit`][otcl.backend.torch_blas_limit] (one thread pool); without
    ``threadpoolctl`` to limit it, torch computes the product. NumPy arrays: ``np.matmul``
    itself (with ``out``). Everything else: ``xp.matmul``.
    """
    if _torch_on_host(xp, x, y, out) and _blas_libraries() is not None:
        import torch

        with torch_blas_limit():
            res = np.matmul(x.detach().numpy(), y.detach().numpy(),
                            out=None if out is None else out.detach().numpy())
        return out if out is not None else torch.from_numpy(res)
    if array_api_compat.is_numpy_namespace(xp):
        # NumPy's own function: the compatibility layer's wrapper adds a few microseconds per
        # call, which the 40-odd matrix-vector products of a loss's rounds feel at small sizes
        return np.matmul(x, y, out=out)
    res = xp.matmul(x, y)
    if out is None:
        return res
    out[...] = res
    return out


@functools.cache
def _blas_libraries() -> tuple[Any, ...] | None:
    """threadpoolctl's controllers of NumPy's BLAS library (the one that computes the products
    on torch tensors), or ``None`` when threadpoolctl is not installed (then nothing can limit
    it).

    NumPy's library is the one loaded from NumPy's own installation (a wheel's ``numpy.libs``);
    a NumPy linked against a system BLAS has none there, and then every BLAS library loaded so
    far is controlled. Read once: NumPy's library is loaded with NumPy, so a library loaded later
    (SciPy's own OpenBLAS, say) is not NumPy's and computes none of these products.
    """
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return None
    libraries = ThreadpoolController().select(user_api="blas").lib_controllers
    numpy_dir = os.path.dirname(os.path.dirname(os.path.abspath(np.__file__)))
    own = [lib for lib in libraries if _under_numpy(lib.filepath, numpy_dir)]
    return tuple(own or libraries)


def _under_numpy(path: str | None, site_dir: str) -> bool:
    """``path`` is inside NumPy's package or its wheel's ``numpy.libs`` next to it."""
    if not path:
        return False
    path = os.path.abspath(path)
    return any(path.startswith(os.path.join(site_dir, name) + os.sep)
               for name in ("numpy", "numpy.libs"))


_POOL = threading.local()  # .threads: torch's thread count while host_thread_pool holds it


@contextlib.contextmanager
def host_thread_pool(*arrays: Any) -> Iterator[None]:
    """One pool of worker threads for work on PyTorch CPU tensors that mixes torch operations
    with NumPy's BLAS: for the duration, NumPy's BLAS runs with torch's thread count and torch's
    own operations run on the calling thread (``torch.set_num_threads(1)``, restored on exit).

    Two pools of the same size on the same cores fight: after each parallel operation torch's
    OpenMP workers keep spinning on their cores for a while, and NumPy's BLAS threads, started
    meanwhile, wait for those cores (a solve at n = 2048 on two cores took 3x as long per round
    in the log domain, 1.5x in the kernel domain). NumPy's BLAS is held to that count for the
    whole stretch ([`torch_blas_limit`][otcl.backend.torch_blas_limit]). A no-op unless
    ``arrays`` hold a float32 or float64 PyTorch CPU tensor that no autograd graph records (the
    only tensors whose products NumPy's BLAS computes), torch runs more than one thread, and
    threadpoolctl is installed. It sets torch's count for the whole process: other threads that
    run torch operations meanwhile run them on one thread.
    Nested uses keep the outermost count.
    """
    present = [a for a in arrays if a is not None]
    torch = None
    # mixed or non-tensor inputs: nothing to do here (the caller's checks name them)
    if (present and all(array_api_compat.is_torch_array(a) for a in present)
            and getattr(_POOL, "threads", None) is None and _blas_libraries() is not None
            and _torch_on_host(array_api_compat.array_namespace(present[0]), *present)):
        import torch
    if torch is None or torch.get_num_threads() == 1:
        yield
        return
    threads = torch.get_num_threads()
    _POOL.threads = threads
    torch.set_num_threads(1)
    try:
        with torch_blas_limit():
            yield
    finally:
        torch.set_num_threads(threads)
        _POOL.threads = None


@contextlib.contextmanager
def torch_blas_limit() -> Iterator[None]:
    """NumPy's BLAS pool limited to ``torch.get_num_threads()`` threads for the duration (then
    restored), so that a product on torch tensors computed by NumPy's BLAS uses no more threads
    than torch itself would: one thread pool, as torch's users configure it (inside
    [`host_thread_pool`][otcl.backend.host_thread_pool], the count torch had when it started). A
    no-op when the pool is already that small or threadpoolctl is not installed."""
    import torch

    limit = getattr(_POOL, "threads", None) or torch.get_num_threads()
    changed = []
    for lib in _blas_libraries() or ():
        before = lib.get_num_threads()
        if before is not None and before > limit:
            lib.set_num_threads(limit)
            changed.append((lib, before))
    try:
        yield
    finally:
        for lib, before in changed:
            lib.set_num_threads(before)


def _torch_on_host(xp: Any, *arrays: Array | None) -> bool:
    """PyTorch CPU tensors of one float dtype (float32/float64), none recorded by autograd."""
    if not array_api_compat.is_torch_namespace(xp):
        return False
    import torch

    present = [a for a in arrays if a is not None]
    if not _torch_cpu_floats(*present):
        return False
    return not (torch.is_grad_enabled() and any(a.requires_grad for a in present))


def _torch_cpu_floats(*tensors: Array) -> bool:
    """PyTorch CPU tensors that share one dtype, float32 or float64."""
    import torch

    dtype = tensors[0].dtype
    return dtype in (torch.float32, torch.float64) and all(
        t.dtype == dtype and t.device.type == "cpu" for t in tensors
    )


def product_t(x: Array, y: Array, xp: Any) -> Array:
    """``x @ y^T`` for ``x (n, d)``, ``y (m, d)``: a fresh ``(n, m)`` array the caller owns.

    NumPy arrays and PyTorch CPU float tensors (recorded by autograd or not: the product is then a
    ``torch.autograd.Function`` with the gradient of ``x @ y.T``) get it in a buffer of
    [`otcl.buffers.BUFFER_POOL`][otcl.buffers.BUFFER_POOL], so a loss called again faults in no
    fresh pages; other libraries, ``xp.matmul``.
    """
    if array_api_compat.is_numpy_namespace(xp):
        out = BUFFER_POOL.empty((x.shape[0], y.shape[0]), np.result_type(x, y))
        return np.matmul(x, y.T, out=out)
    if (array_api_compat.is_torch_namespace(xp) and x.ndim == 2 and y.ndim == 2
            and _torch_cpu_floats(x, y)):
        return _torch_product_function().apply(x, y)
    return xp.matmul(x, xp.matrix_transpose(y))


@functools.cache
def _torch_product_function() -> Any:
    """The ``torch.autograd.Function`` behind [`product_t`][otcl.backend.product_t] (built on first
    use, so that importing this module never imports torch).

    Forward: ``x @ y^T`` into a pooled buffer. Backward: ``x̄ = Ḡ y``, ``ȳ = Ḡ^T x`` through
    [`host_matmul`][otcl.backend.host_matmul], which keeps them differentiable torch products when a
    graph records them (``create_graph=True``), so double backward works too.
    """
    import torch

    class ProductT(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, x: Any, y: Any) -> Any:  # type: ignore[override]
            from otcl.ops import array_ops

            # grad mode is off in here: the buffered operations' pooled buffer
            out = array_ops(torch, x, y).buffer((x.shape[0], y.shape[0]), x)
            with host_thread_pool(x):
                host_matmul(x, y.T, torch, out=out)
            ctx.save_for_backward(x, y)
            return out

        @staticmethod
        def backward(ctx: Any, grad: Any) -> tuple[Any, Any]:  # type: ignore[override]
            x, y = ctx.saved_tensors
            with host_thread_pool(grad):
                gx = host_matmul(grad, y, torch) if ctx.needs_input_grad[0] else None
                gy = host_matmul(grad.T, x, torch) if ctx.needs_input_grad[1] else None
            return gx, gy

    return ProductT


def masked_fill(x: Array, where: Array, value: float, xp: Any) -> Array:
    """A copy of ``x`` with ``value`` where the boolean ``where`` is True (one pass, one array)."""
    if array_api_compat.is_torch_namespace(xp):
        return x.masked_fill(where, value)
    return xp.where(where, xp.asarray(value, dtype=x.dtype, device=device_of(x)), x)


def safe_log(x: Array, xp: Any) -> Array:
    """``log(x)`` for ``x >= 0`` with ``log(0) = -inf``, without warnings or NaN gradients.

    The gradient at ``x = 0`` is 0 rather than ``inf * 0 = NaN``: the zero entries are routed
    through ``log(1)`` and replaced afterwards.
    """
    positive = x > 0
    one = xp.ones_like(x)
    return xp.where(positive, xp.log(xp.where(positive, x, one)), full_like(x, -math.inf, xp))


def logsumexp(x: Array, axis: int, xp: Any, keepdims: bool = False) -> Array:
    """``log(sum(exp(x), axis))``, stable, with ``-inf`` for slices that are all ``-inf``.

    PyTorch and CuPy-compatible libraries get their fused kernels; everything else uses the
    max-shift formula ``m + log(sum(exp(x - m)))`` with a guarded ``m`` for all-``-inf`` slices.
    """
    if array_api_compat.is_torch_namespace(xp):
        return x.logsumexp(dim=axis, keepdim=keepdims)
    m = xp.max(x, axis=axis, keepdims=True)
    m = xp.where(xp.isfinite(m), m, xp.zeros_like(m))
    s = xp.sum(xp.exp(x - m), axis=axis, keepdims=True)
    out = safe_log(s, xp) + m
    if not keepdims:
        out = xp.squeeze(out, axis=axis)
    return out


LIBRARIES = ("numpy", "torch", "cupy", "array_api_strict")


def from_numpy(x: np.ndarray, library: str = "numpy", device: Any = None) -> Array:
    """Copy a NumPy array into ``library`` (``"numpy"``, ``"torch"``, ``"cupy"``,
    ``"array_api_strict"``) on ``device``; the library is imported on demand.

    Raises ``ImportError`` when the library is not installed and ``ValueError`` for an unknown
    name.
    """
    if library == "numpy":
        return np.array(x, copy=True)
    if library == "torch":
        import torch

        return torch.from_numpy(np.array(x, copy=True)).to(device or "cpu")
    if library == "cupy":
        import cupy

        return cupy.asarray(x)
    if library == "array_api_strict":
        import array_api_strict

        return array_api_strict.asarray(np.array(x, copy=True))
    raise ValueError(f"library must be one of {LIBRARIES}, got {library!r}")


def to_float(x: Any) -> float:
    """A Python float from a number or a 0-d array of any library (detached, synchronising)."""
    if is_array(x):
        return float(to_numpy(x))
    return float(x)


def to_numpy(x: Array) -> np.ndarray:
    """Copy an array of any supported library to a NumPy array on the host (detached)."""
    if isinstance(x, np.ndarray):
        return x
    if array_api_compat.is_torch_array(x):
        return x.detach().cpu().numpy()
    if array_api_compat.is_cupy_array(x):
        return x.get()
    try:
        return np.asarray(x)
    except (TypeError, ValueError, RuntimeError):
        return np.from_dlpack(x)
