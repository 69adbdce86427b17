"""Drop-in semantics of the PyTorch losses: SimCLR's two-view problem, familiar names, checked
keywords, supervised contrastive on one batch, extra negatives and a learnable temperature.

Every oracle is a formula written here with plain torch operations (NT-Xent as SimCLR, lightly
and pytorch-metric-learning define it; SupCon as Khosla et al.; MoCo's InfoNCE with a queue).
"""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as tnf  # noqa: E402

import otcl  # noqa: E402
import otcl.torch as ott  # noqa: E402

MODULES = [ott.InfoNCE, ott.GCAInfoNCE, ott.RINCE, ott.GCARINCE, ott.GCAUOT, ott.IOT,
           ott.IOTUni, ott.AlignmentLoss]


def views(n: int = 12, d: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    z0 = torch.randn(n, d, generator=g, dtype=torch.float64)
    return z0, z0 + 0.4 * torch.randn(n, d, generator=g, dtype=torch.float64)


def nt_xent(z0: torch.Tensor, z1: torch.Tensor, t: float) -> torch.Tensor:
    """SimCLR's NT-Xent: all 2N views, self excluded, the other view the positive, mean."""
    z = tnf.normalize(torch.cat([z0, z1]), dim=1)
    n = z0.shape[0]
    s = z @ z.T / t
    s = s.masked_fill(torch.eye(2 * n, dtype=torch.bool), -math.inf)
    pos = torch.cat([torch.arange(n, 2 * n), torch.arange(n)])
    return tnf.cross_entropy(s, pos)


def supcon(z: torch.Tensor, y: torch.Tensor, t: float) -> torch.Tensor:
    """SupCon (Khosla et al. 2020, "L_out"): mean over anchors of the mean over positives of
    -log softmax over all other rows."""
    z = tnf.normalize(z, dim=1)
    n = z.shape[0]
    self_mask = torch.eye(n, dtype=torch.bool)
    s = (z @ z.T / t).masked_fill(self_mask, -math.inf)
    log_prob = s - torch.logsumexp(s, dim=1, keepdim=True)
    pos = (y[:, None] == y[None, :]) & ~self_mask
    per_anchor = -(log_prob.masked_fill(~pos, 0.0).sum(1)) / pos.sum(1)
    return per_anchor.mean(), pos.sum(1)


@pytest.mark.parametrize("t", [0.07, 0.2, 0.5, 1.0])
def test_two_view_info_nce_is_nt_xent_value_and_gradient(t):
    z0, z1 = views(seed=1)
    a, b = z0.clone().requires_grad_(), z1.clone().requires_grad_()
    loss = ott.InfoNCE(temperature=t)(a, b)
    loss.backward()
    a0, b0 = z0.clone().requires_grad_(), z1.clone().requires_grad_()
    ref = nt_xent(a0, b0, t)
    ref.backward()
    assert loss.item() == pytest.approx(ref.item(), abs=1e-12)
    torch.testing.assert_close(a.grad, a0.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(b.grad, b0.grad, rtol=1e-10, atol=1e-12)
    # the functional form and the NumPy function give the same number
    assert ott.info_nce(z0, z1, temperature=t).item() == pytest.approx(ref.item(), abs=1e-12)
    assert float(otcl.info_nce(z0.numpy(), z1.numpy(), temperature=t)) == pytest.approx(
        ref.item(), abs=1e-12)


def test_gca_losses_solve_the_same_two_view_problem_as_the_explicit_blocked_batch():
    z0, z1 = views(seed=2)
    z = torch.cat([z0, z1])
    for cls in MODULES:
        two = cls()(z0, z1)
        blocked = cls(layout="blocked")(z)
        assert two.item() == pytest.approx(blocked.item(), abs=1e-12), cls.__name__
        cross = cls(layout="cross")(z0, z1)
        assert cross.item() != pytest.approx(two.item(), abs=1e-6), cls.__name__


def test_temperature_is_eps():
    z0, z1 = views(seed=3)
    for cls in MODULES:
        assert cls(temperature=0.3)(z0, z1).item() == cls(eps=0.3)(z0, z1).item()
        with pytest.raises(TypeError, match="eps or temperature"):
            cls(eps=0.3, temperature=0.3)
    with pytest.raises(TypeError, match="eps or temperature"):
        ott.gca_ince(z0, z1, eps=0.3, temperature=0.3)
    with pytest.raises(TypeError, match="eps or temperature"):
        otcl.gca_uot(z0.numpy(), z1.numpy(), eps=0.3, temperature=0.3)


@pytest.mark.parametrize("cls", MODULES)
def test_misspelt_keyword_raises_at_construction_listing_the_names(cls):
    with pytest.raises(TypeError, match=r"'temprature' \(did you mean 'temperature'\?\)") as err:
        cls(temprature=0.1)
    assert "accepted: eps, temperature" in str(err.value)


@pytest.mark.parametrize("kwargs", [
    {"layout": "crossview"}, {"metric": "cos"}, {"reduction": "avg"}, {"grad": "exact"},
    {"n_views": 1}, {"eps": -0.1}, {"eps": math.nan},
])
@pytest.mark.parametrize("cls", MODULES)
def test_bad_common_values_raise_at_construction(cls, kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        cls(**kwargs)


@pytest.mark.parametrize(("cls", "kwargs", "name"), [
    (ott.GCAInfoNCE, {"n_iter": -1}, "n_iter"),
    (ott.GCAInfoNCE, {"n_iter": 2.5}, "n_iter"),
    (ott.RINCE, {"q": 1.5}, "q"),
    (ott.GCARINCE, {"lam": 0.0}, "lam"),
    (ott.GCAUOT, {"rho": -1.0}, "rho"),
    (ott.GCAUOT, {"rho_b": 0.0}, "rho_b"),
    (ott.GCAUOT, {"r2": math.inf}, "r2"),
    (ott.GCAUOT, {"kl": "full"}, "kl"),
    (ott.IOTUni, {"lam_p": 0.0}, "lam_p"),
    (ott.AlignmentLoss, {"divergence": "wasserstein"}, "divergence"),
    (ott.AlignmentLoss, {"marginals": "balanced"}, "marginals"),
    (ott.InfoNCE, {"divergence": "js"}, "divergence"),
])
def test_bad_loss_values_raise_at_construction(cls, kwargs, name):
    with pytest.raises(ValueError, match=name):
        cls(**kwargs)


def test_numpy_integer_counts_are_accepted():
    np = pytest.importorskip("numpy")
    z0, z1 = views(seed=4)
    a = ott.GCAInfoNCE(n_iter=np.int64(3))(z0, z1).item()
    assert a == ott.GCAInfoNCE(n_iter=3)(z0, z1).item()


@pytest.mark.parametrize("t", [0.1, 0.5])
def test_supervised_single_batch_is_supcon(t):
    g = torch.Generator().manual_seed(5)
    z = torch.randn(20, 6, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0, 1, 2, 3, 3, 0, 1] * 2)
    a = z.clone().requires_grad_()
    ce = ott.InfoNCE(temperature=t, divergence="cross_entropy")(a, labels=y)
    ce.backward()
    z_ref = z.clone().requires_grad_()
    ref, n_pos = supcon(z_ref, y, t)
    ref.backward()
    assert ce.item() == pytest.approx(ref.item(), abs=1e-12)
    torch.testing.assert_close(a.grad, z_ref.grad, rtol=1e-10, atol=1e-12)
    # the default KL divergence: SupCon minus the mean log-number of positives, same gradient
    b = z.clone().requires_grad_()
    kl = ott.InfoNCE(temperature=t)(b, labels=y)
    kl.backward()
    assert kl.item() == pytest.approx(ref.item() - torch.log(n_pos.double()).mean().item(),
                                      abs=1e-12)
    torch.testing.assert_close(b.grad, z_ref.grad, rtol=1e-10, atol=1e-12)


def test_single_batch_without_labels_or_layout_is_refused():
    z0, _ = views()
    with pytest.raises(ValueError, match="labels= or target="):
        ott.InfoNCE()(z0)


def test_memory_bank_negatives_are_moco_info_nce():
    t = 0.2
    bank = ott.MemoryBank(size=20, init="empty")
    loss = ott.InfoNCE(temperature=t, layout="cross")
    queue = []
    for step in range(4):
        q, k = views(n=8, seed=10 + step)
        keys = bank(k)
        assert keys.shape == (8 + min(20, 8 * step), 8)
        got = loss(q, keys)
        qn, kn = tnf.normalize(q, dim=1), tnf.normalize(k, dim=1)
        pos = (qn * kn).sum(1, keepdim=True)
        neg_keys = [tnf.normalize(x, dim=1) for x in queue]
        negatives = [qn @ kn.T]  # the other keys of the batch
        if neg_keys:
            negatives.append(qn @ torch.cat(neg_keys)[:20].T)
        logits = torch.cat(negatives, 1) / t
        ref = (torch.logsumexp(logits, 1) - pos[:, 0] / t).mean()
        assert got.item() == pytest.approx(ref.item(), abs=1e-12)
        queue.insert(0, k)
    with pytest.raises(ValueError, match="width"):
        bank(torch.randn(3, 5, dtype=torch.float64))
    bank.reset()
    assert bank(torch.randn(3, 5, dtype=torch.float64)).shape == (3, 5)


@pytest.mark.parametrize("cls", [ott.GCAInfoNCE, ott.GCAUOT, ott.GCARINCE])
def test_a_tensor_eps_that_requires_grad_is_learnable(cls):
    z0, z1 = views(seed=6)
    eps = torch.tensor(0.4, dtype=torch.float64, requires_grad=True)
    module = cls(eps=eps)
    assert module.eps is eps
    loss = module(z0, z1)
    loss.backward()
    h = 1e-6
    up = cls(eps=0.4 + h)(z0, z1).item()
    down = cls(eps=0.4 - h)(z0, z1).item()
    assert eps.grad is not None
    assert eps.grad.item() == pytest.approx((up - down) / (2 * h), rel=1e-6, abs=1e-8)


def test_functional_forms_show_their_parameters():
    import inspect

    for fn in (ott.info_nce, ott.gca_ince, ott.rince, ott.gca_rince, ott.gca_uot, ott.iot,
               ott.iot_uni, otcl.info_nce, otcl.gca_uot):
        params = inspect.signature(fn).parameters
        assert not any(p.kind is p.VAR_KEYWORD for p in params.values()), fn.__qualname__
        assert "temperature" in params and "layout" in params
    for cls in MODULES:
        params = inspect.signature(cls).parameters
        assert not any(p.kind is p.VAR_KEYWORD for p in params.values()), cls.__name__


def test_queue_layout_is_moco_and_lightly_memory_bank():
    """MoCo / lightly: logits [q.k+, q.queue] / t, the queue alone as negatives."""
    t = 0.1
    bank = ott.MemoryBank(size=16, seed=0)
    loss = ott.InfoNCE(temperature=t, layout="queue")
    for step in range(3):
        q, k = views(n=6, seed=20 + step)
        keys = bank(k)
        assert keys.shape == (6 + 16, 8)
        qn, kn = tnf.normalize(q, dim=1), tnf.normalize(k, dim=1)
        neg = tnf.normalize(keys[6:], dim=1)
        logits = torch.cat([(qn * kn).sum(1, keepdim=True), qn @ neg.T], 1) / t
        ref = tnf.cross_entropy(logits, torch.zeros(6, dtype=torch.long))
        assert loss(q, keys).item() == pytest.approx(ref.item(), abs=1e-12)
        # the OT losses solve on the same masked problem
        assert torch.isfinite(ott.GCAInfoNCE(layout="queue")(q, keys))
    with pytest.raises(ValueError, match="more"):
        loss(q, k)  # no queue rows: no negatives


@pytest.mark.parametrize("layout", ["cross", "queue"])
@pytest.mark.parametrize("name", ["info_nce", "gca_ince", "gca_uot"])
def test_value_and_grad_with_extra_negatives_matches_autograd(name, layout):
    from otcl.alignment import losses as alg

    g = torch.Generator().manual_seed(30)
    z1 = torch.randn(6, 4, generator=g, dtype=torch.float64)
    z2 = torch.randn(11, 4, generator=g, dtype=torch.float64)
    value, (g1, g2) = otcl.value_and_grad(name, z1.numpy(), z2.numpy(), layout=layout)
    a, b = z1.clone().requires_grad_(), z2.clone().requires_grad_()
    ref = getattr(alg, name)(a, b, layout=layout, inner=alg.UnrolledInner())
    ref.backward()
    assert float(value) == pytest.approx(ref.item(), abs=1e-12)
    torch.testing.assert_close(torch.from_numpy(g1), a.grad, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(torch.from_numpy(g2), b.grad, rtol=1e-9, atol=1e-12)
