"""Geometry: costs from embeddings, view layouts, the hard self-mask and the positive structure.

Oracles: the metrics written directly in NumPy (norms, inner products, explicit differences),
the analytic gradient of the cosine for torch autograd, and the layouts enumerated by hand.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from otcl.geometry import cost_matrix, partner_index, sample_index, view_batch


def _cos(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    out = np.empty((x.shape[0], y.shape[0]))
    for i in range(x.shape[0]):
        for j in range(y.shape[0]):
            out[i, j] = x[i] @ y[j] / (math.sqrt(x[i] @ x[i]) * math.sqrt(y[j] @ y[j]))
    return out


def _direct_cost(x: np.ndarray, y: np.ndarray, metric: str) -> np.ndarray:
    if metric == "neg_cosine":
        return -_cos(x, y)
    if metric == "cosine":
        return 1.0 - _cos(x, y)
    if metric == "dot":
        return -np.einsum("id,jd->ij", x, y)
    diff = x[:, None, :] - y[None, :, :]
    return np.sum(diff * diff, axis=-1)


@pytest.mark.parametrize("metric", ["neg_cosine", "cosine", "dot", "sqeuclidean"])
def test_cost_matrix_matches_direct_formula(backend, metric):
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((5, 3)), rng.standard_normal((7, 3))
    C = cost_matrix(backend.asarray(x), backend.asarray(y), metric)
    assert tuple(C.shape) == (5, 7)
    np.testing.assert_allclose(backend.to_numpy(C), _direct_cost(x, y, metric), rtol=0,
                               atol=1e-12)


@pytest.mark.parametrize("metric", ["neg_cosine", "cosine", "dot", "sqeuclidean"])
def test_view_batch_cost_matches_direct_formula(metric):
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((6, 4)), rng.standard_normal((6, 4))
    batch = view_batch(x, y, metric=metric, layout="cross")
    np.testing.assert_allclose(batch.cost, _direct_cost(x, y, metric), atol=1e-12)
    eps = 0.3
    np.testing.assert_allclose(batch.log_kernel(eps), -_direct_cost(x, y, metric) / eps,
                               atol=1e-11)
    # extra negatives: z2 longer than z1 gives the N x M cost of every z2 row
    y_long = rng.standard_normal((9, 4))
    batch = view_batch(x, y_long, metric=metric, layout="cross")
    assert batch.shape == (6, 9)
    np.testing.assert_allclose(batch.cost, _direct_cost(x, y_long, metric), atol=1e-12)


@pytest.mark.parametrize("metric", ["neg_cosine", "cosine", "dot", "sqeuclidean"])
@pytest.mark.parametrize("layout", ["cross", "blocked", "interleaved"])
def test_log_kernel_at_equals_the_log_kernel_entries(backend, metric, layout):
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((6, 4)), rng.standard_normal((6, 4))
    if layout == "cross":
        batch = view_batch(backend.asarray(x), backend.asarray(y), layout="cross", metric=metric)
        full = -_direct_cost(x, y, metric)
    else:
        z = np.concatenate([x, y])
        batch = view_batch(backend.asarray(z), layout=layout, metric=metric)
        full = -_direct_cost(z, z, metric)
    m = batch.shape[1]
    rows = np.array([0, 1, 2, 3, 4, 5, 5, 0])
    cols = np.array([0, 3, 2, 5, 1, 5, 0, m - 1])
    eps = 0.3
    at = batch.log_kernel_at(eps, backend.asarray(rows, None), backend.asarray(cols, None))
    if metric in ("dot", "sqeuclidean"):
        assert at is None  # built on a cost matrix: the caller gathers from log_kernel
        return
    expected = full[rows, cols] / eps
    if layout != "cross":
        expected[rows == cols] = -np.inf
    np.testing.assert_allclose(backend.to_numpy(at), expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(backend.to_numpy(batch.log_kernel(eps))[rows, cols], expected,
                               rtol=1e-12, atol=1e-12)
    diag = np.diag(full) / eps  # rows = cols = None: the diagonal
    if layout != "cross":
        diag[:] = -np.inf
    np.testing.assert_allclose(backend.to_numpy(batch.log_kernel_at(eps, None, None)), diag,
                               rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="rows and cols"):
        batch.log_kernel_at(eps, backend.asarray(rows, None), None)


def test_cosine_is_not_clamped():
    """Opposite-pointing pairs have cosine -1: cost 2 for "cosine", 1 for "neg_cosine"."""
    x = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    y = np.array([[-1.0, 0.0], [0.0, -2.0], [-1.0, 0.2]])
    cos = _cos(x, y)
    assert (cos < 0).any()
    C_cos = cost_matrix(x, y, "cosine")
    C_neg = cost_matrix(x, y, "neg_cosine")
    np.testing.assert_allclose(C_cos, 1 - cos, atol=1e-14)
    np.testing.assert_allclose(C_neg, -cos, atol=1e-14)
    assert C_cos[0, 0] == pytest.approx(2.0) and C_neg[0, 0] == pytest.approx(1.0)
    neg = cos < 0
    assert (C_cos[neg] > 1).all() and (C_neg[neg] > 0).all()


@pytest.mark.parametrize("metric", ["cosine", "neg_cosine"])
def test_negative_cosine_has_nonzero_gradient(metric):
    """No clamp: d cos(x, y) / dx = (y/|y| - cos x/|x|) / |x| even where cos < 0."""
    x = torch.tensor([[1.0, 0.5, -0.2]], dtype=torch.float64, requires_grad=True)
    y = torch.tensor([[-0.8, 0.1, 0.4]], dtype=torch.float64)
    C = cost_matrix(x, y, metric)
    xd, yd = x.detach().numpy()[0], y.numpy()[0]
    nx, ny = np.linalg.norm(xd), np.linalg.norm(yd)
    cos = xd @ yd / (nx * ny)
    assert cos < -0.5
    C.sum().backward()
    expected = -(yd / ny - cos * xd / nx) / nx  # both metrics are -cos + const
    assert np.linalg.norm(expected) > 0.1
    np.testing.assert_allclose(x.grad.numpy()[0], expected, atol=1e-12)


def test_cost_matrix_does_not_modify_inputs():
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((4, 3)), rng.standard_normal((5, 3))
    x0, y0 = x.copy(), y.copy()
    for metric in ("neg_cosine", "cosine", "dot", "sqeuclidean"):
        cost_matrix(x, y, metric)
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(y, y0)


def test_cost_matrix_follows_float32():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((4, 3)).astype(np.float32)
    for metric in ("neg_cosine", "cosine", "dot", "sqeuclidean"):
        assert cost_matrix(x, x, metric).dtype == np.float32


# ------------------------------------------------------------------------------------------
# layouts


def test_sample_and_partner_index_two_views():
    # N = 3 samples, V = 2 views
    np.testing.assert_array_equal(sample_index(6, 2, "blocked", np), [0, 1, 2, 0, 1, 2])
    np.testing.assert_array_equal(sample_index(6, 2, "interleaved", np), [0, 0, 1, 1, 2, 2])
    np.testing.assert_array_equal(partner_index(6, "blocked", np), [3, 4, 5, 0, 1, 2])
    np.testing.assert_array_equal(partner_index(6, "interleaved", np), [1, 0, 3, 2, 5, 4])


@pytest.mark.parametrize("layout", ["blocked", "interleaved"])
@pytest.mark.parametrize("n_views", [2, 3])
def test_sample_index_matches_enumeration(layout, n_views):
    N = 4
    rows = []  # (row, sample) pairs enumerated view by view or sample by sample
    if layout == "blocked":
        for v in range(n_views):
            rows += [(v * N + k, k) for k in range(N)]
    else:
        for k in range(N):
            rows += [(n_views * k + v, k) for v in range(n_views)]
    expected = np.array([s for _, s in sorted(rows)])
    got = sample_index(n_views * N, n_views, layout, np)
    np.testing.assert_array_equal(got, expected)
    assert got.dtype == np.int64


@pytest.mark.parametrize("layout", ["blocked", "interleaved"])
def test_partner_is_an_involution_onto_the_same_sample(layout):
    n_rows = 10
    p = partner_index(n_rows, layout, np)
    s = sample_index(n_rows, 2, layout, np)
    np.testing.assert_array_equal(p[p], np.arange(n_rows))
    assert (p != np.arange(n_rows)).all()
    np.testing.assert_array_equal(s[p], s)


def test_partner_index_torch_matches_numpy():
    for layout in ("blocked", "interleaved"):
        got = partner_index(8, layout, torch, "cpu")
        assert isinstance(got, torch.Tensor) and got.dtype == torch.int64
        np.testing.assert_array_equal(got.numpy(), partner_index(8, layout, np))


@pytest.mark.parametrize("layout", ["blocked", "interleaved"])
@pytest.mark.parametrize("n_views", [2, 3])
def test_view_batch_all_views_hard_self_mask(layout, n_views):
    rng = np.random.default_rng(5)
    N = 3
    z = rng.standard_normal((n_views * N, 4))
    batch = view_batch(z, layout=layout, n_views=n_views)
    n = n_views * N
    assert batch.shape == (n, n) and batch.layout == layout
    np.testing.assert_array_equal(batch.mask, ~np.eye(n, dtype=bool))
    lk = batch.log_kernel(0.5)
    assert np.isneginf(np.diag(lk)).all()  # hard mask: exp(-inf) = 0, not a large finite cost
    off = ~np.eye(n, dtype=bool)
    np.testing.assert_allclose(lk[off], (_cos(z, z) / 0.5)[off], atol=1e-12)
    np.testing.assert_array_equal(batch.row_sample, sample_index(n, n_views, layout, np))
    if n_views == 2:
        np.testing.assert_array_equal(batch.partner, partner_index(n, layout, np))
    else:
        assert batch.partner is None


@pytest.mark.parametrize("metric", ["neg_cosine", "cosine", "dot"])
def test_all_views_log_kernel_masks_the_diagonal_without_an_n_by_n_mask(metric):
    z = np.random.default_rng(8).standard_normal((6, 3))
    batch = view_batch(z, layout="blocked", metric=metric)
    lk = batch.log_kernel(0.25)
    assert "mask" not in vars(batch)  # the dense mask is built only when read
    expected = -cost_matrix(z, z, metric) / 0.25
    np.fill_diagonal(expected, -np.inf)
    np.testing.assert_allclose(lk, expected, atol=1e-12)
    assert batch.similarity is None or np.isfinite(np.diag(batch.similarity)).all()  # untouched


def test_view_batch_cross_view_structure():
    rng = np.random.default_rng(6)
    z1, z2 = rng.standard_normal((5, 3)), rng.standard_normal((5, 3))
    batch = view_batch(z1, z2, layout="cross")
    assert batch.layout == "cross" and batch.mask is None
    np.testing.assert_array_equal(batch.partner, np.arange(5))
    np.testing.assert_array_equal(batch.row_sample, np.arange(5))
    assert np.isfinite(batch.log_kernel(0.5)).all()


def test_view_batch_cross_view_with_extra_negatives():
    """``z2`` with ``M > N`` rows: an ``N x M`` batch, positives ``(i, i)``, no mask; the log-kernel
    at the pairs is the diagonal of the first ``N`` columns."""
    rng = np.random.default_rng(9)
    z1, z2 = rng.standard_normal((4, 3)), rng.standard_normal((7, 3))
    batch = view_batch(z1, z2, layout="cross")
    assert batch.shape == (4, 7) and batch.layout == "cross" and batch.mask is None
    np.testing.assert_array_equal(batch.partner, np.arange(4))
    lk = batch.log_kernel(0.5)
    np.testing.assert_allclose(lk, _cos(z1, z2) / 0.5, atol=1e-12)
    np.testing.assert_allclose(batch.log_kernel_at(0.5, None, None), np.diag(_cos(z1, z2[:4]))
                               / 0.5, rtol=1e-12, atol=1e-12)


def test_view_batch_two_views_is_the_all_views_problem():
    """``view_batch(z1, z2)`` is SimCLR's ``2N x 2N`` problem of ``z = [z1; z2]``: hard self-mask,
    partner ``(i + N) mod 2N``, the same cost as ``view_batch(z, layout="blocked")``."""
    rng = np.random.default_rng(10)
    N = 4
    z1, z2 = rng.standard_normal((N, 3)), rng.standard_normal((N, 3))
    z = np.concatenate([z1, z2])
    for batch in (view_batch(z1, z2), view_batch(z1, z2, layout="blocked")):
        assert batch.shape == (2 * N, 2 * N) and batch.layout == "blocked"
        np.testing.assert_array_equal(batch.mask, ~np.eye(2 * N, dtype=bool))
        np.testing.assert_array_equal(batch.partner, (np.arange(2 * N) + N) % (2 * N))
        np.testing.assert_array_equal(batch.row_sample, np.arange(2 * N) % N)
        lk = batch.log_kernel(0.5)
        assert np.isneginf(np.diag(lk)).all()
        off = ~np.eye(2 * N, dtype=bool)
        np.testing.assert_allclose(lk[off], (_cos(z, z) / 0.5)[off], atol=1e-12)


def test_view_batch_single_array_without_layout_is_a_single_batch():
    """``view_batch(z)``: every row an anchor, self-pairs masked, no positive structure."""
    z = np.random.default_rng(11).standard_normal((5, 3))
    batch = view_batch(z)
    assert batch.shape == (5, 5) and batch.layout == "single" and batch.partner is None
    np.testing.assert_array_equal(batch.mask, ~np.eye(5, dtype=bool))
    lk = batch.log_kernel(0.5)
    assert np.isneginf(np.diag(lk)).all()
    off = ~np.eye(5, dtype=bool)
    np.testing.assert_allclose(lk[off], (_cos(z, z) / 0.5)[off], atol=1e-12)


def test_view_batch_cosine_log_kernel_offset():
    """"cosine" and "neg_cosine" log-kernels differ by the constant 1/eps."""
    rng = np.random.default_rng(7)
    z = rng.standard_normal((6, 3))
    lk_neg = view_batch(z, layout="blocked", metric="neg_cosine").log_kernel(0.25)
    lk_cos = view_batch(z, layout="blocked", metric="cosine").log_kernel(0.25)
    off = ~np.eye(6, dtype=bool)
    np.testing.assert_allclose(lk_neg[off] - lk_cos[off], 4.0, atol=1e-12)


# ------------------------------------------------------------------------------------------
# errors


def test_zero_norm_row_rejected_under_cosine():
    z = np.ones((4, 3))
    z[2] = 0.0
    for metric in ("cosine", "neg_cosine"):
        with pytest.raises(ValueError, match="zero norm"):
            cost_matrix(z, np.ones((3, 3)), metric)
        with pytest.raises(ValueError, match="z2 has a row of zero norm"):
            view_batch(np.ones((4, 3)), z, metric=metric, layout="cross")
        with pytest.raises(ValueError, match="zero norm"):
            view_batch(np.ones((4, 3)), z, metric=metric)
        with pytest.raises(ValueError, match="z has a row of zero norm"):
            view_batch(z, layout="blocked", metric=metric)
    # the dot and squared-Euclidean costs are defined there
    assert np.isfinite(view_batch(z, layout="blocked", metric="dot").cost).all()


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_embeddings_rejected(bad):
    z = np.random.default_rng(8).standard_normal((4, 3))
    z[1, 2] = bad
    ok = np.ones((4, 3))
    with pytest.raises(ValueError, match="z1 contains NaN or inf"):
        view_batch(z, ok)
    with pytest.raises(ValueError, match="z2 contains NaN or inf"):
        view_batch(ok, z)
    with pytest.raises(ValueError, match="z contains NaN or inf"):
        view_batch(z, layout="interleaved")
    with pytest.raises(ValueError, match="x contains NaN or inf"):
        cost_matrix(z, ok, "dot")
    with pytest.raises(ValueError, match="y contains NaN or inf"):
        cost_matrix(ok, z, "neg_cosine")


def test_odd_rows_for_two_views_rejected():
    z = np.ones((5, 3))
    for layout in ("blocked", "interleaved"):
        with pytest.raises(ValueError, match="multiple of 2"):
            view_batch(z, layout=layout)
        with pytest.raises(ValueError, match="multiple of 2"):
            partner_index(5, layout, np)
    with pytest.raises(ValueError, match="multiple of 3"):
        view_batch(np.ones((7, 3)), layout="blocked", n_views=3)
    with pytest.raises(ValueError, match="n_views"):
        view_batch(np.ones((6, 3)), layout="blocked", n_views=1)


def test_mismatched_z1_z2_rejected():
    with pytest.raises(ValueError, match="same shape"):
        view_batch(np.ones((4, 3)), np.ones((5, 3)))
    with pytest.raises(ValueError, match="same shape"):
        view_batch(np.ones((4, 3)), np.ones((4, 2)))
    with pytest.raises(ValueError, match=r"shape \(N, d\)"):
        view_batch(np.ones((4, 3, 1)), np.ones((4, 3, 1)))
    with pytest.raises(TypeError, match="z2 has dtype"):
        view_batch(np.ones((4, 3)), np.ones((4, 3), dtype=np.float32))
    with pytest.raises(TypeError, match="z2 is a torch array"):
        view_batch(np.ones((4, 3)), torch.ones(4, 3, dtype=torch.float64))
    with pytest.raises(TypeError, match="real floating"):
        view_batch(np.ones((4, 3), dtype=np.int64), np.ones((4, 3), dtype=np.int64))
    with pytest.raises(ValueError, match="same dimension"):
        cost_matrix(np.ones((4, 3)), np.ones((4, 2)))
    with pytest.raises(ValueError, match="must not be empty"):
        view_batch(np.ones((0, 3)), np.ones((0, 3)))


def test_layout_with_z2():
    """Two arrays take ``None`` / ``"blocked"`` (all views of ``[z1; z2]``) or ``"cross"``."""
    for layout in ("interleaved", "stacked"):
        with pytest.raises(ValueError, match="layout="):
            view_batch(np.ones((4, 3)), np.ones((4, 3)), layout=layout)
    assert view_batch(np.eye(3), np.eye(3), layout="cross").layout == "cross"
    assert view_batch(np.eye(3), np.eye(3), layout="blocked").shape == (6, 6)
    with pytest.raises(ValueError, match="n_views"):
        view_batch(np.eye(3), np.eye(3), n_views=3)
    # cross-view: z2 may have extra rows (negatives), never fewer rows or another width
    with pytest.raises(ValueError, match="at least as many"):
        view_batch(np.ones((4, 3)), np.ones((3, 3)), layout="cross")
    with pytest.raises(ValueError, match="at least as many"):
        view_batch(np.ones((4, 3)), np.ones((5, 2)), layout="cross")
    with pytest.raises(ValueError, match="two arrays"):
        view_batch(np.ones((4, 3)), layout="cross")


def test_unknown_layout_for_all_views_rejected():
    with pytest.raises(ValueError, match="at least 2 rows"):
        view_batch(np.ones((1, 3)))
    with pytest.raises(ValueError, match="layout must be one of"):
        view_batch(np.ones((4, 3)), layout="stacked")
    with pytest.raises(ValueError, match="layout must be one of"):
        sample_index(4, 2, "cross", np)


def test_bad_metric_rejected():
    for metric in ("euclidean", "cos", ""):
        with pytest.raises(ValueError, match="metric must be one of"):
            cost_matrix(np.ones((2, 3)), np.ones((2, 3)), metric)
        with pytest.raises(ValueError, match="metric must be one of"):
            view_batch(np.eye(3), np.eye(3), metric=metric)
        with pytest.raises(ValueError, match="metric must be one of"):
            view_batch(np.eye(4), layout="blocked", metric=metric)
