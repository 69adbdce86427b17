"""The array-library layer: logsumexp, safe_log, to_numpy, check_compatible and friends.

Oracles: ``scipy.special.logsumexp`` and ``numpy.log`` on float64 host copies.
"""

from __future__ import annotations

import math
import warnings

import array_api_strict as xs
import numpy as np
import pytest
import torch
from scipy.special import logsumexp as scipy_logsumexp

from otcl import backend as be


def _strict(x: np.ndarray) -> xs.Array:
    return xs.asarray(x)


LIBRARIES = {
    "numpy": (lambda x: x.copy(), np.asarray),
    "torch": (torch.tensor, lambda t: t.detach().numpy()),
    "strict": (_strict, np.asarray),
}


def _with_infinities(rng: np.random.Generator) -> np.ndarray:
    """A (3, 4, 5) array with large values, scattered -inf and fully -inf slices on every axis."""
    x = 400.0 * rng.standard_normal((3, 4, 5))  # exp overflows without the max shift
    x[rng.random(x.shape) < 0.3] = -math.inf
    x[1, :, :] = -math.inf  # an all -inf slice along axes 1 and 2 (and 1, 2 jointly)
    x[:, 2, :] = -math.inf
    x[:, :, 3] = -math.inf
    return x


@pytest.mark.parametrize("library", list(LIBRARIES))
@pytest.mark.parametrize("axis", [0, 1, 2, -1])
@pytest.mark.parametrize("keepdims", [False, True])
def test_logsumexp_matches_scipy(library: str, axis: int, keepdims: bool) -> None:
    rng = np.random.default_rng(0)
    x = _with_infinities(rng)
    to_lib, to_np = LIBRARIES[library]
    xp = be.namespace(to_lib(x))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow / divide-by-zero warnings may escape
        out = be.logsumexp(to_lib(x), axis, xp, keepdims=keepdims)
    with np.errstate(divide="ignore"):
        expected = scipy_logsumexp(x, axis=axis, keepdims=keepdims)
    got = to_np(out)
    assert got.shape == expected.shape
    assert np.array_equal(np.isneginf(got), np.isneginf(expected))
    assert np.isneginf(expected).any()  # the all -inf slices really were exercised
    finite = np.isfinite(expected)
    np.testing.assert_allclose(got[finite], expected[finite], rtol=1e-14, atol=0)


@pytest.mark.parametrize("library", list(LIBRARIES))
def test_logsumexp_float32_and_plus_inf(library: str) -> None:
    to_lib, to_np = LIBRARIES[library]
    x = np.array([[0.0, math.inf, 1.0], [-1.0, 2.0, 3.0]], dtype=np.float32)
    out = be.logsumexp(to_lib(x), 1, be.namespace(to_lib(x)))
    got = to_np(out)
    assert got.dtype == np.float32
    assert got[0] == math.inf
    np.testing.assert_allclose(got[1], scipy_logsumexp(x[1].astype(np.float64)), rtol=1e-6)


