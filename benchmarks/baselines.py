"""Reference computations that otcl is measured against.

These are reference losses in plain PyTorch autograd: NT-Xent, a straightforward
"official-style" GCA loss that forms the plan with diagonal matrices, and kernel-domain /
log-domain unrolled GCA losses that never form the plan; and SwAV's Sinkhorn–Knopp loop for the
cluster codes, in PyTorch and NumPy (at the end of the module). (The solver's floors are in
``benchmarks.floors``.)

All GCA references use the cross-view form of the paper with unit marginals ``a = b = 1``,
cost ``C = -cos`` and kernel ``K = exp(-C/eps)``, run ``L`` Sinkhorn rounds from ``v = 1``

    u <- (a / (K v))^t,    v <- (b / (K^T u))^t,       t = rho / (rho + eps)  (1 if rho = inf)

then one more row step, and return the cross-entropy of the plan ``P = diag(u) K diag(v)``
against the positive pairs: ``mean_i -log(P_{i,p(i)} / sum_j P_ij)``. With ``L = 0`` this is
NT-Xent; the three GCA references compute the same value by different routes.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

# torch is imported inside the torch references, so that a NumPy case never loads it

__all__ = [
    "gca_kernel_autograd",
    "gca_log_autograd",
    "gca_official_style",
    "nt_xent",
    "nt_xent_plus_passes",
    "paired_products",
    "partner_index",
    "similarity",
    "swav_codes_numpy",
    "swav_codes_torch",
    "swav_prototype_errors",
    "swav_rounds_to",
    "update_exponent",
]


# --------------------------------------------------------------------------------------------
# reference losses (torch)


def similarity(z1: torch.Tensor, z2: torch.Tensor | None = None) -> torch.Tensor:
    """Cosine similarities ``s_ij = cos(z1_i, z2_j)``, shape ``(n, m)`` (``z2 = z1`` if omitted)."""
    import torch.nn.functional as F  # noqa: N812 (the usual spelling)

    x = F.normalize(z1, dim=1)
    y = x if z2 is None else F.normalize(z2, dim=1)
    return x @ y.T


def partner_index(n_rows: int, all_views: bool, device: Any = None) -> torch.Tensor:
    """Index of each row's positive column: ``i`` (cross-view) or ``(i + N) mod 2N`` (all-views,
    blocked layout ``[view 1; view 2]`` with ``2N = n_rows``)."""
    import torch

    idx = torch.arange(n_rows, device=device)
    if all_views:
        idx = (idx + n_rows // 2) % n_rows
    return idx


def update_exponent(rho: float, eps: float) -> float:
    """``t = rho / (rho + eps)``; ``1`` for a hard marginal constraint (``rho = inf``)."""
    return 1.0 if math.isinf(rho) else rho / (rho + eps)


def _power(x: torch.Tensor, t: float) -> torch.Tensor:
    return x if t == 1.0 else x**t


def nt_xent(s: torch.Tensor, eps: float, all_views: bool = False) -> torch.Tensor:
    """NT-Xent / InfoNCE: ``cross_entropy(s / eps, partner)``; self-pairs excluded (all-views).

    ``s`` is the ``(n, n)`` similarity matrix from :func:`similarity`.
    """
    import torch
    import torch.nn.functional as F  # noqa: N812 (the usual spelling)

    logits = s / eps
    if all_views:
        eye = torch.eye(s.shape[0], dtype=torch.bool, device=s.device)
        logits = logits.masked_fill(eye, -math.inf)
    return F.cross_entropy(logits, partner_index(s.shape[0], all_views, s.device))


SWEEP_MIN_BYTES = 24 * 2**20
"""Kernels larger than this are read once per pair of products by :func:`paired_products` (a
sweep over blocks of rows that stay in cache between the two); below it two separate products
are faster, the kernel staying in the last-level cache anyway (32 MiB L3 of the reference
machine)."""

SWEEP_BLOCK_BYTES = 4 * 2**20


def paired_products(kernel: np.ndarray, pairs: int) -> None:
    """``pairs`` times the two products ``K x`` and ``K^T y`` of a Sinkhorn step pair, at their
    fastest: two separate BLAS products, or above :data:`SWEEP_MIN_BYTES` one sweep over blocks
    of rows that computes both (the row block's ``K x`` first, then its share of ``K^T y``). The
    vectors are ones; only the time means anything."""
    n, m = kernel.shape
    ones_m, ones_n = np.ones(m, dtype=kernel.dtype), np.ones(n, dtype=kernel.dtype)
    kv, ktu, tmp = (np.empty(size, dtype=kernel.dtype) for size in (n, m, m))
    if kernel.nbytes <= SWEEP_MIN_BYTES:
        for _ in range(pairs):
            np.matmul(kernel, ones_m, out=kv)
            np.matmul(ones_n, kernel, out=ktu)
        return
    rows = max(8, SWEEP_BLOCK_BYTES // (m * kernel.itemsize))
    blocks = [slice(r, min(r + rows, n)) for r in range(0, n, rows)]
    for _ in range(pairs):
        ktu[...] = 0
        for blk in blocks:
            np.matmul(kernel[blk], ones_m, out=kv[blk])
            np.matmul(ones_n[blk], kernel[blk], out=tmp)
            np.add(ktu, tmp, out=ktu)


def nt_xent_plus_passes(s: torch.Tensor, eps: float, n_iter: int, all_views: bool = False,
                        ) -> torch.Tensor:
    """NT-Xent (:func:`nt_xent`, as torch computes it, whose value it returns) plus the passes
    over the ``n x n`` kernel that any exact unrolled derivative of ``L = n_iter`` Sinkhorn
    rounds needs: one exponential pass ``K = exp(s)``, ``2 (2L + 1)`` matrix-vector products
    with ``K`` and ``K^T`` (``2L + 1`` forward, the same backward, where each step's cotangent
    needs the next one's; :func:`paired_products`, two per read of the kernel where that is
    faster), and the gradient matrix ``K ⊙ (A B^T)`` of rank ``2L + 1``.

    Each pass runs at its fastest: base-2 exponential, NumPy's BLAS on the tensor's memory (the
    products otcl uses on the CPU), outputs allocated once per call. The numbers the extra work
    computes are discarded; only its time means anything. The GCA losses also pay per-step
    vector work and the loss terms, which this leaves out; they can still take less time than
    this row where their own products are faster than torch's (otcl computes the log-kernel and
    its gradient with NumPy's BLAS) or where they read the kernel fewer times than it does.
    """
    loss = nt_xent(s, eps, all_views)
    sim = s.detach().numpy()
    kernel = np.exp2(sim)
    steps = 2 * n_iter + 1
    paired_products(kernel, steps)
    left = np.ones((sim.shape[0], steps), dtype=sim.dtype)
    right = np.ones((steps, sim.shape[1]), dtype=sim.dtype)
    grad = np.matmul(left, right)
    np.multiply(grad, kernel, out=grad)
    return loss


def gca_official_style(
    s: torch.Tensor, eps: float, n_iter: int, rho: float = math.inf, all_views: bool = False
) -> torch.Tensor:
    """GCA loss the straightforward way: explicit kernel, vector Sinkhorn, explicit plan.

    ``K = exp(s / eps)`` (cost ``-s``; zero diagonal for all-views), ``L = n_iter`` rounds of the
    scaling updates above with autograd through every step, a final row step, then the plan
    formed as ``torch.diag(u) @ K @ torch.diag(v)`` and ``cross_entropy(log P, partner)``. For
    all-views batches the plan is formed on ``K + I`` and its log masked to ``-inf`` on the
    diagonal afterwards (so the masked entries get a zero, not a NaN, gradient). Costs two
    ``n^3`` products forward, more backward, and ``O(n^2)`` memory per call.
    """
    import torch
    import torch.nn.functional as F  # noqa: N812 (the usual spelling)

    n = s.shape[0]
    t = update_exponent(rho, eps)
    kernel = torch.exp(s / eps)
    eye = torch.eye(n, dtype=torch.bool, device=s.device) if all_views else None
    if eye is not None:
        kernel = kernel.masked_fill(eye, 0.0)
    ones = torch.ones(n, dtype=s.dtype, device=s.device)
    v = ones
    for _ in range(n_iter):
        u = _power(ones / (kernel @ v), t)
        v = _power(ones / (kernel.T @ u), t)
    u = _power(ones / (kernel @ v), t)
    if eye is None:
        log_plan = torch.log(torch.diag(u) @ kernel @ torch.diag(v))
    else:
        plan = torch.diag(u) @ (kernel + eye.to(s.dtype)) @ torch.diag(v)
        log_plan = torch.log(plan).masked_fill(eye, -math.inf)
    return F.cross_entropy(log_plan, partner_index(n, all_views, s.device))


def gca_kernel_autograd(
    s: torch.Tensor, eps: float, n_iter: int, rho: float = math.inf, all_views: bool = False
) -> torch.Tensor:
    """The same loss in the kernel domain without forming the plan (plain autograd).

    Rounds as in :func:`gca_official_style` on ``K = exp(s / eps)`` (zero diagonal for
    all-views), then ``mean_i [log (K v)_i - log K_{i,p(i)} - log v_{p(i)}]``, which is the
    cross-entropy of the row-normalised plan (``u`` cancels). Autograd stores ``O(L n)`` vectors
    besides ``K``.
    """
    import torch

    n = s.shape[0]
    t = update_exponent(rho, eps)
    log_k = s / eps
    kernel = torch.exp(log_k)
    if all_views:
        kernel = kernel.masked_fill(torch.eye(n, dtype=torch.bool, device=s.device), 0.0)
    ones = torch.ones(n, dtype=s.dtype, device=s.device)
    v = ones
    for _ in range(n_iter):
        u = _power(ones / (kernel @ v), t)
        v = _power(ones / (kernel.T @ u), t)
    p = partner_index(n, all_views, s.device)
    rows = torch.arange(n, device=s.device)
    return torch.mean(torch.log(kernel @ v) - log_k[rows, p] - torch.log(v[p]))


def gca_log_autograd(
    s: torch.Tensor, eps: float, n_iter: int, rho: float = math.inf, all_views: bool = False
) -> torch.Tensor:
    """The same loss with log-sum-exp updates of the potentials (plain autograd).

    ``phi = t (log a - LSE_j(Λ_ij + gamma_j))``, ``gamma = t (log b - LSE_i(Λ_ij + phi_i))`` with
    ``Λ = s / eps`` (``-inf`` diagonal for all-views) and ``a = b = 1``; value
    ``mean_i [LSE_j(Λ_ij + gamma_j) - Λ_{i,p(i)} - gamma_{p(i)}]``. Autograd stores ``O(L n^2)``:
    every log-sum-exp keeps its ``n x n`` input.
    """
    import torch

    n = s.shape[0]
    t = update_exponent(rho, eps)
    log_k = s / eps
    if all_views:
        log_k = log_k.masked_fill(torch.eye(n, dtype=torch.bool, device=s.device), -math.inf)
    gamma = torch.zeros(n, dtype=s.dtype, device=s.device)
    for _ in range(n_iter):
        phi = -t * torch.logsumexp(log_k + gamma[None, :], dim=1)
        gamma = -t * torch.logsumexp(log_k + phi[:, None], dim=0)
    p = partner_index(n, all_views, s.device)
    rows = torch.arange(n, device=s.device)
    lse = torch.logsumexp(log_k + gamma[None, :], dim=1)
    return torch.mean(lse - log_k[rows, p] - gamma[p])


# --------------------------------------------------------------------------------------------
# SwAV's Sinkhorn-Knopp codes (Caron et al. 2020, ``distributed_sinkhorn`` on one process)


def swav_codes_torch(scores: torch.Tensor, eps: float, n_iter: int) -> torch.Tensor:
    """SwAV's reference loop on a ``(B, K)`` score tensor, as its code writes it: ``Q =
    exp(scores / eps)^T`` (``K x B``), ``Q /= sum(Q)``, then ``n_iter`` rounds of "every
    prototype gets ``1/K``" (rows) and "every sample gets ``1/B``" (columns), in place, and
    ``(B Q)^T``: soft assignments whose rows sum to 1."""
    import torch

    with torch.no_grad():
        q = torch.exp(scores / eps).t()
        n_protos, n_samples = q.shape
        q /= torch.sum(q)
        for _ in range(n_iter):
            q /= torch.sum(q, dim=1, keepdim=True)
            q /= n_protos
            q /= torch.sum(q, dim=0, keepdim=True)
            q /= n_samples
        q *= n_samples
        return q.t()


def swav_codes_numpy(scores: np.ndarray, eps: float, n_iter: int) -> np.ndarray:
    """:func:`swav_codes_torch`, line for line in NumPy."""
    q = np.exp(scores / eps).T
    n_protos, n_samples = q.shape
    q /= np.sum(q)
    for _ in range(n_iter):
        q /= np.sum(q, axis=1, keepdims=True)
        q /= n_protos
        q /= np.sum(q, axis=0, keepdims=True)
        q /= n_samples
    q *= n_samples
    return q.T


def swav_prototype_errors(scores: np.ndarray, eps: float) -> Iterator[float]:
    """The reference loop's prototype-marginal error after each round, round after round:
    ``sum_k |sum_b Q_kb - 1/K|`` (``Q`` has total mass 1, so this is the relative L1 error that
    ``otcl.swav_codes(tol=...)`` stops on), computed in the scores' dtype."""
    q = np.exp(scores / eps).T
    n_protos, n_samples = q.shape
    q /= np.sum(q)
    while True:
        q /= np.sum(q, axis=1, keepdims=True)
        q /= n_protos
        q /= np.sum(q, axis=0, keepdims=True)
        q /= n_samples
        yield float(np.sum(np.abs(np.sum(q, axis=1) - 1.0 / n_protos)))


def swav_rounds_to(scores: np.ndarray, eps: float, tol: float, max_rounds: int = 1000) -> int:
    """The smallest round count after which the reference loop's prototype-marginal error is
    ``<= tol`` (:func:`swav_prototype_errors`); ``ValueError`` if ``max_rounds`` do not reach it."""
    for k, err in enumerate(swav_prototype_errors(scores, eps), 1):
        if err <= tol:
            return k
        if k >= max_rounds:
            break
    raise ValueError(f"the reference loop does not reach {tol:g} in {max_rounds} rounds")
