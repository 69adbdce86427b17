"""The datasets of the contrastive section behind one interface
([`StudyData`][otcl.experiments.datasets.StudyData]).

* ``mnist1d`` (default): MNIST-1D drawn from the ``mnist1d`` package's templates, with the view
  recipe and false positives of [`mnist1d_views`][otcl.experiments.mnist1d_views]; a 1-D CNN
  encoder; metric: linear-probe accuracy of the backbone features (chance 10%).
* ``latents``: the latent-recovery testbed of [`latents`][otcl.experiments.latents]; an MLP encoder
  whose output dimension is the latent dimension; metric: R^2 of the linear recovery of the latents
  from the embedding ``z``.
* ``digits``: scikit-learn's 8x8 digits with the pixel augmentations of
  [`data`][otcl.experiments.data] (kept for comparison: every loss reaches the ceiling there).

Linear probes on class labels are ridge-regression classifiers on standardised features
(one-hot targets, ``alpha = 1``): one linear solve, where a logistic regression needs tens of
seconds per encoder on these features; it is the same probe for every encoder and baseline.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from otcl.experiments.config import StudyConfig

__all__ = ["StudyData", "linear_r2", "load_data", "ridge_probe"]


def ridge_probe(h_train: np.ndarray, y_train: np.ndarray, h_test: np.ndarray,
                y_test: np.ndarray, alpha: float = 1.0) -> float:
    """Test accuracy of a ridge classifier on features standardised with the training statistics."""
    from sklearn.linear_model import RidgeClassifier
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(h_train)
    clf = RidgeClassifier(alpha=alpha).fit(scaler.transform(h_train), y_train)
    return float(clf.score(scaler.transform(h_test), y_test))


def linear_r2(f_train: np.ndarray, c_train: np.ndarray, f_test: np.ndarray,
              c_test: np.ndarray) -> float:
    """Test R^2 (averaged over latent coordinates) of least squares ``f -> c`` with intercept."""
    a = np.hstack([f_train, np.ones((len(f_train), 1))])
    coef, *_ = np.linalg.lstsq(a, c_train, rcond=None)
    pred = np.hstack([f_test, np.ones((len(f_test), 1))]) @ coef
    ss_res = np.sum((c_test - pred) ** 2, axis=0)
    ss_tot = np.sum((c_test - c_test.mean(axis=0)) ** 2, axis=0)
    return float(np.mean(1.0 - ss_res / ss_tot))


@dataclass
class StudyData:
    """What the contrastive section needs from a dataset.

    ``x_train``/``x_test``: encoder inputs ``(n, D)`` float32; ``t_train``/``t_test``: probe
    targets (class labels, or latents for ``latents``); ``metric``: ``"accuracy"`` or ``"r2"``;
    ``probe_space``: ``"h"`` (backbone) or ``"z"`` (embedding); ``floor``: chance level of the
    metric (the bottom of honest plot axes); ``views``: a description of the view recipe.
    """

    name: str
    x_train: np.ndarray
    t_train: np.ndarray
    x_test: np.ndarray
    t_test: np.ndarray
    metric: str
    probe_space: str
    floor: float
    views: str
    source: Any = field(repr=False, default=None)

    def score(self, f_train: np.ndarray, f_test: np.ndarray) -> float:
        """The probe metric of features ``f`` (``(n_train, k)``, ``(n_test, k)``)."""
        if self.metric == "r2":
            return linear_r2(f_train, self.t_train, f_test, self.t_test)
        return ridge_probe(f_train, self.t_train, f_test, self.t_test)

    def raw_score(self) -> float:
        """The probe metric of the raw inputs."""
        return self.score(self.x_train.astype(np.float64), self.x_test.astype(np.float64))

    def pairs(self, idx: np.ndarray, rng: np.random.Generator, fp_fraction: float = 0.0,
              split: str = "train", augmentation: str = "standard",
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Two views of the samples ``idx`` of ``split`` with a share of false positives:
        ``(v1, v2, corrupted)`` as NumPy arrays (float32, float32, bool). ``augmentation``
        names the pixel augmentation of ``digits`` (the other datasets have one view recipe)."""
        if self.name == "mnist1d":
            from otcl.experiments.mnist1d_views import view_pairs

            data, recipe = self.source
            params = data.p_train if split == "train" else data.p_test
            return view_pairs(data, params.take(idx), recipe, rng, fp_fraction)
        if self.name == "latents":
            lat = self.source
            if split == "train":
                return lat.pairs(idx, rng, fp_fraction)
            test_view = _TestLatents(lat)
            return test_view.pairs(idx, rng, fp_fraction)
        from otcl.experiments.data import AUGMENTATIONS, make_pairs

        gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
        x = torch.from_numpy((self.x_train if split == "train" else self.x_test)[idx])
        v1, v2, corrupted = make_pairs(x, AUGMENTATIONS[augmentation], gen, fp_fraction)
        return v1.numpy(), v2.numpy(), corrupted.numpy()

    def make_encoder(self, cfg: StudyConfig) -> nn.Module:
        """A fresh encoder for this dataset (initialised from torch's global generator)."""
        from otcl.experiments.models import Conv1dEncoder, Encoder

        d = self.x_train.shape[1]
        if self.name == "mnist1d":
            return Conv1dEncoder(d, hidden=cfg.hidden, out_dim=cfg.out_dim)
        if self.name == "latents":
            return Encoder(d, hidden=cfg.hidden, out_dim=cfg.latent_dim)
        return Encoder(d, hidden=cfg.hidden, out_dim=cfg.out_dim)


