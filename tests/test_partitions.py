"""Partitions: the reference's sliding-window grid, and superpixel segmenters (SEEDS from OpenCV contrib)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pami_lightning import SlidingWindow, Superpixels, register_segmenter
from pami_lightning.partitions import SEGMENTERS
from pami_lightning.partitions.base import consecutive_labels
from pami_lightning.partitions.superpixels import to_uint8_image

from helpers.images import box_image, random_images


def centres_of(masks: torch.Tensor) -> list[tuple[int, int]]:
    """The single pixel each radius-0 window keeps."""
    assert torch.all(masks.sum(dim=(1, 2)) == 1)
    flat = masks.flatten(1).to(torch.uint8).argmax(1)
    width = masks.shape[2]
    return list(zip((flat // width).tolist(), (flat % width).tolist(), strict=True))


def test_reference_grid_on_224():
    # Reference: rows and columns {0, 6, ..., 222}, 38 x 38 = 1444 windows.
    x = torch.rand(3, 224, 224)
    centres = centres_of(SlidingWindow(radius=0, stride=6).masks(x))
    assert len(centres) == 1444
    assert sorted({r for r, _ in centres}) == list(range(0, 223, 6))
    assert sorted({c for _, c in centres}) == list(range(0, 223, 6))
    assert len(set(centres)) == 1444
    assert SlidingWindow(40, 6).num_parts((224, 224)) == 1444
    # The paper's r=40 circles on that grid (same order of centres): inside when dy^2 + dx^2 <= 40^2.
    masks = SlidingWindow(40, 6).masks(x)
    assert masks.shape == (1444, 224, 224)
    yy, xx = torch.meshgrid(torch.arange(224), torch.arange(224), indexing="ij")
    for j in (0, 37, 700, 1443):
        cy, cx = centres[j]
        assert torch.equal(masks[j], (yy - cy) ** 2 + (xx - cx) ** 2 <= 1600)


@pytest.mark.parametrize("shape", ["circle", "square"])
def test_window_masks_are_the_written_shapes(shape):
    x = torch.rand(3, 40, 36)
    r, stride = 7, 5
    masks = SlidingWindow(r, stride, shape=shape).masks(x)
    centres = [(cy, cx) for cy in range(0, 40, stride) for cx in range(0, 36, stride)]
    assert masks.shape == (len(centres), 40, 36) and masks.dtype == torch.bool
    yy, xx = torch.meshgrid(torch.arange(40), torch.arange(36), indexing="ij")
    want = []
    for cy, cx in centres:
        if shape == "circle":  # reference: inside when dx^2 + dy^2 <= r^2
            want.append((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r)
        else:  # a (2r+1)-wide square
            want.append(((yy - cy).abs() <= r) & ((xx - cx).abs() <= r))
    # Compare as sets: the order of parts does not matter to Eq. 1.
    assert sorted(m.flatten().tolist() for m in masks) == sorted(m.flatten().tolist() for m in want)


def test_sliding_window_rejects_bad_arguments():
    with pytest.raises(ValueError, match="stride must be >= 1"):
        SlidingWindow(stride=0)
    with pytest.raises(ValueError, match="radius must be >= 0"):
        SlidingWindow(radius=-1)
    with pytest.raises(ValueError, match='shape must be "circle" or "square"'):
        SlidingWindow(shape="hexagon")


def test_masks_wants_one_input():
    with pytest.raises(ValueError, match="pass one input, not a batch"):
        SlidingWindow().masks(torch.rand(1, 3, 32, 32))


def test_seeds_from_opencv_contrib_runs():
    image = to_uint8_image(random_images(1, 96, seed=3)[0])
    labels = SEGMENTERS["seeds"](image, num_superpixels=20, num_levels=5, n_iter=10)
    assert labels.shape == (96, 96)
    assert np.issubdtype(labels.dtype, np.integer)
    assert len(np.unique(labels)) > 1


@pytest.mark.parametrize(
    "setting",
    [
        ("seeds", {"num_superpixels": 20, "num_levels": 5, "n_iter": 10}),
        ("felzenszwalb", {"scale": 100, "sigma": 0.8, "min_size": 50}),
        ("slic", {"n_segments": 30, "compactness": 20}),
        ("watershed", {"markers": 20, "compactness": 0.0001}),
    ],
)
def test_each_segmenter_covers_every_pixel_exactly_once(setting):
    x = random_images(1, 64, seed=4)[0]
    masks = Superpixels([setting]).masks(x)
    assert masks.dtype == torch.bool and masks.shape[1:] == (64, 64)
    assert masks.shape[0] > 1
    assert torch.all(masks.sum(0) == 1)
    assert torch.all(masks.flatten(1).any(1))  # no empty parts: each costs a forward pass


def test_paper_ensemble_is_table_3():
    sp = Superpixels.paper()
    names = [name for _, _, name in sp.settings]
    assert names == ["felzenszwalb"] * 6 + ["slic"] * 8 + ["seeds"] * 3 + ["watershed"] * 3
    assert [p["scale"] for _, p, n in sp.settings if n == "felzenszwalb"] == [250, 200, 150, 100, 70, 50]
    assert all(p["min_size"] == 784 and p["sigma"] == 0.8 for _, p, n in sp.settings if n == "felzenszwalb")
    assert [p["n_segments"] for _, p, n in sp.settings if n == "slic"] == list(range(10, 81, 10))
    assert [p["num_superpixels"] for _, p, n in sp.settings if n == "seeds"] == [10, 20, 30]
    assert [p["markers"] for _, p, n in sp.settings if n == "watershed"] == [10, 20, 30]
    # 20 segmentations: every pixel is covered 20 times.
    masks = sp.masks(box_image(96))
    assert torch.all(masks.sum(0) == 20)


def test_custom_registered_and_plain_callable_segmenters():
    def halves(image: np.ndarray) -> np.ndarray:  # labels 5 and 9: not consecutive, not from 0
        labels = np.full(image.shape[:2], 5, dtype=np.int64)
        labels[:, image.shape[1] // 2 :] = 9
        return labels

    register_segmenter("test-rows")(lambda image, rows=2: np.repeat(np.arange(rows), image.shape[0] // rows)[:, None].repeat(image.shape[1], 1))
    try:
        masks = Superpixels([("test-rows", {"rows": 4}), halves]).masks(torch.rand(3, 16, 16))
    finally:
        SEGMENTERS.pop("test-rows")
    assert masks.shape == (4 + 2, 16, 16)
    for i in range(4):  # four horizontal bands of 4 rows
        assert torch.equal(masks[i], torch.zeros(16, 16, dtype=torch.bool).index_fill(0, torch.arange(4 * i, 4 * i + 4), True))
    assert masks[4, :, :8].all() and not masks[4, :, 8:].any()
    assert masks[5, :, 8:].all() and not masks[5, :, :8].any()


def test_second_run_guide_is_segmented_instead_of_the_image():
    # A segmenter labelling pixels by their red byte sees the guide's two flat colours, not the image.
    guide = torch.zeros(3, 32, 32)
    guide[:, :, 20:] = 1.0
    seen = []

    def by_red(image: np.ndarray) -> np.ndarray:
        seen.append(image.copy())
        return image[..., 0].astype(np.int64)

    masks = Superpixels([by_red]).masks(random_images(1, 32)[0], guide=guide)
    assert seen[0].dtype == np.uint8 and seen[0].shape == (32, 32, 3)
    assert np.array_equal(seen[0], to_uint8_image(guide))
    assert masks.shape[0] == 2
    assert masks[0, :, :20].all() and not masks[0, :, 20:].any()


def test_segmenters_see_truncated_255x_as_uint8_hwc():
    # Reference: each segmenter sees np.uint8(255 x), i.e. truncation, as uint8 [H, W, 3].
    x = torch.rand(3, 8, 10, dtype=torch.float64)
    x[0, 0, :4] = torch.tensor([0.4, 0.6, 254.4, 254.6]) / 255
    seen = []
    Superpixels([lambda image: seen.append(image) or np.zeros(image.shape[:2], dtype=np.int64)]).masks(x)
    want = np.uint8(255 * x.numpy()).transpose(1, 2, 0)
    assert seen[0].dtype == np.uint8 and seen[0].shape == (8, 10, 3)
    assert np.array_equal(seen[0], want)
    assert seen[0][0, :4, 0].tolist() == [0, 0, 254, 254]


def test_segmenter_errors():
    x = torch.rand(3, 16, 16)
    with pytest.raises(ValueError, match="unknown segmenter 'nope'"):
        Superpixels([("nope", {})])
    with pytest.raises(ValueError, match=r"returned a label map of shape \[8, 8\] for an image of \[16, 16\]"):
        Superpixels([lambda image: np.zeros((8, 8), dtype=np.int64)]).masks(x)
    with pytest.raises(ValueError, match="returned float64 labels; return an integer label map"):
        Superpixels([lambda image: np.zeros(image.shape[:2])]).masks(x)
    with pytest.raises(ValueError, match="1- or 3-channel"):
        Superpixels(["slic"]).masks(torch.rand(2, 16, 16))
    with pytest.raises(ValueError, match="at least one"):
        Superpixels([])


def test_consecutive_labels_keeps_every_label_as_one_part():
    labels = np.array([[7, 7, -3], [1000, -3, 7]])
    out = consecutive_labels(labels)
    assert out.dtype == np.int32
    assert out.tolist() == [[1, 1, 0], [2, 0, 1]]
    huge = np.array([[0, 10**12], [10**12, 5]])
    assert consecutive_labels(huge).tolist() == [[0, 2], [2, 1]]
    # Narrow integer types must not overflow when shifted to start at 0.
    narrow = np.zeros((20, 20), dtype=np.int8)
    narrow[:10], narrow[10:], narrow[0, 0] = -100, 100, 5
    out = consecutive_labels(narrow)
    assert out.shape == (20, 20) and out[0, 0] == 1 and np.all(out[1:10] == 0) and np.all(out[10:] == 2)


def test_window_cache_follows_changed_attributes():
    # The windows are cached per input size; a partition re-sized in place must not reuse them.
    sw = SlidingWindow(radius=8, stride=4)
    x = torch.rand(3, 32, 32)
    sw.masks(x)
    sw.radius, sw.stride, sw.shape = 3, 8, "square"
    assert torch.equal(sw.masks(x), SlidingWindow(radius=3, stride=8, shape="square").masks(x))
