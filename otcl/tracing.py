"""Whether an array's values can be read now, or only its shape and dtype.

Under ``jax.jit``, ``jax.grad`` and ``jax.vmap`` arrays are tracers; under ``torch.compile`` and
``torch.func.vmap`` torch tensors are symbolic or batched. Reading a value of such an array
(``bool(x.any())``, ``float(x)``) fails or breaks the graph, so otcl's input checks ask
[`concrete`][otcl.tracing.concrete] first: shapes and dtypes are always checked, values only when
they are concrete (DESIGN.md, "input checks never branch on values that a tracer hides").
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["concrete", "definitely", "plain_ops", "traced"]


def traced(x: Any) -> bool:
    """True when ``x`` is an array whose values a transform hides (a JAX tracer, a torch tensor
    while ``torch.compile`` traces or inside ``torch.func.vmap``)."""
    module = type(x).__module__
    if module.startswith("jax"):
        jax = sys.modules.get("jax")
        return jax is not None and isinstance(x, jax.core.Tracer)
    if module.startswith("torch"):
        torch = sys.modules.get("torch")
        if torch is None:
            return False
        if torch.compiler.is_compiling():
            return True
        return bool(torch._C._functorch.is_batchedtensor(x))
    return False


def concrete(*arrays: Any) -> bool:
    """True when every argument's values can be read (``None`` and numbers count as concrete)."""
    return not any(traced(x) for x in arrays if x is not None)


def definitely(flag: Any) -> bool:
    """``bool(flag)`` for a concrete 0-d boolean array, ``False`` for a traced one: a check
    ``if definitely(xp.any(bad)): raise ...`` runs whenever the value can be read, and is skipped
    under a transform (inside ``jax.jit`` even arrays computed from constants are tracers, so the
    flag itself is what must be asked)."""
    return concrete(flag) and bool(flag)


def plain_ops(x: Any) -> bool:
    """True when ``x`` must be computed with plain array operations only: a JAX tracer, or a
    torch tensor while ``torch.compile`` traces or inside a ``torch.func`` transform (``grad``,
    ``vmap``, ``jacrev``, ...). Custom autograd Functions, host reads and NumPy fast paths are
    then replaced by the same arithmetic in ordinary operations, which the transform
    differentiates or traces itself."""
    if traced(x):
        return True
    if type(x).__module__.startswith("torch"):
        torch = sys.modules.get("torch")
        return torch is not None and bool(torch._C._functorch.is_functorch_wrapped_tensor(x))
    return False
