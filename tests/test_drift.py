"""drift: rank correlation of maps and the history the callback keeps between validations (no model, no trainer).

Expected values come from scipy, from hand-computed ranks or from plain numpy block means, not from the
module's own formulas.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
import scipy.stats
import torch

from pami_lightning.callbacks.drift import MAX_COLUMNS, THUMBNAIL_SIZE, DriftHistory, _thumbnail, rank_correlation


def _rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


def _spearman(previous: torch.Tensor, current: torch.Tensor) -> np.ndarray:
    """scipy's Spearman correlation (average ranks for ties) of each pair of flattened maps."""
    return np.array([scipy.stats.spearmanr(p.flatten().double().numpy(), c.flatten().double().numpy()).statistic for p, c in zip(previous, current, strict=True)])


def _peaks(positions: list[int], size: int = 8) -> torch.Tensor:
    """``[B, size, size]`` maps that are 0 except a 1 at the flat pixel ``positions[b]``: each thumbnail is recognisable."""
    maps = torch.zeros(len(positions), size * size)
    maps[torch.arange(len(positions)), torch.tensor(positions)] = 1.0
    return maps.reshape(len(positions), size, size)


def _reference_thumbnail(maps: torch.Tensor, factor: int) -> np.ndarray:
    """Min-max normalise each map, average ``factor x factor`` blocks, quantise to 256 levels: floats ``[B, h, w]`` (not rounded)."""
    m = maps.double().numpy()
    lo, hi = m.min(axis=(1, 2), keepdims=True), m.max(axis=(1, 2), keepdims=True)
    norm = (m - lo) / (hi - lo)
    b, h, w = norm.shape
    return norm.reshape(b, h // factor, factor, w // factor, factor).mean(axis=(2, 4)) * 255


def _assert_quantised(got: np.ndarray, exact: np.ndarray) -> None:
    """``got`` (uint8 levels) is ``exact`` rounded; pixels within 1e-3 of a .5 boundary may go either way by one level."""
    assert got.shape == exact.shape
    diff = np.abs(got.astype(np.float64) - np.round(exact))
    assert diff.max() <= 1
    ambiguous = np.abs(exact - np.floor(exact) - 0.5) < 1e-3
    assert np.all(diff[~ambiguous] == 0)


def _rows(indices: list[int], validation: int) -> list[dict[str, Any]]:
    """Table rows shaped like the callback's: ints, floats and None."""
    return [{"sample": i, "validation": validation, "epoch": validation - 1, "label": None, "p_target": 0.5 + 0.01 * i} for i in indices]


# ------------------------------------------------------------------ rank_correlation


def test_rank_correlation_matches_scipy_on_random_maps():
    previous, current = _rand(4, 12, 10, seed=1), _rand(4, 12, 10, seed=2)
    current[1] = previous[1] + 0.3 * current[1]  # one clearly correlated pair besides the near-zero ones
    got = rank_correlation(previous, current)
    assert got.shape == (4,)
    np.testing.assert_allclose(got.numpy(), _spearman(previous, current), atol=1e-5)
    assert got[1] > 0.5


def test_rank_correlation_matches_scipy_with_ties_average_ranks():
    g = torch.Generator().manual_seed(3)
    previous = torch.randint(0, 4, (3, 9, 7), generator=g).float()  # 4 levels over 63 pixels: many ties
    current = torch.randint(0, 3, (3, 9, 7), generator=g).float() + 0.5 * previous
    np.testing.assert_allclose(rank_correlation(previous, current).numpy(), _spearman(previous, current), atol=1e-5)


def test_rank_correlation_tie_by_hand():
    # ranks [1, 2.5, 2.5, 4] vs [1, 2, 3, 4]: covariance 4.5, variances 4.5 and 5 -> 4.5 / sqrt(22.5) = sqrt(0.9)
    previous = torch.tensor([[[1.0, 2.0], [2.0, 3.0]]])
    current = torch.tensor([[[10.0, 20.0], [30.0, 40.0]]])
    assert rank_correlation(previous, current).item() == pytest.approx(0.9**0.5, abs=1e-6)


def test_rank_correlation_is_one_for_identical_and_monotone_maps_and_minus_one_for_reversed():
    maps = _rand(3, 8, 8, seed=4)
    np.testing.assert_allclose(rank_correlation(maps, maps).numpy(), 1.0, atol=1e-6)
    # A nonlinear increasing transform keeps the ranks (a Pearson correlation would fall below 1).
    np.testing.assert_allclose(rank_correlation(maps, torch.exp(5 * maps) - 3).numpy(), 1.0, atol=1e-6)
    # Reversed order: the largest pixel becomes the smallest.
    np.testing.assert_allclose(rank_correlation(maps, 1 - maps**2).numpy(), -1.0, atol=1e-6)


def test_rank_correlation_of_a_constant_map_is_zero():
    maps = _rand(2, 6, 6, seed=5)
    constant = torch.full((2, 6, 6), 0.7)
    for got in (rank_correlation(constant, maps), rank_correlation(maps, constant), rank_correlation(constant, constant)):
        assert torch.isfinite(got).all()
        np.testing.assert_array_equal(got.numpy(), [0.0, 0.0])
    # Only the constant sample is 0: the other one is unaffected.
    mixed = torch.stack([maps[0], constant[1]])
    got = rank_correlation(maps, mixed)
    assert got[0].item() == pytest.approx(1.0, abs=1e-6)
    assert got[1].item() == 0.0


def test_rank_correlation_single_map_and_other_dtypes():
    previous, current = _rand(1, 5, 7, seed=6), _rand(1, 5, 7, seed=7)
    expected = _spearman(previous, current)
    got = rank_correlation(previous.double(), current.requires_grad_())
    assert got.shape == (1,) and got.dtype == torch.float32 and not got.requires_grad
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-5)
    ints = torch.arange(12).reshape(1, 3, 4)
    assert rank_correlation(ints, ints.flip(-1).flip(-2)).item() == pytest.approx(-1.0, abs=1e-6)


