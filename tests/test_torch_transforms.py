"""The PyTorch losses under torch.func (grad, vmap) and torch.compile.

Oracles: the eager loss and its autograd gradient (a different code path: the pooled product and
the custom inner-solve Function), and a Python loop over problems for vmap.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
import otcl.torch as ott  # noqa: E402

FUNCTIONAL = {"info_nce": {}, "gca_ince": {"n_iter": 4}, "rince": {}, "gca_rince": {"n_iter": 4},
              "gca_uot": {"n_iter": 4}, "iot": {"n_iter": 3}, "iot_uni": {"n_iter": 3}}
# dynamo notes that array-api-compat's namespace helpers are lru_cache-wrapped (it traces them)
pytestmark = pytest.mark.filterwarnings("ignore:Dynamo detected a call to a:UserWarning")

MODULES = [ott.InfoNCE, ott.GCAInfoNCE, ott.RINCE, ott.GCARINCE, ott.GCAUOT, ott.IOT, ott.IOTUni,
           ott.AlignmentLoss]


def views(n: int = 8, d: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    z1 = torch.randn(n, d, generator=g, dtype=torch.float64)
    return z1, z1 + 0.4 * torch.randn(n, d, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("layout", [None, "cross"])
@pytest.mark.parametrize("name", list(FUNCTIONAL))
def test_func_grad_equals_eager_autograd(name, layout):
    fn = getattr(ott, name)
    kw = dict(FUNCTIONAL[name], layout=layout)
    z1, z2 = views(seed=1)
    got = torch.func.grad(lambda a, b: fn(a, b, **kw), argnums=(0, 1))(z1, z2)
    a, b = z1.clone().requires_grad_(), z2.clone().requires_grad_()
    fn(a, b, **kw).backward()
    torch.testing.assert_close(got[0], a.grad, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(got[1], b.grad, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", ["info_nce", "gca_ince", "gca_uot"])
def test_func_vmap_over_problems_equals_a_loop(name):
    fn = getattr(ott, name)
    kw = FUNCTIONAL[name]
    pairs = [views(seed=s) for s in range(3)]
    z1 = torch.stack([p[0] for p in pairs])
    z2 = torch.stack([p[1] for p in pairs])
    got = torch.func.vmap(lambda a, b: fn(a, b, **kw))(z1, z2)
    want = torch.stack([fn(a, b, **kw) for a, b in pairs])
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_func_grad_of_a_detached_solve_matches_eager_detach():
    z1, z2 = views(seed=2)
    got = torch.func.grad(lambda a: ott.gca_ince(a, z2, n_iter=4, grad="detach"))(z1)
    a = z1.clone().requires_grad_()
    ott.gca_ince(a, z2, n_iter=4, grad="detach").backward()
    torch.testing.assert_close(got, a.grad, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("cls", MODULES)
def test_compile_has_no_graph_break_and_matches_eager(cls):
    import torch._dynamo as dynamo

    z1, z2 = views(seed=3)
    module = cls()
    dynamo.reset()
    explained = dynamo.explain(module)(z1, z2)
    assert explained.graph_break_count <= 2, [str(b.reason) for b in explained.break_reasons]
    compiled = torch.compile(module, backend="aot_eager", fullgraph=False)
    a, b = z1.clone().requires_grad_(), z2.clone().requires_grad_()
    value = compiled(a, b)
    value.backward()
    a0, b0 = z1.clone().requires_grad_(), z2.clone().requires_grad_()
    ref = module(a0, b0)
    ref.backward()
    torch.testing.assert_close(value, ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(a.grad, a0.grad, rtol=1e-8, atol=1e-11)
    torch.testing.assert_close(b.grad, b0.grad, rtol=1e-8, atol=1e-11)


@pytest.mark.parametrize("eps", [1e-3, 0.1])
def test_torch_log_domain_at_small_eps_equals_numpy(eps):
    """The clamped exponent of the torch log-sum-exp (an underflowing term is 0 either way)
    gives NumPy's potentials, at a small eps where most terms underflow."""
    import numpy as np

    import otcl

    rng = np.random.default_rng(4)
    C = np.asarray(otcl.cost_matrix(rng.standard_normal((40, 6)), rng.standard_normal((30, 6)),
                                    "cosine"))
    ref = otcl.sinkhorn(C, eps=eps, domain="log", max_iter=25, tol=None)
    got = otcl.sinkhorn(torch.tensor(C), eps=eps, domain="log", max_iter=25, tol=None)
    np.testing.assert_allclose(got.f.numpy(), ref.f, rtol=1e-12, atol=1e-12 * eps)
    np.testing.assert_allclose(got.g.numpy(), ref.g, rtol=1e-12, atol=1e-12 * eps)
