"""A LightningModule trained with GCA-UOT on two views of each sample."""

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import otcl.torch as ot

try:
    import lightning.pytorch as pl
except ImportError:
    import pytorch_lightning as pl


class GCAModule(pl.LightningModule):
    def __init__(self, dim_in: int = 32, dim_out: int = 16, lr: float = 1e-3) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(dim_in, 64), nn.ReLU(), nn.Linear(64, dim_out))
        self.loss_fn = ot.GCAUOT()  # the paper's CIFAR-10 run; distributed=True under DDP
        self.lr = lr

    def training_step(self, batch, batch_idx):
        x1, x2 = batch  # two augmentations of the same samples
        loss = self.loss_fn(self.encoder(x1), self.encoder(x2))  # the 2N x 2N SimCLR batch
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr)


def main(n: int = 256, dim: int = 32, batch_size: int = 64, epochs: int = 2) -> float:
    x = torch.randn(n, dim)
    views = TensorDataset(x + 0.1 * torch.randn_like(x), x + 0.1 * torch.randn_like(x))
    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.fit(GCAModule(dim_in=dim), DataLoader(views, batch_size=batch_size, drop_last=True))
    return float(trainer.callback_metrics["train_loss"])


if __name__ == "__main__":
    print(main())
