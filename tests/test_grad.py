"""value_and_grad: the hand-written chain plus the solver adjoint, checked against independent
oracles (torch autograd through the plainly written log-domain rounds, and finite differences)."""

from __future__ import annotations

import numpy as np
import pytest
from finite_differences import central_differences

import otcl
from otcl.alignment import losses as alg
from otcl.grad import LOSSES, value_and_grad

torch = pytest.importorskip("torch")

METRICS = ["neg_cosine", "cosine", "dot", "sqeuclidean"]


def _pair(seed: int, n: int = 10, d: int = 5) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    z1 = rng.standard_normal((n, d))
    return z1, z1 + 0.7 * rng.standard_normal((n, d))


def _eps(metric: str) -> float:
    return 2.0 if metric == "sqeuclidean" else 0.5


@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("layout", [None, "cross"])
def test_two_views_match_torch_autograd(name: str, metric: str, layout: str | None) -> None:
    z1, z2 = _pair(1)
    value, (g1, g2) = value_and_grad(name, z1, z2, metric=metric, eps=_eps(metric),
                                     layout=layout)
    t1 = torch.tensor(z1, requires_grad=True)
    t2 = torch.tensor(z2, requires_grad=True)
    ref = getattr(alg, name)(t1, t2, metric=metric, eps=_eps(metric), layout=layout,
                             inner=alg.UnrolledInner())
    ref.backward()
    assert abs(float(value) - ref.item()) < 1e-12 * max(1.0, abs(ref.item()))
    np.testing.assert_allclose(g1, t1.grad.numpy(), atol=1e-11, rtol=1e-9)
    np.testing.assert_allclose(g2, t2.grad.numpy(), atol=1e-11, rtol=1e-9)


@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("layout", ["blocked", "interleaved"])
def test_all_views_with_labels_matches_torch_autograd(name: str, layout: str) -> None:
    z1, z2 = _pair(2, n=9)
    z = np.concatenate([z1, z2])
    labels = np.arange(9) % 3
    value, g = value_and_grad(name, z, layout=layout, labels=labels)
    t = torch.tensor(z, requires_grad=True)
    ref = getattr(alg, name)(t, layout=layout, labels=torch.tensor(labels),
                             inner=alg.UnrolledInner())
    ref.backward()
    assert abs(float(value) - ref.item()) < 1e-12
    np.testing.assert_allclose(g, t.grad.numpy(), atol=1e-11, rtol=1e-9)


@pytest.mark.parametrize("name", ["gca_ince", "gca_uot", "gca_rince"])
def test_matches_central_finite_differences(name: str) -> None:
    z1, z2 = _pair(3, n=6, d=3)
    _, (g1, _) = value_and_grad(name, z1, z2, n_iter=5)
    fd = central_differences(lambda z: float(getattr(otcl, name)(z, z2, n_iter=5)), z1)
    np.testing.assert_allclose(g1, fd, atol=1e-7, rtol=1e-6)


@pytest.mark.parametrize("name", ["gca_ince", "gca_uot"])
def test_implicit_equals_unrolled_at_convergence(name: str) -> None:
    z1, z2 = _pair(4)
    _, (u1, u2) = value_and_grad(name, z1, z2, n_iter=400, grad="unroll")
    _, (i1, i2) = value_and_grad(name, z1, z2, n_iter=400, grad="implicit")
    np.testing.assert_allclose(i1, u1, atol=1e-9)
    np.testing.assert_allclose(i2, u2, atol=1e-9)


def test_implicit_refuses_a_loss_that_reads_the_gauge() -> None:
    """GCA-RINCE's RINCE term reads (K v)_i, whose scale the balanced fixed point leaves free:
    the unrolled rounds fix it (their gradient matches finite differences at convergence), the
    fixed point does not, so grad="implicit" raises instead of returning a gradient off by a
    few percent."""
    z1, z2 = _pair(6, n=6, d=3)
    L = 300
    _, (u1, _) = value_and_grad("gca_rince", z1, z2, n_iter=L, grad="unroll")
    fd = central_differences(lambda z: float(otcl.gca_rince(z, z2, n_iter=L)), z1)
    np.testing.assert_allclose(u1, fd, atol=1e-7, rtol=1e-6)
    with pytest.raises(ValueError, match="grad='implicit' is not defined for this loss"):
        value_and_grad("gca_rince", z1, z2, n_iter=L, grad="implicit")


def test_reduction_sum_and_none() -> None:
    z1, z2 = _pair(5)
    vm, (gm, _) = value_and_grad("gca_ince", z1, z2, reduction="mean")
    vs, (gs, _) = value_and_grad("gca_ince", z1, z2, reduction="sum")
    vn, (gn, _) = value_and_grad("gca_ince", z1, z2, reduction="none")
    n = 2 * z1.shape[0]  # the SimCLR problem: one row per view
    assert vn.shape == (n,)
    np.testing.assert_allclose(vs, n * vm, rtol=1e-12)
    np.testing.assert_allclose(np.sum(vn), vs, rtol=1e-12)
    np.testing.assert_allclose(gs, n * gm, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(gn, gs, rtol=1e-12, atol=1e-14)


def test_plain_numpy_training_decreases_the_loss() -> None:
    """A linear encoder trained by gradient descent with value_and_grad only."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 8))
    view1 = x + 0.1 * rng.standard_normal(x.shape)
    view2 = x + 0.1 * rng.standard_normal(x.shape)
    W = 0.1 * rng.standard_normal((8, 4))
    losses = []
    for _ in range(60):
        value, (g1, g2) = value_and_grad("gca_ince", view1 @ W, view2 @ W, n_iter=5, eps=0.1)
        W -= 0.05 * (view1.T @ g1 + view2.T @ g2)
        losses.append(float(value))
    assert losses[-1] < losses[0] - 0.3


def test_inputs_not_modified_and_dtype_followed() -> None:
    z1, z2 = _pair(6)
    z1, z2 = z1.astype(np.float32), z2.astype(np.float32)
    c1, c2 = z1.copy(), z2.copy()
    value, (g1, g2) = value_and_grad("gca_uot", z1, z2)
    assert g1.dtype == np.float32 and g2.dtype == np.float32 and value.dtype == np.float32
    np.testing.assert_array_equal(z1, c1)
    np.testing.assert_array_equal(z2, c2)


def test_bad_arguments() -> None:
    z1, z2 = _pair(7)
    with pytest.raises(ValueError, match="loss"):
        value_and_grad("nt_xent", z1, z2)
    with pytest.raises(ValueError, match="grad"):
        value_and_grad("gca_ince", z1, z2, grad="detach")
    with pytest.raises(ValueError, match="n_iter"):
        value_and_grad("gca_ince", z1, z2, n_iter=-1)
    with pytest.raises(ValueError, match="q"):
        value_and_grad("rince", z1, z2, q=1.5)
    with pytest.raises(ValueError, match="eps"):
        value_and_grad("gca_ince", z1, z2, eps=0.0)
    with pytest.raises(ValueError, match="z1 and z2"):
        value_and_grad("gca_ince", z1, z2[:5])
