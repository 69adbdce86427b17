"""MNIST-1D with controlled positive views, generated from the templates of the ``mnist1d`` package.

MNIST-1D (Greydanus & Kobak, 2024) draws each sample from one of ten 12-point digit templates by a
chain of random transforms (`mnist1d.transform.transform`): pad with ``p`` zeros and dilate to 72
points, scale the amplitude, translate (cyclically) by ``k`` points, fill the background with
correlated noise, add i.i.d. noise, shear, and subsample to 40 points. The package draws every
parameter from NumPy's global generator inside that function; here the parameters are drawn
explicitly, so that a sample's parameters can be kept and only part of its randomness redrawn.
[`render`][otcl.experiments.mnist1d_views.render] applies the same chain to explicit parameters (a
test checks it against ``mnist1d.transform.transform`` draw for draw); nothing is downloaded.

**View recipe.** A sample is a template with drawn parameters ``(p, amplitude, k, shear)`` and
its own noise. Each of its views keeps ``p`` and ``shear``, moves the translation by an extra
integer shift uniform in ``[-max_shift, max_shift]`` points (of the 72-point grid), multiplies the
amplitude by a factor uniform in ``[1 - max_scale, 1 + max_scale]``, and redraws both noises
(correlated background noise and i.i.d. noise) at the dataset's scales. Views of one sample are
therefore close, but no view is a copy of the sample or of another member of its class.

**False positives.** [`view_pairs`][otcl.experiments.mnist1d_views.view_pairs] replaces, for a
chosen share of rows, the second view by a view of a sample of another class (a known false-positive
pair) and returns which rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "MNIST1D",
    "SampleParams",
    "ViewRecipe",
    "draw_params",
    "make_mnist1d",
    "render",
    "view_pairs",
]


def _args() -> object:
    from mnist1d.data import get_dataset_args

    return get_dataset_args()


def _templates() -> dict:
    from mnist1d.data import get_templates

    return get_templates()


@dataclass(frozen=True)
class SampleParams:
    """Transform parameters of ``n`` samples (arrays of shape ``(n,)``).

    ``label``: digit; ``pad``: zeros appended before dilation (``[36, 60]``); ``amp``: amplitude
    factor; ``shift``: cyclic translation in points of the 72-point grid; ``shear``: the shear
    coefficient.
    """

    label: np.ndarray
    pad: np.ndarray
    amp: np.ndarray
    shift: np.ndarray
    shear: np.ndarray

    def take(self, idx: np.ndarray) -> SampleParams:
        return SampleParams(*(getattr(self, f)[idx] for f in self.__dataclass_fields__))


def draw_params(labels: np.ndarray, rng: np.random.Generator) -> SampleParams:
    """Parameters distributed as in ``mnist1d.transform.transform`` with the default arguments."""
    a = _args()
    n = len(labels)
    low, high = a.padding
    return SampleParams(
        label=np.asarray(labels, dtype=np.int64),
        pad=low + (rng.random(n) * (high - low + 1)).astype(np.int64),
        amp=1.0 + a.scale_coeff * (rng.random(n) - 0.5),
        shift=rng.integers(0, a.max_translation, n),
        shear=a.shear_scale * (rng.random(n) - 0.5),
    )


def _interp_matrix(n_in: int, n_out: int) -> np.ndarray:
    """``(n_out, n_in)`` matrix of linear interpolation from ``linspace(0, 1, n_in)`` grids."""
    pos = np.linspace(0.0, 1.0, n_out) * (n_in - 1)
    lo = np.minimum(np.floor(pos).astype(int), n_in - 2)
    frac = pos - lo
    m = np.zeros((n_out, n_in))
    m[np.arange(n_out), lo] = 1.0 - frac
    m[np.arange(n_out), lo + 1] += frac
    return m


def render(params: SampleParams, corr_noise: np.ndarray, iid_noise: np.ndarray) -> np.ndarray:
    """The MNIST-1D signals ``(n, 40)`` of ``params`` with the given standard-normal noises.

    ``corr_noise`` and ``iid_noise`` are ``(n, 72)`` standard normal draws; they are scaled (and
    the first smoothed by a Gaussian filter of width 2) as in ``mnist1d.transform.transform``.
    Unlike ``mnist1d.data.make_dataset``, no dataset-wide standardisation is applied.
    """
    from scipy.ndimage import gaussian_filter1d

    a = _args()
    tpl = _templates()["x"]
    n = len(params.label)
    length = a.template_len + a.padding[-1]  # 72
    out = np.empty((n, length))
    eps = 1e-8
    for p in np.unique(params.pad):
        rows = np.flatnonzero(params.pad == p)
        padded = np.concatenate([tpl[params.label[rows]] + eps, np.zeros((len(rows), p))], axis=1)
        out[rows] = padded @ _interp_matrix(a.template_len + p, length).T
    out *= params.amp[:, None]
    cols = (np.arange(length)[None, :] - params.shift[:, None]) % length
    out = np.take_along_axis(out, cols, axis=1)
    background = gaussian_filter1d(a.corr_noise_scale * corr_noise, 2, axis=1, mode="reflect")
    out = np.where(out != 0, out, background)
    out = out + a.iid_noise_scale * iid_noise
    out = out - params.shear[:, None] * np.linspace(-0.5, 0.5, length)[None, :]
    return out @ _interp_matrix(length, a.final_seq_length).T


@dataclass(frozen=True)
class ViewRecipe:
    """How views of a sample differ from it: extra shift (points), amplitude factor, new noise."""

    max_shift: int = 4
    max_scale: float = 0.1

    def describe(self) -> str:
        return (f"same template, padding and shear; translation moved by an extra integer shift "
                f"in [-{self.max_shift}, {self.max_shift}] of 72 points; amplitude times a factor "
                f"in [{1 - self.max_scale:g}, {1 + self.max_scale:g}]; correlated background "
                "noise and i.i.d. noise redrawn")


@dataclass(frozen=True)
class MNIST1D:
    """Train and test samples, their parameters, and the standardisation of the signals.

    ``x_*``: ``(n, 40)`` float32, standardised by the training set's mean and standard deviation
    (``mean``, ``std``), as ``mnist1d.data.make_dataset`` does for its whole set; ``y_*`` labels;
    ``p_*`` the samples' [`SampleParams`][otcl.experiments.mnist1d_views.SampleParams].
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    p_train: SampleParams
    p_test: SampleParams
    mean: float
    std: float

    def views(self, params: SampleParams, recipe: ViewRecipe,
              rng: np.random.Generator) -> np.ndarray:
        """One view of each sample of ``params`` (standardised ``(n, 40)`` float32)."""
        n = len(params.label)
        moved = SampleParams(
            label=params.label,
            pad=params.pad,
            amp=params.amp * (1.0 + recipe.max_scale * (2.0 * rng.random(n) - 1.0)),
            shift=params.shift + rng.integers(-recipe.max_shift, recipe.max_shift + 1, n),
            shear=params.shear,
        )
        x = render(moved, rng.standard_normal((n, 72)), rng.standard_normal((n, 72)))
        return ((x - self.mean) / self.std).astype(np.float32)


