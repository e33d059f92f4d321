"""PAMICallback's logs read back after real fits: TensorBoard event files, an offline W&B run, CSVLogger files.

Three fits in all (the loggers are combined): what each logger holds, at which step, and that the
captions carry the numbers the callback computed.
"""

from __future__ import annotations

import csv
import glob
import io
import itertools
import json
import os
import re
from typing import Any

import numpy as np
import pytest
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from PIL import Image

from pami_lightning.callbacks import Pictures

from helpers.callbacks import callback, loaders, scores, trainer
from helpers.logs import read_tensorboard, read_wandb_history
from helpers.models import TinyLit

METRICS = ["pointing_game", "energy_pointing_game", "insertion", "deletion"]
SAMPLES = (3, 9, 15, 21)  # 4 samples evenly spaced over 24 validation images
# 32 x 32 images are drawn 4x larger, nearest-neighbour: 128 px tiles.
TILE = 128


def _fit(tmp_path: Any, logger: Any, epochs: int = 2, **kwargs: Any) -> tuple:
    cb = callback(pointing_tolerance=0, **kwargs)
    tr = trainer(tmp_path, [cb], logger=logger, max_epochs=epochs)
    tr.fit(TinyLit(), *loaders())
    return tr, cb


def _png(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def _check_tensorboard(log_dir: str, final: dict[str, float], epochs: int) -> Any:
    ea = read_tensorboard(log_dir)
    val_steps = [e.step for e in ea.Scalars("val_loss")]
    assert len(val_steps) == epochs
    for name in METRICS:
        events = ea.Scalars(f"pami/{name}")
        assert [e.step for e in events] == val_steps
        assert events[-1].value == pytest.approx(final[f"pami/{name}"], rel=1e-6)
    assert [e.step for e in ea.Scalars("pami/stability")] == val_steps[1:]
    tags = set(ea.Tags()["images"])
    assert {"pami/overlays", "pami/timeline", *(f"pami/sample_{i}" for i in SAMPLES)} == tags
    for tag in tags:
        assert [e.step for e in ea.Images(tag)] == val_steps
    for i in SAMPLES:
        card = ea.Images(f"pami/sample_{i}")[-1]
        # Caption over input | overlay | colour bar, the tiles enlarged to a readable size.
        assert card.height > TILE + 40 and card.width > 2 * TILE
    timeline = [_png(e.encoded_image_string) for e in ea.Images("pami/timeline")]
    # One more labelled column per explained validation (the first column is the inputs).
    widths = [t.shape[1] for t in timeline]
    assert all(b - a == TILE + 4 for a, b in itertools.pairwise(widths)) and timeline[0].shape[0] > 4 * TILE
    texts = ea.Tensors("pami/captions/text_summary")
    assert [t.step for t in texts] == val_steps
    return ea


def _caption_numbers(caption: str) -> dict[str, float]:
    return {key: float(value) for key, value in re.findall(r"(p\(label\)|p\(pred\)|min|max) (-?\d+\.\d+)", caption)}


def test_tensorboard_and_csv_get_captioned_pictures_and_per_sample_numbers(tmp_path: Any) -> None:
    tb, files = TensorBoardLogger(tmp_path, name="tb"), CSVLogger(tmp_path, name="csv")
    tr, cb = _fit(tmp_path, [tb, files], epochs=3)
    ea = _check_tensorboard(tb.log_dir, scores(tr), epochs=3)

    with open(os.path.join(files.log_dir, "metrics.csv")) as f:
        lines = f.read().splitlines()
    last = dict(zip(lines[0].split(","), lines[-1].split(","), strict=False))
    for name in [*METRICS, "stability"]:
        assert float(last[f"pami/{name}"]) == pytest.approx(scores(tr)[f"pami/{name}"], rel=1e-6)
    folders = sorted(glob.glob(os.path.join(files.log_dir, "pami", "step_*")))
    steps = [e.step for e in ea.Scalars("val_loss")]
    assert [os.path.basename(f) for f in folders] == [f"step_{s:06d}" for s in steps]
    pngs = ["overlays.png", "timeline.png", *(f"sample_{i}.png" for i in SAMPLES)]
    assert sorted(os.listdir(folders[-1])) == sorted(["maps.npz", "captions.csv", *pngs])

    for epoch, (folder, step, text) in enumerate(zip(folders, steps, ea.Tensors("pami/captions/text_summary"), strict=True)):
        arrays = np.load(os.path.join(folder, "maps.npz"))
        with open(os.path.join(folder, "captions.csv"), newline="", encoding="utf-8") as f:
            saved = list(csv.DictReader(f))
        assert [int(r["sample"]) for r in saved] == arrays["indices"].tolist() == list(SAMPLES)
        for row, maps, p_pred, pred in zip(saved, arrays["maps"], arrays["p_pred"], arrays["predictions"], strict=True):
            assert (int(row["epoch"]), int(row["step"]), int(row["prediction"])) == (epoch, step, pred)
            assert float(row["p_pred"]) == pytest.approx(float(p_pred)) and float(row["map_max"]) == pytest.approx(float(maps.max()))
            numbers = _caption_numbers(row["caption"])
            assert numbers["p(pred)"] == pytest.approx(float(p_pred), abs=5e-4)
            assert numbers["min"] == pytest.approx(float(maps.min()), abs=5e-4) and numbers["max"] == pytest.approx(float(maps.max()), abs=5e-4)
            assert row["caption"].startswith(f"#{row['sample']} · epoch {epoch} · step {step} · label ")
        # TensorBoard's text holds the same captions; its pictures are the same PNGs as the files.
        markdown = text.tensor_proto.string_val[0].decode()
        assert all(f"| {r['sample']} | {r['caption']} |" in markdown for r in saved)
        for name in pngs:
            tag = "pami/" + name[: -len(".png")]
            (event,) = [e for e in ea.Images(tag) if e.step == step]
            with open(os.path.join(folder, name), "rb") as f:
                assert f.read() == event.encoded_image_string, name
    arrays = np.load(os.path.join(folders[-1], "maps.npz"))
    assert np.array_equal(arrays["maps"], cb.last_maps.numpy())
    assert set(arrays) >= {"labels", "predictions", "targets", "p_target", "p_pred", "p_label", "pointing_game", "energy_pointing_game", "stability"}
    with open(os.path.join(files.log_dir, "pami", "table.csv"), newline="", encoding="utf-8") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 4 * 3 and {"map_min", "map_max", "p_label", "p_pred"} <= set(table[0])


def _wandb_logger(tmp_path: Any, monkeypatch: Any) -> Any:
    pytest.importorskip("wandb")
    from lightning.pytorch.loggers import WandbLogger

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    # Tables with images are staged as artifacts under the data dir: keep them in tmp_path to read back.
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb-data"))
    return WandbLogger(project="pami-tests", save_dir=str(tmp_path), offline=True)


def _staged_tables(tmp_path: Any) -> list[dict[str, Any]]:
    """The image tables W&B staged for upload (offline runs keep the JSON with the images' paths there), each once."""
    tables: dict[str, dict[str, Any]] = {}
    for path in glob.glob(os.path.join(tmp_path, "wandb-data", "artifacts", "staging", "*")):
        with open(path, "rb") as f:
            head = f.read(1)
        if head == b"{":
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
            if data.get("_type") == "table":  # staged twice (the run's file and its artifact's)
                tables[json.dumps(data, sort_keys=True)] = data
    return list(tables.values())


def _check_wandb(tmp_path: Any, final: dict[str, float], steps: list[int]) -> list[dict[str, Any]]:
    (run,) = glob.glob(os.path.join(tmp_path, "wandb", "offline-run-*"))
    rows = read_wandb_history(run)
    scalars = [r for r in rows if "pami/pointing_game" in r]
    assert [r["trainer/global_step"] for r in scalars] == steps
    for name in METRICS:
        assert scalars[-1][f"pami/{name}"] == pytest.approx(final[f"pami/{name}"], rel=1e-6)
    assert "pami/stability" not in scalars[0] and scalars[-1]["pami/stability"] == pytest.approx(final["pami/stability"], rel=1e-6)
    samples = [r for r in rows if "pami/samples/captions" in r]
    # Images land on the same trainer/global_step as the scalars of their validation.
    assert [r["trainer/global_step"] for r in samples] == steps
    assert samples[0]["pami/samples/count"] == 4 and samples[0]["pami/samples/captions"][0].startswith(f"#3 · epoch 0 · step {steps[0]} · label ")
    for r in samples:
        # input | overlay | colour bar, with the object mask as W&B's interactive overlay.
        for name in r["pami/samples/filenames"]:
            with Image.open(os.path.join(run, "files", name)) as image:
                assert image.size[1] == TILE and image.size[0] > 2 * TILE
        for masks in r["pami/samples/all_masks"]:
            with Image.open(os.path.join(run, "files", masks["ground_truth"]["path"])) as mask:
                values = np.asarray(mask)
                assert values.shape[0] == TILE and set(np.unique(values)) == {0, 1}
    media = os.path.join(run, "files", "media")
    assert len(glob.glob(os.path.join(media, "images", "pami", "overlays_*.png"))) == len(steps)
    assert len(glob.glob(os.path.join(media, "images", "pami", "timeline_*.png"))) == len(steps)
    (last_table,) = [r["pami/table/path"] for r in rows if "pami/table/path" in r][-1:]
    with open(os.path.join(run, "files", last_table)) as f:
        table = json.load(f)
    assert table["columns"][:7] == ["sample", "validation", "epoch", "label", "prediction", "p_target", "p_pred"]
    assert len(table["data"]) == 4 * len(steps)  # sample x validation
    # This validation's samples with their pictures and per-sample scores, sortable in the W&B UI.
    staged = [t for t in _staged_tables(tmp_path) if "image" in t["columns"]]
    assert len(staged) == len(steps)
    per_sample = {"pointing_game", "energy_pointing_game"} | ({"insertion", "deletion"} & set(table["columns"]))
    for t in staged:
        assert {"sample", "caption", "p_label", "p_pred", "map_min", "map_max", *per_sample} <= set(t["columns"])
        assert len(t["data"]) == 4
        for row in t["data"]:
            image = row[t["columns"].index("image")]
            assert image["_type"] == "image-file" and image["height"] == TILE and "ground_truth" in image["masks"]
    return samples


@pytest.mark.slow
def test_wandb_and_tensorboard_at_once_hold_the_same_captions(tmp_path: Any, monkeypatch: Any) -> None:
    import wandb

    tb = TensorBoardLogger(tmp_path, name="tb")
    try:
        tr, _ = _fit(tmp_path, [tb, _wandb_logger(tmp_path, monkeypatch)], epochs=2)
    finally:
        wandb.finish()
    ea = _check_tensorboard(tb.log_dir, scores(tr), epochs=2)
    samples = _check_wandb(tmp_path, scores(tr), steps=[1, 3])
    for row, text in zip(samples, ea.Tensors("pami/captions/text_summary"), strict=True):
        markdown = text.tensor_proto.string_val[0].decode()
        assert all(caption in markdown for caption in row["pami/samples/captions"])


def test_pictures_off_keeps_scores_maps_and_captions_csv(tmp_path: Any) -> None:
    logger = CSVLogger(tmp_path, name="csv")
    tr, _ = _fit(tmp_path, logger, epochs=1, pictures=Pictures(enabled=False, max_images=2))
    (folder,) = glob.glob(os.path.join(logger.log_dir, "pami", "step_*"))
    assert sorted(os.listdir(folder)) == ["captions.csv", "maps.npz"]
    with open(os.path.join(folder, "captions.csv"), newline="", encoding="utf-8") as f:
        assert len(list(csv.DictReader(f))) == 4  # every explained sample, not only the drawn ones
    assert "pami/insertion" in tr.callback_metrics
