"""Scores that cannot flatter a map that knows nothing (flat maps miss, a tolerance that fits the image,
chance baselines, the baseline-subtracted energy), per-sample values equal to the metric classes',
and one MetricCollection call updating all four metrics."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MetricCollection

from pami_lightning import PAMI, SlidingWindow
from pami_lightning.metrics import Deletion, EnergyPointingGame, Insertion, PointingGame
from pami_lightning.metrics.functional import (
    RELATIVE_TOLERANCE,
    curve_auc,
    deletion,
    energy_pointing_game,
    insertion,
    insertion_curves,
    pointing_game,
    pointing_game_baselines,
)

from helpers.images import random_images
from helpers.models import make_cnn


def random_boxes(n: int, size: int, lo: int, hi: int, seed: int) -> torch.Tensor:
    """Masks [n, size, size] of one square object each, side in [lo, hi], anywhere in the image."""
    g = torch.Generator().manual_seed(seed)
    masks = torch.zeros(n, size, size, dtype=torch.bool)
    for i in range(n):
        s = int(torch.randint(lo, hi + 1, (1,), generator=g))
        y, x = torch.randint(0, size - s + 1, (2,), generator=g).tolist()
        masks[i, y : y + s, x : x + s] = True
    return masks


class Blind(nn.Module):
    """A classifier that ignores its input: the same logits for every image."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.randn(num_classes, generator=torch.Generator().manual_seed(0)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(x.shape[0], -1) + 0 * x.flatten(1)[:, :1]


# ------------------------------------------------------------------ flat maps miss


def test_a_map_that_knows_nothing_scores_zero_on_random_images_and_labels():
    images = random_images(16, 32, seed=1)
    labels = torch.randint(0, 10, (16,), generator=torch.Generator().manual_seed(2))
    masks = random_boxes(16, 32, 8, 16, seed=3)
    maps = PAMI(Blind(), partition=SlidingWindow(radius=8, stride=4)).explain(images, target=labels)
    assert torch.equal(maps.amax(dim=(1, 2)), maps.amin(dim=(1, 2)))  # the explanation of a blind model is flat
    metric = PointingGame(num_classes=10, tolerance=15)
    metric.update(maps, masks, labels)
    assert metric.compute().item() == 0.0
    assert pointing_game(maps, masks, 15, labels=labels, num_classes=10, average="micro").item() == 0.0
    assert pointing_game(maps, masks, reduction="none").tolist() == [0.0] * 16  # counted, as misses
    # TorchRay's rule (flat_tol=None): the same maps "point" at (0, 0), within 15 px of most objects.
    assert pointing_game(maps, masks, 15, flat_tol=None).item() > 0.4
    assert energy_pointing_game(maps, masks).item() == 0.0 and energy_pointing_game(maps, masks, baseline="min").item() == 0.0


@pytest.mark.parametrize("value", [0.0, 1.0, -3.0, 1e-30, 250.0])
def test_constant_and_near_constant_maps_are_misses_and_a_real_maximum_is_not(value):
    g = torch.Generator().manual_seed(0)
    masks = random_boxes(8, 20, 3, 8, seed=4)
    masks[:, 0, 0] = True  # TorchRay's (0, 0) point would hit every one
    constant = torch.full((8, 20, 20), value)
    noise = torch.rand(8, 20, 20, generator=g)
    near = constant * (1 + 1e-7 * noise)  # within flat_tol=1e-6 of the magnitude
    assert pointing_game(constant, masks, 0, flat_tol=None).item() == 1.0  # TorchRay
    for maps in (constant, near):
        assert pointing_game(maps, masks, 0).item() == 0.0
        assert pointing_game(maps, masks, 15, reduction="none").tolist() == [0.0] * 8
    # A range of 1e-5 of the magnitude is a map with a maximum (flat_tol=1e-6), and flat_tol can say otherwise.
    bump = torch.full((8, 20, 20), 1.0)
    bump[:, 0, 0] = 1 + 1e-5
    assert pointing_game(bump, masks, 0).item() == 1.0
    assert pointing_game(bump, masks, 0, flat_tol=1e-4).item() == 0.0
    # The rule is relative, so scale-free: a map of tiny values with a clear maximum is no flat map.
    assert pointing_game((bump - 1) * 1e-30, masks, 0).item() == 1.0


# ------------------------------------------------------------------ a tolerance that fits the image


def test_a_centred_blob_no_longer_scores_high_on_64px_with_the_relative_tolerance():
    masks = random_boxes(200, 64, 16, 32, seed=0)
    yy, xx = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    blob = torch.exp(-((yy - 32) ** 2 + (xx - 32) ** 2) / (2 * 8.0**2)).expand(200, 64, 64)  # knows nothing
    pixels, relative = pointing_game(blob, masks, 15).item(), pointing_game(blob, masks, "relative").item()
    assert pixels > 0.9  # TorchRay's 15 px on a 64 px image: most objects are within reach of the centre
    assert relative < 0.7  # 15/224 * 64 = 4.3 px
    metric = PointingGame(tolerance="relative")
    metric.update(blob, masks)
    assert metric.compute().item() == relative
    # The blob is the "center" baseline: it is exactly chance.
    assert pointing_game_baselines(masks, "relative")["center"].nanmean().item() == pytest.approx(relative, abs=1e-6)


