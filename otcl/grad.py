"""Loss values and gradients for frameworks without autograd (NumPy, CuPy, any array-API library).

[`value_and_grad`][otcl.value_and_grad] returns a GCA loss and its gradient with respect to the
embeddings, computed in backend-agnostic code: the outer divergence and the cost are differentiated
by hand, and the inner solve by the same adjoint as the PyTorch adapter
([`otcl.solvers.adjoint`][otcl.solvers.adjoint]), in ``"unroll"`` (exact derivative of the rounds)
or ``"implicit"`` (fixed-point) mode.

The chain, for ``Λ = -C / eps`` and the scaled potentials ``(phi, gamma)`` of the inner solve:

    loss = sum_i w_i l_i(phi, gamma, Λ)          (w_i = 1/n for "mean", 1 for "sum")
    Λ̄  = ∂loss/∂Λ (explicit) + adjoint(∂loss/∂phi, ∂loss/∂gamma)
    C̄  = -Λ̄ / eps,   then   z̄ from C = cost(z1, z2)  (cosine: through the row normalisation).
"""

from __future__ import annotations

import math
from typing import Any

from otcl.alignment.divergences import validate_rince
from otcl.alignment.losses import (
    GCA_UOT_KL,
    _embedding_batch,
    as_count,
    problem_marginals,
    resolve_temperature,
)
from otcl.alignment.targets import Target
from otcl.backend import Array, logsumexp, safe_log
from otcl.geometry import ViewBatch
from otcl.solvers.adjoint import fixed_round_potentials, implicit_cotangents, unrolled_cotangents
from otcl.solvers.problem import make_problem, validate_positive
from otcl.solvers.result import warn_nonfinite_gradient

__all__ = ["LOSSES", "value_and_grad"]