@pytest.mark.parametrize("library", list(LIBRARIES))
def test_safe_log(library: str) -> None:
    to_lib, to_np = LIBRARIES[library]
    x = np.array([0.0, 1e-300, 0.5, 1.0, 7.0, 0.0])
    xl = to_lib(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = be.safe_log(xl, be.namespace(xl))
    got = to_np(out)
    assert np.isneginf(got[[0, 5]]).all()
    np.testing.assert_allclose(got[1:5], np.log(x[1:5]), rtol=1e-15)


def test_safe_log_gradient_is_finite_at_zero() -> None:
    x = torch.tensor([0.0, 2.0], dtype=torch.float64, requires_grad=True)
    y = be.safe_log(x, be.namespace(x))
    # use only the finite entry: d/dx log(x) = 1/x there, and exactly 0 (not NaN) at x = 0
    (y[1] * 3.0).backward()
    assert x.grad is not None
    assert x.grad[0].item() == 0.0
    assert x.grad[1].item() == pytest.approx(1.5)


def test_to_numpy_numpy_is_identity() -> None:
    x = np.arange(6.0).reshape(2, 3)
    assert be.to_numpy(x) is x


def test_to_numpy_torch_detaches_and_copies_to_host() -> None:
    x = torch.arange(6.0, dtype=torch.float64, requires_grad=True).reshape(2, 3)
    y = be.to_numpy(x * 2.0)
    assert isinstance(y, np.ndarray)
    assert y.dtype == np.float64
    np.testing.assert_array_equal(y, 2.0 * np.arange(6.0).reshape(2, 3))


@pytest.mark.parametrize("dtype", ["float32", "float64", "bool"])
def test_to_numpy_strict(dtype: str) -> None:
    ref = np.arange(6).reshape(2, 3).astype(dtype)
    y = be.to_numpy(xs.asarray(ref))
    assert isinstance(y, np.ndarray)
    assert y.dtype == ref.dtype
    np.testing.assert_array_equal(y, ref)
    scalar = be.to_numpy(xs.sum(xs.asarray(np.ones(3))))
    assert scalar.shape == () and float(scalar) == 3.0


def test_is_array() -> None:
    assert be.is_array(np.zeros(2))
    assert be.is_array(torch.zeros(2))
    assert be.is_array(xs.zeros(2))
    for not_array in (1, 1.5, True, 1j, [1.0, 2.0], None, "x"):
        assert not be.is_array(not_array)


def test_dtype_constants_match_finfo() -> None:
    for name in ("float32", "float64"):
        assert be.dtype_tiny(np, np.dtype(name)) == np.finfo(name).tiny
        assert be.dtype_eps(np, np.dtype(name)) == np.finfo(name).eps
        assert be.dtype_tiny(xs, getattr(xs, name)) == np.finfo(name).tiny
    assert be.dtype_eps(torch, torch.float32) == np.finfo(np.float32).eps


def test_full_like_keeps_dtype_and_device() -> None:
    x = xs.zeros((2, 3), dtype=xs.float32, device=xs.Device("device1"))
    y = be.full_like(x, -math.inf, xs)
    assert y.dtype == xs.float32 and y.device == x.device and y.shape == x.shape
    assert bool(xs.all(y == -math.inf))


def test_quiet_numerics_silences_numpy_only_inside() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with be.quiet_numerics(np):
            np.log(np.zeros(1))
        with pytest.raises(RuntimeWarning):
            np.log(np.zeros(1))


# ------------------------------------------------------------------------------- check_compatible


def test_check_compatible_returns_namespace_and_ignores_none() -> None:
    xp = be.check_compatible(cost=np.zeros(2), a=None, b=np.ones(3))
    assert xp.log(np.ones(1))[0] == 0.0  # the array-API NumPy namespace
    xp_t = be.check_compatible(cost=torch.zeros(2), a=None)
    assert be.namespace(torch.zeros(1)) is xp_t


def test_check_compatible_needs_an_array() -> None:
    with pytest.raises(TypeError, match="no arrays"):
        be.check_compatible(cost=None)
    with pytest.raises(TypeError, match=r"^a must be an array"):
        be.check_compatible(cost=np.zeros(2), a=[1.0, 2.0])


@pytest.mark.parametrize("dtype", [np.int64, np.complex128, np.bool_])
def test_check_compatible_rejects_non_real_floating(dtype: type) -> None:
    with pytest.raises(TypeError, match=r"^cost must have a real floating dtype"):
        be.check_compatible(cost=np.zeros(2, dtype=dtype))
    # with floating=False the same array is accepted
    be.check_compatible(floating=False, mask=np.zeros(2, dtype=dtype))


def test_check_compatible_mixed_libraries() -> None:
    with pytest.raises(TypeError, match=r"^a is a torch array but cost is a numpy array"):
        be.check_compatible(cost=np.zeros(2), a=torch.zeros(2, dtype=torch.float64))
    with pytest.raises(TypeError, match=r"^b is a numpy array but cost is a torch array"):
        be.check_compatible(cost=torch.zeros(2), b=np.zeros(2, dtype=np.float32))
    with pytest.raises(TypeError, match=r"^a is a array_api_strict array"):
        be.check_compatible(cost=np.zeros(2), a=xs.zeros(2, dtype=xs.float64))


def test_check_compatible_mixed_dtypes() -> None:
    with pytest.raises(TypeError, match=r"^b has dtype float32 but cost has dtype float64"):
        be.check_compatible(cost=np.zeros(2), a=np.zeros(2), b=np.zeros(2, dtype=np.float32))
    with pytest.raises(TypeError, match=r"^a has dtype torch\.float64"):
        be.check_compatible(cost=torch.zeros(2), a=torch.zeros(2, dtype=torch.float64))


def test_check_compatible_mixed_devices() -> None:
    with pytest.raises(ValueError, match=r"^a is on device meta but cost is on cpu"):
        be.check_compatible(cost=torch.zeros(2), a=torch.zeros(2, device="meta"))
    with pytest.raises(ValueError, match=r"^b is on device"):
        be.check_compatible(cost=xs.zeros(2), b=xs.zeros(2, device=xs.Device("device1")))


@pytest.mark.parametrize("library", sorted(LIBRARIES))
@pytest.mark.parametrize("shape", [(4, 4), (3, 5), (2, 4, 3)])
def test_fill_diagonal_sets_exactly_the_main_diagonal(library: str, shape: tuple) -> None:
    make, back = LIBRARIES[library]
    host = np.random.default_rng(7).standard_normal(shape)
    expected = host.copy()
    k = min(shape[-2:])
    expected[..., np.arange(k), np.arange(k)] = -math.inf
    x = make(host)
    out = be.fill_diagonal(x, -math.inf, be.namespace(x))
    np.testing.assert_array_equal(back(out), expected)


def test_fill_diagonal_under_torch_autograd_zeroes_the_diagonal_gradient() -> None:
    s = torch.randn(5, 5, dtype=torch.float64, requires_grad=True)
    eps = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    lk = be.fill_diagonal(s * (1 / eps), -math.inf, torch)
    torch.logsumexp(lk, dim=1).sum().backward()
    # oracle: the same function through a masked_fill (no in-place write)
    s2, eps2 = s.detach().clone().requires_grad_(), eps.detach().clone().requires_grad_()
    ref = (s2 * (1 / eps2)).masked_fill(torch.eye(5, dtype=torch.bool), -math.inf)
    torch.logsumexp(ref, dim=1).sum().backward()
    torch.testing.assert_close(s.grad, s2.grad, rtol=1e-14, atol=0)
    torch.testing.assert_close(eps.grad, eps2.grad, rtol=1e-14, atol=0)
    assert bool((torch.diagonal(s.grad) == 0).all())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_host_matmul_equals_torch_matmul_and_keeps_autograd(dtype):
    from otcl.backend import host_matmul

    gen = torch.Generator().manual_seed(0)
    K = torch.rand(3, 40, 30, dtype=dtype, generator=gen)
    v = torch.rand(30, dtype=dtype, generator=gen)
    tol = {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 1e-13, "atol": 0}
    torch.testing.assert_close(host_matmul(K[0], v, torch), K[0] @ v, **tol)
    torch.testing.assert_close(host_matmul(v, K[0].T, torch), v @ K[0].T, **tol)
    Kt = K.transpose(1, 2)
    torch.testing.assert_close(host_matmul(K, Kt, torch), K @ Kt, **tol)
    out = torch.empty(40, dtype=dtype)
    assert host_matmul(K[1], v, torch, out=out) is out
    torch.testing.assert_close(out, K[1] @ v, **tol)
    # recorded by autograd: an ordinary differentiable product
    w = v.clone().requires_grad_()
    res = host_matmul(K[0], w, torch)
    assert res.requires_grad
    res.sum().backward()
    torch.testing.assert_close(w.grad, K[0].sum(0), **tol)
    # numpy: the same product, into out
    Kn, vn = K[0].numpy(), v.numpy()
    outn = np.empty(40, dtype=Kn.dtype)
    assert host_matmul(Kn, vn, np, out=outn) is outn
    np.testing.assert_allclose(outn, Kn @ vn, rtol=1e-6)


@pytest.mark.parametrize("dtype", ["float32", "float64", "bool"])
def test_copy_array_of_a_torch_cpu_tensor_owns_its_memory(dtype):
    """``copy_array`` of an unrecorded PyTorch CPU tensor is an equal tensor of the same dtype
    and shape on memory of its own (NumPy's allocation); a recorded one stays differentiable."""
    torch = pytest.importorskip("torch")
    from otcl.backend import copy_array, namespace

    x = (torch.rand(70, 33) > 0.5) if dtype == "bool" else torch.rand(
        70, 33, dtype=getattr(torch, dtype))
    y = copy_array(x.T, namespace(x))  # a non-contiguous view as well
    assert y.dtype == x.dtype and y.shape == (33, 70) and torch.equal(y, x.T)
    assert y.untyped_storage().data_ptr() != x.untyped_storage().data_ptr()
    before = x.clone()
    y.zero_() if dtype != "bool" else y.fill_(False)
    assert torch.equal(x, before)  # writing the copy leaves the original alone
    if dtype != "bool":
        w = torch.rand(5, 4, dtype=getattr(torch, dtype), requires_grad=True)
        c = copy_array(w, namespace(w))
        c.sum().backward()
        assert w.grad is not None and torch.equal(w.grad, torch.ones_like(w))
