"""Target plans ``P_tgt``: what the alignment should look like.

A [`Target`][otcl.Target] is a non-negative ``(n, m)`` matrix, stored sparsely when every row has
exactly one positive of weight 1 (pairs of views) and densely otherwise (labels, domain priors, user
matrices). The inner OT problem uses the target's own marginals by default (``a = T 1``, ``b = T^T
1``), which is the matched case in which ``KL(T || P^(k))`` decreases at every half-step (GCA-NOTES
§3.3).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from otcl.backend import (
    Array,
    check_compatible,
    device_of,
    is_array,
    logsumexp,
    namespace,
    safe_log,
)
from otcl.geometry import ViewBatch

__all__ = ["Target", "as_target", "domain_prior", "label_target", "pair_target"]


@dataclass(eq=False)
class Target:
    """A target plan of shape ``(n, m)``: ``partner`` (a permutation: one unit entry per row and
    per column, as for pairs of views) or ``dense``."""

    xp: Any
    shape: tuple[int, int]
    partner: Array | None = None  # (n,) int column index, T[i, partner[i]] = 1
    dense: Array | None = None  # (n, m) non-negative

    def to_dense(self, like: Array) -> Array:
        """The target as an ``(n, m)`` array with ``like``'s dtype and device."""
        if self.dense is not None:
            return self.dense
        xp = self.xp
        cols = xp.arange(self.shape[1], dtype=self.partner.dtype, device=device_of(like))
        return xp.astype(self.partner[:, None] == cols[None, :], like.dtype)

    def row_sums(self, like: Array) -> Array:
        """``T 1``, shape ``(n,)``."""
        if self.dense is not None:
            return self.xp.sum(self.dense, axis=1)
        return self.xp.ones((self.shape[0],), dtype=like.dtype, device=device_of(like))

    def col_sums(self, like: Array) -> Array:
        """``T^T 1``, shape ``(m,)``."""
        xp = self.xp
        if self.dense is not None:
            return xp.sum(self.dense, axis=0)
        return xp.ones((self.shape[1],), dtype=like.dtype, device=device_of(like))

    def contract_rows(self, M: Array) -> Array:
        """``sum_j T_ij M_ij``, shape ``(n,)`` (for pairs: ``M[i, partner[i]]``).

        ``M`` is ``(n, m)``; for a pair target it may also be the ``(n,)`` entries
        ``M[i, partner[i]]`` already gathered (returned as they are).
        """
        xp = self.xp
        if self.dense is not None:
            T = self.dense
            return xp.sum(T * xp.where(T > 0, M, xp.zeros_like(M)), axis=1)
        if M.ndim == 1:
            if M.shape[0] != self.shape[0]:
                raise ValueError(
                    f"M has shape {tuple(M.shape)}, expected ({self.shape[0]},) or {self.shape}"
                )
            return M
        n, m = M.shape
        flat = xp.reshape(M, (n * m,))
        rows = xp.arange(n, dtype=self.partner.dtype, device=device_of(M))
        return xp.take(flat, rows * m + self.partner)

    def apply(self, gamma: Array) -> Array:
        """``T gamma``, shape ``(n,)``."""
        if self.dense is not None:
            return self.dense @ gamma
        return self.xp.take(gamma, self.partner)

    def row_entropy(self, like: Array) -> Array:
        """``sum_j T_ij log T_ij`` per row (``0 log 0 = 0``), shape ``(n,)``."""
        xp = self.xp
        if self.dense is None:
            return xp.zeros((self.shape[0],), dtype=like.dtype, device=device_of(like))
        T = self.dense
        return xp.sum(T * xp.log(xp.where(T > 0, T, xp.ones_like(T))), axis=1)

    def log_weighted_mass(self, log_M: Array, col_shift: Array | None = None) -> Array:
        """``log sum_j T_ij exp(log_M_ij + s_j)`` per row, shape ``(n,)`` (``s = col_shift``,
        default 0). For pairs this gathers ``n`` entries and never forms ``log_M + s`` (``log_M``
        may then be the gathered ``(n,)`` entries, as in
        [`contract_rows`][otcl.alignment.targets.Target.contract_rows])."""
        xp = self.xp
        if self.dense is None:
            out = self.contract_rows(log_M)
            return out if col_shift is None else out + xp.take(col_shift, self.partner)
        shifted = log_M if col_shift is None else log_M + col_shift[None, :]
        return logsumexp(shifted + safe_log(self.dense, xp), 1, xp)


def pair_target(batch: ViewBatch) -> Target:
    """Positive pairs of views: identity (cross-view), the partner permutation (two views), or,
    for ``V > 2`` views, weight ``1 / (V - 1)`` on every other view of the same sample."""
    xp = batch.xp
    shape = batch.shape
    if batch.partner is not None:
        return Target(xp, shape, partner=batch.partner)
    same = batch.row_sample[:, None] == batch.col_sample[None, :]
    if batch.mask is not None:
        same = same & batch.mask
    T = xp.astype(same, batch.reference.dtype)
    return Target(xp, shape, dense=T / xp.sum(T, axis=1, keepdims=True))