@pytest.mark.parametrize(("a", "b"), [((2, 3, 4), (2, 4, 3)), ((2, 4, 4), (3, 4, 4))])
def test_rank_correlation_shape_mismatch_names_both_shapes(a: tuple[int, ...], b: tuple[int, ...]):
    with pytest.raises(ValueError, match="same shape") as info:
        rank_correlation(torch.rand(*a), torch.rand(*b))
    assert str(list(a)) in str(info.value) and str(list(b)) in str(info.value)


# ------------------------------------------------------------------ _thumbnail


@pytest.mark.parametrize("factor", [2, 3])
def test_thumbnail_of_a_large_map_is_min_max_normalised_block_means(factor: int):
    side = THUMBNAIL_SIZE * factor  # 128 -> 64 by 2x2 means, 192 -> 64 by 3x3 means (a bilinear shrink would differ)
    maps = _rand(2, side, side, seed=8) * torch.tensor([3.0, 0.01]).view(2, 1, 1) + torch.tensor([-1.0, 5.0]).view(2, 1, 1)
    thumb = _thumbnail(maps)
    assert thumb.dtype == torch.uint8 and thumb.shape == (2, THUMBNAIL_SIZE, THUMBNAIL_SIZE)
    _assert_quantised(thumb.numpy(), _reference_thumbnail(maps, factor))


