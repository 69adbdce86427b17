"""PyTorch losses of the GCA family: functional forms and thin ``nn.Module`` classes.

Every loss is the backend-agnostic composition of :mod:`otcl.alignment.losses`; this module adds
what a PyTorch user expects: ``nn.Module`` classes with keyword-only hyper-parameters and the
paper's defaults, a choice of gradient mode, a learnable temperature, and mixed precision.

Gradient modes (``grad=``):

* ``"unroll"`` (default): the exact derivative of the ``n_iter`` rounds (what the paper trains
  with), by an adjoint recursion on vectors; memory ``O(n m)`` for the kernel plus ``O(n + m)``
  per round.
* ``"implicit"``: the implicit-function derivative at the fixed point (conjugate gradients on the
  optimality system); memory ``O(n m)`` independent of ``n_iter``; equals ``"unroll"`` once the
  rounds have converged.
* ``"detach"``: potentials treated as constants (envelope style). For balanced problems with
  matched marginals at convergence this is the exact gradient of the KL loss
  (``(P_tgt - P) / eps`` w.r.t. ``C``); elsewhere it is an approximation.

Mixed precision: float16 / bfloat16 embeddings are computed in float32 (autocast is disabled
inside the loss), and the loss is returned in float32; gradients flow back in the inputs' dtype.

Data parallelism: ``distributed=True`` (module constructor or functional keyword) computes the
loss of the global batch of all ``torch.distributed`` ranks, with a gradient that DDP's averaging
turns into the single-process gradient on the concatenated batch (:mod:`otcl.torch.distributed`).
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from torch import nn

from otcl.alignment import losses as _alg

__all__ = [
    "GCARINCE",
    "GCAUOT",
    "GRAD_MODES",
    "IOT",
    "RINCE",
    "AlignmentLoss",
    "GCAInfoNCE",
    "IOTUni",
    "InfoNCE",
    "TorchInner",
    "gca_ince",
    "gca_rince",
    "gca_uot",
    "info_nce",
    "iot",
    "iot_uni",
    "rince",
]

GRAD_MODES = ("unroll", "implicit", "detach")


class TorchInner:
    """The inner solve of a loss on torch tensors, differentiated in the chosen ``grad`` mode."""

    def __init__(self, grad: str = "unroll") -> None:
        if grad not in GRAD_MODES:
            raise ValueError(f"grad must be one of {GRAD_MODES}, got {grad!r}")
        self.grad = grad

    @property
    def detached(self) -> bool:
        return self.grad == "detach"

    def __call__(self, log_kernel: torch.Tensor, log_a: torch.Tensor, log_b: torch.Tensor,
                 t_a: Any, t_b: Any, n_iter: int) -> tuple[torch.Tensor, torch.Tensor]:
        from otcl.torch.autograd import inner_potentials

        # with no rounds there is no fixed point: the one row step's exact derivative is the
        # unrolled one, whatever the mode asked for (detach excepted)
        grad = "unroll" if n_iter == 0 and self.grad == "implicit" else self.grad
        return inner_potentials(log_kernel, log_a, log_b, t_a, t_b, n_iter, grad=grad)

    def __repr__(self) -> str:
        return f"TorchInner(grad={self.grad!r})"


def _compute_dtype(*tensors: Any) -> torch.dtype | None:
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.dtype in (torch.float16, torch.bfloat16):
            return torch.float32
    return None


def _call(fn: Any, z1: Any, z2: Any, grad: str, kwargs: dict[str, Any],
          distributed: bool = False) -> Any:
    """Run a backend-agnostic loss on torch tensors: gradient mode, precision, autocast;
    ``distributed=True``: the loss of all ranks' samples (:mod:`otcl.torch.distributed`)."""
    if distributed is not False:
        if distributed is not True:
            raise TypeError(f"distributed must be a bool, got {distributed!r}")
        from otcl.torch.distributed import global_loss

        return global_loss(lambda Z1, Z2, kw: _call(fn, Z1, Z2, grad, kw), z1, z2, kwargs,
                           signature=f"{getattr(fn, '__qualname__', fn)!s}|grad={grad}")
    if not isinstance(z1, torch.Tensor) or (z2 is not None and not isinstance(z2, torch.Tensor)):
        raise TypeError(
            "otcl.torch losses take torch tensors; use the otcl.* functions for other arrays"
        )
    inner = TorchInner(grad)
    up = _compute_dtype(z1, z2, kwargs.get("eps"), kwargs.get("target"))
    if up is not None:
        z1 = z1.to(up)
        z2 = None if z2 is None else z2.to(up)
        for key in ("eps", "target"):
            if isinstance(kwargs.get(key), torch.Tensor):
                kwargs[key] = kwargs[key].to(up)
    elif isinstance(kwargs.get("eps"), torch.Tensor) and kwargs["eps"].dtype != z1.dtype:
        kwargs["eps"] = kwargs["eps"].to(z1.dtype)
    with torch.autocast(device_type=z1.device.type, enabled=False):
        return fn(z1, z2, inner=inner, **kwargs)


