"""Size-aware sliding windows (SlidingWindow.relative, max_parts) and pooled multi-scale partitions."""

from __future__ import annotations

import itertools
import math
import warnings

import pytest
import torch

from pami_lightning import PAMI, Blur, Constant, SlidingWindow, Superpixels, TokenWindows, Words
from pami_lightning.partitions import Pooled

from helpers.images import random_images
from helpers.models import make_cnn

# ---------------------------------------------------------------------------------------- relative windows


def test_relative_at_224_is_the_papers_windows():
    sw = SlidingWindow.relative()
    assert sw.resolve((224, 224)) == (40, 6)
    assert sw.num_parts((224, 224)) == 1444
    x = torch.rand(3, 224, 224)
    assert torch.equal(sw.masks(x), SlidingWindow(40, 6).masks(x))


@pytest.mark.parametrize(
    ("spatial", "want"),
    [
        ((32, 32), (6, 1)),  # 40/224*32 = 5.71, 6/224*32 = 0.86 -> at least 1
        ((64, 64), (11, 2)),  # 11.43, 1.71
        ((160, 160), (29, 4)),  # 28.57, 4.29
        ((48, 96), (9, 1)),  # the smallest side counts: 8.57, 1.29
        ((96, 48), (9, 1)),
    ],
)
def test_relative_resolves_to_the_scaled_pixels(spatial, want):
    sw = SlidingWindow.relative()
    assert sw.resolve(spatial) == want
    x = torch.rand(3, *spatial)
    assert torch.equal(sw.masks(x), SlidingWindow(*want).masks(x))
    assert sw.num_parts(spatial) == len(sw.masks(x)) == math.prod(math.ceil(n / want[1]) for n in spatial)


def test_relative_rounds_halves_up_and_works_for_signals():
    # 0.25 * 10 = 2.5 px: up to 3 (Python's round() would give 2); 0.05 * 10 = 0.5 -> 1.
    assert SlidingWindow(0.25, 0.05, unit="fraction").resolve((10, 10)) == (3, 1)
    sw = SlidingWindow.relative(spatial_dims=1)
    assert sw.resolve((120,)) == sw.resolve(120) == (21, 3)  # 21.43, 3.21
    x = torch.rand(2, 120)
    assert torch.equal(sw.masks(x), SlidingWindow(21, 3, spatial_dims=1).masks(x))


def test_relative_windows_follow_changed_attributes():
    sw = SlidingWindow.relative()
    x = torch.rand(3, 32, 32)
    sw.masks(x)
    sw.radius, sw.stride = 0.25, 0.25
    assert torch.equal(sw.masks(x), SlidingWindow(8, 8).masks(x))


# ---------------------------------------------------------------------------------------- max_parts


def smallest_fitting_stride(spatial, stride, budget):
    """Brute force: the first stride from `stride` up whose grid has at most `budget` windows."""
    for s in itertools.count(stride):
        if math.prod(math.ceil(n / s) for n in spatial) <= budget:
            return s


@pytest.mark.parametrize("spatial", [(224, 224), (37, 53), (64, 64), (120,), (9, 17, 5)])
@pytest.mark.parametrize("budget", [1, 2, 7, 100, 361, 1443, 1444, 5000])
def test_max_parts_picks_the_smallest_fitting_stride(spatial, budget):
    for stride in (1, 6):
        sw = SlidingWindow(7, stride, spatial_dims=len(spatial), max_parts=budget)
        want = smallest_fitting_stride(spatial, stride, budget)
        assert sw.resolve(spatial) == (7, want)  # the radius is kept
        assert sw.num_parts(spatial) <= budget
        if want > stride:  # the next smaller stride would not fit
            assert math.prod(math.ceil(n / (want - 1)) for n in spatial) > budget


def test_max_parts_caps_the_windows_actually_built():
    x = torch.rand(3, 224, 224)
    sw = SlidingWindow(40, 6, max_parts=400)
    masks = sw.masks(x)
    assert sw.resolve((224, 224)) == (40, 12) and len(masks) == 19 * 19
    assert torch.equal(masks, SlidingWindow(40, 12).masks(x))
    # Under budget nothing changes; the fraction unit is resolved first.
    assert SlidingWindow(40, 6, max_parts=1444).resolve((224, 224)) == (40, 6)
    assert SlidingWindow.relative(max_parts=100).resolve((32, 32)) == (6, 4)  # stride 3 would give 11 x 11


# ---------------------------------------------------------------------------------------- warnings, arguments


