"""The on-disk layout of an evaluation run: file names, the per-sample table's columns, atomic writes, reading back.

::

    OUT/
      run.json                          the run's settings (format, methods, metrics, tolerance, ...): a resumed run must match
      scores.json                       aggregates per method from the synced metric states (written when a run completes)
      samples/<shard>.csv               per-sample table of one batch of one rank: one row per (method, sample)
      maps/<method>/<shard>.npy         float16 [n, H, W]: the maps of the batch's explained samples, in table order (row)
      insertion/<method>/<shard>.npy    float32 [n, n_steps + 1]: insertion curves, same rows
      deletion/<method>/<shard>.npy     float32 [n, n_steps + 1]: deletion curves, same rows

``<shard>`` is ``run{R:03d}-rank{r:03d}-batch{b:06d}``: attempt ``R`` (0 for the first run, one more
for each resume), global rank ``r``, batch ``b`` of that rank. Every file is written to a temporary
name and renamed (``os.replace``), and a batch's ``samples/<shard>.csv`` is written last: it commits
the batch. A process killed at any moment leaves only whole files; arrays without their table
(killed between the two) are orphans that the next run deletes.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping
from typing import IO, Any

import numpy as np

__all__ = [
    "FORMAT", "COLUMNS", "RUN_FILE", "SCORES_FILE", "SAMPLES", "MAPS", "CURVES",
    "shard_stem", "parse_stem", "atomic_write", "save_npy", "write_json", "read_json", "format_rows", "read_table", "next_run", "clean",
]

FORMAT = "pami-lightning-evaluation/1"
RUN_FILE = "run.json"
SCORES_FILE = "scores.json"
SAMPLES = "samples"
MAPS = "maps"
CURVES = ("insertion", "deletion")

#: The per-sample table, in file order. Empty cells: not applicable (no mask, metric off, not explained).
COLUMNS = (
    "method",         # the method's name
    "index",          # the sample's position in the dataset (unique per method)
    "id",             # the image's id (several samples share it when an image holds several classes)
    "label",          # the class explained (the ground truth)
    "class_name",
    "prediction",     # the model's top-1 class on the clean image (-1: its outputs rank no classes)
    "p_label",        # the model's score (softmax probability) of the label on the clean image
    "correct",        # 1 when prediction == label
    "explained",      # 1 when explained and scored (0: skipped by only_correct)
    "pointing_hit",   # 1 hit, 0 miss, empty: no mask
    "insertion_auc",
    "deletion_auc",
    "seconds",        # the explainer's wall time per image (its batch's time / images explained)
    "passes",         # forward passes per image (empty when the explainer does not say)
    "shard",          # <shard> of the map and curve files
    "row",            # the row of those files (empty when not explained)
)
_INT = {"index", "label", "prediction", "row"}
_BOOL = {"correct", "explained"}
_F32 = {"p_label", "pointing_hit", "insertion_auc", "deletion_auc"}
_F64 = {"seconds", "passes"}

_STEM = re.compile(r"^run(\d+)-rank(\d+)-batch(\d+)$")


def shard_stem(run: int, rank: int, batch: int) -> str:
    return f"run{run:03d}-rank{rank:03d}-batch{batch:06d}"


def parse_stem(stem: str) -> tuple[int, int, int] | None:
    """``(run, rank, batch)`` of a shard name, or None for a file of no shard."""
    m = _STEM.match(stem)
    return (int(m[1]), int(m[2]), int(m[3])) if m else None


def atomic_write(path: str, write: Callable[[IO[bytes]], object], fsync: bool = False) -> None:
    """Write ``path`` through a temporary file in the same folder and ``os.replace``: readers see the old file or the whole new one.

    ``fsync``: flush to the disk before the rename (survives a machine crash, not only a killed process).
    """
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            write(f)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def save_npy(path: str, array: np.ndarray, fsync: bool = False) -> None:
    atomic_write(path, lambda f: np.save(f, array, allow_pickle=False), fsync)


def _null_nan(obj: Any) -> Any:
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: _null_nan(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_null_nan(v) for v in obj]
    return obj


def write_json(path: str, obj: Any, fsync: bool = False) -> None:
    """Standard JSON (NaN written as null, which every JSON reader accepts), atomically."""
    text = json.dumps(_null_nan(obj), indent=2, allow_nan=False) + "\n"
    atomic_write(path, lambda f: f.write(text.encode("utf-8")), fsync)


def read_json(path: str) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _cell(name: str, value: Any) -> str:
    if value is None:
        return ""
    if name in _BOOL:
        return "1" if value else "0"
    if name in _F32 or name in _F64:
        v = float(value)
        if math.isnan(v):
            return ""
        if name == "pointing_hit":
            return "1" if v else "0"
        if name in _F32:
            return str(np.float32(v))  # the shortest text that reads back to the same float32
        return str(int(v)) if v.is_integer() and name == "passes" else repr(v)
    return str(value)


def format_rows(rows: Iterable[Mapping[str, Any]]) -> bytes:
    """The CSV text (UTF-8, header first) of table rows given as dicts keyed by :data:`COLUMNS`."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(COLUMNS)
    for row in rows:
        writer.writerow([_cell(c, row.get(c)) for c in COLUMNS])
    return buf.getvalue().encode("utf-8")


