"""The training demo (examples/train_shapes.py): the logged pointing game rises as the model learns."""

from __future__ import annotations

import importlib.util
import os
from typing import Any

import pytest

from helpers.logs import read_tensorboard

pytestmark = [pytest.mark.examples, pytest.mark.slow]

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "examples", "train_shapes.py")


def test_demo_pointing_game_rises_while_training(tmp_path: Any, capsys: Any) -> None:
    spec = importlib.util.spec_from_file_location("train_shapes", EXAMPLE)
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)

    final = demo.main(["--fast", "--max-epochs", "1", "--log-dir", str(tmp_path)])

    out = capsys.readouterr().out
    assert "Logs: " in out and "pami/pointing_game" in out
    (run,) = [os.path.join(root) for root, _, files in os.walk(tmp_path) if any(f.startswith("events.out") for f in files)]
    ea = read_tensorboard(run)
    pointing = [e.value for e in ea.Scalars("pami/pointing_game")]
    steps = [e.step for e in ea.Scalars("pami/pointing_game")]
    # The untrained model (validated before fit, at step 0), then after the epoch.
    assert steps[0] == 0 and len(steps) == 2
    assert pointing[0] <= 0.25 and pointing[-1] >= 0.75, pointing
    assert final["pami/pointing_game"] == pointing[-1]
    insertion = [e.value for e in ea.Scalars("pami/insertion")]
    assert insertion[-1] > insertion[0]
    assert {"pami/overlays", "pami/timeline"} <= set(ea.Tags()["images"])
