"""The small encoder trained in the study."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["Conv1dEncoder", "Encoder"]


class Encoder(nn.Module):
    """MLP backbone plus projection head, the SimCLR layout at toy scale.

    ``backbone``: ``in_dim -> hidden -> hidden`` (Linear, BatchNorm, ReLU); ``head``:
    ``hidden -> hidden -> out_dim`` (Linear, ReLU, Linear). The contrastive loss sees the head's
    output ``z`` of shape ``(N, out_dim)``; linear probes read the backbone features ``h`` of shape
    ``(N, hidden)``, as is customary.
    """

    def __init__(self, in_dim: int, hidden: int = 256, out_dim: int = 32) -> None:
        super().__init__()
        for name, v in (("in_dim", in_dim), ("hidden", hidden), ("out_dim", out_dim)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        self.backbone = nn.Sequential(
            nn.Linear(in_dim, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(),
        )
        self.head = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``z = head(backbone(x))``, shape ``(N, out_dim)``."""
        return self.head(self.backbone(x))

    @torch.no_grad()
    def features(self, x: torch.Tensor, batch: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
        """Backbone features ``h`` ``(N, hidden)`` and embeddings ``z`` ``(N, out_dim)``."""
        was_training = self.training
        self.eval()
        hs, zs = [], []
        for start in range(0, x.shape[0], batch):
            h = self.backbone(x[start : start + batch])
            hs.append(h)
            zs.append(self.head(h))
        self.train(was_training)
        return torch.cat(hs), torch.cat(zs)


class Conv1dEncoder(nn.Module):
    """A small 1-D CNN for MNIST-1D signals ``(N, length)``, with the same projection head.

    ``backbone``: three Conv1d layers (``channels`` filters of width 5, stride 2 each; BatchNorm,
    ReLU), flattened, then Linear to ``hidden`` (BatchNorm, ReLU); ``head``: ``hidden -> hidden
    -> out_dim``. Probes read ``h = backbone(x)``.
    """

    def __init__(self, length: int, hidden: int = 128, out_dim: int = 32,
                 channels: int = 16) -> None:
        super().__init__()
        for name, v in (("length", length), ("hidden", hidden), ("out_dim", out_dim),
                        ("channels", channels)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        flat = length
        layers: list[nn.Module] = []
        for k in range(3):
            layers += [nn.Conv1d(1 if k == 0 else channels, channels, 5, stride=2, padding=2),
                       nn.BatchNorm1d(channels), nn.ReLU()]
            flat = (flat + 1) // 2
        self.backbone = nn.Sequential(
            *layers, nn.Flatten(), nn.Linear(channels * flat, hidden), nn.BatchNorm1d(hidden),
            nn.ReLU(),
        )
        self.head = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``z = head(backbone(x))``, shape ``(N, out_dim)``."""
        return self.head(self.backbone(x[:, None, :]))

    @torch.no_grad()
    def features(self, x: torch.Tensor, batch: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
        """Backbone features ``h`` ``(N, hidden)`` and embeddings ``z`` ``(N, out_dim)``."""
        was_training = self.training
        self.eval()
        hs, zs = [], []
        for start in range(0, x.shape[0], batch):
            h = self.backbone(x[start : start + batch, None, :])
            hs.append(h)
            zs.append(self.head(h))
        self.train(was_training)
        return torch.cat(hs), torch.cat(zs)
