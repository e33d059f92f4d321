"""Strategy II as the reference runs it: truncated uint8 images, viridis guide bytes, per-setting image
copies, the label cache, and PAMI against a plain reference-style loop (runs 1 and 2, shifted views).

The reference recipe is ``/work/shared/reference/pami-algorithm.md`` ("Strategy II — pre-segmentation").
"""

from __future__ import annotations

import copy
import functools
import threading
from concurrent.futures import ThreadPoolExecutor

import cv2
import matplotlib
import numpy as np
import pytest
import torch
from skimage import data
from skimage.color import rgb2gray
from skimage.filters import sobel
from skimage.segmentation import felzenszwalb, slic, watershed
from skimage.transform import resize

from pami_lightning import PAMI, Superpixels, register_segmenter
from pami_lightning.maskers import Blur
from pami_lightning.partitions import SEGMENTERS, LabelParts
from pami_lightning.partitions.base import consecutive_labels
from pami_lightning.partitions.superpixels import colour_guide, to_uint8_image

from helpers.images import normalize
from helpers.models import make_cnn

# A few settings of each segmenter for 96x96 images: felzenszwalb's min_size is the paper's 784 (28^2)
# scaled by (96/224)^2, so each segmentation still has several segments.
SETTINGS = [
    ("felzenszwalb", {"scale": 100, "sigma": 0.8, "min_size": 144}),
    ("felzenszwalb", {"scale": 50, "sigma": 0.8, "min_size": 144}),
    ("slic", {"n_segments": 10, "compactness": 20}),
    ("slic", {"n_segments": 30, "compactness": 20}),
    ("seeds", {"num_superpixels": 20, "num_levels": 5, "n_iter": 10}),
    ("watershed", {"markers": 10, "compactness": 0.0001}),
]
SHIFTS = [(0, 0), (8, 0), (0, -8)]


@functools.cache
def _photo(size: int) -> np.ndarray:
    return resize(data.astronaut(), (size, size), anti_aliasing=True).astype(np.float32)


def photo(size: int) -> torch.Tensor:
    """scikit-image's astronaut photo resized to ``size x size``: float32 ``[3, size, size]`` in [0, 1]."""
    return torch.from_numpy(_photo(size)).permute(2, 0, 1).contiguous()


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two label maps split the pixels into the same segments (whatever the label values)."""
    pairs = len(np.unique(np.stack([a.ravel(), b.ravel()]), axis=1).T)
    return pairs == len(np.unique(a)) == len(np.unique(b))


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(np.corrcoef(a.double().flatten().numpy(), b.double().flatten().numpy())[0, 1])


# ------------------------------------------------------------------ the reference, written out plainly


def reference_segment(image: np.ndarray, name: str, params: dict) -> np.ndarray:
    """The reference's calls of the four segmenters on a uint8 ``[H, W, 3]`` image."""
    if name == "felzenszwalb":
        return felzenszwalb(image, scale=params["scale"], sigma=params["sigma"], min_size=params["min_size"])
    if name == "slic":
        return slic(image, n_segments=params["n_segments"], compactness=params["compactness"])
    if name == "seeds":
        h, w, c = image.shape
        engine = cv2.ximgproc.createSuperpixelSEEDS(
            image_width=w, image_height=h, image_channels=c, num_superpixels=params["num_superpixels"],
            num_levels=params["num_levels"], prior=2, histogram_bins=5, double_step=True,
        )
        engine.iterate(image, params["n_iter"])
        return engine.getLabels()
    if name == "watershed":
        return watershed(sobel(rgb2gray(image)), markers=params["markers"], compactness=params["compactness"])
    raise AssertionError(name)


def reference_colours(heatmap: torch.Tensor) -> np.ndarray:
    """The reference's second-run image: uint8 ``[H, W, 3]`` viridis colours of the min-max normalised map."""
    h = heatmap.double().numpy()
    v = (h - h.min()) / (h.max() - h.min() + 1e-9)
    index = np.uint8(255 * v)
    rgb = matplotlib.colormaps["viridis"](index)[..., :3]  # integer indices: entry `index` of the table
    return np.uint8(255 * rgb)


