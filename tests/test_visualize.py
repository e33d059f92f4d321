"""visualize: colour scales, colour bars, text, enlargement and layout helpers (no model, no logger)."""

from __future__ import annotations

import math

import matplotlib
import numpy as np
import pytest
import torch

from pami_lightning.visualize import (
    blend,
    colorize,
    colour_bar,
    display_factor,
    format_range,
    hstack,
    line_height,
    normalize,
    overlay,
    put_text,
    text_block,
    tile,
    to_uint8,
    upscale,
)


def _blob(size: int = 16) -> torch.Tensor:
    """A smooth bump ``[size, size]`` in ``[0, 1]``, peaking at one pixel."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    bump = torch.exp(-((yy - 0.3) ** 2 + (xx - 0.6) ** 2) / 0.05)
    return (bump - bump.min()) / (bump.max() - bump.min())


def test_absolute_scale_tells_confident_from_flat_maps_that_min_max_draws_alike():
    # The cat (0.980..0.995) and astronaut (0.000..0.003): the same shape, very different scores.
    blob = _blob()
    maps = torch.stack([0.980 + 0.015 * blob, 0.003 * blob])
    images = torch.full((2, 3, 16, 16), 0.5)
    stretched = to_uint8(overlay(images, maps, cmap="jet"))
    assert np.array_equal(stretched[0], stretched[1])  # min-max: both look like confident localisations
    absolute = to_uint8(overlay(images, maps, cmap="jet", vmin=0.0, vmax=1.0))
    assert not np.array_equal(absolute[0], absolute[1])
    # On the absolute scale every pixel has the colour of its own probability.
    jet = matplotlib.colormaps["jet"]
    want = np.round(0.5 * 0.5 * 255 + 0.5 * jet(maps.numpy(), bytes=True)[..., :3].astype(np.float64)).astype(np.uint8)
    assert np.abs(absolute.astype(int) - want.astype(int)).max() <= 1


def test_blend_is_overlay_in_integer_arithmetic():
    g = torch.Generator().manual_seed(0)
    images, values = torch.rand(3, 3, 8, 8, generator=g), torch.rand(3, 8, 8, generator=g)
    values[0, 0, 0], values[0, 0, 1] = 0.0, 1.0  # both ends of the colour map
    want = to_uint8(overlay(images, values, alpha=0.3, cmap="viridis", vmin=0.0, vmax=1.0)).astype(int)
    got = blend(to_uint8(images), values.numpy(), alpha=0.3, cmap="viridis").astype(int)
    assert np.abs(got - want).max() <= 1
    # Broadcast: one picture under several maps.
    assert blend(to_uint8(images)[:, None], np.stack([values.numpy()] * 2, 1)).shape == (3, 2, 8, 8, 3)


def test_colorize_with_a_fixed_range_gives_matplotlibs_bytes_and_clamps():
    values = torch.tensor([[[-0.5, 0.0, 0.25], [0.5, 1.0, 1.5]]])
    rgb = colorize(values, "viridis", vmin=0.0, vmax=1.0)
    want = matplotlib.colormaps["viridis"](np.clip(values.numpy(), 0, 1), bytes=True)[..., :3]
    assert np.array_equal(rgb.mul(255).round().byte().movedim(1, -1).numpy(), want)
    # Default: per map min-max, a constant map drawn with the first colour.
    assert torch.equal(normalize(torch.full((1, 2, 2), 0.7)), torch.zeros(1, 2, 2))
    assert normalize(values, 0.0, 1.0).min() == 0 and normalize(values, 0.0, 1.0).max() == 1


def test_colour_bar_runs_from_vmax_at_the_top_to_vmin_and_marks_values():
    bar = colour_bar(101, "jet", 0.0, 1.0, labels=("1", "0"), marks=(0.25,), bar_width=10)
    jet = matplotlib.colormaps["jet"]
    assert bar.shape[0] == 101 and bar.shape[1] > 10  # the labels beside the strip
    assert np.array_equal(bar[0, 0], jet(1.0, bytes=True)[:3]) and np.array_equal(bar[-1, 0], jet(0.0, bytes=True)[:3])
    assert np.array_equal(bar[50, 0], jet(0.5, bytes=True)[:3])
    assert (bar[75, :12] == 0).all()  # the mark: 0.25 is three quarters of the way down
    assert (bar[: line_height(), 12:] < 128).any() and (bar[-line_height() :, 12:] < 128).any()  # top and bottom labels
    # Default labels: the range's own numbers.
    assert colour_bar(50, "jet", 0.98, 0.995).shape[1] > colour_bar(50, "jet", 0.0, 1.0, labels=("1", "0")).shape[1]


@pytest.mark.parametrize(("lo", "hi", "want"), [(0.98, 0.995, ("0.980", "0.995")), (0.0, 0.003, ("0.000", "0.003")),
                                                (0.5, 0.5, ("0.500", "0.500")), (0.98012, 0.98034, ("0.9801", "0.9803")),
                                                (0.1, 0.1000001, ("0.100000", "0.100000"))])
def test_format_range_shows_enough_decimals_to_tell_ends_apart(lo, hi, want):
    assert format_range(lo, hi) == want


def test_format_range_of_nan():
    assert format_range(math.nan, 1.0) == ("nan", "1.000")


@pytest.mark.parametrize(("size", "factor"), [(1, 128), (32, 4), (64, 2), (100, 2), (128, 1), (224, 1), (500, 1)])
def test_display_factor_enlarges_small_images_and_never_shrinks(size, factor):
    assert display_factor(size) == factor
    assert size * display_factor(size) >= 128


def test_display_factor_rejects_empty_sizes():
    with pytest.raises(ValueError, match=">= 1"):
        display_factor(0)


def test_upscale_is_nearest_neighbour():
    x = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    up = upscale(x, 4)
    assert up.shape == (8, 12, 3)
    for i in range(8):
        for j in range(12):
            assert np.array_equal(up[i, j], x[i // 4, j // 4])
    batch = upscale(np.stack([x, x + 1]), 2, axes=(1, 2))
    assert batch.shape == (2, 4, 6, 3) and np.array_equal(batch[1, 3, 5], x[1, 2] + 1)
    assert upscale(x, 1) is x


def test_text_block_wraps_long_lines_at_separators_within_its_width():
    one = text_block(["#17 · epoch 3"], 200)
    two = text_block(["#17 · epoch 3 · step 120 · label astronaut (1) p(label) 0.912 · pred dog (5) p(pred) 0.953"], 200)
    assert one.shape[1] == two.shape[1] == 200 and two.shape[0] >= one.shape[0] + 2 * line_height()
    assert (one < 100).any()  # ink
    # A word longer than the width is cut, not drawn past the edge.
    assert text_block(["x" * 200], 50).shape == (one.shape[0], 50, 3)


def test_put_text_draws_in_place_and_clips_at_the_edges():
    canvas = np.full((20, 30, 3), 255, np.uint8)
    out = put_text(canvas, [(2, 2, "0.98"), (25, 15, "clipped"), (40, 40, "outside")])
    assert out is canvas and (canvas < 128).any()


def test_hstack_vstack_and_tile_pad_with_white():
    a, b = np.zeros((4, 2, 3), np.uint8), np.zeros((2, 3, 3), np.uint8)
    row = hstack([a, b], gap=1)
    assert row.shape == (4, 6, 3) and (row[:, 2] == 255).all() and (row[2:, 3:] == 255).all()
    grid = tile([a, b, a], ncols=2, gap=1, align="bottom")
    assert grid.shape == (9, 7, 3)
    assert (grid[:2, 4:7] == 255).all() and (grid[2:4, 4:7] == 0).all()  # b sits at the bottom of its cell
    with pytest.raises(ValueError, match="at least one"):
        tile([], 2)
