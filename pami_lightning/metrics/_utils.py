"""Checks and resizing shared by the interpretation metrics."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["check_heatmaps", "resize_maps"]


def check_heatmaps(heatmaps: Tensor, name: str = "heatmaps") -> None:
    """Raise unless ``heatmaps`` is a finite real tensor ``[B, h, w]``."""
    if not isinstance(heatmaps, Tensor) or heatmaps.ndim != 3:
        got = list(heatmaps.shape) if isinstance(heatmaps, Tensor) else type(heatmaps).__name__
        raise ValueError(f"{name} must be a tensor [B, h, w]; got {got} — squeeze a channel axis with {name}[:, 0]")
    if heatmaps.is_complex() or heatmaps.dtype == torch.bool:
        raise ValueError(f"{name} must be real-valued; got {heatmaps.dtype}")
    if heatmaps.is_floating_point() and not bool(torch.isfinite(heatmaps).all()):
        raise ValueError(f"{name} hold NaN or inf values; fix the explainer or replace them (torch.nan_to_num) first")


def resize_maps(heatmaps: Tensor, size: Sequence[int]) -> Tensor:
    """Maps ``[B, h, w]`` resized to ``size`` (bilinear, ``align_corners=False``), float32/64."""
    maps = heatmaps if heatmaps.dtype in (torch.float32, torch.float64) else heatmaps.float()
    if tuple(maps.shape[1:]) == tuple(size):
        return maps
    return F.interpolate(maps[:, None], size=tuple(size), mode="bilinear", align_corners=False)[:, 0]