def test_thumbnail_at_a_fractional_ratio_averages_each_covering_window():
    # 96 -> 64: output pixel i averages input rows/columns floor(1.5 i) .. ceil(1.5 (i + 1)) - 1 (torch's "area" windows).
    maps = _rand(1, 96, 96, seed=21)
    m = maps[0].double().numpy()
    norm = (m - m.min()) / (m.max() - m.min())
    windows = [(int(np.floor(i * 1.5)), int(np.ceil((i + 1) * 1.5))) for i in range(64)]
    exact = np.array([[norm[r0:r1, c0:c1].mean() for c0, c1 in windows] for r0, r1 in windows]) * 255
    thumb = _thumbnail(maps)
    assert thumb.shape == (1, 64, 64)
    _assert_quantised(thumb[0].numpy(), exact)


def test_thumbnail_keeps_the_aspect_ratio_of_non_square_maps():
    maps = _rand(1, 32, 128, seed=9)
    thumb = _thumbnail(maps)
    assert thumb.shape == (1, 16, 64)
    _assert_quantised(thumb.numpy(), _reference_thumbnail(maps, 2))
    assert _thumbnail(_rand(1, 256, 64, seed=10)).shape == (1, 64, 16)
    # A very thin map still keeps one pixel across.
    assert _thumbnail(_rand(1, 3, 1000, seed=11)).shape == (1, 1, 64)
    assert _thumbnail(_rand(1, 1000, 3, seed=11)).shape == (1, 64, 1)


def test_thumbnail_does_not_upscale_small_maps():
    for size in [(16, 16), (5, 40), (THUMBNAIL_SIZE, THUMBNAIL_SIZE)]:
        maps = _rand(2, *size, seed=12)
        thumb = _thumbnail(maps)
        assert thumb.shape == (2, *size)
        _assert_quantised(thumb.numpy(), _reference_thumbnail(maps, 1))
        assert thumb.amin(dim=(1, 2)).tolist() == [0, 0] and thumb.amax(dim=(1, 2)).tolist() == [255, 255]


def test_thumbnail_of_a_constant_map_is_black():
    assert _thumbnail(torch.full((1, 10, 10), 3.0)).eq(0).all()


# ------------------------------------------------------------------ DriftHistory: stability and push


def test_stability_is_none_first_then_rank_correlation_with_the_previous_push():
    history = DriftHistory()
    indices = [4, 9, 2]
    first, second, third = _rand(3, 10, 10, seed=13), _rand(3, 10, 10, seed=14), _rand(3, 10, 10, seed=15)
    assert not history.matches(indices, first)
    assert history.stability(indices, first) is None
    history.push(indices, first, 1, _rows(indices, 1))
    assert history.matches(indices, second)
    got = history.stability(indices, second)
    assert got is not None and got.shape == (3,)
    np.testing.assert_allclose(got.numpy(), _spearman(first, second), atol=1e-5)
    # Asking does not change what is remembered.
    np.testing.assert_allclose(history.stability(indices, second).numpy(), got.numpy())
    history.push(indices, second, 2, _rows(indices, 2))
    np.testing.assert_allclose(history.stability(indices, third).numpy(), _spearman(second, third), atol=1e-5)
    np.testing.assert_allclose(history.stability(indices, second).numpy(), 1.0, atol=1e-6)


def test_stability_is_none_for_other_samples_or_another_map_size():
    history = DriftHistory()
    history.push([0, 1], _rand(2, 8, 8), 1, [])
    assert history.stability([0, 1], _rand(2, 8, 8, seed=1)) is not None
    assert history.stability([0, 2], _rand(2, 8, 8, seed=1)) is None
    assert history.stability([0, 1], _rand(2, 8, 9, seed=1)) is None
    assert history.stability([0, 1, 2], _rand(3, 8, 8, seed=1)) is None


