"""Tiny models, data and log readers shared by the PAMICallback tests (CPU, seconds per fit)."""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import struct
import time
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from pami_lightning import Constant, PAMICallback, SlidingWindow
from pami_lightning.callbacks import PAMIOptions

SIZE = 32
COLOURS = torch.tensor([[0.9, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.2, 0.9]])


def shapes(n: int, seed: int = 0) -> TensorDataset:
    """``n`` images ``[3, 32, 32]``: noise plus one 8x8 square whose colour is the class; its mask."""
    g = torch.Generator().manual_seed(seed)
    images = 0.2 + 0.4 * torch.rand(n, 3, SIZE, SIZE, generator=g)
    labels = torch.randint(0, len(COLOURS), (n,), generator=g)
    top, left = torch.randint(0, SIZE - 8, (2, n), generator=g)
    coords = torch.arange(SIZE)
    rows = (coords[None] >= top[:, None]) & (coords[None] < top[:, None] + 8)
    cols = (coords[None] >= left[:, None]) & (coords[None] < left[:, None] + 8)
    masks = rows[:, :, None] & cols[:, None, :]
    images = torch.where(masks[:, None], COLOURS[labels].view(n, 3, 1, 1), images)
    return TensorDataset(images, labels, masks)


class TinyNet(L.LightningModule):
    """Two conv layers (with batch norm and dropout, whose modes must survive the callback)."""

    def __init__(self, lr: float = 0.05) -> None:
        super().__init__()
        self.lr = lr
        self.net = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Dropout(0.2),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, len(COLOURS)),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y = batch[0], batch[1]
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch[0], batch[1]
        self.log("val_loss", F.cross_entropy(self(x), y), sync_dist=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)


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


# ---------------------------------------------------------------------------------------- readers


def read_tensorboard(log_dir: str) -> Any:
    """An EventAccumulator over ``log_dir`` keeping every image and scalar."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(log_dir, size_guidance={"images": 0, "scalars": 0})
    ea.Reload()
    return ea


def read_wandb_history(run_dir: str, timeout: float = 30.0) -> list[dict[str, Any]]:
    """The history rows (``wandb.log`` calls) of an offline run, decoded from its ``.wandb`` file.

    The file is a LevelDB-style log: a 7-byte header, then 32 KiB blocks of records, each with a
    ``<IHB`` (crc, length, type) header; type 1 is a whole record, 2/3/4 the first/middle/last piece
    of one split across blocks. Each record is a ``wandb_internal_pb2.Record``. wandb's service may
    still be writing after ``wandb.finish()`` returns: wait for the run's final ``exit`` record.
    """
    deadline = time.monotonic() + timeout
    while not glob.glob(os.path.join(run_dir, "*.wandb")) and time.monotonic() < deadline:
        time.sleep(0.2)
    (path,) = glob.glob(os.path.join(run_dir, "*.wandb"))
    while True:
        with open(path, "rb") as f:
            records = _wandb_records(f.read())
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    return [
        {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in r.history.item}
        for r in records
        if r.WhichOneof("record_type") == "history"
    ]


def _wandb_records(data: bytes) -> list[Any]:
    from wandb.proto import wandb_internal_pb2

    block, pos, pieces, records = 32768, 7, b"", []
    while pos + 7 <= len(data):
        left = block - (pos % block)
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0 and length == 0:
            pos += left
            continue
        if pos + 7 + length > len(data):  # a record still being written
            break
        payload = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        pieces = payload if kind in (1, 2) else pieces + payload
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pieces)
            records.append(record)
    return records
