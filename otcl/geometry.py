"""Geometry: costs between embeddings, batch layouts of views, self-masks and positive pairs.

The caller always says which problem is meant; the layouts are:

* **all-views, two arrays** (the default of a two-view call ``f(z1, z2)``): the SimCLR / lightly /
  pytorch-metric-learning problem. ``z1, z2`` of shape ``(N, d)`` are stacked into
  ``z = [z1; z2]`` (``2N`` rows, the ``"blocked"`` layout below); every view is an anchor, the
  other view of its sample is its positive and the remaining ``2N - 2`` views are its negatives.
* **all-views, one array** ``z`` of shape ``(V N, d)`` holding ``V`` views of ``N`` samples,
  either ``"blocked"`` (rows ``v N .. (v+1) N - 1`` are view ``v``) or ``"interleaved"`` (rows
  ``V k .. V k + V - 1`` are the views of sample ``k``). In every all-views problem the cost is
  ``VN x VN`` and self-pairs are excluded by a hard mask (``P_ii = 0``), never by a large finite
  cost.
* **queue** (``layout="queue"``, MoCo / lightly's memory bank): as cross-view, but the negatives of
  row ``i`` are the extra rows of ``z2`` only (the other keys of the batch are masked out).
* **cross-view** (``layout="cross"``, CLIP-style, one direction): ``z1 (N, d)``, ``z2 (M, d)``
  with ``M >= N``; the cost is ``N x M`` with row ``i`` = view 1 of sample ``i`` and column ``j`` =
  view 2 of sample ``j``; positives on the diagonal ``(i, i)``. Columns ``N .. M - 1`` are extra
  negatives only (a memory bank or MoCo queue). No self-pairs.
* **single batch** (``f(z, labels=y)`` or ``f(z, target=T)`` without a layout): every row is an
  anchor, self-pairs are masked, and the positives come from the labels or the target
  (supervised contrastive learning).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from otcl.backend import (
    Array,
    check_compatible,
    device_of,
    fill_diagonal,
    masked_fill,
    product_t,
    stop_gradient,
)
from otcl.tracing import definitely, plain_ops

__all__ = [
    "LAYOUTS",
    "METRICS",
    "ViewBatch",
    "cost_matrix",
    "partner_index",
    "sample_index",
    "view_batch",
]

METRICS = ("neg_cosine", "cosine", "dot", "sqeuclidean")
LAYOUTS = ("blocked", "interleaved")
"""Layouts of an all-views batch ``z``; ``"cross"`` and ``"queue"`` name the cross-view ones."""
CROSS_LAYOUTS = ("cross", "queue")
"""The cross-view layouts of two arrays ``z1 (N, d)``, ``z2 (M, d)``."""


def _normalise_rows(name: str, x: Array, xp: Any, peak: Array | None = None) -> Array:
    """``x_i / ||x_i||`` per row, safe for any scale: each row is first divided by its largest
    absolute entry ``peak`` (``(n, 1)``, [`_row_peaks`][otcl.geometry._row_peaks]; computed
    here when not given), so that norms of rows scaled far beyond ``sqrt(max float)`` (about
    ``1.8e19`` in float32) neither overflow to ``inf`` nor underflow to 0.

    The quotient by the row maximum leaves ``x_i / ||x_i||`` unchanged, values and
    derivatives: ``s / ||s||`` does not change when ``s`` is scaled. The maximum is therefore a
    constant for automatic differentiation ([`stop_gradient`][otcl.backend.stop_gradient]);
    its derivative would only add terms that cancel (and cost a backward pass through the
    maximum and the absolute value)."""
    if peak is None:
        peak = _row_peaks(name, x, xp)
    if definitely(xp.any(peak == 0)):
        raise ValueError(f"{name} has a row of zero norm; the cosine cost is undefined there")
    scaled = x / peak
    return scaled / xp.linalg.vector_norm(scaled, axis=-1, keepdims=True)


def _row_peaks(name: str, z: Array, xp: Any) -> Array:
    """``max_j |z_ij|`` per row, shape ``(n, 1)``; ``ValueError`` naming ``name`` when an entry
    is NaN or infinite (the maximum of a row with a NaN is NaN, with an infinity infinite: one
    check per row instead of one per entry). A constant for automatic differentiation
    ([`_normalise_rows`][otcl.geometry._normalise_rows]), so no graph records it."""
    peak = xp.max(xp.abs(stop_gradient(z)), axis=-1, keepdims=True)
    if definitely(xp.any(~xp.isfinite(peak))):
        raise ValueError(f"{name} contains NaN or inf")
    return peak


def cost_matrix(x: Array, y: Array, metric: str = "neg_cosine") -> Array:
    """Pairwise cost ``C`` of shape ``(n, m)`` between rows of ``x (n, d)`` and ``y (m, d)``.

    * ``"neg_cosine"``: ``C_ij = -cos(x_i, y_j)`` (the paper's ``C = -s``; default);
    * ``"cosine"``: ``C_ij = 1 - cos(x_i, y_j)``, in ``[0, 2]``;
    * ``"dot"``: ``C_ij = -<x_i, y_j>``;
    * ``"sqeuclidean"``: ``C_ij = ||x_i - y_j||^2``.

    Cosine similarities are never clamped. Balanced OT and row projections are unchanged by the
    constant offset between ``"cosine"`` and ``"neg_cosine"``; unbalanced OT and RINCE are not.
    """
    xp = check_compatible(x=x, y=y)
    for name, arr in (("x", x), ("y", y)):
        if arr.ndim != 2:
            raise ValueError(f"{name} must have shape (n, d), got {tuple(arr.shape)}")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must have the same dimension, got {x.shape[1]} and {y.shape[1]}")
    px, py = _check_embeddings(xp, x=x, y=y)
    if metric in ("neg_cosine", "cosine"):
        sim = _normalise_rows("x", x, xp, px) @ xp.matrix_transpose(_normalise_rows("y", y, xp, py))
        return -sim if metric == "neg_cosine" else 1 - sim
    if metric == "dot":
        return -(x @ xp.matrix_transpose(y))
    if metric == "sqeuclidean":
        sq = (
            xp.sum(x * x, axis=1)[:, None]
            + xp.sum(y * y, axis=1)[None, :]
            - 2 * (x @ xp.matrix_transpose(y))
        )
        return xp.maximum(sq, xp.zeros_like(sq))  # rounding can make the expansion negative
    raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")


def index_dtype(xp: Any) -> Any:
    """The integer dtype of row and column indices: int64, or int32 for JAX without 64-bit
    types enabled (``jax_enable_x64``), where asking for int64 warns and gives int32."""
    if "jax" in getattr(xp, "__name__", ""):
        import jax

        return xp.int64 if jax.config.jax_enable_x64 else xp.int32
    return xp.int64


def sample_index(n_rows: int, n_views: int, layout: str, xp: Any, device: Any = None) -> Array:
    """Sample id of each row of an all-views batch, shape ``(n_rows,)``
    ([`index_dtype`][otcl.geometry.index_dtype]).

    ``"blocked"``: row ``r`` holds sample ``r mod N``; ``"interleaved"``: sample ``r // V``.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if n_views < 2:
        raise ValueError(f"n_views must be at least 2, got {n_views}")
    if n_rows % n_views:
        raise ValueError(
            f"an all-views batch with n_views={n_views} needs a multiple of {n_views} rows,"
            f" got {n_rows}"
        )
    r = xp.arange(n_rows, dtype=index_dtype(xp), device=device)
    n = n_rows // n_views
    return r % n if layout == "blocked" else r // n_views


def partner_index(n_rows: int, layout: str, xp: Any, device: Any = None) -> Array:
    """Row index of each row's positive partner in a two-view all-views batch, ``(n_rows,)``.

    ``"blocked"``: ``p(i) = i + N`` for the first half and ``i - N`` for the second;
    ``"interleaved"``: ``p(2k) = 2k + 1`` and ``p(2k + 1) = 2k``.
    """
    sample_index(n_rows, 2, layout, xp, device)  # validates
    r = xp.arange(n_rows, dtype=index_dtype(xp), device=device)
    if layout == "blocked":
        n = n_rows // 2
        return (r + n) % n_rows
    return r + 1 - 2 * (r % 2)


@dataclass(eq=False)
class ViewBatch:
    """An alignment problem built from embeddings.

    Attributes
    ----------
    cost:
        ``(n, m)`` cost matrix (for the cosine metrics derived on demand from ``similarity``).
    mask:
        ``(n, m)`` boolean allowed-entry mask, or ``None`` when every entry is allowed. For
        all-views batches (``self_masked``) it is ``i != j``, built only when read.
    self_masked:
        True when the only excluded entries are the self-pairs on the diagonal; the log-kernel
        then sets its diagonal directly instead of reading an ``n x n`` mask.
    row_sample, col_sample:
        Sample id of each row / column (``(n,)``, ``(m,)``); entries with equal ids (and allowed)
        are the positive pairs.
    partner:
        For two-view batches, the column of each row's unique positive (``(n,)``, a
        permutation), else ``None``.
    layout:
        ``"cross"``, ``"queue"``, ``"blocked"``, ``"interleaved"`` or ``"single"`` (one batch,
        positives from labels or a target).
    embeddings:
        For the cosine metrics, the unit-norm rows ``(x̂ (n, d), ŷ (m, d))`` everything else is
        derived from; ``None`` for a batch built on a cost matrix.
    similarity:
        For the cosine metrics, the ``(n, m)`` cosine similarity ``x̂ ŷ^T`` (computed when first
        read; the log-kernel does not read it), else ``None``.
    metric:
        The metric the cost was built with (``None`` for a user-given cost).
    """

    _cost: Array | None
    _mask: Array | None
    row_sample: Array
    col_sample: Array
    partner: Array | None
    layout: str
    embeddings: tuple[Array, Array] | None = None
    metric: str | None = None
    self_masked: bool = False

    @cached_property
    def mask(self) -> Array | None:
        if not self.self_masked:
            return self._mask
        xp = self.xp
        n, m = self.shape
        dev = device_of(self.reference)
        rows = xp.arange(n, dtype=index_dtype(xp), device=dev)
        cols = xp.arange(m, dtype=index_dtype(xp), device=dev)
        return rows[:, None] != cols[None, :]

    @cached_property
    def similarity(self) -> Array | None:
        if self.embeddings is None:
            return None
        x, y = self.embeddings
        return x @ self.xp.matrix_transpose(y)

    @property
    def xp(self) -> Any:
        from otcl.backend import namespace

        return namespace(self.reference)

    @property
    def reference(self) -> Array:
        """An array the batch is built on (the user's cost, or the first embeddings): its
        library, dtype and device are the batch's. Reading it never materialises the cost."""
        return self._cost if self._cost is not None else self.embeddings[0]

    @property
    def shape(self) -> tuple[int, int]:
        """``(n, m)``, the shape of the cost."""
        if self._cost is not None:
            return tuple(self._cost.shape)  # type: ignore[return-value]
        x, y = self.embeddings
        return (x.shape[0], y.shape[0])

    @cached_property
    def cost(self) -> Array:
        if self._cost is not None:
            return self._cost
        return -self.similarity if self.metric == "neg_cosine" else 1 - self.similarity

    def log_kernel(self, eps: Any) -> Array:
        """``Λ = -C / eps`` with ``-inf`` on masked entries, in as few passes as possible.

        For the cosine metrics ``Λ = (x̂ / eps) ŷ^T`` (minus ``1 / eps`` for ``"cosine"``): the
        scale is applied to the ``(n, d)`` factor, so the product writes ``Λ`` directly and,
        under autograd, its gradient reaches the embeddings without an ``n x m`` pass.
        """
        xp = self.xp
        plain = plain_ops(self.reference)
        if self._cost is None:
            x, y = self.embeddings
            # under jax / torch.compile / torch.func transforms: the plain product, which the
            # transform traces or differentiates itself (the pooled product is a custom Function)
            xs = x * (1 / eps)
            lk = xp.matmul(xs, xp.matrix_transpose(y)) if plain else product_t(xs, y, xp)
            if self.metric == "cosine":
                lk = lk - 1 / eps
        else:
            lk = self._cost * (-1 / eps)
        if self.self_masked and plain:
            n, m = self.shape
            eye = xp.eye(n, m, dtype=xp.bool, device=device_of(lk))
            lk = xp.where(eye, xp.full_like(lk, -math.inf), lk)
        elif self.self_masked:  # lk is a fresh array: its diagonal is written in place
            lk = fill_diagonal(lk, -math.inf, xp)
        elif self.mask is not None:
            lk = masked_fill(lk, ~self.mask, -math.inf, xp)
        return lk

    def log_kernel_at(self, eps: Any, rows: Array | None, cols: Array | None) -> Array | None:
        """``Λ[rows[k], cols[k]]`` for each ``k``, shape ``(k,)``, computed from the embeddings in
        ``O(k d)``, or ``None`` for a batch built on a cost matrix (gather from
        [`log_kernel`][otcl.geometry.ViewBatch.log_kernel] there). ``rows=None`` means every row in
        order, ``cols=None`` every column in order (``rows=cols=None``: the diagonal of a square
        batch).

        A cross-view batch's own ``partner`` as ``cols`` (with ``rows=None``) is read as the
        diagonal, without a gather. Used for the entries of a pair target: the value equals the
        entry of [`log_kernel`][otcl.geometry.ViewBatch.log_kernel] (up to rounding), and its
        gradient never forms an ``n x m`` array. Self-pairs of a self-masked batch are ``-inf``.
        """
        if self.embeddings is None:
            return None
        xp = self.xp
        x, y = self.embeddings
        if rows is None and cols is self.partner and self.layout in CROSS_LAYOUTS:
            cols = None  # the cross-view pairs are the diagonal: no gather
        xr = x if rows is None else xp.take(x, rows, axis=0)
        yc = y if cols is None else xp.take(y, cols, axis=0)
        if cols is None and rows is None and yc.shape[0] > xr.shape[0]:
            yc = yc[: xr.shape[0], ...]  # the diagonal of a cross-view batch with extra negatives
        if xr.shape[0] != yc.shape[0]:
            raise ValueError(f"rows and cols select {xr.shape[0]} and {yc.shape[0]} entries")
        out = xp.sum(xr * yc, axis=1) * (1 / eps)
        if self.metric == "cosine":
            out = out - 1 / eps
        if self.self_masked:
            dev = device_of(out)
            r = xp.arange(xr.shape[0], device=dev) if rows is None else rows
            c = xp.arange(yc.shape[0], device=dev) if cols is None else cols
            out = xp.where(r == c, xp.full_like(out, -math.inf), out)
        return out


def view_batch(
    z1: Array,
    z2: Array | None = None,
    *,
    layout: str | None = None,
    n_views: int = 2,
    metric: str = "neg_cosine",
) -> ViewBatch:
    """Build the cost, mask and positive structure of a contrastive batch (module docstring).

    * ``view_batch(z1, z2)`` (or ``layout="blocked"``): the all-views ``2N x 2N`` problem of
      ``z = [z1; z2]`` (SimCLR); ``z1``, ``z2`` of the same shape ``(N, d)``.
    * ``view_batch(z1, z2, layout="cross")``: the cross-view ``N x M`` problem, ``z2`` of shape
      ``(M, d)`` with ``M >= N`` (rows ``N ..`` of ``z2`` are extra negatives).
    * ``view_batch(z1, z2, layout="queue")``: the same with ``M > N``, where row ``i``'s
      negatives are rows ``N ..`` of ``z2`` only (mask ``j == i or j >= N``; MoCo).
    * ``view_batch(z, layout="blocked" | "interleaved", n_views=V)``: all-views ``VN x VN``.
    * ``view_batch(z)``: the single-batch problem (self-pairs masked, no positives: give the
      loss ``labels`` or ``target``).
    """
    if z2 is not None:
        xp = check_compatible(z1=z1, z2=z2)
        if layout not in (None, "cross", "queue", "blocked"):
            raise ValueError(
                f"layout={layout!r} with two arrays z1, z2: use None or 'blocked' (the all-views "
                "2N x 2N problem of [z1; z2], as SimCLR), 'cross' (the cross-view N x M "
                "problem) or 'queue' (cross-view, negatives from the extra rows only)"
            )
        if z1.ndim != 2 or z2.ndim != 2:
            raise ValueError(
                f"z1 and z2 must have shape (N, d), got {tuple(z1.shape)} and {tuple(z2.shape)}"
            )
        if layout in CROSS_LAYOUTS:
            queue = layout == "queue"
            if (z1.shape[1] != z2.shape[1] or z2.shape[0] < z1.shape[0]
                    or (queue and z2.shape[0] == z1.shape[0])):
                raise ValueError(
                    f"with layout={layout!r}, z2 must have the width of z1 and "
                    f"{'more' if queue else 'at least as many'} rows (rows N.. are extra "
                    f"negatives), got {tuple(z1.shape)} and {tuple(z2.shape)}"
                )
            peaks = _check_embeddings(xp, z1=z1, z2=z2)
            n, m = z1.shape[0], z2.shape[0]
            dev = device_of(z1)
            rows = xp.arange(n, dtype=index_dtype(xp), device=dev)
            cols = xp.arange(m, dtype=index_dtype(xp), device=dev)
            mask = ((rows[:, None] == cols[None, :]) | (cols[None, :] >= n)) if queue else None
            return _batch(("z1", z1), ("z2", z2), metric, mask, rows, rows, layout, xp,
                          col_samples=cols, peaks=peaks)
        if z1.shape != z2.shape:
            raise ValueError(
                f"z1 and z2 must have the same shape, got {tuple(z1.shape)} and "
                f"{tuple(z2.shape)} (for extra negatives in z2 use layout='cross')"
            )
        if n_views != 2:
            raise ValueError(f"two arrays z1, z2 hold two views; got n_views={n_views}")
        p1, p2 = _check_embeddings(xp, z1=z1, z2=z2)
        z1 = xp.concat([z1, z2], axis=0)
        peak = xp.concat([p1, p2], axis=0)
        layout = "blocked"
    else:
        xp = check_compatible(z=z1)
        if z1.ndim != 2:
            raise ValueError(f"z must have shape (V*N, d), got {tuple(z1.shape)}")
        (peak,) = _check_embeddings(xp, z=z1)
    if layout is None:
        n_rows = z1.shape[0]
        if n_rows < 2:
            raise ValueError(f"a single batch z needs at least 2 rows, got {n_rows}")
        rows = xp.arange(n_rows, dtype=index_dtype(xp), device=device_of(z1))
        return _batch(("z", z1), ("z", z1), metric, None, rows, None, "single", xp,
                      self_masked=True, peaks=(peak, peak))
    if layout in CROSS_LAYOUTS:
        raise ValueError(f"layout={layout!r} needs two arrays z1, z2")
    n_rows = z1.shape[0]
    dev = device_of(z1)
    samples = sample_index(n_rows, n_views, layout, xp, dev)
    partner = partner_index(n_rows, layout, xp, dev) if n_views == 2 else None
    return _batch(("z", z1), ("z", z1), metric, None, samples, partner, layout, xp,
                  self_masked=True, peaks=(peak, peak))


def _batch(x: tuple[str, Array], y: tuple[str, Array], metric: str, mask: Array | None,
           samples: Array, partner: Array | None, layout: str, xp: Any, *,
           self_masked: bool = False, col_samples: Array | None = None,
           peaks: tuple[Array, Array] | None = None) -> ViewBatch:
    (name_x, x), (name_y, y) = x, y
    px, py = (None, None) if peaks is None else peaks
    cols = samples if col_samples is None else col_samples
    if metric in ("neg_cosine", "cosine"):
        xn = _normalise_rows(name_x, x, xp, px)
        yn = xn if y is x else _normalise_rows(name_y, y, xp, py)
        return ViewBatch(None, mask, samples, cols, partner, layout, (xn, yn), metric,
                         self_masked)
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    return ViewBatch(cost_matrix(x, y, metric), mask, samples, cols, partner, layout, None,
                     metric, self_masked)


def _check_embeddings(xp: Any, **arrays: Array) -> list[Array]:
    """Refuse empty arrays and arrays with a NaN or infinite entry; return each array's row
    peaks ([`_row_peaks`][otcl.geometry._row_peaks]), which the cosine metrics reuse."""
    for name, z in arrays.items():
        if z.shape[0] == 0 or z.shape[1] == 0:
            raise ValueError(f"{name} must not be empty, got shape {tuple(z.shape)}")
    return [_row_peaks(name, z, xp) for name, z in arrays.items()]
