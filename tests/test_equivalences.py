"""The equivalences module: every record holds on every library and precision, and the numbers it
reports are the ones an independent computation gives.

Oracles: InfoNCE by SciPy's log-sum-exp, a naive kernel-domain Sinkhorn for the half-step plans,
and the generalised KL written in NumPy.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.special import logsumexp

from otcl import info_nce
from otcl.alignment.equivalences import (
    EquivalenceRecord,
    check_equivalences,
    half_step_plans,
    kl_curve,
    run_all,
)

NAMES = {
    "infonce_is_row_projection",
    "pythagorean_identity",
    "kl_monotone",
    "gca_ince_below_ince",
    "gca_rince_one_step_is_rince",
    "rince_q_to_zero_is_infonce",
    "uot_row_mass_identity",
    "sinkhorn_marginals",
    "simclr_two_view_is_nt_xent",
    "byol_is_l2_regression",
    "swav_codes_are_sinkhorn_knopp",
    "capacity_bound_holds",
}


def _cos(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    yn = y / np.linalg.norm(y, axis=1, keepdims=True)
    return xn @ yn.T


def _naive_half_steps(K: np.ndarray, n_half: int) -> list[np.ndarray]:
    u, v = np.ones(K.shape[0]), np.ones(K.shape[1])
    plans = []
    for k in range(1, n_half + 1):
        if k % 2:
            u = 1.0 / (K @ v)
        else:
            v = 1.0 / (K.T @ u)
        plans.append(u[:, None] * K * v[None, :])
    return plans


def _gen_kl(T: np.ndarray, P: np.ndarray) -> float:
    pos = T > 0
    return float(np.sum(T[pos] * np.log(T[pos] / P[pos])) - T.sum() + P.sum())


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("library", ["numpy", "torch", "array_api_strict"])
def test_every_record_holds(library, dtype):
    records = run_all(library, n=24, d=8, dtype=dtype, seed=3)
    assert {r.name for r in records} == NAMES
    for r in records:
        assert isinstance(r, EquivalenceRecord)
        assert r.holds, r
        assert np.isfinite([r.lhs, r.rhs, r.gap]).all()
        assert r.gap == pytest.approx(r.lhs - r.rhs, abs=1e-15)
        if dtype == "float64":
            assert r.tol <= 1e-9 or r.name == "rince_q_to_zero_is_infonce"


def test_records_agree_across_libraries():
    ref = {r.name: r for r in run_all("numpy", n=16, d=6, seed=4)}
    for library in ("torch", "array_api_strict"):
        for r in run_all(library, n=16, d=6, seed=4):
            assert r.lhs == pytest.approx(ref[r.name].lhs, rel=1e-9, abs=1e-12)
            assert r.rhs == pytest.approx(ref[r.name].rhs, rel=1e-9, abs=1e-12)


def test_records_report_independently_computed_values():
    rng = np.random.default_rng(5)
    N, eps = 12, 0.5
    z1 = rng.standard_normal((N, 5))
    z2 = z1 + 0.5 * rng.standard_normal((N, 5))
    rec = {r.name: r for r in check_equivalences(z1, z2, eps=eps)}
    s = _cos(z1, z2) / eps
    ince = np.mean(logsumexp(s, axis=1) - np.diag(s))
    assert rec["infonce_is_row_projection"].lhs == pytest.approx(ince, abs=1e-12)
    assert rec["infonce_is_row_projection"].rhs == pytest.approx(ince, abs=1e-12)
    assert rec["gca_ince_below_ince"].rhs == pytest.approx(ince, abs=1e-12)
    assert rec["gca_ince_below_ince"].lhs < ince  # a strict decrease on a generic batch
    q, lam = 0.6, 0.01
    E = np.exp(s)
    rince = np.mean(-(np.diag(E) ** q) / q + (lam * E.sum(1)) ** q / q)
    assert rec["gca_rince_one_step_is_rince"].rhs == pytest.approx(rince, abs=1e-12)
    assert rec["kl_monotone"].one_sided and rec["kl_monotone"].lhs <= 1e-12
    assert rec["rince_q_to_zero_is_infonce"].rhs == pytest.approx(ince, abs=1e-12)


def test_half_step_plans_match_naive_sinkhorn():
    rng = np.random.default_rng(7)
    C = rng.standard_normal((5, 6))
    a, b = np.full(5, 1.2), np.full(6, 1.0)
    plans = half_step_plans(C, 0.5, 7, a, b)
    K = np.exp(-C / 0.5)
    u, v = np.ones(5), np.ones(6)
    for k, P in enumerate(plans, start=1):
        if k % 2:
            u = a / (K @ v)
            np.testing.assert_allclose(P.sum(1), a, rtol=1e-13)
        else:
            v = b / (K.T @ u)
            np.testing.assert_allclose(P.sum(0), b, rtol=1e-13)
        np.testing.assert_allclose(P, u[:, None] * K * v[None, :], rtol=1e-12)


@pytest.mark.parametrize("library", ["numpy", "torch"])
def test_kl_curve_starts_at_info_nce_and_never_increases(library):
    rng = np.random.default_rng(8)
    N, eps = 10, 0.4
    z1 = rng.standard_normal((N, 4))
    z2 = z1 + rng.standard_normal((N, 4))
    conv = torch.tensor if library == "torch" else np.asarray
    curve = kl_curve(conv(z1), conv(z2), eps=eps, n_half_steps=16)
    assert isinstance(curve, np.ndarray) and curve.shape == (16,)
    assert curve[0] == pytest.approx(float(info_nce(z1, z2, eps=eps, layout="cross")), abs=1e-12)
    assert np.all(np.diff(curve) <= 1e-13)
    assert curve[-1] < curve[0]
    K = np.exp(_cos(z1, z2) / eps)
    expected = [_gen_kl(np.eye(N), P) / N for P in _naive_half_steps(K, 16)]
    np.testing.assert_allclose(curve, expected, rtol=0, atol=1e-12)
