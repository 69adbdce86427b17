"""A plain PyTorch loop: GCA-INCE with a learnable temperature."""

import torch
from torch import nn

import otcl.torch as ot


def main(n: int = 512, dim: int = 32, batch_size: int = 128, steps: int = 50) -> float:
    torch.manual_seed(0)
    data = torch.randn(n, dim)
    encoder = nn.Sequential(nn.Linear(dim, 64), nn.ReLU(), nn.Linear(64, 16))
    log_t = nn.Parameter(torch.tensor(0.5).log())  # learn log(temperature): it stays positive
    optimizer = torch.optim.Adam([*encoder.parameters(), log_t], lr=1e-3)
    for step in range(steps):
        x = data[torch.randint(0, n, (batch_size,))]
        x1, x2 = x + 0.1 * torch.randn_like(x), x + 0.1 * torch.randn_like(x)  # two views
        loss_fn = ot.GCAInfoNCE(temperature=log_t.exp(), n_iter=10)  # a tensor with grad
        loss = loss_fn(encoder(x1), encoder(x2))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 10 == 0:
            print(f"step {step:3d}  loss {loss.item():.4f}  temperature {log_t.exp().item():.3f}")
    return loss.item()


if __name__ == "__main__":
    main()
