"""examples/explain_image.py runs end to end with --fast: overlays written, the yellow disc found."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

pytestmark = [pytest.mark.examples, pytest.mark.slow]

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "explain_image.py"


def test_explain_image_example_fast(tmp_path):
    done = subprocess.run([sys.executable, str(EXAMPLE), "--fast", "--out-dir", str(tmp_path / "out"), "--save", str(tmp_path / "disc.pt")],
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    sizes = {}
    for name in ("input", "sliding", "superpixels", "grid"):
        with Image.open(tmp_path / "out" / f"{name}.png") as png:
            sizes[name] = png.size
    assert sizes["input"] == sizes["sliding"] == sizes["superpixels"] == (96, 96)
    assert sizes["grid"] == (3 * 96 + 2 * 4, 96)  # input | sliding | superpixels, 4-pixel gaps
    sliding = next(line for line in done.stdout.splitlines() if line.strip().startswith("sliding:"))
    assert sliding.endswith("on the yellow disc") and "NOT" not in sliding, done.stdout

    # The saved weights are the DiscDetector's: what --checkpoint and pami-explain load.
    spec = importlib.util.spec_from_file_location("explain_image_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.DiscDetector().load_state_dict(torch.load(tmp_path / "disc.pt", weights_only=True))
