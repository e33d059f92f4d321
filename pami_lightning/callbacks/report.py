"""What one explained validation becomes: table rows, captions and the pictures handed to the loggers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor

from ..visualize import make_grid, overlay, timeline, to_rgb
from .drift import DriftHistory
from .logging import Report
from .pictures import Pictures
from .samples import Sample
from .text import TokensFn, token_pictures

__all__ = ["Explained", "table_rows", "build_report"]


@dataclass
class Explained:
    """One explained validation, gathered: every rank holds all of it."""

    sample: Sample  # all samples, on the device
    maps: Tensor  # [n, H, W] float32 ([n, L] for text)
    preds: Tensor  # [n] top-1 class of the clean input
    targets: Tensor  # [n] explained class
    p_target: Tensor  # [n] score of the explained class on the clean input (e.g. p(label))
    p_pred: Tensor  # [n] score of the top-1 class on the clean input (p(pred))
    scores: dict[str, float]  # metric name -> value
    per_sample: dict[str, Tensor]  # metric name -> [n] per-sample values (NaN: not counted)


def table_rows(indices: list[int], validation: int, epoch: int, result: Explained) -> list[dict[str, Any]]:
    """One row of scalars per sample for the sample x validation table."""
    labels = result.sample.labels
    rows = []
    for i, index in enumerate(indices):
        row: dict[str, Any] = {"sample": index, "validation": validation, "epoch": epoch}
        row.update(label=None if labels is None else int(labels[i]), prediction=int(result.preds[i]),
                   p_target=float(result.p_target[i]), p_pred=float(result.p_pred[i]))
        row.update({name: float(values[i]) for name, values in result.per_sample.items()})
        rows.append(row)
    return rows


def build_report(
    step: int,
    prefix: str,
    indices: list[int],
    result: Explained,
    rows: list[dict[str, Any]],
    history: DriftHistory,
    pictures: Pictures,
    tokens: Optional[TokensFn] = None,
    text: bool = False,
) -> Report:
    """Pictures of the first ``max_images`` samples, arrays of all, and the table so far.

    Args:
        step: the validation scalars' step.
        prefix: the key prefix.
        indices: the samples' dataset indices.
        result: the gathered explanations.
        rows: this validation's table rows (``history`` holds the earlier ones).
        history: the drift history, not yet updated with ``result``.
        pictures: what to draw and how.
        tokens: text samples: ids -> token strings.
        text: the samples are token sequences (drawn as highlighted tokens).
    """
    log_images, alpha, colormap = pictures.enabled, pictures.alpha, pictures.cmap
    k = min(pictures.max_images, len(indices))
    report = Report(step=step, prefix=prefix, names=[f"sample_{i}" for i in indices[:k]], captions=[caption(row) for row in rows[:k]])
    maps = result.maps.cpu()
    if log_images and text:
        report.token_images, report.token_html = token_pictures(result.sample.images, maps, k, tokens, colormap)
    elif log_images:
        images = result.sample.images[:k].detach().float().cpu()
        report.overlays = overlay(images, maps[:k], alpha, colormap)
        report.grid = make_grid(torch.cat([to_rgb(images), report.overlays]), nrow=k)
        report.timeline = timeline(images, history.timeline(indices, maps)[:k], alpha, colormap)
    labels = result.sample.labels
    report.arrays = {
        "maps": maps.numpy(),
        "indices": np.asarray(indices),
        "labels": np.full(len(indices), -1) if labels is None else labels.cpu().numpy(),
        "predictions": result.preds.cpu().numpy(),
        "targets": result.targets.cpu().numpy(),
        "p_target": result.p_target.cpu().numpy(),
        "p_pred": result.p_pred.cpu().numpy(),
        **{name: values.cpu().numpy() for name, values in result.per_sample.items()},
    }
    all_rows = history.rows + rows
    report.table_columns = list(dict.fromkeys(key for row in all_rows for key in row))
    report.table_rows = [[row.get(c) for c in report.table_columns] for row in all_rows]
    return report


def caption(row: dict[str, Any]) -> str:
    """``#17 · label 3 · pred 3 (score 0.91) · hit · energy 0.42 · stability 0.97``."""
    parts = [f"#{row['sample']}"]
    if row["label"] is not None:
        parts.append(f"label {row['label']}")
    parts.append(f"pred {row['prediction']} (p {row['p_pred']:.2f}) · p(target) {row['p_target']:.2f}")
    if "pointing_game" in row and row["pointing_game"] == row["pointing_game"]:  # NaN: not counted
        parts.append("hit" if row["pointing_game"] > 0.5 else "miss")
    if "energy_pointing_game" in row and row["energy_pointing_game"] == row["energy_pointing_game"]:
        parts.append(f"energy {row['energy_pointing_game']:.2f}")
    if "stability" in row:
        parts.append(f"stability {row['stability']:.2f}")
    return " · ".join(parts)