def _functional(fn: Any, z1: Any, z2: Any, grad: str, distributed: bool,
                kwargs: dict[str, Any]) -> Any:
    """A functional form: warn when data-parallel ranks would see only local negatives."""
    if distributed is False:
        _warn_local_negatives(stacklevel=4)
    return _call(fn, z1, z2, grad, kwargs, distributed)


def _warn_local_negatives(stacklevel: int) -> bool:
    """Warn (``UserWarning``) if a process group of world size > 1 exists; True if warned."""
    from otcl.torch.distributed import local_negatives_warning

    message = local_negatives_warning()
    if message is not None:
        warnings.warn(message, UserWarning, stacklevel=stacklevel)
    return message is not None


def info_nce(z1: torch.Tensor, z2: torch.Tensor | None = None, *, grad: str = "unroll",
             distributed: bool = False, **kwargs: Any) -> Any:
    """InfoNCE / NT-Xent on torch tensors; keyword arguments as :func:`otcl.info_nce`."""
    return _functional(_alg.info_nce, z1, z2, grad, distributed, kwargs)


def gca_ince(z1: torch.Tensor, z2: torch.Tensor | None = None, *, grad: str = "unroll",
             distributed: bool = False, **kwargs: Any) -> Any:
    """GCA-INCE on torch tensors; keyword arguments as :func:`otcl.gca_ince`."""
    return _functional(_alg.gca_ince, z1, z2, grad, distributed, kwargs)


def rince(z1: torch.Tensor, z2: torch.Tensor | None = None, *, grad: str = "unroll",
          distributed: bool = False, **kwargs: Any) -> Any:
    """RINCE on torch tensors; keyword arguments as :func:`otcl.rince`."""
    return _functional(_alg.rince, z1, z2, grad, distributed, kwargs)


def gca_rince(z1: torch.Tensor, z2: torch.Tensor | None = None, *, grad: str = "unroll",
              distributed: bool = False, **kwargs: Any) -> Any:
    """GCA-RINCE on torch tensors; keyword arguments as :func:`otcl.gca_rince`."""
    return _functional(_alg.gca_rince, z1, z2, grad, distributed, kwargs)


def gca_uot(z1: torch.Tensor, z2: torch.Tensor | None = None, *, grad: str = "unroll",
            distributed: bool = False, **kwargs: Any) -> Any:
    """GCA-UOT on torch tensors; keyword arguments as :func:`otcl.gca_uot`."""
    return _functional(_alg.gca_uot, z1, z2, grad, distributed, kwargs)


def iot(z1: torch.Tensor, z2: torch.Tensor | None = None, *, grad: str = "unroll",
        distributed: bool = False, **kwargs: Any) -> Any:
    """IOT on torch tensors; keyword arguments as :func:`otcl.iot`."""
    return _functional(_alg.iot, z1, z2, grad, distributed, kwargs)


