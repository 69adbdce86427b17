"""Peak memory of a loss's backward pass: otcl's gradient modes against OTT-JAX's.

The problem (the same for every row): the cross-view GCA-INCE loss of random float32
embeddings ``z1, z2`` of shape ``(B, d)`` at ``eps``,

    L = mean_i [LSE_j((f_i + g_j + s_ij) / eps) - (f_i + g_i + s_ii) / eps],
    s = cos(z1, z2),

the cross-entropy of the row-normalised plan ``P_ij = exp((f_i + g_j + s_ij) / eps)`` of the
entropic transport with cost ``-s`` and uniform marginals against the positive pairs (the plan's
scale cancels, so otcl's unit marginals and OTT's ``1/B`` give the same number). Its gradient
with respect to ``(z1, z2)`` is taken

* by otcl's PyTorch module ``otcl.torch.GCAInfoNCE(layout="cross", grad=mode)`` with ``n_iter``
  rounds: ``grad="implicit"`` differentiates the fixed point, ``grad="unroll"`` the rounds;
* by OTT-JAX (``ott.solvers.linear.sinkhorn.Sinkhorn(lse_mode=True)``, jitted):
  ``implicit_diff=ImplicitDiff()`` solving to ``threshold`` (implicit differentiation needs the
  fixed point), or ``implicit_diff=None`` with exactly ``n_iter`` rounds (unrolled).

Each row splits one call into its forward (the loss, keeping what its backward needs) and its
backward, and reads the Linux high-water mark ``VmHWM`` (reset before each phase):

* ``backward_peak_mib`` (the primary metric): the peak during the backward above the memory
  held before the call, i.e. what the forward keeps for the backward plus what the backward
  allocates on top of it: the memory a gradient needs. (How a library splits that between the
  two phases varies from run to run: OTT's forward was measured keeping 52 and 68 MiB at
  B = 2048, its backward adding 80 and 64 MiB on top, the same 132 MiB at the peak.)
* ``backward_added_mib``: the part the backward adds above what the forward keeps;
* ``forward_mib`` / ``kept_mib``: the forward's peak and what it keeps for the backward;
* ``total_mib``: the peak of the whole call above the memory held before it.

Like for like: both sides run under ``MALLOC_MMAP_THRESHOLD_`` fixed at glibc's initial 128 KiB
(set by the suite), so freed blocks return to the system and the resident set follows live
memory. otcl is measured on its first call at this size (after a 16-row warm-up: imports and lazily
built state), so the buffers its pool keeps between calls are counted. OTT-JAX is measured on
its second call, since the first one compiles (compilation memory is not the algorithm's); what
the first call leaves behind can only lower OTT's figures. Each row checks its loss and gradient
against an independent computation before it is accepted: otcl's against the plain-autograd
reference ``benchmarks.baselines.gca_kernel_autograd``, OTT's against otcl's NumPy
``value_and_grad``.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from typing import Any

import numpy as np

from benchmarks.common import Skip, require_backend, reset_peak_rss, status_kib

__all__ = ["gradient_memory"]

_WARMUP_ROWS = 16


def _embeddings(batch: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((batch, d)).astype(np.float32),
            rng.standard_normal((batch, d)).astype(np.float32))


def _phases(forward: Callable[[], Any], backward: Callable[[Any], Any]) -> dict[str, Any]:
    """Run ``grads = backward(forward())`` once and measure its two phases (MiB)."""
    gc.collect()
    if not reset_peak_rss() or status_kib("VmHWM") is None:
        raise Skip("not available: needs Linux /proc/self/clear_refs to reset the peak RSS")
    start = status_kib("VmRSS") or 0
    state = forward()
    forward_peak = status_kib("VmHWM") or 0
    reset_peak_rss()
    held = status_kib("VmRSS") or 0
    grads = backward(state)
    backward_peak = status_kib("VmHWM") or 0
    mib = 1024.0
    return {
        "grads": grads,
        "state": state,
        "forward_mib": (forward_peak - start) / mib,
        "kept_mib": (held - start) / mib,
        "backward_peak_mib": (backward_peak - start) / mib,
        "backward_added_mib": (backward_peak - held) / mib,
        "total_mib": (max(forward_peak, backward_peak) - start) / mib,
    }


def _relative_gap(x: np.ndarray, ref: np.ndarray) -> float:
    return float(np.max(np.abs(x - ref)) / max(float(np.max(np.abs(ref))), 1e-30))


def _otcl(params: dict[str, Any], z1: np.ndarray, z2: np.ndarray) -> dict[str, Any]:
    require_backend("torch")
    import torch

    import otcl.torch as ot
    from benchmarks import baselines as ref

    eps, n_iter = float(params["eps"]), int(params["n_iter"])
    loss = ot.GCAInfoNCE(eps=eps, n_iter=n_iter, layout="cross", grad=params["mode"])

    def leaves(*arrays: np.ndarray) -> list[Any]:
        return [torch.from_numpy(a.copy()).requires_grad_() for a in arrays]

    small = leaves(z1[:_WARMUP_ROWS], z2[:_WARMUP_ROWS])
    loss(*small).backward()
    inputs = leaves(z1, z2)

    def backward(value: Any) -> list[np.ndarray]:
        value.backward()
        return [z.grad.numpy().copy() for z in inputs]

    out = _phases(lambda: loss(*inputs), backward)
    value = float(out.pop("state").detach())
    # the independent reference: plain autograd through the same rounds (kernel domain, float64)
    check = leaves(z1.astype(np.float64), z2.astype(np.float64))
    ref_value = ref.gca_kernel_autograd(ref.similarity(*check), eps, n_iter)
    ref_value.backward()
    out["ref_value"] = float(ref_value.detach())
    out["ref_grads"] = [z.grad.numpy() for z in check]
    out["value"] = value
    out["reference"] = "benchmarks.baselines.gca_kernel_autograd (float64)"
    return out


def _ott_loss(eps: float, mode: str, n_iter: int, threshold: float) -> Callable[..., Any]:
    try:
        import jax
        import jax.numpy as jnp
        from ott.geometry import geometry
        from ott.problems.linear import linear_problem
        from ott.solvers.linear import implicit_differentiation, sinkhorn
    except ImportError as err:
        raise Skip("not available: ott-jax is not installed") from err

    if mode == "implicit":
        solver = sinkhorn.Sinkhorn(lse_mode=True, threshold=threshold, max_iterations=10_000,
                                   implicit_diff=implicit_differentiation.ImplicitDiff())
    else:
        solver = sinkhorn.Sinkhorn(lse_mode=True, min_iterations=n_iter,
                                   max_iterations=n_iter, implicit_diff=None)

    def loss(z1: Any, z2: Any) -> Any:
        x = z1 / jnp.linalg.norm(z1, axis=1, keepdims=True)
        y = z2 / jnp.linalg.norm(z2, axis=1, keepdims=True)
        s = x @ y.T
        a = jnp.full(z1.shape[0], 1.0 / z1.shape[0], dtype=z1.dtype)
        geom = geometry.Geometry(cost_matrix=-s, epsilon=eps)
        out = solver(linear_problem.LinearProblem(geom, a, a))
        log_plan = (out.f[:, None] + out.g[None, :] + s) / eps
        return jnp.mean(jax.scipy.special.logsumexp(log_plan, axis=1) - jnp.diag(log_plan))

    return loss


def _ott(params: dict[str, Any], z1: np.ndarray, z2: np.ndarray) -> dict[str, Any]:
    eps, n_iter, mode = float(params["eps"]), int(params["n_iter"]), params["mode"]
    loss = _ott_loss(eps, mode, n_iter, float(params["threshold"]))
    import jax
    import jax.numpy as jnp

    forward = jax.jit(lambda a, b: jax.vjp(loss, a, b))
    backward = jax.jit(lambda pullback, cot: pullback(cot))
    inputs = [jax.device_put(z1), jax.device_put(z2)]
    one = jnp.ones((), dtype=jnp.float32)

    def run_forward() -> Any:
        return jax.block_until_ready(forward(*inputs))

    def run_backward(state: Any) -> list[np.ndarray]:
        return [np.asarray(g) for g in jax.block_until_ready(backward(state[1], one))]

    run_backward(run_forward())  # compiles both phases at this size
    out = _phases(run_forward, run_backward)
    out["value"] = float(out.pop("state")[0])
    import otcl

    ref_value, ref_grads = otcl.value_and_grad(
        "gca_ince", z1.astype(np.float64), z2.astype(np.float64), eps=eps, n_iter=n_iter,
        layout="cross", grad=mode)
    out["ref_value"] = float(ref_value)
    out["ref_grads"] = [np.asarray(g) for g in ref_grads]
    out["reference"] = f"otcl.value_and_grad(grad={mode!r}, float64)"
    out["jax"] = jax.__version__
    return out


def gradient_memory(params: dict[str, Any]) -> dict[str, Any]:
    """Peak memory of the backward of the GCA-INCE loss (module docstring), one row."""
    z1, z2 = _embeddings(int(params["batch"]), int(params["d"]), int(params.get("seed", 0)))
    out = (_otcl if params["impl"] == "otcl" else _ott)(params, z1, z2)
    value_gap = abs(out["value"] - out["ref_value"]) / abs(out["ref_value"])
    grad_gap = max(_relative_gap(g, r) for g, r in zip(out["grads"], out["ref_grads"],
                                                        strict=True))
    if not (value_gap <= 1e-4 and grad_gap <= float(params.get("grad_tol", 1e-3))):
        raise RuntimeError(f"loss or gradient differs from {out['reference']}: value by "
                           f"{value_gap:.3g}, gradient by {grad_gap:.3g} (relative)")
    batch = int(params["batch"])
    info = {
        "value": out["value"],
        "value_gap": value_gap,
        "grad_gap": grad_gap,
        "checked_against": out["reference"],
        "n_by_n_float32_mib": 4 * batch * batch / 2**20,
        "method": "VmHWM reset before each phase",
    }
    if "jax" in out:
        info["jax"] = out["jax"]
    metrics = {k: out[k] for k in ("backward_peak_mib", "backward_added_mib", "forward_mib",
                                   "kept_mib", "total_mib")}
    return {"metrics": metrics, "info": info}
