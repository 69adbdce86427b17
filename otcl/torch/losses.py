"""PyTorch losses of the GCA family: functional forms and thin ``nn.Module`` classes.

Every loss is the backend-agnostic composition of [`otcl.alignment.losses`][otcl.alignment.losses];
this module adds what a PyTorch user expects: ``nn.Module`` classes with keyword-only
hyper-parameters and the paper's defaults, a choice of gradient mode, a learnable temperature, and
mixed precision.

Gradient modes (``grad=``):

* ``"unroll"`` (default): the exact derivative of the ``n_iter`` rounds (what the paper trains
  with), by an adjoint recursion on vectors; memory ``O(n m)`` for the kernel plus ``O(n + m)``
  per round.
* ``"implicit"``: the implicit-function derivative at the fixed point (conjugate gradients on the
  optimality system); memory ``O(n m)`` independent of ``n_iter``; equals ``"unroll"`` once the
  rounds have converged. A balanced loss that reads the potentials' gauge (the RINCE term of
  GCA-RINCE, or of GCA-UOT with ``rho=inf``) has no implicit derivative: backward raises
  ``ValueError``. Under ``torch.compile`` / ``torch.func`` it warns and unrolls.
* ``"detach"``: potentials treated as constants (envelope style). For balanced problems with
  matched marginals at convergence this is the exact gradient of the KL and cross-entropy losses
  (``(P_tgt - P) / eps`` w.r.t. ``C``); elsewhere it is an approximation.

Mixed precision: float16 / bfloat16 embeddings are computed in float32 (autocast is disabled
inside the loss), and the loss is returned in float32; gradients flow back in the inputs' dtype.

Data parallelism: ``distributed=True`` (module constructor or functional keyword) computes the loss
of the global batch of all ``torch.distributed`` ranks, with a gradient that DDP's averaging turns
into the single-process gradient on the concatenated batch
([`otcl.torch.distributed`][otcl.torch.distributed]). ``distributed="sharded"`` computes the same
loss with each rank holding only its rows of the global kernel
([`otcl.torch.sharded`][otcl.torch.sharded]; the losses of ``SHARDED_LOSSES``, every ``grad`` mode).
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from torch import nn

from otcl._api import checked_keywords
from otcl.alignment import losses as _alg

__all__ = [
    "BYOL",
    "GCARINCE",
    "GCAUOT",
    "GRAD_MODES",
    "IMPLICIT_UNDER_TRANSFORM",
    "IOT",
    "RINCE",
    "AlignmentLoss",
    "GCACapacity",
    "GCAInfoNCE",
    "IOTUni",
    "InfoNCE",
    "MemoryBank",
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

IMPLICIT_UNDER_TRANSFORM = (
    "grad='implicit' under torch.compile or a torch.func transform: the transform "
    "differentiates the Sinkhorn rounds as written, so the gradient is the unrolled one "
    "(grad='unroll'), with autograd's memory (n_iter matrices); the implicit derivative needs "
    "eager mode"
)
"""The warning a loss in ``grad="implicit"`` mode gives when a transform traces it."""


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
                 t_a: Any, t_b: Any, n_iter: int,
                 init: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        from otcl.torch.autograd import inner_potentials
        from otcl.tracing import plain_ops

        if plain_ops(log_kernel):
            # torch.compile and torch.func transforms trace or differentiate the rounds as
            # written (the custom Function's host-side solve is opaque to them); "detach" keeps
            # its meaning
            from otcl.alignment.losses import UnrolledInner

            if self.grad == "implicit" and n_iter > 0:
                warnings.warn(IMPLICIT_UNDER_TRANSFORM, UserWarning, stacklevel=4)
            out = UnrolledInner()(log_kernel, log_a, log_b, t_a, t_b, n_iter, init)
            return tuple(o.detach() for o in out) if self.grad == "detach" else out
        # with no rounds there is no fixed point: the one row step's exact derivative is the
        # unrolled one, whatever the mode asked for (detach excepted)
        grad = "unroll" if n_iter == 0 and self.grad == "implicit" else self.grad
        return inner_potentials(log_kernel, log_a, log_b, t_a, t_b, n_iter, grad=grad,
                                init=init)

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
    ``distributed=True``: the loss of all ranks' samples
    ([`otcl.torch.distributed`][otcl.torch.distributed])."""
    if "temperature" in kwargs:
        kwargs["eps"] = _alg.resolve_temperature(kwargs.get("eps"), kwargs.pop("temperature"))
    if distributed is not False:
        sharded = isinstance(distributed, str) and distributed == "sharded"
        if distributed is not True and not sharded:
            raise TypeError(f"distributed must be a bool or 'sharded', got {distributed!r}")
        from otcl.torch.distributed import global_loss

        if (z2 is not None and kwargs.get("layout") in (None, "blocked")
                and isinstance(z1, torch.Tensor) and isinstance(z2, torch.Tensor)
                and z1.shape == z2.shape):
            # the SimCLR two-view problem is the all-views blocked batch [z1; z2]: gathered as
            # such, every rank's two views join the global blocked batch
            z1, z2 = torch.cat([z1, z2]), None
            kwargs = {**kwargs, "layout": "blocked", "n_views": 2}
        if sharded:
            from otcl.torch.sharded import sharded_loss

            return sharded_loss(fn, z1, z2, grad, kwargs)

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