def test_relative_tolerance_is_15px_at_224_and_scales_per_mask():
    assert RELATIVE_TOLERANCE == 15 / 224
    g = torch.Generator().manual_seed(1)
    heatmaps = torch.rand(6, 14, 14, generator=g)
    masks = torch.rand(6, 224, 224, generator=g) > 0.999
    assert torch.equal(pointing_game(heatmaps, masks, "relative", reduction="none"), pointing_game(heatmaps, masks, 15, reduction="none"))
    # A list of masks of different sizes: each gets 15/224 of its own smaller side.
    sizes = [(64, 96), (32, 32), (224, 100)]
    masks_list = [torch.rand(h, w, generator=g) > 0.99 for h, w in sizes]
    got = pointing_game(heatmaps[:3], masks_list, "relative", reduction="none")
    want = torch.stack([pointing_game(heatmaps[i : i + 1], masks_list[i][None], 15 * min(sizes[i]) / 224, reduction="none")[0] for i in range(3)])
    assert torch.equal(got, want)


# ------------------------------------------------------------------ Table 4's baselines


def slow_point_hit(mask: torch.Tensor, y: float, x: float, tolerance: float) -> float:
    if not mask.any():
        return float("nan")
    if tolerance == 0:
        return float(mask[int(y), int(x)])
    ys, xs = mask.nonzero(as_tuple=True)
    return float((((ys.double() - y) ** 2 + (xs.double() - x) ** 2) < tolerance**2).any())


@pytest.mark.parametrize("tolerance", [0, 3, 15, "relative"])
def test_center_and_random_baselines_against_a_slow_loop(tolerance):
    masks = random_boxes(12, 31, 2, 9, seed=5)  # odd size: the centre (15.5, 15.5) is no pixel centre
    masks[3] = False
    tol = 15 * 31 / 224 if tolerance == "relative" else tolerance
    got = pointing_game_baselines(masks, tolerance, generator=torch.Generator().manual_seed(7))
    assert got["center"][3].isnan() and got["random"][3].isnan()
    want_center = torch.tensor([slow_point_hit(m, 31 / 2, 31 / 2, tol) for m in masks])
    torch.testing.assert_close(got["center"], want_center, equal_nan=True)
    g = torch.Generator().manual_seed(7)
    points = [(int(torch.randint(31, (1,), generator=g)), int(torch.randint(31, (1,), generator=g))) for _ in range(12)]
    want_random = torch.tensor([slow_point_hit(m, y, x, tol) for m, (y, x) in zip(masks, points, strict=True)])
    torch.testing.assert_close(got["random"], want_random, equal_nan=True)
    # Seeded: the same generator state gives the same draws; masks as a list give the same values.
    again = pointing_game_baselines(list(masks), tolerance, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(again["random"], got["random"], equal_nan=True)


def test_the_random_baseline_is_the_share_of_the_image_within_reach_of_the_object():
    mask = torch.zeros(1, 40, 40, dtype=torch.bool)
    mask[0, 10:20, 10:20] = True
    reach = (F.max_pool2d(mask[None].float(), 2 * 3 + 1, stride=1, padding=3)[0] > 0).float().mean()  # Chebyshev ball >= Euclid
    near = (F.conv2d(mask[None].float(), torch.ones(1, 1, 5, 5), padding=2)[0] > 0).float().mean()  # inside the disc of 3
    hits = pointing_game_baselines(mask.expand(4000, 40, 40), 3, generator=torch.Generator().manual_seed(0))["random"]
    assert near - 0.02 < hits.mean() < reach + 0.02


# ------------------------------------------------------------------ energy: the issue's example


def test_energy_min_baseline_on_the_issues_perfect_map():
    perfect = torch.full((1, 64, 64), 0.9)
    perfect[0, 16:32, 16:32] = 1.0  # 1.0 on the box, 0.9 everywhere else
    box = torch.zeros(1, 64, 64, dtype=torch.bool)
    box[0, 16:32, 16:32] = True  # area 0.0625
    assert energy_pointing_game(perfect, box).item() == pytest.approx(256 / (256 + 0.9 * 3840), abs=1e-6)  # 0.069
    assert energy_pointing_game(perfect, box, baseline="min").item() == 1.0
    metric = EnergyPointingGame(baseline="min")
    metric.update(perfect, box)
    assert metric.compute().item() == 1.0
    # A flat map on a large object would score its area (0.5) under "none": it scores 0.
    half = torch.zeros(1, 64, 64, dtype=torch.bool)
    half[0, :32] = True
    for baseline in ("none", "min"):
        assert energy_pointing_game(torch.full((1, 64, 64), 0.7), half, baseline=baseline).item() == 0.0


# ------------------------------------------------------------------ per-sample values == the metric classes


def test_per_sample_values_reduce_to_the_metric_classes_results():
    g = torch.Generator().manual_seed(11)
    heatmaps = torch.randn(9, 8, 8, generator=g)
    heatmaps[4] = 2.0  # flat
    masks = random_boxes(9, 16, 3, 9, seed=6)
    masks[7] = False  # empty
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2])
    per = pointing_game(heatmaps, masks, 4, reduction="none")
    assert per[7].isnan() and per[4] == 0.0 and set(per[~per.isnan()].tolist()) <= {0.0, 1.0}
    micro = PointingGame(num_classes=3, tolerance=4, average="micro")
    per_class = PointingGame(num_classes=3, tolerance=4, average="none")
    for metric in (micro, per_class):
        metric.update(heatmaps[:5], masks[:5], labels[:5])
        metric.update(heatmaps[5:], masks[5:], labels[5:])
    assert torch.equal(per.nanmean(), micro.compute())
    torch.testing.assert_close(torch.stack([per[labels == k].nanmean() for k in range(3)]), per_class.compute())
    for baseline in ("none", "min"):
        energy = energy_pointing_game(heatmaps, masks, baseline=baseline, reduction="none")
        metric = EnergyPointingGame(baseline=baseline)
        metric.update(heatmaps, masks)
        assert energy.double().nansum().div((~energy.isnan()).sum()).float() == metric.compute()

    model = make_cnn()
    images, maps = random_images(5, 12, seed=3), torch.rand(5, 12, 12, generator=g)
    for fn, cls in ((insertion, Insertion), (deletion, Deletion)):
        aucs = fn(model, images, maps, step=16, reduction="none")
        metric = cls(model, step=16)
        metric.update(maps[:2], images=images[:2])
        metric.update(maps[2:], images=images[2:])
        assert aucs.shape == (5,) and aucs.double().mean().float() == metric.compute() == fn(model, images, maps, step=16)
    torch.testing.assert_close(insertion(model, images, maps, step=16, reduction="none"), curve_auc(insertion_curves(model, images, maps, step=16)))


