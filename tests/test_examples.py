"""examples/clever_hans.py and examples/train_shapes_wandb.py run as CI runs them (``--fast``, subprocesses).

Both import ``train_shapes`` from their own folder, which Python puts on ``sys.path`` for a script.
"""

from __future__ import annotations

import glob
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from helpers.logs import read_tensorboard, read_wandb_history

pytestmark = [pytest.mark.examples, pytest.mark.slow]

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_example(name: str, cwd: Path, *args: str, env: dict[str, str]) -> str:
    """Run ``examples/<name>.py --fast *args`` in ``cwd`` with ``env``; its stdout."""
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / f"{name}.py"), "--fast", *args],
        cwd=cwd, env={**env, "CI": "true"}, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return done.stdout


def test_clever_hans_maps_point_at_the_watermark(tmp_path: Any) -> None:
    out = run_example("clever_hans", tmp_path, "--log-dir", "logs", "--summary", "summary.json", env=dict(os.environ))
    summary = json.loads((tmp_path / "summary.json").read_text())

    # The story: the leaky split looks solved, the clean one is near chance (4 classes), and the maps
    # point at the logo rather than the shape.
    assert summary["leaky_accuracy"] >= 0.95 and summary["clean_accuracy"] <= 0.45, summary
    assert summary["pointing_game_object"] <= 0.25 and summary["maxima_on_watermark"] >= 0.75, summary
    assert "map maxima on the logo:" in out and "The maps point at the logo, not the shape" in out

    (run,) = {str(p.parent) for p in (tmp_path / "logs").rglob("events.out.tfevents.*")}
    ea = read_tensorboard(run)
    watermark = ea.Scalars("pami_watermark/pointing_game")
    # Untrained (validated before fit, step 0), then after each of the 2 epochs: the maps move to the logo.
    assert [e.step for e in watermark] == [e.step for e in ea.Scalars("val_clean/acc")] and len(watermark) == 3
    assert watermark[0].value < watermark[-1].value == pytest.approx(summary["maxima_on_watermark"])
    assert ea.Scalars("val_leaky/acc")[-1].value == pytest.approx(summary["leaky_accuracy"])
    assert ea.Scalars("pami/pointing_game")[-1].value == pytest.approx(summary["pointing_game_object"])
    # Only the first callback draws: the second one scores the same maps.
    images = set(ea.Tags()["images"])
    assert {"pami/overlays", "pami/timeline"} <= images and not any(t.startswith("pami_watermark/") for t in images)


def test_train_shapes_wandb_writes_an_offline_run(tmp_path: Any) -> None:
    pytest.importorskip("wandb")
    # Offline must be the example's default; no WANDB_* either (an in-process wandb test leaves
    # WANDB_SERVICE behind, which would make the example write through this process's service).
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(WANDB_SILENT="true", WANDB_CONFIG_DIR=str(tmp_path / "config"), WANDB_CACHE_DIR=str(tmp_path / "cache"))
    out = run_example("train_shapes_wandb", tmp_path, "--save-dir", "logs", env=env)

    (run,) = glob.glob(str(tmp_path / "logs" / "wandb" / "offline-run-*"))
    assert f"wandb sync {run}" in out
    media = Path(run, "files", "media", "images", "pami")
    # Validated before fit, then after each of the 2 epochs: three overlay grids, timelines and 8 samples each.
    assert len(list(media.glob("overlays_*.png"))) == len(list(media.glob("timeline_*.png"))) == 3
    assert len(list(media.glob("samples_*.png"))) == 3 * 8

    rows = [r for r in read_wandb_history(run) if "pami/pointing_game" in r]
    assert [r["trainer/global_step"] for r in rows] == sorted({r["trainer/global_step"] for r in rows}) and len(rows) == 3
    pointing = [r["pami/pointing_game"] for r in rows]
    assert pointing[0] <= 0.25 and pointing[-1] >= 0.75, pointing  # the demo's story, as with TensorBoard
    final = dict(re.findall(r"(pami/\w+) (-?[\d.]+)", out.split("Final scores:")[1].splitlines()[0]))
    for name in ("pointing_game", "energy_pointing_game", "insertion", "deletion", "stability"):
        assert f"{rows[-1][f'pami/{name}']:.3f}" == final[f"pami/{name}"]
