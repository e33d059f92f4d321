"""Sending the callback's pictures and tables to whatever loggers the Trainer has.

Scalars do not come through here: the callback logs them with ``pl_module.log`` so that every logger
(and ModelCheckpoint / EarlyStopping) sees them at the validation scalars' step. This module only
writes what ``log_metrics`` cannot carry:

- :class:`~lightning.pytorch.loggers.TensorBoardLogger`: ``add_image`` of the overlay grid, the
  timeline and one image per sample.
- :class:`~lightning.pytorch.loggers.WandbLogger`: ``log_image`` with captions and ``log_table`` of
  sample x validation scores.
- Any other logger with a ``log_dir`` (e.g. ``CSVLogger``): PNG files and an ``.npz`` of the maps
  under ``<log_dir>/<key_prefix>/step_<step>/``.

Text samples have no overlays: each sample's picture is its highlighted tokens (an image for
TensorBoard and files), and W&B and files also get them as HTML.

Call :func:`dispatch` on global rank zero only: it writes files.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
from lightning.pytorch.loggers import Logger, TensorBoardLogger, WandbLogger
from torch import Tensor

from ..visualize import to_uint8

__all__ = ["Report", "dispatch"]


@dataclass
class Report:
    """Everything one explained validation logs besides scalars.

    Attributes:
        step: the step of the validation scalars (``fit_loop.epoch_loop._batches_that_stepped``).
        prefix: the key prefix (``"pami"``).
        names: one name per logged sample (``"sample_17"`` for dataset index 17).
        captions: one caption per logged sample (label, prediction, scores).
        overlays: ``[N, 3, H, W]`` heatmap overlays in ``[0, 1]``, or ``None`` when images are off.
        grid: ``[3, H', W']`` all overlays in one picture, or ``None``.
        timeline: ``[3, H', W']`` one row per sample, one column per explained validation, or ``None``.
        arrays: what the ``.npz`` holds (maps, dataset indices, labels, predictions, per-sample scores).
        table_columns: columns of the sample x validation table.
        table_rows: its rows, one per sample and explained validation so far.
        token_images: text samples: ``[3, H, W]`` pictures of each sample's highlighted tokens, or ``None``.
        token_html: text samples: the same as HTML (W&B ``wandb.Html``, ``.html`` files), or ``None``.
    """

    step: int
    prefix: str
    names: list[str]
    captions: list[str]
    overlays: Optional[Tensor] = None
    grid: Optional[Tensor] = None
    timeline: Optional[Tensor] = None
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    table_columns: list[str] = field(default_factory=list)
    table_rows: list[list[Any]] = field(default_factory=list)
    token_images: Optional[list[Tensor]] = None
    token_html: Optional[list[str]] = None


def dispatch(loggers: Sequence[Logger], report: Report) -> None:
    """Write ``report`` to every logger in the form it supports (global rank zero only)."""
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            _to_tensorboard(logger, report)
        elif isinstance(logger, WandbLogger):
            _to_wandb(logger, report)
        elif log_dir := getattr(logger, "log_dir", None):
            _to_files(log_dir, report)


def _to_tensorboard(logger: TensorBoardLogger, report: Report) -> None:
    writer = logger.experiment
    for tag, image in ((f"{report.prefix}/overlays", report.grid), (f"{report.prefix}/timeline", report.timeline)):
        if image is not None:
            writer.add_image(tag, image, global_step=report.step, dataformats="CHW")
    for name, image in zip(report.names, _per_sample_images(report), strict=False):  # no pictures when images are off
        writer.add_image(f"{report.prefix}/{name}", image, global_step=report.step, dataformats="CHW")


def _to_wandb(logger: WandbLogger, report: Report) -> None:
    # WandbLogger ties every row to ``trainer/global_step`` = ``step``, the same as pl_module.log's
    # scalars; passing a step to ``experiment.log`` instead would make W&B drop rows out of order.
    if report.overlays is not None:
        images = [to_uint8(image) for image in report.overlays]
        logger.log_image(f"{report.prefix}/samples", images, step=report.step, caption=report.captions)
    for key, image in (("overlays", report.grid), ("timeline", report.timeline)):
        if image is not None:
            logger.log_image(f"{report.prefix}/{key}", [to_uint8(image)], step=report.step)
    if report.token_html is not None:
        import wandb

        # log_metrics is annotated Mapping[str, float], but WandbLogger passes any W&B value on (its own log_image sends wandb.Image lists).
        logger.log_metrics({f"{report.prefix}/{name}": wandb.Html(page) for name, page in zip(report.names, report.token_html, strict=True)}, step=report.step)  # type: ignore[misc]
    if report.table_rows:
        logger.log_table(f"{report.prefix}/table", columns=report.table_columns, data=report.table_rows, step=report.step)


def _to_files(log_dir: str, report: Report) -> None:
    from PIL import Image

    folder = os.path.join(log_dir, report.prefix, f"step_{report.step:06d}")
    os.makedirs(folder, exist_ok=True)
    if report.arrays:
        # The keys are array names; mypy matches the **-unpacked dict against savez_compressed's allow_pickle: bool too.
        np.savez_compressed(os.path.join(folder, "maps.npz"), **report.arrays)  # type: ignore[arg-type]
    pictures = [("overlays", report.grid), ("timeline", report.timeline), *zip(report.names, _per_sample_images(report), strict=False)]  # none when images are off
    for name, page in zip(report.names, report.token_html or [], strict=False):
        with open(os.path.join(folder, f"{name}.html"), "w", encoding="utf-8") as f:
            f.write(page)
    for name, image in pictures:
        if image is not None:
            Image.fromarray(to_uint8(image)).save(os.path.join(folder, f"{name}.png"))


def _per_sample_images(report: Report) -> list[Tensor]:
    """One picture per logged sample: its overlay (images) or its highlighted tokens (text)."""
    if report.overlays is not None:
        return list(report.overlays)
    return list(report.token_images or [])
