"""Outer divergences ``d_M(P_tgt || P)``, per row, written in potential form.

The model plan is ``P_ij = exp(phi_i + gamma_j + Λ_ij)`` with ``Λ = -C / eps`` and scaled
potentials ``phi = f / eps``, ``gamma = g / eps`` (see ``docs/architecture.md``); ``u = exp(phi)``,
``v = exp(gamma)``, ``K = exp(Λ)``. Every function returns an ``(n,)`` array of per-row terms;
the loss reduces them. ``log_kernel`` is ``Λ`` ``(n, m)``, or, for a pair target, the ``(n,)``
entries ``Λ[i, partner[i]]`` (these terms read nothing else of ``Λ``).
"""

from __future__ import annotations

import math
from typing import Any

from otcl.alignment.targets import Target
from otcl.backend import Array, safe_log

__all__ = ["cross_entropy_rows", "kl_rows", "rince_rows", "row_kl_rows", "validate_rince"]


def kl_rows(target: Target, phi: Array, gamma: Array, log_kernel: Array, row_mass: Array,
            xp: Any) -> Array:
    """Generalised KL per row: ``sum_j T_ij log(T_ij / P_ij) - T_ij + P_ij``.

    With ``log P_ij = phi_i + gamma_j + Λ_ij`` this is
    ``H_i(T) - (T1)_i phi_i - (T gamma)_i - sum_j T_ij Λ_ij - (T1)_i + (P1)_i``, so only the
    target's entries of ``Λ`` and the row masses are needed. Summed over rows it is ``KL(T || P)``.
    """
    t_rows = target.row_sums(phi)
    return (
        target.row_entropy(phi)
        - t_rows * phi
        - target.apply(gamma)
        - target.contract_rows(log_kernel)
        - t_rows
        + row_mass
    )


def cross_entropy_rows(target: Target, phi: Array, gamma: Array, log_kernel: Array) -> Array:
    """``-sum_j T_ij log P_ij`` per row (no mass terms; the form IOT uses)."""
    return -(target.row_sums(phi) * phi + target.apply(gamma) + target.contract_rows(log_kernel))


def row_kl_rows(target: Target, gamma: Array, log_kernel: Array, log_kv: Array,
                xp: Any) -> Array:
    """``KL(T_i / |T_i| || P_i / |P_i|)`` per row: target and plan rows renormalised.

    The plan's row ``i`` renormalised is ``K_ij v_j / (K v)_i`` whatever ``u_i``, so with
    ``log_kv = log (K v)`` and ``s_i = (T 1)_i`` the term is
    ``sum_j T_ij log T_ij / s_i - log s_i - (T gamma)_i / s_i - sum_j T_ij Λ_ij / s_i + log_kv_i``.
    For one unit entry per row (pairs of views) it is the cross-entropy
    ``-log(K_ip v_p / (K v)_i)`` of the official code's ``F.cross_entropy(P.log(), targets)``.
    """
    s = target.row_sums(gamma)
    inner = target.row_entropy(gamma) - target.apply(gamma) - target.contract_rows(log_kernel)
    if target.dense is None:
        return inner + log_kv
    return inner / s - safe_log(s, xp) + log_kv


def rince_rows(target: Target, gamma: Array, log_kernel: Array, log_kv: Array, *, q: float,
               lam: float, xp: Any) -> Array:
    """The (GCA-)RINCE term per row (GCA-NOTES §2.5, the poster's formula):

    ``-(1/q) (sum_j T_ij P_ij / u_i)^q + (1/q) (lam sum_j P_ij / u_i)^q``
    ``= -(1/q) (sum_j T_ij K_ij v_j)^q + (1/q) (lam (K v)_i)^q``,

    the official GCA-UOT's RINCE term (its ``(P_tgt / u).sum(1)`` read as ``(P / u).sum(1)``).
    ``log_kv`` is ``log (K v)`` per row. For ``T = I`` and one row step from ``v = 1`` it is
    exactly RINCE, ``-(e^{s_ii})^q / q + (lam sum_j e^{s_ij})^q / q``; after a hard row step
    ``(K v)_i = a_i / u_i``. Computed in log space so that no power of an underflowed number
    is formed.
    """
    log_pos = target.log_weighted_mass(log_kernel, gamma)
    log_neg = math.log(lam) + log_kv
    return (xp.exp(q * log_neg) - xp.exp(q * log_pos)) / q


def validate_rince(q: Any, lam: Any) -> tuple[float, float]:
    """``q`` in ``(0, 1]`` and ``lam > 0``, as floats; errors name the argument."""
    for name, val in (("q", q), ("lam", lam)):
        if isinstance(val, bool) or not isinstance(val, (int, float)) or not math.isfinite(val):
            raise ValueError(f"{name} must be a finite real number, got {val!r}")
    if not 0 < q <= 1:
        raise ValueError(f"q must be in (0, 1], got {q}")
    if lam <= 0:
        raise ValueError(f"lam must be positive, got {lam}")
    return float(q), float(lam)
