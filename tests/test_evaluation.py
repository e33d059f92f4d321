"""Dataset-scale evaluation (pami_lightning.evaluation): explainer adapters, one run's outputs, 2-process DDP equal to
1 process on an uneven split, kill-and-resume equal to an uninterrupted run."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from pami_lightning import PAMI, Blur, Constant, ModelCall, Superpixels
from pami_lightning.data import collate
from pami_lightning.evaluation import (
    CaptumFeatureAblation,
    CaptumOcclusion,
    CenterBaseline,
    ExplanationModule,
    FunctionExplainer,
    PAMIExplainer,
    RandomBaseline,
    as_explainer,
    evaluate,
    load_results,
)
from pami_lightning.evaluation.layout import COLUMNS, read_table
from pami_lightning.metrics.functional import curve_auc, pointing_game, pointing_game_baselines

from helpers.evaluation import CLASSES, dataset, explainers, module, run, trainer, write_voc
from helpers.models import ColourModel

TESTS = Path(__file__).resolve().parent
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ddp_fork needs fork (Linux)")


@pytest.fixture(scope="module")
def voc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_voc(tmp_path_factory.mktemp("voc"))


@pytest.fixture(scope="module")
def reference(voc: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One uninterrupted single-process run (batches of 2 over the 7 items: the last batch holds 1)."""
    out = tmp_path_factory.mktemp("reference")
    run(voc, out)
    return out


def batch(voc: Path, indices: list[int]) -> dict:
    ds = dataset(voc)
    return collate([ds[i] for i in indices])


def assert_same_results(a: Path, b: Path) -> None:
    """Same table (but wall time and shard names), same maps and curves, same aggregates."""
    ra, rb = load_results(a), load_results(b)
    assert ra.config == rb.config
    for c in COLUMNS:
        if c in ("seconds", "shard", "row"):
            continue
        x, y = ra.columns[c], rb.columns[c]
        assert x.dtype == y.dtype and len(x) == len(y), c
        assert np.array_equal(x, y, equal_nan=x.dtype.kind == "f"), c
    for m in ra.methods:
        np.testing.assert_allclose(ra.maps(m).numpy(), rb.maps(m).numpy(), rtol=0, atol=1e-6)
        for kind in ("insertion", "deletion"):
            assert np.array_equal(ra.curves(m, kind), rb.curves(m, kind)), (m, kind)
    assert ra.scores is not None and rb.scores is not None
    for m in ra.methods:
        for k, v in ra.scores[m].items():
            assert np.allclose(v, rb.scores[m][k], rtol=1e-12, atol=0, equal_nan=True), (m, k)


# ---------------------------------------------------------------- adapters


def test_pami_adapter_returns_pamis_maps_and_counts_passes_per_image(voc: Path) -> None:
    model = ColourModel()
    b = batch(voc, [0, 1, 2])
    x, t = b["image"], b["label"]
    for name, pami in explainers(model).items():
        if not isinstance(pami, PAMI):
            continue
        e = as_explainer(pami)
        assert isinstance(e, PAMIExplainer) and e.name == name
        assert torch.equal(e(x, t), pami.explain(x, t))
        want = [pami.partition.masks(x[i]).shape[0] for i in range(3)]  # one pass per part: windows, or each image's superpixels
        assert e.passes(x).tolist() == want
        if name == "PAMI-II":
            assert len(set(want)) > 1  # superpixels: a count per image


def test_pami_adapter_splits_a_second_run_by_image(voc: Path) -> None:
    model = ColourModel()
    pami = PAMI(model, Superpixels([("slic", {"n_segments": 10, "compactness": 20})]), masker=Constant(0.0), second_run=True, batch_size=7, progress=False)
    e = PAMIExplainer(pami)
    b = batch(voc, [0, 3, 5])
    x, t = b["image"], b["label"]
    together = e(x, t)
    passes = e.passes(x).tolist()
    alone, alone_passes = [], []
    for i in range(3):  # each image alone: its passes are its own
        alone.append(e(x[i : i + 1], t[i : i + 1]))
        alone_passes.append(e.passes(x[i : i + 1]).item())
    assert passes == alone_passes
    assert torch.allclose(together, torch.cat(alone), atol=1e-6)
    assert all(p > pami.partition.masks(x[i]).shape[0] for i, p in enumerate(passes))  # run 1 + run 2


def test_random_baseline_depends_on_the_sample_not_the_batch() -> None:
    images = torch.zeros(3, 3, 8, 10)
    r = RandomBaseline(seed=1)
    together = r(images, torch.zeros(3, dtype=torch.long), index=torch.tensor([4, 9, 2]))
    alone = torch.cat([r(images[:1], torch.zeros(1, dtype=torch.long), index=torch.tensor([i])) for i in (4, 9, 2)])
    assert together.shape == (3, 8, 10) and torch.equal(together, alone)
    assert not torch.equal(together[0], together[1])
    assert not torch.equal(together, RandomBaseline(seed=2)(images, torch.zeros(3, dtype=torch.long), index=torch.tensor([4, 9, 2])))
    with pytest.raises(ValueError, match="index"):
        r(images, torch.zeros(3, dtype=torch.long))


