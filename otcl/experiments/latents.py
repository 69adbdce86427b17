"""A latent-recovery testbed after Zimmermann et al. (2021), "Contrastive learning inverts the
data-generating process".

Latents ``c`` are uniform on the unit sphere ``S^{d-1}``; a positive of ``c`` is a draw from the
von Mises–Fisher distribution ``vMF(c, kappa)``; observations are ``x = g(c)`` for a fixed random
invertible MLP ``g``: ``layers`` leaky-ReLU layers (negative slope 0.2; the last one linear), each
with a square matrix ``Q_1 diag(s) Q_2`` (``Q_i`` random orthogonal, ``s`` uniform in
``[0.5, 1.5]``, so every layer's condition number is at most 3) and a random bias. The encoder
sees ``x``; the metric is the R^2 of the best linear map from the encoder's output to ``c``
(1 = the latents are linearly recovered). False positives (a view of another latent) and their
ground truth come for free.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["InvertibleMLP", "Latents", "make_latents", "sample_vmf", "uniform_sphere"]

SLOPE = 0.2


def uniform_sphere(n: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` points uniform on the unit sphere in ``R^dim`` (``(n, dim)``)."""
    x = rng.standard_normal((n, dim))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def sample_vmf(mu: np.ndarray, kappa: float, rng: np.random.Generator) -> np.ndarray:
    """One draw from ``vMF(mu_i, kappa)`` per row of ``mu`` (``(n, d)``, unit rows); Wood (1994).

    The cosine ``w`` with the mean direction is drawn by Wood's rejection sampler, then a uniform
    direction orthogonal to ``mu_i`` completes the point: ``w mu_i + sqrt(1 - w^2) v``.
    """
    if kappa <= 0:
        raise ValueError(f"kappa must be > 0, got {kappa}")
    n, d = mu.shape
    m = d - 1
    b = m / (2.0 * kappa + np.sqrt(4.0 * kappa**2 + m**2))
    x0 = (1.0 - b) / (1.0 + b)
    c = kappa * x0 + m * np.log(1.0 - x0**2)
    w = np.empty(n)
    todo = np.arange(n)
    while todo.size:
        z = rng.beta(m / 2.0, m / 2.0, todo.size)
        cand = (1.0 - (1.0 + b) * z) / (1.0 - (1.0 - b) * z)
        u = rng.random(todo.size)
        ok = kappa * cand + m * np.log(1.0 - x0 * cand) - c >= np.log(u)
        w[todo[ok]] = cand[ok]
        todo = todo[~ok]
    v = rng.standard_normal((n, d))
    v -= np.sum(v * mu, axis=1, keepdims=True) * mu
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return w[:, None] * mu + np.sqrt(np.clip(1.0 - w**2, 0.0, None))[:, None] * v


@dataclass(frozen=True)
class InvertibleMLP:
    """``g(c)``: square well-conditioned layers with leaky-ReLU between them (see the module)."""

    weights: tuple[np.ndarray, ...]
    biases: tuple[np.ndarray, ...]

    @classmethod
    def random(cls, dim: int, layers: int, rng: np.random.Generator) -> InvertibleMLP:
        ws, bs = [], []
        for _ in range(layers):
            q1, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
            q2, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
            ws.append(q1 @ np.diag(rng.uniform(0.5, 1.5, dim)) @ q2)
            bs.append(0.1 * rng.standard_normal(dim))
        return cls(tuple(ws), tuple(bs))

    def __call__(self, c: np.ndarray) -> np.ndarray:
        x = c
        for k, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            x = x @ w.T + b
            if k < len(self.weights) - 1:
                x = np.where(x > 0, x, SLOPE * x)
        return x

    def inverse(self, x: np.ndarray) -> np.ndarray:
        """``g^{-1}(x)`` (each layer is invertible: a square full-rank matrix, leaky-ReLU)."""
        c = x
        for k in range(len(self.weights) - 1, -1, -1):
            if k < len(self.weights) - 1:
                c = np.where(c > 0, c, c / SLOPE)
            c = np.linalg.solve(self.weights[k], (c - self.biases[k]).T).T
        return c


@dataclass(frozen=True)
class Latents:
    """Train and test latents ``c_*`` and observations ``x_*`` (standardised with ``mean``,
    ``std`` of the training observations), the mixing ``g`` and the positives' ``kappa``."""

    c_train: np.ndarray
    x_train: np.ndarray
    c_test: np.ndarray
    x_test: np.ndarray
    g: InvertibleMLP
    kappa: float
    mean: np.ndarray
    std: np.ndarray

    def observe(self, c: np.ndarray) -> np.ndarray:
        return ((self.g(c) - self.mean) / self.std).astype(np.float32)

    def pairs(self, idx: np.ndarray, rng: np.random.Generator, fp_fraction: float = 0.0,
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Two vMF views of the training latents ``idx``; a share of second views are views of
        another latent of the batch. Returns ``(v1, v2, corrupted)``."""
        if not 0.0 <= fp_fraction < 1.0:
            raise ValueError(f"fp_fraction must be in [0, 1), got {fp_fraction}")
        c = self.c_train[idx]
        n = len(idx)
        source = np.arange(n)
        corrupted = np.zeros(n, dtype=bool)
        k = round(fp_fraction * n)
        if k and n > 1:
            rows = rng.choice(n, size=k, replace=False)
            source[rows] = (rows + rng.integers(1, n, k)) % n
            corrupted[rows] = True
        v1 = self.observe(sample_vmf(c, self.kappa, rng))
        v2 = self.observe(sample_vmf(c[source], self.kappa, rng))
        return v1, v2, corrupted


def make_latents(n_train: int, n_test: int, dim: int, kappa: float, layers: int,
                 seed: int) -> Latents:
    """Draw the mixing ``g`` and uniform latents from ``numpy.random.default_rng(seed)``."""
    rng = np.random.default_rng(seed)
    g = InvertibleMLP.random(dim, layers, rng)
    c_tr = uniform_sphere(n_train, dim, rng)
    c_te = uniform_sphere(n_test, dim, rng)
    x_tr = g(c_tr)
    mean, std = x_tr.mean(axis=0), x_tr.std(axis=0)
    return Latents(c_tr, ((x_tr - mean) / std).astype(np.float32), c_te,
                   ((g(c_te) - mean) / std).astype(np.float32), g, kappa, mean, std)
