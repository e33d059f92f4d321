"""How the callback draws what it logs: the picture options and the three pictures built from them.

- :func:`draw_samples`: each sample's card — its caption over the input, the overlay and a colour bar
  (TensorBoard, files), and the same without the caption text (W&B, which shows captions and masks
  itself), both enlarged to a readable size.
- :func:`draw_timeline`: one row per sample, one column per explained validation, labelled.

Every picture says which scale its colours are on: ``"minmax"`` stretches each map over the colour
map and prints its range (so a map spanning 0.980-0.995 cannot pass for a confident one), and
``"absolute"`` draws 0..1 scores, where the same colour is the same probability in every map, sample
and epoch. Everything here is drawn with Pillow on uint8 arrays (milliseconds, where matplotlib
figures cost tens of milliseconds each).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Optional

import numpy as np
import torch
from torch import Tensor

from ..visualize import (
    blend,
    colour_bar,
    display_factor,
    format_range,
    hstack,
    line_height,
    normalize,
    put_text,
    text_block,
    text_width,
    to_rgb,
    to_uint8,
    upscale,
    vstack,
)

__all__ = ["Pictures", "draw_samples", "draw_timeline", "timeline_columns", "map_bar"]

#: White pixels between tiles.
GAP = 4


@dataclass
class Pictures:
    """Picture options of :class:`~pami_lightning.PAMICallback`.

    Args:
        enabled: log pictures at all (default True); scores are logged either way.
        max_images: most samples drawn (default 8).
        cmap: matplotlib colour map of the heatmaps (default ``"jet"``).
        alpha: heatmap weight in the overlays (default 0.5).
        scale: ``"minmax"`` (default: each map stretched over the colour map, its range printed
            beside it) or ``"absolute"`` (0..1 scores: the same colour means the same probability
            across samples and epochs).
        class_names: names of the model's classes, shown in captions (default: class indices).
        min_size: images smaller than this many pixels (their longer side) are enlarged by an
            integer factor, nearest-neighbour, to at least this size (default 128); larger images
            keep their own size, never shrunk.
        timeline_columns: most explained validations shown in the timeline, evenly spaced from the
            first kept one to the latest (default 8).
    """

    enabled: bool = True
    max_images: int = 8
    cmap: str = "jet"
    alpha: float = 0.5
    scale: Literal["minmax", "absolute"] = "minmax"
    class_names: Optional[Sequence[str]] = None
    min_size: int = 128
    timeline_columns: int = 8

    def __post_init__(self) -> None:
        import matplotlib

        if self.max_images < 1:
            raise ValueError(f"max_images must be >= 1; got {self.max_images}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1]; got {self.alpha}")
        if self.cmap not in matplotlib.colormaps:
            raise ValueError(f'cmap "{self.cmap}" is not a matplotlib colour map (e.g. "jet", "viridis", "inferno")')
        if self.scale not in ("minmax", "absolute"):
            raise ValueError(f'scale must be "minmax" or "absolute"; got "{self.scale}"')
        if self.min_size < 1:
            raise ValueError(f"min_size must be >= 1 pixel; got {self.min_size}")
        if self.timeline_columns < 2:
            raise ValueError(f"timeline_columns must be >= 2 (the first and the latest validation); got {self.timeline_columns}")
        if self.class_names is not None:
            self.class_names = [str(n) for n in self.class_names]

    def class_name(self, k: Optional[int], index: bool = True) -> str:
        """``"cat (3)"`` (``"cat"`` without ``index``) with ``class_names``, else ``"3"``; ``"?"`` for no class."""
        if k is None or k < 0:
            return "?"
        if self.class_names is not None and k < len(self.class_names):
            return f"{self.class_names[k]} ({k})" if index else self.class_names[k]
        return str(k)

    @property
    def vrange(self) -> tuple[Optional[float], Optional[float]]:
        """``(vmin, vmax)`` of the colour map: ``(0, 1)`` on the absolute scale, ``(None, None)`` (per map) otherwise."""
        return (0.0, 1.0) if self.scale == "absolute" else (None, None)

    @property
    def scale_text(self) -> str:
        """How captions name the scale: ``"absolute 0..1"`` or ``"min-max"``."""
        return "absolute 0..1" if self.scale == "absolute" else "min-max"


def map_bar(height: int, lo: float, hi: float, pictures: Pictures) -> np.ndarray:
    """The colour bar of one map (min ``lo``, max ``hi``): 0..1 with the map's range marked (absolute), or the map's own range."""
    if pictures.scale == "absolute":
        return colour_bar(height, pictures.cmap, 0.0, 1.0, labels=("1", "0"), marks=(lo, hi))
    return colour_bar(height, pictures.cmap, lo, hi)


def _resized(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """Maps ``[N, h, w]`` as float32 on the CPU, resized bilinearly to ``size`` when they differ (e.g. 64 px thumbnails of 224 px maps)."""
    maps = maps.detach().float().cpu()
    if tuple(maps.shape[-2:]) != tuple(size):
        maps = torch.nn.functional.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    return maps


def _outline(mask: np.ndarray) -> np.ndarray:
    """Boundary pixels of a bool mask ``[H, W]``: in it, with a 4-neighbour outside it."""
    padded = np.pad(mask, 1)
    inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~inner


def draw_samples(
    images: Tensor, maps: Tensor, lines: Sequence[Sequence[str]], pictures: Pictures, masks: Optional[Tensor] = None
) -> list[tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]]:
    """Each sample's pictures: its card, its strip and the strip's object mask.

    Args:
        images: ``[N, C, H, W]`` in ``[0, 1]``.
        maps: ``[N, h, w]`` their maps (resized bilinearly to ``H x W`` when needed).
        lines: per sample, the caption, one string per line (wrapped to the card's width).
        pictures: the options (colour map, alpha, scale, minimum size).
        masks: ``[N, H, W]`` bool object masks, or ``None``.

    Returns:
        Per sample: ``card`` ``[H', W', 3]`` uint8 (caption over input | overlay | colour bar, the
        mask's outline drawn white on the input), ``strip`` (input | overlay | colour bar, no text
        or outline) and its mask ``[H'', W'']`` uint8 (1 on the object under the input and under the
        overlay, 0 elsewhere) or ``None``.
    """
    h, w = images.shape[-2:]
    factor = display_factor(max(h, w), pictures.min_size)
    vmin, vmax = pictures.vrange
    # One blend and one enlargement for all samples, in uint8: per-sample and float calls cost more than the pixels.
    rgbs = to_uint8(to_rgb(images))
    values = normalize(_resized(maps, (h, w)), vmin, vmax).numpy()
    overlays = upscale(blend(rgbs, values, pictures.alpha, pictures.cmap), factor, axes=(1, 2))
    rgbs = upscale(rgbs, factor, axes=(1, 2))
    big_masks = None if masks is None else upscale(masks.detach().cpu().bool().numpy(), factor, axes=(1, 2))
    out = []
    for i in range(images.shape[0]):
        rgb, heat = rgbs[i], overlays[i]
        bar = map_bar(rgb.shape[0], float(maps[i].min()), float(maps[i].max()), pictures)
        strip = hstack([rgb, heat, bar], GAP)
        strip_mask, framed = None, rgb
        if big_masks is not None:
            big = big_masks[i]
            strip_mask = np.zeros(strip.shape[:2], np.uint8)
            strip_mask[:, : big.shape[1]] = big
            strip_mask[:, big.shape[1] + GAP : 2 * big.shape[1] + GAP] = big
            framed = rgb.copy()
            framed[_outline(big)] = 255
        card = vstack([text_block(lines[i], strip.shape[1]), hstack([framed, heat, bar], GAP)], 0)
        out.append((card, strip, strip_mask))
    # One size for all: W&B draws a gallery of differently sized images wrongly, and the colour bars'
    # labels (each map's own range) make the widths differ by a few pixels.
    width = max(strip.shape[1] for _, strip, _ in out)
    return [(_pad(card, width), _pad(strip, width), None if mask is None else _pad(mask, width, 0)) for card, strip, mask in out]


def _pad(picture: np.ndarray, width: int, value: int = 255) -> np.ndarray:
    """``picture`` ``[H, W, ...]`` padded on the right to ``width`` with ``value`` (white, or 0 for masks)."""
    extra = width - picture.shape[1]
    if extra <= 0:
        return picture
    return np.pad(picture, ((0, 0), (0, extra)) + ((0, 0),) * (picture.ndim - 2), constant_values=value)


def timeline_columns(total: int, most: int) -> list[int]:
    """Which of ``total`` columns to show: all, or ``most`` evenly spaced ones with the first and the last.

    Example:
        >>> from pami_lightning.callbacks.pictures import timeline_columns
        >>> timeline_columns(4, 10), timeline_columns(20, 5)
        ([0, 1, 2, 3], [0, 5, 10, 14, 19])
    """
    if total <= most:
        return list(range(total))
    return sorted({round(j * (total - 1) / (most - 1)) for j in range(most)})


def draw_timeline(
    images: Tensor,
    thumbs: Tensor,
    ranges: Tensor,
    column_labels: Sequence[str],
    row_labels: Sequence[Sequence[str]],
    pictures: Pictures,
) -> np.ndarray:
    """How each sample's map evolves: one labelled row per sample, its input then one overlay per validation.

    Args:
        images: ``[N, C, H, W]`` in ``[0, 1]``.
        thumbs: ``[N, T, h, w]`` each sample's maps at ``T`` validations (oldest first), each
            min-max normalised to ``[0, 1]`` (the drift history's thumbnails).
        ranges: ``[N, T, 2]`` each map's true (min, max) before normalising; NaN where unknown.
        column_labels: ``T`` labels (e.g. ``"epoch 3"``).
        row_labels: ``N`` labels, each a few short lines (e.g. ``["#17", "cat (3)"]``).
        pictures: the options; at most ``pictures.timeline_columns`` columns are drawn.

    Returns:
        ``[H', W', 3]`` uint8. On the absolute scale each cell is coloured by its true values
        (``min + (max - min) * thumb``), so the same colour is the same score in every cell; on the
        min-max scale each cell is stretched alone. Either way each cell's range is printed under it.
    """
    n, t = thumbs.shape[:2]
    shown = timeline_columns(t, pictures.timeline_columns)
    h, w = images.shape[-2:]
    factor = display_factor(max(h, w), pictures.min_size)
    cells = thumbs[:, shown].float()
    lo, hi = ranges[:, shown, 0].float(), ranges[:, shown, 1].float()
    known = ~(lo.isnan() | hi.isnan())
    if pictures.scale == "absolute":
        # Undo the thumbnails' min-max stretch: exact up to their uint8 steps of (max - min) / 255.
        true = lo[..., None, None].nan_to_num() + (hi - lo).nan_to_num()[..., None, None] * cells
        cells = true.where(known[..., None, None], cells)
    m = len(shown)
    # All cells in one blend and one enlargement, in uint8: per-tile and float calls cost more than the pixels.
    rgbs = to_uint8(to_rgb(images))
    scaled = _resized(cells.reshape(n * m, *cells.shape[2:]), (h, w)).clamp(0, 1).reshape(n, m, h, w).numpy()
    tiles = upscale(blend(rgbs[:, None], scaled, pictures.alpha, pictures.cmap), factor, axes=(2, 3))
    inputs = upscale(rgbs, factor, axes=(1, 2))
    th, tw = inputs.shape[1:3]

    step = line_height()
    labels = [[str(x) for x in row] for row in row_labels]
    label_w = max([40, *(text_width(x) + 8 for row in labels for x in row)])
    head_h, range_h = step + 4, step + 2
    row_h = th + range_h + GAP
    if pictures.scale == "absolute":
        bar = colour_bar(th, pictures.cmap, 0.0, 1.0, labels=("1", "0"))
        title = "absolute scale: the same colour is the same score (0..1) in every cell · each map's min..max under it"
    else:
        bar = colour_bar(th, pictures.cmap, 0.0, 1.0, labels=("max", "min"))
        title = "min-max scale: each map stretched alone, colours not comparable between cells · each map's min..max under it"
    left = label_w
    bar_x = left + (m + 1) * (tw + GAP)
    heading = text_block([title], bar_x + bar.shape[1])
    top = heading.shape[0] + head_h
    canvas = np.full((top + n * row_h, heading.shape[1], 3), 255, np.uint8)
    canvas[: heading.shape[0]] = heading
    canvas[top : top + th, bar_x : bar_x + bar.shape[1]] = bar
    texts: list[tuple[int, int, str]] = []
    for j, label in enumerate(["input", *(column_labels[k] for k in shown)]):
        x = left + j * (tw + GAP)
        texts.append((x + max(0, (tw - text_width(label)) // 2), heading.shape[0] + 2, label))
    for i in range(n):
        y = top + i * row_h
        texts.extend((3, y + 2 + r * step, x) for r, x in enumerate(labels[i]))
        canvas[y : y + th, left : left + tw] = inputs[i]
        for j in range(m):
            x = left + (j + 1) * (tw + GAP)
            canvas[y : y + th, x : x + tw] = tiles[i, j]
            a, b = float(lo[i, j]), float(hi[i, j])
            text = "..".join(format_range(a, b)) if math.isfinite(a) and math.isfinite(b) else "range ?"
            texts.append((x + max(0, (tw - text_width(text)) // 2), y + th + 1, text))
    return put_text(canvas, texts)