@pytest.mark.parametrize("tolerance", ["relative", 0, 5])
def test_center_baseline_scores_torchrays_center_point(tolerance: object) -> None:
    g = torch.Generator().manual_seed(0)
    masks = torch.zeros(40, 32, 48, dtype=torch.bool)
    for m in masks:
        y, x = torch.randint(0, 28, (1,), generator=g).item(), torch.randint(0, 42, (1,), generator=g).item()
        m[y : y + 4, x : x + 6] = True
    maps = CenterBaseline()(torch.zeros(40, 3, 32, 48), torch.zeros(40, dtype=torch.long))
    assert maps[0].flatten().argmax().item() == 16 * 48 + 24  # the pixel (H // 2, W // 2)
    hits = pointing_game(maps, masks, tolerance=tolerance, reduction="none")
    assert torch.equal(hits, pointing_game_baselines(masks, tolerance=tolerance)["center"])
    assert 0 < hits.sum() < 40


def test_function_explainer_checks_what_it_returns() -> None:
    images, target = torch.rand(2, 3, 8, 8), torch.tensor([0, 1])

    def saliency(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=1, keepdim=True)

    e = as_explainer(saliency)
    assert isinstance(e, FunctionExplainer) and e.name == "saliency" and e(images, target).shape == (2, 8, 8)
    assert e.passes(images) is None and FunctionExplainer(saliency, passes=3).passes(images) == 3
    with pytest.raises(ValueError, match=r"must return maps \[B, H, W\]"):
        FunctionExplainer(lambda x, t: x, name="bad")(images, target)
    with pytest.raises(ValueError, match="method name"):
        as_explainer(saliency, name="my method/1")
    with pytest.raises(ValueError, match="two explainers are named"):
        ExplanationModule(ColourModel(), [RandomBaseline(), RandomBaseline()], num_classes=3)


def test_captum_occlusion_scores_the_label_probability_like_captum(voc: Path) -> None:
    import captum.attr

    model = ColourModel()
    b = batch(voc, [0, 2, 4])
    x, t = b["image"], b["label"]
    e = CaptumOcclusion(model, window=8, stride=4, baselines=0.0)
    maps = e(x, t)
    want = captum.attr.Occlusion(lambda z: model(z).softmax(dim=1)).attribute(x, sliding_window_shapes=(3, 8, 8), strides=(3, 4, 4), baselines=0.0, target=t)
    assert maps.shape == (3, 32, 32)
    torch.testing.assert_close(maps, want.sum(dim=1), rtol=1e-5, atol=1e-6)
    assert e.passes(x) == 7 * 7 + 1  # windows + Captum's clean pass
    blurred = CaptumOcclusion(model, window=8, stride=4, baselines=Blur(11, 5))(x, t)
    assert not torch.allclose(blurred, maps)


def test_captum_feature_ablation_over_grid_cells_and_superpixels(voc: Path) -> None:
    import captum.attr

    model = ColourModel()
    b = batch(voc, [0, 1])
    x, t = b["image"], b["label"]
    grid = CaptumFeatureAblation(model, features="grid", cell=8)
    maps = grid(x, t)
    cells = maps.view(2, 4, 8, 4, 8)
    assert torch.equal(cells, cells[:, :, :1, :, :1].expand_as(cells))  # one value per cell
    assert grid.passes(x) == 16 + 1
    want = captum.attr.FeatureAblation(lambda z: model(z).softmax(dim=1)).attribute(x, target=t, feature_mask=grid.feature_mask(x)[:, None])
    torch.testing.assert_close(maps, want.sum(dim=1), rtol=1e-5, atol=1e-6)
    sp = CaptumFeatureAblation(model, features="slic", n_segments=10)
    assert sp(x, t).shape == (2, 32, 32) and sp.passes(x) >= 2
    with pytest.raises(ValueError, match="feature ids"):
        CaptumFeatureAblation(model, features=lambda z: z[:, 0])(x, t)


def test_the_module_pickles_with_its_explainers_sharing_its_model() -> None:
    # ddp_spawn sends the module to every process: the explainers must arrive calling the module's own model.
    m = module(ColourModel())
    clone = pickle.loads(pickle.dumps(m))
    assert list(clone.explainers) == list(m.explainers)
    model = clone.models[0]
    assert clone.explainers["PAMI-I"].pami.model is model and clone.explainers["occlusion"].call.model is model  # type: ignore[attr-defined]


# ---------------------------------------------------------------- one run


