"""What one explained validation becomes: table rows, captions and the pictures handed to the loggers."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor

from .._inputs import main_tensor
from ..visualize import format_range, highlight_tokens, highlight_tokens_image, hstack, line_height, text_block, tile, to_uint8, vstack
from .drift import DriftHistory
from .logging import Report
from .pictures import GAP, Pictures, draw_samples, draw_timeline, map_bar
from .samples import Sample
from .text import TokensFn

__all__ = ["Explained", "table_rows", "caption_lines", "build_report"]

#: Width of a text sample's picture, in pixels.
TOKEN_WIDTH = 640
#: Per-sample scores shown in captions besides the pointing game's hit / miss: key, short name.
_CAPTION_SCORES = (("energy_pointing_game", "energy"), ("insertion", "insertion"), ("deletion", "deletion"), ("stability", "stability"))


@dataclass
class Explained:
    """One explained validation, gathered: every rank holds all of it.

    ``p_label`` is optional: where it is ``None`` the label's score is taken from ``p_target`` (the
    label was explained) or ``p_pred`` (the label was predicted), and is unknown otherwise.
    """

    sample: Sample  # all samples, on the device
    maps: Tensor  # [n, H, W] float32 ([n, L] for text)
    preds: Tensor  # [n] top-1 class of the clean input
    targets: Tensor  # [n] explained class
    p_target: Tensor  # [n] score of the explained class on the clean input (e.g. p(label))
    p_pred: Tensor  # [n] score of the top-1 class on the clean input (p(pred))
    scores: dict[str, float]  # metric name -> value
    per_sample: dict[str, Tensor]  # metric name -> [n] per-sample values (NaN: not counted)
    p_label: Optional[Tensor] = None  # [n] score of the label class on the clean input (NaN: unknown)


def _p_label(result: Explained) -> Tensor:
    """``[n]`` p(label) on the CPU: given, else read off the explained or predicted class; NaN where unknown."""
    n = result.preds.shape[0]
    labels = result.sample.labels
    if result.p_label is not None:
        return result.p_label.detach().float().cpu()
    if labels is None:
        return torch.full((n,), math.nan)
    labels, targets, preds = labels.cpu(), result.targets.cpu(), result.preds.cpu()
    unknown = torch.full((n,), math.nan)
    return torch.where(targets == labels, result.p_target.float().cpu(), torch.where(preds == labels, result.p_pred.float().cpu(), unknown))


def _map_ranges(result: Explained) -> tuple[Tensor, Tensor]:
    """Each map's min and max ``[n]``, over the real tokens only for text (padding is 0, not a score)."""
    maps = result.maps.detach().float().cpu().reshape(result.maps.shape[0], -1)
    images = result.sample.images
    if isinstance(images, Mapping) and "attention_mask" in images:
        keep = images["attention_mask"].bool().cpu().reshape(maps.shape)
        return maps.masked_fill(~keep, math.inf).amin(1), maps.masked_fill(~keep, -math.inf).amax(1)
    return maps.amin(1), maps.amax(1)


def table_rows(indices: list[int], validation: int, epoch: int, result: Explained) -> list[dict[str, Any]]:
    """One row of scalars per sample for the sample x validation table (and the drift timeline's ranges).

    Columns: ``sample, validation, epoch, label, prediction, p_target, p_pred, target, p_label,
    map_min, map_max`` and one per ``result.per_sample`` score; ``prediction`` is ``None`` (and ``p_pred``
    NaN) when the model's outputs rank no classes. ``map_min`` / ``map_max`` are what
    the timeline prints under (and, on the absolute scale, colours) each past map.
    """
    labels = result.sample.labels
    p_label = _p_label(result)
    lows, highs = _map_ranges(result)
    rows = []
    for i, index in enumerate(indices):
        row: dict[str, Any] = {"sample": index, "validation": validation, "epoch": epoch}
        row.update(label=None if labels is None else int(labels[i]), prediction=int(result.preds[i]) if result.preds[i] >= 0 else None,
                   p_target=float(result.p_target[i]), p_pred=float(result.p_pred[i]), target=int(result.targets[i]),
                   p_label=float(p_label[i]), map_min=float(lows[i]), map_max=float(highs[i]))
        row.update({name: float(values[i]) for name, values in result.per_sample.items()})
        rows.append(row)
    return rows