def test_push_stores_a_detached_cpu_float_copy():
    history = DriftHistory()
    maps = _rand(2, 6, 6, seed=16)
    kept = maps.clone()
    history.push([0, 1], maps, 1, [])
    maps.mul_(-1).add_(7)  # the caller reuses its tensor
    assert history.last_maps is not None
    torch.testing.assert_close(history.last_maps, kept)
    assert history.last_maps.device.type == "cpu" and history.last_maps.dtype == torch.float32

    grad = _rand(2, 6, 6, seed=17).double().requires_grad_()
    history.push([0, 1], grad * 2, 2, [])
    assert not history.last_maps.requires_grad and history.last_maps.grad_fn is None
    assert history.last_maps.dtype == torch.float32
    torch.testing.assert_close(history.last_maps, (grad.detach() * 2).float())
    ints = torch.arange(72).reshape(2, 6, 6)
    history.push([0, 1], ints, 3, [])
    assert history.last_maps.dtype == torch.float32 and history.last_maps.tolist() == ints.float().tolist()


def test_other_samples_or_map_size_restart_the_timeline_but_rows_accumulate():
    history = DriftHistory()
    history.push([0, 1], _peaks([0, 1]), 1, _rows([0, 1], 1))
    history.push([0, 1], _peaks([2, 3]), 2, _rows([0, 1], 2))
    assert history.columns == [1, 2] and history.thumbnails is not None and history.thumbnails.shape == (2, 2, 8, 8)

    history.push([5, 6], _peaks([4, 5]), 3, _rows([5, 6], 3))  # other samples
    assert history.columns == [3] and history.thumbnails.shape == (2, 1, 8, 8)
    assert history.indices == [5, 6]
    assert history.thumbnails[:, 0].flatten(1).argmax(1).tolist() == [4, 5]

    history.push([5, 6], _peaks([6, 7], size=4), 4, _rows([5, 6], 4))  # another map size
    assert history.columns == [4] and history.thumbnails.shape == (2, 1, 4, 4)

    history.push([5, 6], _peaks([8, 9], size=4), 5, _rows([5, 6], 5))
    assert history.columns == [4, 5] and history.thumbnails.shape == (2, 2, 4, 4)
    assert [(r["sample"], r["validation"]) for r in history.rows] == [(s, v) for v, samples in [(1, [0, 1]), (2, [0, 1]), (3, [5, 6]), (4, [5, 6]), (5, [5, 6])] for s in samples]


def test_push_keeps_at_most_max_columns_newest_last():
    history = DriftHistory()
    pushes = MAX_COLUMNS + 3
    assert pushes <= 64  # one distinct peak position per push on an 8x8 map
    for k in range(pushes):
        history.push([0], _peaks([k]), 10 * (k + 1), [])
    assert history.columns == [10 * (k + 1) for k in range(pushes)][-MAX_COLUMNS:]
    assert history.thumbnails is not None and history.thumbnails.shape == (1, MAX_COLUMNS, 8, 8)
    assert history.thumbnails.dtype == torch.uint8
    # The three oldest are gone; columns are oldest first.
    assert history.thumbnails[0].flatten(1).argmax(1).tolist() == list(range(3, pushes))


# ------------------------------------------------------------------ DriftHistory: timeline


def test_timeline_is_oldest_first_and_ends_with_the_given_maps():
    history = DriftHistory()
    indices = [3, 1]
    assert history.timeline(indices, _peaks([7, 8])).shape == (2, 1, 8, 8)  # nothing pushed: the given maps alone
    for k in range(3):
        history.push(indices, _peaks([k, 10 + k]), k + 1, [])
    current = _peaks([20, 30])
    line = history.timeline(indices, current)
    assert line.shape == (2, 4, 8, 8) and line.dtype == torch.float32
    assert line.min() >= 0 and line.max() <= 1
    assert line.flatten(2).argmax(2).tolist() == [[0, 1, 2, 20], [10, 11, 12, 30]]
    # The peaks are exactly 1 and the rest exactly 0 (min-max normalised).
    torch.testing.assert_close(line[:, -1], current)
    # Looking does not push.
    assert history.columns == [1, 2, 3] and history.thumbnails.shape == (2, 3, 8, 8)


