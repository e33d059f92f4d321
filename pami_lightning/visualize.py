"""Turning importance maps into pictures: colour maps, overlays, colour bars, captions, grids.

Two kinds of helpers:

- tensors in, tensors out (:func:`normalize`, :func:`colorize`, :func:`overlay`, :func:`make_grid`,
  :func:`timeline`): float ``[0, 1]`` pictures for notebooks and the CLI;
- uint8 ``[H, W, 3]`` numpy pictures (:func:`blend`, :func:`upscale`, :func:`colour_bar`,
  :func:`text_block`, :func:`hstack`, :func:`vstack`, :func:`tile`; from ``pami_lightning._canvas``):
  what the callback logs, drawn with Pillow rather than matplotlib figures (a figure costs tens of
  milliseconds to draw); the colours are matplotlib's all the same.

Colour scales: by default each map is stretched over the whole colour map (min-max), which makes any
map look confident; ``vmin``/``vmax`` fix the scale instead (e.g. 0..1 for probabilities), so the same
colour means the same score in every map. The engine never imports this module.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Optional

import numpy as np
import torch
from torch import Tensor

from ._canvas import (
    FONT_SIZE,
    _colormap,
    blend,
    colour_bar,
    display_factor,
    format_range,
    hstack,
    line_height,
    put_text,
    text_block,
    text_width,
    tile,
    upscale,
    vstack,
)

__all__ = [
    "FONT_SIZE", "normalize", "to_rgb", "colorize", "overlay", "make_grid", "timeline", "to_uint8",
    "display_factor", "upscale", "blend", "colour_bar", "text_block", "text_width", "line_height", "put_text", "hstack", "vstack", "tile", "format_range",
    "highlight_tokens", "highlight_tokens_image",
]


def normalize(maps: Tensor, vmin: Optional[float] = None, vmax: Optional[float] = None) -> Tensor:
    """Each map of ``[B, *spatial]`` scaled to ``[0, 1]``.

    Args:
        maps: ``[B, *spatial]`` importance maps.
        vmin: value drawn as 0 in every map (default: each map's own minimum).
        vmax: value drawn as 1 in every map (default: each map's own maximum).

    Returns:
        ``[B, *spatial]`` float32: ``(maps - vmin) / (vmax - vmin)`` clamped to ``[0, 1]``; per map
        (min-max) where ``vmin``/``vmax`` are not given, a constant map becoming 0.
    """
    flat = maps.detach().float().reshape(maps.shape[0], -1)
    lo = flat.min(dim=1, keepdim=True).values if vmin is None else flat.new_full((flat.shape[0], 1), float(vmin))
    hi = flat.max(dim=1, keepdim=True).values if vmax is None else flat.new_full((flat.shape[0], 1), float(vmax))
    span = hi - lo
    out = torch.where(span > 0, (flat - lo) / span.clamp_min(torch.finfo(torch.float32).tiny), torch.zeros_like(flat))
    return out.clamp_(0, 1).reshape(maps.shape)


def to_rgb(images: Tensor) -> Tensor:
    """Images ``[B, C, H, W]`` (1 channel: grey; more: the first 3) as float RGB ``[B, 3, H, W]`` in ``[0, 1]`` on the CPU."""
    images = images.detach().float().cpu().clamp(0, 1)
    return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images[:, :3]


def colorize(maps: Tensor, cmap: str = "viridis", vmin: Optional[float] = None, vmax: Optional[float] = None) -> Tensor:
    """Colour each map of ``[B, H, W]``: RGB ``[B, 3, H, W]`` in ``[0, 1]`` (CPU).

    Args:
        maps: ``[B, H, W]`` importance maps.
        cmap: a matplotlib colour map name (default ``"viridis"``).
        vmin: value of the colour map's first colour in every map (default: each map's minimum).
        vmax: value of its last colour (default: each map's maximum).

    Colours are matplotlib's uint8 colours divided by 255 (``cmap(v, bytes=True)``), so
    ``round(255 * rgb)`` gives back exactly the bytes, as the second run's segmenters need.
    """
    values = normalize(maps, vmin, vmax).cpu().numpy()
    rgba = _colormap(cmap)(values, bytes=True)
    rgb = torch.from_numpy(np.ascontiguousarray(rgba[..., :3])).float().div_(255)
    return rgb.movedim(-1, 1)


def overlay(
    images: Tensor, maps: Tensor, alpha: float = 0.5, cmap: str = "jet", vmin: Optional[float] = None, vmax: Optional[float] = None
) -> Tensor:
    """Blend colour-mapped maps over images.

    Args:
        images: ``[B, C, H, W]`` in ``[0, 1]`` (1 or 3 channels).
        maps: ``[B, h, w]`` importance maps (resized bilinearly to ``H x W`` when needed).
        alpha: weight of the heatmap colour (default 0.5).
        cmap: a matplotlib colour map name (default ``"jet"``).
        vmin: map value of the colour map's first colour (default: each map's minimum, i.e. min-max).
        vmax: map value of its last colour (default: each map's maximum). ``vmin=0, vmax=1`` draws
            probabilities on one absolute scale.

    Returns:
        ``[B, 3, H, W]`` float in ``[0, 1]`` on the CPU.
    """
    if images.ndim != 4:
        raise ValueError(f"images must be [B, C, H, W]; got {list(images.shape)}")
    if maps.ndim != 3 or maps.shape[0] != images.shape[0]:
        raise ValueError(f"maps must be [B, h, w] with B={images.shape[0]}; got {list(maps.shape)}")
    images = to_rgb(images)
    maps = maps.detach().float().cpu()
    if maps.shape[-2:] != images.shape[-2:]:
        maps = torch.nn.functional.interpolate(maps[:, None], size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    return ((1 - alpha) * images + alpha * colorize(maps, cmap, vmin, vmax)).clamp(0, 1)


def make_grid(images: Tensor, nrow: int = 8, padding: int = 2, pad_value: float = 1.0) -> Tensor:
    """Tile images into one picture, row-major, ``nrow`` per row.

    Args:
        images: ``[N, C, H, W]`` (all the same size).
        nrow: images per row (default 8).
        padding: pixels between and around tiles (default 2).
        pad_value: colour of the padding (default 1.0, white).

    Returns:
        ``[C, rows * (H + padding) + padding, ncols * (W + padding) + padding]`` with ``ncols = min(nrow, N)``.
    """
    if images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(f"images must be a non-empty [N, C, H, W]; got {list(images.shape)}")
    n, c, h, w = images.shape
    ncols = min(nrow, n)
    nrows = -(-n // ncols)
    grid = images.new_full((c, nrows * (h + padding) + padding, ncols * (w + padding) + padding), pad_value)
    for i in range(n):
        r, col = divmod(i, ncols)
        top, left = padding + r * (h + padding), padding + col * (w + padding)
        grid[:, top : top + h, left : left + w] = images[i]
    return grid


def timeline(
    images: Tensor, maps: Tensor, alpha: float = 0.5, cmap: str = "jet", padding: int = 2, vmin: Optional[float] = None, vmax: Optional[float] = None
) -> Tensor:
    """How each input's map evolves: one row per input, the input then one overlay per map in time.

    An unlabelled tensor version; the callback draws a labelled one
    (:func:`pami_lightning.callbacks.pictures.draw_timeline`).

    Args:
        images: ``[N, C, H, W]`` in ``[0, 1]``.
        maps: ``[N, T, h, w]`` maps of each input at ``T`` successive times (oldest first); the images
            are resized to ``h x w``.
        alpha: weight of the heatmap colour (default 0.5).
        cmap: a matplotlib colour map name (default ``"jet"``).
        padding: pixels between tiles (default 2).
        vmin: see :func:`overlay` (default: each map min-max stretched, so colours are not comparable across times).
        vmax: see :func:`overlay`.

    Returns:
        ``[3, N * (h + padding) + padding, (T + 1) * (w + padding) + padding]`` float in ``[0, 1]`` (CPU).
    """
    if maps.ndim != 4 or images.ndim != 4 or maps.shape[0] != images.shape[0]:
        raise ValueError(f"images must be [N, C, H, W] and maps [N, T, h, w] with the same N; got {list(images.shape)}, {list(maps.shape)}")
    n, t, h, w = maps.shape
    thumbs = to_rgb(images)
    if thumbs.shape[-2:] != (h, w):
        thumbs = torch.nn.functional.interpolate(thumbs, size=(h, w), mode="area")
    tiles = [thumbs] + [overlay(thumbs, maps[:, k], alpha, cmap, vmin, vmax) for k in range(t)]
    return make_grid(torch.stack(tiles, dim=1).reshape(n * (t + 1), 3, h, w), nrow=t + 1, padding=padding)


def to_uint8(image: Tensor) -> np.ndarray:
    """``[C, H, W]`` float in ``[0, 1]`` -> ``[H, W, C]`` uint8 numpy array (for PNG writers and W&B); ``[B, C, H, W]`` -> ``[B, H, W, C]``."""
    return image.detach().float().cpu().clamp(0, 1).mul(255).round().to(torch.uint8).movedim(-3, -1).numpy()


# ------------------------------------------------------------------------------------- tokens


def _token_colours(tokens: Sequence[str], scores: Tensor | Sequence[float], cmap: str, vmin: float | None, vmax: float | None) -> tuple[np.ndarray, np.ndarray]:
    """Scores as float64 ``[n]`` and their RGBA colours uint8 ``[n, 4]`` (``vmin..vmax`` -> the colour map)."""
    values = (scores.detach().double().cpu() if isinstance(scores, Tensor) else torch.as_tensor(scores, dtype=torch.float64)).reshape(-1).numpy()
    if len(values) != len(tokens):
        raise ValueError(f"scores hold {len(values)} values for {len(tokens)} tokens — pass the map of the real tokens, e.g. heatmap[i, :len(tokens)]")
    lo = vmin if vmin is not None else (float(values.min()) if len(values) else 0.0)
    hi = vmax if vmax is not None else (float(values.max()) if len(values) else 1.0)
    scaled = np.clip((values - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(values)
    return values, _colormap(cmap)(scaled, bytes=True)


def _text_colour(rgba: np.ndarray) -> str:
    """Black on light backgrounds, white on dark ones."""
    r, g, b = rgba[:3] / 255
    return "#000000" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "#ffffff"


def highlight_tokens(
    tokens: Sequence[str],
    scores: Tensor | Sequence[float],
    *,
    cmap: str = "Reds",
    vmin: float | None = None,
    vmax: float | None = None,
) -> str:
    """Tokens as HTML, each on a background coloured by its importance (for ``wandb.Html`` or notebooks).

    Args:
        tokens: the ``n`` tokens to show (strings, e.g. the real tokens of one input; escaped here).
        scores: their importance ``[n]``, e.g. ``heatmaps[i, :n]`` of ``PAMI.explain``.
        cmap: a matplotlib colour map name (default ``"Reds"``: white = least important).
        vmin: score drawn with the colour map's first colour (default: the lowest score).
        vmax: score drawn with its last colour (default: the highest score).

    Returns:
        An HTML ``<div>`` with one ``<span>`` per token; hovering a token shows its score.

    Example:
        >>> from pami_lightning.visualize import highlight_tokens
        >>> html = highlight_tokens(["a", "great", "film"], [0.1, 0.9, 0.2])
        >>> html.count("<span"), 'title="0.9"' in html
        (3, True)
    """
    values, rgba = _token_colours(tokens, scores, cmap, vmin, vmax)
    spans = [
        f'<span title="{value:.4g}" style="background-color: #{c[0]:02x}{c[1]:02x}{c[2]:02x}; color: {_text_colour(c)}; '
        f'padding: 1px 3px; border-radius: 3px">{html.escape(str(token))}</span>'
        for token, value, c in zip(tokens, values, rgba, strict=True)
    ]
    return '<div class="pami-tokens" style="line-height: 2; font-family: sans-serif">' + " ".join(spans) + "</div>"


def highlight_tokens_image(
    tokens: Sequence[str],
    scores: Tensor | Sequence[float],
    *,
    cmap: str = "Reds",
    vmin: float | None = None,
    vmax: float | None = None,
    width: int = 640,
    fontsize: float = 12,
) -> Tensor:
    """Tokens drawn on backgrounds coloured by their importance, as an image (for TensorBoard).

    Tokens are laid out left to right and wrap into lines ``width`` pixels wide.

    Args:
        tokens: the ``n`` tokens to show (strings).
        scores: their importance ``[n]``.
        cmap: a matplotlib colour map name (default ``"Reds"``).
        vmin: score drawn with the colour map's first colour (default: the lowest score).
        vmax: score drawn with its last colour (default: the highest score).
        width: image width in pixels (default 640).
        fontsize: font size in points (default 12).

    Returns:
        ``[3, H, width]`` float in ``[0, 1]`` on the CPU (``H`` grows with the number of lines).

    Example:
        >>> from pami_lightning.visualize import highlight_tokens_image
        >>> image = highlight_tokens_image(["a", "great", "film"], [0.1, 0.9, 0.2], width=200)
        >>> image.shape[0], image.shape[2]
        (3, 200)
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.font_manager import FontProperties
    from matplotlib.patches import Rectangle

    _, rgba = _token_colours(tokens, scores, cmap, vmin, vmax)
    dpi, prop = 100, FontProperties(size=fontsize)
    fig = Figure(figsize=(width / dpi, 1), dpi=dpi, facecolor="white")
    canvas = FigureCanvasAgg(fig)
    renderer = canvas.get_renderer()
    sizes = [renderer.get_text_width_height_descent(str(t), prop, ismath=False) for t in tokens]
    pad, gap, margin = 3.0, fontsize * 0.5, 6.0
    ascent = max([h - d for _, h, d in sizes], default=fontsize)
    descent = max([d for _, _, d in sizes], default=0.0)
    line = ascent + descent + 2 * pad + gap
    # Lay out in pixels from the top-left: (x, line index) of each token.
    places, x, row = [], margin, 0
    for w, _, _ in sizes:
        if x > margin and x + w + 2 * pad > width - margin:
            x, row = margin, row + 1
        places.append((x, row))
        x += w + 2 * pad + gap
    height = int(np.ceil(2 * margin + (row + 1) * line - gap))
    fig.set_size_inches(width / dpi, height / dpi)
    for token, (w, _, _), (x, r), c in zip(tokens, sizes, places, rgba, strict=True):
        baseline = height - margin - r * line - pad - ascent
        box = Rectangle((x / width, (baseline - descent - pad) / height), (w + 2 * pad) / width, (ascent + descent + 2 * pad) / height,
                        transform=fig.transFigure, facecolor=c / 255, edgecolor="none")
        fig.add_artist(box)
        fig.text((x + pad) / width, baseline / height, str(token), fontproperties=prop, color=_text_colour(c), va="baseline", parse_math=False)
    canvas.draw()
    pixels = np.asarray(canvas.buffer_rgba())[..., :3]
    return torch.from_numpy(pixels.copy()).permute(2, 0, 1).float().div_(255)
