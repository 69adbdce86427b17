"""Every row of docs/guides/coming-from.md: the other library's call and the otcl call give the
same number (or differ exactly as the page says).

Each row is checked against a formula written here, so the check runs without the other library;
where that library is installed (pytorch-metric-learning, lightly, POT, OTT-JAX) it is also
checked against the library itself.
"""

from __future__ import annotations

import importlib
import warnings

import numpy as np
import pytest

import otcl

torch = pytest.importorskip("torch")
F = torch.nn.functional
ot = pytest.importorskip("otcl.torch")

N, D = 12, 6


def _import_or_skip(name: str):
    """``pytest.importorskip`` that also skips when the package is present but one of its own
    dependencies is missing (lightly without torchvision raises ModuleNotFoundError)."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        pytest.skip(f"{name} is not importable: {exc}")


@pytest.fixture
def views() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    z0 = torch.randn(N, D, generator=g, dtype=torch.float64)
    z1 = z0 + 0.5 * torch.randn(N, D, generator=g, dtype=torch.float64)
    return z0, z1


def nt_xent(z0: torch.Tensor, z1: torch.Tensor, t: float) -> torch.Tensor:
    """SimCLR's NT-Xent as lightly writes it: the 2N views, self-pairs excluded, each view's
    partner its positive, the mean cross-entropy over the 2N rows."""
    z = F.normalize(torch.cat([z0, z1]), dim=1)
    logits = z @ z.T / t
    logits = logits.masked_fill(torch.eye(len(z), dtype=torch.bool), float("-inf"))
    n = len(z0)
    partner = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
    return F.cross_entropy(logits, partner)


def simclr_script_nt_xent(z0: torch.Tensor, z1: torch.Tensor, t: float) -> torch.Tensor:
    """The NT-Xent of the common SimCLR training scripts: the positives gathered into column 0
    of the logits, the other 2N - 2 views as negatives, cross-entropy with label 0."""
    n = len(z0)
    z = F.normalize(torch.cat([z0, z1]), dim=1)
    sim = z @ z.T
    labels = torch.cat([torch.arange(n)] * 2)
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(2 * n, dtype=torch.bool)
    positives = sim[same & ~eye].view(2 * n, 1)
    negatives = sim[~same].view(2 * n, -1)
    logits = torch.cat([positives, negatives], dim=1) / t
    return F.cross_entropy(logits, torch.zeros(2 * n, dtype=torch.long))


def supcon(z: torch.Tensor, y: torch.Tensor, t: float) -> torch.Tensor:
    """Khosla et al.'s SupCon (L_out): for each anchor, minus the mean log-probability of its
    positives, the softmax over every other row; mean over anchors."""
    zn = F.normalize(z, dim=1)
    eye = torch.eye(len(z), dtype=torch.bool)
    logits = (zn @ zn.T / t).masked_fill(eye, float("-inf"))
    log_p = logits.log_softmax(dim=1)
    positive = (y[:, None] == y[None, :]) & ~eye
    return (-(log_p.masked_fill(~positive, 0).sum(1)) / positive.sum(1)).mean()


# ---------------------------------------------------------------------------------------------
# lightly, PML, a SimCLR script


@pytest.mark.parametrize("t", [0.1, 0.5])
def test_lightly_ntxent(views, t: float) -> None:
    z0, z1 = views
    ours = ot.InfoNCE(temperature=t)(z0, z1)
    torch.testing.assert_close(ours, nt_xent(z0, z1, t))
    torch.testing.assert_close(otcl.info_nce(z0.numpy(), z1.numpy(), temperature=t),
                               float(nt_xent(z0, z1, t)), check_dtype=False)


@pytest.mark.parametrize("t", [0.1, 0.5])
def test_lightly_ntxent_library(views, t: float) -> None:
    loss_mod = _import_or_skip("lightly.loss")
    z0, z1 = views
    torch.testing.assert_close(ot.InfoNCE(temperature=t)(z0, z1),
                               loss_mod.NTXentLoss(temperature=t)(z0, z1))


@pytest.mark.parametrize("t", [0.07, 0.5])
def test_pml_ntxent(views, t: float) -> None:
    z0, z1 = views
    ours = ot.InfoNCE(temperature=t)(z0, z1)
    torch.testing.assert_close(ours, nt_xent(z0, z1, t))
    pml = _import_or_skip("pytorch_metric_learning.losses")
    theirs = pml.NTXentLoss(temperature=t)(torch.cat([z0, z1]), torch.arange(N).repeat(2))
    torch.testing.assert_close(ours, theirs)


@pytest.mark.parametrize("t", [0.07, 0.5])
def test_pml_supcon(views, t: float) -> None:
    z = torch.cat(views)
    y = torch.randint(0, 4, (len(z),), generator=torch.Generator().manual_seed(1))
    exact = ot.InfoNCE(temperature=t, divergence="cross_entropy")(z, labels=y)
    torch.testing.assert_close(exact, supcon(z, y, t))
    # the default divergence="kl" is SupCon minus the mean log-number of positives
    positives = ((y[:, None] == y[None, :]).sum(1) - 1).to(z.dtype)
    torch.testing.assert_close(ot.InfoNCE(temperature=t)(z, labels=y),
                               supcon(z, y, t) - positives.log().mean())
    pml = _import_or_skip("pytorch_metric_learning.losses")
    torch.testing.assert_close(exact, pml.SupConLoss(temperature=t)(z, y))


def test_pml_supcon_same_gradient(views) -> None:
    z = torch.cat(views).requires_grad_()
    y = torch.arange(N).repeat(2) % 5
    (g_ce,) = torch.autograd.grad(ot.InfoNCE(temperature=0.2, divergence="cross_entropy")(
        z, labels=y), z)
    (g_kl,) = torch.autograd.grad(ot.InfoNCE(temperature=0.2)(z, labels=y), z)
    torch.testing.assert_close(g_ce, g_kl)


def test_simclr_script(views) -> None:
    z0, z1 = views
    torch.testing.assert_close(ot.InfoNCE(temperature=0.5)(z0, z1),
                               simclr_script_nt_xent(z0, z1, 0.5))


# ---------------------------------------------------------------------------------------------
# CLIP and MoCo


def test_clip_symmetric_loss_and_learnable_temperature(views) -> None:
    img, txt = views
    logit_scale = torch.nn.Parameter(torch.tensor(np.log(1 / 0.07), dtype=torch.float64))
    i = torch.arange(N)
    logits = logit_scale.exp() * F.normalize(img, dim=1) @ F.normalize(txt, dim=1).T
    clip = (F.cross_entropy(logits, i) + F.cross_entropy(logits.T, i)) / 2
    (g_clip,) = torch.autograd.grad(clip, logit_scale)

    temperature = 1 / logit_scale.exp()
    cross = ot.InfoNCE(temperature=temperature, layout="cross")
    ours = (cross(img, txt) + cross(txt, img)) / 2
    torch.testing.assert_close(ours, clip)
    (g_ours,) = torch.autograd.grad(ours, logit_scale)
    torch.testing.assert_close(g_ours, g_clip)


def _moco_logits(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor | None,
                 in_batch: bool, t: float) -> torch.Tensor:
    qn, kn = F.normalize(q, dim=1), F.normalize(k, dim=1)
    pos = (qn * kn).sum(1, keepdim=True)
    parts = [pos]
    if in_batch:  # the other keys of the batch as negatives too
        others = qn @ kn.T
        parts.append(others[~torch.eye(len(q), dtype=torch.bool)].view(len(q), -1))
    if queue is not None:
        parts.append(qn @ F.normalize(queue, dim=1).T)
    logits = torch.cat(parts, dim=1) / t
    return F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long))


def test_moco_with_a_queue() -> None:
    g = torch.Generator().manual_seed(3)
    t, size = 0.2, 20
    # MoCo and lightly: the queue alone as negatives (layout="queue"), a random initial queue
    bank = ot.MemoryBank(size, seed=1)
    moco_fn = ot.InfoNCE(temperature=t, layout="queue")
    # the cross-view layout adds the batch's other keys (a bank that starts empty)
    grow = ot.MemoryBank(size, init="empty")
    cross_fn = ot.InfoNCE(temperature=t, layout="cross")
    queue = None
    for _ in range(4):
        q = torch.randn(N, D, generator=g, dtype=torch.float64)
        k = q + 0.3 * torch.randn(N, D, generator=g, dtype=torch.float64)
        keys = bank(k)
        ours = moco_fn(q, keys)
        torch.testing.assert_close(ours, _moco_logits(q, k, keys[N:], in_batch=False, t=t))
        cross = cross_fn(q, grow(k))
        torch.testing.assert_close(cross, _moco_logits(q, k, queue, in_batch=True, t=t))
        queue = torch.cat([k, queue])[:size] if queue is not None else k.clone()
        assert torch.equal(grow.queue, queue)


# ---------------------------------------------------------------------------------------------
# POT and OTT-JAX


def _problem(n: int = 7, m: int = 9):
    rng = np.random.default_rng(4)
    C = rng.uniform(0.0, 1.0, size=(n, m))
    a = rng.uniform(0.5, 1.5, size=n)
    b = rng.uniform(0.5, 1.5, size=m)
    return C, a / a.sum(), b / b.sum() * 1.0


def _sinkhorn_balanced(C, a, b, reg, n_iter=5000):
    K = np.exp(-C / reg)
    v = np.ones_like(b)
    for _ in range(n_iter):
        u = a / (K @ v)
        v = b / (K.T @ u)
    return u, v, u[:, None] * K * v[None, :]


def _sinkhorn_unbalanced(C, a, b, reg, reg_m, n_iter=5000):
    """Chizat et al.'s scaling for <P, C> + reg KL(P || 1) + reg_m KL(P1 || a) + reg_m
    KL(P^T 1 || b), KL generalised (POT's reg_type="entropy")."""
    K = np.exp(-C / reg)
    t = reg_m / (reg_m + reg)
    v = np.ones_like(b)
    for _ in range(n_iter):
        u = (a / (K @ v)) ** t
        v = (b / (K.T @ u)) ** t
    return u, v, u[:, None] * K * v[None, :]


@pytest.mark.parametrize("reg", [0.05, 0.3])
def test_pot_sinkhorn(reg: float) -> None:
    C, a, b = _problem()
    res = otcl.sinkhorn(C, a, b, eps=reg, tol=1e-12, max_iter=20_000)
    u, v, plan = _sinkhorn_balanced(C, a, b, reg)
    np.testing.assert_allclose(res.plan, plan, rtol=1e-7, atol=1e-12)
    # potentials: f = reg log u, g = reg log v, up to the constant shift (f + c, g - c)
    shift = res.f - reg * np.log(u)
    np.testing.assert_allclose(shift, shift.mean(), atol=1e-7)
    np.testing.assert_allclose(res.g - reg * np.log(v), -shift.mean(), atol=1e-7)
    np.testing.assert_allclose(res.transport_cost, np.sum(plan * C), rtol=1e-7)

    pot = pytest.importorskip("ot")
    G, log = pot.sinkhorn(a, b, C, reg, numItermax=20_000, stopThr=1e-13, log=True)
    np.testing.assert_allclose(res.plan, G, rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(res.f + res.g[0] - reg * np.log(log["u"])
                               - reg * np.log(log["v"][0]), 0.0, atol=1e-6)
    np.testing.assert_allclose(res.transport_cost, pot.sinkhorn2(
        a, b, C, reg, numItermax=20_000, stopThr=1e-13), rtol=1e-6)


@pytest.mark.parametrize(("reg", "reg_m"), [(0.1, 0.5), (0.3, 2.0)])
def test_pot_sinkhorn_unbalanced(reg: float, reg_m: float) -> None:
    C, a, b = _problem()
    b = 2.0 * b  # different masses: only an unbalanced problem accepts them
    res = otcl.sinkhorn(C, a, b, eps=reg, rho_a=reg_m, rho_b=reg_m, tol=1e-13, max_iter=20_000)
    u, v, plan = _sinkhorn_unbalanced(C, a, b, reg, reg_m)
    np.testing.assert_allclose(res.plan, plan, rtol=1e-7, atol=1e-13)
    # unbalanced potentials are unique: f = reg log u, g = reg log v exactly
    np.testing.assert_allclose(res.f, reg * np.log(u), atol=1e-7)
    np.testing.assert_allclose(res.g, reg * np.log(v), atol=1e-7)

    pot = pytest.importorskip("ot")
    with warnings.catch_warnings():  # "the matrix c is overwritten": what reg_type="entropy" means
        warnings.simplefilter("ignore", UserWarning)
        G, log = pot.unbalanced.sinkhorn_unbalanced(a, b, C, reg, reg_m, reg_type="entropy",
                                                    numItermax=20_000, stopThr=1e-14, log=True)
    np.testing.assert_allclose(res.plan, G, rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(res.f, reg * log["logu"], atol=1e-6)
    np.testing.assert_allclose(res.g, reg * log["logv"], atol=1e-6)
    # POT's default reg_type="kl" regularises towards a b^T: another problem
    G_kl = pot.unbalanced.sinkhorn_unbalanced(a, b, C, reg, reg_m, numItermax=20_000,
                                              stopThr=1e-14)
    assert not np.allclose(G_kl, G, rtol=1e-3)
    # it is the entropy problem on the cost C - reg log(a_i b_j)
    shifted = otcl.sinkhorn(C - reg * np.log(np.outer(a, b)), a, b, eps=reg, rho_a=reg_m,
                            rho_b=reg_m, tol=1e-13, max_iter=20_000)
    np.testing.assert_allclose(shifted.plan, G_kl, rtol=1e-5, atol=1e-12)


def test_ott_potentials_convention() -> None:
    """OTT-JAX writes the plan as exp((f_i + g_j - C_ij) / eps) and the unbalanced problem with
    tau = rho / (rho + eps); otcl's Transport uses the same potentials."""
    C, a, b = _problem()
    eps, rho = 0.2, 1.0
    res = otcl.sinkhorn(C, a, 2 * b, eps=eps, rho_a=rho, rho_b=rho, tol=1e-13, max_iter=20_000)
    np.testing.assert_allclose(res.plan, np.exp((res.f[:, None] + res.g[None, :] - C) / eps),
                               rtol=1e-12)
    _, _, plan = _sinkhorn_unbalanced(C, a, 2 * b, eps, rho)
    np.testing.assert_allclose(res.plan, plan, rtol=1e-7, atol=1e-13)


def test_ott_jax_library() -> None:
    _import_or_skip("ott")
    jnp = _import_or_skip("jax.numpy")
    geometry = _import_or_skip("ott.geometry.geometry")
    linear_problem = _import_or_skip("ott.problems.linear.linear_problem")
    sinkhorn = _import_or_skip("ott.solvers.linear.sinkhorn")
    C, a, b = _problem()
    eps, rho = 0.2, 1.0
    tau = rho / (rho + eps)
    geom = geometry.Geometry(cost_matrix=jnp.asarray(C), epsilon=eps)
    prob = linear_problem.LinearProblem(geom, jnp.asarray(a), jnp.asarray(2 * b), tau_a=tau,
                                        tau_b=tau)
    out = sinkhorn.Sinkhorn(threshold=1e-10, max_iterations=20_000)(prob)
    res = otcl.sinkhorn(C, a, 2 * b, eps=eps, rho_a=rho, rho_b=rho, tol=1e-13, max_iter=20_000)
    np.testing.assert_allclose(np.asarray(out.matrix), res.plan, rtol=1e-4, atol=1e-8)
