"""Insertion / deletion: metrics.md's worked vectors, a plain one-forward-per-step RISE loop as the
reference, full batches, the model kept out of the state_dict, errors, and a known-answer model
explained with PAMI. How the model is called (eval and inference mode, autocast, copies against an
in-place preprocess) is tested once, in test_forward.py."""

from __future__ import annotations

import copy
import math

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter
from torch import nn

from pami_lightning import PAMI, Blur, Constant, ModelCall, SlidingWindow
from pami_lightning.metrics import Deletion, Insertion, PointingGame, _causal, boxes_to_mask
from pami_lightning.metrics.functional import curve_auc, deletion, deletion_curves, insertion, insertion_curves

from helpers.images import normalize, random_images
from helpers.models import make_cnn


def sum_logits(x: torch.Tensor) -> torch.Tensor:
    """metrics.md's end-to-end model: logits [sum(x) - 5, 0]."""
    s = x.flatten(1).sum(1)
    return torch.stack([s - 5, torch.zeros_like(s)], dim=1)


sum_model = ModelCall(sum_logits, modules=())  # a pure function: no module to put in eval mode


X = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
SAL = torch.tensor([[[0.1, 0.4], [0.3, 0.2]]])
DELETION_CURVE = torch.tensor([0.993307, 0.952574, 0.5, 0.017986, 0.006693])


