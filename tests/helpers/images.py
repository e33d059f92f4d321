"""Seeded test images: smooth random images, a red box on grey, coloured-square shapes with their masks."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import TensorDataset

# ImageNet statistics: the preprocess the engine must apply *after* masking in pixel space.
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def normalize(x: torch.Tensor) -> torch.Tensor:
    """Mean/std normalisation of pixel-space images [N, 3, H, W]."""
    return (x - MEAN.to(x.device)) / STD.to(x.device)


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


SIZE = 32
COLOURS = torch.tensor([[0.9, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.2, 0.9]])


def shapes(n: int, seed: int = 0) -> TensorDataset:
    """``n`` images ``[3, 32, 32]``: noise plus one 8x8 square whose colour is the class; its mask."""
    g = torch.Generator().manual_seed(seed)
    images = 0.2 + 0.4 * torch.rand(n, 3, SIZE, SIZE, generator=g)
    labels = torch.randint(0, len(COLOURS), (n,), generator=g)
    top, left = torch.randint(0, SIZE - 8, (2, n), generator=g)
    coords = torch.arange(SIZE)
    rows = (coords[None] >= top[:, None]) & (coords[None] < top[:, None] + 8)
    cols = (coords[None] >= left[:, None]) & (coords[None] < left[:, None] + 8)
    masks = rows[:, :, None] & cols[:, None, :]
    images = torch.where(masks[:, None], COLOURS[labels].view(n, 3, 1, 1), images)
    return TensorDataset(images, labels, masks)