_COMMON = ("eps", "temperature", "layout", "n_views", "metric", "labels", "target", "reduction",
           "return_details")


def _functional_kwargs(local: dict[str, Any], *names: str) -> dict[str, Any]:
    return {k: local[k] for k in (*_COMMON, *names)}


@checked_keywords
def info_nce(z1: torch.Tensor, z2: torch.Tensor | None = None, *,
             eps: float | torch.Tensor | None = None,
             temperature: float | torch.Tensor | None = None, divergence: str = "kl",
             layout: str | None = None, n_views: int = 2, metric: str = "neg_cosine",
             labels: torch.Tensor | None = None, target: torch.Tensor | None = None,
             reduction: str = "mean", return_details: bool = False, grad: str = "unroll",
             distributed: bool = False) -> Any:
    """InfoNCE / NT-Xent on torch tensors ([`otcl.info_nce`][otcl.info_nce]); ``loss(z1, z2)``
    equals lightly's and pytorch-metric-learning's ``NTXentLoss`` at the same temperature."""
    return _functional(_alg.info_nce, z1, z2, grad, distributed,
                       _functional_kwargs(locals(), "divergence"))


@checked_keywords
def gca_ince(z1: torch.Tensor, z2: torch.Tensor | None = None, *,
             eps: float | torch.Tensor | None = None,
             temperature: float | torch.Tensor | None = None, n_iter: int = 10,
             divergence: str = "kl", layout: str | None = None, n_views: int = 2,
             metric: str = "neg_cosine", labels: torch.Tensor | None = None,
             target: torch.Tensor | None = None, reduction: str = "mean",
             return_details: bool = False, grad: str = "unroll",
             distributed: bool = False) -> Any:
    """GCA-INCE on torch tensors ([`otcl.gca_ince`][otcl.gca_ince])."""
    return _functional(_alg.gca_ince, z1, z2, grad, distributed,
                       _functional_kwargs(locals(), "n_iter", "divergence"))


@checked_keywords
def rince(z1: torch.Tensor, z2: torch.Tensor | None = None, *,
          eps: float | torch.Tensor | None = None,
          temperature: float | torch.Tensor | None = None, q: float = 0.6, lam: float = 0.01,
          layout: str | None = None, n_views: int = 2, metric: str = "neg_cosine",
          labels: torch.Tensor | None = None, target: torch.Tensor | None = None,
          reduction: str = "mean", return_details: bool = False, grad: str = "unroll",
          distributed: bool = False) -> Any:
    """RINCE on torch tensors ([`otcl.rince`][otcl.rince])."""
    return _functional(_alg.rince, z1, z2, grad, distributed,
                       _functional_kwargs(locals(), "q", "lam"))


