"""Pointing game, energy pointing game and boxes_to_mask: metrics.md's worked vectors, slow reference
formulas written out here, skipping rules, averaging modes and clear errors."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import pytest
import torch
import torch.nn.functional as F

from pami_lightning.metrics import EnergyPointingGame, PointingGame, boxes_to_mask
from pami_lightning.metrics.functional import energy_pointing_game, pointing_game


def point_map(x: int, y: int, size: tuple[int, int] = (100, 100)) -> torch.Tensor:
    """A [h, w] map whose only maximum is at column x, row y."""
    h = torch.zeros(size)
    h[y, x] = 1.0
    return h


def slow_hit(saliency: torch.Tensor, mask: torch.Tensor, tolerance: float) -> bool | None:
    """TorchRay's rule spelled out: resize, first row-major maximum, any mask pixel at distance < tolerance.
    tolerance 0: the point must be inside the mask. None for an empty mask (skipped)."""
    if not mask.any():
        return None
    sal = F.interpolate(saliency[None, None].float(), size=mask.shape, mode="bilinear", align_corners=False)[0, 0]
    best, py, px = None, 0, 0
    for y in range(sal.shape[0]):
        for x in range(sal.shape[1]):
            if best is None or sal[y, x] > best:
                best, py, px = sal[y, x], y, x
    if tolerance == 0:
        return bool(mask[py, px])
    ys, xs = mask.nonzero(as_tuple=True)
    return bool((((ys - py) ** 2 + (xs - px) ** 2) < tolerance**2).any())


# ------------------------------------------------------------------ worked vectors (metrics.md)

BOX = boxes_to_mask([[50, 50, 60, 60]], (100, 100))  # x, y in 50..59


@pytest.mark.parametrize(
    "x, y, hit",
    [
        (55, 55, True),  # inside
        (36, 55, True),  # distance 14
        (35, 55, False),  # distance exactly 15: strictly less is required
        (40, 40, True),  # 14.14
        (39, 39, False),  # 15.56
        (55, 36, True),  # the same along y
        (55, 35, False),
    ],
)
def test_tolerance_worked_vectors(x, y, hit):
    metric = PointingGame(tolerance=15)
    metric.update(point_map(x, y)[None], BOX[None])
    assert metric.hits.item() == int(hit) and metric.misses.item() == int(not hit)
    assert pointing_game(point_map(x, y)[None], BOX[None]).item() == float(hit)


def test_x_is_the_column_and_y_the_row():
    # A wide, flat box: x in 10..69, y in 40..44. Swapping x and y would flip both results.
    mask = boxes_to_mask([[10, 40, 70, 45]], (100, 100))[None]
    assert pointing_game(point_map(65, 42)[None], mask, tolerance=0).item() == 1.0
    assert pointing_game(point_map(42, 65)[None], mask, tolerance=0).item() == 0.0


def test_averaging_modes_worked_vector():
    # Per-class hits [2, 0, 0], misses [1, 1, 0]: class 2 has no sample.
    heatmaps = torch.stack([point_map(55, 55), point_map(50, 50), point_map(0, 0), point_map(99, 0)])
    masks = BOX.expand(4, 100, 100)
    labels = torch.tensor([0, 0, 0, 1])
    results = {}
    for average in ("macro", "micro", "none"):
        metric = PointingGame(num_classes=3, average=average)
        metric.update(heatmaps, masks, labels)
        results[average] = metric.compute()
        assert metric.hits.tolist() == [2, 0, 0] and metric.misses.tolist() == [1, 1, 0]
        torch.testing.assert_close(results[average], pointing_game(heatmaps, masks, labels=labels, num_classes=3, average=average))
    assert results["macro"].item() == pytest.approx(1 / 3, abs=1e-6)  # classes present: (2/3 + 0) / 2
    assert results["micro"].item() == pytest.approx(0.5, abs=1e-6)  # 2 hits of 4
    torch.testing.assert_close(results["none"], torch.tensor([2 / 3, 0.0, 0.0]))
    assert results["none"].mean().item() == pytest.approx(0.2222, abs=1e-4)  # TorchRay: mean over all classes


# ------------------------------------------------------------------ against the slow reference


@pytest.mark.parametrize("tolerance", [0, 1, 2.5, 4, 15])
def test_matches_slow_reference_with_resize(tolerance):
    g = torch.Generator().manual_seed(int(tolerance * 10))
    heatmaps = torch.rand(12, 7, 9, generator=g)
    masks = torch.zeros(12, 20, 30, dtype=torch.bool)
    for i in range(12):
        y0, x0 = torch.randint(0, 18, (1,), generator=g).item(), torch.randint(0, 27, (1,), generator=g).item()
        masks[i, y0 : y0 + 3, x0 : x0 + 4] = True
    masks[3] = False  # an empty mask is skipped
    expected = [slow_hit(heatmaps[i], masks[i], tolerance) for i in range(12)]
    metric = PointingGame(tolerance=tolerance)
    metric.update(heatmaps, masks)
    assert metric.hits.item() == sum(e is True for e in expected)
    assert metric.misses.item() == sum(e is False for e in expected)
    assert metric.hits.item() + metric.misses.item() == 11


def test_first_maximum_breaks_ties_and_a_flat_map_misses_unless_torchray_rule():
    corner = torch.zeros(1, 10, 10, dtype=torch.bool)
    corner[0, 0, 0] = True
    # TorchRay: a constant map points at (0, 0) -- a hit here. Ours: a flat map is a miss.
    assert pointing_game(torch.ones(1, 10, 10), corner, tolerance=0).item() == 0.0
    assert pointing_game(torch.ones(1, 10, 10), corner, tolerance=0, flat_tol=None).item() == 1.0
    tie = torch.zeros(1, 10, 10)
    tie[0, 2, 7] = tie[0, 5, 1] = 1.0  # not flat: two maxima, row 2 comes first in row-major order
    mask = torch.zeros(1, 10, 10, dtype=torch.bool)
    mask[0, 2, 7] = True
    assert pointing_game(tie, mask, tolerance=0).item() == 1.0
    assert pointing_game(tie, ~mask, tolerance=0).item() == 0.0


def test_masks_of_different_sizes_as_a_list():
    heatmaps = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(0))
    masks = [torch.rand(s, s + 3, generator=torch.Generator().manual_seed(s)) > 0.7 for s in (10, 16, 23)]
    expected = [slow_hit(heatmaps[i], masks[i], 3) for i in range(3)]
    metric = PointingGame(tolerance=3)
    metric.update(heatmaps, masks)
    assert metric.hits.item() == sum(e is True for e in expected)
    assert metric.misses.item() == sum(e is False for e in expected)


@pytest.mark.filterwarnings("ignore:The ``compute`` method")
def test_empty_masks_are_skipped_and_no_sample_gives_nan():
    metric = PointingGame()
    metric.update(torch.rand(2, 5, 5), torch.zeros(2, 5, 5, dtype=torch.bool))
    assert metric.hits.sum() == 0 and metric.misses.sum() == 0
    assert metric.compute().isnan()
    assert PointingGame(average="micro").compute().isnan()


def test_forward_accumulates_and_returns_the_batch_value():
    metric = PointingGame(tolerance=0)
    assert metric(point_map(55, 55)[None], BOX[None]).item() == 1.0
    assert metric(point_map(0, 0)[None], BOX[None]).item() == 0.0
    assert metric.compute().item() == 0.5
    metric.reset()
    assert metric.hits.sum() == 0


def test_pointing_game_errors():
    h, m = torch.rand(2, 5, 5), torch.ones(2, 5, 5, dtype=torch.bool)
    with pytest.raises(ValueError, match="bool"):
        PointingGame().update(h, m.float())
    with pytest.raises(ValueError, match="NaN"):
        PointingGame().update(torch.full((2, 5, 5), float("nan")), m)
    with pytest.raises(ValueError, match="same number of samples"):
        PointingGame().update(h, m[:1])
    with pytest.raises(ValueError, match=r"\[B, h, w\]"):
        PointingGame().update(h[:, None], m)
    with pytest.raises(ValueError, match="masks must be"):
        PointingGame().update(h, m[0])
    with pytest.raises(ValueError, match="needs labels"):
        PointingGame(num_classes=3).update(h, m)
    with pytest.raises(ValueError, match="num_classes is None"):
        PointingGame().update(h, m, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"lie in \[0, 2\]"):
        PointingGame(num_classes=3).update(h, m, torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="integer class indices"):
        PointingGame(num_classes=3).update(h, m, torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="average"):
        PointingGame(average="weighted")
    with pytest.raises(ValueError, match="tolerance"):
        PointingGame(tolerance=-1)
    with pytest.raises(ValueError, match="relative"):
        PointingGame(tolerance="image")
    with pytest.raises(ValueError, match="flat_tol"):
        PointingGame(flat_tol=-1e-3)
    with pytest.raises(ValueError, match="reduction"):
        pointing_game(h, m, reduction="sum")
    # The old positional labels (heatmaps, masks, labels) land on tolerance: a clear error, not a silent swap.
    with pytest.raises(TypeError, match="keyword arguments"):
        pointing_game(h, m, torch.tensor([0, 1]), num_classes=3)


# ------------------------------------------------------------------ boxes_to_mask


def test_boxes_to_mask_voc_one_based_inclusive():
    # VOC (xmin, ymin, xmax, ymax) = (51, 51, 60, 60), 1-based inclusive == mask[50:60, 50:60].
    want = torch.zeros(100, 100, dtype=torch.bool)
    want[50:60, 50:60] = True
    assert torch.equal(boxes_to_mask([[51, 51, 60, 60]], (100, 100), one_based=True), want)
    assert torch.equal(boxes_to_mask(torch.tensor([50, 50, 60, 60]), (100, 100)), want)
    assert torch.equal(boxes_to_mask([[50, 50, 10, 10]], (100, 100), format="xywh"), want)
    assert torch.equal(boxes_to_mask([[51, 51, 10, 10]], (100, 100), format="xywh", one_based=True), want)
    # A one-pixel VOC box (x = y = 1..1) is the top-left pixel.
    single = boxes_to_mask([[1, 1, 1, 1]], (4, 4), one_based=True)
    assert single.sum() == 1 and single[0, 0]


def test_boxes_to_mask_union_clipping_empty_and_float_coordinates():
    mask = boxes_to_mask([[0, 0, 2, 3], [8, 5, 20, 20]], (10, 12))  # second box leaves the image
    want = torch.zeros(10, 12, dtype=torch.bool)
    want[0:3, 0:2] = True
    want[5:, 8:] = True
    assert torch.equal(mask, want)
    assert not boxes_to_mask(torch.zeros(0, 4), (5, 5)).any()
    # Pixel centres: x in [0.6, 2.4) holds centres 1.5 only (0.5 < 0.6, 2.5 >= 2.4).
    assert boxes_to_mask([[0.6, 0, 2.4, 1]], (1, 4)).tolist() == [[False, True, False, False]]


def test_boxes_to_mask_errors():
    with pytest.raises(ValueError, match="x \\(column\\) comes before y"):
        boxes_to_mask([[10, 10, 5, 20]], (30, 30))
    with pytest.raises(ValueError, match=r"\[N, 4\]"):
        boxes_to_mask([[1, 2, 3]], (30, 30))
    with pytest.raises(ValueError, match="format"):
        boxes_to_mask([[1, 2, 3, 4]], (30, 30), format="cxcywh")


# ------------------------------------------------------------------ energy pointing game


def slow_energy(saliency: torch.Tensor, mask: torch.Tensor, baseline: str = "none") -> float | None:
    """The energy share written out: None for an empty mask; 0 for a flat map or one without positive energy."""
    sal = F.interpolate(saliency[None, None].double(), size=mask.shape, mode="bilinear", align_corners=False)[0, 0]
    if not mask.any():
        return None
    if float(sal.max() - sal.min()) <= 1e-6 * max(abs(float(sal.max())), abs(float(sal.min()))):
        return 0.0
    pos = torch.relu(sal - sal.min() if baseline == "min" else sal)
    return float(pos[mask].sum() / pos.sum()) if pos.sum() > 0 else 0.0


@pytest.mark.parametrize("baseline", ["none", "min"])
def test_energy_matches_slow_formula_counts_flat_maps_as_zero_and_skips_empty_masks(baseline):
    g = torch.Generator().manual_seed(3)
    heatmaps = torch.randn(6, 6, 8, generator=g)
    heatmaps[2] = -1.0  # flat (and no positive energy): counted, 0
    heatmaps[5] = -heatmaps[5].abs() - 0.1  # no positive energy under "none": 0; not flat
    masks = torch.rand(6, 12, 16, generator=g) > 0.6
    masks[4] = False  # empty mask: skipped
    values = [slow_energy(heatmaps[i], masks[i], baseline) for i in range(6)]
    kept = [v for v in values if v is not None]
    assert len(kept) == 5 and values[2] == 0.0 and (values[5] == 0.0) == (baseline == "none")
    metric = EnergyPointingGame(baseline=baseline)
    metric.update(heatmaps[:3], masks[:3])
    metric.update(heatmaps[3:], masks[3:])
    assert metric.count.item() == 5
    assert metric.compute().item() == pytest.approx(sum(kept) / 5, abs=1e-6)
    assert energy_pointing_game(heatmaps, masks, baseline=baseline).item() == pytest.approx(sum(kept) / 5, abs=1e-6)
    per_sample = energy_pointing_game(heatmaps, masks, baseline=baseline, reduction="none")
    assert per_sample[4].isnan() and per_sample[2] == 0
    torch.testing.assert_close(per_sample[~per_sample.isnan()].double(), torch.tensor(kept, dtype=torch.float64), atol=1e-6, rtol=0)


@pytest.mark.filterwarnings("ignore:The ``compute`` method")
def test_energy_edge_cases_and_errors():
    full = torch.ones(1, 4, 4, dtype=torch.bool)
    assert EnergyPointingGame()(torch.rand(1, 4, 4) + 0.1, full).item() == pytest.approx(1.0)
    assert EnergyPointingGame().compute().isnan()
    with pytest.raises(ValueError, match="bool"):
        EnergyPointingGame().update(torch.rand(1, 4, 4), full.long())
    with pytest.raises(ValueError, match="NaN or inf"):
        EnergyPointingGame().update(torch.tensor([[[float("inf")]]]), full[:, :1, :1])
    with pytest.raises(ValueError, match="baseline"):
        EnergyPointingGame(baseline="blur")
    with pytest.raises(ValueError, match="reduction"):
        energy_pointing_game(torch.rand(1, 4, 4), full, reduction="sum")


# ------------------------------------------------------------------ torchmetrics conventions


@pytest.mark.parametrize("metric", [PointingGame(), PointingGame(num_classes=3, average="none"), EnergyPointingGame()])
def test_flags_and_plot(metric):
    assert metric.full_state_update is False and metric.is_differentiable is False and metric.higher_is_better is True
    assert (metric.plot_lower_bound, metric.plot_upper_bound) == (0.0, 1.0)
    labels = {"labels": torch.tensor([0, 1, 2, 1])} if getattr(metric, "num_classes", None) else {}
    metric.update(torch.rand(4, 6, 6), torch.rand(4, 6, 6) > 0.5, **labels)
    fig, ax = metric.plot()
    assert fig is not None and ax is not None
    fig, ax = metric.plot([metric.compute(), metric.compute()])
    assert fig is not None
    matplotlib.pyplot.close("all")


def test_update_after_a_reset_under_inference_mode():
    # trainer.validate() then fit: states reset in inference mode, updated outside it.
    metrics = [PointingGame(tolerance=0), EnergyPointingGame()]
    with torch.inference_mode():
        for m in metrics:
            m.reset()
    mask = torch.zeros(1, 8, 8, dtype=torch.bool)
    mask[0, 2:4, 2:4] = True
    heat = torch.zeros(1, 8, 8)
    heat[0, 3, 3] = 1.0
    with torch.no_grad():
        for m in metrics:
            m.update(heat, mask)
    assert [m.compute().item() for m in metrics] == [1.0, 1.0]
