"""CIFAR-10 for users who have it: ResNet-18 (CIFAR variant) trained with the five losses.

The data are read from the standard python-pickle batches (``data_batch_1`` ... ``data_batch_5``
and ``test_batch`` in ``--data-dir``; each a dict with ``b"data"``, uint8 ``(N, 3072)`` in
channel-major order, and ``b"labels"``); nothing is downloaded. The encoder is the CIFAR variant
of ResNet-18 (3x3 ``conv1`` with stride 1, no max-pool; 512-d features) with a
``512 -> 512 -> 128`` projection head, trained on CUDA with bfloat16 autocast when a GPU is present
(in float32 on the CPU). Views are SimCLR's CIFAR recipe done on the batch tensor: random resized
crop (scale 0.2-1) and horizontal flip, colour jitter (brightness, contrast, saturation 0.4) with
probability 0.8, greyscale with probability 0.2. Evaluation is a ridge-classifier linear probe on
the frozen 512-d features of the un-augmented images. The report puts the poster's CIFAR-10
numbers (GCA-NOTES §6.1) beside the run's own; at the sizes a study can afford they are not
comparable (the paper trains 500 epochs), which the report says.
"""

from __future__ import annotations

import math
import pickle
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

__all__ = ["POSTER_CIFAR10", "ResNet18", "load_cifar10", "run_cifar10", "simclr_views"]

POSTER_CIFAR10 = {
    "standard": {"INCE": 92.01, "GCA-INCE": 92.36, "RINCE": 91.05, "GCA-RINCE": 92.09,
                 "GCA-UOT": 92.61},
    "noisy": {"INCE": 82.03, "GCA-INCE": 82.18, "RINCE": 82.60, "GCA-RINCE": 82.76,
              "GCA-UOT": 83.18},
}
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with open(path, "rb") as f:
        d = pickle.load(f, encoding="bytes")
    x = np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
    return x, np.asarray(d[b"labels"], dtype=np.int64)