@checked_keywords
def gca_rince(z1: torch.Tensor, z2: torch.Tensor | None = None, *,
              eps: float | torch.Tensor | None = None,
              temperature: float | torch.Tensor | None = None, n_iter: int = 10,
              q: float = 0.6, lam: float = 0.01, layout: str | None = None, n_views: int = 2,
              metric: str = "neg_cosine", labels: torch.Tensor | None = None,
              target: torch.Tensor | None = None, reduction: str = "mean",
              return_details: bool = False, grad: str = "unroll",
              distributed: bool = False) -> Any:
    """GCA-RINCE on torch tensors ([`otcl.gca_rince`][otcl.gca_rince])."""
    return _functional(_alg.gca_rince, z1, z2, grad, distributed,
                       _functional_kwargs(locals(), "n_iter", "q", "lam"))


@checked_keywords
def gca_uot(z1: torch.Tensor, z2: torch.Tensor | None = None, *,
            eps: float | torch.Tensor | None = None,
            temperature: float | torch.Tensor | None = None, rho: float = 0.2,
            rho_a: float | None = None, rho_b: float | None = None, n_iter: int = 10,
            r1: float = 1.0, r2: float = 0.2, q: float = 0.6, lam: float = 0.01,
            kl: str = "row", layout: str | None = None, n_views: int = 2,
            metric: str = "cosine", labels: torch.Tensor | None = None,
            target: torch.Tensor | None = None, reduction: str = "mean",
            return_details: bool = False, grad: str = "unroll",
            distributed: bool = False) -> Any:
    """GCA-UOT on torch tensors ([`otcl.gca_uot`][otcl.gca_uot], the official loss and defaults)."""
    return _functional(_alg.gca_uot, z1, z2, grad, distributed,
                       _functional_kwargs(locals(), "rho", "rho_a", "rho_b", "n_iter", "r1",
                                          "r2", "q", "lam", "kl"))


@checked_keywords
def iot(z1: torch.Tensor, z2: torch.Tensor | None = None, *,
        eps: float | torch.Tensor | None = None,
        temperature: float | torch.Tensor | None = None, n_iter: int = 10,
        layout: str | None = None, n_views: int = 2, metric: str = "neg_cosine",
        labels: torch.Tensor | None = None, target: torch.Tensor | None = None,
        reduction: str = "mean", return_details: bool = False, grad: str = "unroll",
        distributed: bool = False) -> Any:
    """IOT on torch tensors ([`otcl.iot`][otcl.iot])."""
    return _functional(_alg.iot, z1, z2, grad, distributed,
                       _functional_kwargs(locals(), "n_iter"))


@checked_keywords
def iot_uni(z1: torch.Tensor, z2: torch.Tensor | None = None, *,
            eps: float | torch.Tensor | None = None,
            temperature: float | torch.Tensor | None = None, n_iter: int = 10,
            lam_p: float = 0.2, layout: str | None = None, n_views: int = 2,
            metric: str = "neg_cosine", labels: torch.Tensor | None = None,
            target: torch.Tensor | None = None, reduction: str = "mean",
            return_details: bool = False, grad: str = "unroll",
            distributed: bool = False) -> Any:
    """IOT-uni on torch tensors ([`otcl.iot_uni`][otcl.iot_uni])."""
    return _functional(_alg.iot_uni, z1, z2, grad, distributed,
                       _functional_kwargs(locals(), "n_iter", "lam_p"))


def _alignment(z1: Any, z2: Any, *, inner: Any, **kw: Any) -> Any:
    """``alignment_loss`` on embeddings (cost, mask and target built from the batch)."""
    kw["eps"] = _alg.resolve_temperature(kw.get("eps"), kw.pop("temperature", None))
    return _alg._embedding_loss(z1, z2, inner=inner, **kw)


