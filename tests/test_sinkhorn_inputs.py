"""Bad input to ``otcl.sinkhorn`` raises ``ValueError``/``TypeError`` naming the argument.

Each test checks the exception type and that the message starts with (or names) the offending
argument, so that a check that fires for the wrong reason, or an error from deep inside the
iteration, fails the test.
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np
import pytest
import torch

import otcl

N, M = 4, 3


def _good() -> dict[str, Any]:
    rng = np.random.default_rng(0)
    return {
        "cost": rng.random((N, M)),
        "a": np.full(N, 1.0 / N),
        "b": np.full(M, 1.0 / M),
        "eps": 0.1,
    }


def _call(**override: Any) -> otcl.Transport:
    kw = _good()
    kw.update(override)
    return otcl.sinkhorn(kw.pop("cost"), kw.pop("a"), kw.pop("b"), **kw)


def _raises(exc: type[Exception], pattern: str, **override: Any) -> None:
    with pytest.raises(exc, match=pattern):
        _call(**override)


def test_good_input_solves() -> None:
    """The baseline every other test perturbs is itself valid."""
    T = _call()
    assert T.converged is True


# ------------------------------------------------------------------------- non-finite values


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_cost(bad: float) -> None:
    C = _good()["cost"]
    C[1, 2] = bad
    _raises(ValueError, r"^cost contains NaN or inf", cost=C)


@pytest.mark.parametrize("name", ["a", "b"])
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_marginal(name: str, bad: float) -> None:
    x = _good()[name]
    x[0] = bad
    _raises(ValueError, rf"^{name} contains NaN or inf", **{name: x})


# ----------------------------------------------------------------------------------- marginals


@pytest.mark.parametrize("name", ["a", "b"])
def test_negative_marginal(name: str) -> None:
    x = _good()[name]
    x[0], x[1] = -x[0], x[1] + 2 * x[0]  # same total mass, one negative entry
    _raises(ValueError, rf"^{name} has negative entries", **{name: x})


@pytest.mark.parametrize("name", ["a", "b"])
def test_all_zero_marginal(name: str) -> None:
    x = np.zeros_like(_good()[name])
    _raises(ValueError, rf"^{name} has zero total mass", **{name: x}, rho_a=1.0, rho_b=1.0)


def test_balanced_masses_must_match() -> None:
    b = _good()["b"] * (1 + 1e-4)
    _raises(ValueError, r"^a and b must have equal total mass", b=b)


def test_balanced_masses_within_tolerance_are_accepted() -> None:
    # sqrt(float64 eps) = 1.5e-8 relative: a rounding-level mismatch is not an error
    T = _call(b=_good()["b"] * (1 + 1e-12))
    assert T.converged is True


def test_unequal_masses_allowed_when_relaxed() -> None:
    T = _call(b=2.0 * _good()["b"], rho_b=1.0)
    assert T.converged is True


# ------------------------------------------------------------------------------------- shapes


@pytest.mark.parametrize(("name", "size"), [("a", N + 1), ("b", M - 1)])
def test_marginal_length_mismatch(name: str, size: int) -> None:
    _raises(ValueError, rf"^{name} has length {size}", **{name: np.full(size, 1.0 / size)})


def test_marginal_batch_mismatch() -> None:
    C = np.random.default_rng(1).random((3, N, M))
    _raises(ValueError, r"^a has batch size 2 but the cost has 3", cost=C, a=np.full((2, N), 0.25))


@pytest.mark.parametrize("shape", [(N,), (1, 2, N, M)])
def test_cost_dimension(shape: tuple[int, ...]) -> None:
    _raises(ValueError, r"^cost must have shape \(n, m\) or \(B, n, m\)", cost=np.ones(shape))


def test_marginal_dimension() -> None:
    _raises(ValueError, r"^a must have 1 or 2 dimensions", a=np.full((1, 1, N), 0.25))


@pytest.mark.parametrize("shape", [(0, M), (N, 0), (0, N, M)])
def test_empty_cost(shape: tuple[int, ...]) -> None:
    n, m = shape[-2:]
    a = np.ones(n) / max(n, 1)
    b = np.ones(m) / max(m, 1)
    _raises(ValueError, r"^cost must not be empty", cost=np.zeros(shape), a=a, b=b)


# ------------------------------------------------------------------------------------ scalars


@pytest.mark.parametrize("eps", [0.0, -0.1, math.inf, math.nan])
def test_eps_must_be_positive_finite(eps: float) -> None:
    _raises(ValueError, r"^eps must be positive and finite", eps=eps)


@pytest.mark.parametrize("eps", ["0.1", None, True, [0.1]])
def test_eps_must_be_a_number(eps: Any) -> None:
    _raises(TypeError, r"^eps must be a real number", eps=eps)


def test_eps_array_must_be_scalar_and_positive() -> None:
    _raises(ValueError, r"^eps must be a scalar", eps=np.array([0.1]))
    _raises(ValueError, r"^eps must be positive and finite", eps=np.array(-0.1))


def test_eps_array_must_match_cost() -> None:
    _raises(TypeError, r"^eps has dtype float32", eps=np.array(0.1, dtype=np.float32))
    _raises(TypeError, r"^eps is a torch array", eps=torch.tensor(0.1, dtype=torch.float64))


def test_numpy_scalars_are_numbers() -> None:
    """``np.float32(0.1)`` is a number (not an array to match against a float64 cost)."""
    ref = _call(eps=0.1, rho_b=0.5)
    T = _call(eps=np.float64(0.1), rho_b=np.float32(0.5))
    np.testing.assert_allclose(T.plan, ref.plan, rtol=1e-6)
    T32 = _call(eps=np.float32(0.25))
    assert T32.converged is True


@pytest.mark.parametrize("name", ["rho_a", "rho_b"])
@pytest.mark.parametrize("rho", [0.0, -1.0, math.nan, -math.inf])
def test_rho_must_be_positive(name: str, rho: float) -> None:
    _raises(ValueError, rf"^{name} must be in \(0, inf\]", **{name: rho})


@pytest.mark.parametrize("name", ["rho_a", "rho_b"])
def test_rho_must_be_a_number(name: str) -> None:
    _raises(TypeError, rf"^{name} must be a real number", **{name: np.array(1.0)})


# ----------------------------------------------------------------------------- dtypes, libraries


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.complex128, np.bool_])
def test_cost_dtype_must_be_real_floating(dtype: type) -> None:
    _raises(TypeError, r"^cost must have a real floating dtype", cost=np.ones((N, M), dtype=dtype))


@pytest.mark.parametrize("name", ["a", "b"])
@pytest.mark.parametrize("dtype", [np.int64, np.complex128])
def test_marginal_dtype(name: str, dtype: type) -> None:
    x = np.ones(N if name == "a" else M, dtype=dtype)
    _raises(TypeError, rf"^{name} has dtype {np.dtype(dtype).name}", **{name: x})


def test_mixed_float_dtypes() -> None:
    good = _good()
    _raises(
        TypeError,
        r"^a has dtype float32 but cost has dtype float64",
        a=good["a"].astype(np.float32),
    )
    _raises(
        TypeError,
        r"^b has dtype float64 but cost has dtype float32",
        cost=good["cost"].astype(np.float32),
        a=good["a"].astype(np.float32),
    )


def test_mixed_libraries() -> None:
    good = _good()
    _raises(TypeError, r"^a is a torch array but cost is a numpy array", a=torch.tensor(good["a"]))
    _raises(
        TypeError,
        r"^b is a numpy array but cost is a torch array",
        cost=torch.tensor(good["cost"]),
        a=torch.tensor(good["a"]),
    )


@pytest.mark.parametrize("name", ["cost", "a", "b"])
def test_lists_are_not_arrays(name: str) -> None:
    _raises(TypeError, rf"^{name} must be an array", **{name: _good()[name].tolist()})


def test_mixed_devices() -> None:
    """A tensor on another device (``meta`` stands in for a GPU) is refused by name."""
    good = _good()
    _raises(
        ValueError,
        r"^a is on device meta but cost is on cpu",
        cost=torch.tensor(good["cost"]),
        a=torch.zeros(N, dtype=torch.float64, device="meta"),
        b=torch.tensor(good["b"]),
    )


# ------------------------------------------------------------------------------ loop options


@pytest.mark.parametrize("domain", ["Log", "exact", "", None, 1])
def test_bad_domain(domain: Any) -> None:
    _raises(ValueError, r"^domain must be one of", domain=domain)


@pytest.mark.parametrize("max_iter", [-1, 2.0, 1.5, True, "10", None])
def test_bad_max_iter(max_iter: Any) -> None:
    _raises(ValueError, r"^max_iter must be a non-negative integer", max_iter=max_iter)


@pytest.mark.parametrize("tol", [-1e-9, math.inf, math.nan])
def test_bad_tol_value(tol: float) -> None:
    _raises(ValueError, r"^tol must be finite and >= 0", tol=tol)


@pytest.mark.parametrize("tol", ["1e-9", True, np.array(1e-9)])
def test_bad_tol_type(tol: Any) -> None:
    _raises(TypeError, r"^tol must be a number or None", tol=tol)


@pytest.mark.parametrize("check_every", [0, -3, 2.5, True, None])
def test_bad_check_every(check_every: Any) -> None:
    _raises(ValueError, r"^check_every must be a positive integer", check_every=check_every)


# --------------------------------------------------------------------------------------- init


@pytest.mark.parametrize("init", [np.zeros(N), (np.zeros(N),), (np.zeros(N), np.zeros(M), 0)])
def test_init_must_be_a_pair(init: Any) -> None:
    _raises(TypeError, r"^init must be a pair \(f, g\)", init=init)


def test_init_shapes() -> None:
    _raises(
        ValueError,
        re.escape("init[0] (f) has shape (5,), expected (4,)"),
        init=(np.zeros(N + 1), np.zeros(M)),
    )
    _raises(
        ValueError, re.escape("init[1] (g) has shape (2, 3)"), init=(np.zeros(N), np.zeros((2, M)))
    )


def test_init_library_and_dtype() -> None:
    _raises(TypeError, r"^init_f is a torch array", init=(torch.zeros(N), np.zeros(M)))
    _raises(TypeError, r"^init_g has dtype float32", init=(np.zeros(N), np.zeros(M, np.float32)))


@pytest.mark.parametrize("bad", [math.nan, math.inf])
@pytest.mark.parametrize("side", [0, 1])
def test_init_values(bad: float, side: int) -> None:
    init = [np.zeros(N), np.zeros(M)]
    init[side][0] = bad
    _raises(ValueError, r"^init contains NaN or \+inf", init=tuple(init))


def test_init_minus_inf_is_allowed_for_zero_mass() -> None:
    """A warm start from a solution with a zero-mass row carries ``f = -inf`` there."""
    a = np.array([0.0, 0.5, 0.25, 0.25])
    first = _call(a=a)
    assert first.f[0] == -math.inf
    again = _call(a=a, init=(first.f, first.g))
    assert again.converged is True
    np.testing.assert_allclose(again.plan, first.plan, atol=1e-9)


# --------------------------------------------------------------------------------------- mask


@pytest.mark.parametrize("dtype", [np.float64, np.int64])
def test_mask_must_be_boolean(dtype: type) -> None:
    _raises(TypeError, r"^mask must be a boolean array", mask=np.ones((N, M), dtype=dtype))


def test_mask_shape() -> None:
    _raises(ValueError, r"^mask has shape \(4, 4\)", mask=np.ones((N, N), dtype=bool))
    _raises(ValueError, r"^mask has shape \(2, 4, 3\)", mask=np.ones((2, N, M), dtype=bool))


def test_mask_library() -> None:
    _raises(
        TypeError,
        r"^mask is a torch array but cost is a numpy array",
        mask=torch.ones((N, M), dtype=torch.bool),
    )
    _raises(TypeError, r"^mask must be an array", mask=np.ones((N, M), dtype=bool).tolist())


def test_mask_device() -> None:
    good = _good()
    _raises(
        ValueError,
        r"^mask is on device meta",
        cost=torch.tensor(good["cost"]),
        a=torch.tensor(good["a"]),
        b=torch.tensor(good["b"]),
        mask=torch.ones((N, M), dtype=torch.bool, device="meta"),
    )


def test_mask_must_leave_every_massive_row_and_column_an_entry() -> None:
    mask = np.ones((N, M), dtype=bool)
    mask[2, :] = False
    _raises(ValueError, r"^mask leaves a row with positive mass", mask=mask)
    mask = np.ones((N, M), dtype=bool)
    mask[:, 1] = False
    _raises(ValueError, r"^mask leaves a column with positive mass", mask=mask)


def test_fully_masked_zero_mass_row_is_allowed() -> None:
    mask = np.ones((N, M), dtype=bool)
    mask[2, :] = False
    # this 3 x 3 problem is slowly mixing (POT also needs ~2000 rounds), hence max_iter
    T = _call(mask=mask, a=np.array([1 / 3, 1 / 3, 0.0, 1 / 3]), max_iter=5000)
    assert T.converged is True
    assert np.all(T.plan[2] == 0.0)


def test_errors_do_not_modify_inputs() -> None:
    """Validation never normalises or clips the caller's arrays, even when it rejects them."""
    good = _good()
    a = good["a"].copy()
    a[0] = -a[0]
    before = a.copy()
    with pytest.raises(ValueError):
        _call(a=a)
    np.testing.assert_array_equal(a, before)
