"""Array-library dispatch: the one place that knows which array library is in use.

Every algorithm in otcl is written once against the Python array API standard and receives its
namespace ``xp`` from :func:`namespace`. The handful of operations the standard lacks
(``logsumexp``, a log that maps 0 to ``-inf`` without a warning, the dtype's ``tiny``, conversion
to NumPy) live here and nowhere else. Fast paths for a particular library (for instance PyTorch's
fused ``logsumexp``) are chosen here by namespace, never by importing that library.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import array_api_compat
import numpy as np

Array = Any
"""Any array of a supported library (NumPy, CuPy, PyTorch, array-api-strict)."""

__all__ = [
    "Array",
    "check_compatible",
    "device_of",
    "dtype_eps",
    "dtype_tiny",
    "from_numpy",
    "full_like",
    "is_array",
    "logsumexp",
    "masked_fill",
    "namespace",
    "quiet_numerics",
    "safe_log",
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
    return type(x).__module__.split(".")[0]


def check_compatible(
    *, floating: bool = True, same_dtype: bool = True, **arrays: Array | None
) -> Any:
    """Check that the named arrays share one library, dtype and device; return their namespace.

    The first non-``None`` argument is the reference. A mismatch raises ``TypeError`` (library,
    dtype) or ``ValueError`` (device) naming the offending argument, so that nothing is ever
    silently converted. With ``floating=True`` the reference dtype must be real floating; with
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
    if floating and not xp.isdtype(ref.dtype, "real floating"):
        raise TypeError(f"{ref_name} must have a real floating dtype, got {ref.dtype}")
    for name, x in named[1:]:
        lib = _library(x)
        if lib != ref_lib:
            raise TypeError(f"{name} is a {lib} array but {ref_name} is a {ref_lib} array")
        if same_dtype and x.dtype != ref.dtype:
            raise TypeError(f"{name} has dtype {x.dtype} but {ref_name} has dtype {ref.dtype}")
        if device_of(x) != device_of(ref):
            raise ValueError(
                f"{name} is on device {device_of(x)} but {ref_name} is on {device_of(ref)}"
            )
    return xp


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
