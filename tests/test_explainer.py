"""The PAMI engine: known answers, Eq. 1 against a plain loop, batching invariance, autograd, errors.

How the model is called (eval and grad mode, autocast, copies, dict inputs) is tested once, in test_forward.py.
"""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest
import torch
from torch import nn

from pami_lightning import PAMI, REFERENCE_SHIFTS, Blur, Constant, ModelCall, SlidingWindow, Superpixels

from helpers.images import box_image, normalize, random_images
from helpers.models import BoxModel, make_cnn

ROWS, COLS = slice(20, 52), slice(50, 82)  # the box BoxModel looks at, in a 96x96 image


# ---------------------------------------------------------------------------- the plain Eq. 1 loop


def viridis_guide(heatmap: torch.Tensor) -> torch.Tensor:
    """Second-run guide written plainly, as the reference: uint8(255 minmax(h)) indexes viridis's table,
    colours truncated to bytes: uint8 [3, H, W]."""
    h = heatmap.double().numpy()
    index = np.uint8(255 * (h - h.min()) / (h.max() - h.min() + 1e-9))
    table = np.asarray(matplotlib.colormaps["viridis"].colors)
    return torch.from_numpy(np.uint8(255 * table[index])).permute(2, 0, 1)


@torch.no_grad()
def slow_eq1(model, x, k, partition, masker, preprocess=normalize, guide=None, shifts=((0, 0),)):
    """Paper Eq. 1, one masked input at a time: h = sum_j s_j m_j / N, 0 where N == 0.

    With shifts, each view is rolled, explained, and its heat AND cover rolled back before the
    division (the reference code's shift augmentation).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one-image forwards gain nothing from threads and stall on a busy machine
    try:
        return _slow_eq1(model, x, k, partition, masker, preprocess, guide, shifts)
    finally:
        torch.set_num_threads(threads)


def _slow_eq1(model, x, k, partition, masker, preprocess, guide, shifts):
    heat = torch.zeros(x.shape[1:], dtype=torch.float64)
    cover = torch.zeros(x.shape[1:], dtype=torch.float64)
    for dy, dx in shifts:
        xs = torch.roll(x, (dy, dx), dims=(1, 2))
        gs = None if guide is None else torch.roll(guide, (dy, dx), dims=(1, 2))
        substrate = masker.substrate(xs[None])[0]
        view_heat = torch.zeros_like(heat)
        view_cover = torch.zeros_like(cover)
        for m in partition.masks(xs, guide=gs):
            m = m.float()
            x_j = xs * m + substrate * (1 - m)
            s = torch.softmax(model(preprocess(x_j[None])).double(), dim=1)[0, k]
            view_heat += s * m
            view_cover += m
        heat += torch.roll(view_heat, (-dy, -dx), dims=(0, 1))
        cover += torch.roll(view_cover, (-dy, -dx), dims=(0, 1))
    return torch.where(cover > 0, heat / cover, torch.zeros_like(heat)).float()


def assert_matches_loop(explainer, images, **loop_kwargs):
    maps, targets = explainer.explain(images, return_target=True)
    assert maps.shape == (images.shape[0], *images.shape[2:]) and maps.dtype == torch.float32
    for i in range(images.shape[0]):
        want = slow_eq1(explainer.model, images[i], int(targets[i]), explainer.partition, explainer.masker, **loop_kwargs)
        assert want.std() > 1e-3, "a near-constant map would make this comparison toothless"
        torch.testing.assert_close(maps[i], want, atol=1e-6, rtol=0)
    return maps


def quadrants(image: np.ndarray) -> np.ndarray:
    """A plain segmenter: four quadrants labelled 1..4."""
    h, w = image.shape[:2]
    labels = np.ones((h, w), dtype=np.int64)
    labels[h // 2 :] += 2
    labels[:, w // 2 :] += 1
    return labels


# ---------------------------------------------------------------------------- (1) known answers


@pytest.mark.parametrize("shape", ["circle", "square"])
def test_known_answer_sliding_window(shape):
    x = box_image(96, ROWS, COLS)[None]
    heat = PAMI(BoxModel(ROWS, COLS), SlidingWindow(radius=12, stride=4, shape=shape)).explain(x)[0]
    r, c = divmod(int(heat.argmax()), 96)
    assert ROWS.start <= r < ROWS.stop and COLS.start <= c < COLS.stop
    outside = heat.clone()
    outside[ROWS, COLS] = -1
    assert heat[ROWS, COLS].max() > outside.max() + 1e-3


def test_known_answer_superpixels_paper():
    x = box_image(96, ROWS, COLS)[None]
    heat = PAMI(BoxModel(ROWS, COLS), Superpixels.paper()).explain(x)[0]
    r, c = divmod(int(heat.argmax()), 96)
    assert ROWS.start <= r < ROWS.stop and COLS.start <= c < COLS.stop
    outside = heat.clone()
    outside[ROWS, COLS] = -1
    assert heat[ROWS, COLS].max() > outside.max() + 1e-3


# ---------------------------------------------------------------------------- (2) Eq. 1, exactly


@pytest.mark.parametrize(
    "partition",
    [
        SlidingWindow(radius=6, stride=3, shape="circle"),
        SlidingWindow(radius=5, stride=4, shape="square"),
        Superpixels([("slic", {"n_segments": 30, "compactness": 20})]),
        Superpixels([quadrants, ("watershed", {"markers": 10})]),  # a plain callable pooled with a registered one
    ],
    ids=["circle", "square", "slic", "callable+watershed"],
)
def test_engine_equals_eq1_loop(cnn, partition):
    images = random_images(2, 32, seed=5)
    assert_matches_loop(PAMI(cnn, partition, Blur(11, 5), preprocess=normalize, batch_size=16), images)


def test_engine_equals_eq1_loop_paper_ensemble(cnn):
    assert_matches_loop(PAMI(cnn, Superpixels.paper(), Blur(), preprocess=normalize), random_images(1, 96, seed=6))


def test_engine_equals_eq1_loop_second_run(cnn):
    partition = Superpixels([("slic", {"n_segments": 20, "compactness": 20}), ("felzenszwalb", {"scale": 100, "sigma": 0.8, "min_size": 40})])
    x = random_images(1, 48, seed=7)
    masker = Blur(11, 5)
    maps, targets = PAMI(cnn, partition, masker, preprocess=normalize, second_run=True).explain(x, return_target=True)
    k = int(targets[0])
    first = slow_eq1(cnn, x[0], k, partition, masker)
    second = slow_eq1(cnn, x[0], k, partition, masker, guide=viridis_guide(first))
    assert second.std() > 1e-3
    torch.testing.assert_close(maps[0], second, atol=1e-6, rtol=0)
    # The second run really re-partitions: its map is not the first map.
    assert (second - first).abs().max() > 1e-3


@pytest.mark.parametrize(
    "partition",
    [SlidingWindow(radius=5, stride=4), Superpixels([("slic", {"n_segments": 20, "compactness": 20})])],
    ids=["window", "slic"],
)
def test_engine_equals_eq1_loop_shifts(cnn, partition):
    shifts = [(0, 0), (7, 0), (0, -5), (-3, 11)]
    explainer = PAMI(cnn, partition, Blur(11, 5), preprocess=normalize, batch_size=16, shifts=shifts)
    maps = assert_matches_loop(explainer, random_images(2, 32, seed=8), shifts=shifts)
    # Shifting matters (borders, content-aware parts): the pooled map differs from the plain one.
    plain = PAMI(cnn, partition, Blur(11, 5), preprocess=normalize).explain(random_images(2, 32, seed=8))
    assert (maps - plain).abs().max() > 1e-4


def test_uncovered_pixels_are_zero_not_nan(cnn):
    # stride 7 > 2 * radius 2: windows leave gaps no part covers.
    partition = SlidingWindow(radius=2, stride=7)
    x = random_images(1, 24, seed=9)
    maps = assert_matches_loop(PAMI(cnn, partition, Blur(11, 5), preprocess=normalize), x)
    uncovered = partition.masks(x[0]).sum(0) == 0
    assert uncovered.any() and not torch.isnan(maps).any()
    assert torch.all(maps[0][uncovered] == 0) and torch.all(maps[0][~uncovered] > 0)


def test_reference_shifts_are_the_13_views():
    assert len(REFERENCE_SHIFTS) == 13 and REFERENCE_SHIFTS[0] == (0, 0)
    assert set(REFERENCE_SHIFTS[1:]) == {(s * d, 0) for d in (36, 30, 24) for s in (1, -1)} | {(0, s * d) for d in (36, 30, 24) for s in (1, -1)}
    assert PAMI(make_cnn(), shifts="reference").shifts == list(REFERENCE_SHIFTS)


# ---------------------------------------------------------------------------- (3) batching invariance


@pytest.mark.parametrize(
    "partition, shifts",
    [
        (SlidingWindow(radius=5, stride=4), None),  # 36 windows per image
        (Superpixels([("slic", {"n_segments": 20, "compactness": 20}), ("seeds", {"num_superpixels": 10})]), None),
        (SlidingWindow(radius=5, stride=4), [(0, 0), (5, -3)]),
    ],
    ids=["window", "superpixels", "shifts"],
)
def test_map_of_an_image_depends_neither_on_batch_size_nor_on_its_companions(cnn, partition, shifts):
    images = random_images(3, 24, seed=10)
    targets = [0, 3, 1]  # different classes, so a chunk spanning images must not mix up targets
    maps = {}
    for bs in (1, 7, 64):  # 7 does not divide 36: chunks span images
        explainer = PAMI(cnn, partition, Blur(11, 5), preprocess=normalize, batch_size=bs, shifts=shifts)
        maps[bs] = explainer.explain(images, target=targets)
        alone = torch.cat([explainer.explain(images[i : i + 1], target=targets[i]) for i in range(3)])
        torch.testing.assert_close(maps[bs], alone, atol=1e-6, rtol=0)
    torch.testing.assert_close(maps[7], maps[1], atol=1e-6, rtol=0)
    torch.testing.assert_close(maps[64], maps[1], atol=1e-6, rtol=0)
    # The images really differ, so a mix-up between them would show.
    assert (maps[1][0] - maps[1][1]).abs().max() > 1e-3


# ---------------------------------------------------------------------------- (4) autograd


def test_no_autograd_graph_and_editable_result(cnn):
    cnn.train()
    x = random_images(1, 16).requires_grad_()
    heat = PAMI(cnn, SlidingWindow(4, 4), Blur(11, 5)).explain(x)
    assert not heat.requires_grad and heat.grad_fn is None
    assert all(p.grad is None for p in cnn.parameters()) and x.grad is None
    heat += 1  # an inference-mode tensor would refuse this
    heat[0, 0, 0] = 0
    assert heat[0, 0, 0] == 0


# ---------------------------------------------------------------------------- (5) bad inputs


def test_wrong_rank_says_add_a_batch_dimension(cnn):
    with pytest.raises(ValueError, match=r"inputs must be \[B, C, H, W\].*got \[3, 32, 32\] — add a batch dimension"):
        PAMI(cnn).explain(torch.rand(3, 32, 32))


def test_integer_inputs(cnn):
    with pytest.raises(ValueError, match=r"floating-point images in \[0, 1\].*float\(\) / 255"):
        PAMI(cnn).explain(torch.randint(0, 255, (1, 3, 32, 32), dtype=torch.uint8))


@pytest.mark.parametrize("target", [5, -1, [0, 7]])
def test_target_out_of_range(cnn, target):
    with pytest.raises(ValueError, match=r"out of range for a model with 5 outputs; targets must lie in \[0, 4\]"):
        PAMI(cnn, SlidingWindow(4, 8), Constant(0.0)).explain(random_images(2, 16), target=target)


def test_target_wrong_length_or_type(cnn):
    explainer = PAMI(cnn, SlidingWindow(4, 8), Constant(0.0))
    with pytest.raises(ValueError, match=r"one class per input \(\[2\]\); got shape \[3\]"):
        explainer.explain(random_images(2, 16), target=[0, 1, 2])
    with pytest.raises(ValueError, match="integer class indices"):
        explainer.explain(random_images(2, 16), target=torch.tensor([0.0, 1.0]))


@pytest.mark.parametrize("output", ["softmax", "sigmoid"])
def test_outputs_not_n_by_k(output):
    def model(x):  # [N, 2, 2]: e.g. a segmentation head
        return x.mean(dim=(2, 3))[:, :2, None].expand(-1, 2, 2)

    explainer = PAMI(ModelCall(model, output=output, modules=()), SlidingWindow(4, 8), Constant(0.0))
    with pytest.raises(ValueError, match=rf'output="{output}" needs model outputs \[N, num_classes\]; got \[\d+, 2, 2\]'):
        explainer.explain(random_images(1, 16), target=0)
    with pytest.raises(ValueError, match=r"target=None explains the top-1 class, which needs outputs \[N, K\]"):
        explainer.explain(random_images(1, 16))


@pytest.mark.parametrize("bad, output", [(float("nan"), "softmax"), (float("inf"), "identity")])
def test_nan_or_inf_scores(bad, output):
    def model(x):
        out = torch.stack([x.mean(dim=(1, 2, 3)), torch.zeros(len(x))], 1)
        out[x[:, 0, 0, 0] > 0] = bad  # whenever the top-left pixel is kept
        return out

    images = torch.cat([random_images(1, 16), torch.zeros(1, 3, 16, 16)])  # only input 0 goes bad
    with pytest.raises(ValueError, match=r"scores were NaN or inf for \d+ masked inputs \(inputs \[0\]\)"):
        PAMI(ModelCall(model, output=output, modules=()), SlidingWindow(4, 4), Constant(0.0)).explain(images, target=0)


def test_segmenter_with_a_wrong_label_map_fails_in_explain(cnn):
    wrong_shape = Superpixels([lambda image: np.zeros((image.shape[0], image.shape[1] + 1), dtype=np.int64)])
    with pytest.raises(ValueError, match=r"label map of shape \[16, 17\] for an image of \[16, 16\]"):
        PAMI(cnn, wrong_shape).explain(random_images(1, 16))
    float_labels = Superpixels([lambda image: np.zeros(image.shape[:2], dtype=np.float32)])
    with pytest.raises(ValueError, match="returned float32 labels; return an integer label map"):
        PAMI(cnn, float_labels).explain(random_images(1, 16))


def test_unknown_segmenter():
    with pytest.raises(ValueError, match=r"unknown segmenter 'SEEDS'; registered: \["):
        Superpixels([("SEEDS", {})])


def test_second_run_needs_a_content_aware_partition(cnn):
    with pytest.raises(ValueError, match=r"second_run=True .* needs a content-aware partition such as Superpixels"):
        PAMI(cnn, SlidingWindow(), second_run=True)


@pytest.mark.parametrize(
    "shifts, message",
    [
        ("all", r'shifts must be a list of \(dy, dx\) views or "reference"'),
        ([], "at least one view"),
        ([(1, 2, 3)], r"each shift needs 2 offsets \(one per spatial axis\); got \(1, 2, 3\)"),
        ([(1.5, 0)], "whole numbers of pixels"),
        ([3, 4], r"a \(dy, dx\) pair"),
    ],
)
def test_bad_shifts(cnn, shifts, message):
    with pytest.raises(ValueError, match=message):
        PAMI(cnn, shifts=shifts)


@pytest.mark.parametrize("scale", ["normalised", "0-255"])
def test_pixel_space_warning_for_inputs_far_outside_unit_range(cnn, scale):
    x = random_images(1, 16)
    x = normalize(x) if scale == "normalised" else x * 255
    with pytest.warns(UserWarning, match=r"masks in pixel space \[0, 1\].*preprocess="):
        PAMI(cnn, SlidingWindow(4, 8), Constant(0.0)).explain(x)


def test_no_pixel_space_warning_in_range(cnn, recwarn):
    PAMI(cnn, SlidingWindow(4, 8), Constant(0.0)).explain(random_images(1, 16))
    assert not [w for w in recwarn if "pixel space" in str(w.message)]


def test_single_segment_is_valid_and_gives_the_clean_score(cnn):
    x = random_images(1, 24, seed=12)
    one = Superpixels([lambda image: np.zeros(image.shape[:2], dtype=np.int32)])
    heat, target = PAMI(cnn, one, Blur(11, 5), preprocess=normalize).explain(x, return_target=True)
    clean = torch.softmax(cnn(normalize(x)), 1)[0, target[0]].item()
    torch.testing.assert_close(heat[0], torch.full((24, 24), clean), atol=1e-6, rtol=0)


def test_softmax_of_a_single_output_is_refused():
    # softmax over one logit is 1 for every masked input: a constant map that says nothing.
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 1))
    with pytest.raises(ValueError, match=r'output="softmax" of a single output is always 1.*output="sigmoid"'):
        PAMI(model, SlidingWindow(4, 8), Constant(0.0)).explain(random_images(1, 16))
    heat = PAMI(model, SlidingWindow(4, 8), Constant(0.0), output="sigmoid").explain(random_images(1, 16))
    assert heat.std() > 0


def test_warns_when_softmax_is_asked_of_probabilities(cnn, recwarn):
    # A model ending in Softmax: softmax again would squash every score towards 1/K.
    probs = nn.Sequential(cnn, nn.Softmax(dim=1))
    x = random_images(1, 16)
    with pytest.warns(UserWarning, match=r'look like probabilities already.*output="identity"'):
        PAMI(probs, SlidingWindow(4, 8), Constant(0.0)).explain(x)
    recwarn.clear()
    PAMI(probs, SlidingWindow(4, 8), Constant(0.0), output="identity").explain(x)
    PAMI(cnn, SlidingWindow(4, 8), Constant(0.0)).explain(x)
    assert not [w for w in recwarn if "probabilities" in str(w.message)]


# ---------------------------------------------------------------------------- API forms


def test_target_forms_agree(cnn):
    x = random_images(2, 16, seed=13)
    explainer = PAMI(cnn, SlidingWindow(4, 4), Blur(11, 5), preprocess=normalize)
    top = cnn(normalize(x)).argmax(1)
    assert top[0] == top[1], "this seed gives both images the same top-1 class, so an int can name it"
    k = int(top[0])
    by_none, used = explainer.explain(x, return_target=True)
    assert used.dtype == torch.long and torch.equal(used, top)
    for form in (k, [k, k], torch.tensor([k, k]), np.int64(k), np.array([k, k])):
        torch.testing.assert_close(explainer.explain(x, target=form), by_none, atol=0, rtol=0)
    other = explainer.explain(x, target=(k + 1) % 5)
    assert (other - by_none).abs().max() > 1e-3


def test_callable_output_equals_softmax(cnn):
    x = random_images(2, 16, seed=14)
    part = SlidingWindow(4, 4)

    def probability(outputs, target):
        return torch.softmax(outputs, 1)[torch.arange(len(target)), target]

    a = PAMI(cnn, part, Constant(0.0), output=probability).explain(x, target=[1, 2])
    b = PAMI(cnn, part, Constant(0.0)).explain(x, target=[1, 2])
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match=r"one score per masked input"):
        PAMI(cnn, part, Constant(0.0), output=lambda o, t: o).explain(x, target=0)


def test_progress_bar_runs(cnn, capsys):
    heat = PAMI(cnn, SlidingWindow(4, 4), Constant(0.0), progress=True).explain(random_images(1, 16))
    assert heat.shape == (1, 16, 16)
    assert "PAMI" in capsys.readouterr().err


def test_channels_last_images_are_refused(cnn):
    with pytest.raises(ValueError, match=r"channels-last.*permute\(0, 3, 1, 2\)"):
        PAMI(cnn, SlidingWindow(8, 8)).explain(torch.rand(2, 32, 32, 3))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_inputs_are_refused(cnn, bad):
    images = torch.rand(1, 3, 16, 16)
    images[0, 1, 4, 4] = bad
    with pytest.raises(ValueError, match="inputs hold NaN or inf"):
        PAMI(cnn, SlidingWindow(8, 8)).explain(images)


def test_targets_of_every_form_agree_with_the_insertion_metric():
    # One normaliser serves PAMI and the causal metrics: ints, numpy scalars and 0-d arrays, lists, tensors.
    from pami_lightning.metrics.functional import insertion_curves

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4))
    x = torch.rand(2, 3, 8, 8)
    explainer = PAMI(model, SlidingWindow(radius=2, stride=4), Constant(0.0))
    want = explainer.explain(x, target=torch.tensor([2, 2]))
    curves = insertion_curves(model, x, want, target=torch.tensor([2, 2]), step=16)
    for target in (2, np.int64(2), np.array(2), [2, 2], (2, np.int64(2)), np.array([2, 2])):
        assert torch.equal(explainer.explain(x, target=target), want)
        assert torch.equal(insertion_curves(model, x, want, target=target, step=16), curves)




def test_masked_input_buffer_is_sized_by_the_work(cnn):
    # 64 passes with batch_size=10**8: a buffer of batch_size images would be 1.2 TB.
    x = random_images(1, 32, seed=5)
    huge = PAMI(cnn, SlidingWindow(4, 4), Constant(0.0), batch_size=10**8).explain(x, target=1)
    torch.testing.assert_close(huge, PAMI(cnn, SlidingWindow(4, 4), Constant(0.0)).explain(x, target=1), atol=1e-6, rtol=0)
