"""Cluster assignments by optimal transport: SwAV's (and SeLa's) Sinkhorn–Knopp codes.

SwAV (Caron et al. 2020) assigns ``B`` samples to ``K`` prototypes with the balanced plan between
uniform marginals, mass ``1/B`` per sample and ``1/K`` per prototype, for the kernel
``exp(scores / eps)`` (``scores`` the ``B x K`` similarities of samples and prototypes): the
entropic OT problem with cost ``C = -scores``. Its reference code runs a fixed 3 rounds of
Sinkhorn–Knopp in the kernel domain, prototype side first, and returns ``B P`` (rows sum to 1).

[`swav_codes`][otcl.swav_codes] computes the same plan with the solver behind
[`otcl.sinkhorn`][otcl.solvers.sinkhorn.sinkhorn] on the transposed problem (prototypes as rows, so
that each round normalises the prototypes first, then the samples), and forms the codes from the
potentials in one pass over the scores:

* with the default ``n_iter = 3`` it equals the reference to rounding;
* ``tol`` runs to a marginal error instead of a fixed count (``max_iter`` rounds at most);
* the log domain is chosen automatically when ``eps`` is small next to the score range, where
  the reference's ``exp(scores / eps)`` overflows or turns to NaN;
* ``rho`` relaxes the prototype marginal (KL penalty, ``inf`` = hard), for data whose clusters are
  not of equal size;
* ``return_details=True`` also returns the solver's [`Transport`][otcl.Transport]
  (iterations, marginal errors, ``converged``).
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

from otcl._api import checked_keywords
from otcl.backend import Array, check_compatible, device_of, host_thread_pool
from otcl.ops import ArrayOps, array_ops
from otcl.solvers.problem import make_problem, validate_positive
from otcl.solvers.sinkhorn import DOMAINS, solve

__all__ = ["swav_codes"]


@checked_keywords
def swav_codes(scores: Array, *, eps: float = 0.05, n_iter: int = 3, tol: float | None = None,
               max_iter: int = 1000, rho: float = math.inf, domain: str = "auto",
               return_details: bool = False) -> Any:
    """Soft assignments of ``B`` samples to ``K`` prototypes, shape ``(B, K)``, rows summing to 1.

    ``codes = B P`` with ``P`` the plan of ``min <P, -scores> + eps KL(P || 1)`` subject to
    ``P^T 1 = 1/K`` (prototypes; relaxed by ``rho``) and ``P 1 = 1/B`` (samples), after ``n_iter``
    rounds that each normalise the prototypes, then the samples (SwAV's order), or, with ``tol``,
    after as many rounds as the marginal error needs (at most ``max_iter``).

    Parameters
    ----------
    scores:
        ``(B, K)`` similarities of samples and prototypes (any supported array library).
    eps:
        Entropic strength (SwAV's ``epsilon``, default 0.05).
    n_iter:
        Rounds when ``tol`` is ``None`` (SwAV's ``sinkhorn_iterations``, default 3).
    tol, max_iter:
        Stop when the relative marginal error is ``<= tol`` (see
        [`otcl.sinkhorn`][otcl.solvers.sinkhorn.sinkhorn]).
    rho:
        KL penalty on the prototype marginal (``inf``: every prototype receives ``1/K``).
    domain:
        ``"auto"`` (kernel domain while ``exp`` of the scores' range fits the dtype, else log
        domain), ``"kernel"``, ``"stabilized"`` or ``"log"``.
    return_details:
        Also return the [`Transport`][otcl.Transport] of the transposed problem
        (prototypes as rows).
    """
    from otcl.alignment.losses import as_count

    xp = check_compatible(scores=scores)
    if scores.ndim != 2:
        raise ValueError(f"scores must have shape (B, K), got {tuple(scores.shape)}")
    B, K = scores.shape
    if B == 0 or K == 0:
        raise ValueError(f"scores must not be empty, got shape {tuple(scores.shape)}")
    eps = validate_positive("eps", eps)
    rho = validate_positive("rho", rho, allow_inf=True)
    if tol is None:
        rounds, tolerance = as_count("n_iter", n_iter, minimum=1), None
    else:
        rounds, tolerance = as_count("max_iter", max_iter, minimum=1), validate_positive("tol", tol)
    dev = device_of(scores)
    a = xp.full((K,), 1.0 / K, dtype=scores.dtype, device=dev)
    b = xp.full((B,), 1.0 / B, dtype=scores.dtype, device=dev)
    # one pool of worker threads on PyTorch CPU tensors (otcl.backend.host_thread_pool)
    with host_thread_pool(scores):
        ops = array_ops(xp, scores)
        cost = _negated_transpose(scores, xp, ops)
        # the cost is otcl's own array: the result keeps it without a second copy
        problem = make_problem(cost, a, b, eps=eps, rho_a=rho)
        problem = replace(problem, owned=problem.owned | {"cost"})
        if domain not in DOMAINS:
            raise ValueError(f"domain must be one of {DOMAINS}, got {domain!r}")
        # with a tolerance, check every round: the check reuses the round's product (O(B + K))
        res = solve(problem, max_iter=rounds, tol=tolerance, domain=domain, check_every=1,
                    warn=tolerance is not None)
        # codes = B P^T, i.e. B exp((f_k + g_b + scores_bk) / eps), formed in one blocked pass over
        # the scores in their own layout (no n x m transpose, no log-plan temporary)
        row = res.g / eps + math.log(B)
        col = res.f / eps
        codes = ops.exp_shifted(scores[None, ...], row[None, ...], col[None, ...],
                                divisor=-eps)[0, ...]
    return (codes, res) if return_details else codes


TILE = 512
"""Side of the square tiles in which `_negated_transpose` writes the transposed cost
(1 MiB in float32: source and destination tiles stay in cache; a row-by-row transposed write of
a 4096 x 3000 float32 matrix took 2-3x longer on the reference machine)."""


def _negated_transpose(scores: Array, xp: Any, ops: ArrayOps) -> Array:
    """``-scores^T`` as a row-major ``(K, B)`` array, so that the solver builds its kernel from
    contiguous rows: tile by tile into a pooled buffer when ``ops`` has buffers, else
    ``-scores^T`` as the library computes it."""
    B, K = scores.shape
    out = ops.buffer((K, B), scores)
    st = xp.matrix_transpose(scores)
    if out is None:
        return -st
    for i in range(0, K, TILE):
        for j in range(0, B, TILE):
            ops.scaled(st[i : i + TILE, j : j + TILE], 1.0, out=out[i : i + TILE, j : j + TILE])
    return out