@torch.no_grad()
def reference_pami(model, x: torch.Tensor, k: int, settings, segmented: np.ndarray | None = None) -> torch.Tensor:
    """One PAMI run of the reference on ``x`` ``[3, H, W]``: float32 ``[H, W]``.

    Each setting segments ``np.uint8(255 x)`` (or ``segmented``, the second run's colour image);
    labels from 0 are shifted to start at 1; label value v = 1..max keeps the pixels labelled v
    over the blurred image; the softmax probabilities of class ``k`` times the masks are summed
    over all settings and divided by their number (each setting covers every pixel once).
    """
    image = np.uint8(255 * x.permute(1, 2, 0).numpy()) if segmented is None else segmented
    blurred = Blur().substrate(x[None])[0]
    heat = torch.zeros(x.shape[1:], dtype=torch.float64)
    for name, params in settings:
        labels = reference_segment(image.copy(), name, params)
        if labels.min() == 0:
            labels = labels + 1
        masks = torch.from_numpy(labels[None] == np.arange(1, labels.max() + 1)[:, None, None]).float()
        x_j = x * masks[:, None] + blurred * (1 - masks[:, None])
        scores = torch.softmax(model(normalize(x_j)), dim=1)[:, k].double()
        heat += (scores[:, None, None] * masks.double()).sum(0)
    return (heat / len(settings)).float()


def reference_views(model, x: torch.Tensor, k: int, settings, shifts, second_run: bool, first_maps=None) -> torch.Tensor:
    """The reference's shifted ensemble: each view ``np.roll(x, shift)`` explained on its own (run 1 and,
    with ``second_run``, run 2 on the colours of ITS OWN first map), shifted back, views averaged.

    ``first_maps[v]``, when given, is view v's first map (in the view's frame) to colour instead of
    the one this loop computes.
    """
    maps = []
    for v, shift in enumerate(shifts):
        xv = torch.from_numpy(np.roll(x.numpy(), shift, axis=(1, 2)))
        heat = reference_pami(model, xv, k, settings)
        if second_run:
            first = heat if first_maps is None else first_maps[v]
            heat = reference_pami(model, xv, k, settings, segmented=reference_colours(first))
        maps.append(torch.from_numpy(np.roll(heat.numpy(), [-s for s in shift], axis=(0, 1))))
    return torch.stack(maps).double().mean(0).float()


def explainer(model, second_run: bool = False, shifts=None) -> PAMI:
    return PAMI(model, partition=Superpixels(SETTINGS), masker=Blur(), preprocess=normalize,
                second_run=second_run, shifts=shifts, progress=False)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Small forwards gain nothing from intra-op threads and stall badly on a busy machine (15x measured)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def case():
    """A small random CNN, the 96x96 photo, and the class it explains (the CNN's top-1)."""
    model = make_cnn(seed=1)
    x = photo(96)
    with torch.no_grad():
        k = int(model(normalize(x[None])).argmax())
    return model, x, k


# ------------------------------------------------------------------ uint8 images: truncation


@pytest.mark.slow
def test_segmenters_see_the_truncated_photo_not_the_rounded_one():
    # Reference: np.uint8(255 x). The segmenters are chaotic: rounding changes whole segmentations.
    x = photo(224)
    truncated = np.uint8(255 * x.permute(1, 2, 0).numpy())
    rounded = np.round(255 * x.permute(1, 2, 0).numpy()).astype(np.uint8)
    sp = Superpixels.paper(cache_mb=0)
    differ = []
    for i, group in enumerate(sp.parts(x)):
        _, params, name = sp.settings[i]
        want = consecutive_labels(reference_segment(truncated.copy(), name, params))
        assert np.array_equal(group.labels.numpy(), want), f"setting {i} ({name} {params}) did not see uint8(255 x)"
        if not same_partition(want, consecutive_labels(reference_segment(rounded.copy(), name, params))):
            differ.append(i)
    # Measured: rounding changes every felzenszwalb setting (scale 250: 15 segments truncated, 12 rounded).
    assert 0 in differ and len(differ) >= 6, differ


