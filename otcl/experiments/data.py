"""Data for the study: sklearn digits with two-view augmentations, and synthetic multi-domain data.

Everything is generated locally (``sklearn.datasets.load_digits`` ships with scikit-learn; the
multi-domain data is drawn with NumPy), so the study never downloads anything. Randomness comes
only from the generators passed in.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = [
    "AUGMENTATIONS",
    "Augmentation",
    "DigitsSplit",
    "DomainData",
    "load_digits_split",
    "make_domain_data",
    "make_pairs",
    "make_views",
]

IMAGE_SIDE = 8


@dataclass(frozen=True)
class DigitsSplit:
    """Digits images scaled to ``[0, 1]``, split into train and test (stratified).

    ``x_train``: ``(n_train, 64)`` float32, ``y_train``: ``(n_train,)`` int64; likewise for test.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def load_digits_split(seed: int, test_fraction: float = 0.3) -> DigitsSplit:
    """Load sklearn's 1797 8x8 digits, scale pixels to ``[0, 1]`` and split them.

    The split is stratified by class and drawn from ``numpy.random.default_rng(seed)``.
    """
    from sklearn.datasets import load_digits

    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    y = y.astype(np.int64)
    rng = np.random.default_rng(seed)
    test_idx = []
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        k = round(test_fraction * len(members))
        test_idx.append(rng.choice(members, size=k, replace=False))
    test = np.zeros(len(y), dtype=bool)
    test[np.concatenate(test_idx)] = True
    return DigitsSplit(x[~test], y[~test], x[test], y[test])


@dataclass(frozen=True)
class Augmentation:
    """A two-view augmentation of 8x8 images with pixel values in ``[0, 1]``.

    Each view applies, independently per image: a random shift of up to ``max_shift`` pixels in
    each direction (zero fill), additive Gaussian noise of standard deviation ``noise``, and with
    probability ``erase_prob`` a random ``erase x erase`` square set to zero. Pixels are clipped
    to ``[0, 1]`` after the noise.
    """

    max_shift: int
    noise: float
    erase: int
    erase_prob: float

    def __post_init__(self) -> None:
        if not 0 <= self.max_shift < IMAGE_SIDE:
            raise ValueError(f"max_shift must be in [0, {IMAGE_SIDE}), got {self.max_shift}")
        if self.noise < 0:
            raise ValueError(f"noise must be >= 0, got {self.noise}")
        if not 0 <= self.erase <= IMAGE_SIDE:
            raise ValueError(f"erase must be in [0, {IMAGE_SIDE}], got {self.erase}")
        if not 0.0 <= self.erase_prob <= 1.0:
            raise ValueError(f"erase_prob must be in [0, 1], got {self.erase_prob}")

    def describe(self) -> str:
        """A one-line human description, e.g. for the report."""
        parts = []
        if self.max_shift:
            parts.append(f"±{self.max_shift}-pixel shifts")
        if self.noise:
            parts.append(f"Gaussian noise σ = {self.noise:g}")
        if self.erase and self.erase_prob:
            how = ("in every view" if self.erase_prob == 1
                   else f"with probability {self.erase_prob:g}")
            parts.append(f"a {self.erase}×{self.erase} hole {how}")
        return ", ".join(parts) if parts else "identity"

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Augment a batch ``x`` of shape ``(N, 64)``; returns a new ``(N, 64)`` tensor."""
        n = x.shape[0]
        dev = x.device
        img = x.reshape(n, IMAGE_SIDE, IMAGE_SIDE)
        if self.max_shift > 0:
            s = self.max_shift
            padded = torch.nn.functional.pad(img, (s, s, s, s))
            dy = torch.randint(0, 2 * s + 1, (n,), generator=gen, device=dev)
            dx = torch.randint(0, 2 * s + 1, (n,), generator=gen, device=dev)
            ar = torch.arange(IMAGE_SIDE, device=dev)
            rows = (dy[:, None] + ar[None, :])[:, :, None]
            cols = (dx[:, None] + ar[None, :])[:, None, :]
            img = padded[torch.arange(n, device=dev)[:, None, None], rows, cols]
        if self.noise > 0:
            noise = torch.randn(img.shape, generator=gen, device=dev, dtype=img.dtype)
            img = (img + self.noise * noise).clamp(0.0, 1.0)
        if self.erase > 0 and self.erase_prob > 0:
            k = self.erase
            top = torch.randint(0, IMAGE_SIDE - k + 1, (n,), generator=gen, device=dev)
            left = torch.randint(0, IMAGE_SIDE - k + 1, (n,), generator=gen, device=dev)
            apply = torch.rand(n, generator=gen, device=dev) < self.erase_prob
            ar = torch.arange(IMAGE_SIDE, device=dev)
            in_rows = (ar[None, :] >= top[:, None]) & (ar[None, :] < top[:, None] + k)
            in_cols = (ar[None, :] >= left[:, None]) & (ar[None, :] < left[:, None] + k)
            hole = in_rows[:, :, None] & in_cols[:, None, :] & apply[:, None, None]
            img = img.masked_fill(hole, 0.0)
        return img.reshape(n, IMAGE_SIDE * IMAGE_SIDE)


AUGMENTATIONS: dict[str, Augmentation] = {
    # +-1 pixel shifts, mild noise, a 3x3 hole half of the time.
    "standard": Augmentation(max_shift=1, noise=0.1, erase=3, erase_prob=0.5),
    # The "noisy views" setting: strong noise and a 4x4 hole (a quarter of the image) in every
    # view. (A 5x5 hole leaves too little: encoders trained on it probe below an untrained one.)
    "strong": Augmentation(max_shift=1, noise=0.3, erase=4, erase_prob=1.0),
}


def make_pairs(
    x: torch.Tensor,
    aug: Augmentation,
    gen: torch.Generator,
    fp_fraction: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two views of each image in ``x`` (``(N, 64)``), with a share of false-positive pairs.

    For ``round(fp_fraction * N)`` randomly chosen rows, the second view is a view of a different,
    randomly chosen image of the batch (a false positive). Returns ``(v1, v2, corrupted)`` with
    ``corrupted`` a boolean ``(N,)`` tensor marking those rows.
    """
    if not 0.0 <= fp_fraction < 1.0:
        raise ValueError(f"fp_fraction must be in [0, 1), got {fp_fraction}")
    n = x.shape[0]
    dev = x.device
    v1 = aug(x, gen)
    source = torch.arange(n, device=dev)
    corrupted = torch.zeros(n, dtype=torch.bool, device=dev)
    k = round(fp_fraction * n)
    if k > 0 and n > 1:
        rows = torch.randperm(n, generator=gen, device=dev)[:k]
        # a different image: shift the index by a random non-zero offset
        offset = torch.randint(1, n, (k,), generator=gen, device=dev)
        source[rows] = (rows + offset) % n
        corrupted[rows] = True
    v2 = aug(x[source], gen)
    return v1, v2, corrupted


