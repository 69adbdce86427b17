"""End to end: a small MLP trained with each loss of the family (and each gradient mode) on
synthetic two-view data; the loss must go down and stay finite."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

import otcl.torch as ot  # noqa: E402

LOSSES = {
    "InfoNCE": lambda: ot.InfoNCE(eps=0.2),
    "GCAInfoNCE": lambda: ot.GCAInfoNCE(eps=0.2, n_iter=5),
    "RINCE": lambda: ot.RINCE(eps=0.2, q=0.5, lam=0.05),
    "GCARINCE": lambda: ot.GCARINCE(eps=0.2, n_iter=5, q=0.5, lam=0.05),
    "GCAUOT": lambda: ot.GCAUOT(eps=0.2, rho=0.5, n_iter=5),
    "IOT": lambda: ot.IOT(eps=0.2, n_iter=5, layout="blocked"),
    "IOTUni": lambda: ot.IOTUni(eps=0.2, n_iter=5, layout="blocked"),
    "AlignmentLoss": lambda: ot.AlignmentLoss(eps=0.2, n_iter=5, rho_b=1.0),
    "GCAInfoNCE-implicit": lambda: ot.GCAInfoNCE(eps=0.2, n_iter=50, grad="implicit"),
    "GCAInfoNCE-detach": lambda: ot.GCAInfoNCE(eps=0.2, n_iter=50, grad="detach"),
}


def _views(gen: torch.Generator, n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Two noisy views of points drawn around 8 cluster centres in 16-d."""
    centres = torch.randn(8, 16, generator=gen)
    x = centres[torch.randint(0, 8, (n,), generator=gen)] + 0.5 * torch.randn(n, 16, generator=gen)
    return (x + 0.1 * torch.randn(n, 16, generator=gen),
            x + 0.1 * torch.randn(n, 16, generator=gen))


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_mlp_training_decreases_the_loss(name: str) -> None:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8))
    loss_fn = LOSSES[name]()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x1, x2 = _views(gen)
    history = []
    for _ in range(40):
        z1, z2 = model(x1), model(x2)
        loss = loss_fn(torch.cat([z1, z2])) if name.startswith("IOT") else loss_fn(z1, z2)
        opt.zero_grad()
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters())
        opt.step()
        history.append(loss.item())
    first, last = sum(history[:5]) / 5, sum(history[-5:]) / 5
    assert last < first - 0.05 * abs(first), (first, last)