LAYOUT_NAMES = (None, "cross", "queue", "blocked", "interleaved")


def _check_common(layout: Any, n_views: Any, metric: Any, reduction: Any) -> int:
    from otcl.alignment.losses import REDUCTIONS, as_count
    from otcl.geometry import METRICS

    if layout not in LAYOUT_NAMES:
        raise ValueError(f"layout must be one of {LAYOUT_NAMES}, got {layout!r}")
    n_views = as_count("n_views", n_views, minimum=2)
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    return n_views


def _check_weight(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite real number, got {value!r}")
    return float(value)


class _Loss(nn.Module):
    """Shared machinery: hyper-parameters checked at construction, a learnable temperature,
    call forms.

    ``eps`` (or its other name ``temperature``): a float; an ``nn.Parameter`` (registered,
    learnable); any other tensor that requires grad (used as given, so its gradient reaches
    the caller's tensor: a learnable temperature kept outside the module); or a tensor that
    does not (copied into a buffer).

    ``distributed=True``: under ``torch.distributed`` the loss is the one of the global batch (all
    ranks' samples are each other's negatives), with a gradient that DDP's averaging turns into the
    single-process gradient on the concatenated batch
    ([`otcl.torch.distributed`][otcl.torch.distributed]). ``distributed="sharded"``: the same loss
    and gradient, each rank forming only its rows of the global kernel and exchanging length-``n``
    vectors per round ([`otcl.torch.sharded`][otcl.torch.sharded]; InfoNCE, GCA-INCE, RINCE,
    GCA-RINCE, GCA-UOT and IOT, every ``grad`` mode). With ``distributed=False`` and a process group
    of world size > 1, the first call warns once per module that each rank sees only its local
    negatives.
    """

    _fn: Any = None

    def __init__(self, *, eps: float | torch.Tensor | None,
                 temperature: float | torch.Tensor | None, grad: str, layout: str | None,
                 n_views: int, metric: str, reduction: str, distributed: bool,
                 hyper: dict[str, Any]) -> None:
        super().__init__()
        if not isinstance(distributed, bool) and not (
            isinstance(distributed, str) and distributed == "sharded"
        ):
            raise TypeError(f"distributed must be a bool or 'sharded', got {distributed!r}")
        self.distributed = distributed
        self._warned_local = False
        if grad not in GRAD_MODES:
            raise ValueError(f"grad must be one of {GRAD_MODES}, got {grad!r}")
        n_views = _check_common(layout, n_views, metric, reduction)
        eps = _alg.resolve_temperature(eps, temperature)
        if isinstance(eps, nn.Parameter):
            _check_eps_tensor(eps)
            self.eps = eps  # learnable temperature: registered, receives gradients
        elif isinstance(eps, torch.Tensor) and eps.requires_grad:
            _check_eps_tensor(eps)
            object.__setattr__(self, "_eps_external", eps)  # the caller's tensor, not copied
        elif isinstance(eps, torch.Tensor):
            _check_eps_tensor(eps)
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

    def __getattr__(self, name: str) -> Any:
        if name == "eps" and "_eps_external" in self.__dict__:
            return self.__dict__["_eps_external"]
        return super().__getattr__(name)

    def forward(self, z1: torch.Tensor, z2: torch.Tensor | None = None, *,
                labels: torch.Tensor | None = None, target: torch.Tensor | None = None,
                return_details: bool = False) -> Any:
        """``loss(z1, z2)`` (SimCLR, all ``2N`` views), ``loss(z1, z2)`` with
        ``layout="cross"`` (one direction, ``z2`` may hold extra negatives), ``loss(z,
        labels=y)`` (supervised, one batch) or ``loss(z1, z2, target=T)``."""
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
            parts.append(f"distributed={self.distributed!r}")
        return ", ".join(parts)


def _check_eps_tensor(eps: torch.Tensor) -> None:
    if eps.ndim != 0 or not eps.is_floating_point():
        raise ValueError(f"eps must be a 0-d floating tensor, got shape {tuple(eps.shape)} and "
                         f"dtype {eps.dtype}")
    value = float(eps.detach())
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"eps must be positive and finite, got {value}")