def make_views(x: torch.Tensor, noise: float, drop: float, gen: torch.Generator,
               style: torch.Tensor | None = None, style_scale: float = 0.0) -> torch.Tensor:
    """A view of feature vectors ``x`` (``(N, D)``).

    ``x + noise * e + style_scale * (c @ style)``, then each feature is zeroed with probability
    ``drop``; ``e`` is standard normal ``(N, D)`` and ``c`` standard normal ``(N, K)`` mixing the
    ``K`` rows of ``style`` (e.g. the domain offsets: a "style jitter" that makes the domain a
    nuisance the views do not preserve, as colour jitter does for image domains).
    """
    jitter = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
    out = x + noise * jitter
    if style is not None and style_scale > 0:
        c = torch.randn((x.shape[0], style.shape[0]), generator=gen, device=x.device,
                        dtype=x.dtype)
        out = out + style_scale * (c @ style)
    keep = torch.rand(x.shape, generator=gen, device=x.device) >= drop
    return out * keep


@dataclass(frozen=True)
class DomainData:
    """Synthetic multi-domain data: ``x`` ``(N, D)`` float32, ``y`` class and ``domain`` labels,
    and the domain offset vectors ``offsets`` ``(n_domains, D)`` (after distortion: the
    direction in which domain ``d`` displaces its samples)."""

    x: np.ndarray
    y: np.ndarray
    domain: np.ndarray
    offsets: np.ndarray


def make_domain_data(
    rng: np.random.Generator,
    *,
    n_per_domain: int,
    n_domains: int = 4,
    n_classes: int = 5,
    dim: int = 32,
    latent: int = 8,
    class_scale: float = 1.0,
    domain_scale: float = 0.8,
    distortion: float = 0.3,
    noise: float = 1.5,
) -> DomainData:
    """Draw ``n_domains * n_per_domain`` samples ``x = A_d (W mu_y + o_d) + noise``.

    * ``mu_y``: class means on a ``latent``-dimensional sphere of radius ``class_scale``, lifted
      by a shared random ``W`` (``dim x latent``, orthonormal columns);
    * ``o_d``: a per-domain offset of norm ``domain_scale``;
    * ``A_d = I + distortion * G_d / sqrt(dim)``: a per-domain linear distortion;
    * isotropic Gaussian noise of standard deviation ``noise / sqrt(dim)`` per coordinate.

    Classes are balanced within each domain.
    """
    if n_per_domain < n_classes:
        raise ValueError(f"n_per_domain must be >= n_classes ({n_classes}), got {n_per_domain}")
    w, _ = np.linalg.qr(rng.standard_normal((dim, latent)))
    mu = rng.standard_normal((n_classes, latent))
    mu *= class_scale / np.linalg.norm(mu, axis=1, keepdims=True)
    xs, ys, ds, offs = [], [], [], []
    for d in range(n_domains):
        offset = rng.standard_normal(dim)
        offset *= domain_scale / np.linalg.norm(offset)
        a = np.eye(dim) + distortion * rng.standard_normal((dim, dim)) / np.sqrt(dim)
        y = np.arange(n_per_domain) % n_classes
        clean = mu[y] @ w.T + offset
        offs.append(a @ offset)
        x = clean @ a.T + noise / np.sqrt(dim) * rng.standard_normal((n_per_domain, dim))
        xs.append(x)
        ys.append(y)
        ds.append(np.full(n_per_domain, d))
    x = np.concatenate(xs).astype(np.float32)
    perm = rng.permutation(len(x))
    return DomainData(
        x[perm],
        np.concatenate(ys)[perm].astype(np.int64),
        np.concatenate(ds)[perm].astype(np.int64),
        np.stack(offs).astype(np.float32),
    )
