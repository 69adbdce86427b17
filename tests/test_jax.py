"""The NumPy-style losses on JAX arrays, eagerly and under jax.jit, jax.grad and jax.vmap.

Oracles: the same loss on NumPy arrays (values) and ``otcl.value_and_grad`` (gradients, computed
by the hand-written adjoint, independent of JAX's autodiff), plus central finite differences.
Skipped where JAX is not installed (``pip install "otcl[jax]"``).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

jax = pytest.importorskip("jax")
jax.config.update("jax_enable_x64", True)
jnp = jax.numpy

import otcl  # noqa: E402

LOSSES = ["info_nce", "gca_ince", "rince", "gca_rince", "gca_uot"]
# each loss once, both layouts among them (tracing and compiling dominate the time)
CASES = [("info_nce", "cross"), ("gca_ince", None), ("rince", None), ("gca_rince", "cross"),
         ("gca_uot", None), ("gca_uot", "cross")]
ROUNDS = {"gca_ince": 3, "gca_rince": 3, "gca_uot": 3, "iot": 3, "iot_uni": 3}


def kwargs(name: str, layout: str | None) -> dict:
    out = {"layout": layout}
    if name in ROUNDS:
        out["n_iter"] = ROUNDS[name]
    return out


def views(n: int = 10, d: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    z1 = rng.standard_normal((n, d))
    return z1, z1 + 0.5 * rng.standard_normal((n, d))


@pytest.mark.parametrize(("name", "layout"), [*CASES, ("iot", None), ("iot_uni", "cross")])
def test_eager_and_jit_equal_numpy(name, layout):
    z1, z2 = views(seed=1)
    fn = getattr(otcl, name)
    kw = kwargs(name, layout)
    ref = float(fn(z1, z2, **kw))
    a, b = jnp.asarray(z1), jnp.asarray(z2)
    assert float(fn(a, b, **kw)) == pytest.approx(ref, abs=1e-12)
    jitted = jax.jit(lambda x, y: fn(x, y, **kw))
    assert float(jitted(a, b)) == pytest.approx(ref, abs=1e-12)


@pytest.mark.parametrize(("name", "layout"), CASES)
def test_grad_equals_the_hand_written_adjoint(name, layout):
    z1, z2 = views(seed=2)
    kw = kwargs(name, layout)
    _, (g1, g2) = otcl.value_and_grad(name, z1, z2, **kw)
    fn = getattr(otcl, name)
    d1, d2 = jax.jit(jax.grad(lambda x, y: fn(x, y, **kw), argnums=(0, 1)))(
        jnp.asarray(z1), jnp.asarray(z2))
    np.testing.assert_allclose(np.asarray(d1), g1, rtol=1e-8, atol=1e-11)
    np.testing.assert_allclose(np.asarray(d2), g2, rtol=1e-8, atol=1e-11)


def test_grad_with_respect_to_the_temperature_matches_finite_differences():
    z1, z2 = views(seed=3)
    a, b = jnp.asarray(z1), jnp.asarray(z2)

    def loss(eps):
        return otcl.gca_uot(a, b, eps=eps, n_iter=3)

    h = 1e-6
    fd = (float(otcl.gca_uot(z1, z2, eps=0.4 + h, n_iter=3))
          - float(otcl.gca_uot(z1, z2, eps=0.4 - h, n_iter=3))) / (2 * h)
    assert float(jax.jit(jax.grad(loss))(jnp.asarray(0.4))) == pytest.approx(fd, rel=1e-6)


def test_vmap_over_a_batch_of_problems():
    stacks = [views(seed=s) for s in range(3)]
    z1 = jnp.stack([jnp.asarray(p[0]) for p in stacks])
    z2 = jnp.stack([jnp.asarray(p[1]) for p in stacks])
    got = jax.jit(jax.vmap(lambda x, y: otcl.gca_ince(x, y, n_iter=3)))(z1, z2)
    want = [float(otcl.gca_ince(*p, n_iter=3)) for p in stacks]
    np.testing.assert_allclose(np.asarray(got), want, rtol=0, atol=1e-12)


def test_concrete_checks_still_run_eagerly():
    z1, z2 = views(seed=4)
    bad = z1.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN or inf"):
        otcl.info_nce(jnp.asarray(bad), jnp.asarray(z2))


def _cost(n: int = 9, m: int = 7, seed: int = 6) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.asarray(otcl.cost_matrix(rng.standard_normal((n, 4)), rng.standard_normal((m, 4)),
                                       "cosine"))


@pytest.mark.parametrize("rho", [math.inf, 0.5])
def test_sinkhorn_under_jit_equals_numpy(rho):
    C = _cost()
    ref = otcl.sinkhorn(C, eps=0.1, rho_a=rho, rho_b=rho, max_iter=40, tol=None)
    run = jax.jit(lambda c: otcl.sinkhorn(c, eps=0.1, rho_a=rho, rho_b=rho, max_iter=40,
                                          tol=None).plan)
    np.testing.assert_allclose(np.asarray(run(jnp.asarray(C))), ref.plan, rtol=1e-10,
                               atol=1e-14)


def test_sinkhorn_vmap_over_costs_and_grad_against_finite_differences():
    C = _cost(seed=7)
    costs = jnp.stack([jnp.asarray(C), jnp.asarray(0.5 * C)])
    f = jax.jit(jax.vmap(lambda c: otcl.sinkhorn(c, eps=0.1, max_iter=30, tol=None).f))(costs)
    for k, c in enumerate((C, 0.5 * C)):
        ref = otcl.sinkhorn(c, eps=0.1, max_iter=30, tol=None)
        np.testing.assert_allclose(np.asarray(f[k]), ref.f, rtol=1e-10, atol=1e-13)

    def cost_of(c):
        return otcl.sinkhorn(c, eps=0.1, max_iter=30, tol=None).transport_cost

    grad = np.asarray(jax.jit(jax.grad(cost_of))(jnp.asarray(C)))
    h, (i, j) = 1e-6, (2, 3)
    up, down = C.copy(), C.copy()
    up[i, j] += h
    down[i, j] -= h
    fd = (float(otcl.sinkhorn(up, eps=0.1, max_iter=30, tol=None).transport_cost)
          - float(otcl.sinkhorn(down, eps=0.1, max_iter=30, tol=None).transport_cost)) / (2 * h)
    assert grad[i, j] == pytest.approx(fd, rel=1e-5, abs=1e-9)


def test_sinkhorn_with_a_tolerance_under_jit_says_what_to_do():
    with pytest.raises(ValueError, match="tol=None"):
        jax.jit(lambda c: otcl.sinkhorn(c, eps=0.1).f)(jnp.asarray(_cost()))