def test_timeline_last_column_is_the_block_mean_thumbnail_of_the_given_maps():
    history = DriftHistory()
    indices = [0, 1]
    history.push(indices, _rand(2, 128, 128, seed=18), 1, [])
    current = 4 * _rand(2, 128, 128, seed=19) - 2
    line = history.timeline(indices, current)
    assert line.shape == (2, 2, 64, 64)
    levels = line[:, -1].numpy() * 255
    np.testing.assert_allclose(levels, np.round(levels), atol=1e-4)  # quantised to uint8 levels
    _assert_quantised(np.round(levels).astype(np.uint8), _reference_thumbnail(current, 2))


def test_timeline_for_other_samples_or_size_shows_the_given_maps_alone():
    history = DriftHistory()
    history.push([0, 1], _peaks([0, 1]), 1, [])
    assert history.timeline([0, 2], _peaks([5, 6])).shape == (2, 1, 8, 8)
    assert history.timeline([0, 1], _peaks([5, 6], size=4)).shape == (2, 1, 4, 4)
    assert history.timeline([0, 1], _peaks([5, 6])).shape == (2, 2, 8, 8)


def test_timeline_keeps_at_most_max_columns_including_the_given_maps():
    history = DriftHistory()
    for k in range(MAX_COLUMNS):
        history.push([0], _peaks([k]), k + 1, [])
    line = history.timeline([0], _peaks([63]))
    assert line.shape == (1, MAX_COLUMNS, 8, 8)
    assert line[0].flatten(1).argmax(1).tolist() == [*range(1, MAX_COLUMNS), 63]


# ------------------------------------------------------------------ DriftHistory: state


def _filled_history() -> tuple[DriftHistory, list[int]]:
    history = DriftHistory()
    indices = [7, 2, 5]
    for k in range(4):
        history.push(indices, _rand(3, 20, 30, seed=20 + k), k + 2, _rows(indices, k + 2))
    return history, indices


def _assert_same_history(a: DriftHistory, b: DriftHistory, indices: list[int]) -> None:
    nxt = _rand(3, 20, 30, seed=99)
    sa, sb = a.stability(indices, nxt), b.stability(indices, nxt)
    assert sa is not None and sb is not None
    torch.testing.assert_close(sa, sb)
    torch.testing.assert_close(a.timeline(indices, nxt), b.timeline(indices, nxt))
    assert a.columns == b.columns and a.rows == b.rows and a.indices == b.indices


def test_state_dict_round_trip_into_a_fresh_history():
    history, indices = _filled_history()
    fresh = DriftHistory()
    fresh.load_state_dict(history.state_dict())
    _assert_same_history(history, fresh, indices)
    assert fresh.timeline(indices, _rand(3, 20, 30, seed=99)).shape == (3, 5, 20, 30)
    # The restored history goes on like the original.
    more = _rand(3, 20, 30, seed=50)
    history.push(indices, more, 6, _rows(indices, 6))
    fresh.push(indices, more, 6, _rows(indices, 6))
    _assert_same_history(history, fresh, indices)
    assert len(history.rows) == len(fresh.rows) == 15


def test_state_dict_lists_are_copies():
    history, indices = _filled_history()
    state = history.state_dict()
    state["indices"].append(0)
    state["columns"].clear()
    state["rows"][0]["sample"] = -1
    assert history.indices == indices and history.columns == [2, 3, 4, 5] and history.rows[0]["sample"] == 7


@pytest.mark.parametrize("filled", [True, False])
def test_state_survives_torch_save_and_load_weights_only(filled: bool):
    history, indices = _filled_history() if filled else (DriftHistory(), [7, 2, 5])
    buffer = io.BytesIO()
    torch.save(history.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    fresh = DriftHistory()
    fresh.load_state_dict(state)
    if filled:
        _assert_same_history(history, fresh, indices)
    else:
        assert fresh.last_maps is None and fresh.thumbnails is None and fresh.columns == [] and fresh.rows == []
        assert fresh.stability(indices, _rand(3, 20, 30)) is None
