"""The dense primitives of the solver loops, one implementation per kind of array.

```
base.py        ArrayOps: the interface, allocating and differentiable (any array-API library,
               arrays an autograd engine records)
blocking.py    how large matrices are cut into cache-sized blocks (sweeps, multi-pass operations)
buffered.py    BufferedOps: elementwise operations into preallocated, pooled buffers
products.py    BufferedProducts: matrix-vector products into preallocated outputs
logsumexp.py   BufferedLogSumExp: log-sum-exp over rows or columns, block by block
numpy_ops.py   NumpyOps = the three buffered parts on NumPy
torch_ops.py   TorchCpuOps = the same on PyTorch CPU tensors (+ their library-specific kernels)
```

[`array_ops`][otcl.ops.array_ops] picks one for a loop's inputs. The loops
([`otcl.solvers.sinkhorn`][otcl.solvers.sinkhorn], [`otcl.solvers.adjoint`][otcl.solvers.adjoint],
[`otcl.alignment.codes`][otcl.alignment.codes]) are written once against
[`ArrayOps`][otcl.ops.base.ArrayOps]; this package sits between them and
[`otcl.backend`][otcl.backend], whose helpers it uses.
"""

from __future__ import annotations

from typing import Any

import array_api_compat

from otcl.ops.base import ArrayOps
from otcl.ops.numpy_ops import NumpyOps
from otcl.ops.torch_ops import TorchCpuOps

__all__ = ["ArrayOps", "array_ops"]


def array_ops(xp: Any, *arrays: Any) -> ArrayOps:
    """The [`ArrayOps`][otcl.ops.base.ArrayOps] for a solver loop on ``arrays`` (the loop's inputs).

    Buffered operations for NumPy and for PyTorch CPU tensors when no autograd graph records any of
    the arrays (no ``requires_grad``, or grad mode off); the allocating, differentiable
    [`ArrayOps`][otcl.ops.base.ArrayOps] for everything else (array-api-strict, CuPy, GPU tensors,
    recorded tensors).
    """
    if array_api_compat.is_numpy_namespace(xp):
        return NumpyOps(xp)
    if array_api_compat.is_torch_namespace(xp):
        import torch

        tensors = [x for x in arrays if isinstance(x, torch.Tensor)]
        recorded = torch.is_grad_enabled() and any(x.requires_grad for x in tensors)
        on_cpu = all(x.device.type == "cpu" for x in tensors)
        if not recorded and on_cpu:
            return TorchCpuOps(xp, torch)
    return ArrayOps(xp)
