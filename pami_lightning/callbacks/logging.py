"""Sending the callback's pictures, captions and tables to whatever loggers the Trainer has.

Scalars do not come through here: the callback logs them with ``pl_module.log`` so that every logger
(and ModelCheckpoint / EarlyStopping) sees them at the validation scalars' step. This module writes
what ``log_metrics`` cannot carry, each logger in its own way:

- :class:`~lightning.pytorch.loggers.TensorBoardLogger`: ``<prefix>/sample_<i>`` (one card per drawn
  sample: caption, input with the object's outline, overlay, colour bar), ``<prefix>/overlays`` (the
  cards tiled), ``<prefix>/timeline`` (labelled rows and columns) and ``add_text(<prefix>/captions)``:
  a Markdown table of every explained sample's caption.
- :class:`~lightning.pytorch.loggers.WandbLogger`: ``<prefix>/samples`` (``wandb.Image`` of input |
  overlay | colour bar, with the caption and the object mask as an interactive ``masks=`` overlay),
  ``<prefix>/overlays`` and ``<prefix>/timeline`` images, ``<prefix>/samples_table`` (this
  validation: the images and every per-sample score) and ``<prefix>/table`` (sample x validation
  scalars so far).
- Any other logger with a ``log_dir`` (e.g. ``CSVLogger``): under ``<log_dir>/<prefix>/step_<step>/``
  the PNGs, ``maps.npz`` and ``captions.csv`` (one row per sample: the caption's numbers and the
  caption); ``<log_dir>/<prefix>/table.csv`` is the sample x validation table so far.

Text samples: each sample's picture is its highlighted tokens under its caption; W&B and files also
get them as HTML.

Call :func:`dispatch` on global rank zero only: it writes files.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
from lightning.pytorch.loggers import Logger, TensorBoardLogger, WandbLogger

__all__ = ["Report", "dispatch"]

#: How the PNGs (TensorBoard, files) are compressed: zlib level 1 with the run-length strategy
#: (``compress_type=3``, Z_RLE) is 5-6x faster than zlib's default level 6 on these pictures
#: (nearest-neighbour enlargements, flat backgrounds) and their files are about as small.
PNG_OPTIONS: dict[str, int] = {"compress_level": 1, "compress_type": 3}


@dataclass
class Report:
    """Everything one explained validation logs besides scalars.

    Pictures are ``[H, W, 3]`` uint8 numpy arrays, drawn once and handed to every logger.

    Attributes:
        step: the step of the validation scalars (``fit_loop.epoch_loop._batches_that_stepped``).
        prefix: the key prefix (``"pami"``).
        names: one name per drawn sample (``"sample_17"`` for dataset index 17).
        captions: one one-line caption per drawn sample (see
            :func:`~pami_lightning.callbacks.report.caption_lines`).
        cards: per drawn sample: the caption drawn over input | overlay | colour bar (TensorBoard, files).
        strips: per drawn sample: input | overlay | colour bar without text (W&B shows the caption).
        strip_masks: per drawn sample: ``[H, W]`` uint8 object mask aligned with its strip (1 on the
            object under the input and the overlay), or ``None`` without masks.
        grid: the cards tiled, or ``None`` when pictures are off.
        timeline: one labelled row per drawn sample, one column per explained validation, or ``None``.
        samples: one dict per explained sample: the caption's numbers, class names and the caption.
        arrays: what the ``.npz`` holds (maps, dataset indices, labels, predictions, per-sample scores).
        table_columns: columns of the sample x validation table.
        table_rows: its rows, one per sample and explained validation so far.
        token_html: text samples: each drawn sample's highlighted tokens as HTML, or ``None``.
    """

    step: int
    prefix: str
    names: list[str]
    captions: list[str]
    cards: list[np.ndarray] = field(default_factory=list)
    strips: list[np.ndarray] = field(default_factory=list)
    strip_masks: list[Optional[np.ndarray]] = field(default_factory=list)
    grid: Optional[np.ndarray] = None
    timeline: Optional[np.ndarray] = None
    samples: list[dict[str, Any]] = field(default_factory=list)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    table_columns: list[str] = field(default_factory=list)
    table_rows: list[list[Any]] = field(default_factory=list)
    token_html: Optional[list[str]] = None
    _png: dict[str, bytes] = field(default_factory=dict, repr=False)

    def pictures(self) -> list[tuple[str, np.ndarray]]:
        """``(name, picture)`` of every picture drawn: the grid, the timeline and the cards (none when pictures are off)."""
        named = [("overlays", self.grid), ("timeline", self.timeline), *zip(self.names, self.cards, strict=False)]
        return [(name, image) for name, image in named if image is not None]

    def png(self, name: str, image: np.ndarray) -> bytes:
        """``image`` as PNG (:data:`PNG_OPTIONS`), encoded once for every logger that takes PNGs (TensorBoard, files)."""
        if name not in self._png:
            self._png[name] = _encode_png(image)
        return self._png[name]

    def encode_pictures(self, workers: Optional[int] = None) -> int:
        """Encode every picture not yet encoded, ``workers`` at a time (default: the usable CPUs, at most 8)
        in threads: Pillow's encoder releases the GIL, 1.7x faster than one by one on 2 cores.

        Returns:
            How many pictures it encoded (0 once all are).
        """
        todo = [(name, image) for name, image in self.pictures() if name not in self._png]
        workers = min(len(todo), workers if workers is not None else min(_usable_cpus(), 8))
        if workers < 2:
            for name, image in todo:
                self.png(name, image)
            return len(todo)
        with ThreadPoolExecutor(workers, thread_name_prefix="pami-png") as pool:
            encoded = pool.map(_encode_png, [image for _, image in todo])
            self._png.update(zip([name for name, _ in todo], encoded, strict=True))
        return len(todo)


def _usable_cpus() -> int:
    # sched_getaffinity honours taskset / cgroup CPU sets; cpu_count counts the machine's.
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _encode_png(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", **PNG_OPTIONS)
    return buffer.getvalue()


def dispatch(loggers: Sequence[Logger], report: Report) -> None:
    """Write ``report`` to every logger in the form it supports (global rank zero only)."""
    writers = [(logger, _writer(logger)) for logger in loggers]
    if any(takes_png for _, (_, takes_png) in writers):
        report.encode_pictures()  # the PNG loggers' pictures, all at once
    for logger, (write, _) in writers:
        if write is not None:
            write(logger, report)


def _writer(logger: Logger) -> tuple[Optional[Callable[[Any, Report], None]], bool]:
    """How ``report`` goes to ``logger``, and whether that writes :meth:`Report.png`'s PNGs."""
    if isinstance(logger, TensorBoardLogger):
        from torch.utils.tensorboard import SummaryWriter

        return _to_tensorboard, isinstance(logger.experiment, SummaryWriter)  # tensorboardX's add_image encodes itself
    if isinstance(logger, WandbLogger):
        return _to_wandb, False  # wandb.Image takes the arrays
    if getattr(logger, "log_dir", None):
        return (lambda lg, r: _to_files(lg.log_dir, r)), True
    return None, False


