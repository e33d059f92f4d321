"""The tests' models: one tiny trainable CNN (as an ``nn.Module`` and as a LightningModule) and the
known-answer models whose correct map is obvious.

The CLI tests load these by class path (``helpers.models:TinyCNN``), so the module also holds the two
objects that the CLI must refuse.
"""

from __future__ import annotations

import time
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn


class TinyCNN(nn.Sequential):
    """The tests' one small image classifier: ``[N, 3, H, W] -> [N, num_classes]`` logits.

    Three 3x3 convolutions (the last two strided) with ReLUs, global average pooling and a linear head.
    ``batch_norm=True`` and ``dropout > 0`` add the layers whose train/eval modes the engine and the
    callback must leave as they found them.
    """

    def __init__(self, num_classes: int = 3, *, batch_norm: bool = False, dropout: float = 0.0) -> None:
        layers: list[nn.Module] = [nn.Conv2d(3, 8, 3, padding=1), *([nn.BatchNorm2d(8)] if batch_norm else []), nn.ReLU()]
        layers += [nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU()]
        layers += [*([nn.Dropout(dropout)] if dropout else []), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes)]
        super().__init__(*layers)


def make_cnn(num_classes: int = 5, seed: int = 0) -> TinyCNN:
    """A seeded random :class:`TinyCNN` in eval mode. Its head is scaled up so the softmax scores of
    masked inputs differ visibly (a near-constant map would make equality tests toothless)."""
    torch.manual_seed(seed)
    model = TinyCNN(num_classes)
    with torch.no_grad():
        model[-1].weight.mul_(20)
    return model.eval()


class TinyLit(L.LightningModule):
    """:class:`TinyCNN` (with batch norm and dropout by default) as a LightningModule trained by SGD.

    Batches are ``(x, y)`` or ``(x, y, mask)``; hyperparameters are saved, so a checkpoint rebuilds it.
    """

    def __init__(self, num_classes: int = 3, lr: float = 0.05, batch_norm: bool = True, dropout: float = 0.2) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = TinyCNN(num_classes, batch_norm=batch_norm, dropout=dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        loss = F.cross_entropy(self(batch[0]), batch[1])
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.log("val_loss", F.cross_entropy(self(batch[0]), batch[1]), sync_dist=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9)


class BoxModel(nn.Module):
    """Known-answer model: logits [10 * (mean red of the box - 0.5), 0], so only the box matters.

    The softmax probability of class 0 is sigmoid of that logit: keeping more of the (red) box
    raises the score, and nothing outside the box changes it.
    """

    def __init__(self, rows: slice, cols: slice) -> None:
        super().__init__()
        self.rows, self.cols = rows, cols

    def forward(self, x: Tensor) -> Tensor:
        red = x[:, 0, self.rows, self.cols].mean(dim=(1, 2))
        return torch.stack([10 * (red - 0.5), torch.zeros_like(red)], dim=1)


class ColourModel(nn.Module):
    """Known-answer classifier of (blue, green, red): logit k = 20 x the strongest local excess of channel k over the pixel's mean.

    Only the coloured box raises a logit, so masking it lowers the label's probability: PAMI's maps
    peak on the box. ``delay`` seconds of sleep per call slow a run down enough to kill it mid-way.
    """

    def __init__(self, delay: float = 0.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(20.0), requires_grad=False)
        self.delay = delay

    def forward(self, x: Tensor) -> Tensor:
        if self.delay:
            time.sleep(self.delay)
        s = F.avg_pool2d(x, 5, stride=1, padding=2)
        excess = s - s.mean(dim=1, keepdim=True)
        return self.scale * excess.flip(1).amax(dim=(2, 3))  # channels R, G, B -> classes blue, green, red


def not_a_class() -> None:
    """A function, for the CLI's "not a class" error."""


class NotAModule:
    """A class that is no nn.Module, for the CLI's error."""
