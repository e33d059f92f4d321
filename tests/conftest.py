"""Shared fixtures: small seeded models and images, so every test runs in well under a second or two."""

from __future__ import annotations

import pytest
import torch
from torch import nn

# ImageNet statistics: the preprocess the engine must apply *after* masking in pixel space.
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def normalize(x: torch.Tensor) -> torch.Tensor:
    """Mean/std normalisation of pixel-space images [N, 3, H, W]."""
    return (x - MEAN.to(x.device)) / STD.to(x.device)


class BoxModel(nn.Module):
    """Known-answer model: logits [10 * (mean red of the box - 0.5), 0], so only the box matters.

    The softmax probability of class 0 is sigmoid of that logit: keeping more of the (red) box
    raises the score, and nothing outside the box changes it.
    """

    def __init__(self, rows: slice, cols: slice) -> None:
        super().__init__()
        self.rows, self.cols = rows, cols

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        red = x[:, 0, self.rows, self.cols].mean(dim=(1, 2))
        return torch.stack([10 * (red - 0.5), torch.zeros_like(red)], dim=1)


def make_cnn(num_classes: int = 5, seed: int = 0) -> nn.Module:
    """A small random CNN (3 conv layers). The last layer is scaled up so the softmax scores of
    masked inputs differ visibly (a near-constant map would make equality tests toothless)."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes),
    )
    with torch.no_grad():
        model[-1].weight.mul_(20)
    return model.eval()


@pytest.fixture
def cnn() -> nn.Module:
    return make_cnn()


def random_images(b: int, size: int, seed: int = 0) -> torch.Tensor:
    """Seeded images [b, 3, size, size] in [0, 1] with some smooth structure plus noise."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(b, 3, 4, 4, generator=g)
    smooth = nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    return (0.7 * smooth + 0.3 * torch.rand(b, 3, size, size, generator=g)).clamp(0, 1)


def box_image(size: int = 96, rows: slice = slice(20, 52), cols: slice = slice(50, 82), seed: int = 0) -> torch.Tensor:
    """[3, size, size]: a dull grey textured background and a saturated red box that every
    segmenter can isolate (the box is what BoxModel looks at)."""
    g = torch.Generator().manual_seed(seed)
    grey = 0.25 + 0.2 * torch.rand(1, size, size, generator=g)
    x = grey.expand(3, size, size) + 0.05 * torch.rand(3, size, size, generator=g)
    x[:, rows, cols] = torch.tensor([0.95, 0.1, 0.1]).view(3, 1, 1)
    return x.clamp(0, 1)