def scipy_blur(x: torch.Tensor, kernel_size: int, sigma: float) -> torch.Tensor:
    """RISE's substrate written out: scipy gaussian_filter of a delta as a dense 2-D kernel, zero padding."""
    delta = np.zeros((kernel_size, kernel_size))
    delta[kernel_size // 2, kernel_size // 2] = 1.0
    k = torch.from_numpy(gaussian_filter(delta, sigma)).float()
    c = x.shape[1]
    return F.conv2d(x, k.expand(c, 1, kernel_size, kernel_size), padding=kernel_size // 2, groups=c)


def rise_curve(model, start, finish, saliency, step, target, preprocess=None) -> torch.Tensor:
    """RISE's CausalMetric loop (one forward per step), with a stable order: [n + 1] scores."""
    c, h, w = start.shape
    n = math.ceil(h * w / step)
    order = np.argsort(-saliency.flatten().numpy(), kind="stable")
    cur, fin = start.clone().reshape(c, -1), finish.reshape(c, -1)
    scores = []
    with torch.no_grad():
        for i in range(n + 1):
            x = cur.reshape(1, c, h, w)
            out = model(preprocess(x) if preprocess else x)
            scores.append(out.softmax(1)[0, target].item())
            idx = order[step * i : step * (i + 1)]
            cur[:, idx] = fin[:, idx]
    return torch.tensor(scores)


class Recorder(nn.Module):
    """Wraps a model and records each call's batch size."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.calls: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(x.shape[0])
        return self.inner(x)


# ------------------------------------------------------------------ worked vectors (metrics.md)


@pytest.mark.parametrize(
    "curve, auc",
    [([1, 1, 1, 1, 1], 1.0), ([0, 0.25, 0.5, 0.75, 1], 0.5), ([1, 0, 0, 0, 0], 0.125), ([0.2, 0.9, 1, 1, 1], 0.875), ([1, 0.5, 0.25, 0.125, 0.0625], 0.3515625)],
)
def test_auc_vectors(curve, auc):
    assert curve_auc(torch.tensor(curve, dtype=torch.float64)).item() == pytest.approx(auc, abs=1e-12)


def test_end_to_end_deletion_and_insertion_vectors():
    dele = deletion_curves(sum_model, X, SAL, step=1)[0]
    torch.testing.assert_close(dele, DELETION_CURVE, atol=1e-5, rtol=0)
    # Insertion from black is the complement here: sigmoid(s - 5) = 1 - sigmoid(5 - s).
    ins = insertion_curves(sum_model, X, SAL, step=1, substrate=Constant(0.0))[0]
    torch.testing.assert_close(ins, 1 - DELETION_CURVE, atol=1e-5, rtol=0)
    assert deletion(sum_model, X, SAL, step=1).item() == pytest.approx(0.492640, abs=1e-5)
    assert insertion(sum_model, X, SAL, step=1, substrate=Constant(0.0)).item() == pytest.approx(0.507360, abs=1e-5)
    metric = Deletion(sum_model, step=1)
    metric.update(SAL, images=X)
    assert metric.compute().item() == pytest.approx(0.492640, abs=1e-5)
    torch.testing.assert_close(metric.curve()[1], DELETION_CURVE, atol=1e-5, rtol=0)
    torch.testing.assert_close(metric.curve()[0], torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0]))


def test_rise_blur_kernel_and_all_ones_values():
    blur = Blur(11, 5)
    k = blur.kernel
    assert k.sum().item() == pytest.approx(1.0, abs=1e-12)
    assert k[5, 5].item() == pytest.approx(0.00883263, abs=1e-8)
    assert k[0, 0].item() == pytest.approx(0.00773664, abs=1e-8)
    ones = torch.ones(1, 1, 224, 224)
    out = blur.substrate(ones)[0, 0]
    assert out[112, 112].item() == pytest.approx(1.0, abs=1e-6)
    assert out[0, 0].item() == pytest.approx(0.299199, abs=1e-6)
    assert out[0, 112].item() == pytest.approx(0.546991, abs=1e-6)
    assert Blur(49, 100).substrate(ones)[0, 0, 0, 0].item() == pytest.approx(0.260309, abs=1e-6)


# ------------------------------------------------------------------ against a plain RISE loop


@pytest.mark.parametrize("kind", ["insertion", "deletion"])
def test_curves_match_the_plain_rise_loop(kind):
    model = make_cnn()
    images = random_images(3, 12, seed=2)
    # Few distinct values: many ties, so the stable order matters.
    heatmaps = torch.randint(0, 4, (3, 12, 12), generator=torch.Generator().manual_seed(1)).float()
    blurred = scipy_blur(images, 11, 5.0)
    curves_fn = insertion_curves if kind == "insertion" else deletion_curves
    got = curves_fn(model, images, heatmaps, step=5, batch_size=7, preprocess=normalize)  # 144 px: last step partial
    assert got.shape == (3, 30)
    for i in range(3):
        target = model(normalize(images[i : i + 1])).argmax(1).item()
        start, finish = (blurred[i], images[i]) if kind == "insertion" else (images[i], torch.zeros_like(images[i]))
        want = rise_curve(model, start, finish, heatmaps[i], 5, target, normalize)
        torch.testing.assert_close(got[i], want, atol=1e-5, rtol=0)


def test_points_of_several_images_share_full_batches_and_results_do_not_depend_on_batch_size():
    model = Recorder(make_cnn())
    images, heatmaps = random_images(3, 12, seed=3), torch.rand(3, 12, 12)
    ref = insertion_curves(model, images, heatmaps, step=5, batch_size=1000)
    model.calls.clear()
    got = insertion_curves(model, images, heatmaps, step=5, batch_size=7)
    torch.testing.assert_close(got, ref, atol=1e-6, rtol=0)
    # 90 inputs: the 3 clean images first (their top-1 class, and the last point), then the other
    # 87 step images, in 12 full batches of 7 and a rest of 6.
    assert model.calls == [7] * 12 + [6]


def test_model_is_not_a_submodule_and_copies_share_it():
    model = make_cnn()
    metric = Insertion(model, preprocess=nn.BatchNorm2d(3))  # a module preprocess stays unregistered too
    metric.persistent(True)
    assert set(metric.state_dict()) == {"insertion_auc_sum", "insertion_count", "insertion_curve_sum"} and list(metric.children()) == []
    assert not any(p is q for p in metric.parameters() for q in model.parameters())
    clone = metric.clone()
    assert clone.model is model and copy.deepcopy(metric).model is model
    metric.to("cpu")
    assert metric.model is model


def test_forward_runs_the_model_once_per_point_and_accumulates():
    model = Recorder(make_cnn())
    images, heatmaps = random_images(4, 12, seed=5), torch.rand(4, 12, 12)
    metric = Deletion(model, step=16, batch_size=64)
    batch_value = metric(heatmaps[:2], images=images[:2])
    # One batch: the clean images (top-1 and first point), 8 other points per image, one all-black
    # image for both last points -- and no second update()
    assert model.calls == [2 + 16 + 1]
    metric(heatmaps[2:], images=images[2:])
    whole = Deletion(model, step=16)
    whole.update(heatmaps, images=images)
    assert metric.compute().item() == pytest.approx(whole.compute().item(), abs=1e-6)
    torch.testing.assert_close(metric.curve()[1], whole.curve()[1])
    assert batch_value.item() == pytest.approx(curve_auc(deletion_curves(model, images[:2], heatmaps[:2], step=16)).mean().item(), abs=1e-6)
    # AUC of the mean curve == mean AUC
    assert curve_auc(whole.curve()[1]).item() == pytest.approx(whole.compute().item(), abs=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_step_and_n_steps_count_pixels_exactly(dtype):
    # The model counts the pixels still present; deleting onto zeros leaves H*W - threshold(i).
    count = ModelCall(lambda x: x.flatten(1).float().sum(1), output="identity", modules=())
    ones, sal = torch.ones(1, 1, 3, 5, dtype=dtype), torch.rand(1, 3, 5)
    by_step = deletion_curves(count, ones, sal, step=4)[0]
    assert by_step.tolist() == [15, 11, 7, 3, 0]  # ceil(15 / 4) = 4 steps, the last one partial
    by_n = deletion_curves(count, ones, sal, n_steps=4)[0]
    assert by_n.tolist() == [15 - math.ceil(i * 15 / 4) for i in range(5)]  # [15, 11, 7, 3, 0]
    assert deletion_curves(count, ones, sal, n_steps=6).shape == (1, 7)
    # n_steps: one curve length for images of any size
    metric = Deletion(count, n_steps=6)
    metric.update(torch.rand(1, 3, 5), images=torch.ones(1, 1, 3, 5))
    metric.update(torch.rand(1, 8, 8), images=torch.ones(1, 1, 8, 8))
    assert metric.curve()[1].shape == (7,)


def test_heatmaps_are_resized_and_targets_can_be_given():
    model = make_cnn()
    images, small = random_images(2, 12, seed=6), torch.rand(2, 6, 6)
    big = F.interpolate(small[:, None], size=(12, 12), mode="bilinear", align_corners=False)[:, 0]
    torch.testing.assert_close(insertion_curves(model, images, small, step=9), insertion_curves(model, images, big, step=9))
    by_int = deletion_curves(model, images, big, 3, step=9)
    torch.testing.assert_close(by_int, deletion_curves(model, images, big, torch.tensor([3, 3]), step=9))
    torch.testing.assert_close(by_int, deletion_curves(model, images, big, [3, 3], step=9))
    want = rise_curve(model, images[1], torch.zeros(3, 12, 12), big[1], 9, 3)
    torch.testing.assert_close(by_int[1], want, atol=1e-5, rtol=0)


def test_insertion_and_deletion_errors():
    model = make_cnn()
    images, heatmaps = random_images(2, 8), torch.rand(2, 8, 8)
    with pytest.raises(ValueError, match="NaN or inf"):
        Insertion(model).update(torch.full((2, 8, 8), float("nan")), images=images)
    with pytest.raises(ValueError, match="same number of samples"):
        Insertion(model).update(heatmaps[:1], images=images)
    with pytest.raises(ValueError, match=r"\[B, h, w\]"):
        Insertion(model).update(heatmaps[:, None], images=images)
    with pytest.raises(ValueError, match="floating-point"):
        Insertion(model).update(heatmaps, images=(images * 255).byte())
    with pytest.raises(ValueError, match="out of range"):
        Deletion(model).update(heatmaps, images=images, target=7)
    with pytest.raises(ValueError, match="out of range"):
        Insertion(model).update(heatmaps, images=images, target=7)
    with pytest.raises(ValueError, match="one class per image"):
        Deletion(model).update(heatmaps, images=images, target=[1, 2, 3])
    with pytest.raises(ValueError, match="needs the images"):
        Deletion(model).update(heatmaps)
    with pytest.raises(ValueError, match="step"):
        Insertion(model, step=0)
    with pytest.raises(ValueError, match="n_steps"):
        Insertion(model, n_steps=0)
    with pytest.raises(ValueError, match="batch_size"):
        Deletion(model, batch_size=0)
    with pytest.raises(ValueError, match="output"):
        Deletion(model, output="logits")
    with pytest.raises(TypeError, match="callable"):
        Deletion("resnet")
    metric = Deletion(model, step=8)
    with pytest.raises(ValueError, match="update"):
        metric.curve()
    metric.update(heatmaps, images=images)
    with pytest.raises(ValueError, match="pass n_steps="):
        metric.update(torch.rand(1, 10, 10), images=random_images(1, 10))


@pytest.mark.parametrize("cls, higher", [(Insertion, True), (Deletion, False)])
def test_flags_and_plot(cls, higher):
    metric = cls(make_cnn(), step=20)
    assert metric.higher_is_better is higher and metric.full_state_update is False and metric.is_differentiable is False
    assert (metric.plot_lower_bound, metric.plot_upper_bound) == (0.0, 1.0)
    metric.update(torch.rand(2, 10, 10), images=random_images(2, 10))
    fig, ax = metric.plot()  # the mean curve with its AUC
    assert fig is not None and len(ax.lines) == 1 and len(ax.lines[0].get_xdata()) == 6
    fig, _ = metric.plot([metric.compute(), metric.compute()])
    assert fig is not None
    matplotlib.pyplot.close("all")


# ------------------------------------------------------------------ known answer: PAMI on a model that looks at one box


class BoxLogit(nn.Module):
    """Class 0's logit is 20 * (mean of the box - 0.6): only the 8x8 box at rows 10..17, cols 28..35
    matters, and its score rises steeply as the (bright) box appears."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        box = x[:, :, 10:18, 28:36].mean(dim=(1, 2, 3))
        return torch.stack([20 * (box - 0.6), torch.zeros_like(box)], dim=1)


def test_known_answer_pami_points_at_the_box_and_beats_a_random_map():
    g = torch.Generator().manual_seed(0)
    images = 0.05 + 0.15 * torch.rand(3, 3, 48, 48, generator=g)  # dark textured background
    images[:, :, 10:18, 28:36] = 0.9 + 0.1 * torch.rand(3, 3, 8, 8, generator=g)  # bright box
    model = BoxLogit()
    pami = PAMI(model, partition=SlidingWindow(radius=6, stride=2), masker=Constant(0.0), batch_size=128)
    maps, target = pami.explain(images, return_target=True)
    assert target.tolist() == [0, 0, 0]
    masks = boxes_to_mask([[28, 10, 36, 18]], (48, 48)).expand(3, 48, 48)
    pointing = PointingGame(tolerance=0)
    pointing.update(maps, masks)
    assert pointing.compute().item() == 1.0
    random_maps = torch.rand(3, 48, 48, generator=g)
    auc = {}
    for name, heat in (("pami", maps), ("random", random_maps)):
        for cls in (Insertion, Deletion):
            metric = cls(model, step=48, batch_size=64)  # Insertion starts from RISE's Blur(11, 5)
            metric.update(heat, images=images)
            auc[name, cls.__name__] = metric.compute().item()
    assert auc["pami", "Insertion"] > auc["random", "Insertion"] + 0.15
    assert auc["pami", "Deletion"] < auc["random", "Deletion"] - 0.15
    assert auc["pami", "Insertion"] > auc["pami", "Deletion"]


# ------------------------------------------------------------------ no input twice, curves unchanged


def plain_curves(kind, model, images, heatmaps, step, substrate, target=None):
    """The plain RISE loop over every image (one forward per point), as a [B, n + 1] tensor."""
    rows = []
    blurred = substrate.substrate(images)
    for i in range(images.shape[0]):
        t = int(model(images[i : i + 1]).argmax(1)) if target is None else int(target[i])
        start, finish = (blurred[i], images[i]) if kind == "insertion" else (images[i], blurred[i])
        rows.append(rise_curve(model, start, finish, heatmaps[i], step, t))
    return torch.stack(rows)


@pytest.mark.parametrize("kind", ["insertion", "deletion"])
@pytest.mark.parametrize("substrate", [Constant(0.0), Blur(11, 5)], ids=["constant", "blur"])
@pytest.mark.parametrize("step", [5, 16, 48], ids=["30_points_image_by_image", "10_points_vectorised", "4_points"])
@pytest.mark.parametrize("incremental", [False, True], ids=["bits", "row_after_row"])
def test_curves_equal_the_plain_loop_on_every_build_path(kind, substrate, step, incremental, monkeypatch):
    # Large CPU images build each step image from the one before; small ones with bit masks.
    monkeypatch.setattr(_causal, "_INCREMENTAL_MIN", 0 if incremental else 2**62)
    model = make_cnn()
    images = random_images(5, 12, seed=8)
    heatmaps = torch.randint(0, 3, (5, 12, 12), generator=torch.Generator().manual_seed(2)).float()  # ties
    fn = insertion_curves if kind == "insertion" else deletion_curves
    want = plain_curves(kind, model, images, heatmaps, step, substrate)
    for batch_size in (3, 64):
        got = fn(model, images, heatmaps, step=step, substrate=substrate, batch_size=batch_size)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def dyadic(b: int, size: int, seed: int) -> torch.Tensor:
    """Images of multiples of 1/8: every sum the model below takes is exact in float32."""
    return torch.randint(0, 9, (b, 3, size, size), generator=torch.Generator().manual_seed(seed)).float() / 8


class SumModel(nn.Module):
    """Logits [sum(x) / 64 - 2, mean of channel 0 - 0.5, 0]: exact on dyadic images, per row."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(x.shape[0])
        s = x.flatten(1).sum(1)
        return torch.stack([s / 64 - 2, x[:, 0].flatten(1).sum(1) / x[0, 0].numel() - 0.5, torch.zeros_like(s)], dim=1)


@pytest.mark.parametrize("kind", ["insertion", "deletion"])
@pytest.mark.parametrize("step", [3, 20])
@pytest.mark.parametrize("size", [8, 112])  # 3 x 112 x 112 values: built row after row on a CPU
def test_curves_are_bit_for_bit_the_plain_loop_with_an_exact_model(kind, step, size):
    model = SumModel()
    if size > 8:
        step *= 150  # 84 / 14 steps
    images, heatmaps = dyadic(4, size, seed=1), torch.randint(0, 4, (4, size, size), generator=torch.Generator().manual_seed(5)).float()
    substrate = Constant(0.25)
    fn = insertion_curves if kind == "insertion" else deletion_curves
    want = plain_curves(kind, model, images, heatmaps, step, substrate)
    assert torch.equal(fn(model, images, heatmaps, step=step, substrate=substrate, batch_size=5), want)
    target = torch.tensor([0, 1, 1, 2])
    want = plain_curves(kind, model, images, heatmaps, step, substrate, target=target)
    assert torch.equal(fn(model, images, heatmaps, target, step=step, substrate=substrate, batch_size=5), want)


@pytest.mark.parametrize("kind", ["insertion", "deletion"])
def test_no_input_runs_twice(kind):
    model = SumModel()
    images, heatmaps = dyadic(3, 8, seed=2), torch.rand(3, 8, 8)
    fn = insertion_curves if kind == "insertion" else deletion_curves
    points = 64 // 16 + 1  # 5
    # target=None: the clean images give the top-1 class and the clean point; a constant substrate
    # is one image for all.
    fn(model, images, heatmaps, step=16, substrate=Constant(0.0), batch_size=100)
    assert model.calls == [3 + 3 * (points - 2) + 1]
    model.calls.clear()
    fn(model, images, heatmaps, step=16, substrate=Constant(0.0), batch_size=4)
    assert model.calls == [4, 4, 4, 1]  # always full batches
    # A given target without the clean pass: the clean image is a step image like the others.
    model.calls.clear()
    fn(model, images, heatmaps, [0, 1, 2], step=16, substrate=Constant(0.0), batch_size=100)
    assert model.calls == [3 * (points - 1) + 1]
    # A substrate that differs per image (a blur) is run per image; a clean pass given as clean= is not run again.
    clean = ModelCall(model).clean(images, torch.tensor([0, 1, 2]))
    model.calls.clear()
    with_clean = fn(model, images, heatmaps, step=16, substrate=Blur(3, 1), clean=clean, batch_size=100)
    assert model.calls == [3 * (points - 1)]
    assert torch.equal(with_clean, fn(model, images, heatmaps, [0, 1, 2], step=16, substrate=Blur(3, 1)))
    # One image: nothing to share.
    model.calls.clear()
    fn(model, images[:1], heatmaps[:1], 0, step=16, substrate=Constant(0.0))
    assert model.calls == [points]


def test_clean_must_match_the_target_and_the_images():
    model = SumModel()
    images, heatmaps = dyadic(2, 8, seed=3), torch.rand(2, 8, 8)
    clean = ModelCall(model).clean(images)
    with pytest.raises(ValueError, match="differ"):
        deletion_curves(model, images, heatmaps, (clean.target + 1) % 3, clean=clean)
    with pytest.raises(ValueError, match="clean must be"):
        deletion_curves(model, images[:1], heatmaps[:1], clean=clean)


def test_a_shared_substrate_scores_any_output_structure_per_target():
    def score(outputs, target):
        return outputs["logits"].float().softmax(1).gather(1, target[:, None]).squeeze(1)

    inner = make_cnn()
    call = ModelCall(inner, forward=lambda m, x: {"logits": m(x)}, output=score)
    images, heatmaps = random_images(4, 12, seed=9), torch.rand(4, 12, 12)
    target = torch.tensor([0, 3, 3, 1])
    got = deletion_curves(call, images, heatmaps, target, step=16, batch_size=5)
    want = plain_curves("deletion", inner, images, heatmaps, 16, Constant(0.0), target=target)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_the_old_update_order_still_runs_with_a_warning():
    model = make_cnn()
    images, heatmaps = random_images(2, 12, seed=4), torch.rand(2, 12, 12)
    new, old = Insertion(model, step=16), Insertion(model, step=16)
    new.update(heatmaps, images=images)
    with pytest.warns(FutureWarning, match=r"update\(heatmaps, images=images\)") as record:
        old.update(images, heatmaps)
    assert record[0].filename == __file__  # points at the caller's line
    assert torch.equal(new.compute(), old.compute()) and torch.equal(new.curve()[1], old.curve()[1])
    with pytest.raises(ValueError, match="needs the images"):
        Deletion(model).update(heatmaps, torch.rand(2, 12, 12) > 0.5)
