"""``pami-explain``: round trips through the real console script, flags, and one-line user errors."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from string import Template

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset

from pami_lightning.cli import main

from helpers.models import TinyCNN, TinyLit

HERE = Path(__file__).resolve().parent


def _data(n: int = 32, size: int = 32) -> TensorDataset:
    """Random images labelled by their brightest channel (anything learnable in a few steps)."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 3, size, size, generator=g)
    return TensorDataset(x, x.mean(dim=(2, 3)).argmax(dim=1))


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A Lightning checkpoint, a plain state_dict, a non-square image, and a few broken files."""
    root = tmp_path_factory.mktemp("cli")
    torch.manual_seed(0)
    lit = TinyLit()
    trainer = L.Trainer(max_steps=3, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(lit, DataLoader(_data(), batch_size=8))
    trainer.save_checkpoint(root / "lit.ckpt")

    net = TinyCNN()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05)
    for x, y in DataLoader(_data(), batch_size=8):
        optimizer.zero_grad()
        F.cross_entropy(net(x), y).backward()
        optimizer.step()
    torch.save(net.state_dict(), root / "net.pt")
    torch.save(TinyCNN(num_classes=5).state_dict(), root / "net5.pt")

    pixels = np.random.default_rng(0).integers(60, 120, size=(40, 56, 3), dtype=np.uint8)
    pixels[8:24, 30:50] = (230, 40, 40)  # something for the segmenters and the model to find
    Image.fromarray(pixels).save(root / "image.png")
    (root / "not_an_image.png").write_text("hello")
    (root / "garbage.ckpt").write_bytes(b"\x00not a checkpoint")
    return {p.stem: p for p in root.iterdir()}


def _script(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run the installed console script (``python -m pami_lightning.cli`` when it is not on PATH)."""
    exe = shutil.which("pami-explain")
    cmd = [exe] if exe else [sys.executable, "-m", "pami_lightning.cli"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(cmd + args, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def _check_outputs(out: Path, shape: tuple[int, int]) -> np.ndarray:
    heat = np.load(out.with_suffix(".npy"))
    assert heat.shape == shape and heat.dtype == np.float32 and np.isfinite(heat).all()
    with Image.open(out) as png:
        assert png.size == (shape[1], shape[0]) and png.mode == "RGB"
    return heat


@pytest.mark.slow
def test_console_script_sliding_lightning_checkpoint(files, tmp_path):
    out = tmp_path / "maps" / "sliding.png"  # the folder does not exist yet
    done = _script(["--checkpoint", str(files["lit"]), "--module", "helpers.models:TinyLit", "--image", str(files["image"]),
                    "--radius", "8", "--stride", "4", "--out", str(out)], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    heat = _check_outputs(out, (40, 56))
    assert 0 <= heat.min() < heat.max() <= 1  # softmax probabilities, and not a constant map
    planned, result = done.stdout.splitlines()
    # Said up front, before any forward pass: 10 x 14 windows, and the clean image for the top-1 class.
    assert planned == "pami-explain: 1 image (40x56), 141 forward passes (140 windows + 1 for the top-1 class)"
    assert "141 forward passes in" in result
    # Off a terminal, progress comes as log lines on stderr.
    assert "PAMI: 140/140 forward passes (100%)" in done.stderr


@pytest.mark.slow
def test_console_script_superpixels_second_run_plain_module(files, tmp_path):
    out = tmp_path / "sp.png"
    done = _script(["--checkpoint", str(files["net"]), "--module", "helpers.models:TinyCNN", "--image", str(files["image"]),
                    "--strategy", "superpixels", "--second-run", "--target", "2", "--out", str(out)], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    _check_outputs(out, (40, 56))
    planned, result = done.stdout.splitlines()
    assert planned == ("pami-explain: 1 image (40x56), one forward pass per superpixel of 20 segmentations, in each of two runs: "
                       "counted after segmentation")  # --target: no pass for the top-1 class
    assert result.startswith("class 2:")


@pytest.mark.slow
def test_superpixels_on_a_tiny_image_finishes(files, tmp_path):
    # OpenCV's SEEDS hangs on 3x3 images (and crashes the process on 4x4): the ensemble leaves it out and says so.
    tiny = tmp_path / "tiny.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, size=(3, 3, 3), dtype=np.uint8)).save(tiny)
    out = tmp_path / "tiny_sp.png"
    done = _script(["--checkpoint", str(files["net"]), "--module", "helpers.models:TinyCNN", "--image", str(tiny),
                    "--strategy", "superpixels", "--out", str(out)], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    _check_outputs(out, (3, 3))
    warning = next(line for line in done.stderr.splitlines() if line.startswith("pami-explain: warning:"))
    assert "seeds(num_superpixels=10, num_levels=5)" in warning and "cannot segment 3x3 images" in warning
    assert "the map averages the other 17 segmentations" in warning


def test_score_is_a_deprecated_alias_of_output(files, tmp_path, capsys):
    common = ["--checkpoint", str(files["net"]), "--module", "helpers.models:TinyCNN", "--image", str(files["image"]), "--radius", "8", "--stride", "8"]
    maps = {}
    for flags in (["--output", "identity"], ["--score", "identity"], []):
        out = tmp_path / f"{'_'.join(flags) or 'default'}.png"
        assert main([*common, *flags, "--out", str(out)]) == 0
        maps[tuple(flags)] = np.load(out.with_suffix(".npy"))
        err = capsys.readouterr().err
        assert ("--score is deprecated; use --output" in err) == (flags[:1] == ["--score"]), err
    np.testing.assert_array_equal(maps[("--score", "identity")], maps[("--output", "identity")])
    assert not np.allclose(maps[("--output", "identity")], maps[()])  # logits, not the default softmax probabilities


@pytest.mark.slow
def test_console_script_error_is_one_line_without_traceback(files, tmp_path):
    done = _script(["--checkpoint", str(files["net"]), "--module", "no_such_pkg.models:Net", "--image", str(files["image"]), "--out", str(tmp_path / "o.png")], cwd=tmp_path)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == ["pami-explain: error: --module: no module named 'no_such_pkg.models'; run from the folder "
                                                "that holds it, add that folder to PYTHONPATH, or pass a file path (models.py:ClassName)"]


def test_size_preprocess_and_file_module(files, tmp_path, capsys):
    out = tmp_path / "sized.png"
    args = ["--checkpoint", str(files["net5"]), "--module", f"{HERE / 'helpers' / 'models.py'}:TinyCNN", "--init-args", '{"num_classes": 5}',
            "--image", str(files["image"]), "--size", "24", "20", "--radius", "6", "--stride", "5", "--shape", "square",
            "--masker", "black", "--preprocess", "imagenet", "--target", "4", "--batch-size", "7", "--out", str(out)]
    assert main(args) == 0
    _check_outputs(out, (24, 20))
    planned, result = capsys.readouterr().out.splitlines()
    assert planned == "pami-explain: 1 image (24x20), 20 forward passes (20 windows)"  # 5 x 4 windows at stride 5, --target given
    assert result.startswith("class 4: map 24x20") and "20 forward passes in" in result


def test_custom_normalisation_matches_the_api(files, tmp_path):
    from pami_lightning import PAMI, Blur, SlidingWindow
    from pami_lightning.cli import read_image

    out = tmp_path / "norm.png"
    assert main(["--checkpoint", str(files["net"]), "--module", "helpers.models:TinyCNN", "--image", str(files["image"]),
                 "--radius", "10", "--stride", "6", "--mean", "0.5", "--std", "0.25", "--out", str(out)]) == 0
    net = TinyCNN()
    net.load_state_dict(torch.load(files["net"]))
    expected = PAMI(net, SlidingWindow(10, 6), Blur(), preprocess=lambda x: (x - 0.5) / 0.25).explain(read_image(files["image"]))
    np.testing.assert_allclose(np.load(out.with_suffix(".npy")), expected[0].numpy(), atol=1e-6)


#: Flags that differ from a working call ($name: a file of the fixture) -> what the one-line error says.
ERRORS = {
    "missing image": (["--image", "$root/nope.png"], "--image: file not found"),
    "unreadable image": (["--image", "$not_an_image"], "--image: cannot read"),
    "missing checkpoint": (["--checkpoint", "$root/nope.ckpt"], "--checkpoint: file not found"),
    "garbage checkpoint": (["--checkpoint", "$garbage"], "--checkpoint: cannot read"),
    "garbage lightning checkpoint": (["--checkpoint", "$garbage", "--module", "helpers.models:TinyLit"], "TinyLit.load_from_checkpoint"),
    "checkpoint of another shape": (["--checkpoint", "$net5"], "does not fit TinyCNN"),
    "no colon": (["--module", "helpers.models.TinyCNN"], "must look like pkg.mod:ClassName"),
    "missing module": (["--module", "cli_models_nope:TinyCNN"], "no module named 'cli_models_nope'"),
    "missing file module": (["--module", "$root/nope.py:TinyCNN"], "--module: file not found"),
    # The classes listed are the module's nn.Module subclasses, whatever else helpers.models holds.
    "missing attribute": (["--module", "helpers.models:Tiny"], re.compile(r"has no attribute 'Tiny'; its nn.Module classes: (\w+, )*TinyCNN, TinyLit$", re.M)),
    "not a class": (["--module", "helpers.models:not_a_class"], "is a function, not a class"),
    "not a module": (["--module", "helpers.models:NotAModule"], "is not an nn.Module subclass"),
    "bad init args": (["--init-args", "[1]"], "--init-args must be a JSON object"),
    "wrong init args": (["--init-args", '{"classes": 5}'], "TinyCNN(**{'classes': 5}) failed"),
    "target out of range": (["--target", "7"], "target 7 is out of range for a model with 3 outputs"),
    "second run of windows": (["--second-run"], "--second-run re-segments the first map"),
    "window flags for superpixels": (["--strategy", "superpixels", "--radius", "5"], "--radius shape sliding windows"),
    "mean without std": (["--mean", "0.5"], "--mean and --std go together"),
    "not a png": (["--out", "$root/out.jpg"], "--out must be a .png path"),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_user_errors_are_one_line_with_exit_status_2(case, files, capsys):
    extra, message = ERRORS[case]
    names = {**{k: str(v) for k, v in files.items()}, "root": str(files["image"].parent)}
    args = [Template(a).safe_substitute(names) for a in extra]
    defaults = {"--checkpoint": str(files["net"]), "--module": "helpers.models:TinyCNN", "--image": str(files["image"]),
                "--out": str(files["image"].parent / "err.png")}
    args += [x for flag, value in defaults.items() if flag not in args for x in (flag, value)]
    if "--strategy" not in args:
        args += ["--radius", "8", "--stride", "8"]  # few windows: the errors that need a forward pass stay fast
    assert main(args) == 2
    err = capsys.readouterr().err
    found = message.search(err) if isinstance(message, re.Pattern) else message in err
    assert err.count("\n") == 1 and err.startswith("pami-explain: error: ") and found, err
    assert not (files["image"].parent / "err.png").exists()


def test_help_documents_every_flag():
    from pami_lightning.cli import build_parser

    parser = build_parser()
    undocumented = [a.option_strings for a in parser._actions if a.option_strings and not a.help]
    assert not undocumented
    text = parser.format_help()
    assert "LightningModule" in text and "state_dict" in text  # both ways of loading a model
    assert "--output {softmax,sigmoid,identity}" in text and "deprecated alias of --output" in text