def iot_uni(z1: torch.Tensor, z2: torch.Tensor | None = None, *, grad: str = "unroll",
            distributed: bool = False, **kwargs: Any) -> Any:
    """IOT-uni on torch tensors; keyword arguments as :func:`otcl.iot_uni`."""
    return _functional(_alg.iot_uni, z1, z2, grad, distributed, kwargs)


def _alignment(z1: Any, z2: Any, *, inner: Any, **kw: Any) -> Any:
    """``alignment_loss`` on embeddings (cost, mask and target built from the batch)."""
    return _alg._embedding_loss(z1, z2, inner=inner, **kw)


class _Loss(nn.Module):
    """Shared machinery: hyper-parameters, learnable temperature, call forms.

    ``distributed=True``: under ``torch.distributed`` the loss is the one of the global batch
    (all ranks' samples are each other's negatives), with a gradient that DDP's averaging turns
    into the single-process gradient on the concatenated batch (:mod:`otcl.torch.distributed`).
    With ``distributed=False`` and a process group of world size > 1, the first call warns once
    per module that each rank sees only its local negatives.
    """

    _fn: Any = None

    def __init__(self, *, eps: float | torch.Tensor = 0.5, grad: str = "unroll",
                 layout: str | None = None, n_views: int = 2, metric: str = "neg_cosine",
                 reduction: str = "mean", distributed: bool = False, **hyper: Any) -> None:
        super().__init__()
        if not isinstance(distributed, bool):
            raise TypeError(f"distributed must be a bool, got {distributed!r}")
        self.distributed = distributed
        self._warned_local = False
        if grad not in GRAD_MODES:
            raise ValueError(f"grad must be one of {GRAD_MODES}, got {grad!r}")
        if isinstance(eps, nn.Parameter):
            self.eps = eps  # learnable temperature: registered, receives gradients
        elif isinstance(eps, torch.Tensor):
            self.register_buffer("eps", eps.detach().clone())
        else:
            if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not (
                math.isfinite(eps) and eps > 0
            ):
                raise ValueError(f"eps must be positive and finite, got {eps!r}")
            self.eps = float(eps)
        self.grad = grad
        self.layout, self.n_views, self.metric, self.reduction = layout, n_views, metric, reduction
        self.hyper = hyper

    def forward(self, z1: torch.Tensor, z2: torch.Tensor | None = None, *,
                labels: torch.Tensor | None = None, target: torch.Tensor | None = None,
                return_details: bool = False) -> Any:
        """``loss(z1, z2)``, ``loss(z, labels=...)`` or ``loss(z1, z2, target=...)``."""
        kwargs = dict(self.hyper)
        kwargs.update(eps=self.eps, layout=self.layout, n_views=self.n_views,
                      metric=self.metric, labels=labels, target=target,
                      reduction=self.reduction, return_details=return_details)
        if not self.distributed and not self._warned_local:
            self._warned_local = _warn_local_negatives(stacklevel=5)
        return _call(type(self)._fn, z1, z2, self.grad, kwargs, self.distributed)

    def extra_repr(self) -> str:
        eps = self.eps if isinstance(self.eps, float) else "tensor"
        parts = [f"eps={eps}", f"grad={self.grad!r}", f"metric={self.metric!r}"]
        parts += [f"{k}={v!r}" for k, v in self.hyper.items()]
        if self.layout is not None:
            parts.append(f"layout={self.layout!r}")
        if self.distributed:
            parts.append("distributed=True")
        return ", ".join(parts)


class InfoNCE(_Loss):
    """InfoNCE / NT-Xent (``eps = 0.5``). See :func:`otcl.info_nce`."""

    _fn = staticmethod(_alg.info_nce)

    def __init__(self, *, eps: float | torch.Tensor = 0.5, **kwargs: Any) -> None:
        super().__init__(eps=eps, **kwargs)


class GCAInfoNCE(_Loss):
    """GCA-INCE (``eps = 0.5``, ``n_iter = 10``). See :func:`otcl.gca_ince`."""

    _fn = staticmethod(_alg.gca_ince)

    def __init__(self, *, eps: float | torch.Tensor = 0.5, n_iter: int = 10, **kwargs: Any) -> None:
        super().__init__(eps=eps, n_iter=n_iter, **kwargs)