def make_mnist1d(n_train: int, n_test: int, seed: int) -> MNIST1D:
    """Draw a balanced MNIST-1D train and test set from ``numpy.random.default_rng(seed)``."""
    rng = np.random.default_rng(seed)

    def draw(n: int) -> tuple[np.ndarray, SampleParams]:
        labels = rng.permutation(np.arange(n) % 10)
        params = draw_params(labels, rng)
        return render(params, rng.standard_normal((n, 72)), rng.standard_normal((n, 72))), params

    x_tr, p_tr = draw(n_train)
    x_te, p_te = draw(n_test)
    mean, std = float(x_tr.mean()), float(x_tr.std())
    return MNIST1D(
        ((x_tr - mean) / std).astype(np.float32), p_tr.label.copy(),
        ((x_te - mean) / std).astype(np.float32), p_te.label.copy(),
        p_tr, p_te, mean, std,
    )


def view_pairs(data: MNIST1D, params: SampleParams, recipe: ViewRecipe,
               rng: np.random.Generator, fp_fraction: float = 0.0,
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two views of each sample, with ``round(fp_fraction * n)`` false-positive pairs.

    In a false-positive row the second view is a view of a sample of another class from the same
    batch. Returns ``(v1, v2, corrupted)``; ``corrupted`` is a boolean ``(n,)`` array.
    """
    if not 0.0 <= fp_fraction < 1.0:
        raise ValueError(f"fp_fraction must be in [0, 1), got {fp_fraction}")
    n = len(params.label)
    source = np.arange(n)
    corrupted = np.zeros(n, dtype=bool)
    k = round(fp_fraction * n)
    if k:
        rows = rng.choice(n, size=k, replace=False)
        for i in rows:
            others = np.flatnonzero(params.label != params.label[i])
            if len(others):
                source[i] = rng.choice(others)
                corrupted[i] = True
    v1 = data.views(params, recipe, rng)
    v2 = data.views(params.take(source), recipe, rng)
    return v1, v2, corrupted
