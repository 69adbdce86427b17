"""The solver uses only the array API standard (plus ``otcl.backend``): it runs on
``array_api_strict`` arrays, which refuse every non-standard call, and agrees with NumPy.

Arrays are placed on ``array_api_strict.Device("device1")`` (not the default device), so a
helper that creates an array without passing ``device=`` fails here too.
"""

from __future__ import annotations

import math
import warnings

import array_api_strict as xs
import numpy as np
import pytest

import otcl

DEVICE = xs.Device("device1")
DTYPES = {"float64": xs.float64, "float32": xs.float32}
DTYPES_NP = {"float64": np.float64, "float32": np.float32}
StrictArray = type(xs.asarray(0.0))


def _strict(x: np.ndarray, dtype: str | None = "float64") -> StrictArray:
    if dtype is None:
        return xs.asarray(x, device=DEVICE)
    return xs.asarray(x.astype(dtype), device=DEVICE)


def _np(x: StrictArray) -> np.ndarray:
    assert isinstance(x, StrictArray), type(x)
    return np.asarray(xs.asarray(x, device=xs.Device("CPU_DEVICE")))


def _problem(batch: int | None, zero: bool, mass_b: float = 1.0):
    rng = np.random.default_rng(0 if batch is None else batch)
    lead = () if batch is None else (batch,)
    C = rng.random((*lead, 7, 5))
    a = rng.random((*lead, 7)) + 0.05
    b = rng.random((*lead, 5)) + 0.05
    if zero:
        a[..., 2] = 0.0
        b[..., 4] = 0.0
    a = a / a.sum(-1, keepdims=True)
    b = mass_b * b / b.sum(-1, keepdims=True)
    mask = rng.random(C.shape) > 0.25
    mask[..., :, 0] = True
    mask[..., 0, :] = True
    return C, a, b, mask


FIELDS = ("f", "g", "plan", "log_plan", "row_mass", "col_mass")
FIELDS += ("marginal_error_a", "marginal_error_b", "transport_cost")


def _compare(Ts: otcl.Transport, Tn: otcl.Transport, dtype: str, rtol: float) -> None:
    """Every output of the strict solve is a strict array on DEVICE equal to the NumPy one."""
    assert Ts.domain == Tn.domain
    np.testing.assert_array_equal(Ts.n_iter, Tn.n_iter)
    np.testing.assert_array_equal(Ts.converged, Tn.converged)
    for name in FIELDS:
        xs_val, np_val = getattr(Ts, name), getattr(Tn, name)
        assert xs_val.dtype == DTYPES[dtype], name
        assert xs_val.device == DEVICE, name
        got = _np(xs_val)
        assert got.shape == np.shape(np_val), name
        # same iterates; NumPy's buffered loops reach them by other routes (summation order,
        # the log domain's column step from the row step's exponentials). The marginal errors
        # are differences of nearly equal masses: compared to the masses' rounding
        atol = 0.0
        if name.startswith("marginal_error"):
            atol = 100 * float(np.finfo(DTYPES_NP[dtype]).eps)
        np.testing.assert_allclose(got, np_val, rtol=rtol, atol=atol, err_msg=name)