def label_target(batch: ViewBatch, labels: Array) -> Target:
    """Supervised-contrastive target: ``T_ij ∝ 1[y_i = y_j]`` on allowed entries, rows summing to 1.

    ``labels`` has one entry per sample (length ``N``) or per row of the batch (length ``n``).
    """
    xp = batch.xp
    if not is_array(labels):
        raise TypeError(f"labels must be an array, got {type(labels).__name__}")
    check_compatible(floating=False, labels=labels)
    _check_same_library("labels", labels, batch)
    if labels.ndim != 1:
        raise ValueError(f"labels must be one-dimensional, got shape {tuple(labels.shape)}")
    n, m = batch.shape
    n_samples = int(xp.max(batch.row_sample)) + 1
    if labels.shape[0] == n and n == m:
        y_row = y_col = labels
    elif labels.shape[0] == n_samples:
        y_row = xp.take(labels, batch.row_sample)
        y_col = xp.take(labels, batch.col_sample)
    else:
        raise ValueError(
            f"labels has length {labels.shape[0]}; expected {n_samples} (one per sample) or "
            f"{n} (one per row)"
        )
    same = y_row[:, None] == y_col[None, :]
    if batch.mask is not None:
        same = same & batch.mask
    T = xp.astype(same, batch.reference.dtype)
    counts = xp.sum(T, axis=1, keepdims=True)
    if bool(xp.any(counts == 0)):
        raise ValueError(
            "labels leave a row without any positive (its label occurs in no other allowed "
            "entry); give every row at least one partner with the same label"
        )
    return Target(xp, (n, m), dense=T / counts)


def domain_prior(domains: Array, alpha: float, beta: float, *, batch: ViewBatch | None = None,
                 like: Array | None = None) -> Array:
    """Domain-aware target ``I + alpha 1[D_i = D_j, i != j] + beta 1[D_i != D_j]`` (GCA-NOTES §1.3).

    ``domains`` holds one domain id per sample (length ``N``). For a cross-view batch (or
    ``batch=None``) the result is ``N x N`` with the identity for the positive pairs; for an
    all-views batch the positive pairs of the batch replace the identity and self-pairs are 0.
    The dtype and device follow the batch's (or ``like``; float64 NumPy-style default).
    Floating ids must not be NaN (``ValueError``).
    """
    for name, val in (("alpha", alpha), ("beta", beta)):
        if isinstance(val, bool) or not isinstance(val, (int, float)) or not (
            math.isfinite(val) and val >= 0
        ):
            raise ValueError(f"{name} must be a finite number >= 0, got {val!r}")
    xp = check_compatible(floating=False, domains=domains)
    if batch is not None:
        _check_same_library("domains", domains, batch)
    elif like is not None and namespace(like) is not xp:
        raise TypeError(f"domains is a {type(domains).__module__} array but like is a "
                        f"{type(like).__module__} array")
    if domains.ndim != 1:
        raise ValueError(f"domains must be one-dimensional, got shape {tuple(domains.shape)}")
    floating = xp.isdtype(domains.dtype, ("real floating", "complex floating"))
    if floating and bool(xp.any(xp.isnan(domains))):
        # NaN != NaN: a sample with a NaN id would be in no domain, not even its own
        raise ValueError("domains contains NaN; domain ids must be integers or numbers equal "
                         "to themselves")
    ref = batch.reference if batch is not None else like
    dtype = ref.dtype if ref is not None else xp.float64
    dev = device_of(domains)
    if batch is None:
        d_row = d_col = domains
        n = domains.shape[0]
        r = xp.arange(n, device=dev)
        positive = r[:, None] == r[None, :]
        allowed = None
    else:
        n_samples = int(xp.max(batch.row_sample)) + 1
        if domains.shape[0] != n_samples:
            raise ValueError(f"domains has length {domains.shape[0]}; expected {n_samples}")
        d_row = xp.take(domains, batch.row_sample)
        d_col = xp.take(domains, batch.col_sample)
        positive = batch.row_sample[:, None] == batch.col_sample[None, :]
        allowed = batch.mask
        if allowed is not None:
            positive = positive & allowed
    same = d_row[:, None] == d_col[None, :]
    T = (
        xp.astype(positive, dtype)
        + alpha * xp.astype(same & ~positive, dtype)
        + beta * xp.astype(~same & ~positive, dtype)
    )
    if allowed is not None:
        T = xp.where(allowed, T, xp.zeros_like(T))
    return T


def _check_same_library(name: str, arr: Array, batch: ViewBatch) -> None:
    """``arr`` (integer ids) must live in the batch's array library and on its device."""
    ref = batch.reference
    if namespace(arr) is not batch.xp:
        raise TypeError(
            f"{name} must be an array of the embeddings' library ({type(ref).__module__}), "
            f"got {type(arr).__module__}"
        )
    if device_of(arr) != device_of(ref):
        raise ValueError(f"{name} is on device {device_of(arr)} but the embeddings on "
                         f"{device_of(ref)}")


def as_target(target: Any, batch: ViewBatch) -> Target:
    """Validate a user-given target matrix (or [`Target`][otcl.Target]) against a batch."""
    if isinstance(target, Target):
        if tuple(target.shape) != batch.shape:
            raise ValueError(f"target has shape {target.shape}, cost has {batch.shape}")
        return target
    xp = check_compatible(cost=batch.reference, target=target)
    if tuple(target.shape) != batch.shape:
        raise ValueError(
            f"target has shape {tuple(target.shape)} but the batch cost has {batch.shape}"
        )
    if not bool(xp.all(xp.isfinite(target))):
        raise ValueError("target contains NaN or inf")
    if bool(xp.any(target < 0)):
        raise ValueError("target has negative entries")
    if batch.mask is not None and bool(xp.any((target > 0) & ~batch.mask)):
        raise ValueError("target puts mass on masked (self-pair) entries")
    if bool(xp.any(xp.sum(target, axis=1) <= 0)) or bool(xp.any(xp.sum(target, axis=0) <= 0)):
        raise ValueError("target has a row or column with zero mass")
    return Target(xp, tuple(target.shape), dense=target)
