"""Pictures as uint8 ``[H, W, 3]`` numpy arrays: colour-mapped blends, enlargement, text, colour bars, layout.

What the callback logs is drawn here, with Pillow for the text rather than matplotlib figures: a
figure costs tens of milliseconds to draw, these helpers milliseconds for a whole validation's
pictures (rendered text is cached, since labels and ranges recur from one validation to the next).
The colours are matplotlib's all the same. :mod:`pami_lightning.visualize` re-exports the public
names; the engine never imports either module.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any, Optional

import numpy as np

__all__ = ["FONT_SIZE", "display_factor", "upscale", "blend", "colour_bar", "text_block", "text_width", "line_height", "put_text",
           "hstack", "vstack", "tile", "format_range"]

#: Font size of the callback's captions and labels, in pixels.
FONT_SIZE = 11


@functools.lru_cache(maxsize=16)
def _colormap(name: str) -> Any:
    """matplotlib's colour map ``name``, looked up once: ``matplotlib.colormaps[name]`` returns a fresh
    copy that rebuilds its colour table on first use (a few ms each time)."""
    import matplotlib

    return matplotlib.colormaps[name]


def display_factor(size: int, min_size: int = 128) -> int:
    """Integer enlargement that brings ``size`` pixels to at least ``min_size``; 1 for larger images (never shrunk).

    Example:
        >>> from pami_lightning.visualize import display_factor
        >>> [display_factor(s) for s in (32, 64, 100, 224)]
        [4, 2, 2, 1]
    """
    if size < 1 or min_size < 1:
        raise ValueError(f"size and min_size must be >= 1; got {size}, {min_size}")
    return max(1, -(-min_size // size))


def upscale(pixels: np.ndarray, factor: int, axes: tuple[int, int] = (0, 1)) -> np.ndarray:
    """Nearest-neighbour enlargement by an integer ``factor``: every pixel a ``factor x factor`` block.

    Nearest, not bilinear: a 32 px image shown at 128 px keeps its real pixels (no invented detail).

    Args:
        pixels: e.g. ``[H, W, 3]``, ``[H, W]`` or, with ``axes=(1, 2)``, a batch ``[B, H, W, 3]``.
        factor: the enlargement (1: ``pixels`` unchanged).
        axes: the height and width axes (default ``(0, 1)``).
    """
    if factor == 1:
        return pixels
    return np.repeat(np.repeat(pixels, factor, axis=axes[0]), factor, axis=axes[1])


@functools.lru_cache(maxsize=16)
def _lut(name: str) -> np.ndarray:
    """The colour map's table ``[N, 3]`` uint8: matplotlib's ``cmap(i, bytes=True)`` for ``i = 0 .. N - 1``."""
    cmap = _colormap(name)
    table = cmap(np.arange(cmap.N), bytes=True)[:, :3].copy()
    table.flags.writeable = False
    return table


def blend(base: np.ndarray, values: np.ndarray, alpha: float = 0.5, cmap: str = "jet") -> np.ndarray:
    """Colour-mapped ``values`` blended over uint8 pictures, in integer arithmetic.

    What :func:`overlay` does (to one level of rounding), on uint8 numpy arrays: several times faster
    on many large tiles, which is what the callback draws.

    Args:
        base: ``[..., H, W, 3]`` uint8 pictures (broadcast against ``values``, e.g. ``[N, 1, H, W, 3]``).
        values: ``[..., H, W]`` already scaled to ``[0, 1]`` (see :func:`normalize`); NaN is drawn as 0.
        alpha: weight of the colour (default 0.5).
        cmap: a matplotlib colour map name (default ``"jet"``).

    Returns:
        ``[..., H, W, 3]`` uint8: ``(1 - alpha) * base + alpha * cmap(values)``, the colours being
        matplotlib's bytes (index ``min(int(v * N), N - 1)``, as matplotlib picks them).
    """
    lut = _lut(cmap)
    n = lut.shape[0]
    index = np.clip((np.nan_to_num(np.asarray(values, dtype=np.float32), nan=0.0) * n).astype(np.intp), 0, n - 1)
    weight = round(alpha * 256)
    mixed = base.astype(np.uint16) * (256 - weight) + lut[index].astype(np.uint16) * weight + 128
    return (mixed >> 8).astype(np.uint8)


@functools.lru_cache(maxsize=8)
def _font(size: int) -> Any:
    from PIL import ImageFont

    try:  # matplotlib ships DejaVu Sans: wide Unicode coverage, the same on every machine
        from matplotlib import font_manager

        return ImageFont.truetype(font_manager.findfont("DejaVu Sans"), size)
    except (OSError, ValueError):
        return ImageFont.load_default(size)


@functools.lru_cache(maxsize=4096)
def text_width(text: str, fontsize: int = FONT_SIZE) -> int:
    """Width in pixels of ``text`` drawn by :func:`text_block` / :func:`put_text`."""
    return math.ceil(_font(fontsize).getlength(text))


def _wrap(line: str, width: int, fontsize: int) -> list[str]:
    """Greedy wrap of one line into pieces at most ``width`` px: at `` · `` separators first, then spaces."""
    if text_width(line, fontsize) <= width:
        return [line]
    for sep in (" · ", " "):
        parts = line.split(sep)
        if len(parts) > 1:
            pieces, current = [], parts[0]
            for part in parts[1:]:
                if text_width(current + sep + part, fontsize) <= width:
                    current += sep + part
                else:
                    pieces.append(current)
                    current = part
            pieces.append(current)
            # Every piece is shorter than the line (it did not fit whole): a piece still too wide is split again.
            return [p for piece in pieces for p in _wrap(piece, width, fontsize)]
    return [_clip(line, width, fontsize)]


def _clip(text: str, width: int, fontsize: int) -> str:
    """``text`` cut to ``width`` px with an ellipsis when it is wider."""
    if text_width(text, fontsize) <= width:
        return text
    while text and text_width(text + "…", fontsize) > width:
        text = text[:-1]
    return text + "…"


def text_block(lines: Sequence[str], width: int, *, fontsize: int = FONT_SIZE, padding: int = 3, align: str = "left") -> np.ndarray:
    """Lines of black text on white, each wrapped to ``width`` pixels (at `` · `` separators, then spaces).

    Args:
        lines: the text, one string per line.
        width: the block's width in pixels.
        fontsize: font size in pixels (default :data:`FONT_SIZE`).
        padding: pixels around the text (default 3).
        align: ``"left"`` or ``"center"``.

    Returns:
        ``[H, width, 3]`` uint8, ``H`` growing with the number of wrapped lines.
    """
    wrapped = [piece for line in lines for piece in _wrap(line, max(1, width - 2 * padding), fontsize)]
    step = line_height(fontsize)
    canvas = np.full((2 * padding + step * len(wrapped), width, 3), 255, np.uint8)
    items = [(padding if align == "left" else max(padding, (width - text_width(piece, fontsize)) // 2), padding + i * step, piece) for i, piece in enumerate(wrapped)]
    return put_text(canvas, items, fontsize=fontsize)


@functools.lru_cache(maxsize=16)
def line_height(fontsize: int = FONT_SIZE) -> int:
    """Pixels from one line of :func:`text_block` / :func:`put_text` to the next."""
    ascent, descent = _font(fontsize).getmetrics()
    return int(ascent + descent + 1)


@functools.lru_cache(maxsize=4096)
def _ink(text: str, fontsize: int) -> np.ndarray:
    """``text``'s coverage ``[line_height, width]`` uint8 (255: full ink), rendered once.

    Cached: labels, ranges and tick values recur from one validation to the next, and rendering
    them again was most of the drawing time.
    """
    from PIL import Image, ImageDraw

    image = Image.new("L", (max(1, text_width(text, fontsize)), line_height(fontsize)), 0)
    ImageDraw.Draw(image).text((0, 0), text, fill=255, font=_font(fontsize))
    ink = np.asarray(image).copy()
    ink.flags.writeable = False
    return ink


def put_text(canvas: np.ndarray, items: Sequence[tuple[int, int, str]], *, fontsize: int = FONT_SIZE) -> np.ndarray:
    """Draw black text on ``canvas`` ``[H, W, 3]`` uint8 in place, at ``(x, y, text)`` (top-left corners); returns it.

    Text running past the canvas is cut off.
    """
    for x, y, text in items:
        ink = _ink(text, fontsize)
        h, w = min(ink.shape[0], canvas.shape[0] - y), min(ink.shape[1], canvas.shape[1] - x)
        if h > 0 and w > 0 and x >= 0 and y >= 0:
            region = canvas[y : y + h, x : x + w]
            # Black at the ink's coverage over whatever is there: background * (1 - coverage).
            region[:] = (region.astype(np.uint16) * (255 - ink[:h, :w, None]) // 255).astype(np.uint8)
    return canvas


def format_range(lo: float, hi: float) -> tuple[str, str]:
    """``lo`` and ``hi`` with enough decimals to tell them apart (at least 3, at most 6).

    Example:
        >>> from pami_lightning.visualize import format_range
        >>> format_range(0.98, 0.995), format_range(0.0, 0.003), format_range(0.98012, 0.98034)
        (('0.980', '0.995'), ('0.000', '0.003'), ('0.9801', '0.9803'))
    """
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return f"{lo:.3f}", f"{hi:.3f}"
    span = abs(hi - lo)
    decimals = 3 if span == 0 else min(6, max(3, math.ceil(-math.log10(span))))
    return f"{lo:.{decimals}f}", f"{hi:.{decimals}f}"


def colour_bar(
    height: int,
    cmap: str,
    vmin: float,
    vmax: float,
    *,
    labels: Optional[Sequence[str]] = None,
    marks: Sequence[float] = (),
    bar_width: int = 10,
    fontsize: int = FONT_SIZE,
) -> np.ndarray:
    """A vertical colour bar with its tick labels: ``vmax``'s colour at the top, ``vmin``'s at the bottom.

    Its colours are those :func:`colorize` gives a value ``v`` with the same ``vmin``/``vmax``.

    Args:
        height: bar height in pixels (e.g. the heatmap's).
        cmap: a matplotlib colour map name.
        vmin: value at the bottom.
        vmax: value at the top.
        labels: the top and bottom labels (default: ``vmax`` and ``vmin`` as numbers, see :func:`format_range`).
        marks: values drawn as black ticks across the bar, e.g. a map's min and max on a fixed scale.
        bar_width: width of the colour strip in pixels (default 10).
        fontsize: label size in pixels (default :data:`FONT_SIZE`).

    Returns:
        ``[height, W, 3]`` uint8: the strip, then the labels on white.
    """
    if labels is None:
        low, high = format_range(vmin, vmax)
        labels = (high, low)
    text = max(text_width(label, fontsize) for label in labels)
    width = bar_width + 4 + text + 2
    values = np.linspace(1.0, 0.0, max(height, 1))  # top row: vmax
    strip = _colormap(cmap)(values, bytes=True)[:, :3]
    canvas = np.full((max(height, 1), width, 3), 255, np.uint8)
    canvas[:, :bar_width] = strip[:, None, :]
    span = vmax - vmin
    for value in marks:
        if span > 0 and math.isfinite(value):
            row = round((1 - min(max((value - vmin) / span, 0.0), 1.0)) * (height - 1))
            canvas[max(0, row - 1) : row + 1, : bar_width + 3] = 0
    return put_text(canvas, [(bar_width + 4, 0, labels[0]), (bar_width + 4, max(0, height - line_height(fontsize)), labels[-1])], fontsize=fontsize)


def hstack(pictures: Sequence[np.ndarray], gap: int = 4) -> np.ndarray:
    """Pictures ``[H_i, W_i, 3]`` uint8 side by side, top-aligned, ``gap`` white pixels apart."""
    height = max(p.shape[0] for p in pictures)
    width = sum(p.shape[1] for p in pictures) + gap * (len(pictures) - 1)
    canvas = np.full((height, width, 3), 255, np.uint8)
    x = 0
    for p in pictures:
        canvas[: p.shape[0], x : x + p.shape[1]] = p
        x += p.shape[1] + gap
    return canvas


def vstack(pictures: Sequence[np.ndarray], gap: int = 4) -> np.ndarray:
    """Pictures ``[H_i, W_i, 3]`` uint8 one under the other, left-aligned, ``gap`` white pixels apart."""
    # hstack of the transposed pictures: one layout rule for both directions.
    return np.ascontiguousarray(hstack([p.transpose(1, 0, 2) for p in pictures], gap).transpose(1, 0, 2))


def tile(pictures: Sequence[np.ndarray], ncols: int, gap: int = 8, align: str = "top") -> np.ndarray:
    """Pictures ``[H_i, W_i, 3]`` uint8 in rows of ``ncols``, each in a white cell of the largest one's size.

    ``align="bottom"`` puts shorter pictures at the bottom of their cells (e.g. captions of varying
    height over same-size images).
    """
    if not pictures:
        raise ValueError("tile needs at least one picture")
    h, w = max(p.shape[0] for p in pictures), max(p.shape[1] for p in pictures)
    cells = [
        np.pad(p, ((h - p.shape[0], 0) if align == "bottom" else (0, h - p.shape[0]), (0, w - p.shape[1]), (0, 0)), constant_values=255)
        for p in pictures
    ]
    rows = [hstack(cells[i : i + ncols], gap) for i in range(0, len(cells), ncols)]
    return vstack(rows, gap)