class InfoNCE(_Loss):
    """InfoNCE / NT-Xent (``eps = temperature = 0.5``). See [`otcl.info_nce`][otcl.info_nce].

    ``InfoNCE(temperature=t)(z0, z1)`` equals lightly's and pytorch-metric-learning's
    ``NTXentLoss(temperature=t)(...)`` on the same two views; ``InfoNCE(temperature=t,
    divergence="cross_entropy")(z, labels=y)`` equals ``SupConLoss(temperature=t)``.
    """

    _fn = staticmethod(_alg.info_nce)

    @checked_keywords
    def __init__(self, *, eps: float | torch.Tensor | None = None,
                 temperature: float | torch.Tensor | None = None, divergence: str = "kl",
                 layout: str | None = None, n_views: int = 2, metric: str = "neg_cosine",
                 reduction: str = "mean", grad: str = "unroll",
                 distributed: bool = False) -> None:
        if divergence not in ("kl", "cross_entropy"):
            raise ValueError(f"divergence must be 'kl' or 'cross_entropy', got {divergence!r}")
        super().__init__(eps=eps, temperature=temperature, grad=grad, layout=layout,
                         n_views=n_views, metric=metric, reduction=reduction,
                         distributed=distributed, hyper={"divergence": divergence})


class GCAInfoNCE(_Loss):
    """GCA-INCE (``eps = 0.5``, ``n_iter = 10``). See [`otcl.gca_ince`][otcl.gca_ince]."""

    _fn = staticmethod(_alg.gca_ince)

    @checked_keywords
    def __init__(self, *, eps: float | torch.Tensor | None = None,
                 temperature: float | torch.Tensor | None = None, n_iter: int = 10,
                 divergence: str = "kl", layout: str | None = None, n_views: int = 2,
                 metric: str = "neg_cosine", reduction: str = "mean", grad: str = "unroll",
                 distributed: bool = False) -> None:
        from otcl.alignment.losses import as_count

        if divergence not in ("kl", "cross_entropy"):
            raise ValueError(f"divergence must be 'kl' or 'cross_entropy', got {divergence!r}")
        super().__init__(eps=eps, temperature=temperature, grad=grad, layout=layout,
                         n_views=n_views, metric=metric, reduction=reduction,
                         distributed=distributed,
                         hyper={"n_iter": as_count("n_iter", n_iter), "divergence": divergence})


class RINCE(_Loss):
    """RINCE (``eps = 0.5``, ``q = 0.6``, ``lam = 0.01``). See [`otcl.rince`][otcl.rince]."""

    _fn = staticmethod(_alg.rince)

    @checked_keywords
    def __init__(self, *, eps: float | torch.Tensor | None = None,
                 temperature: float | torch.Tensor | None = None, q: float = 0.6,
                 lam: float = 0.01, layout: str | None = None, n_views: int = 2,
                 metric: str = "neg_cosine", reduction: str = "mean", grad: str = "unroll",
                 distributed: bool = False) -> None:
        q, lam = _check_rince(q, lam)
        super().__init__(eps=eps, temperature=temperature, grad=grad, layout=layout,
                         n_views=n_views, metric=metric, reduction=reduction,
                         distributed=distributed, hyper={"q": q, "lam": lam})


