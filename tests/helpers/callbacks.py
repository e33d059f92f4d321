"""PAMICallback test pieces: the shapes loaders, a callback and a trainer sized for tests (CPU, seconds per fit)."""

from __future__ import annotations

import dataclasses
from typing import Any

import lightning as L
from torch.utils.data import DataLoader

from pami_lightning import Constant, PAMICallback, SlidingWindow
from pami_lightning.callbacks import PAMIOptions

from .images import shapes


def loaders(n_train: int = 64, n_val: int = 24, batch_size: int = 16) -> tuple[DataLoader, DataLoader]:
    return (
        DataLoader(shapes(n_train, seed=0), batch_size=batch_size, shuffle=True),
        DataLoader(shapes(n_val, seed=1), batch_size=batch_size),
    )


def callback(**kwargs: Any) -> PAMICallback:
    """A PAMICallback sized for tests: 4 samples, 8 x 8 windows, black substrate.

    PAMIOptions' arguments (``partition``, ``masker``, ``preprocess``, ...) may be given directly.
    """
    kwargs.setdefault("num_samples", 4)
    options = {name: kwargs.pop(name) for name in [f.name for f in dataclasses.fields(PAMIOptions)] if name in kwargs}
    options.setdefault("partition", SlidingWindow(radius=8, stride=4))
    options.setdefault("masker", Constant(0.0))
    return PAMICallback(explainer=PAMIOptions(**options), **kwargs)


def trainer(tmp_path: Any, callbacks: list, logger: Any = False, **kwargs: Any) -> L.Trainer:
    kwargs.setdefault("max_epochs", 2)
    kwargs.setdefault("limit_train_batches", 2)
    return L.Trainer(
        default_root_dir=str(tmp_path),
        callbacks=callbacks,
        logger=logger,
        accelerator="cpu",
        devices=kwargs.pop("devices", 1),
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=kwargs.pop("enable_checkpointing", False),
        **kwargs,
    )


def scores(trainer: L.Trainer, prefix: str = "pami") -> dict[str, float]:
    return {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(prefix + "/")}
