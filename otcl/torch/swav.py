"""SwAV on torch tensors: the codes ([`otcl.swav_codes`][otcl.swav_codes]) across ranks, and the
swapped prediction loss of Caron et al. 2020, called like lightly's ``SwaVLoss``.

``SwAVLoss()(high_resolution_outputs, low_resolution_outputs=None, queue_outputs=None)`` takes
lists of ``(B, K)`` prototype scores, one per crop. For every high-resolution crop ``i`` the codes
``q_i`` (no gradient) are computed from its scores (with the queue's scores appended as extra
samples, then dropped); every other crop ``v`` is scored against them with
``-mean_b sum_k q_ibk log softmax(s_vb / temperature)_k``; the loss averages over the other crops
and over the high-resolution crops.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from otcl._api import checked_keywords

__all__ = ["SwAVLoss", "swav_codes"]


@checked_keywords
def swav_codes(scores: torch.Tensor, *, eps: float = 0.05, n_iter: int = 3,
               tol: float | None = None, max_iter: int = 1000, rho: float = math.inf,
               domain: str = "auto", distributed: bool = False,
               return_details: bool = False) -> Any:
    """[`otcl.swav_codes`][otcl.swav_codes] on a torch tensor, without gradient; float16 / bfloat16
    scores are solved in float32 and the codes returned in the scores' dtype.

    ``distributed=True``: the samples of every ``torch.distributed`` rank form one problem
    (mass ``1/B_total`` each, as SwAV's distributed Sinkhorn–Knopp), and each rank receives the
    codes of its own rows. Unequal per-rank batch sizes are supported.
    """
    from otcl.alignment.codes import swav_codes as _codes

    if not isinstance(scores, torch.Tensor):
        raise TypeError(f"scores must be a torch.Tensor, got {type(scores).__name__}")
    if not isinstance(distributed, bool):
        raise TypeError(f"distributed must be a bool, got {distributed!r}")
    with torch.no_grad():
        s = scores.detach()
        if s.dtype in (torch.float16, torch.bfloat16):
            s = s.float()
        offset = 0
        if distributed:
            import torch.distributed as dist

            from otcl.torch.distributed import (
                _all_gather_rows,
                _exchange_shapes,
                require_process_group,
            )

            require_process_group()
            if s.ndim != 2:
                raise ValueError(f"scores must have shape (B, K), got {tuple(s.shape)}")
            # every rank's [ndim, dtype code, B_r, K, padding...]
            shapes = _exchange_shapes(s, None)
            if len({(sh[0], sh[1], sh[3]) for sh in shapes}) != 1:
                raise ValueError("the ranks' scores differ in dtype or number of prototypes: "
                                 f"K = {[int(sh[3]) for sh in shapes]}")
            sizes = [int(sh[2]) for sh in shapes]
            offset = sum(sizes[: dist.get_rank()])
            s = _all_gather_rows(s, sizes, None)
        out = _codes(s, eps=eps, n_iter=n_iter, tol=tol, max_iter=max_iter, rho=rho,
                     domain=domain, return_details=True)
        codes, details = out
        codes = codes[offset : offset + scores.shape[0]].to(scores.dtype)
    return (codes, details) if return_details else codes


class SwAVLoss(nn.Module):
    """SwAV's swapped prediction loss; the arguments and defaults of lightly's ``SwaVLoss``
    (``temperature = 0.1``, ``sinkhorn_iterations = 3``, ``sinkhorn_epsilon = 0.05``,
    ``sinkhorn_gather_distributed = False``), plus otcl's ``sinkhorn_tol`` (run the codes to a
    marginal error instead of a fixed count) and ``rho`` (relaxed prototype marginal)."""

    @checked_keywords
    def __init__(self, temperature: float = 0.1, sinkhorn_iterations: int = 3,
                 sinkhorn_epsilon: float = 0.05, sinkhorn_gather_distributed: bool = False, *,
                 sinkhorn_tol: float | None = None, rho: float = math.inf) -> None:
        super().__init__()
        from otcl.alignment.losses import as_count
        from otcl.solvers.problem import validate_positive

        self.temperature = validate_positive("temperature", temperature)
        self.sinkhorn_iterations = as_count("sinkhorn_iterations", sinkhorn_iterations,
                                            minimum=1)
        self.sinkhorn_epsilon = validate_positive("sinkhorn_epsilon", sinkhorn_epsilon)
        if not isinstance(sinkhorn_gather_distributed, bool):
            raise TypeError("sinkhorn_gather_distributed must be a bool")
        self.sinkhorn_gather_distributed = sinkhorn_gather_distributed
        self.sinkhorn_tol = None if sinkhorn_tol is None else validate_positive(
            "sinkhorn_tol", sinkhorn_tol)
        self.rho = validate_positive("rho", rho, allow_inf=True)

    def subloss(self, z: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        """``-mean_b sum_k q_bk log softmax(z_b / temperature)_k``."""
        return -torch.mean(torch.sum(q * torch.log_softmax(z / self.temperature, dim=1), dim=1))

    def forward(self, high_resolution_outputs: list[torch.Tensor],
                low_resolution_outputs: list[torch.Tensor] | None = None,
                queue_outputs: list[torch.Tensor] | None = None) -> torch.Tensor:
        high = list(high_resolution_outputs)
        low = list(low_resolution_outputs or [])
        if not high:
            raise ValueError("high_resolution_outputs must hold at least one crop's scores")
        if queue_outputs is not None and len(queue_outputs) != len(high):
            raise ValueError(f"queue_outputs must hold one entry per high-resolution crop "
                             f"({len(high)}), got {len(queue_outputs)}")
        crops = high + low
        if len(crops) < 2:
            raise ValueError("the swapped prediction needs at least two crops")
        loss = crops[0].new_zeros(())
        for i, scores in enumerate(high):
            s = scores.detach()
            if queue_outputs is not None:
                s = torch.cat([s, queue_outputs[i].detach()])
            q = swav_codes(s, eps=self.sinkhorn_epsilon, n_iter=self.sinkhorn_iterations,
                           tol=self.sinkhorn_tol, rho=self.rho,
                           distributed=self.sinkhorn_gather_distributed)
            q = q[: scores.shape[0]]
            sub = sum(self.subloss(z, q) for v, z in enumerate(crops) if v != i)
            loss = loss + sub / (len(crops) - 1)
        return loss / len(high)
