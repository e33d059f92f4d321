"""Tiny models the CLI tests load by class path (``cli_models:TinyNet``, ``cli_models:TinyLit``)."""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn


class TinyNet(nn.Module):
    """A plain nn.Module: two strided convolutions, global average pooling, a linear classifier."""

    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU())
        self.head = nn.Linear(8, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


class TinyLit(L.LightningModule):
    """The same network as a LightningModule whose hyperparameters rebuild it from a checkpoint."""

    def __init__(self, num_classes: int = 3, lr: float = 0.05) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = TinyNet(num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


def not_a_class() -> None:
    """A function, for the CLI's "not a class" error."""


class NotAModule:
    """A class that is no nn.Module, for the CLI's error."""
