"""The paper's Table 4 from an evaluation folder: methods x (pointing game, insertion AUC, deletion AUC) with bootstrap CIs.

::

    from pami_lightning.evaluation import load_results, log_report, write_report

    results = load_results("out/")
    report = write_report(results)        # out/report.md, out/report.csv, out/curves.png
    print(report.to_markdown())
    log_report(report, trainer.logger)    # eval/<method>/<metric> scalars (+ the table as text / a W&B table)

The headline of each cell is the paper's average: the mean over classes of the per-class mean
(classes without a scored image left out); the mean over images is reported next to it. The 95%
intervals are percentile bootstraps over images: images are resampled with replacement (the
same resamples for every method, given the same images, so that methods are compared on paired
draws), and the per-class and per-image means are recomputed on each resample.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .layout import CURVES, atomic_write
from .results import Results

__all__ = ["MetricEstimate", "Report", "build_report", "write_report", "plot_curves", "log_report", "bootstrap_means", "REPORT_METRICS"]

#: Metric key -> (column of the per-sample table, title in the report).
REPORT_METRICS: dict[str, tuple[str, str]] = {
    "pointing_game": ("pointing_hit", "Pointing game"),
    "insertion": ("insertion_auc", "Insertion AUC"),
    "deletion": ("deletion_auc", "Deletion AUC"),
}
#: Columns of ``report.csv`` (one row per (method, metric)).
CSV_COLUMNS = ("method", "metric", "images", "classes", "per_class", "per_class_low", "per_class_high",
               "per_image", "per_image_low", "per_image_high")


@dataclass(frozen=True)
class MetricEstimate:
    """One metric of one method: the per-class and per-image means with their bootstrap intervals.

    ``images``: images scored (for the pointing game, those with a mask); ``classes``: classes among them.
    """

    per_class: float
    per_class_low: float
    per_class_high: float
    per_image: float
    per_image_low: float
    per_image_high: float
    images: int
    classes: int


@dataclass
class Report:
    """The comparison table: ``estimates[method][metric]`` plus how the intervals were made."""

    methods: list[str]
    metrics: list[str]
    estimates: dict[str, dict[str, MetricEstimate]]
    images: dict[str, int]  #: explained images per method
    skipped: dict[str, int]  #: images not explained per method (``only_correct``)
    confidence: float = 0.95
    resamples: int = 1000
    seed: int = 0
    mean_curves: dict[str, dict[str, list[float]]] = field(default_factory=dict)  #: method -> kind -> mean curve

    def rows(self) -> list[dict[str, Any]]:
        """The rows of ``report.csv`` as dicts keyed by :data:`CSV_COLUMNS`."""
        out = []
        for method in self.methods:
            for metric in self.metrics:
                e = self.estimates[method][metric]
                out.append({"method": method, "metric": metric, **{k: getattr(e, k) for k in CSV_COLUMNS[2:]}})
        return out

    def flat(self) -> dict[str, float]:
        """Every number by logger key: ``eval/<method>/<metric>`` (the per-class headline), ``..._low``/``_high``,
        ``..._per_image`` (and its ``_low``/``_high``), ``eval/<method>/images``."""
        out: dict[str, float] = {}
        for method in self.methods:
            out[f"eval/{method}/images"] = float(self.images[method])
            for metric in self.metrics:
                e = self.estimates[method][metric]
                base = f"eval/{method}/{metric}"
                out[base], out[f"{base}_low"], out[f"{base}_high"] = e.per_class, e.per_class_low, e.per_class_high
                out[f"{base}_per_image"], out[f"{base}_per_image_low"], out[f"{base}_per_image_high"] = e.per_image, e.per_image_low, e.per_image_high
        return out

    def to_csv(self) -> str:
        """``report.csv``'s text: full precision (``repr`` of the float), empty cells for NaN."""
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        for row in self.rows():
            writer.writerow(["" if isinstance(v, float) and math.isnan(v) else (repr(v) if isinstance(v, float) else v) for v in row.values()])
        return buf.getvalue()

    def table_cells(self, per_class: bool = True, digits: int = 3) -> tuple[list[str], list[list[str]]]:
        """The Markdown table's header and rows: ``mean [low, high]`` per metric, then the images."""
        header = ["Method", *(REPORT_METRICS[m][1] for m in self.metrics), "Images"]
        rows = []
        for method in self.methods:
            cells = [method]
            for metric in self.metrics:
                e = self.estimates[method][metric]
                mean, low, high = (e.per_class, e.per_class_low, e.per_class_high) if per_class else (e.per_image, e.per_image_low, e.per_image_high)
                cells.append(f"{_fmt(mean, digits)} [{_fmt(low, digits)}, {_fmt(high, digits)}]")
            skipped = self.skipped.get(method, 0)
            cells.append(f"{self.images[method]}" + (f" ({skipped} skipped)" if skipped else ""))
            rows.append(cells)
        return header, rows

    def markdown_table(self, per_class: bool = True, digits: int = 3) -> str:
        """One Markdown table: per-class (default) or per-image means with their intervals."""
        return _markdown_table(*self.table_cells(per_class, digits))

    def to_markdown(self, digits: int = 3) -> str:
        """``report.md``: the per-class table (the paper's numbers), then the per-image table, then how to read them."""
        level = f"{100 * self.confidence:g}%"
        parts = []
        for per_class, title in ((True, "Mean over classes (the paper's average)"), (False, "Mean over images")):
            parts.append(f"### {title}, with {level} bootstrap intervals\n\n" + self.markdown_table(per_class, digits))
        notes = (f"Intervals: percentile bootstrap over images ({self.resamples} resamples, seed {self.seed}). "
                 "Pointing game: hit rate over images with a box of the class (higher is better); insertion AUC: higher is better; "
                 "deletion AUC: lower is better.")
        return "\n\n".join(parts) + "\n\n" + notes + "\n"


