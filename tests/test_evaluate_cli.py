"""``pami-evaluate``: a run through the real console script on a tiny generated VOC folder and a saved model; one-line errors."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pami_lightning.evaluate_cli import main

from helpers.evaluation import write_voc
from helpers.models import ColourModel

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("evalcli")
    voc = write_voc(root / "voc")
    torch.save(ColourModel().state_dict(), root / "colour.pt")
    (root / "garbage.pt").write_bytes(b"\x00not a checkpoint")
    return {"voc": voc, "model": root / "colour.pt", "garbage": root / "garbage.pt", "root": root}


def _base(files: dict[str, Path], out: Path) -> list[str]:
    return ["--checkpoint", str(files["model"]), "--module", "helpers.models:ColourModel", "--voc", str(files["voc"]),
            "--classes", "blue,green,red", "--radius", "6", "--stride", "4", "--n-steps", "8", "--batch-size", "3",
            "--accelerator", "cpu", "--bootstrap", "200", "--out", str(out)]


@pytest.mark.slow
def test_console_script_run_writes_the_report(files: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "eval"
    exe = shutil.which("pami-evaluate")
    cmd = [exe] if exe else [sys.executable, "-m", "pami_lightning.evaluate_cli"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([*cmd, *_base(files, out), "--methods", "pami1,random,center", "--only-correct"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    for name in ("run.json", "scores.json", "report.md", "report.csv", "curves.png"):
        assert (out / name).is_file(), name
    with open(out / "report.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["method"] for r in rows[::3]] == ["PAMI-I", "random", "center"]
    assert {r["images"] for r in rows if r["metric"] == "insertion"} == {"5"}  # 7 items, 2 misclassified (the faint box; one class of the two-class image): skipped
    assert "| PAMI-I |" in done.stdout and "2 skipped" in done.stdout
    assert "Explaining images" in done.stderr + done.stdout and "img/s" in done.stderr + done.stdout


def test_resume_in_process_and_tensorboard(files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "eval"
    args = [*_base(files, out), "--methods", "random,center", "--logger", "tensorboard", "--no-progress"]
    assert main(args) == 0
    first = (out / "report.csv").read_text()
    assert main(args) == 0  # everything written: nothing explained again, same report
    assert (out / "report.csv").read_text() == first
    assert list((out / "logs").glob("version_*/events.out.tfevents.*"))
    # Other settings into the same folder: refused in one line.
    assert main([*args[:-3], "--methods", "center", "--no-progress"]) == 2
    assert "holds results of other settings" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"--voc": "missing"}, "--voc: no such folder"),
        ({"--checkpoint": "missing.pt"}, "--checkpoint: file not found"),
        ({"--checkpoint": "GARBAGE"}, "not a PyTorch checkpoint"),
        ({"--module": "helpers.models:Nope"}, "has no attribute 'Nope'"),
        ({"--methods": "pami1,gradcam"}, "--methods: unknown gradcam"),
        ({"--classes": "blue,green"}, "--voc:"),
        ({"--tolerance": "wide"}, "--tolerance must be pixels"),
        ({"--voc": "MODEL"}, "--voc: no such folder"),
    ],
)
def test_user_errors_are_one_line_with_exit_status_2(files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                     change: dict[str, str], message: str) -> None:
    args = [*_base(files, tmp_path / "eval"), "--methods", "random", "--tolerance", "relative"]
    for flag, value in change.items():
        value = {"GARBAGE": str(files["garbage"]), "MODEL": str(files["model"])}.get(value, value)
        args[args.index(flag) + 1] = value if value not in ("missing", "missing.pt") else str(tmp_path / value)
    sys.path.insert(0, str(HERE))
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("pami-evaluate: error: ") and message in err[0], err


def test_two_datasets_or_none_are_errors(files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = _base(files, tmp_path / "eval")
    assert main([*args, "--folder", str(files["voc"])]) == 2
    assert "give one dataset" in capsys.readouterr().err
    i = args.index("--voc")
    assert main(args[:i] + args[i + 2:] + ["--coco", str(tmp_path / "a.json"), "--images", str(files["voc"])]) == 2
    assert "--coco: file not found" in capsys.readouterr().err


@pytest.mark.examples
@pytest.mark.slow
def test_example_evaluate_shapes_fast(tmp_path: Path) -> None:
    """examples/evaluate_shapes.py --fast: the report of the five methods, side by side."""
    script = HERE.parent / "examples" / "evaluate_shapes.py"
    done = subprocess.run([sys.executable, str(script), "--fast", "--out", str(tmp_path / "shapes")], cwd=tmp_path,
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    for method in ("PAMI-I", "PAMI-II", "occlusion", "random", "center"):
        assert f"| {method} |" in done.stdout
    assert (tmp_path / "shapes" / "eval" / "report.csv").is_file() and (tmp_path / "shapes" / "eval" / "curves.png").is_file()