def test_to_uint8_image_truncates_in_the_input_dtype():
    values = [0.0, 0.4 / 255, 0.6 / 255, 1 / 255, 0.5, 127.9 / 255, 254.6 / 255, 0.999999, 1.0, -0.3, 1.7]
    x = torch.tensor(values, dtype=torch.float64).view(1, 1, -1).expand(3, 2, -1).contiguous()
    for dtype in (torch.float64, torch.float32):
        xd = x.to(dtype)
        got = to_uint8_image(xd)
        assert got.dtype == np.uint8 and got.shape == (2, len(values), 3) and got.flags["C_CONTIGUOUS"]
        want = np.uint8(np.clip(255 * xd.numpy(), 0, 255)).transpose(1, 2, 0)
        assert np.array_equal(got, want), dtype
    assert to_uint8_image(x)[0, :, 0].tolist() == [0, 0, 0, 1, 127, 127, 254, 254, 255, 0, 255]
    # half and bfloat16 go through float32.
    for dtype in (torch.float16, torch.bfloat16):
        xh = x.to(dtype)
        assert np.array_equal(to_uint8_image(xh), np.uint8(np.clip(255 * xh.float().numpy(), 0, 255)).transpose(1, 2, 0))
    # Grey [1, H, W] becomes three equal channels.
    grey = to_uint8_image(torch.tensor([[[0.2, 0.9]]]))
    assert grey.shape == (1, 2, 3) and grey.tolist() == [[[51, 51, 51], [229, 229, 229]]]


def test_uint8_images_pass_through_unchanged_and_are_copied():
    g = torch.Generator().manual_seed(0)
    img = torch.randint(0, 256, (3, 5, 7), dtype=torch.uint8, generator=g)
    got = to_uint8_image(img)
    assert got.dtype == np.uint8 and np.array_equal(got, img.permute(1, 2, 0).numpy())
    got[:] = 0  # the caller's tensor is not shared
    assert img.any()
    grey = torch.randint(0, 256, (1, 4, 4), dtype=torch.uint8, generator=g)
    assert np.array_equal(to_uint8_image(grey), grey[0, :, :, None].expand(4, 4, 3).numpy())
    with pytest.raises(TypeError, match="float images in \\[0, 1\\] or uint8"):
        to_uint8_image(torch.zeros(3, 4, 4, dtype=torch.int32))
    with pytest.raises(ValueError, match="one image \\[C, H, W\\]"):
        to_uint8_image(torch.zeros(1, 3, 4, 4))


# ------------------------------------------------------------------ second-run colours


def test_colour_guide_is_the_references_viridis_bytes():
    g = torch.Generator().manual_seed(0)
    ramp = torch.linspace(0, 1, 64 * 48, dtype=torch.float64).view(64, 48)  # v = 0.5 gives 127, not floor(128)
    maps = {
        "ramp": ramp,
        "random": torch.rand(64, 48, generator=g),
        "negative, wide": 300 * torch.randn(64, 48, generator=g, dtype=torch.float64) - 1000,
        "narrow": 0.7 + 1e-4 * torch.rand(64, 48, generator=g),
        "constant": torch.full((64, 48), 0.3),
    }
    for name, h in maps.items():
        got = colour_guide(h[None])
        assert got.dtype == torch.uint8 and got.shape == (1, 3, 64, 48), name
        assert np.array_equal(got[0].permute(1, 2, 0).numpy(), reference_colours(h)), name
    # The batch is coloured map by map (each normalised by its own min and max).
    batch = torch.stack([maps["random"], 5 * maps["ramp"].float() - 2])
    got = colour_guide(batch)
    assert all(np.array_equal(got[i].permute(1, 2, 0).numpy(), reference_colours(batch[i])) for i in range(2))

    # The ramp has pixels where the colour index uint8(255 v) differs from matplotlib's float lookup
    # (floor(256 v)): there the bytes must be the former's.
    v = ramp.numpy()
    table = np.uint8(255 * np.asarray(matplotlib.colormaps["viridis"].colors))
    index = np.uint8(255 * (v - v.min()) / (v.max() - v.min() + 1e-9))
    differs = index != np.minimum(np.floor(256 * v), 255)
    assert differs.mean() > 0.4  # half of a ramp's pixels
    ours = colour_guide(ramp[None])[0].permute(1, 2, 0).numpy()
    float_lookup = matplotlib.colormaps["viridis"](v, bytes=True)[..., :3]
    assert np.array_equal(ours, table[index]) and not np.array_equal(ours[differs], float_lookup[differs])
    # +1e-9 in the denominator keeps v below 1: the largest value gets index 254, not 255.
    assert index.max() == 254 and ours[-1, -1].tolist() == table[254].tolist()
    # A constant map is index 0 everywhere.
    assert (colour_guide(maps["constant"][None])[0] == torch.from_numpy(table[0]).view(3, 1, 1)).all()