def _fmt(value: float, digits: int) -> str:
    return "n/a" if math.isnan(value) else f"{value:.{digits}f}"


def _markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def bootstrap_means(values: np.ndarray, labels: np.ndarray, draws: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-class and per-image means of ``values`` on each resample.

    Args:
        values: float ``[n]`` per-image scores (no NaN).
        labels: int ``[n]`` their classes.
        draws: int ``[R, n]`` indices into ``values``, one resample per row.
        num_classes: the number of classes.

    Returns:
        ``(per_class [R], per_image [R])``: the mean over classes present in the resample of their
        mean, and the mean over the resample's images.
    """
    r = draws.shape[0]
    v, lab = values[draws], labels[draws]  # [R, n]
    # One bincount over (resample, class) cells instead of a loop over resamples.
    cell = (np.arange(r)[:, None] * num_classes + lab).ravel()
    sums = np.bincount(cell, weights=v.ravel(), minlength=r * num_classes).reshape(r, num_classes)
    counts = np.bincount(cell, minlength=r * num_classes).reshape(r, num_classes)
    present = counts > 0
    class_means = np.where(present, sums / np.maximum(counts, 1), 0.0)
    per_class = class_means.sum(axis=1) / present.sum(axis=1)
    return per_class, v.mean(axis=1)


def _estimate(values: np.ndarray, labels: np.ndarray, num_classes: int, resamples: int, confidence: float, seed: int) -> MetricEstimate:
    ok = np.isfinite(values)
    v, lab = values[ok].astype(np.float64), labels[ok].astype(np.int64)
    n = len(v)
    if n == 0:
        nan = math.nan
        return MetricEstimate(nan, nan, nan, nan, nan, nan, images=0, classes=0)
    counts = np.bincount(lab, minlength=num_classes)
    present = counts > 0
    per_class = float(np.mean(np.bincount(lab, weights=v, minlength=num_classes)[present] / counts[present]))
    per_image = float(v.mean())
    # Same seed for every method: with the same images, the same resamples (paired comparison).
    draws = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    boot_class, boot_image = bootstrap_means(v, lab, draws, num_classes)
    tail = 100 * (1 - confidence) / 2
    lo_c, hi_c = np.percentile(boot_class, [tail, 100 - tail])
    lo_i, hi_i = np.percentile(boot_image, [tail, 100 - tail])
    return MetricEstimate(per_class, float(lo_c), float(hi_c), per_image, float(lo_i), float(hi_i), images=n, classes=int(present.sum()))


def build_report(results: Results, *, resamples: int = 1000, confidence: float = 0.95, seed: int = 0) -> Report:
    """The comparison of every method of ``results`` on its explained images.

    Args:
        results: :func:`~pami_lightning.evaluation.load_results` of a run.
        resamples: bootstrap resamples (default 1000); 0 gives NaN intervals.
        confidence: the intervals' level (default 0.95).
        seed: the resampling seed (default 0): the same folder gives the same report.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1); got {confidence}")
    if resamples < 0:
        raise ValueError(f"resamples must be >= 0; got {resamples}")
    metrics = [m for m in REPORT_METRICS if m in results.metrics]
    num_classes = int(results.config["num_classes"])
    estimates: dict[str, dict[str, MetricEstimate]] = {}
    images, skipped, curves = {}, {}, {}
    for method in results.methods:
        t = results.table(method, explained=True)
        images[method] = len(t["index"])
        skipped[method] = len(results.table(method, explained=False)["index"])
        estimates[method] = {}
        for metric in metrics:
            values = t[REPORT_METRICS[metric][0]].astype(np.float64)
            if resamples:
                estimates[method][metric] = _estimate(values, t["label"], num_classes, resamples, confidence, seed)
            else:
                e = _estimate(values, t["label"], num_classes, 1, confidence, seed)
                estimates[method][metric] = MetricEstimate(e.per_class, math.nan, math.nan, e.per_image, math.nan, math.nan, e.images, e.classes)
        curves[method] = {kind: results.mean_curve(method, kind).tolist() for kind in CURVES if kind in results.metrics}
    return Report(list(results.methods), metrics, estimates, images, skipped, confidence, resamples, seed, curves)


