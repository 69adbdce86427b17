"""Loss values and gradients for frameworks without autograd (NumPy, CuPy, any array-API library).

:func:`value_and_grad` returns a GCA loss and its gradient with respect to the embeddings,
computed in backend-agnostic code: the outer divergence and the cost are differentiated by hand,
and the inner solve by the same adjoint as the PyTorch adapter (:mod:`otcl.solvers.adjoint`), in
``"unroll"`` (exact derivative of the rounds) or ``"implicit"`` (fixed-point) mode.

The chain, for ``Λ = -C / eps`` and the scaled potentials ``(phi, gamma)`` of the inner solve:

    loss = sum_i w_i l_i(phi, gamma, Λ)          (w_i = 1/n for "mean", 1 for "sum")
    Λ̄  = ∂loss/∂Λ (explicit) + adjoint(∂loss/∂phi, ∂loss/∂gamma)
    C̄  = -Λ̄ / eps,   then   z̄ from C = cost(z1, z2)  (cosine: through the row normalisation).
"""

from __future__ import annotations

import math
from typing import Any

from otcl.alignment.divergences import kl_rows, rince_rows, validate_rince
from otcl.alignment.targets import Target, as_target, label_target, pair_target
from otcl.backend import Array, logsumexp, safe_log
from otcl.geometry import ViewBatch, view_batch
from otcl.solvers.adjoint import fixed_round_potentials, implicit_cotangents, unrolled_cotangents
from otcl.solvers.problem import make_problem, validate_positive

__all__ = ["LOSSES", "value_and_grad"]

# name -> (default n_iter, divergence weights {kl, rince}, relaxed marginals?)
LOSSES = {
    "info_nce": (0, (1.0, 0.0), False),
    "gca_ince": (10, (1.0, 0.0), False),
    "rince": (0, (0.0, 1.0), False),
    "gca_rince": (10, (0.0, 1.0), False),
    "gca_uot": (10, None, True),
}


def value_and_grad(
    loss: str,
    z1: Array,
    z2: Array | None = None,
    *,
    eps: float = 0.5,
    n_iter: int | None = None,
    rho: float = 0.2,
    r1: float = 1.0,
    r2: float = 0.02,
    q: float = 0.6,
    lam: float = 0.01,
    layout: str | None = None,
    n_views: int = 2,
    metric: str = "neg_cosine",
    labels: Array | None = None,
    target: Any = None,
    reduction: str = "mean",
    grad: str = "unroll",
) -> tuple[Array, Array | tuple[Array, Array]]:
    """A GCA loss and its gradient with respect to the embeddings.

    Parameters
    ----------
    loss:
        ``"info_nce"``, ``"gca_ince"``, ``"rince"``, ``"gca_rince"`` or ``"gca_uot"``; the
        hyper-parameters and defaults are those of the functions of the same name in :mod:`otcl`
        (``rho``, ``r1``, ``r2`` apply to ``gca_uot``; ``q``, ``lam`` to the RINCE terms).
    z1, z2:
        Cross-view embeddings ``(N, d)`` each, or ``z1 = z`` ``(V N, d)`` with ``layout``.
    grad:
        ``"unroll"`` (exact derivative of ``n_iter`` rounds) or ``"implicit"`` (at the fixed
        point; use with enough rounds to converge).

    Returns
    -------
    value, grads
        The loss (0-d array, or ``(n,)`` for ``reduction="none"`` — then the gradient is that of
        the sum) and ``(grad_z1, grad_z2)`` for two arrays, or ``grad_z`` for one.
    """
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {tuple(LOSSES)}, got {loss!r}")
    if grad not in ("unroll", "implicit"):
        raise ValueError(f"grad must be 'unroll' or 'implicit', got {grad!r}")
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)):
        raise TypeError(f"eps must be a Python number here, got {type(eps).__name__}")
    default_iter, weights, relaxed = LOSSES[loss]
    n_iter = default_iter if n_iter is None else n_iter
    if isinstance(n_iter, bool) or not isinstance(n_iter, int) or n_iter < 0:
        raise ValueError(f"n_iter must be a non-negative integer, got {n_iter!r}")
    w_kl, w_rince = (r1, r2) if weights is None else weights
    if w_rince:
        q, lam = validate_rince(q, lam)
    rho_v = validate_positive("rho", rho, allow_inf=True) if relaxed else math.inf

    batch = view_batch(z1, z2, layout=layout, n_views=n_views, metric=metric)
    xp = batch.xp
    if labels is not None and target is not None:
        raise ValueError("give either labels or target, not both")
    tgt = (label_target(batch, labels) if labels is not None
           else as_target(target, batch) if target is not None else pair_target(batch))
    a, b = tgt.row_sums(batch.cost), tgt.col_sums(batch.cost)
    problem = make_problem(batch.cost, a, b, eps=eps, rho_a=rho_v, rho_b=rho_v, mask=batch.mask)
    lk3 = problem.log_kernel()
    la3, lb3 = problem.log_marginals()
    t_a, t_b = problem.t_a, problem.t_b
    if n_iter == 0:
        grad = "unroll"  # no rounds, no fixed point: the row step's derivative is exact
    phi3, gamma3, tape = fixed_round_potentials(lk3, la3, lb3, t_a, t_b, n_iter,
                                                record=grad == "unroll")
    phi, gamma, lk = phi3[0, ...], gamma3[0, ...], lk3[0, ...]
    n = phi.shape[0]

    balanced_rows = t_a == 1.0
    if balanced_rows:
        row_mass, plan_rows = a, None
    else:
        lse = logsumexp(lk + gamma[None, :], 1, xp)
        row_mass = xp.exp(phi + lse)
        plan_rows = xp.exp(lk + gamma[None, :] - lse[:, None])  # row-stochastic K diag(v)
    per_row = xp.zeros_like(phi)
    if w_kl:
        per_row = per_row + w_kl * kl_rows(tgt, phi, gamma, lk, row_mass, xp)
    if w_rince:
        per_row = per_row + w_rince * rince_rows(tgt, phi, gamma, lk, q=q, lam=lam, xp=xp)
    value = per_row if reduction == "none" else xp.sum(per_row) / (n if reduction == "mean" else 1)
    w = xp.ones_like(phi) / (n if reduction == "mean" else 1)

    phi_bar, gamma_bar, lk_bar = _divergence_backward(
        tgt, phi, gamma, lk, row_mass, plan_rows, w, w_kl, w_rince, q, lam, xp)
    if grad == "unroll":
        cot = unrolled_cotangents(tape, phi_bar[None, :], gamma_bar[None, :])
    else:
        cot = implicit_cotangents(lk3, phi3, gamma3, la3, lb3, t_a, t_b, phi_bar[None, :],
                                  gamma_bar[None, :])
    lk_bar = lk_bar + cot.log_kernel[0, ...]
    if batch.mask is not None:
        lk_bar = xp.where(batch.mask, lk_bar, xp.zeros_like(lk_bar))
    cost_bar = -lk_bar / eps
    g1, g2 = _cost_backward(batch, z1, z2, cost_bar, metric, xp)
    if z2 is None:
        return value, g1 + g2
    return value, (g1, g2)


