"""Target plans: pairs of views, supervised-contrastive labels, domain priors, user matrices.

Oracles: the target matrices built entry by entry with Python loops from their definitions, and
the dense formulas for the sparse (partner) representation's contractions.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.special import logsumexp

from otcl.alignment.targets import Target, as_target, domain_prior, label_target, pair_target
from otcl.geometry import view_batch


def _z(n: int, d: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, d))


def _samples(n_rows: int, n_views: int, layout: str) -> list[int]:
    N = n_rows // n_views
    return [r % N if layout == "blocked" else r // n_views for r in range(n_rows)]


# ------------------------------------------------------------------------------------------
# pair_target


def test_pair_target_cross_view_is_identity(backend):
    z1, z2 = backend.asarray(_z(5, seed=1)), backend.asarray(_z(5, seed=2))
    T = pair_target(view_batch(z1, z2, layout="cross"))
    like = z1[:, 0]
    np.testing.assert_array_equal(backend.to_numpy(T.to_dense(z1)), np.eye(5))
    np.testing.assert_array_equal(backend.to_numpy(T.row_sums(like)), np.ones(5))
    np.testing.assert_array_equal(backend.to_numpy(T.col_sums(like)), np.ones(5))


@pytest.mark.parametrize("layout", ["blocked", "interleaved"])
def test_pair_target_two_views_is_partner_permutation(layout):
    N = 4
    T = pair_target(view_batch(_z(2 * N), layout=layout)).to_dense(np.zeros(1))
    expected = np.zeros((2 * N, 2 * N))
    for i in range(2 * N):
        if layout == "blocked":
            expected[i, (i + N) % (2 * N)] = 1.0
        else:
            expected[i, i + 1 if i % 2 == 0 else i - 1] = 1.0
    np.testing.assert_array_equal(T, expected)
    np.testing.assert_array_equal(T.sum(0), np.ones(2 * N))


@pytest.mark.parametrize("layout", ["cross", "blocked"])
def test_pair_target_does_not_materialise_the_cost(layout):
    # the cosine cost is derived lazily from the similarity; building the pair target must not
    # allocate it (one n x n array fewer per loss call)
    z = _z(8, seed=3)
    if layout == "cross":
        batch = view_batch(z[:4], z[4:], layout="cross")
    else:
        batch = view_batch(z, layout=layout)
    T = pair_target(batch)
    assert T.shape == batch.shape
    assert "cost" not in vars(batch)


@pytest.mark.parametrize("layout", ["blocked", "interleaved"])
def test_pair_target_three_views_is_dense_over_other_views(layout):
    N, V = 3, 3
    T = pair_target(view_batch(_z(V * N), layout=layout, n_views=V))
    assert T.dense is not None and T.partner is None
    s = _samples(V * N, V, layout)
    expected = np.array([[1 / (V - 1) if (s[i] == s[j] and i != j) else 0.0
                          for j in range(V * N)] for i in range(V * N)])
    np.testing.assert_allclose(T.dense, expected, atol=1e-15)
    np.testing.assert_allclose(T.dense.sum(1), 1.0, atol=1e-15)
    np.testing.assert_allclose(T.dense.sum(0), 1.0, atol=1e-15)


def test_sparse_partner_contractions_match_dense_formulas(backend):
    """The partner representation computes the same contractions as the dense matrix."""
    rng = np.random.default_rng(3)
    n = 6
    perm = rng.permutation(n)
    Tn = np.zeros((n, n))
    Tn[np.arange(n), perm] = 1.0
    M = rng.standard_normal((n, n))
    gamma = rng.standard_normal(n)
    sparse = Target(_xp(backend), (n, n), partner=backend.asarray(perm, dtype="int64"))
    Mb, gb = backend.asarray(M), backend.asarray(gamma)
    np.testing.assert_allclose(backend.to_numpy(sparse.contract_rows(Mb)), (Tn * M).sum(1))
    np.testing.assert_allclose(backend.to_numpy(sparse.apply(gb)), Tn @ gamma)
    np.testing.assert_array_equal(backend.to_numpy(sparse.row_entropy(gb)), np.zeros(n))
    np.testing.assert_allclose(backend.to_numpy(sparse.log_weighted_mass(Mb)),
                               logsumexp(M, b=Tn, axis=1), atol=1e-13)


def _xp(backend):
    from otcl.backend import namespace

    return namespace(backend.asarray(np.zeros(1)))


def test_dense_contractions_match_formulas():
    rng = np.random.default_rng(4)
    T = rng.uniform(0, 1, (4, 5)) * (rng.random((4, 5)) > 0.4)
    T[:, 0] += 0.1  # every row has mass
    M, gamma = rng.standard_normal((4, 5)), rng.standard_normal(5)
    t = Target(np, (4, 5), dense=T)
    np.testing.assert_allclose(t.contract_rows(M), (T * M).sum(1), atol=1e-14)
    np.testing.assert_allclose(t.apply(gamma), T @ gamma, atol=1e-14)
    ent = np.array([sum(x * math.log(x) for x in row if x > 0) for row in T])
    np.testing.assert_allclose(t.row_entropy(gamma), ent, atol=1e-14)
    np.testing.assert_allclose(t.log_weighted_mass(M), np.log((T * np.exp(M)).sum(1)),
                               atol=1e-13)
    # masked entries of M (-inf) where T = 0 contribute nothing and give no NaN
    M_masked = np.where(T > 0, M, -np.inf)
    np.testing.assert_allclose(t.contract_rows(M_masked), (T * M).sum(1), atol=1e-14)


# ------------------------------------------------------------------------------------------
# label_target


def _supcon_target(labels_row: list[int], mask: np.ndarray | None) -> np.ndarray:
    n = len(labels_row)
    T = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            if labels_row[i] == labels_row[j] and (mask is None or mask[i, j]):
                T[i, j] = 1.0
        T[i] /= T[i].sum()
    return T


@pytest.mark.parametrize("layout", ["blocked", "interleaved"])
def test_label_target_all_views_is_supervised_contrastive(backend, layout):
    N = 6
    y = np.array([0, 1, 0, 2, 1, 0])
    batch = view_batch(backend.asarray(_z(2 * N)), layout=layout)
    T = backend.to_numpy(label_target(batch, backend.asarray(y, dtype="int64")).to_dense(None))
    s = _samples(2 * N, 2, layout)
    expected = _supcon_target([int(y[k]) for k in s], ~np.eye(2 * N, dtype=bool))
    np.testing.assert_allclose(T, expected, atol=1e-15)
    np.testing.assert_allclose(T.sum(1), 1.0, atol=1e-15)
    assert (np.diag(T) == 0).all()


def test_label_target_cross_view_includes_the_diagonal():
    y = np.array([2, 0, 2, 1])
    T = label_target(view_batch(_z(4, seed=1), _z(4, seed=2), layout="cross"), y).dense
    np.testing.assert_allclose(T, _supcon_target(list(y), None), atol=1e-15)
    assert (np.diag(T) > 0).all()


@pytest.mark.parametrize("layout", ["blocked", "interleaved"])
def test_label_target_per_row_equals_per_sample(layout):
    N = 4
    y = np.array([3, 1, 3, 1])
    batch = view_batch(_z(2 * N), layout=layout)
    per_row = np.array([y[k] for k in _samples(2 * N, 2, layout)])
    np.testing.assert_array_equal(label_target(batch, y).dense,
                                  label_target(batch, per_row).dense)


def test_label_target_per_row_labels_may_differ_between_views():
    """Per-row labels are used as given (e.g. view-level pseudo-labels)."""
    batch = view_batch(_z(8), layout="interleaved")
    y = np.array([0, 1, 0, 1, 2, 2, 1, 0])
    expected = _supcon_target(list(y), ~np.eye(8, dtype=bool))
    np.testing.assert_allclose(label_target(batch, y).dense, expected, atol=1e-15)


def test_label_target_errors():
    batch = view_batch(_z(8), layout="blocked")
    with pytest.raises(ValueError, match="labels has length 3"):
        label_target(batch, np.array([0, 1, 0]))
    with pytest.raises(ValueError, match="labels has length 5"):
        label_target(batch, np.arange(5))
    with pytest.raises(ValueError, match="one-dimensional"):
        label_target(batch, np.zeros((1, 4), dtype=np.int64))
    with pytest.raises(TypeError, match="labels must be an array"):
        label_target(batch, [0, 1, 0, 1])
    with pytest.raises(TypeError, match="labels"):
        label_target(batch, torch.tensor([0, 1, 0, 1]))
    # per-row labels that leave a row with no positive would give a 0/0 target row
    with pytest.raises(ValueError, match="without any positive"):
        label_target(batch, np.arange(8))


def test_label_target_does_not_modify_labels():
    y = np.array([0, 1, 0, 1])
    y0 = y.copy()
    label_target(view_batch(_z(8), layout="blocked"), y)
    np.testing.assert_array_equal(y, y0)


# ------------------------------------------------------------------------------------------
# domain_prior


def test_domain_prior_cross_view_structure():
    D = np.array([0, 0, 1, 2, 1])
    alpha, beta = 0.4, 0.05
    T = domain_prior(D, alpha, beta)
    n = len(D)
    expected = np.array([[1.0 if i == j else (alpha if D[i] == D[j] else beta)
                          for j in range(n)] for i in range(n)])
    np.testing.assert_allclose(T, expected, atol=1e-15)
    assert T.dtype == np.float64
    np.testing.assert_allclose(np.diag(T), 1.0)
    np.testing.assert_allclose(T, T.T)


@pytest.mark.parametrize("layout", ["blocked", "interleaved"])
def test_domain_prior_all_views_structure(layout):
    D = np.array([0, 1, 1, 0])
    N = len(D)
    alpha, beta = 0.3, 0.1
    batch = view_batch(_z(2 * N), layout=layout)
    T = domain_prior(D, alpha, beta, batch=batch)
    s = _samples(2 * N, 2, layout)
    expected = np.zeros((2 * N, 2 * N))
    for i in range(2 * N):
        for j in range(2 * N):
            if i == j:
                continue  # self-pair: hard-masked, zero target
            if s[i] == s[j]:
                expected[i, j] = 1.0  # the partner view
            elif D[s[i]] == D[s[j]]:
                expected[i, j] = alpha
            else:
                expected[i, j] = beta
    np.testing.assert_allclose(T, expected, atol=1e-15)
    # the target is a valid target of that batch (nothing on the masked diagonal)
    as_target(T, batch)


def test_domain_prior_dtype_and_library_follow_the_reference():
    D = torch.tensor([0, 1, 1])
    T = domain_prior(D, 0.2, 0.1, like=torch.zeros(2, dtype=torch.float32))
    assert isinstance(T, torch.Tensor) and T.dtype == torch.float32
    z = _z(3).astype(np.float32)
    T = domain_prior(np.array([0, 1, 0]), 0.2, 0.1, batch=view_batch(z, z, layout="cross"))
    assert T.dtype == np.float32


def test_domain_prior_errors():
    D = np.array([0, 1, 1, 0])
    for bad in (-0.1, math.nan, math.inf, True, "0.1"):
        with pytest.raises(ValueError, match="alpha"):
            domain_prior(D, bad, 0.1)
        with pytest.raises(ValueError, match="beta"):
            domain_prior(D, 0.1, bad)
    with pytest.raises(ValueError, match="domains has length 3"):
        domain_prior(np.array([0, 1, 0]), 0.1, 0.1, batch=view_batch(_z(8), layout="blocked"))
    with pytest.raises(ValueError, match="one-dimensional"):
        domain_prior(D[None, :], 0.1, 0.1)
    with pytest.raises(TypeError, match="domains"):
        domain_prior(torch.tensor([0, 1, 1, 0]), 0.1, 0.1,
                     batch=view_batch(_z(8), layout="blocked"))
    with pytest.raises(TypeError, match="like"):
        domain_prior(D, 0.1, 0.1, like=torch.zeros(1))


# ------------------------------------------------------------------------------------------
# as_target


def test_as_target_accepts_a_valid_matrix():
    batch = view_batch(_z(4, seed=1), _z(4, seed=2), layout="cross")
    T = np.array([[1.0, 0.2, 0, 0], [0, 1, 0, 0], [0, 0, 2, 0.5], [0.1, 0, 0, 1]])
    T0 = T.copy()
    t = as_target(T, batch)
    np.testing.assert_array_equal(t.to_dense(T), T0)
    np.testing.assert_allclose(t.row_sums(T), T0.sum(1))
    np.testing.assert_allclose(t.col_sums(T), T0.sum(0))
    np.testing.assert_array_equal(T, T0)


def test_as_target_validation():
    cross = view_batch(_z(4, seed=1), _z(4, seed=2), layout="cross")
    allv = view_batch(_z(4), layout="blocked")
    eye = np.eye(4)
    neg = eye.copy()
    neg[0, 1] = -1e-3
    with pytest.raises(ValueError, match="negative"):
        as_target(neg, cross)
    for bad in (math.nan, math.inf):
        T = eye.copy()
        T[1, 2] = bad
        with pytest.raises(ValueError, match="NaN or inf"):
            as_target(T, cross)
    with pytest.raises(ValueError, match="masked"):
        as_target(eye + np.fliplr(eye), allv)  # the diagonal is masked in an all-views batch
    zero_row = eye.copy()
    zero_row[2, 2] = 0.0
    with pytest.raises(ValueError, match="zero mass"):
        as_target(zero_row, cross)
    zero_col = np.ones((4, 4))
    zero_col[:, 1] = 0.0
    with pytest.raises(ValueError, match="zero mass"):
        as_target(zero_col, cross)
    with pytest.raises(ValueError, match="shape"):
        as_target(np.eye(3), cross)
    with pytest.raises(ValueError, match="shape"):
        as_target(Target(np, (3, 3), dense=np.eye(3)), cross)
    with pytest.raises(TypeError, match="target has dtype"):
        as_target(eye.astype(np.float32), cross)
    with pytest.raises(TypeError, match="target is a torch array"):
        as_target(torch.eye(4, dtype=torch.float64), cross)
    with pytest.raises(TypeError, match="target must be an array"):
        as_target(eye.tolist(), cross)
