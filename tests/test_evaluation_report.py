"""The Table-4 report (pami_lightning.evaluation.report) on a folder written by the real pipeline: CIs, counts, CSV = Markdown, loggers."""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path

import numpy as np
import pytest

from pami_lightning.evaluation import build_report, load_results, log_report, write_report
from pami_lightning.evaluation.report import bootstrap_means

from helpers.evaluation import run, write_voc


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    voc = write_voc(tmp_path_factory.mktemp("voc"))
    folder = tmp_path_factory.mktemp("eval")
    run(voc, folder)
    return folder


def test_report_numbers_brackets_and_counts(out: Path) -> None:
    results = load_results(out)
    report = write_report(results, resamples=500, seed=1)
    summary = results.summary()
    assert report.methods == results.methods == ["PAMI-I", "PAMI-II", "occlusion", "random", "center"]
    for method in report.methods:
        assert report.images[method] == summary[method]["images"] == 7
        for metric in report.metrics:
            e = report.estimates[method][metric]
            # The headline is the paper's per-class mean; the loader's summary says the same.
            assert e.per_class == pytest.approx(summary[method][f"{metric}_per_class"], abs=1e-6)
            assert e.per_image == pytest.approx(summary[method][metric], abs=1e-6)
            assert e.per_class_low <= e.per_class <= e.per_class_high
            assert e.per_image_low <= e.per_image <= e.per_image_high
            assert e.images == (summary[method]["pointing_images"] if metric == "pointing_game" else 7)
            assert e.classes == 3
    # Seeded: the same folder, the same report.
    again = build_report(results, resamples=500, seed=1)
    assert again.rows() == report.rows()
    assert (out / "curves.png").stat().st_size > 1000


def test_bootstrap_means_match_a_loop() -> None:
    rng = np.random.default_rng(0)
    values, labels = rng.random(20), rng.integers(0, 4, 20)
    draws = rng.integers(0, 20, size=(30, 20))
    per_class, per_image = bootstrap_means(values, labels, draws, 4)
    for r in range(30):
        v, lab = values[draws[r]], labels[draws[r]]
        assert per_image[r] == pytest.approx(v.mean())
        assert per_class[r] == pytest.approx(np.mean([v[lab == k].mean() for k in np.unique(lab)]))


def _md_cells(text: str) -> dict[tuple[str, str], tuple[float, float, float]]:
    """(method, column title) -> (mean, low, high) of the report's first (per-class) table."""
    table = text.split("### ")[1]
    lines = [ln for ln in table.splitlines() if ln.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    out = {}
    for ln in lines[2:]:
        cells = [c.strip() for c in ln.strip("|").split("|")]
        for title, cell in zip(header[1:-1], cells[1:-1], strict=True):
            m = re.fullmatch(r"([\d.]+) \[([\d.]+), ([\d.]+)\]", cell)
            assert m, cell
            out[(cells[0], title)] = (float(m[1]), float(m[2]), float(m[3]))
        assert cells[-1] == "7"
    return out


def test_csv_and_markdown_hold_the_same_numbers(out: Path) -> None:
    write_report(load_results(out), resamples=200)
    md = _md_cells((out / "report.md").read_text())
    titles = {"pointing_game": "Pointing game", "insertion": "Insertion AUC", "deletion": "Deletion AUC"}
    with open(out / "report.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 5 * 3 == len(md)
    for row in rows:
        mean, low, high = md[(row["method"], titles[row["metric"]])]
        for shown, full in ((mean, row["per_class"]), (low, row["per_class_low"]), (high, row["per_class_high"])):
            assert abs(shown - float(full)) <= 5e-4 + 1e-9


def test_tensorboard_read_back(out: Path, tmp_path: Path) -> None:
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = TensorBoardLogger(str(tmp_path), name="tb")
    report = log_report(load_results(out), logger)
    logger.experiment.flush()
    acc = EventAccumulator(logger.log_dir, size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    flat = report.flat()
    for method in report.methods:
        for metric in report.metrics:
            key = f"eval/{method}/{metric}"
            assert key in tags
            assert acc.Scalars(key)[0].value == pytest.approx(flat[key], abs=1e-6)
    assert acc.Scalars("eval/random/images")[0].value == 7
    assert "eval/report/text_summary" in acc.Tags()["tensors"]  # the Markdown table, as add_text


def test_a_logger_without_tensorboard_gets_the_scalars(out: Path) -> None:
    class Recorder:
        def __init__(self) -> None:
            self.metrics: dict[str, float] = {}

        def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
            self.metrics.update(metrics)

    rec = Recorder()
    report = log_report(load_results(out), [rec, None])
    assert rec.metrics["eval/PAMI-I/pointing_game"] == report.estimates["PAMI-I"]["pointing_game"].per_class
    assert all(math.isfinite(v) for v in rec.metrics.values())