def test_a_run_writes_the_documented_layout_and_consistent_scores(reference: Path) -> None:
    res = load_results(reference)
    methods = ["PAMI-I", "PAMI-II", "occlusion", "random", "center"]
    assert res.methods == methods and res.config["num_classes"] == len(CLASSES) and res.config["dataset"]["size"] == 7
    assert len(res) == 7 * 5 and res.indices().tolist() == list(range(7))
    assert len(read_table(str(reference))["index"]) == len(res)  # nothing written twice
    assert sorted(os.listdir(reference / "samples")) == [f"run000-rank000-batch{b:06d}.csv" for b in range(4)]
    first = np.load(reference / "maps" / "PAMI-I" / "run000-rank000-batch000000.npy")
    assert first.dtype == np.float16 and first.shape == (2, 32, 32)
    assert np.load(reference / "insertion" / "occlusion" / "run000-rank000-batch000003.npy").shape == (1, 9)
    summary = res.summary()
    for m in methods:
        t = res.table(m)
        assert t["index"].tolist() == list(range(7)) and t["explained"].all()
        assert set(t["pointing_hit"].tolist()) <= {0.0, 1.0}
        for kind in ("insertion", "deletion"):
            curves = res.curves(m, kind)
            assert curves.shape == (7, 9)
            assert np.array_equal(curve_auc(torch.from_numpy(curves)).numpy(), t[f"{kind}_auc"])
            # per class as the paper reports: the mean over classes of each class's mean
            per_class = np.mean([t[f"{kind}_auc"][t["label"] == k].astype(np.float64).mean() for k in range(3)])
            assert summary[m][f"{kind}_per_class"] == pytest.approx(per_class, rel=1e-12)
        assert summary[m]["pointing_game"] == pytest.approx(t["pointing_hit"].mean(), rel=1e-6)
        assert res.maps(m).by_index(5).shape == (32, 32)
        # The synced metric states and the merged table give the same aggregates.
        assert res.scores is not None
        for k, v in res.scores[m].items():
            assert np.allclose(v, summary[m][k], rtol=1e-12, atol=0), (m, k)
    assert summary["PAMI-I"]["pointing_game"] > summary["random"]["pointing_game"]
    assert summary["PAMI-I"]["insertion"] > summary["random"]["insertion"]
    assert summary["PAMI-I"]["deletion"] < summary["random"]["deletion"]
    assert summary["PAMI-I"]["passes"] == 64 and summary["occlusion"]["passes"] == 50 and summary["random"]["passes"] == 0
    res.to_csv(str(reference.parent / "all.csv"))
    lines = (reference.parent / "all.csv").read_text().splitlines()
    assert lines[0] == ",".join(COLUMNS) and len(lines) == len(res) + 1
    run_json = json.loads((reference / "run.json").read_text())
    assert run_json["tolerance"] == "relative" and run_json["insertion_substrate"] == "Blur(kernel_size=11, sigma=5)"


def test_only_correct_keeps_misclassified_images_in_the_table_unexplained(voc: Path, tmp_path: Path) -> None:
    model = ColourModel()
    m = ExplanationModule(model, [RandomBaseline(), CenterBaseline()], metrics=("pointing_game",), only_correct=True)
    res = evaluate(trainer(), m, dataset(voc), tmp_path, batch_size=4)
    assert res is not None
    t = res.table("random")
    wrong = ~t["correct"]
    assert t["id"][wrong].tolist() == ["000004", "000006"]  # two classes at 0.5 each: one is top-1; the faint box
    assert np.array_equal(t["explained"], t["correct"]) and np.isnan(t["pointing_hit"][wrong]).all() and (t["row"][wrong] == -1).all()
    assert res.summary()["random"]["images"] == 5 and res.summary()["random"]["skipped"] == 2
    assert len(res.maps("random")) == 5 and np.isnan(res.table("random")["insertion_auc"]).all()