# ------------------------------------------------------------------ one MetricCollection, one call


def _four(model: nn.Module, **kwargs) -> dict[str, object]:
    return {
        "pointing_game": PointingGame(num_classes=5, tolerance="relative", **kwargs),
        "energy_pointing_game": EnergyPointingGame(baseline="min", **kwargs),
        "insertion": Insertion(model, step=24, **kwargs),
        "deletion": Deletion(model, step=24, **kwargs),
    }


def test_a_metric_collection_holds_all_four_and_updates_them_with_one_call():
    model = make_cnn()
    images, maps = random_images(6, 16, seed=2), torch.rand(6, 16, 16, generator=torch.Generator().manual_seed(3))
    masks, labels = random_boxes(6, 16, 3, 8, seed=9), torch.tensor([0, 1, 2, 3, 4, 0])
    collection = MetricCollection(_four(model), prefix="pami/")
    collection.update(maps[:4], masks[:4], images=images[:4], labels=labels[:4], target=labels[:4])
    batch = collection(maps[4:], masks[4:], images=images[4:], labels=labels[4:], target=labels[4:])  # forward
    assert set(batch) == {"pami/pointing_game", "pami/energy_pointing_game", "pami/insertion", "pami/deletion"}
    alone = _four(model)
    alone["pointing_game"].update(maps, masks, labels=labels)
    alone["energy_pointing_game"].update(maps, masks)
    alone["insertion"].update(maps, images=images, target=labels)
    alone["deletion"].update(maps, images=images, target=labels)
    results = collection.compute()
    for name, metric in alone.items():
        assert torch.equal(results[f"pami/{name}"], metric.compute()), name


def test_insertion_and_deletion_stay_apart_in_a_collection_when_their_first_values_agree():
    # A zero-initialised head ignores the input: insertion and deletion curves are equal at first,
    # and torchmetrics' compute groups would merge metrics with equal state names and values.
    model = make_cnn()
    weight = model[-1].weight.detach().clone()
    with torch.no_grad():
        model[-1].weight.zero_()
    images, maps = random_images(4, 12, seed=5), torch.rand(4, 12, 12, generator=torch.Generator().manual_seed(6))
    collection = MetricCollection({"insertion": Insertion(model, step=24), "deletion": Deletion(model, step=24)})
    alone = {"insertion": Insertion(model, step=24), "deletion": Deletion(model, step=24)}
    for _ in range(2):
        collection.update(maps, images=images)
        for metric in alone.values():
            metric.update(maps, images=images)
        if _ == 0:
            first = collection.compute()
            assert torch.equal(first["insertion"], first["deletion"])
            with torch.no_grad():
                model[-1].weight.copy_(weight)  # training moved on
    assert len(collection.compute_groups) == 2
    results = collection.compute()
    assert results["insertion"] != results["deletion"]
    for name, metric in alone.items():
        assert torch.equal(results[name], metric.compute()), name