def _column(name: str, cells: list[str]) -> np.ndarray:
    if name in _INT:
        return np.array([int(c) if c else -1 for c in cells], dtype=np.int64)
    if name in _BOOL:
        return np.array([c == "1" for c in cells], dtype=bool)
    if name in _F32:
        return np.array([float(c) if c else math.nan for c in cells], dtype=np.float32)
    if name in _F64:
        return np.array([float(c) if c else math.nan for c in cells], dtype=np.float64)
    return np.array(cells, dtype=object)


def read_table(out_dir: str) -> dict[str, np.ndarray]:
    """Every committed row of ``OUT/samples/*.csv`` as columns (shards in (run, rank, batch) order; duplicates kept)."""
    folder = os.path.join(out_dir, SAMPLES)
    names = sorted((parse_stem(f[:-4]), f) for f in os.listdir(folder) if f.endswith(".csv") and parse_stem(f[:-4])) if os.path.isdir(folder) else []
    cells: list[list[str]] = [[] for _ in COLUMNS]
    for _, name in names:
        path = os.path.join(folder, name)
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None or tuple(header) != COLUMNS:
                raise ValueError(f"{path}: not a table of this format (header {header}); expected the columns {list(COLUMNS)}")
            for line in reader:
                if len(line) != len(COLUMNS):
                    raise ValueError(f"{path}: a row has {len(line)} cells, not {len(COLUMNS)}")
                for k, c in enumerate(line):
                    cells[k].append(c)
    return {name: _column(name, col) for name, col in zip(COLUMNS, cells, strict=True)}


def next_run(out_dir: str) -> int:
    """The attempt number of a new run in ``out_dir``: one more than any shard's, 0 in an empty folder."""
    runs = [-1]
    for _, _, files in os.walk(out_dir):
        for f in files:
            parsed = parse_stem(f.rsplit(".", 1)[0])
            if parsed:
                runs.append(parsed[0])
    return max(runs) + 1


def clean(out_dir: str) -> None:
    """Delete what a killed run left: temporary files, and arrays whose batch has no table (never committed)."""
    samples = os.path.join(out_dir, SAMPLES)
    committed = {f[:-4] for f in os.listdir(samples) if f.endswith(".csv")} if os.path.isdir(samples) else set()
    for f in os.listdir(out_dir):  # run.json and scores.json being written
        if ".tmp-" in f:
            os.remove(os.path.join(out_dir, f))
    for sub in (SAMPLES, MAPS, *CURVES):
        for folder, _, files in os.walk(os.path.join(out_dir, sub)):
            for f in files:
                stem = f.rsplit(".", 1)[0]
                if ".tmp-" in f or (f.endswith(".npy") and parse_stem(stem) and stem not in committed):
                    os.remove(os.path.join(folder, f))