class _Probabilities(nn.Module):
    """The colour model behind an object: its outputs rank no classes unless ``output=`` reads them."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = ColourModel()

    def forward(self, x: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(probs=self.inner(x).softmax(1))


def test_a_model_whose_outputs_rank_no_classes_is_never_counted_correct(voc: Path, tmp_path: Path) -> None:
    call = ModelCall(_Probabilities(), output=lambda out, t: out.probs.gather(1, t[:, None])[:, 0])
    only = ExplanationModule(call, [CenterBaseline()], metrics=("pointing_game",), only_correct=True)
    with pytest.raises(ValueError, match=r"only_correct=True .* outputs have no classes to rank"):
        evaluate(trainer(), only, dataset(voc), tmp_path / "only", batch_size=4)
    res = evaluate(trainer(), ExplanationModule(call, [CenterBaseline()], metrics=("pointing_game",)), dataset(voc), tmp_path / "all", batch_size=4)
    assert res is not None
    t = res.table("center")
    assert (t["prediction"] == -1).all() and not t["correct"].any() and t["explained"].all()  # unknown, not "the label"
    items = dataset(voc)
    probs = ColourModel()(torch.stack([items[int(i)]["image"] for i in t["index"]])).softmax(1)
    assert np.allclose(t["p_label"], probs[torch.arange(len(t["label"])), torch.as_tensor(t["label"])].numpy(), atol=1e-6)


# ---------------------------------------------------------------- distributed and resumed runs


@linux_only
@pytest.mark.ddp
@pytest.mark.slow
def test_two_process_ddp_equals_one_process_on_an_uneven_split(voc: Path, reference: Path, tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    run(voc, out, devices=2)  # rank 0 explains items 0, 2, 4, 6 and rank 1 items 1, 3, 5
    shards = sorted(os.listdir(out / "samples"))
    assert shards == ["run000-rank000-batch000000.csv", "run000-rank000-batch000001.csv", "run000-rank001-batch000000.csv", "run000-rank001-batch000001.csv"]
    raw = read_table(str(out))
    assert len(raw["index"]) == 7 * 5 and len({(m, i) for m, i in zip(raw["method"], raw["index"], strict=True)}) == 7 * 5  # no sample twice
    assert_same_results(out, reference)


@linux_only
@pytest.mark.ddp
@pytest.mark.slow
def test_ddp_resume_with_fewer_samples_left_than_ranks(voc: Path, reference: Path, tmp_path: Path) -> None:
    # One sample left for two ranks: rank 1 gets a marked repeat, runs its (empty) batch, and joins the metric sync.
    out = tmp_path / "resumed"
    shutil.copytree(reference, out)
    (out / "samples" / "run000-rank000-batch000003.csv").unlink()  # index 6, as if killed before its table was written
    (out / "scores.json").unlink()
    run(voc, out, devices=2)
    assert not (out / "maps" / "PAMI-I" / "run000-rank000-batch000003.npy").exists()  # the orphan of the killed batch, deleted
    assert sorted(os.listdir(out / "samples"))[-1] == "run001-rank000-batch000000.csv"
    assert_same_results(out, reference)


@pytest.mark.slow
def test_a_killed_run_resumed_ends_with_the_uninterrupted_results(voc: Path, reference: Path, tmp_path: Path) -> None:
    out = tmp_path / "killed"
    # A slow model (0.2 s per forward call) in a separate process, killed once its first batch is written.
    proc = subprocess.Popen([sys.executable, "-m", "helpers.evaluation", str(voc), str(out), "0.2"], cwd=TESTS, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not (out / "samples").is_dir() or not os.listdir(out / "samples"):
            assert proc.poll() is None, f"the run ended before it was killed: {proc.stderr.read().decode()[-2000:] if proc.stderr else ''}"
            assert time.monotonic() < deadline, "no batch written in 120 s"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    written = sorted(os.listdir(out / "samples"))
    assert 1 <= len(written) < 4 and not (out / "scores.json").exists()
    run(voc, out)  # the same command again
    raw = read_table(str(out))
    assert len(raw["index"]) == 7 * 5  # no sample explained twice
    assert {s.split("-")[0] for s in raw["shard"]} == {"run000", "run001"}
    assert_same_results(out, reference)
    # Nothing half-written is left.
    assert not [f for _, _, files in os.walk(out) for f in files if ".tmp-" in f]


def test_running_a_finished_folder_again_explains_nothing(voc: Path, reference: Path, tmp_path: Path) -> None:
    out = tmp_path / "again"
    shutil.copytree(reference, out)
    run(voc, out)
    assert sorted(os.listdir(out / "samples")) == sorted(os.listdir(reference / "samples"))
    assert_same_results(out, reference)  # scores.json rewritten from the table: the same numbers


def test_resuming_with_other_settings_is_an_error(voc: Path, reference: Path, tmp_path: Path) -> None:
    out = tmp_path / "other"
    shutil.copytree(reference, out)
    other = module(ColourModel(), tolerance=15)
    with pytest.raises(ValueError, match=r"holds results of other settings \(tolerance: 'relative' -> 15\)"):
        evaluate(trainer(), other, dataset(voc), out)
    with pytest.raises(FileNotFoundError, match="not the output folder"):
        load_results(tmp_path)


def test_resuming_with_other_weights_is_an_error(voc: Path, reference: Path, tmp_path: Path) -> None:
    # A retrained model under the same command must not be handed the old model's maps.
    out = tmp_path / "retrained"
    shutil.copytree(reference, out)
    retrained = ColourModel()
    with torch.no_grad():
        retrained.scale.fill_(21.0)
    with pytest.raises(ValueError, match=r"holds results of other settings \(weights: "):
        evaluate(trainer(), module(retrained), dataset(voc), out)