def test_guide_bytes_reach_the_segmenters_unchanged():
    seen = []

    def by_colour(image: np.ndarray) -> np.ndarray:
        seen.append(image.copy())
        return image[..., 0].astype(np.int64)

    heat = torch.rand(32, 40, generator=torch.Generator().manual_seed(2))
    guide = colour_guide(heat[None])[0]
    before = guide.clone()
    groups = Superpixels([by_colour]).parts(torch.rand(3, 32, 40), guide=guide)
    assert np.array_equal(seen[0], guide.permute(1, 2, 0).numpy())
    assert torch.equal(guide, before)
    assert isinstance(groups[0], LabelParts) and len(groups[0]) == len(np.unique(seen[0][..., 0]))
    with pytest.raises(ValueError, match="guide must be an image \\[3, H, W\\] of the input's size \\[32, 40\\]"):
        Superpixels([by_colour]).parts(torch.rand(3, 32, 40), guide=guide[:, :16])


# ------------------------------------------------------------------ one image copy per setting


@pytest.mark.parametrize("threads", [0, 2])
def test_a_segmenter_that_edits_its_input_does_not_change_what_others_see(threads):
    seen = []

    @register_segmenter("test-scribbler")
    def scribbler(image: np.ndarray) -> np.ndarray:
        labels = (image[..., 0] > 127).astype(np.int64)
        image[...] = 255 - image  # in place: must not reach the other settings, the cache key or the caller
        return labels

    def reader(image: np.ndarray) -> np.ndarray:
        seen.append(image.copy())
        return np.zeros(image.shape[:2], dtype=np.int64)

    x = torch.rand(3, 24, 24, generator=torch.Generator().manual_seed(3))
    guide = colour_guide(torch.rand(1, 24, 24, generator=torch.Generator().manual_seed(4)))[0]
    kept = guide.clone()
    try:
        sp = Superpixels(["test-scribbler", reader, "test-scribbler", reader])
        pool = ThreadPoolExecutor(threads) if threads else None
        for g in (None, guide):
            seen.clear()
            groups = sp.parts(x, guide=g, executor=pool)
            groups = [f.result() for f in groups] if pool else groups
            want = to_uint8_image(x if g is None else kept)
            assert len(seen) == 2 and all(np.array_equal(s, want) for s in seen)
            assert all(torch.equal(groups[i].labels, torch.from_numpy(want[..., 0] > 127).to(groups[i].labels.dtype)) for i in (0, 2))
        assert torch.equal(guide, kept)
        if pool:
            pool.shutdown()
    finally:
        SEGMENTERS.pop("test-scribbler")


# ------------------------------------------------------------------ the label cache