def caption_lines(row: dict[str, Any], step: int, pictures: Pictures) -> list[str]:
    """A sample's caption, one string per line; joined by `` · `` it is the one-line caption.

    Example lines::

        #17 · epoch 3 · step 120
        label cat (3) p(label) 0.912 · pred dog (5) p(pred) 0.953
        map of p(cat): min 0.980 · max 0.995 · scale min-max
        hit · energy 0.420 · insertion 0.810 · deletion 0.120 · stability 0.970
    """
    name = pictures.class_name
    lines = [f"#{row['sample']} · epoch {row['epoch']} · step {step}"]
    who = []
    if row.get("label") is not None:
        p = row.get("p_label", math.nan)
        who.append(f"label {name(row['label'])}" + ("" if p != p else f" p(label) {p:.3f}"))  # NaN: unknown
    p = row["p_pred"]
    who.append(f"pred {name(row['prediction'])}" + ("" if p != p else f" p(pred) {p:.3f}"))  # NaN: outputs without classes
    lines.append(" · ".join(who))
    lo, hi = format_range(row.get("map_min", math.nan), row.get("map_max", math.nan))
    flat = " (flat)" if "map_min" in row and row["map_min"] == row.get("map_max") else ""
    lines.append(f"map of p({name(row.get('target', row['prediction']), index=False)}): min {lo} · max {hi}{flat} · scale {pictures.scale_text}")
    scores = []
    if row.get("pointing_game", math.nan) == row.get("pointing_game", math.nan):  # NaN: not counted
        scores.append("hit" if row["pointing_game"] > 0.5 else "miss")
    scores.extend(f"{short} {row[key]:.3f}" for key, short in _CAPTION_SCORES if key in row and row[key] == row[key])
    if scores:
        lines.append(" · ".join(scores))
    return lines


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
    """Pictures of the first ``max_images`` samples, captions and arrays of all, and the table so far.

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
    k = min(pictures.max_images, len(indices))
    lines = [caption_lines(row, step, pictures) for row in rows]
    captions = [" · ".join(parts) for parts in lines]
    report = Report(step=step, prefix=prefix, names=[f"sample_{i}" for i in indices[:k]], captions=captions[:k])
    report.samples = [_sample_row(row, step, pictures, caption) for row, caption in zip(rows, captions, strict=True)]
    maps = result.maps.detach().float().cpu()
    if pictures.enabled and text:
        report.cards, report.token_html = _token_pictures(result.sample.images, maps, lines[:k], tokens, pictures)
    elif pictures.enabled:
        images, masks = result.sample.images[:k].detach().float().cpu(), result.sample.masks
        for card, strip, mask in draw_samples(images, maps[:k], lines[:k], pictures, None if masks is None else masks[:k]):
            report.cards.append(card)
            report.strips.append(strip)
            report.strip_masks.append(mask)
        report.grid = tile(report.cards, ncols=min(k, 4), align="bottom")  # captions wrap differently: the pictures line up
        report.timeline = _timeline(images, maps, indices, rows, history, pictures)
    labels = result.sample.labels
    report.arrays = {
        "maps": maps.numpy(),
        "indices": np.asarray(indices),
        "labels": np.full(len(indices), -1) if labels is None else labels.cpu().numpy(),
        "predictions": result.preds.cpu().numpy(),
        "targets": result.targets.cpu().numpy(),
        "p_target": result.p_target.cpu().numpy(),
        "p_pred": result.p_pred.cpu().numpy(),
        "p_label": _p_label(result).numpy(),
        **{name: values.cpu().numpy() for name, values in result.per_sample.items()},
    }
    all_rows = [_named(row, pictures) for row in history.rows + rows]
    report.table_columns = list(dict.fromkeys(key for row in all_rows for key in row))
    report.table_rows = [[row.get(c) for c in report.table_columns] for row in all_rows]
    return report


def _named(row: dict[str, Any], pictures: Pictures) -> dict[str, Any]:
    """A table row with the class names beside the class indices (when ``class_names`` are given)."""
    if pictures.class_names is None:
        return row
    out = dict(row)
    for key in ("label", "prediction", "target"):
        if key in row:
            out[f"{key}_name"] = None if row[key] is None else pictures.class_name(row[key])
    return out


def _sample_row(row: dict[str, Any], step: int, pictures: Pictures, caption: str) -> dict[str, Any]:
    """One row of the captions CSV / W&B samples table: the caption's numbers, the names and the caption."""
    out = {"sample": row["sample"], "validation": row["validation"], "epoch": row["epoch"], "step": step}
    out.update(_named({k: v for k, v in row.items() if k not in out}, pictures))
    out.update(scale=pictures.scale, caption=caption)
    return out