def test_warns_once_per_size_when_every_window_covers_most_of_the_image():
    sw = SlidingWindow()
    with pytest.warns(UserWarning, match=r"nearly flat — use SlidingWindow.relative\(\) or a smaller radius"):
        sw.masks(torch.rand(3, 32, 32))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sw.masks(torch.rand(3, 32, 32))  # the same size again: silent
        sw.masks(torch.rand(3, 224, 224))  # 40 < 112
        SlidingWindow.relative().masks(torch.rand(3, 32, 32))  # 6 < 16
        SlidingWindow(15, 4).masks(torch.rand(3, 32, 32))
    with pytest.warns(UserWarning, match="40 px radius on 80x90 inputs"):
        sw.masks(torch.rand(3, 80, 90))  # 40 >= 40: warns for a new size
    with pytest.warns(UserWarning, match="nearly flat"):
        SlidingWindow(16, 4).masks(torch.rand(3, 32, 32))  # a new instance warns again


def test_the_default_window_on_a_small_image_gives_a_flat_map_and_relative_does_not():
    model, x = make_cnn(), random_images(1, 32)
    with pytest.warns(UserWarning, match="nearly flat"):
        flat = PAMI(model, SlidingWindow(), Constant(0.0)).explain(x)
    heat = PAMI(model, SlidingWindow.relative(max_parts=256), Constant(0.0), batch_size=128).explain(x)
    # Nearly every radius-40 window keeps the whole 32x32 image (only far corners fall outside).
    assert float(flat.max() - flat.min()) < 1e-4
    assert float(heat.max() - heat.min()) > 50 * float(flat.max() - flat.min())


def test_size_aware_arguments_are_checked():
    with pytest.raises(ValueError, match=r'radius must be in \[0, 1\] with unit="fraction".*unit="px"'):
        SlidingWindow(40, 0.1, unit="fraction")
    with pytest.raises(ValueError, match=r'radius must be in \[0, 1\]'):
        SlidingWindow.relative(radius=-0.1)
    with pytest.raises(ValueError, match=r'stride must be in \(0, 1\] with unit="fraction"'):
        SlidingWindow.relative(stride=6)
    with pytest.raises(ValueError, match=r"stride must be in \(0, 1\]"):
        SlidingWindow.relative(stride=0.0)
    with pytest.raises(ValueError, match=r'unit must be "px" .* or "fraction"'):
        SlidingWindow(unit="pixels")  # type: ignore[arg-type]
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="max_parts must be a whole number >= 1"):
            SlidingWindow(max_parts=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"stride must be >= 1 pixel"):  # px mode unchanged
        SlidingWindow(4, 0.5)
    with pytest.raises(ValueError, match=r"spatial must hold 2 sizes .*got \[3, 32, 32\]"):
        SlidingWindow().resolve((3, 32, 32))
    with pytest.raises(ValueError, match="max_parts must be a whole number >= 3"):
        SlidingWindow.multiscale(max_parts=2)
    with pytest.raises(ValueError, match="at least one window radius"):
        SlidingWindow.multiscale(radii=())


def test_repr_shows_unit_and_budget_only_when_set():
    assert repr(SlidingWindow()) == 'SlidingWindow(radius=40, stride=6, shape="circle")'
    assert repr(SlidingWindow(3, 2, "square", max_parts=50)) == 'SlidingWindow(radius=3, stride=2, shape="square", max_parts=50)'
    assert repr(SlidingWindow.relative(0.25, 0.125)) == 'SlidingWindow(radius=0.25, stride=0.125, shape="circle", unit="fraction")'


# ---------------------------------------------------------------------------------------- Pooled


def test_pooled_parts_are_the_members_parts_in_order():
    members = [SlidingWindow(3, 4), SlidingWindow(6, 5, "square"), SlidingWindow(9, 3)]
    pooled = Pooled(members)
    x = torch.rand(3, 24, 24)
    assert torch.equal(pooled.masks(x), torch.cat([m.masks(x) for m in members]))
    assert pooled.num_parts((24, 24)) == 36 + 25 + 64 == len(pooled.masks(x))
    assert not pooled.content_aware and pooled.spatial_dims == 2 and pooled.channel_axis
    assert pooled.keep(x) is None
    assert repr(pooled).startswith('Pooled([SlidingWindow(radius=3, stride=4, shape="circle"), SlidingWindow(')


def test_multiscale_pools_windows_of_each_radius():
    pooled = SlidingWindow.multiscale()
    assert isinstance(pooled, Pooled)
    assert [(m.radius, m.stride, m.shape) for m in pooled.partitions] == [(20, 6, "circle"), (40, 6, "circle"), (60, 6, "circle")]
    assert pooled.num_parts((224, 224)) == 3 * 1444
    # The budget is for all radii together; fraction radii scale with the input.
    budgeted = SlidingWindow.multiscale(radii=(0.1, 0.2), stride=1 / 32, unit="fraction", max_parts=200)
    assert [m.resolve((64, 64)) for m in budgeted.partitions] == [(6, 7), (13, 7)]  # 10 x 10 windows each
    assert budgeted.num_parts((64, 64)) == 200