def captions_markdown(report: Report) -> str:
    """Every explained sample's caption as a Markdown table (TensorBoard's text tab renders it)."""
    lines = ["| sample | caption |", "|---|---|"]
    lines += [f"| {row['sample']} | {str(row['caption']).replace('|', '/')} |" for row in report.samples]
    return "\n".join(lines)


def _to_tensorboard(logger: TensorBoardLogger, report: Report) -> None:
    from torch.utils.tensorboard import SummaryWriter

    writer = logger.experiment
    for name, image in report.pictures():
        tag = f"{report.prefix}/{name}"
        if isinstance(writer, SummaryWriter):
            # What add_image writes, but from the PNG encoded once with PNG_OPTIONS: add_image encodes at
            # zlib's default level, 5-6x slower, which made PNG encoding most of the logging time.
            from tensorboard.compat.proto.summary_pb2 import Summary

            picture = Summary.Image(height=image.shape[0], width=image.shape[1], colorspace=3, encoded_image_string=report.png(name, image))
            writer._get_file_writer().add_summary(Summary(value=[Summary.Value(tag=tag, image=picture)]), report.step)
        else:  # e.g. tensorboardX's writer
            writer.add_image(tag, image, global_step=report.step, dataformats="HWC")
    if report.samples:
        writer.add_text(f"{report.prefix}/captions", captions_markdown(report), global_step=report.step)


