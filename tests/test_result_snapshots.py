"""Results are snapshots of their inputs and pickle.

A :class:`~otcl.solvers.result.Transport` (from :func:`otcl.sinkhorn` and
:func:`otcl.row_projection`) and a :class:`~otcl.solvers.bregman.BregmanResult` must not change
when the caller writes to the cost, marginals, mask or constraint arrays after the call. Oracle:
the plan ``exp((f_i + g_j - C_ij) / eps)``, masses, marginal errors and ``<C, P>`` computed here
by direct formulas from the potentials and an untouched copy of the inputs, before the writes.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

import otcl
from otcl.solvers.bregman import (
    ColumnMarginal,
    RowMarginal,
    UpperBound,
    bregman_projection,
)

LIBS = ["numpy", "torch"]


def _problem(lib: str, n: int = 6, m: int = 7, seed: int = 0):
    rng = np.random.default_rng(seed)
    C = rng.random((n, m))
    a = rng.random(n) + 0.5
    a /= a.sum()
    b = rng.random(m) + 0.5
    b /= b.sum()
    mask = np.ones((n, m), dtype=bool)
    mask[0, 1] = False
    if lib == "torch":
        return torch.tensor(C), torch.tensor(a), torch.tensor(b), torch.tensor(mask)
    return C, a, b, mask


def _np(x):
    return x.detach().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _fields(t) -> dict[str, np.ndarray]:
    return {
        "plan": _np(t.plan).copy(),
        "log_plan": _np(t.log_plan).copy(),
        "row_mass": _np(t.row_mass).copy(),
        "col_mass": _np(t.col_mass).copy(),
        "marginal_error_a": np.asarray(_np(t.marginal_error_a)).copy(),
        "marginal_error_b": np.asarray(_np(t.marginal_error_b)).copy(),
        "transport_cost": np.asarray(_np(t.transport_cost)).copy(),
    }


def _oracle(t, C, a, b, mask, eps) -> dict[str, np.ndarray]:
    """Direct formulas on float64 copies taken before any write."""
    f, g = _np(t.f), _np(t.g)
    P = np.exp((f[:, None] + g[None, :] - C) / eps) * mask
    return {
        "plan": P,
        "row_mass": P.sum(1),
        "col_mass": P.sum(0),
        "marginal_error_a": np.abs(P.sum(1) - a).sum() / a.sum(),
        "marginal_error_b": np.abs(P.sum(0) - b).sum() / b.sum(),
        "transport_cost": (P * C).sum(),
    }


def _scribble(*arrays) -> None:
    for x in arrays:
        if isinstance(x, torch.Tensor):
            if x.dtype == torch.bool:
                x.fill_(False)
            else:
                x.mul_(-3.0).add_(7.0)
        elif x.dtype == bool:
            x[...] = False
        else:
            x *= -3.0
            x += 7.0


@pytest.mark.parametrize("lib", LIBS)
@pytest.mark.parametrize("read_first", [False, True], ids=["lazy", "read-before"])
def test_sinkhorn_result_ignores_later_writes_to_inputs(lib, read_first):
    C, a, b, mask = _problem(lib)
    eps = 0.2
    t = otcl.sinkhorn(C, a, b, eps=eps, mask=mask, tol=1e-12, max_iter=5000)
    oracle = _oracle(t, _np(C).copy(), _np(a).copy(), _np(b).copy(), _np(mask).copy(), eps)
    before = _fields(t) if read_first else None
    _scribble(C, a, b, mask)
    after = _fields(t)
    for key, val in oracle.items():
        np.testing.assert_allclose(after[key], val, rtol=1e-10, atol=1e-14, err_msg=key)
    if before is not None:
        for key in before:
            np.testing.assert_array_equal(after[key], before[key], err_msg=key)


@pytest.mark.parametrize("lib", LIBS)
def test_row_projection_result_ignores_later_writes_to_inputs(lib):
    C, a, _, _ = _problem(lib)
    eps = 0.3
    t = otcl.row_projection(C, a, eps=eps)
    C0, a0 = _np(C).copy(), _np(a).copy()
    m = C0.shape[1]
    oracle = _oracle(t, C0, a0, np.full(m, 1.0 / m), np.ones_like(C0, dtype=bool), eps)
    _scribble(C, a)
    after = _fields(t)
    for key, val in oracle.items():
        np.testing.assert_allclose(after[key], val, rtol=1e-10, atol=1e-14, err_msg=key)
    # the row marginal of the row projection is a (direct check against the saved copy)
    np.testing.assert_allclose(after["row_mass"], a0, rtol=1e-12)


@pytest.mark.parametrize("lib", LIBS)
def test_batched_and_broadcast_marginals_are_snapshots(lib):
    C, a, b, _ = _problem(lib)
    stack = (lambda xs: torch.stack(xs)) if lib == "torch" else np.stack
    C2 = stack([C, C * 0.5])
    eps = 0.25
    t = otcl.sinkhorn(C2, a, b, eps=eps, tol=1e-12, max_iter=5000)  # (n,) marginals broadcast
    C0, a0, b0 = _np(C2).copy(), _np(a).copy(), _np(b).copy()
    f, g = _np(t.f), _np(t.g)
    P = np.exp((f[:, :, None] + g[:, None, :] - C0) / eps)
    _scribble(C2, a, b)
    np.testing.assert_allclose(_np(t.marginal_error_a), np.abs(P.sum(2) - a0).sum(1),
                               rtol=1e-8, atol=1e-15)
    np.testing.assert_allclose(_np(t.marginal_error_b), np.abs(P.sum(1) - b0).sum(1),
                               rtol=1e-8, atol=1e-15)
    np.testing.assert_allclose(_np(t.transport_cost), (P * C0).sum((1, 2)), rtol=1e-10)


@pytest.mark.parametrize("lib", LIBS)
def test_bregman_result_ignores_later_writes_to_inputs(lib):
    C, a, b, _ = _problem(lib)
    eps = 0.2
    kappa = (torch.full if lib == "torch" else np.full)(tuple(C.shape), 0.05,
                                                       dtype=C.dtype)
    r = bregman_projection(C, [RowMarginal(a), ColumnMarginal(b), UpperBound(kappa)], eps=eps,
                           tol=1e-10, max_iter=20000)
    assert r.converged
    C0, a0, b0 = _np(C).copy(), _np(a).copy(), _np(b).copy()
    plan = _np(r.plan).copy()
    viol = r.violations
    _scribble(C, a, b, kappa)
    np.testing.assert_array_equal(_np(r.plan), plan)
    np.testing.assert_allclose(_np(r.row_mass), a0, rtol=1e-8)
    np.testing.assert_allclose(_np(r.col_mass), b0, rtol=1e-8)
    assert np.all(_np(r.plan) <= 0.05 * (1 + 1e-8))
    assert r.violations == viol
    # log P = -C / eps + sum of the duals (the stored constraints and duals are unchanged)
    row, col, ub = (_np(d) for d in r.duals)
    np.testing.assert_allclose(_np(r.log_plan), -C0 / eps + row[:, None] + col[None, :] + ub,
                               rtol=1e-8, atol=1e-8)
    np.testing.assert_array_equal(_np(r.constraints[0].a), a0)
    np.testing.assert_array_equal(_np(r.constraints[2].kappa), np.full(C0.shape, 0.05))


# ------------------------------------------------------------------------------------------
# pickling


@pytest.mark.parametrize("lib", LIBS)
def test_transport_pickles(lib):
    C, a, b, mask = _problem(lib)
    t = otcl.sinkhorn(C, a, b, eps=0.2, mask=mask, tol=1e-12, max_iter=5000)
    expected = _fields(t)
    u = pickle.loads(pickle.dumps(t))
    assert type(u.f) is type(t.f)
    assert u.n_iter == t.n_iter and u.converged == t.converged and u.domain == t.domain
    got = _fields(u)
    for key in expected:
        np.testing.assert_array_equal(got[key], expected[key], err_msg=key)
    # a result whose lazy fields were not read yet also round-trips
    t2 = otcl.row_projection(C, a, eps=0.3)
    u2 = pickle.loads(pickle.dumps(t2))
    np.testing.assert_array_equal(_np(u2.plan), _np(t2.plan))


@pytest.mark.parametrize("lib", LIBS)
def test_bregman_result_pickles(lib):
    C, a, b, _ = _problem(lib)
    r = bregman_projection(C, [RowMarginal(a), ColumnMarginal(b, rho=0.5)], eps=0.2,
                           tol=1e-10, max_iter=5000)
    u = pickle.loads(pickle.dumps(r))
    np.testing.assert_array_equal(_np(u.plan), _np(r.plan))
    np.testing.assert_array_equal(_np(u.log_plan), _np(r.log_plan))
    assert u.violations == r.violations
    assert u.n_iter == r.n_iter and u.converged == r.converged
