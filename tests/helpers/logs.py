"""Readers of what the loggers wrote: TensorBoard event files and W&B offline runs, read back as a user would."""

from __future__ import annotations

import glob
import json
import os
import struct
import time
from typing import Any


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
