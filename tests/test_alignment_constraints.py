"""alignment_loss with Bregman–Dykstra constraint sets instead of rho_a / rho_b."""

from __future__ import annotations

import numpy as np
import pytest

import otcl

torch = pytest.importorskip("torch")


def _cost(seed: int = 0, n: int = 8) -> np.ndarray:
    rng = np.random.default_rng(seed)
    z1 = rng.standard_normal((n, 4))
    return otcl.cost_matrix(z1, z1 + 0.5 * rng.standard_normal((n, 4)))


def test_marginal_sets_reproduce_the_sinkhorn_loss() -> None:
    C = _cost()
    for n_iter in (1, 3, 50):
        via_sets = otcl.alignment_loss(
            C, constraints=[otcl.RowMarginal(), otcl.ColumnMarginal()], n_iter=n_iter
        )
        # n_iter Dykstra cycles (row, column) = the plan P^(2L), i.e. final_step="column"
        via_sinkhorn = otcl.alignment_loss(C, n_iter=n_iter, final_step="column")
        assert abs(float(via_sets) - float(via_sinkhorn)) < 1e-12


def test_active_upper_bound_changes_the_plan_and_is_respected() -> None:
    C = _cost(1)
    free, d_free = otcl.alignment_loss(
        C, constraints=[otcl.RowMarginal(), otcl.ColumnMarginal()], n_iter=300,
        return_details=True,
    )
    kappa = 0.5 * float(np.max(d_free.plan))
    capped, d_cap = otcl.alignment_loss(
        C, constraints=[otcl.RowMarginal(), otcl.ColumnMarginal(), otcl.UpperBound(kappa)],
        n_iter=300, return_details=True,
    )
    assert np.max(d_cap.plan) <= kappa * (1 + 1e-9)
    np.testing.assert_allclose(d_cap.plan.sum(axis=1), 1.0, atol=1e-8)
    # capping the positives' mass can only increase KL(I || P)
    assert float(capped) > float(free) + 1e-3
    # the explicit KL of the returned plan equals the loss value
    P = d_cap.plan
    kl = (-np.log(np.diag(P)) - 1 + P.sum(axis=1)).mean()
    assert abs(kl - float(capped)) < 1e-12


def test_constrained_loss_is_differentiable_in_torch() -> None:
    C = torch.tensor(_cost(2), requires_grad=True)
    cons = [otcl.RowMarginal(), otcl.ColumnMarginal(), otcl.UpperBound(0.3)]
    loss = otcl.alignment_loss(C, constraints=cons, n_iter=20)
    loss.backward()
    assert torch.isfinite(C.grad).all() and C.grad.abs().sum() > 0
    Cd = C.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda c: otcl.alignment_loss(c, constraints=cons, n_iter=5), (Cd,), eps=1e-6, atol=1e-6
    )


def test_constraint_errors() -> None:
    C = _cost()
    with pytest.raises(ValueError, match="constraints or rho"):
        otcl.alignment_loss(C, constraints=[otcl.RowMarginal()], rho_a=1.0)
    with pytest.raises(ValueError, match="divergence"):
        otcl.alignment_loss(C, constraints=[otcl.RowMarginal()], divergence="rince")
    with pytest.raises(ValueError, match="n_iter"):
        otcl.alignment_loss(C, constraints=[otcl.RowMarginal()], n_iter=0)