class GCARINCE(_Loss):
    """GCA-RINCE (``eps = 0.5``, ``n_iter = 10``, ``q = 0.6``, ``lam = 0.01``).
    See [`otcl.gca_rince`][otcl.gca_rince]."""

    _fn = staticmethod(_alg.gca_rince)

    @checked_keywords
    def __init__(self, *, eps: float | torch.Tensor | None = None,
                 temperature: float | torch.Tensor | None = None, n_iter: int = 10,
                 q: float = 0.6, lam: float = 0.01, layout: str | None = None,
                 n_views: int = 2, metric: str = "neg_cosine", reduction: str = "mean",
                 grad: str = "unroll", distributed: bool = False) -> None:
        from otcl.alignment.losses import as_count

        q, lam = _check_rince(q, lam)
        super().__init__(eps=eps, temperature=temperature, grad=grad, layout=layout,
                         n_views=n_views, metric=metric, reduction=reduction,
                         distributed=distributed,
                         hyper={"n_iter": as_count("n_iter", n_iter), "q": q, "lam": lam})


class GCAUOT(_Loss):
    """GCA-UOT, the official loss and defaults (``eps = 0.5``, ``rho = 0.2``, ``n_iter = 10``,
    ``r1 = 1``, ``r2 = 0.2``, ``q = 0.6``, ``lam = 0.01``, metric ``"cosine"``: the paper's
    CIFAR-10 README run). ``details.row_mass`` flags noisy pairs. Other official configurations:
    ``GCAUOT(**otcl.official_config("gca_uot", name))``. See [`otcl.gca_uot`][otcl.gca_uot]."""

    _fn = staticmethod(_alg.gca_uot)

    @checked_keywords
    def __init__(self, *, eps: float | torch.Tensor | None = None,
                 temperature: float | torch.Tensor | None = None, rho: float = 0.2,
                 rho_a: float | None = None, rho_b: float | None = None, n_iter: int = 10,
                 r1: float = 1.0, r2: float = 0.2, q: float = 0.6, lam: float = 0.01,
                 kl: str = "row", layout: str | None = None, n_views: int = 2,
                 metric: str = "cosine", reduction: str = "mean", grad: str = "unroll",
                 distributed: bool = False) -> None:
        from otcl.alignment.losses import GCA_UOT_KL, as_count
        from otcl.solvers.problem import validate_positive

        q, lam = _check_rince(q, lam)
        rho = validate_positive("rho", rho, allow_inf=True)
        for name, value in (("rho_a", rho_a), ("rho_b", rho_b)):
            if value is not None:
                validate_positive(name, value, allow_inf=True)
        if kl not in GCA_UOT_KL:
            raise ValueError(f"kl must be one of {GCA_UOT_KL}, got {kl!r}")
        hyper = {"rho": rho, "rho_a": rho_a, "rho_b": rho_b,
                 "n_iter": as_count("n_iter", n_iter), "r1": _check_weight("r1", r1),
                 "r2": _check_weight("r2", r2), "q": q, "lam": lam, "kl": kl}
        super().__init__(eps=eps, temperature=temperature, grad=grad, layout=layout,
                         n_views=n_views, metric=metric, reduction=reduction,
                         distributed=distributed, hyper=hyper)


class IOT(_Loss):
    """IOT (``eps = 0.5``, ``n_iter = 10``: the official loop's 11 projections).
    See [`otcl.iot`][otcl.iot]."""

    _fn = staticmethod(_alg.iot)

    @checked_keywords
    def __init__(self, *, eps: float | torch.Tensor | None = None,
                 temperature: float | torch.Tensor | None = None, n_iter: int = 10,
                 layout: str | None = None, n_views: int = 2, metric: str = "neg_cosine",
                 reduction: str = "mean", grad: str = "unroll",
                 distributed: bool = False) -> None:
        from otcl.alignment.losses import as_count

        super().__init__(eps=eps, temperature=temperature, grad=grad, layout=layout,
                         n_views=n_views, metric=metric, reduction=reduction,
                         distributed=distributed, hyper={"n_iter": as_count("n_iter", n_iter)})