def quarters(image: np.ndarray) -> np.ndarray:
    """Four horizontal bands."""
    return np.repeat(np.arange(4), image.shape[0] // 4)[:, None].repeat(image.shape[1], 1)


class Counting:
    """A deterministic segmenter that counts its calls: horizontal bands of ``rows`` rows."""

    def __init__(self) -> None:
        self.calls = 0
        self._lock = threading.Lock()

    def __call__(self, image: np.ndarray, rows: int = 4) -> np.ndarray:
        with self._lock:
            self.calls += 1
        return np.repeat(np.arange(image.shape[0]) // rows, image.shape[1]).reshape(image.shape[:2])


def test_cache_skips_segmentations_of_the_same_bytes():
    seg = Counting()
    sp = Superpixels([(seg, {"rows": 4}), (seg, {"rows": 8})])
    x = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(5))
    first = sp.masks(x)
    assert seg.calls == 2
    assert torch.equal(sp.masks(x.clone()), first) and seg.calls == 2  # same bytes: no segmentation
    same_bytes = torch.from_numpy(to_uint8_image(x)).permute(2, 0, 1)
    assert torch.equal(sp.masks(torch.rand(3, 32, 32), guide=same_bytes), first) and seg.calls == 2  # ... as a guide
    sp.masks(x.flip(-1))  # other bytes
    assert seg.calls == 4
    sp.masks(x[:, :16])  # other shape
    assert seg.calls == 6
    # The guide's bytes are the key of a second run.
    guide = colour_guide(torch.rand(1, 32, 32, generator=torch.Generator().manual_seed(6)))[0]
    sp.masks(x, guide=guide)
    sp.masks(x.flip(-1), guide=guide)
    assert seg.calls == 8
    # A setting edited in place is not served the old labels.
    fn, _, name = sp.settings[0]
    sp.settings[0] = (fn, {"rows": 16}, name)
    assert sp.masks(x).shape[0] == 2 + 4 and seg.calls == 9
    info = sp.cache_info()
    assert (info.hits, info.misses, info.entries) == (7, 9, 9)  # 16 lookups: 7 served, 9 segmented and kept
    assert info.bytes == (7 * 32 * 32 + 2 * 16 * 32) * 2 and info.max_bytes == 128 * 2**20  # int16 labels, two of the 16x32 crop
    sp.clear_cache()
    assert sp.cache_info() == (0, 0, 0, 0, 128 * 2**20)
    sp.masks(x)
    assert seg.calls == 11


def test_cached_labels_are_private_compact_and_bounded():
    seg = Counting()
    x = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(7))
    sp = Superpixels([seg])
    group = sp.parts(x)[0]
    assert group.labels.dtype == torch.int16 and len(group) == 8
    group.labels.zero_()  # a user editing a group's labels must not corrupt the cache
    again = sp.parts(x)[0]
    assert seg.calls == 1 and torch.equal(again.labels, torch.arange(8, dtype=torch.int16).repeat_interleave(4)[:, None].expand(32, 32))
    assert torch.equal(again.masks(2, 4).sum((1, 2)), torch.tensor([4 * 32, 4 * 32]))

    # More labels than int16 holds: int32, masks still right.
    many = Superpixels([lambda image: np.arange(image.shape[0] * image.shape[1]).reshape(image.shape[:2])])
    group = many.parts(torch.rand(3, 200, 200))[0]
    assert group.labels.dtype == torch.int32 and len(group) == 40000
    masks = group.masks(39998, 40000)
    assert masks.shape == (2, 200, 200) and masks[1, 199, 199] and masks.sum() == 2

    # Bounded by bytes: 32x32 int16 labels are 2 KiB, so a 5 KiB cache holds the last two images.
    small = Superpixels([seg], cache_mb=5 / 1024)
    images = [torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(s)) for s in range(3)]
    seg.calls = 0
    for img in images:
        small.masks(img)
    small.masks(images[2])
    small.masks(images[1])
    assert seg.calls == 3
    small.masks(images[0])  # evicted first (least recently used)
    assert seg.calls == 4
    small.masks(images[2])  # images[1] and [0] are now the last used: [2] was evicted
    assert seg.calls == 5
    assert small.cache_info()[2:] == (2, 2 * 32 * 32 * 2, 5 * 1024)  # two 2 KiB maps under the 5 KiB bound

    # cache_mb=0: every call segments (for random segmenters).
    off = Superpixels([seg], cache_mb=0)
    seg.calls = 0
    off.masks(x)
    off.masks(x)
    assert seg.calls == 2 and off.cache_info() == (0, 0, 0, 0, 0)
    for bad in (-1, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="cache_mb must be a finite number >= 0"):
            Superpixels([seg], cache_mb=bad)


