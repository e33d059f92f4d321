"""Checks, resizing and the "flat map" rule shared by the interpretation metrics."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Union

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["MasksLike", "Reduction", "check_heatmaps", "check_reduction", "check_flat_tol", "resize_maps", "mask_groups", "flat_maps"]

MasksLike = Union[Tensor, Sequence[Tensor]]
Reduction = Literal["mean", "none"]

#: Default of ``flat_tol``: a map whose range is within this fraction of its magnitude is flat.
FLAT_TOL = 1e-6


def check_heatmaps(heatmaps: Tensor, name: str = "heatmaps") -> None:
    """Raise unless ``heatmaps`` is a finite real tensor ``[B, h, w]``."""
    if not isinstance(heatmaps, Tensor) or heatmaps.ndim != 3:
        got = list(heatmaps.shape) if isinstance(heatmaps, Tensor) else type(heatmaps).__name__
        raise ValueError(f"{name} must be a tensor [B, h, w]; got {got} — squeeze a channel axis with {name}[:, 0]")
    if heatmaps.is_complex() or heatmaps.dtype == torch.bool:
        raise ValueError(f"{name} must be real-valued; got {heatmaps.dtype}")
    if heatmaps.is_floating_point() and not bool(torch.isfinite(heatmaps).all()):
        raise ValueError(f"{name} hold NaN or inf values; fix the explainer or replace them (torch.nan_to_num) first")


def check_reduction(reduction: str) -> None:
    if reduction not in ("mean", "none"):
        raise ValueError(f'reduction must be "mean" or "none" (one value per sample); got "{reduction}"')


def check_flat_tol(flat_tol: float | None) -> None:
    if flat_tol is not None and (isinstance(flat_tol, bool) or not isinstance(flat_tol, (int, float)) or not flat_tol >= 0):
        raise ValueError(f"flat_tol must be None (TorchRay: no flat-map rule) or a number >= 0; got {flat_tol!r}")


def resize_maps(heatmaps: Tensor, size: Sequence[int]) -> Tensor:
    """Maps ``[B, h, w]`` resized to ``size`` (bilinear, ``align_corners=False``), float32/64."""
    maps = heatmaps if heatmaps.dtype in (torch.float32, torch.float64) else heatmaps.float()
    if tuple(maps.shape[1:]) == tuple(size):
        return maps
    return F.interpolate(maps[:, None], size=tuple(size), mode="bilinear", align_corners=False)[:, 0]


def mask_groups(heatmaps: Tensor, masks: MasksLike) -> list[tuple[Tensor, Tensor]]:
    """Validate ``masks`` and split them into groups of one size: ``(maps [b, h, w], masks [b, H, W])``.

    A tensor ``[B, H, W]`` is one group; a list of ``B`` masks ``[H_i, W_i]`` is one group per sample.
    The masks are moved to the maps' device.
    """
    check_heatmaps(heatmaps)
    if isinstance(masks, Tensor):
        if masks.ndim != 3:
            raise ValueError(f"masks must be [B, H, W] (or a list of B [H, W] masks); got {list(masks.shape)}")
        groups = [(heatmaps, masks)]
    else:
        masks = list(masks)
        if any(not isinstance(m, Tensor) or m.ndim != 2 for m in masks):
            raise ValueError("a list of masks must hold B tensors [H, W]")
        groups = [(heatmaps[i : i + 1], m[None]) for i, m in enumerate(masks)]
    n = len(masks)
    if heatmaps.shape[0] != n:
        raise ValueError(f"heatmaps and masks must hold the same number of samples; got {heatmaps.shape[0]} and {n}")
    for _, m in groups:
        if m.dtype != torch.bool:
            raise ValueError(f"masks must be bool; got {m.dtype} — pass masks.bool() (or masks > 0), or build them with boxes_to_mask")
    return [(maps, m.to(maps.device)) for maps, m in groups]


def flat_maps(maps: Tensor, flat_tol: float | None) -> Tensor:
    """bool ``[B]``: maps ``[B, ...]`` without a maximum worth the name (see the metrics' docs).

    A map is flat when ``max - min <= flat_tol * max(|max|, |min|)``: constant up to a relative
    tolerance (an all-zero map is flat for any ``flat_tol``). ``flat_tol=None``: no map is flat.
    """
    if flat_tol is None:
        return torch.zeros(maps.shape[0], dtype=torch.bool, device=maps.device)
    flat = maps.flatten(1)
    hi, lo = flat.amax(dim=1).double(), flat.amin(dim=1).double()
    return (hi - lo) <= flat_tol * torch.maximum(hi.abs(), lo.abs())
