"""A JAX / Optax training step with otcl's NumPy-API loss on JAX arrays."""

import jax
import jax.numpy as jnp
import optax

import otcl


def loss_fn(params, x1, x2):
    h1, h2 = (jnp.tanh(x @ params["w1"]) @ params["w2"] for x in (x1, x2))  # the encoder
    return otcl.info_nce(h1, h2, temperature=0.5)  # the 2N x 2N SimCLR problem


def main(n: int = 128, dim: int = 16, steps: int = 20) -> float:
    k0, k1, k2 = jax.random.split(jax.random.PRNGKey(0), 3)
    params = {"w1": 0.3 * jax.random.normal(k0, (dim, 32)),
              "w2": 0.3 * jax.random.normal(k1, (32, 8))}
    x = jax.random.normal(k2, (n, dim))
    optimizer = optax.adam(1e-2)
    state = optimizer.init(params)

    @jax.jit
    def step(params, state, key):
        a, b = jax.random.split(key)
        x1 = x + 0.1 * jax.random.normal(a, x.shape)  # two views of the batch
        x2 = x + 0.1 * jax.random.normal(b, x.shape)
        loss, grads = jax.value_and_grad(loss_fn)(params, x1, x2)
        updates, state = optimizer.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    for key in jax.random.split(jax.random.PRNGKey(1), steps):
        params, state, loss = step(params, state, key)
    return float(loss)


if __name__ == "__main__":
    print(main())