class _TestLatents:
    """The test latents seen through
    [`otcl.experiments.latents.Latents.pairs`][otcl.experiments.latents.Latents.pairs]."""

    def __init__(self, lat: Any) -> None:
        self.lat = lat

    def pairs(self, idx: np.ndarray, rng: np.random.Generator,
              fp_fraction: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        import dataclasses

        swapped = dataclasses.replace(self.lat, c_train=self.lat.c_test)
        return swapped.pairs(idx, rng, fp_fraction)


def load_data(cfg: StudyConfig) -> StudyData:
    """The dataset ``cfg.dataset`` drawn (or loaded) with ``cfg.seed``; the same for every loss."""
    if cfg.dataset == "mnist1d":
        from otcl.experiments.mnist1d_views import ViewRecipe, make_mnist1d

        data = make_mnist1d(cfg.n_train, cfg.n_test, cfg.seed)
        recipe = ViewRecipe(max_shift=cfg.view_shift, max_scale=cfg.view_scale)
        return StudyData("mnist1d", data.x_train, data.y_train, data.x_test, data.y_test,
                         "accuracy", "h", 0.1, recipe.describe(), (data, recipe))
    if cfg.dataset == "latents":
        from otcl.experiments.latents import make_latents

        lat = make_latents(cfg.n_train, cfg.n_test, cfg.latent_dim, cfg.latent_kappa,
                           cfg.latent_layers, cfg.seed)
        views = (f"latents uniform on the sphere S^{cfg.latent_dim - 1}; each view is a "
                 f"von Mises-Fisher draw around the latent (kappa = {cfg.latent_kappa:g}) "
                 f"observed through a random invertible {cfg.latent_layers}-layer leaky-ReLU MLP")
        return StudyData("latents", lat.x_train, lat.c_train, lat.x_test, lat.c_test, "r2", "z",
                         0.0, views, lat)
    if cfg.dataset == "digits":
        from otcl.experiments.data import AUGMENTATIONS, load_digits_split

        split = load_digits_split(cfg.seed)
        return StudyData("digits", split.x_train, split.y_train, split.x_test, split.y_test,
                         "accuracy", "h", 0.1, AUGMENTATIONS["standard"].describe(), split)
    raise ValueError(f"dataset must be 'mnist1d', 'latents' or 'digits', got {cfg.dataset!r}")