# name -> (default n_iter, divergence weights {kl, rince} (None: r1, r2), relaxed marginals?)
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
    eps: float | None = None,
    temperature: float | None = None,
    n_iter: int | None = None,
    rho: float = 0.2,
    r1: float = 1.0,
    r2: float = 0.2,
    q: float = 0.6,
    lam: float = 0.01,
    kl: str = "row",
    layout: str | None = None,
    n_views: int = 2,
    metric: str | None = None,
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
        hyper-parameters, call forms and defaults are those of the functions of the same name
        in [`otcl`][otcl] (``rho``, ``r1``, ``r2``, ``kl`` apply to ``gca_uot``; ``q``, ``lam`` to
        the RINCE terms; ``metric=None`` is the loss's default, ``"cosine"`` for ``gca_uot`` and
        ``"neg_cosine"`` otherwise; ``temperature`` is another name for ``eps``).
    z1, z2:
        Two views ``(N, d)`` each (the SimCLR problem, or the cross-view one with
        ``layout="cross"``), or ``z1 = z`` ``(V N, d)`` with ``layout`` (or with ``labels``).
    grad:
        ``"unroll"`` (exact derivative of ``n_iter`` rounds) or ``"implicit"`` (at the fixed
        point; use with enough rounds to converge). ``"implicit"`` raises ``ValueError`` for
        ``"gca_rince"`` (and a balanced ``"gca_uot"``), whose RINCE term reads the potentials'
        gauge, which the balanced fixed point leaves free.

    Returns
    -------
    value, grads
        The loss (0-d array, or ``(n,)`` for ``reduction="none"`` — then the gradient is that of
        the sum) and ``(grad_z1, grad_z2)`` for two arrays, or ``grad_z`` for one.

    Warns
    -----
    NonFiniteGradientWarning
        (a ``RuntimeWarning``) when the gradient has NaN or inf entries, typically because
        ``eps`` is too small for the dtype; the gradient is returned as computed.
    """
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {tuple(LOSSES)}, got {loss!r}")
    if grad not in ("unroll", "implicit"):
        raise ValueError(f"grad must be 'unroll' or 'implicit', got {grad!r}")
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    eps = resolve_temperature(eps, temperature)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)):
        raise TypeError(f"eps must be a Python number here, got {type(eps).__name__}")
    default_iter, weights, relaxed = LOSSES[loss]
    n_iter = as_count("n_iter", default_iter if n_iter is None else n_iter)
    if kl not in GCA_UOT_KL:
        raise ValueError(f"kl must be one of {GCA_UOT_KL}, got {kl!r}")
    w_kl, w_rince = (r1, r2) if weights is None else weights
    row_kl = relaxed and kl == "row"
    if w_rince:
        q, lam = validate_rince(q, lam)
    rho_v = validate_positive("rho", rho, allow_inf=True) if relaxed else math.inf
    if metric is None:
        metric = "cosine" if loss == "gca_uot" else "neg_cosine"

    batch, tgt = _embedding_batch(z1, z2, layout=layout, n_views=n_views, metric=metric,
                                  labels=labels, target=target)
    xp = batch.xp
    a, b = problem_marginals(batch, tgt, "probability" if relaxed else "target")
    problem = make_problem(batch.cost, a, b, eps=eps, rho_a=rho_v, rho_b=rho_v, mask=batch.mask)
    lk3 = problem.log_kernel()
    la3, lb3 = problem.log_marginals()
    t_a, t_b = problem.t_a, problem.t_b
    if n_iter == 0:
        grad = "unroll"  # no rounds, no fixed point: the row step's derivative is exact
    # unbalanced rounds start from v_0 = b, as the losses do
    init = lb3 if relaxed and n_iter > 0 else None
    phi3, gamma3, tape = fixed_round_potentials(lk3, la3, lb3, t_a, t_b, n_iter, init=init,
                                                record=grad == "unroll")
    phi, gamma, lk = phi3[0, ...], gamma3[0, ...], lk3[0, ...]
    n = phi.shape[0]

    hard_rows = t_a == 1.0
    # log (K v) per row: closed form after a hard row step, else one log-sum-exp
    if hard_rows:
        log_kv, row_mass, plan_rows = safe_log(a, xp) - phi, a, None
    else:
        log_kv = logsumexp(lk + gamma[None, :], 1, xp)
        row_mass = xp.exp(phi + log_kv)
        plan_rows = xp.exp(lk + gamma[None, :] - log_kv[:, None])  # row-stochastic K diag(v)
    per_row = xp.zeros_like(phi)
    w = xp.ones_like(phi) / (n if reduction == "mean" else 1)
    terms = _Terms(tgt, phi, gamma, lk, log_kv, row_mass, xp)
    if w_kl:
        per_row = per_row + w_kl * (terms.row_kl() if row_kl else terms.kl())
    if w_rince:
        per_row = per_row + w_rince * terms.rince(q, lam)
    value = per_row if reduction == "none" else xp.sum(per_row) / (n if reduction == "mean" else 1)

    phi_bar, gamma_bar, lk_bar = terms.backward(w, w_kl, row_kl, w_rince, q, lam, hard_rows,
                                                plan_rows)
    if grad == "unroll":
        cot = unrolled_cotangents(tape, phi_bar[None, :], gamma_bar[None, :])
    else:
        cot = implicit_cotangents(lk3, phi3, gamma3, la3, lb3, t_a, t_b, phi_bar[None, :],
                                  gamma_bar[None, :])
    lk_bar = lk_bar + cot.log_kernel[0, ...]
    if batch.mask is not None:
        lk_bar = xp.where(batch.mask, lk_bar, xp.zeros_like(lk_bar))
    cost_bar = -lk_bar / eps
    if z2 is not None and batch.layout not in ("cross", "queue"):
        # the SimCLR problem is built on [z1; z2]: its gradient splits back into the two views
        g1, g2 = _cost_backward(batch, xp.concat([z1, z2], axis=0), None, cost_bar, metric, xp)
        g = g1 + g2
        _check_finite_gradient(loss, (g,), eps, xp)
        return value, (g[: z1.shape[0], ...], g[z1.shape[0]:, ...])
    g1, g2 = _cost_backward(batch, z1, z2, cost_bar, metric, xp)
    _check_finite_gradient(loss, (g1, g2), eps, xp)
    if z2 is None:
        return value, g1 + g2
    return value, (g1, g2)


def _check_finite_gradient(loss: str, grads: tuple[Array, ...], eps: float, xp: Any) -> None:
    """Warn when a gradient has a NaN or inf entry: one reduction per array and one host
    synchronisation per call, after every loop (the sum of the entries is non-finite when one
    is, and also when finite entries are so large that their sum overflows)."""
    total = sum(xp.sum(g) for g in grads)
    if not bool(xp.isfinite(total)):
        warn_nonfinite_gradient(f"value_and_grad({loss!r})", grads[0].dtype, eps)


class _Terms:
    """The per-row outer terms in potential form and their hand-written backward.

    ``log_kv = log (K v)`` per row (``K v`` with ``v = exp(gamma)``); ``T`` the target."""

    def __init__(self, tgt: Target, phi: Array, gamma: Array, lk: Array, log_kv: Array,
                 row_mass: Array, xp: Any) -> None:
        self.tgt, self.phi, self.gamma, self.lk = tgt, phi, gamma, lk
        self.log_kv, self.row_mass, self.xp = log_kv, row_mass, xp
        self.T = tgt.to_dense(lk)
        self.s = tgt.row_sums(lk)

    def kl(self) -> Array:
        """``sum_j T log(T / P) - T + P``: ``H - s phi - T gamma - sum T Λ - s + P 1``."""
        t, phi = self.tgt, self.phi
        return (t.row_entropy(phi) - self.s * phi - t.apply(self.gamma)
                - t.contract_rows(self.lk) - self.s + self.row_mass)

    def row_kl(self) -> Array:
        """``KL(T_i / s_i || P_i / |P_i|)``: ``(H - T gamma - sum T Λ) / s - log s + log_kv``."""
        t, xp = self.tgt, self.xp
        inner = t.row_entropy(self.phi) - t.apply(self.gamma) - t.contract_rows(self.lk)
        return inner / self.s - safe_log(self.s, xp) + self.log_kv

    def rince(self, q: float, lam: float) -> Array:
        """``(exp(q (log lam + log_kv)) - exp(q log sum_j T K v)) / q``."""
        xp = self.xp
        log_pos = self.tgt.log_weighted_mass(self.lk, self.gamma)
        return (xp.exp(q * (math.log(lam) + self.log_kv)) - xp.exp(q * log_pos)) / q

    def backward(self, w: Array, w_kl: float, row_kl: bool, w_rince: float, q: float,
                 lam: float, hard_rows: bool,
                 plan_rows: Array | None) -> tuple[Array, Array, Array]:
        """Cotangents of ``sum_i w_i l_i`` for ``phi``, ``gamma`` and (explicitly) ``Λ``."""
        xp, T, lk, gamma = self.xp, self.T, self.lk, self.gamma
        phi_bar = xp.zeros_like(self.phi)
        gamma_bar = xp.zeros_like(gamma)
        lk_bar = xp.zeros_like(lk)
        mass_bar = xp.zeros_like(self.phi)
        kv_bar = xp.zeros_like(self.phi)  # cotangent of log_kv
        if w_kl and row_kl:
            wk = w_kl * w
            gamma_bar = gamma_bar - (wk / self.s) @ T
            lk_bar = lk_bar - (wk / self.s)[:, None] * T
            kv_bar = kv_bar + wk
        elif w_kl:
            wk = w_kl * w
            phi_bar = phi_bar - wk * self.s
            gamma_bar = gamma_bar - wk @ T
            lk_bar = lk_bar - wk[:, None] * T
            mass_bar = mass_bar + wk
        if w_rince:
            wr = w_rince * w
            log_pos = self.tgt.log_weighted_mass(lk, gamma)
            kv_bar = kv_bar + wr * xp.exp(q * (math.log(lam) + self.log_kv))
            lp_bar = -wr * xp.exp(q * log_pos)
            pos = T > 0
            soft = xp.where(pos, T * xp.exp(xp.where(pos, lk + gamma[None, :] - log_pos[:, None],
                                                     xp.zeros_like(lk))), xp.zeros_like(lk))
            lk_bar = lk_bar + lp_bar[:, None] * soft
            gamma_bar = gamma_bar + lp_bar @ soft
        if hard_rows:
            # log_kv = log a - phi; the row mass is a (constant)
            phi_bar = phi_bar - kv_bar
        else:
            # log_kv = LSE_j(Λ_ij + gamma_j); m_i = exp(phi_i + log_kv_i)
            mb = mass_bar * self.row_mass
            phi_bar = phi_bar + mb
            kv_total = kv_bar + mb
            lk_bar = lk_bar + kv_total[:, None] * plan_rows
            gamma_bar = gamma_bar + kv_total @ plan_rows
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