def _divergence_backward(tgt: Target, phi: Array, gamma: Array, lk: Array, row_mass: Array,
                         plan_rows: Array | None, w: Array, w_kl: float, w_rince: float,
                         q: float, lam: float, xp: Any) -> tuple[Array, Array, Array]:
    """Cotangents of ``sum_i w_i l_i`` for ``phi``, ``gamma`` and (explicitly) ``Λ``."""
    T = tgt.to_dense(lk)
    phi_bar = xp.zeros_like(phi)
    gamma_bar = xp.zeros_like(gamma)
    lk_bar = xp.zeros_like(lk)
    mass_bar = xp.zeros_like(phi)
    if w_kl:
        # l_i = H_i - t_i phi_i - (T gamma)_i - sum_j T_ij Λ_ij - t_i + m_i
        wk = w_kl * w
        phi_bar = phi_bar - wk * tgt.row_sums(lk)
        gamma_bar = gamma_bar - wk @ T
        lk_bar = lk_bar - wk[:, None] * T
        mass_bar = mass_bar + wk
    if w_rince:
        # l_i = (exp(q ln_i) - exp(q lp_i)) / q,  ln_i = log lam + log t_i - phi_i,
        # lp_i = log sum_j T_ij exp(Λ_ij + gamma_j)
        wr = w_rince * w
        log_neg = math.log(lam) + safe_log(tgt.row_sums(lk), xp) - phi
        log_pos = tgt.log_weighted_mass(lk, gamma)
        phi_bar = phi_bar - wr * xp.exp(q * log_neg)
        lp_bar = -wr * xp.exp(q * log_pos)
        pos = T > 0
        soft = xp.where(pos, T * xp.exp(xp.where(pos, lk + gamma[None, :] - log_pos[:, None],
                                                 xp.zeros_like(lk))), xp.zeros_like(lk))
        lk_bar = lk_bar + lp_bar[:, None] * soft
        gamma_bar = gamma_bar + lp_bar @ soft
    if plan_rows is not None:
        # m_i = exp(phi_i + LSE_j(Λ_ij + gamma_j))
        mb = mass_bar * row_mass
        phi_bar = phi_bar + mb
        lk_bar = lk_bar + mb[:, None] * plan_rows
        gamma_bar = gamma_bar + mb @ plan_rows
    return phi_bar, gamma_bar, lk_bar


def _cost_backward(batch: ViewBatch, z1: Array, z2: Array | None, cost_bar: Array, metric: str,
                   xp: Any) -> tuple[Array, Array]:
    """``(x̄, ȳ)`` for ``C = cost(x, y)`` given ``C̄``; ``y = x`` for an all-views batch."""
    x = z1
    y = z1 if z2 is None else z2
    if metric in ("neg_cosine", "cosine"):
        nx = xp.sqrt(xp.sum(x * x, axis=1, keepdims=True))
        ny = xp.sqrt(xp.sum(y * y, axis=1, keepdims=True))
        xh, yh = x / nx, y / ny
        xh_bar = -(cost_bar @ yh)
        yh_bar = -(xp.matrix_transpose(cost_bar) @ xh)
        gx = (xh_bar - xh * xp.sum(xh * xh_bar, axis=1, keepdims=True)) / nx
        gy = (yh_bar - yh * xp.sum(yh * yh_bar, axis=1, keepdims=True)) / ny
        return gx, gy
    if metric == "dot":
        return -(cost_bar @ y), -(xp.matrix_transpose(cost_bar) @ x)
    # sqeuclidean: C = |x|^2 + |y|^2 - 2 x y^T
    gx = 2 * (xp.sum(cost_bar, axis=1)[:, None] * x - cost_bar @ y)
    gy = 2 * (xp.sum(cost_bar, axis=0)[:, None] * y - xp.matrix_transpose(cost_bar) @ x)
    return gx, gy