def _timeline(images: Tensor, maps: Tensor, indices: list[int], rows: list[dict[str, Any]], history: DriftHistory, pictures: Pictures) -> np.ndarray:
    """The drift timeline of the ``k`` drawn samples (``images [k, C, H, W]``; ``maps``, ``indices``, ``rows`` of all).

    The cells are labelled with their epoch and ranged by the table rows the history kept.
    """
    n, everyone = images.shape[0], len(indices)
    thumbs = history.timeline(indices, maps)[:n]  # [k, T, h, w]; earlier columns only when the history matches
    t = thumbs.shape[1]
    # The history's rows: one per sample and push, in push order, so the last T - 1 pushes are its columns.
    past = history.rows[len(history.rows) - (t - 1) * everyone :] if t > 1 else []
    columns = [past[j * everyone : j * everyone + n] for j in range(t - 1)] + [rows[:n]]
    ranges = torch.full((n, t, 2), math.nan)
    for j, column in enumerate(columns):
        if [r.get("sample") for r in column] == indices[:n]:  # rows of older versions lack map_min: range unknown
            ranges[:, j, 0] = torch.tensor([float(r.get("map_min", math.nan)) for r in column])
            ranges[:, j, 1] = torch.tensor([float(r.get("map_max", math.nan)) for r in column])
    epochs = [column[0].get("epoch") if column else None for column in columns]
    repeated = len(set(epochs)) < len(epochs)  # several validations per epoch: say which one
    labels = [f"epoch {e}" + (f" · val {c[0].get('validation')}" if repeated else "") for e, c in zip(epochs, columns, strict=True)]
    row_labels = [[f"#{r['sample']}", pictures.class_name(r.get("target", r["prediction"]))] for r in rows[:n]]
    return draw_timeline(images, thumbs, ranges, labels, row_labels, pictures)


def _token_pictures(inputs: Any, maps: Tensor, lines: list[list[str]], tokens: Optional[TokensFn], pictures: Pictures) -> tuple[list[np.ndarray], list[str]]:
    """Each drawn sample's real tokens coloured by its map ``[B, L]``: a captioned picture and the HTML."""
    ids = main_tensor(inputs).cpu()
    shown = inputs["attention_mask"].bool().cpu() if isinstance(inputs, Mapping) and "attention_mask" in inputs else torch.ones_like(ids, dtype=torch.bool)
    vmin, vmax = pictures.vrange
    cards, pages = [], []
    for i, caption in enumerate(lines):
        kept = ids[i][shown[i]].tolist()
        words = list(tokens(kept)) if tokens is not None else [str(t) for t in kept]
        scores = maps[i][shown[i]]
        lo, hi = (float(scores.min()), float(scores.max())) if len(scores) else (0.0, 0.0)
        # The bar's width is known before its height: the tokens fill the rest of TOKEN_WIDTH.
        bar_width = map_bar(2, lo, hi, pictures).shape[1]
        body = to_uint8(highlight_tokens_image(words, scores, cmap=pictures.cmap, vmin=vmin, vmax=vmax, width=TOKEN_WIDTH - GAP - bar_width))
        bar = map_bar(max(body.shape[0], 3 * line_height()), lo, hi, pictures)
        cards.append(vstack([text_block(caption, TOKEN_WIDTH), hstack([body, bar], GAP)], 0))
        pages.append(highlight_tokens(words, scores, cmap=pictures.cmap, vmin=vmin, vmax=vmax))
    return cards, pages