def test_pickles_naming_the_segmenters_by_their_0_1_path_still_load():
    import pickle

    from pami_lightning.partitions import segmenters

    # What a 0.1 pickle of Superpixels holds for its functions: a global at the old module path.
    for name in ("felzenszwalb", "slic", "seeds", "watershed"):
        assert pickle.loads(f"cpami_lightning.partitions.superpixels\n{name}\n.".encode()) is getattr(segmenters, name)
    sp = Superpixels.paper()
    assert [name for _, _, name in pickle.loads(pickle.dumps(sp)).settings] == [name for _, _, name in sp.settings]


def test_cache_is_thread_safe_and_copies_start_empty():
    seg = Counting()
    sp = Superpixels([(seg, {"rows": r}) for r in (2, 4, 8, 16)])
    images = [torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(s)) for s in range(4)]
    want = [Superpixels([(Counting(), {"rows": r}) for r in (2, 4, 8, 16)], cache_mb=0).masks(img) for img in images]
    with ThreadPoolExecutor(4) as pool:
        for _ in range(5):
            groups = [[f.result() for f in sp.parts(img, executor=pool)] for img in images]
            for got, expected in zip(groups, want, strict=True):
                assert torch.equal(torch.cat([g.masks() for g in got]), expected)
    assert seg.calls <= 2 * 16  # 16 segmentations, a few perhaps twice while racing
    # Copies (and pickles) start with an empty cache of their own: a lock cannot be copied.
    bands = Superpixels([quarters])
    bands.masks(images[0])
    clone = copy.deepcopy(bands)
    assert clone.cache_info().entries == 0 and bands.cache_info().entries == 1
    assert torch.equal(clone.masks(images[0]), bands.masks(images[0]))
    assert "cache_mb" not in repr(sp) and "cache_mb=0" in repr(Superpixels(["slic"], cache_mb=0))


# ------------------------------------------------------------------ PAMI against the reference loop


def test_run_1_matches_the_reference(case):
    model, x, k = case
    want = reference_pami(model, x, k, SETTINGS)
    assert want.std() > 1e-3, "a near-constant map would make this comparison toothless"
    got = explainer(model).explain(x[None], target=k)[0]
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


def test_run_2_matches_the_reference(case):
    # Reference: run 2 segments the viridis bytes of the run-1 map; masks still keep the original image.
    model, x, k = case
    got = explainer(model, second_run=True).explain(x[None], target=k)[0]
    first = reference_pami(model, x, k, SETTINGS)
    want = reference_pami(model, x, k, SETTINGS, segmented=reference_colours(first))
    assert want.std() > 1e-3
    assert pearson(got, want) >= 0.999
    # To 1e-6: the reference's run 2 coloured from the engine's own run-1 map (which the test above pins
    # to 1e-6), so that a map value at a colour-index boundary cannot turn float noise into a new segmentation.
    engine_first = explainer(model).explain(x[None], target=k)[0]
    want = reference_pami(model, x, k, SETTINGS, segmented=reference_colours(engine_first))
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


def test_shifted_views_match_the_reference(case):
    model, x, k = case
    want = reference_views(model, x, k, SETTINGS, SHIFTS, second_run=False)
    got = explainer(model, shifts=SHIFTS).explain(x[None], target=k)[0]
    assert pearson(got, want) >= 0.999
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


def test_shifted_views_with_second_run_match_the_reference(case):
    # Reference: each view has its own run 1 and, from ITS OWN first map, its own run 2.
    model, x, k = case
    got = explainer(model, second_run=True, shifts=SHIFTS).explain(x[None], target=k)[0]
    want = reference_views(model, x, k, SETTINGS, SHIFTS, second_run=True)
    assert want.std() > 1e-3
    assert pearson(got, want) >= 0.999
    # To 1e-6 as in run 2: each view's run 2 coloured from the engine's run-1 map of that view alone
    # (one view, shifted back by the engine; rolled here into the view's frame).
    firsts = [torch.roll(explainer(model, shifts=[s]).explain(x[None], target=k)[0], s, dims=(0, 1)) for s in SHIFTS]
    want = reference_views(model, x, k, SETTINGS, SHIFTS, second_run=True, first_maps=firsts)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