def test_pooled_with_superpixels_is_content_aware_and_has_no_fixed_count():
    pooled = Pooled([SlidingWindow(4, 4), Superpixels([("slic", {"n_segments": 8, "compactness": 20})])])
    assert pooled.content_aware
    assert not hasattr(pooled, "num_parts")
    with pytest.raises(AttributeError, match="no fixed number of parts"):
        pooled.num_parts((24, 24))


def test_pooled_refuses_members_that_take_different_inputs():
    with pytest.raises(ValueError, match="same spatial_dims"):
        Pooled([SlidingWindow(3, 2), SlidingWindow(3, 2, spatial_dims=1)])
    with pytest.raises(ValueError, match="same inputs"):
        Pooled([SlidingWindow(3, 2, spatial_dims=1), TokenWindows(3)])
    with pytest.raises(ValueError, match="same pad_id= and keep_ids="):
        Pooled([TokenWindows(3, pad_id=0), TokenWindows(5, pad_id=1)])
    with pytest.raises(ValueError, match="at least one partition"):
        Pooled([])
    with pytest.raises(TypeError, match=r"wrap it: Pooled\(\[SlidingWindow"):
        Pooled(SlidingWindow())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="must be a Partition"):
        Pooled([SlidingWindow(), "slic"])  # type: ignore[list-item]


def test_pooled_token_partitions_share_their_kept_tokens():
    ids = torch.tensor([101, 5, 6, 32, 7, 102, 0])  # [CLS] a b <space> c [SEP] <pad>
    pooled = Pooled([TokenWindows(2, 2, pad_id=0, keep_ids=[101, 102]), Words(pad_id=0, keep_ids=[101, 102])])
    assert pooled.keep(ids).tolist() == [True, False, False, False, False, True, True]
    want = torch.cat([TokenWindows(2, 2, pad_id=0, keep_ids=[101, 102]).masks(ids), Words(pad_id=0, keep_ids=[101, 102]).masks(ids)])
    assert torch.equal(pooled.masks(ids), want)
    # Words keeps its separators out of every part, windows cover them: no single rule for the pool.
    mixed = Pooled([TokenWindows(2, 2, pad_id=0), Words(separator_ids=[32], pad_id=0)])
    with pytest.raises(ValueError, match="keep different positions"):
        mixed.keep(ids)


# ---------------------------------------------------------------------------------------- Eq. 1 over the union


def eq1_loop(model, members, masker, x, target):
    """Eq. 1 written out: every part of every member, one masked input at a time."""
    maps = []
    for b in range(len(x)):
        masks = torch.cat([m.masks(x[b]) for m in members])
        substrate = masker.substrate(x[b : b + 1])[0]
        num = torch.zeros(x.shape[2:], dtype=torch.float64)
        den = torch.zeros(x.shape[2:], dtype=torch.float64)
        for m in masks:
            with torch.no_grad():
                s = model(torch.where(m, x[b], substrate)[None]).softmax(1)[0, target[b]].double()
            num += s * m
            den += m
        maps.append(torch.where(den > 0, num / den.clamp_min(1), torch.zeros_like(num)))
    return torch.stack(maps).float()


@pytest.mark.parametrize(
    ("members", "masker"),
    [
        ([SlidingWindow(3, 3), SlidingWindow(6, 3), SlidingWindow(9, 3)], Constant(0.0)),
        ([SlidingWindow(3, 4), SlidingWindow(9, 5, "square"), Superpixels([("slic", {"n_segments": 8, "compactness": 20})])], Blur(7, 3)),
    ],
    ids=["radii-3-6-9", "windows+slic"],
)
def test_pooled_map_is_eq1_over_the_union_of_parts(members, masker):
    model, x = make_cnn(), random_images(2, 24, seed=4)
    with torch.no_grad():
        target = model(x).argmax(1)
    # batch_size 50 packs the passes of several members into one batch.
    heat = PAMI(model, Pooled(members), masker, batch_size=50).explain(x, target=target)
    expected = eq1_loop(model, members, masker, x, target)
    assert float(expected.max() - expected.min()) > 1e-3  # a map with something to compare
    torch.testing.assert_close(heat, expected, atol=1e-6, rtol=0)


def test_multiscale_explains_like_its_pool():
    model, x = make_cnn(), random_images(1, 24, seed=5)
    pooled = SlidingWindow.multiscale(radii=(3, 6, 9), stride=3)
    heat = PAMI(model, pooled, Constant(0.0)).explain(x, target=1)
    torch.testing.assert_close(heat, eq1_loop(model, pooled.partitions, Constant(0.0), x, [1]), atol=1e-6, rtol=0)
