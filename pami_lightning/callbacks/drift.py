"""Explanation drift: how each sample's map changes from one explained validation to the next."""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor
from torchmetrics.functional import spearman_corrcoef

from ..visualize import normalize

__all__ = ["rank_correlation", "DriftHistory"]

#: Longest side of the stored timeline thumbnails, in pixels.
THUMBNAIL_SIZE = 64
#: Most explained validations kept in the timeline (the oldest columns are dropped first).
MAX_COLUMNS = 50


def rank_correlation(previous: Tensor, current: Tensor) -> Tensor:
    """Spearman rank correlation of each pair of maps (ties get their average rank).

    Args:
        previous: ``[B, H, W]`` maps.
        current: ``[B, H, W]`` maps of the same inputs.

    Returns:
        ``[B]`` correlations in ``[-1, 1]``; a constant map correlates 0 with anything.
    """
    if previous.shape != current.shape:
        raise ValueError(f"maps to compare must have the same shape; got {list(previous.shape)} and {list(current.shape)}")
    flat_prev = previous.detach().float().reshape(previous.shape[0], -1).T
    flat_curr = current.detach().float().reshape(current.shape[0], -1).T.to(flat_prev.device)
    return spearman_corrcoef(flat_prev, flat_curr).reshape(previous.shape[0])


class DriftHistory:
    """What the callback remembers between validations: the last maps, thumbnails and per-sample scores.

    Everything lives on the CPU and is small: ``B`` maps, ``B x MAX_COLUMNS`` uint8 thumbnails of at
    most ``THUMBNAIL_SIZE`` pixels a side, and one row of scalars per sample and explained validation.
    """

    def __init__(self) -> None:
        self.indices: list[int] = []
        self.last_maps: Optional[Tensor] = None
        self.thumbnails: Optional[Tensor] = None  # [B, T, h, w] uint8
        self.columns: list[int] = []  # validation count of each thumbnail column
        self.rows: list[dict[str, Any]] = []  # per (sample, validation) scalars for the W&B table

    def matches(self, indices: list[int], maps: Tensor) -> bool:
        """Whether the stored history is about the same samples and map size."""
        return self.last_maps is not None and self.indices == indices and self.last_maps.shape == maps.shape

    def stability(self, indices: list[int], maps: Tensor) -> Optional[Tensor]:
        """``[B]`` rank correlation of ``maps`` with the previous ones; ``None`` the first time, or when
        the samples (``indices``) or the map size differ from the stored ones."""
        if not self.matches(indices, maps):
            return None
        assert self.last_maps is not None
        return rank_correlation(self.last_maps, maps.cpu())

    def push(self, indices: list[int], maps: Tensor, count: int, rows: list[dict[str, Any]]) -> None:
        """Remember ``maps`` ``[B, H, W]`` of validation number ``count`` and its table rows."""
        maps = maps.detach().float().cpu()
        if not self.matches(indices, maps):
            self.thumbnails, self.columns = None, []
        self.indices, self.last_maps = list(indices), maps.clone()
        thumb = _thumbnail(maps).unsqueeze(1)
        self.thumbnails = thumb if self.thumbnails is None else torch.cat([self.thumbnails, thumb], dim=1)[:, -MAX_COLUMNS:]
        self.columns = [*self.columns, count][-MAX_COLUMNS:]
        self.rows.extend(rows)

    def timeline(self, indices: list[int], maps: Tensor) -> Tensor:
        """Thumbnails ``[B, T, h, w]`` in ``[0, 1]``, oldest first, ending with ``maps`` (not yet pushed)."""
        current = _thumbnail(maps.detach().float().cpu()).unsqueeze(1)
        if self.thumbnails is not None and self.matches(indices, maps):
            current = torch.cat([self.thumbnails, current], dim=1)[:, -MAX_COLUMNS:]
        return current.float() / 255

    def state_dict(self) -> dict[str, Any]:
        return {
            "indices": list(self.indices),
            "last_maps": self.last_maps,
            "thumbnails": self.thumbnails,
            "columns": list(self.columns),
            "rows": [dict(r) for r in self.rows],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.indices = list(state["indices"])
        # A checkpoint loaded with map_location="cuda" would bring them back on the device.
        self.last_maps = None if state["last_maps"] is None else state["last_maps"].cpu()
        self.thumbnails = None if state["thumbnails"] is None else state["thumbnails"].cpu()
        self.columns = list(state["columns"])
        self.rows = [dict(r) for r in state["rows"]]


def _thumbnail(maps: Tensor) -> Tensor:
    """Min-max normalised maps shrunk to at most ``THUMBNAIL_SIZE`` a side, as uint8 ``[B, h, w]``."""
    h, w = maps.shape[-2:]
    scale = THUMBNAIL_SIZE / max(h, w)
    small = normalize(maps)
    if scale < 1:
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        small = torch.nn.functional.interpolate(small[:, None], size=size, mode="area")[:, 0]
    return small.mul(255).round().to(torch.uint8)
