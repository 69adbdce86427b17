"""Inputs that used to give a silently wrong number, or a bare error, now give a clear one; and
the default tolerance of :func:`otcl.sinkhorn` is reachable in float32.

Oracles: the error messages name the argument; convergence is checked by the marginal error of
the plan computed here in float64 from the returned potentials.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

import otcl
from otcl.alignment.targets import domain_prior
from otcl.solvers.adjoint import fixed_round_potentials, implicit_cotangents
from otcl.solvers.bregman import ColumnMarginal, RowMarginal, bregman_projection
from otcl.solvers.result import ConvergenceWarning
from otcl.solvers.sinkhorn import default_tol

# ------------------------------------------------------------------------------------------
# row_projection: the potential g must be finite


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("lib", ["numpy", "torch"])
def test_row_projection_refuses_non_finite_g(lib, bad):
    rng = np.random.default_rng(0)
    C, g = rng.random((4, 5)), np.zeros(5)
    g[3] = bad
    if lib == "torch":
        C, g = torch.tensor(C), torch.tensor(g)
    with pytest.raises(ValueError, match=r"^g contains NaN or inf"):
        otcl.row_projection(C, eps=0.1, g=g)


# ------------------------------------------------------------------------------------------
# half precision in the NumPy-style functions


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_cost_is_a_clear_type_error(dtype):
    C = torch.rand(4, 5).to(dtype)
    for fn in (lambda: otcl.sinkhorn(C, eps=0.1), lambda: otcl.row_projection(C, eps=0.1),
               lambda: bregman_projection(C, [RowMarginal(), ColumnMarginal()], eps=0.1)):
        with pytest.raises(TypeError, match=r"^cost has dtype torch\.b?float16; .*float32 or "
                                            r"float64.*otcl\.torch loss modules"):
            fn()


def test_half_precision_embeddings_are_a_clear_type_error():
    z1, z2 = torch.randn(6, 3).bfloat16(), torch.randn(6, 3).bfloat16()
    with pytest.raises(TypeError, match=r"^z1? has dtype torch\.bfloat16; .*float32 or float64"):
        otcl.info_nce(z1, z2)
    with pytest.raises(TypeError, match=r"has dtype float16; .*float32 or float64"):
        otcl.gca_ince(np.zeros((6, 3), np.float16) + 1, np.ones((6, 3), np.float16))


def test_torch_loss_modules_still_take_bfloat16():
    import otcl.torch as ott

    z1, z2 = torch.randn(6, 3).bfloat16(), torch.randn(6, 3).bfloat16()
    value = ott.InfoNCE(metric="cosine")(z1, z2)
    assert value.dtype == torch.float32 and torch.isfinite(value)


# ------------------------------------------------------------------------------------------
# NumPy integers as iteration counts


def test_numpy_integers_are_accepted_as_counts():
    rng = np.random.default_rng(1)
    C = rng.random((5, 6))
    t = otcl.sinkhorn(C, eps=0.2, max_iter=np.int64(50), check_every=np.int32(5), tol=None)
    assert t.n_iter == 50
    r = bregman_projection(C, [RowMarginal(), ColumnMarginal()], eps=0.2,
                           max_iter=np.int64(7), check_every=np.int64(7), tol=None)
    assert r.n_iter == 7
    lk = -C[None] / 0.2
    la, lb = np.full((1, 5), -math.log(5)), np.full((1, 6), -math.log(6))
    phi, _, _ = fixed_round_potentials(lk, la, lb, 1.0, 1.0, np.int64(4))
    phi_ref, _, _ = fixed_round_potentials(lk, la, lb, 1.0, 1.0, 4)
    np.testing.assert_array_equal(phi, phi_ref)
    phi_c, gamma_c, _ = fixed_round_potentials(lk, la, lb, 1.0, 1.0, 500)  # converged
    bar = (np.arange(5.0) - 2.0)[None, :]  # orthogonal to the constant shift of the potentials
    cot = implicit_cotangents(lk, phi_c, gamma_c, la, lb, 1.0, 1.0, bar, None,
                              max_iter=np.int64(50))
    assert np.isfinite(cot.log_kernel).all()


# ------------------------------------------------------------------------------------------
# domain_prior: NaN ids


@pytest.mark.parametrize("lib", ["numpy", "torch"])
def test_domain_prior_refuses_nan_ids(lib):
    d = np.array([0.0, 1.0, math.nan, 1.0])
    if lib == "torch":
        d = torch.tensor(d)
    with pytest.raises(ValueError, match=r"^domains contains NaN"):
        domain_prior(d, 0.5, 0.1)
    ok = domain_prior(d[[0, 1, 3]], 0.5, 0.1)  # finite floating ids are fine
    T = ok.numpy() if lib == "torch" else ok
    np.testing.assert_array_equal(T, [[1, 0.1, 0.1], [0.1, 1, 0.5], [0.1, 0.5, 1]])


# ------------------------------------------------------------------------------------------
# the default tolerance is reachable in the dtype


def test_default_tol_per_dtype():
    assert default_tol(np, np.float64) == 1e-9
    assert default_tol(np, np.float32) == 1e-6
    assert default_tol(torch, torch.float32) == 1e-6


def _cosine_cost(n: int, d: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d))
    y = x + 0.5 * rng.standard_normal((n, d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y /= np.linalg.norm(y, axis=1, keepdims=True)
    return 1.0 - x @ y.T


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("lib", ["numpy", "torch"])
def test_float32_default_tol_converges_without_warning(lib, seed):
    n, eps, max_iter = 256, 0.1, 1000
    C = _cosine_cost(n, 32, seed).astype(np.float32)
    Cx = torch.from_numpy(C.copy()) if lib == "torch" else C
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        t = otcl.sinkhorn(Cx, eps=eps, max_iter=max_iter)
    assert t.converged and t.n_iter < max_iter and t.error <= 1e-6
    # oracle: the marginal error of the float32 potentials' plan, evaluated in float64
    f = np.asarray(t.f, dtype=np.float64)
    g = np.asarray(t.g, dtype=np.float64)
    P = np.exp((f[:, None] + g[None, :] - C.astype(np.float64)) / eps)
    assert np.abs(P.sum(1) - 1 / n).sum() < 2e-6
    assert np.abs(P.sum(0) - 1 / n).sum() < 2e-6


@pytest.mark.parametrize("lib", ["numpy", "torch"])
def test_float64_default_tol_unchanged(lib):
    C = _cosine_cost(128, 16, 2)
    Cx = torch.from_numpy(C) if lib == "torch" else C
    t = otcl.sinkhorn(Cx, eps=0.1)
    explicit = otcl.sinkhorn(Cx, eps=0.1, tol=1e-9)
    assert t.converged and t.error <= 1e-9
    assert t.n_iter == explicit.n_iter and t.error == explicit.error
    np.testing.assert_array_equal(np.asarray(t.f), np.asarray(explicit.f))


def test_tol_rejects_other_strings():
    with pytest.raises(TypeError, match=r"^tol must be a number or None"):
        otcl.sinkhorn(np.ones((2, 2)), eps=0.1, tol="fast")