def load_cifar10(data_dir: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(x_train, y_train, x_test, y_test)`` from the python-pickle batches in ``data_dir``.

    Images are uint8 ``(N, 3, 32, 32)``. Raises ``FileNotFoundError`` naming the missing file.
    """
    root = Path(data_dir)
    if (root / "cifar-10-batches-py").is_dir():
        root = root / "cifar-10-batches-py"
    names = [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]
    missing = [n for n in names if not (root / n).is_file()]
    if missing:
        raise FileNotFoundError(f"{root} lacks the CIFAR-10 batch file(s) {', '.join(missing)}")
    parts = [_read_batch(root / n) for n in names[:5]]
    x_te, y_te = _read_batch(root / "test_batch")
    return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
            x_te, y_te)


class _Block(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.short = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.short = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False),
                                       nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.short(x))


class ResNet18(nn.Module):
    """ResNet-18, CIFAR variant: 3x3 stride-1 ``conv1``, no max-pool, 512-d pooled features;
    ``head``: ``512 -> 512 -> out_dim``."""

    def __init__(self, out_dim: int = 128) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64),
                                   nn.ReLU()]
        c = 64
        for width, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers += [_Block(c, width, stride), _Block(width, width, 1)]
            c = width
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.backbone = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def _normalise(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(MEAN, device=x.device, dtype=x.dtype)[None, :, None, None]
    std = torch.tensor(STD, device=x.device, dtype=x.dtype)[None, :, None, None]
    return (x - mean) / std


def simclr_views(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """One SimCLR-style view of each image of ``x`` (float in ``[0, 1]``, ``(N, 3, H, W)``)."""
    n, dev = x.shape[0], x.device

    def u(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(n, generator=gen, device=dev)

    area = u(0.2, 1.0)
    ratio = torch.exp(u(math.log(3 / 4), math.log(4 / 3)))
    sx = torch.sqrt(area * ratio).clamp(max=1.0)
    sy = torch.sqrt(area / ratio).clamp(max=1.0)
    tx = (1 - sx) * u(-1.0, 1.0)
    ty = (1 - sy) * u(-1.0, 1.0)
    flip = torch.where(torch.rand(n, generator=gen, device=dev) < 0.5, -1.0, 1.0).to(dev)
    theta = torch.zeros(n, 2, 3, device=dev, dtype=x.dtype)
    theta[:, 0, 0] = sx * flip
    theta[:, 0, 2] = tx
    theta[:, 1, 1] = sy
    theta[:, 1, 2] = ty
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    v = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    jitter = (torch.rand(n, generator=gen, device=dev) < 0.8)[:, None, None, None]
    grey = v.mul(torch.tensor([0.299, 0.587, 0.114], device=dev, dtype=x.dtype)[None, :, None,
                                                                                None]).sum(
        1, keepdim=True)
    b = u(0.6, 1.4)[:, None, None, None]
    c = u(0.6, 1.4)[:, None, None, None]
    s = u(0.6, 1.4)[:, None, None, None]
    j = v * b
    mean = j.mean(dim=(1, 2, 3), keepdim=True)
    j = (j - mean) * c + mean
    g = grey * b
    j = g + (j - g) * s
    v = torch.where(jitter, j, v).clamp(0.0, 1.0)
    to_grey = (torch.rand(n, generator=gen, device=dev) < 0.2)[:, None, None, None]
    grey = v.mul(torch.tensor([0.299, 0.587, 0.114], device=dev, dtype=x.dtype)[None, :, None,
                                                                                None]).sum(
        1, keepdim=True)
    return torch.where(to_grey, grey.expand_as(v), v)


@torch.no_grad()
def _features(enc: ResNet18, x: np.ndarray, device: torch.device, batch: int = 512) -> np.ndarray:
    enc.eval()
    out = []
    for s in range(0, len(x), batch):
        xb = torch.from_numpy(x[s : s + batch]).to(device).float().div(255.0)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16,
                            enabled=device.type == "cuda"):
            out.append(enc.backbone(_normalise(xb)).float().cpu().numpy())
    return np.concatenate(out).astype(np.float64)


def run_cifar10(data_dir: str | Path, losses: tuple[str, ...], loss_settings: Any, *,
                epochs: int, batch_size: int, n_seeds: int, seed: int, device: torch.device,
                tick: Any, limit_steps: int | None = None) -> dict[str, Any]:
    """Train one ResNet-18 per loss and seed; return probe accuracies beside the poster's.

    ``limit_steps`` caps the optimiser steps per run (for smoke tests).
    """
    from otcl.experiments.datasets import ridge_probe
    from otcl.experiments.registry import build_loss

    x_tr, y_tr, x_te, y_te = load_cifar10(data_dir)
    batch = min(batch_size, len(x_tr))
    out: dict[str, Any] = {"n_train": len(x_tr), "n_test": len(x_te), "epochs": epochs,
                           "batch_size": batch, "device": str(device),
                           "amp": "bfloat16" if device.type == "cuda" else "off",
                           "losses": {}, "poster": POSTER_CIFAR10}
    for name in losses:
        accs, secs = [], []
        for k in range(n_seeds):
            run_seed = seed * 1000 + k
            torch.manual_seed(2 * run_seed)
            enc = ResNet18().to(device)
            opt = torch.optim.Adam(enc.parameters(), lr=3e-4, weight_decay=1e-6)
            loss = build_loss(name, loss_settings)
            gen = torch.Generator(device=device).manual_seed(2 * run_seed + 1)
            order = np.random.default_rng(run_seed)
            steps, start = 0, time.perf_counter()
            enc.train()
            for _ in range(epochs):
                perm = order.permutation(len(x_tr))
                for b in range(len(x_tr) // batch):
                    xb = torch.from_numpy(x_tr[perm[b * batch : (b + 1) * batch]]).to(device)
                    xb = xb.float().div(255.0)
                    v = _normalise(torch.cat([simclr_views(xb, gen), simclr_views(xb, gen)]))
                    with torch.autocast(device_type=device.type, dtype=torch.bfloat16,
                                        enabled=device.type == "cuda"):
                        z = enc(v).float()
                    value = loss(z[:batch], z[batch:])
                    opt.zero_grad(set_to_none=True)
                    value.backward()
                    opt.step()
                    steps += 1
                    if limit_steps is not None and steps >= limit_steps:
                        break
                if limit_steps is not None and steps >= limit_steps:
                    break
            secs.append(time.perf_counter() - start)
            acc = ridge_probe(_features(enc, x_tr, device), y_tr, _features(enc, x_te, device),
                              y_te)
            accs.append(acc)
            tick(f"cifar10/{name}/seed{k}")
        out["losses"][name] = {"probe_accuracy": float(np.mean(accs)), "values": accs,
                               "train_seconds": secs}
    flat = x_tr.reshape(len(x_tr), -1).astype(np.float64) / 255.0
    out["raw_probe"] = ridge_probe(flat, y_tr, x_te.reshape(len(x_te), -1) / 255.0, y_te)
    return out