def _wandb_masks(mask: Optional[np.ndarray]) -> Optional[dict[str, Any]]:
    if mask is None:
        return None
    return {"ground_truth": {"mask_data": mask, "class_labels": {0: "background", 1: "object"}}}


def _to_wandb(logger: WandbLogger, report: Report) -> None:
    # WandbLogger ties every row to ``trainer/global_step`` = ``step``, the same as pl_module.log's
    # scalars; passing a step to ``experiment.log`` instead would make W&B drop rows out of order.
    import wandb

    if report.strips:
        masks = [_wandb_masks(m) for m in report.strip_masks]
        logger.log_image(f"{report.prefix}/samples", list(report.strips), step=report.step, caption=report.captions, masks=masks)
        # The samples' own table: sortable by any score, each row with its picture.
        columns = ["image", *dict.fromkeys(key for row in report.samples for key in row)]
        data = [
            [wandb.Image(strip, caption=caption, masks=_wandb_masks(mask)), *(row.get(c) for c in columns[1:])]
            for strip, mask, caption, row in zip(report.strips, report.strip_masks, report.captions, report.samples, strict=False)
        ]
        logger.log_table(f"{report.prefix}/samples_table", columns=columns, data=data, step=report.step)
    for key, image in (("overlays", report.grid), ("timeline", report.timeline)):
        if image is not None:
            logger.log_image(f"{report.prefix}/{key}", [image], step=report.step)
    if report.token_html is not None:
        # log_metrics is annotated Mapping[str, float], but WandbLogger passes any W&B value on (its own log_image sends wandb.Image lists).
        logger.log_metrics({f"{report.prefix}/{name}": wandb.Html(page) for name, page in zip(report.names, report.token_html, strict=True)}, step=report.step)  # type: ignore[misc]
    if report.table_rows:
        logger.log_table(f"{report.prefix}/table", columns=report.table_columns, data=report.table_rows, step=report.step)


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    return value


def _write_csv(path: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        writer.writerows([_csv_value(v) for v in row] for row in rows)


def _to_files(log_dir: str, report: Report) -> None:
    root = os.path.join(log_dir, report.prefix)
    folder = os.path.join(root, f"step_{report.step:06d}")
    os.makedirs(folder, exist_ok=True)
    if report.arrays:
        # The keys are array names; mypy matches the **-unpacked dict against savez_compressed's allow_pickle: bool too.
        np.savez_compressed(os.path.join(folder, "maps.npz"), **report.arrays)  # type: ignore[arg-type]
    if report.samples:
        columns = list(dict.fromkeys(key for row in report.samples for key in row))
        _write_csv(os.path.join(folder, "captions.csv"), columns, [[row.get(c) for c in columns] for row in report.samples])
    if report.table_rows:
        _write_csv(os.path.join(root, "table.csv"), report.table_columns, report.table_rows)
    for name, page in zip(report.names, report.token_html or [], strict=False):
        with open(os.path.join(folder, f"{name}.html"), "w", encoding="utf-8") as f:
            f.write(page)
    for name, image in report.pictures():
        with open(os.path.join(folder, f"{name}.png"), "wb") as f:
            f.write(report.png(name, image))
