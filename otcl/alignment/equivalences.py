"""The paper's equivalences, checkable numerically on any backend.

Each check computes the two sides by independent routes (a direct formula on one side, the OT
construction on the other) and reports the gap:

* ``infonce_is_row_projection``: InfoNCE by log-sum-exp equals ``(1/N) KL(I || Proj_rows(K))``
  with the plan formed explicitly by [`otcl.row_projection`][otcl.row_projection];
* ``pythagorean_identity``: ``KL(T || P^(k)) = KL(T || P^(k+1)) + KL(P^(k+1) || P^(k))`` for every
  half-step ``k`` (matched marginals), the largest violation;
* ``kl_monotone``: the largest increase of ``KL(T || P^(k))`` over half-steps (should be <= 0);
* ``gca_ince_below_ince``: ``GCA-INCE - INCE`` (should be <= 0);
* ``gca_rince_one_step_is_rince``: GCA-RINCE after one row step vs RINCE from ``exp(s_ij)``;
* ``rince_q_to_zero_is_infonce``: RINCE with ``lam = 1``, ``q -> 0`` approaches InfoNCE;
* ``uot_row_mass_identity``: ``P 1 = a^t (K v)^(1 - t)`` for the converged unbalanced plan;
* ``sinkhorn_marginals``: the converged balanced plan's marginal error;
* ``simclr_two_view_is_nt_xent``: the two-view call ``info_nce(z1, z2)`` equals NT-Xent on all
  ``2N`` views written by log-sum-exp;
* ``byol_is_l2_regression``: BYOL's ``2 - 2 cos(p, z')`` equals the squared distance of the unit
  vectors (the family's member with ``d_Γ`` = L2 and no constraint);
* ``swav_codes_are_sinkhorn_knopp``: [`otcl.swav_codes`][otcl.swav_codes] equals SwAV's three
  prototype-first normalisation rounds written out (the largest entry difference);
* ``capacity_bound_holds``: the plan of [`otcl.gca_capacity`][otcl.gca_capacity] keeps every
  negative pair at most ``kappa`` (largest excess over the bound).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from otcl.alignment.losses import gca_ince, gca_rince, info_nce
from otcl.backend import Array, check_compatible, from_numpy, logsumexp, to_float
from otcl.geometry import cost_matrix
from otcl.solvers.sinkhorn import log_col_update, log_row_update, row_projection, sinkhorn

__all__ = ["EquivalenceRecord", "check_equivalences", "half_step_plans", "kl_curve", "run_all"]


@dataclass(frozen=True)
class EquivalenceRecord:
    """One numerical check: ``gap = lhs - rhs``; ``holds`` when ``|gap| <= tol`` (or, for
    one-sided checks, ``gap <= tol``)."""

    name: str
    lhs: float
    rhs: float
    gap: float
    tol: float
    holds: bool
    one_sided: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _record(name: str, lhs: float, rhs: float, tol: float, one_sided: bool = False
            ) -> EquivalenceRecord:
    gap = lhs - rhs
    ok = (gap <= tol) if one_sided else (abs(gap) <= tol)
    return EquivalenceRecord(name, lhs, rhs, gap, tol, bool(ok and math.isfinite(gap)), one_sided)


def _kl(T: Array, P: Array, xp: Any) -> Array:
    """Generalised ``KL(T || P) = sum T log(T/P) - T + P`` (``0 log 0 = 0``)."""
    pos = T > 0
    one = xp.ones_like(T)
    log_ratio = xp.log(xp.where(pos, T, one)) - xp.log(xp.where(pos, P, one))
    return xp.sum(xp.where(pos, T * log_ratio, xp.zeros_like(T)) - T + P)


def half_step_plans(cost: Array, eps: float, n_half_steps: int, a: Array | None = None,
                    b: Array | None = None) -> list[Array]:
    """The Sinkhorn iterates ``P^(1), ..., P^(K)`` (odd = after a row step, even = after a
    column step; ``P^(0) = K``), each ``(n, m)``, for marginals ``a``, ``b`` (default all-ones)."""
    xp = check_compatible(cost=cost)
    n, m = cost.shape
    a = xp.ones((n,), dtype=cost.dtype) if a is None else a
    b = xp.ones((m,), dtype=cost.dtype) if b is None else b
    log_k = (-cost / eps)[None, ...]
    log_a, log_b = xp.log(a)[None, :], xp.log(b)[None, :]
    phi = xp.zeros((1, n), dtype=cost.dtype)
    gamma = xp.zeros((1, m), dtype=cost.dtype)
    plans = []
    for k in range(1, n_half_steps + 1):
        if k % 2:
            phi = log_row_update(log_k, log_a, gamma, 1.0, xp)
        else:
            gamma = log_col_update(log_k, log_b, phi, 1.0, xp)
        plans.append(xp.exp(phi[0, :, None] + gamma[0, None, :] + log_k[0, ...]))
    return plans


def kl_curve(z1: Array, z2: Array, *, eps: float = 0.5, n_half_steps: int = 20,
             metric: str = "neg_cosine") -> np.ndarray:
    """``KL(I || P^(k)) / N`` for ``k = 1 .. n_half_steps`` on a cross-view batch (NumPy array).

    ``k = 1`` is InfoNCE; with matched marginals (all-ones) the curve never increases.
    """
    xp = check_compatible(z1=z1, z2=z2)
    C = cost_matrix(z1, z2, metric)
    n = C.shape[0]
    T = xp.eye(n, dtype=C.dtype)
    return np.array([to_float(_kl(T, P, xp)) / n for P in half_step_plans(C, eps, n_half_steps)])


def check_equivalences(z1: Array, z2: Array, *, eps: float = 0.5, n_half_steps: int = 20,
                       q: float = 0.6, lam: float = 0.01, rho: float = 0.2,
                       tol: float | None = None) -> list[EquivalenceRecord]:
    """Run every check on one cross-view batch ``z1, z2`` of shape ``(N, d)`` (the paper's
    ``N x N`` form: the losses are called with ``layout="cross"``).

    ``tol`` defaults to ``1e-10`` for float64 and ``1e-4`` for float32 inputs (relative to the
    values' magnitude, which is ``O(log N)``).
    """
    xp = check_compatible(z1=z1, z2=z2)
    if tol is None:
        tol = 1e-10 if z1.dtype == xp.float64 else 1e-4
    C = cost_matrix(z1, z2, "neg_cosine")
    n = C.shape[0]
    s = -C / eps
    T = xp.eye(n, dtype=C.dtype)
    records = []

    # InfoNCE: direct log-sum-exp vs KL(I || explicit row projection) / N
    diag = xp.sum(s * T, axis=1)
    direct = to_float(xp.mean(logsumexp(s, 1, xp) - diag))
    plan1 = row_projection(C, xp.ones((n,), dtype=C.dtype), eps=eps).plan
    records.append(_record("infonce_is_row_projection", direct, to_float(_kl(T, plan1, xp)) / n,
                           tol))

    # half-step KL: Pythagorean identity and monotone decrease
    plans = half_step_plans(C, eps, n_half_steps)
    kls = [to_float(_kl(T, P, xp)) for P in plans]
    pyth = max(
        abs(kls[k] - kls[k + 1] - to_float(_kl(plans[k + 1], plans[k], xp)))
        for k in range(len(plans) - 1)
    )
    records.append(_record("pythagorean_identity", pyth / n, 0.0, tol))
    rise = max(kls[k + 1] - kls[k] for k in range(len(kls) - 1))
    records.append(_record("kl_monotone", rise / n, 0.0, tol, one_sided=True))

    ince = to_float(info_nce(z1, z2, eps=eps, layout="cross"))
    gca = to_float(gca_ince(z1, z2, eps=eps, layout="cross"))
    records.append(_record("gca_ince_below_ince", gca, ince, tol, one_sided=True))

    # RINCE from exp(s) directly vs GCA-RINCE after one row step
    e = xp.exp(s)
    rince_direct = to_float(xp.mean(-(xp.sum(e * T, axis=1) ** q) / q
                                    + (lam * xp.sum(e, axis=1)) ** q / q))
    records.append(_record("gca_rince_one_step_is_rince",
                           to_float(gca_rince(z1, z2, eps=eps, n_iter=0, q=q, lam=lam,
                                              layout="cross")),
                           rince_direct, tol))

    # q -> 0 with lam = 1: RINCE -> InfoNCE, gap O(q)
    q_small = 1e-6 if z1.dtype == xp.float64 else 1e-3
    r0 = to_float(gca_rince(z1, z2, eps=eps, n_iter=0, q=q_small, lam=1.0, layout="cross"))
    records.append(_record("rince_q_to_zero_is_infonce", r0, ince, 100 * q_small * (1 + ince**2)))

    # UOT fixed point
    ones = xp.ones((n,), dtype=C.dtype)
    res = sinkhorn(C, ones, ones, eps=eps, rho_a=rho, rho_b=rho, tol=tol * 1e-2,
                   max_iter=100_000, warn=False)
    t = rho / (rho + eps)
    kv = xp.exp(logsumexp(s + res.g[None, :] / eps, 1, xp))
    predicted = kv ** (1 - t)
    records.append(_record("uot_row_mass_identity",
                           to_float(xp.max(xp.abs(res.row_mass - predicted))), 0.0,
                           tol * to_float(xp.max(predicted))))

    bal = sinkhorn(C, ones, ones, eps=eps, tol=tol * 1e-2, max_iter=100_000, warn=False)
    records.append(_record("sinkhorn_marginals",
                           max(to_float(bal.marginal_error_a), to_float(bal.marginal_error_b)),
                           0.0, tol))
    records.extend(_family_records(z1, z2, eps, tol, xp))
    return records


def _family_records(z1: Array, z2: Array, eps: float, tol: float,
                    xp: Any) -> list[EquivalenceRecord]:
    """The SimCLR problem, BYOL, SwAV codes and the capacity bound, each against its formula."""
    from otcl.alignment.codes import swav_codes
    from otcl.alignment.family import byol, gca_capacity

    n = z1.shape[0]
    z = xp.concat([z1, z2], axis=0)
    zn = z / xp.linalg.vector_norm(z, axis=1, keepdims=True)
    S = zn @ xp.matrix_transpose(zn) / eps
    eye = xp.eye(2 * n, dtype=xp.bool)
    S = xp.where(eye, xp.full_like(S, -math.inf), S)
    partner = xp.concat([xp.arange(n, 2 * n), xp.arange(n)])
    pos = xp.take(xp.reshape(S, (-1,)), xp.arange(2 * n) * (2 * n) + partner)
    nt_xent = to_float(xp.mean(logsumexp(S, 1, xp) - pos))
    records = [_record("simclr_two_view_is_nt_xent", to_float(info_nce(z1, z2, eps=eps)),
                       nt_xent, tol * max(1.0, abs(nt_xent)))]

    n1 = z1 / xp.linalg.vector_norm(z1, axis=1, keepdims=True)
    n2 = z2 / xp.linalg.vector_norm(z2, axis=1, keepdims=True)
    l2 = to_float(xp.mean(xp.sum((n1 - n2) ** 2, axis=1)))
    records.append(_record("byol_is_l2_regression", to_float(byol(z1, z2)), l2, tol))

    scores = n1 @ xp.matrix_transpose(n2[: max(2, n // 4), ...])  # the first rows as prototypes
    B, K = scores.shape
    Q = xp.exp(scores / 0.05)
    for _ in range(3):
        Q = Q / (xp.sum(Q, axis=0, keepdims=True) * K)
        Q = Q / (xp.sum(Q, axis=1, keepdims=True) * B)
    gap = to_float(xp.max(xp.abs(swav_codes(scores) - Q * B)))
    records.append(_record("swav_codes_are_sinkhorn_knopp", gap, 0.0, tol))

    kappa = 0.5 / n
    _, det = gca_capacity(z1, z2, kappa=kappa, n_iter=30, layout="cross", return_details=True)
    negatives = ~xp.eye(n, dtype=xp.bool)
    excess = to_float(xp.max(xp.where(negatives, det.plan, xp.zeros_like(det.plan)))) - kappa
    records.append(_record("capacity_bound_holds", excess, 0.0, tol * kappa, one_sided=True))
    return records


def run_all(library: str = "numpy", *, n: int = 64, d: int = 16, eps: float = 0.5,
            seed: int = 0, dtype: str = "float64", device: Any = None
            ) -> list[EquivalenceRecord]:
    """[`check_equivalences`][otcl.alignment.equivalences.check_equivalences] on random Gaussian
    embeddings made in ``library`` (``"numpy"``, ``"torch"``, ``"cupy"``,
    ``"array_api_strict"``)."""
    rng = np.random.default_rng(seed)
    z1 = rng.standard_normal((n, d)).astype(dtype)
    z2 = (z1 + 0.5 * rng.standard_normal((n, d))).astype(dtype)
    return check_equivalences(from_numpy(z1, library, device), from_numpy(z2, library, device),
                              eps=eps)