class IOTUni(_Loss):
    """IOT with the uniformity prior (``lam_p = 0.2``). See [`otcl.iot_uni`][otcl.iot_uni]."""

    _fn = staticmethod(_alg.iot_uni)

    @checked_keywords
    def __init__(self, *, eps: float | torch.Tensor | None = None,
                 temperature: float | torch.Tensor | None = None, n_iter: int = 10,
                 lam_p: float = 0.2, layout: str | None = None, n_views: int = 2,
                 metric: str = "neg_cosine", reduction: str = "mean", grad: str = "unroll",
                 distributed: bool = False) -> None:
        from otcl.alignment.losses import as_count
        from otcl.solvers.problem import validate_positive

        hyper = {"n_iter": as_count("n_iter", n_iter),
                 "lam_p": validate_positive("lam_p", lam_p)}
        super().__init__(eps=eps, temperature=temperature, grad=grad, layout=layout,
                         n_views=n_views, metric=metric, reduction=reduction,
                         distributed=distributed, hyper=hyper)


class AlignmentLoss(_Loss):
    """The generic GCA loss: choose the inner constraints (``rho_a``, ``rho_b``, ``n_iter``), the
    target (per call) and the outer divergence. See [`otcl.alignment_loss`][otcl.alignment_loss].

    ``divergence`` is ``"kl"``, ``"row_kl"``, ``"cross_entropy"``, ``"rince"`` or a mapping of
    them to weights; ``marginals`` ``"target"``, ``"uniform"`` or ``"probability"``.
    """

    _fn = staticmethod(_alignment)

    @checked_keywords
    def __init__(self, *, eps: float | torch.Tensor | None = None,
                 temperature: float | torch.Tensor | None = None, n_iter: int = 10,
                 rho_a: float = math.inf, rho_b: float = math.inf, divergence: Any = "kl",
                 marginals: str = "target", final_step: str = "row", q: float = 0.6,
                 lam: float = 0.01, layout: str | None = None, n_views: int = 2,
                 metric: str = "neg_cosine", reduction: str = "mean", grad: str = "unroll",
                 distributed: bool = False) -> None:
        from otcl.alignment.losses import MARGINALS, _divergence_terms, as_count
        from otcl.solvers.problem import validate_positive

        validate_positive("rho_a", rho_a, allow_inf=True)
        validate_positive("rho_b", rho_b, allow_inf=True)
        _divergence_terms(divergence, q, lam)  # validates names, weights, q and lam
        if marginals not in MARGINALS:
            raise ValueError(f"marginals must be one of {MARGINALS}, got {marginals!r}")
        if final_step not in ("row", "column"):
            raise ValueError(f"final_step must be 'row' or 'column', got {final_step!r}")
        hyper = {"n_iter": as_count("n_iter", n_iter), "rho_a": rho_a, "rho_b": rho_b,
                 "divergence": divergence, "marginals": marginals, "final_step": final_step,
                 "q": q, "lam": lam}
        super().__init__(eps=eps, temperature=temperature, grad=grad, layout=layout,
                         n_views=n_views, metric=metric, reduction=reduction,
                         distributed=distributed, hyper=hyper)


def _capacity(z1: Any, z2: Any, *, inner: Any, **kw: Any) -> Any:
    """[`otcl.gca_capacity`][otcl.gca_capacity] (differentiated by autograd through the
    projections)."""
    from otcl.alignment.family import gca_capacity

    return gca_capacity(z1, z2, **kw)


class GCACapacity(_Loss):
    """GCA-INCE with a capacity bound ``kappa`` on the plan mass of every negative pair
    (``eps = 0.5``, ``kappa = 0.1``, ``n_iter = 10`` Dykstra cycles). See
    [`otcl.gca_capacity`][otcl.gca_capacity]. Its gradient is autograd's through the projections."""

    _fn = staticmethod(_capacity)

    @checked_keywords
    def __init__(self, *, eps: float | torch.Tensor | None = None,
                 temperature: float | torch.Tensor | None = None, kappa: float = 0.1,
                 n_iter: int = 10, layout: str | None = None, n_views: int = 2,
                 metric: str = "neg_cosine", reduction: str = "mean",
                 distributed: bool = False) -> None:
        from otcl.alignment.losses import as_count
        from otcl.solvers.problem import validate_positive

        hyper = {"kappa": validate_positive("kappa", kappa, allow_inf=True),
                 "n_iter": as_count("n_iter", n_iter, minimum=1)}
        super().__init__(eps=eps, temperature=temperature, grad="unroll", layout=layout,
                         n_views=n_views, metric=metric, reduction=reduction,
                         distributed=distributed, hyper=hyper)


