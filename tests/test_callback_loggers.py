"""PAMICallback's logs read back: TensorBoard event files, an offline W&B run, CSVLogger files."""

from __future__ import annotations

import glob
import io
import json
import os
from typing import Any

import numpy as np
import pytest
from pami_lightning.callbacks import Pictures

from callback_helpers import TinyNet, callback, loaders, read_tensorboard, read_wandb_history, scores, trainer
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from PIL import Image

METRICS = ["pointing_game", "energy_pointing_game", "insertion", "deletion"]
# 4 samples of 32 x 32: the grid holds the inputs over their overlays, the timeline one row per sample.
GRID = (2 * 34 + 2, 4 * 34 + 2)


def _fit(tmp_path: Any, logger: Any, epochs: int = 2, **kwargs: Any) -> tuple:
    cb = callback(pointing_tolerance=0, **kwargs)
    tr = trainer(tmp_path, [cb], logger=logger, max_epochs=epochs)
    tr.fit(TinyNet(), *loaders())
    return tr, cb


def _check_tensorboard(log_dir: str, final: dict[str, float], epochs: int) -> None:
    ea = read_tensorboard(log_dir)
    val_steps = [e.step for e in ea.Scalars("val_loss")]
    assert len(val_steps) == epochs
    for name in METRICS:
        events = ea.Scalars(f"pami/{name}")
        assert [e.step for e in events] == val_steps
        assert events[-1].value == pytest.approx(final[f"pami/{name}"], rel=1e-6)
    assert [e.step for e in ea.Scalars("pami/stability")] == val_steps[1:]
    tags = set(ea.Tags()["images"])
    assert {"pami/overlays", "pami/timeline", "pami/sample_3", "pami/sample_9", "pami/sample_15", "pami/sample_21"} == tags
    for tag in tags:
        assert [e.step for e in ea.Images(tag)] == val_steps
    grid = ea.Images("pami/overlays")[-1]
    assert (grid.height, grid.width) == GRID
    timeline = [Image.open(io.BytesIO(e.encoded_image_string)) for e in ea.Images("pami/timeline")]
    # One column per explained validation (plus the inputs' column).
    assert [im.size[0] for im in timeline] == [2 + (k + 2) * 34 for k in range(epochs)]


def test_tensorboard_images_and_scalars_at_the_validation_step(tmp_path: Any) -> None:
    logger = TensorBoardLogger(tmp_path, name="tb")
    tr, _ = _fit(tmp_path, logger, epochs=3)
    _check_tensorboard(logger.log_dir, scores(tr), epochs=3)


def _wandb_logger(tmp_path: Any, monkeypatch: Any) -> Any:
    pytest.importorskip("wandb")
    from lightning.pytorch.loggers import WandbLogger

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    return WandbLogger(project="pami-tests", save_dir=str(tmp_path), offline=True)


def _check_wandb(tmp_path: Any, final: dict[str, float], steps: list[int]) -> None:
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
    assert samples[0]["pami/samples/count"] == 4 and samples[0]["pami/samples/captions"][0].startswith("#3 · label ")
    media = os.path.join(run, "files", "media")
    for r in samples:
        for name in r["pami/samples/filenames"]:
            with Image.open(os.path.join(run, "files", name)) as image:
                assert image.size == (32, 32)
    assert len(glob.glob(os.path.join(media, "images", "pami", "overlays_*.png"))) == len(steps)
    assert len(glob.glob(os.path.join(media, "images", "pami", "timeline_*.png"))) == len(steps)
    (last_table,) = [r["pami/table/path"] for r in rows if "pami/table/path" in r][-1:]
    with open(os.path.join(run, "files", last_table)) as f:
        table = json.load(f)
    assert table["columns"][:7] == ["sample", "validation", "epoch", "label", "prediction", "p_target", "p_pred"]
    assert len(table["data"]) == 4 * len(steps)  # sample x validation


def test_wandb_offline_run_holds_scores_images_and_table(tmp_path: Any, monkeypatch: Any) -> None:
    import wandb

    logger = _wandb_logger(tmp_path, monkeypatch)
    try:
        tr, _ = _fit(tmp_path, logger, epochs=2)
    finally:
        wandb.finish()
    _check_wandb(tmp_path, scores(tr), steps=[1, 3])


def test_tensorboard_and_wandb_at_once(tmp_path: Any, monkeypatch: Any) -> None:
    import wandb

    tb = TensorBoardLogger(tmp_path, name="tb")
    try:
        tr, _ = _fit(tmp_path, [tb, _wandb_logger(tmp_path, monkeypatch)], epochs=2)
    finally:
        wandb.finish()
    _check_tensorboard(tb.log_dir, scores(tr), epochs=2)
    _check_wandb(tmp_path, scores(tr), steps=[1, 3])


def test_csv_logger_gets_scalars_pngs_and_maps(tmp_path: Any) -> None:
    logger = CSVLogger(tmp_path, name="csv")
    tr, cb = _fit(tmp_path, logger, epochs=2)
    with open(os.path.join(logger.log_dir, "metrics.csv")) as f:
        lines = f.read().splitlines()
    header = lines[0].split(",")
    last = dict(zip(header, lines[-1].split(",")))
    for name in METRICS + ["stability"]:
        assert float(last[f"pami/{name}"]) == pytest.approx(scores(tr)[f"pami/{name}"], rel=1e-6)
    folders = sorted(glob.glob(os.path.join(logger.log_dir, "pami", "step_*")))
    assert [os.path.basename(f) for f in folders] == ["step_000001", "step_000003"]
    assert sorted(os.listdir(folders[-1])) == sorted(["maps.npz", "overlays.png", "timeline.png"] + [f"sample_{i}.png" for i in (3, 9, 15, 21)])
    arrays = np.load(os.path.join(folders[-1], "maps.npz"))
    assert np.array_equal(arrays["maps"], cb._history.last_maps.numpy())
    assert arrays["indices"].tolist() == [3, 9, 15, 21]
    assert set(arrays) >= {"labels", "predictions", "targets", "p_target", "p_pred", "pointing_game", "energy_pointing_game", "stability"}
    with Image.open(os.path.join(folders[-1], "overlays.png")) as image:
        assert image.size == GRID[::-1]


def test_log_images_off_keeps_scores_and_maps(tmp_path: Any) -> None:
    logger = CSVLogger(tmp_path, name="csv")
    tr, _ = _fit(tmp_path, logger, epochs=1, pictures=Pictures(enabled=False, max_images=2))
    (folder,) = glob.glob(os.path.join(logger.log_dir, "pami", "step_*"))
    assert os.listdir(folder) == ["maps.npz"]
    assert "pami/insertion" in tr.callback_metrics