@pytest.mark.parametrize("domain", ["auto", "kernel", "stabilized", "log"])
@pytest.mark.parametrize(
    "rho", [(math.inf, math.inf), (1.0, 0.4), (math.inf, 0.4)], ids=["bal", "unbal", "semi"]
)
@pytest.mark.parametrize("batch", [None, 3], ids=["single", "batch"])
@pytest.mark.parametrize("masked", [False, True], ids=["dense", "masked"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_sinkhorn_on_strict_arrays_matches_numpy(domain, rho, batch, masked, dtype):
    C, a, b, mask = _problem(batch, zero=masked, mass_b=1.0 if math.isinf(rho[1]) else 1.3)
    tol = 1e-10 if dtype == "float64" else 1e-5
    kw = {"eps": 0.08, "rho_a": rho[0], "rho_b": rho[1], "domain": domain, "tol": tol}
    Tn = otcl.sinkhorn(
        C.astype(dtype), a.astype(dtype), b.astype(dtype), mask=mask if masked else None, **kw
    )
    Ts = otcl.sinkhorn(
        _strict(C, dtype),
        _strict(a, dtype),
        _strict(b, dtype),
        mask=_strict(mask, None) if masked else None,
        **kw,
    )
    _compare(Ts, Tn, dtype, rtol=1e-9 if dtype == "float64" else 1e-4)


@pytest.mark.parametrize("domain", ["auto", "kernel", "stabilized", "log"])
def test_strict_warm_start_array_eps_and_fixed_rounds(domain):
    C, a, b, _ = _problem(2, zero=False)
    first = otcl.sinkhorn(_strict(C), _strict(a), _strict(b), eps=0.1, tol=1e-6)
    eps = xs.asarray(0.1, dtype=xs.float64, device=DEVICE)
    Ts = otcl.sinkhorn(
        _strict(C), _strict(a), _strict(b), eps=eps, init=(first.f, first.g), domain=domain,
        max_iter=15, tol=None,
    )  # fmt: skip
    Tn = otcl.sinkhorn(
        C, a, b, eps=np.asarray(0.1), init=(_np(first.f), _np(first.g)), domain=domain,
        max_iter=15, tol=None,
    )  # fmt: skip
    assert Ts.n_iter.tolist() == [15, 15] and Ts.converged is None
    _compare(Ts, Tn, "float64", rtol=1e-9)


@pytest.mark.parametrize("domain", ["kernel", "stabilized", "log"])
@pytest.mark.parametrize("rho", [math.inf, 0.05], ids=["balanced", "unbalanced"])
def test_strict_non_convergence_and_numerical_trouble(domain, rho):
    """The warning paths (incl. the kernel domain leaving the float range and the stabilized
    domain falling back to log, which float32 unbalanced at eps = 1e-3 triggers) also stay
    within the standard."""
    rng = np.random.default_rng(2)
    C = 2.0 * rng.random((6, 5))
    kw = {"eps": 1e-3, "rho_a": rho, "rho_b": rho, "domain": domain, "max_iter": 60}
    with warnings.catch_warnings(record=True) as caught_s:
        warnings.simplefilter("always")
        Ts = otcl.sinkhorn(_strict(C, "float32"), **kw)
    with warnings.catch_warnings(record=True) as caught_n:
        warnings.simplefilter("always")
        Tn = otcl.sinkhorn(C.astype("float32"), **kw)
    if domain == "stabilized" and not math.isinf(rho):
        assert Tn.domain == "log"  # the fallback really ran
    assert Ts.converged is False and Tn.converged is False
    assert [str(w.message) for w in caught_s] == [str(w.message) for w in caught_n]
    assert all(issubclass(w.category, otcl.ConvergenceWarning) for w in caught_s)
    assert Ts.n_iter == Tn.n_iter and Ts.domain == Tn.domain
    np.testing.assert_allclose(_np(Ts.plan), Tn.plan, rtol=1e-4, atol=1e-30)


def test_strict_row_projection_matches_numpy():
    C, a, _, mask = _problem(3, zero=True)
    g = np.random.default_rng(8).standard_normal(5) * 0.05
    Ts = otcl.row_projection(
        _strict(C), _strict(a), eps=0.1, rho_a=2.0, g=_strict(g), mask=_strict(mask, None)
    )
    Tn = otcl.row_projection(C, a, eps=0.1, rho_a=2.0, g=g, mask=mask)
    assert _np(Ts.g).shape == (3, 5)
    _compare(Ts, Tn, "float64", rtol=1e-12)


def test_strict_input_errors_name_the_argument():
    C, a, b, _ = _problem(None, zero=False)
    with pytest.raises(TypeError, match=r"^a is a numpy array but cost is a array_api_strict"):
        otcl.sinkhorn(_strict(C), a, _strict(b), eps=0.1)
    with pytest.raises(ValueError, match=r"^b is on device"):
        otcl.sinkhorn(_strict(C), _strict(a), xs.asarray(b), eps=0.1)
    with pytest.raises(TypeError, match=r"^mask must be a boolean array"):
        otcl.sinkhorn(_strict(C), _strict(a), _strict(b), eps=0.1, mask=_strict(C))
    with pytest.raises(ValueError, match=r"^cost contains NaN or inf"):
        otcl.sinkhorn(_strict(np.full((2, 2), np.nan)), eps=0.1)
