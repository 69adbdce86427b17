"""Bregman–Dykstra KL projections (otcl.solvers.bregman).

Oracles: POT's balanced and unbalanced Sinkhorn, the log-domain Sinkhorn of otcl (same number of
rounds), scipy's SLSQP on the primal problem, closed-form KKT conditions, closed-form
single-set projections and a 1-d root find for the water-filling solution of a mass + bound
problem.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy.optimize import brentq, minimize

import otcl
from otcl.solvers import ConvergenceWarning
from otcl.solvers.bregman import (
    BregmanResult,
    ColumnMarginal,
    LowerBound,
    RowMarginal,
    TotalMass,
    UpperBound,
    bregman_projection,
)
from tests.conftest import random_problem


def _problem(seed: int, n: int = 5, m: int = 6, **kw):
    return random_problem(np.random.default_rng(seed), n, m, **kw)


def _kl(P: np.ndarray, K: np.ndarray) -> float:
    pos = P > 0
    return float(np.sum(P[pos] * np.log(P[pos] / K[pos])) - P.sum() + K.sum())


def _naive_cyclic(K: np.ndarray, kappa: float, a: np.ndarray, b: np.ndarray, rounds: int):
    """Cyclic KL projections WITHOUT Dykstra corrections (plain POCS)."""
    P = K.copy()
    for _ in range(rounds):
        P = np.minimum(P, kappa)
        P = P * (a / P.sum(1))[:, None]
        P = P * (b / P.sum(0))[None, :]
    return P


# ------------------------------------------------------------------------------------------
# affine sets: Dykstra = cyclic projections = Sinkhorn


@pytest.mark.parametrize("rounds", [1, 7, 60])
def test_row_column_cycles_are_sinkhorn_rounds(rounds):
    C, a, b = _problem(0, zero_a=1)
    mask = np.ones(C.shape, dtype=bool)
    mask[1, 2] = mask[3, 0] = False
    res = bregman_projection(
        C, [RowMarginal(a), ColumnMarginal(b)], eps=0.05, mask=mask, max_iter=rounds, tol=None
    )
    ref = otcl.sinkhorn(C, a, b, eps=0.05, mask=mask, max_iter=rounds, tol=None, domain="log")
    np.testing.assert_allclose(res.plan, ref.plan, rtol=0, atol=1e-10)
    assert np.all(res.plan[~mask] == 0) and np.all(res.plan[a == 0] == 0)
    # the row and column duals are the scaled Sinkhorn potentials
    np.testing.assert_allclose(res.duals[1], ref.g / 0.05, atol=1e-8)
    finite = a > 0
    np.testing.assert_allclose(res.duals[0][finite], ref.f[finite] / 0.05, atol=1e-8)
    assert res.n_iter == rounds and res.converged is None and res.error is None


def test_balanced_matches_pot():
    ot = pytest.importorskip("ot")
    C, a, b = _problem(1, 6, 4)
    res = bregman_projection(C, [RowMarginal(a), ColumnMarginal(b)], eps=0.1, tol=1e-13)
    assert res.converged
    ref = ot.sinkhorn(a, b, C, 0.1, stopThr=1e-15, numItermax=100_000)
    np.testing.assert_allclose(res.plan, ref, rtol=0, atol=1e-10)
    np.testing.assert_allclose(res.row_mass, a, atol=1e-12)
    np.testing.assert_allclose(res.col_mass, b, atol=1e-12)
    assert max(res.violations) <= 1e-13


@pytest.mark.parametrize(("rho_a", "rho_b"), [(0.5, 2.0), (0.3, 0.3), (math.inf, 1.0)])
def test_relaxed_marginals_match_pot_unbalanced(rho_a, rho_b):
    ot = pytest.importorskip("ot")
    C, a, b = _problem(2, 5, 7, mass_b=1.7)
    eps = 0.1
    res = bregman_projection(
        C, [RowMarginal(a, rho=rho_a), ColumnMarginal(b, rho=rho_b)], eps=eps, tol=1e-13
    )
    assert res.converged
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module="ot")
        ref = ot.unbalanced.sinkhorn_unbalanced(
            a, b, C, eps, (rho_a, rho_b), reg_type="entropy", stopThr=1e-15, numItermax=100_000
        )
    np.testing.assert_allclose(res.plan, ref, rtol=0, atol=1e-10)


def test_relaxed_marginals_with_zero_mass_entries_match_pot():
    ot = pytest.importorskip("ot")
    C, a, b = _problem(16, 6, 5, zero_a=2, zero_b=1)
    res = bregman_projection(
        C, [RowMarginal(a, rho=0.5), ColumnMarginal(b, rho=1.5)], eps=0.1, tol=1e-13
    )
    assert res.converged and not np.any(np.isnan(res.log_plan))
    assert np.all(res.plan[a == 0] == 0) and np.all(res.plan[:, b == 0] == 0)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module="ot")
        ref = ot.unbalanced.sinkhorn_unbalanced(
            a, b, C, 0.1, (0.5, 1.5), reg_type="entropy", stopThr=1e-15, numItermax=100_000
        )
    np.testing.assert_allclose(res.plan, ref, rtol=0, atol=1e-10)
    assert all(v <= 1e-13 for v in res.violations)


def test_relaxed_marginals_need_the_corrections():
    """Without its correction the relaxed step converges to the balanced plan (a wrong answer)."""
    C, a, b = _problem(3, 4, 4)
    eps, rho = 0.2, 0.4
    t = rho / (rho + eps)
    K = np.exp(-C / eps)
    P = K.copy()
    for _ in range(3000):  # uncorrected cyclic prox steps
        P = P * ((a / P.sum(1)) ** t)[:, None]
        P = P * ((b / P.sum(0)) ** t)[None, :]
    res = bregman_projection(C, [RowMarginal(a, rho=rho), ColumnMarginal(b, rho=rho)], eps=eps)
    np.testing.assert_allclose(P.sum(1), a, atol=1e-10)  # it lands on hard marginals
    assert np.max(np.abs(res.plan - P)) > 1e-2
    # the corrected answer satisfies the optimality condition of the relaxed problem:
    # log P_ij = -C_ij/eps - (rho/eps) (log(r_i / a_i) + log(c_j / b_j))
    r, c = res.row_mass, res.col_mass
    rhs = -C / eps - (rho / eps) * (np.log(r / a)[:, None] + np.log(c / b)[None, :])
    np.testing.assert_allclose(res.log_plan, rhs, atol=1e-8)


# ------------------------------------------------------------------------------------------
# an active upper bound: the corrections matter


def _capacity_problem():
    C, a, b = _problem(4, 4, 5)
    return C, a, b, 0.2, 0.1  # kappa below max of the unconstrained plan, above a_i / m, b_j / n


def test_upper_bound_satisfies_constraints_and_kkt():
    C, a, b, eps, kappa = _capacity_problem()
    free = otcl.sinkhorn(C, a, b, eps=eps, tol=1e-12)
    assert free.plan.max() > 1.2 * kappa  # the bound is active
    res = bregman_projection(
        C, [UpperBound(kappa), RowMarginal(a), ColumnMarginal(b)], eps=eps, tol=1e-12
    )
    P = res.plan
    assert res.converged and np.all(np.isfinite(P))
    assert P.max() <= kappa * (1 + 1e-10)
    np.testing.assert_allclose(P.sum(1), a, atol=1e-11)
    np.testing.assert_allclose(P.sum(0), b, atol=1e-11)
    # KKT: log P = -C/eps + f_i + g_j - mu_ij, mu >= 0, mu = 0 where P < kappa.
    # Fit f, g by least squares on the entries strictly below the bound.
    n, m = C.shape
    active = np.greater_equal(P, kappa * (1 - 1e-7))
    assert 0 < active.sum() < n * m - (n + m)
    rows, cols = np.nonzero(~active)
    design = np.zeros((rows.size, n + m))
    design[np.arange(rows.size), rows] = 1.0
    design[np.arange(rows.size), n + cols] = 1.0
    target = np.log(P[rows, cols]) + C[rows, cols] / eps
    fg, *_ = np.linalg.lstsq(design, target, rcond=None)
    np.testing.assert_allclose(design @ fg, target, atol=1e-8)
    mu = -C / eps + fg[:n, None] + fg[None, n:] - np.log(P)
    assert np.all(mu[active] >= -1e-8)
    np.testing.assert_allclose(mu[~active], 0.0, atol=1e-8)
    # and the reported dual of the bound is -mu
    np.testing.assert_allclose(res.duals[0], -mu, atol=1e-7)


def test_upper_bound_matches_direct_convex_solve():
    C, a, b, eps, kappa = _capacity_problem()
    n, m = C.shape
    K = np.exp(-C / eps)
    eq = np.vstack([np.kron(np.eye(n), np.ones(m)), np.kron(np.ones(n), np.eye(m))])[:-1]
    rhs = np.concatenate([a, b])[:-1]  # one marginal equation is redundant

    def objective(x):
        P = x.reshape(n, m)
        return np.sum(P * np.log(P / K) - P + K), np.log(P / K).ravel()

    sol = minimize(
        objective,
        np.full(n * m, 1.0 / (n * m)),
        jac=True,
        method="SLSQP",
        bounds=[(1e-15, kappa)] * (n * m),
        constraints=[{"type": "eq", "fun": lambda x: eq @ x - rhs, "jac": lambda x: eq}],
        # 1e-14: at 1e-15 the line search can stop (status 8) with single-threaded BLAS
        options={"ftol": 1e-14, "maxiter": 2000},
    )
    assert sol.success
    res = bregman_projection(
        C, [UpperBound(kappa), RowMarginal(a), ColumnMarginal(b)], eps=eps, tol=1e-12
    )
    np.testing.assert_allclose(res.plan, sol.x.reshape(n, m), atol=1e-7)


def test_upper_bound_without_corrections_is_wrong():
    C, a, b, eps, kappa = _capacity_problem()
    K = np.exp(-C / eps)
    naive = _naive_cyclic(K, kappa, a, b, 5000)
    res = bregman_projection(
        C, [UpperBound(kappa), RowMarginal(a), ColumnMarginal(b)], eps=eps, tol=1e-12
    )
    # both are feasible ...
    for P in (naive, res.plan):
        assert P.max() <= kappa * (1 + 1e-9)
        np.testing.assert_allclose(P.sum(1), a, atol=1e-9)
        np.testing.assert_allclose(P.sum(0), b, atol=1e-9)
    # ... but only the corrected one is the KL projection
    assert np.max(np.abs(naive - res.plan)) > 1e-3
    assert _kl(naive, K) > _kl(res.plan, K) + 1e-3


def test_relaxed_marginals_with_upper_bound_kkt():
    C, a, b = _problem(5, 5, 5)
    eps, rho, kappa = 0.1, 1.0, 0.06
    res = bregman_projection(
        C,
        [RowMarginal(a, rho=rho), UpperBound(kappa), ColumnMarginal(b, rho=rho)],
        eps=eps,
        tol=1e-12,
        max_iter=5000,
    )
    assert res.converged
    P = res.plan
    r, c = P.sum(1), P.sum(0)
    # stationarity: log P + (rho/eps)(log(r_i/a_i) + log(c_j/b_j)) + C/eps = -mu, mu >= 0
    mu = -(np.log(P) + C / eps + (rho / eps) * (np.log(r / a)[:, None] + np.log(c / b)[None]))
    active = np.greater_equal(P, kappa * (1 - 1e-7))
    assert active.any() and P.max() <= kappa * (1 + 1e-10)
    assert np.all(mu[active] >= -1e-8)
    np.testing.assert_allclose(mu[~active], 0.0, atol=1e-8)


def test_lower_bound_kkt():
    C, a, b = _problem(6, 4, 4)
    eps, ell = 0.1, 0.01
    res = bregman_projection(
        C, [RowMarginal(a), ColumnMarginal(b), LowerBound(ell)], eps=eps, tol=1e-12
    )
    assert res.converged
    P = res.plan
    assert P.min() >= ell * (1 - 1e-10)
    np.testing.assert_allclose(P.sum(1), a, atol=1e-10)
    np.testing.assert_allclose(P.sum(0), b, atol=1e-10)
    # log P = -C/eps + f + g + nu with nu >= 0, nu = 0 where P > ell
    f, g, nu = res.duals
    np.testing.assert_allclose(res.log_plan, -C / eps + f[:, None] + g[None] + nu, atol=1e-10)
    floor = np.less_equal(P, ell * (1 + 1e-7))
    assert floor.any() and np.all(nu >= 0)
    np.testing.assert_allclose(nu[~floor], 0.0, atol=1e-10)
    # no plain Sinkhorn plan satisfies the floor here
    assert otcl.sinkhorn(C, a, b, eps=eps).plan.min() < ell


def test_total_mass_with_upper_bound_is_water_filling():
    """KL projection onto {sum P = M, P <= kappa}: P = min(s K, kappa), s fixed by the mass M."""
    C, _, _ = _problem(7, 6, 6)
    eps, mass, kappa = 0.3, 2.0, 0.1
    K = np.exp(-C / eps)
    s = brentq(lambda s: np.minimum(s * K, kappa).sum() - mass, 1e-9, 1e9, xtol=1e-15, rtol=1e-15)
    res = bregman_projection(C, [TotalMass(mass), UpperBound(kappa)], eps=eps, tol=1e-12)
    assert res.converged
    np.testing.assert_allclose(res.plan, np.minimum(s * K, kappa), atol=1e-10)


# ------------------------------------------------------------------------------------------
# single projections in closed form


def test_single_projections_closed_form():
    rng = np.random.default_rng(8)
    Q = rng.random((3, 4)) + 0.1
    log_q = np.log(Q)
    a, b = rng.random(3) + 0.1, rng.random(4) + 0.1
    np.testing.assert_allclose(
        np.exp(RowMarginal(a).log_project(log_q)), Q * (a / Q.sum(1))[:, None], rtol=1e-13
    )
    np.testing.assert_allclose(
        np.exp(ColumnMarginal(b).log_project(log_q)), Q * (b / Q.sum(0))[None], rtol=1e-13
    )
    t = 2.0 / (2.0 + 0.5)
    np.testing.assert_allclose(
        np.exp(RowMarginal(a, rho=2.0).log_project(log_q, eps=0.5)),
        Q * ((a / Q.sum(1)) ** t)[:, None],
        rtol=1e-13,
    )
    np.testing.assert_allclose(
        np.exp(TotalMass(3.0).log_project(log_q)), 3.0 * Q / Q.sum(), rtol=1e-13
    )
    np.testing.assert_allclose(np.exp(UpperBound(0.5).log_project(log_q)), np.minimum(Q, 0.5))
    ell = rng.random((3, 4))
    np.testing.assert_allclose(np.exp(LowerBound(ell).log_project(log_q)), np.maximum(Q, ell))
    # a relaxed prox needs eps
    with pytest.raises(ValueError, match="eps"):
        RowMarginal(a, rho=1.0).log_project(log_q)


def test_relaxed_prox_is_the_minimiser():
    """The relaxed step minimises KL(P || Q) + (rho/eps) KL(P 1 || a) (random perturbations)."""
    rng = np.random.default_rng(9)
    Q = rng.random((3, 4)) + 0.1
    a = rng.random(3) + 0.1
    rho, eps = 0.7, 0.4

    def obj(P):
        r = P.sum(1)
        return _kl(P, Q) + (rho / eps) * np.sum(r * np.log(r / a) - r + a)

    P = np.exp(RowMarginal(a, rho=rho).log_project(np.log(Q), eps=eps))
    base = obj(P)
    for _ in range(50):
        assert obj(P * np.exp(1e-3 * rng.standard_normal(P.shape))) >= base - 1e-12


# ------------------------------------------------------------------------------------------
# numerics, convergence reporting, batches, backends


def test_small_eps_is_safe():
    C, a, b = _problem(10, 6, 6)
    kappa = 0.06
    res = bregman_projection(
        C,
        [RowMarginal(a), ColumnMarginal(b), UpperBound(kappa)],
        eps=1e-3,
        tol=1e-9,
        max_iter=20_000,
    )
    assert np.exp(-C.max() / 1e-3) == 0.0  # the kernel underflows in float64
    assert res.converged and np.all(np.isfinite(res.log_plan[res.plan > 0]))
    assert not np.any(np.isnan(res.log_plan))
    assert res.plan.max() <= kappa * (1 + 1e-8)
    np.testing.assert_allclose(res.plan.sum(1), a, atol=1e-8)
    np.testing.assert_allclose(res.plan.sum(0), b, atol=1e-8)


def test_non_convergence_is_reported():
    C, a, b, eps, kappa = _capacity_problem()
    with pytest.warns(ConvergenceWarning, match="did not converge"):
        res = bregman_projection(
            C, [UpperBound(kappa), RowMarginal(a), ColumnMarginal(b)], eps=eps, max_iter=3
        )
    assert res.converged is False and res.error > 1e-9 and res.n_iter == 3
    assert not np.any(np.isnan(res.plan))
    assert max(res.violations) == pytest.approx(res.error)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bregman_projection(C, [UpperBound(kappa), RowMarginal(a)], eps=eps, max_iter=1, warn=False)


def test_batched_equals_per_problem():
    rng = np.random.default_rng(11)
    B, n, m = 3, 4, 5
    C, a, b = random_problem(rng, n, m, batch=B)
    need = np.maximum(a.max(1) / m, b.max(1) / n)
    kappa = np.broadcast_to(1.2 * need[:, None, None], (B, n, m)).copy()
    kappa[1] = 0.5  # inactive in problem 1
    cons = [RowMarginal(a, rho=3.0), ColumnMarginal(b), UpperBound(kappa)]
    res = bregman_projection(C, cons, eps=0.15, tol=1e-11, max_iter=5000)
    assert isinstance(res, BregmanResult)
    assert res.plan.shape == (B, n, m) and res.n_iter.shape == (B,) and res.converged.all()
    assert res.duals[0].shape == (B, n) and res.duals[2].shape == (B, n, m)
    for k in range(B):
        one = bregman_projection(
            C[k],
            [RowMarginal(a[k], rho=3.0), ColumnMarginal(b[k]), UpperBound(kappa[k])],
            eps=0.15,
            tol=1e-11,
            max_iter=5000,
        )
        np.testing.assert_allclose(res.plan[k], one.plan, atol=1e-10)
        assert isinstance(one.n_iter, int) and one.plan.shape == (n, m)


def test_runs_on_array_api_strict():
    xps = pytest.importorskip("array_api_strict")
    C, a, b, eps, kappa = _capacity_problem()
    ell = np.full(C.shape, 1e-3)
    cons_np = [UpperBound(kappa), RowMarginal(a, rho=5.0), ColumnMarginal(b), LowerBound(ell)]
    ref = bregman_projection(C, cons_np, eps=eps, tol=1e-12)
    cons = [
        UpperBound(kappa),
        RowMarginal(xps.asarray(a), rho=5.0),
        ColumnMarginal(xps.asarray(b)),
        LowerBound(xps.asarray(ell)),
    ]
    res = bregman_projection(xps.asarray(C), cons, eps=eps, tol=1e-12)
    assert res.converged
    np.testing.assert_allclose(np.asarray(res.plan), ref.plan, atol=1e-12)
    np.testing.assert_allclose(np.asarray(res.duals[0]), ref.duals[0], atol=1e-9)


def test_backends_float32(backend):
    C, a, b, eps, kappa = _capacity_problem()
    ref = bregman_projection(
        C, [UpperBound(kappa), RowMarginal(a), ColumnMarginal(b)], eps=eps, tol=1e-12
    )
    Cx, ax, bx = (backend.asarray(x, "float32") for x in (C, a, b))
    kx = backend.asarray(np.full(C.shape, kappa), "float32")
    before = backend.to_numpy(kx).copy()
    res = bregman_projection(
        Cx, [UpperBound(kx), RowMarginal(ax), ColumnMarginal(bx)], eps=eps, tol=1e-5
    )
    assert res.converged
    assert res.plan.dtype == backend.dtype("float32")
    assert backend.device_of(res.plan) == backend.device_of(Cx)
    np.testing.assert_allclose(backend.to_numpy(res.plan), ref.plan, atol=2e-5)
    np.testing.assert_array_equal(backend.to_numpy(kx), before)


def test_inputs_not_modified():
    C, a, b, eps, _ = _capacity_problem()
    kappa = np.full(C.shape, 0.1)
    copies = [x.copy() for x in (C, a, b, kappa)]
    bregman_projection(C, [UpperBound(kappa), RowMarginal(a), ColumnMarginal(b)], eps=eps)
    for x, y in zip((C, a, b, kappa), copies, strict=True):
        np.testing.assert_array_equal(x, y)


# ------------------------------------------------------------------------------------------
# bad input and infeasible combinations


def test_bad_constraint_parameters():
    with pytest.raises(ValueError, match="kappa"):
        UpperBound(-1.0)
    with pytest.raises(ValueError, match="kappa"):
        UpperBound(0.0)
    with pytest.raises(TypeError, match="kappa"):
        UpperBound("1")
    with pytest.raises(ValueError, match="rho"):
        RowMarginal(rho=0.0)
    with pytest.raises(ValueError, match="rho"):
        ColumnMarginal(rho=-2.0)
    with pytest.raises(ValueError, match="mass"):
        TotalMass(-1.0)
    with pytest.raises(ValueError, match="ell"):
        LowerBound(-0.1)
    with pytest.raises(ValueError, match="ell"):
        LowerBound(math.inf)


@pytest.mark.parametrize(
    ("make", "exc", "match"),
    [
        (lambda C, a, b: [RowMarginal(a[:-1])], ValueError, "a"),
        (lambda C, a, b: [ColumnMarginal(np.ones(7) / 7)], ValueError, "b"),
        (lambda C, a, b: [RowMarginal(-a)], ValueError, "a has negative"),
        (lambda C, a, b: [UpperBound(-np.ones(C.shape))], ValueError, "kappa has negative"),
        (lambda C, a, b: [UpperBound(np.ones((3, 3)))], ValueError, "kappa must be"),
        (lambda C, a, b: [UpperBound(np.full(C.shape, np.nan))], ValueError, "kappa contains NaN"),
        (lambda C, a, b: [UpperBound(np.ones(C.shape, np.float32))], TypeError, "kappa"),
        (lambda C, a, b: [LowerBound(np.full(C.shape, np.inf))], ValueError, "ell contains inf"),
        (lambda C, a, b: [], ValueError, "constraints must not be empty"),
        (lambda C, a, b: RowMarginal(a), TypeError, "constraints must be a sequence"),
        (lambda C, a, b: [RowMarginal(a), "col"], TypeError, r"constraints\[1\]"),
        (lambda C, a, b: [RowMarginal(a), RowMarginal(a)], ValueError, "more than one"),
    ],
)
def test_bad_inputs(make, exc, match):
    C, a, b = _problem(12)
    with pytest.raises(exc, match=match):
        bregman_projection(C, make(C, a, b), eps=0.1)


def test_bad_solver_arguments():
    C, a, b = _problem(13)
    cons = [RowMarginal(a), ColumnMarginal(b)]
    with pytest.raises(ValueError, match="eps"):
        bregman_projection(C, cons, eps=0.0)
    with pytest.raises(ValueError, match="cost"):
        bregman_projection(C[0], cons, eps=0.1)
    with pytest.raises(ValueError, match="max_iter"):
        bregman_projection(C, cons, eps=0.1, max_iter=-1)
    with pytest.raises(ValueError, match="tol"):
        bregman_projection(C, cons, eps=0.1, tol=-1.0)
    with pytest.raises(ValueError, match="check_every"):
        bregman_projection(C, cons, eps=0.1, check_every=0)
    with pytest.raises(ValueError, match="mask"):
        bregman_projection(C, cons, eps=0.1, mask=np.ones((2, 2), dtype=bool))


@pytest.mark.parametrize(
    ("make", "match"),
    [
        # kappa * n * m below the total mass
        (lambda a, b: [TotalMass(1.0), UpperBound(1.0 / 40)], "at most 0.75"),
        (lambda a, b: [RowMarginal(a), UpperBound(1.0 / 40)], "kappa"),
        (lambda a, b: [ColumnMarginal(b), UpperBound(0.01)], "column"),
        (lambda a, b: [RowMarginal(a), ColumnMarginal(2 * b)], "total mass"),
        (lambda a, b: [RowMarginal(a), TotalMass(2.0)], "total mass"),
        (lambda a, b: [UpperBound(0.1), LowerBound(0.2)], "ell exceeds kappa"),
        (lambda a, b: [RowMarginal(a), LowerBound(0.1)], "lower bound"),
    ],
)
def test_infeasible_combinations(make, match):
    C, a, b = _problem(14, 5, 6)
    with pytest.raises(ValueError, match=match):
        bregman_projection(C, make(a, b), eps=0.1)


def test_infeasible_by_capacity_cut():
    """Rows and columns each fit under kappa, yet no plan does (row 0 cannot be served)."""
    C = np.zeros((2, 2))
    a, b = np.array([0.9, 0.1]), np.array([0.1, 0.9])
    cons = [RowMarginal(a), ColumnMarginal(b), UpperBound(0.5)]
    with pytest.raises(ValueError, match="cannot be served"):
        bregman_projection(C, cons, eps=0.1)
    # with a larger kappa it is feasible: 0.1 + 0.85 >= 0.9
    res = bregman_projection(C, [*cons[:2], UpperBound(0.85)], eps=0.1, tol=1e-10)
    assert res.converged and res.plan.max() <= 0.85 * (1 + 1e-9)


def test_zero_capacity_acts_as_a_mask():
    C, a, b = _problem(17, 4, 5)
    kappa = np.full(C.shape, 0.12)
    kappa[0, 1] = kappa[2, 3] = 0.0
    cons = [RowMarginal(a), ColumnMarginal(b)]
    res = bregman_projection(C, [UpperBound(kappa), *cons], eps=0.2, tol=1e-12)
    ref = bregman_projection(
        C,
        [UpperBound(np.where(kappa > 0, kappa, np.inf)), *cons],
        eps=0.2,
        mask=kappa > 0,
        tol=1e-12,
    )
    assert res.converged and ref.converged
    assert res.plan[0, 1] == 0 and res.plan[2, 3] == 0
    np.testing.assert_allclose(res.plan, ref.plan, atol=1e-12)


def test_lower_bound_on_masked_entry_is_rejected():
    C, a, _ = _problem(15, 3, 3)
    mask = np.ones((3, 3), dtype=bool)
    mask[0, 0] = False
    with pytest.raises(ValueError, match="ell is positive"):
        bregman_projection(C, [LowerBound(0.01), RowMarginal(a)], eps=0.1, mask=mask)


def test_numpy_scalar_tol_is_accepted_as_by_sinkhorn():
    """tol=np.float32(...) works in sinkhorn; bregman_projection takes it too and stops at the
    same tolerance as the float."""
    C = np.random.default_rng(3).uniform(0, 1, (5, 4))
    a, b = np.full(5, 0.2), np.full(4, 0.25)
    sets = [otcl.RowMarginal(a), otcl.ColumnMarginal(b)]
    ref = otcl.bregman_projection(C, sets, eps=0.2, tol=1e-6)
    got = otcl.bregman_projection(C, sets, eps=0.2, tol=np.float32(1e-6))
    np.testing.assert_array_equal(np.asarray(got.plan), np.asarray(ref.plan))
