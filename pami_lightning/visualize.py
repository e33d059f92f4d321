"""Turning importance maps into pictures: colour maps, overlays, grids."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["normalize", "colorize", "overlay"]


def normalize(maps: Tensor) -> Tensor:
    """Min-max normalise each map of ``[B, *spatial]`` to ``[0, 1]`` (a constant map becomes 0)."""
    flat = maps.detach().float().reshape(maps.shape[0], -1)
    lo = flat.min(dim=1, keepdim=True).values
    span = flat.max(dim=1, keepdim=True).values - lo
    out = torch.where(span > 0, (flat - lo) / span.clamp_min(torch.finfo(torch.float32).tiny), torch.zeros_like(flat))
    return out.reshape(maps.shape)


def colorize(maps: Tensor, cmap: str = "viridis") -> Tensor:
    """Colour each min-max normalised map of ``[B, H, W]``: RGB ``[B, 3, H, W]`` in ``[0, 1]`` (CPU).

    Colours are matplotlib's uint8 colours divided by 255 (``cmap(v, bytes=True)``), so
    ``round(255 * rgb)`` gives back exactly the bytes, as the second run's segmenters need.
    """
    import matplotlib

    values = normalize(maps).cpu().numpy()
    rgba = matplotlib.colormaps[cmap](values, bytes=True)
    rgb = torch.from_numpy(np.ascontiguousarray(rgba[..., :3])).float().div_(255)
    return rgb.movedim(-1, 1)


def overlay(images: Tensor, maps: Tensor, alpha: float = 0.5, cmap: str = "jet") -> Tensor:
    """Blend colour-mapped maps over images.

    Args:
        images: ``[B, C, H, W]`` in ``[0, 1]`` (1 or 3 channels).
        maps: ``[B, h, w]`` importance maps (resized bilinearly to ``H x W`` when needed).
        alpha: weight of the heatmap colour (default 0.5).
        cmap: a matplotlib colour map name (default ``"jet"``).

    Returns:
        ``[B, 3, H, W]`` float in ``[0, 1]`` on the CPU.
    """
    if images.ndim != 4:
        raise ValueError(f"images must be [B, C, H, W]; got {list(images.shape)}")
    if maps.ndim != 3 or maps.shape[0] != images.shape[0]:
        raise ValueError(f"maps must be [B, h, w] with B={images.shape[0]}; got {list(maps.shape)}")
    images = images.detach().float().cpu().clamp(0, 1)
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    maps = maps.detach().float().cpu()
    if maps.shape[-2:] != images.shape[-2:]:
        maps = torch.nn.functional.interpolate(maps[:, None], size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    return ((1 - alpha) * images[:, :3] + alpha * colorize(maps, cmap)).clamp(0, 1)
