"""Evaluation metrics: linear probes, Wang–Isola alignment and uniformity, detection AUC."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "Summary",
    "alignment",
    "detection_auc",
    "few_shot_probe",
    "linear_probe",
    "summarize",
    "uniformity",
]


def _fit_probe(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray,
               y_test: np.ndarray, c: float) -> float:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(x_train)
    clf = LogisticRegression(C=c, max_iter=2000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(scaler.transform(x_train), y_train)
    return float(clf.score(scaler.transform(x_test), y_test))


def linear_probe(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray,
                 y_test: np.ndarray, c: float = 1.0) -> float:
    """Test accuracy of an L2-regularised logistic regression on standardised frozen features.

    ``x_*``: ``(n, D)`` features, ``y_*``: ``(n,)`` integer labels; ``c`` is sklearn's inverse
    regularisation strength ``C``.
    """
    return _fit_probe(x_train, y_train, x_test, y_test, c)


def few_shot_probe(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray,
                   y_test: np.ndarray, *, shots: int, draws: int, rng: np.random.Generator,
                   c: float = 1.0) -> float:
    """Mean test accuracy of linear probes fitted on ``shots`` labelled samples per class.

    Averages over ``draws`` random labelled subsets drawn from ``rng``. With few labels the probe
    depends more on how the representation clusters classes, so it separates encoders that a
    full-label probe (close to its ceiling on digits) does not.
    """
    classes = np.unique(y_train)
    accs = []
    for _ in range(draws):
        idx = np.concatenate(
            [rng.choice(np.flatnonzero(y_train == k), size=shots, replace=False) for k in classes]
        )
        accs.append(_fit_probe(x_train[idx], y_train[idx], x_test, y_test, c))
    return float(np.mean(accs))


def _normalize(z: np.ndarray) -> np.ndarray:
    return z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), np.finfo(z.dtype).tiny)


def alignment(z1: np.ndarray, z2: np.ndarray, alpha: float = 2.0) -> float:
    """Wang–Isola alignment ``mean_i ||z1_i - z2_i||^alpha`` of L2-normalised positive pairs."""
    d = np.linalg.norm(_normalize(z1) - _normalize(z2), axis=1)
    return float(np.mean(d**alpha))


def uniformity(z: np.ndarray, t: float = 2.0) -> float:
    """Wang–Isola uniformity ``log mean_{i<j} exp(-t ||z_i - z_j||^2)`` of L2-normalised rows.

    Lower is more uniform; the minimum over the unit sphere in high dimension is about ``-2t``.
    """
    zn = _normalize(z.astype(np.float64))
    sq = np.clip(2.0 - 2.0 * zn @ zn.T, 0.0, None)
    iu = np.triu_indices(len(zn), k=1)
    vals = -t * sq[iu]
    m = vals.max()
    return float(m + math.log(np.mean(np.exp(vals - m))))


def detection_auc(score: np.ndarray, positive: np.ndarray) -> float:
    """ROC AUC of ``score`` for flagging the ``positive`` (boolean) entries (``nan``: one class)."""
    from sklearn.metrics import roc_auc_score

    positive = np.asarray(positive, dtype=bool)
    if positive.all() or not positive.any():
        return math.nan
    return float(roc_auc_score(positive, score))


@dataclass(frozen=True)
class Summary:
    """Mean and (sample) standard deviation of per-seed values."""

    mean: float
    std: float
    values: tuple[float, ...]

    def as_dict(self) -> dict:
        return {"mean": self.mean, "std": self.std, "values": list(self.values)}

    def fmt(self, scale: float = 1.0, digits: int = 2) -> str:
        if math.isnan(self.mean):
            return "n/a"
        if len(self.values) < 2:
            return f"{self.mean * scale:.{digits}f}"
        return f"{self.mean * scale:.{digits}f} ± {self.std * scale:.{digits}f}"


def summarize(values: Sequence[float]) -> Summary:
    """Mean and sample standard deviation (``ddof=1``; 0 for a single value) ignoring NaNs."""
    arr = np.asarray([v for v in values if not math.isnan(v)], dtype=float)
    if arr.size == 0:
        return Summary(math.nan, math.nan, tuple(float(v) for v in values))
    std = float(arr.std(ddof=1)) if arr.size > 1 else 0.0
    return Summary(float(arr.mean()), std, tuple(float(v) for v in values))