class BYOL(nn.Module):
    """BYOL's loss ([`otcl.byol`][otcl.byol]): ``(2 - 2 cos(p1, z2)) + (2 - 2 cos(p2, z1))`` per
    sample, the targets ``z`` detached (the target network receives no gradient).

    ``BYOL()(p1, z2)`` is one direction; ``BYOL()(p1, z2, p2, z1)`` the symmetrised loss.
    """

    @checked_keywords
    def __init__(self, *, reduction: str = "mean") -> None:
        super().__init__()
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
        self.reduction = reduction

    def forward(self, p1: torch.Tensor, z2: torch.Tensor, p2: torch.Tensor | None = None,
                z1: torch.Tensor | None = None) -> torch.Tensor:
        from otcl.alignment.family import byol

        return byol(p1, z2.detach(), p2, None if z1 is None else z1.detach(),
                    reduction=self.reduction)


class MemoryBank(nn.Module):
    """A first-in first-out queue of past embeddings, the extra negatives of a cross-view loss
    (MoCo's queue, lightly's ``memory_bank_size``).

    ``bank(z2)`` returns ``[z2; queue]`` (``(N + K, d)``) and then queues ``z2`` (detached,
    copied), dropping the oldest rows beyond ``size``. ``init="random"`` (default, as MoCo and
    lightly) fills the queue with ``size`` random unit vectors on the first call, so that ``K =
    size`` from the start; ``init="empty"`` starts with no rows (``K`` grows to ``size``).
    Use it with ``layout="queue"`` (the queue alone as negatives: MoCo, lightly's
    ``NTXentLoss(memory_bank_size=...)``) or ``layout="cross"`` (the batch's other keys too):
    ``loss(z1, bank(z2))``.
    """

    @checked_keywords
    def __init__(self, size: int, *, init: str = "random", seed: int | None = None) -> None:
        super().__init__()
        from otcl.alignment.losses import as_count

        self.size = as_count("size", size, minimum=1)
        if init not in ("random", "empty"):
            raise ValueError(f"init must be 'random' or 'empty', got {init!r}")
        self.init, self.seed = init, seed
        self.register_buffer("queue", None)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if not isinstance(z, torch.Tensor) or z.ndim != 2:
            raise ValueError(f"z must be a (N, d) tensor, got {getattr(z, 'shape', type(z))}")
        queue = self.queue
        if queue is None and self.init == "random":
            gen = torch.Generator(device=z.device)
            if self.seed is not None:
                gen.manual_seed(self.seed)
            else:
                gen.seed()
            rand = torch.randn(self.size, z.shape[1], generator=gen, dtype=z.dtype,
                               device=z.device)
            queue = rand / torch.linalg.vector_norm(rand, dim=1, keepdim=True)
        if queue is not None and (queue.shape[1] != z.shape[1] or queue.dtype != z.dtype
                                  or queue.device != z.device):
            raise ValueError(f"z has width {z.shape[1]}, dtype {z.dtype} and device {z.device}"
                             f"; the queue holds {tuple(queue.shape)} {queue.dtype} on "
                             f"{queue.device} (call reset() to start a new queue)")
        out = z if queue is None else torch.cat([z, queue])
        fresh = z.detach().clone()
        self.queue = (fresh if queue is None else torch.cat([fresh, queue]))[: self.size]
        return out

    def reset(self) -> None:
        """Empty the queue (refilled on the next call as ``init`` says)."""
        self.queue = None


def _check_rince(q: float, lam: float) -> tuple[float, float]:
    from otcl.alignment.divergences import validate_rince

    return validate_rince(q, lam)
