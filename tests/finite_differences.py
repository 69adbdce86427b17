"""Central finite differences: the oracle of the gradient tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np


def central_differences(f: Callable[[np.ndarray], Any], x: np.ndarray,
                        h: float = 1e-6) -> np.ndarray:
    """``(f(x + h e_k) - f(x - h e_k)) / (2 h)`` for every entry ``k`` of ``x``: shape
    ``f(x).shape + x.shape`` (the gradient of a scalar ``f``, the Jacobian otherwise). ``f`` takes
    and returns NumPy arrays (or a float)."""
    x = np.asarray(x)
    out_shape = np.shape(f(x))
    out = np.zeros(out_shape + x.shape)
    for idx in np.ndindex(*x.shape):
        xp, xm = x.copy(), x.copy()
        xp[idx] += h
        xm[idx] -= h
        out[(Ellipsis, *idx)] = (np.asarray(f(xp)) - np.asarray(f(xm))) / (2 * h)
    return out