def plot_curves(report: Report, path: str | os.PathLike[str]) -> None:
    """``curves.png``: the mean insertion and deletion curves per method (AUC of the mean curve in the legend)."""
    import matplotlib

    matplotlib.use("Agg", force=False)  # no display needed (servers, CI, cluster nodes)
    import matplotlib.pyplot as plt

    kinds = [k for k in CURVES if any(k in c for c in report.mean_curves.values())]
    fig, axes = plt.subplots(1, max(len(kinds), 1), figsize=(5.5 * max(len(kinds), 1), 4.2), squeeze=False)
    for ax, kind in zip(axes[0], kinds, strict=False):
        for method in report.methods:
            curve = np.asarray(report.mean_curves[method].get(kind, []), dtype=np.float64)
            if not len(curve) or not np.isfinite(curve).all():
                continue
            x = np.linspace(0.0, 1.0, len(curve))
            auc = float(np.sum((curve[1:] + curve[:-1]) / 2) / (len(curve) - 1)) if len(curve) > 1 else float(curve[0])
            ax.plot(x, curve, label=f"{method} (AUC {auc:.3f})")
        ax.set_title(f"Mean {kind} curve" + (" (higher is better)" if kind == "insertion" else " (lower is better)"))
        ax.set_xlabel("fraction of pixels " + ("inserted" if kind == "insertion" else "deleted"))
        ax.set_ylabel("p(label)")
        ax.set_ylim(0.0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = os.fspath(path)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write(path, lambda f: f.write(buf.getvalue()))


def write_report(results: Results, out_dir: str | os.PathLike[str] | None = None, *, resamples: int = 1000, confidence: float = 0.95,
                 seed: int = 0, plot: bool = True) -> Report:
    """:func:`build_report`, written as ``report.md``, ``report.csv`` and (``plot``) ``curves.png`` into ``out_dir``
    (default: the results' own folder); returns the report."""
    report = build_report(results, resamples=resamples, confidence=confidence, seed=seed)
    out = os.fspath(out_dir) if out_dir is not None else results.out_dir
    os.makedirs(out, exist_ok=True)
    md, text = report.to_markdown().encode("utf-8"), report.to_csv().encode("utf-8")
    atomic_write(os.path.join(out, "report.md"), lambda f: f.write(md))
    atomic_write(os.path.join(out, "report.csv"), lambda f: f.write(text))
    if plot and report.mean_curves and any(report.mean_curves.values()):
        plot_curves(report, os.path.join(out, "curves.png"))
    return report


def log_report(report: Report | Results, logger: Any, step: int | None = None) -> Report:
    """Log the report's numbers to a Lightning logger (or a list of them); returns the report.

    Every logger gets ``log_metrics`` with :meth:`Report.flat`'s keys (NaN left out);
    a TensorBoard logger also gets the Markdown table as ``add_text("eval/report", ...)``, a W&B
    logger a ``wandb.Table`` under ``eval/report``.
    """
    from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger  # lazy: the report itself needs no Lightning

    if isinstance(report, Results):
        report = build_report(report)
    loggers = list(logger) if isinstance(logger, (list, tuple)) else [logger]
    scalars = {k: v for k, v in report.flat().items() if math.isfinite(v)}
    for lg in loggers:
        if lg is None:
            continue
        lg.log_metrics(scalars, step=step)
        if isinstance(lg, TensorBoardLogger):
            lg.experiment.add_text("eval/report", report.to_markdown(), global_step=step or 0)
        elif isinstance(lg, WandbLogger):
            import wandb

            columns: list[str | int] = list(CSV_COLUMNS)
            data = [list(row.values()) for row in report.rows()]
            lg.experiment.log({"eval/report": wandb.Table(columns=columns, data=data)})
        if hasattr(lg, "save"):
            lg.save()
    return report
