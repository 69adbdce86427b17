"""Training loop shared by the study's sections: mini-batch contrastive training of an encoder."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from otcl.experiments.models import Encoder

__all__ = ["TrainResult", "seed_everything", "torch_generator", "train_encoder"]

PairSampler = Callable[[torch.Tensor, torch.Generator], tuple[torch.Tensor, torch.Tensor]]
"""Maps a batch ``x`` ``(N, D)`` and a generator to two views ``(v1, v2)``, each ``(N, D)``."""

LossCall = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""Maps ``(z1, z2, batch_index)`` to a scalar loss (``batch_index`` rows of the training set)."""


def seed_everything(seed: int) -> None:
    """Seed torch's global generators (CPU and CUDA); NumPy code receives explicit Generators."""
    torch.manual_seed(seed)


def torch_generator(seed: int, device: torch.device | str) -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded with ``seed``."""
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    return gen


@dataclass
class TrainResult:
    """The trained encoder and the mean training loss of every epoch."""

    encoder: Encoder
    losses: list[float] = field(default_factory=list)

    @property
    def finite(self) -> bool:
        return all(math.isfinite(v) for v in self.losses)


def train_encoder(
    x: torch.Tensor,
    loss_call: LossCall,
    sample_pairs: PairSampler,
    *,
    epochs: int,
    batch_size: int,
    seed: int,
    hidden: int,
    out_dim: int,
    lr: float = 1e-3,
    weight_decay: float = 1e-5,
    on_epoch: Callable[[int, float], None] | None = None,
) -> TrainResult:
    """Train a fresh [`Encoder`][otcl.experiments.models.Encoder] on ``x`` (``(n, D)``, already on
    the target device).

    Each epoch visits a random permutation of ``x`` in batches of ``batch_size`` (the last
    incomplete batch is dropped so that every loss sees the same batch size), forms two views
    with ``sample_pairs``, and takes an Adam step on ``loss_call(enc(v1), enc(v2), index)``.
    The encoder's initial weights and all augmentation draws derive from ``seed``. Training stops
    early, with the non-finite value recorded, if a loss becomes NaN or infinite.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    n = x.shape[0]
    if not 2 <= batch_size <= n:
        raise ValueError(f"batch_size must be in [2, {n}], got {batch_size}")
    device = x.device
    # two distinct streams per seed: 2*seed for the weights, 2*seed+1 for batches and views
    seed_everything(2 * seed)
    enc = Encoder(x.shape[1], hidden=hidden, out_dim=out_dim).to(device)
    opt = torch.optim.Adam(enc.parameters(), lr=lr, weight_decay=weight_decay)
    gen = torch_generator(2 * seed + 1, device)
    result = TrainResult(enc)
    enc.train()
    n_batches = n // batch_size
    for epoch in range(epochs):
        perm = torch.randperm(n, generator=gen, device=device)
        total = 0.0
        for b in range(n_batches):
            idx = perm[b * batch_size : (b + 1) * batch_size]
            v1, v2 = sample_pairs(x[idx], gen)
            z = enc(torch.cat([v1, v2]))
            value = loss_call(z[:batch_size], z[batch_size:], idx)
            opt.zero_grad(set_to_none=True)
            value.backward()
            nn.utils.clip_grad_norm_(enc.parameters(), 10.0)
            opt.step()
            total += float(value.detach())
        mean = total / n_batches
        result.losses.append(mean)
        if on_epoch is not None:
            on_epoch(epoch, mean)
        if not math.isfinite(mean):
            break
    enc.eval()
    return result