class RINCE(_Loss):
    """RINCE (``eps = 0.5``, ``q = 0.6``, ``lam = 0.01``). See :func:`otcl.rince`."""

    _fn = staticmethod(_alg.rince)

    def __init__(self, *, eps: float | torch.Tensor = 0.5, q: float = 0.6, lam: float = 0.01,
                 **kwargs: Any) -> None:
        _check_rince(q, lam)
        super().__init__(eps=eps, q=q, lam=lam, **kwargs)


class GCARINCE(_Loss):
    """GCA-RINCE (``eps = 0.5``, ``n_iter = 10``, ``q = 0.6``, ``lam = 0.01``).
    See :func:`otcl.gca_rince`."""

    _fn = staticmethod(_alg.gca_rince)

    def __init__(self, *, eps: float | torch.Tensor = 0.5, n_iter: int = 10, q: float = 0.6,
                 lam: float = 0.01, **kwargs: Any) -> None:
        _check_rince(q, lam)
        super().__init__(eps=eps, n_iter=n_iter, q=q, lam=lam, **kwargs)


class GCAUOT(_Loss):
    """GCA-UOT (``eps = 0.5``, ``rho = 0.2``, ``n_iter = 10``, ``r1 = 1``, ``r2 = 0.02``,
    ``q = 0.6``, ``lam = 0.01``). ``details.row_mass`` flags noisy pairs.
    See :func:`otcl.gca_uot`."""

    _fn = staticmethod(_alg.gca_uot)

    def __init__(self, *, eps: float | torch.Tensor = 0.5, rho: float = 0.2,
                 rho_a: float | None = None, rho_b: float | None = None, n_iter: int = 10,
                 r1: float = 1.0, r2: float = 0.02, q: float = 0.6, lam: float = 0.01,
                 **kwargs: Any) -> None:
        _check_rince(q, lam)
        super().__init__(eps=eps, rho=rho, rho_a=rho_a, rho_b=rho_b, n_iter=n_iter, r1=r1,
                         r2=r2, q=q, lam=lam, **kwargs)


class IOT(_Loss):
    """IOT (``eps = 0.5``, ``n_iter = 10``). See :func:`otcl.iot`."""

    _fn = staticmethod(_alg.iot)

    def __init__(self, *, eps: float | torch.Tensor = 0.5, n_iter: int = 10, **kwargs: Any) -> None:
        super().__init__(eps=eps, n_iter=n_iter, **kwargs)


class IOTUni(_Loss):
    """IOT with the uniformity prior (``lam_p = 0.2``). See :func:`otcl.iot_uni`."""

    _fn = staticmethod(_alg.iot_uni)

    def __init__(self, *, eps: float | torch.Tensor = 0.5, n_iter: int = 10, lam_p: float = 0.2,
                 **kwargs: Any) -> None:
        super().__init__(eps=eps, n_iter=n_iter, lam_p=lam_p, **kwargs)


class AlignmentLoss(_Loss):
    """The generic GCA loss: choose the inner constraints (``rho_a``, ``rho_b``, ``n_iter``),
    the target (per call) and the outer divergence. See :func:`otcl.alignment_loss`.

    ``divergence`` is ``"kl"``, ``"cross_entropy"``, ``"rince"`` or a mapping of them to weights.
    """

    _fn = staticmethod(_alignment)

    def __init__(self, *, eps: float | torch.Tensor = 0.5, n_iter: int = 10,
                 rho_a: float = math.inf, rho_b: float = math.inf, divergence: Any = "kl",
                 marginals: str = "target", final_step: str = "row", q: float = 0.6,
                 lam: float = 0.01, **kwargs: Any) -> None:
        super().__init__(eps=eps, n_iter=n_iter, rho_a=rho_a, rho_b=rho_b,
                         divergence=divergence, marginals=marginals, final_step=final_step,
                         q=q, lam=lam, **kwargs)


def _check_rince(q: float, lam: float) -> None:
    from otcl.alignment.divergences import validate_rince

    validate_rince(q, lam)
