"""``load_results``: an evaluation folder's shards merged into one table, with lazy maps, curves and aggregates."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, overload

import numpy as np

from .aggregate import class_sums, summarize
from .layout import COLUMNS, CURVES, FORMAT, MAPS, RUN_FILE, SCORES_FILE, atomic_write, format_rows, parse_stem, read_json, read_table

__all__ = ["Results", "MapStack", "load_results"]


class MapStack(Sequence[np.ndarray]):
    """The maps of one method, one per explained sample in the table's order; read from disk on access.

    ``stack[k]`` is the ``k``-th map (float32 ``[H, W]``), ``stack.by_index(i)`` the map of dataset
    index ``i``, ``stack.numpy()`` all of them ``[N, H, W]`` (same-size images). Shard files are
    memory-mapped once each.
    """

    def __init__(self, out_dir: str, method: str, shards: np.ndarray, rows: np.ndarray, indices: np.ndarray) -> None:
        self.folder = os.path.join(out_dir, MAPS, method)
        self.shards, self.rows, self.indices = shards, rows, indices
        self._position = {int(i): k for k, i in enumerate(indices)}
        self._files: dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.rows)

    def _file(self, shard: str) -> np.ndarray:
        if shard not in self._files:
            path = os.path.join(self.folder, f"{shard}.npy")
            if not os.path.isfile(path):
                raise FileNotFoundError(f"{path}: the map shard of rows in samples/{shard}.csv is missing (maps not saved, or files removed)")
            self._files[shard] = np.load(path, mmap_mode="r")
        return self._files[shard]

    @overload
    def __getitem__(self, k: int) -> np.ndarray: ...

    @overload
    def __getitem__(self, k: slice) -> list[np.ndarray]: ...

    def __getitem__(self, k: int | slice) -> np.ndarray | list[np.ndarray]:
        if isinstance(k, slice):
            return [self[i] for i in range(*k.indices(len(self)))]
        return np.asarray(self._file(str(self.shards[k]))[int(self.rows[k])], dtype=np.float32)

    def __iter__(self) -> Iterator[np.ndarray]:
        for k in range(len(self)):
            yield self[k]

    def by_index(self, index: int) -> np.ndarray:
        """The map of the sample at dataset index ``index``."""
        if int(index) not in self._position:
            raise KeyError(f"no map of dataset index {index} (not explained, or not written yet)")
        return self[self._position[int(index)]]

    def numpy(self) -> np.ndarray:
        """Every map, float32 ``[N, H, W]`` (needs images of one size)."""
        if not len(self):
            return np.zeros((0, 0, 0), dtype=np.float32)
        return np.stack(list(self))


@dataclass
class Results:
    """An evaluation folder, merged: the per-sample table of every method, sorted by (method, index), without duplicates.

    Attributes:
        out_dir: the folder.
        config: its ``run.json`` (methods, metrics, tolerance, n_steps, substrates, num_classes...).
        columns: the table: one numpy array per column of
            :data:`~pami_lightning.evaluation.layout.COLUMNS` (``index``, ``label``, ``prediction``,
            ``row`` int64, -1 where empty; ``correct``, ``explained`` bool; scores float32 and
            ``seconds``, ``passes`` float64, NaN where empty; strings as object arrays). Methods in
            ``config["methods"]`` order, each by increasing dataset index.
        scores: ``scores.json``, the aggregates of the synced metric states (None before a run completed).
    """

    out_dir: str
    config: dict[str, Any]
    columns: dict[str, np.ndarray]
    scores: dict[str, Any] | None = None
    _maps: dict[str, MapStack] = field(default_factory=dict, repr=False)

    @property
    def methods(self) -> list[str]:
        return list(self.config["methods"])

    @property
    def metrics(self) -> list[str]:
        return list(self.config["metrics"])

    def __len__(self) -> int:
        return len(self.columns["index"])

    def indices(self) -> np.ndarray:
        """The dataset indices written (each once, sorted)."""
        return np.unique(self.columns["index"])

    def table(self, method: str | None = None, explained: bool | None = None) -> dict[str, np.ndarray]:
        """The columns restricted to one ``method`` (default all) and to explained / skipped rows (default both)."""
        keep = np.ones(len(self), dtype=bool)
        if method is not None:
            self._check(method)
            keep &= self.columns["method"] == method
        if explained is not None:
            keep &= self.columns["explained"] == explained
        return {k: v[keep] for k, v in self.columns.items()}

    def _check(self, method: str) -> None:
        if method not in self.methods:
            raise KeyError(f"no method {method!r} in {self.out_dir}; methods: {self.methods}")

    def maps(self, method: str) -> MapStack:
        """The maps of ``method``'s explained samples, in the order of ``table(method, explained=True)`` (lazy)."""
        if method not in self._maps:
            t = self.table(method, explained=True)
            self._maps[method] = MapStack(self.out_dir, method, t["shard"], t["row"], t["index"])
        return self._maps[method]

    def curves(self, method: str, kind: str = "insertion") -> np.ndarray:
        """float32 ``[N, n_steps + 1]``: the ``"insertion"`` or ``"deletion"`` curves of ``method``'s explained samples, table order."""
        if kind not in CURVES:
            raise ValueError(f'kind must be "insertion" or "deletion"; got {kind!r}')
        if kind not in self.metrics:
            raise ValueError(f"{self.out_dir} has no {kind} curves: the run's metrics were {self.metrics}")
        t = self.table(method, explained=True)
        points = int(self.config["n_steps"]) + 1
        out = np.zeros((len(t["row"]), points), dtype=np.float32)
        for shard in np.unique(t["shard"]):
            at = np.nonzero(t["shard"] == shard)[0]
            data = np.load(os.path.join(self.out_dir, kind, method, f"{shard}.npy"), mmap_mode="r")
            out[at] = data[t["row"][at]]
        return out

    def mean_curve(self, method: str, kind: str = "insertion") -> np.ndarray:
        """float64 ``[n_steps + 1]``: the mean curve (its AUC is the mean AUC)."""
        c = self.curves(method, kind)
        return c.astype(np.float64).mean(axis=0) if len(c) else np.full(int(self.config["n_steps"]) + 1, math.nan)

    def sums(self, method: str) -> dict[str, np.ndarray]:
        """Per-class sums of ``method``'s explained samples (what the metric states hold): see :func:`~pami_lightning.evaluation.aggregate.summarize`."""
        t = self.table(method, explained=True)
        hit = t["pointing_hit"].astype(np.float64)
        out = class_sums(t["label"], int(self.config["num_classes"]), images=np.ones(len(hit)), hits=hit,
                         pointed=np.where(np.isnan(hit), np.nan, 1.0), insertion=t["insertion_auc"], deletion=t["deletion_auc"])
        for kind in CURVES:
            points = int(self.config["n_steps"]) + 1
            out[f"{kind}_curve"] = self.curves(method, kind).astype(np.float64).sum(axis=0) if kind in self.metrics else np.zeros(points)
        return out

    def summary(self) -> dict[str, dict[str, Any]]:
        """Aggregates per method from the table: :func:`summarize`'s keys, plus ``skipped`` (not explained),
        ``seconds`` and ``passes`` (means per explained image)."""
        out = {}
        for method in self.methods:
            s = summarize(self.sums(method), self.metrics)
            t = self.table(method)
            done = t["explained"]
            s["skipped"] = int((~done).sum())
            for key in ("seconds", "passes"):
                v = t[key][done]
                s[key] = float(np.nanmean(v)) if np.isfinite(v).any() else math.nan
            out[method] = s
        return out

    def to_csv(self, path: str) -> None:
        """The merged table as one CSV file (same columns as the shards), written atomically."""
        rows = ({c: _value(self.columns[c][i]) for c in COLUMNS} for i in range(len(self)))
        data = format_rows(rows)
        atomic_write(path, lambda f: f.write(data))


def _value(v: Any) -> Any:
    if isinstance(v, np.integer):
        return None if int(v) < 0 else int(v)
    if isinstance(v, np.floating):
        return float(v)
    return v


def _nan_null(obj: Any) -> Any:
    """scores.json's nulls (NaN: nothing counted) back to NaN."""
    if obj is None:
        return math.nan
    if isinstance(obj, dict):
        return {k: _nan_null(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_nan_null(v) for v in obj]
    return obj


def load_results(out_dir: str | os.PathLike[str]) -> Results:
    """Merge an evaluation folder written by :class:`~pami_lightning.evaluation.ExplanationWriter`.

    Every committed shard is read; a sample written twice (a padding sampler, a re-run batch) keeps
    its first row in (run, rank, batch) order. Rows are sorted by method (``run.json`` order), then
    dataset index. Maps and curves stay on disk until asked for.

    Raises:
        FileNotFoundError: ``out_dir`` holds no ``run.json``.
        ValueError: a file of another format.
    """
    out_dir = os.fspath(out_dir)
    run_file = os.path.join(out_dir, RUN_FILE)
    if not os.path.isfile(run_file):
        raise FileNotFoundError(f"{run_file}: not found — {out_dir} is not the output folder of an evaluation run")
    config = read_json(run_file)
    if config.get("format") != FORMAT:
        raise ValueError(f"{run_file}: format {config.get('format')!r}, not {FORMAT!r}")
    raw = read_table(out_dir)
    order = {m: k for k, m in enumerate(config["methods"])}
    n = len(raw["index"])
    method_rank = np.array([order.get(m, len(order)) for m in raw["method"]], dtype=np.int64)
    parsed = [parse_stem(s) or (0, 0, 0) for s in raw["shard"]]
    shard = np.array(parsed, dtype=np.int64).reshape(n, 3)
    keys = (np.arange(n), shard[:, 2], shard[:, 1], shard[:, 0], raw["index"], method_rank)  # lexsort: last key first
    at = np.lexsort(keys) if n else np.zeros(0, dtype=np.int64)
    m, i = method_rank[at], raw["index"][at]
    first = np.ones(len(at), dtype=bool)
    first[1:] = (m[1:] != m[:-1]) | (i[1:] != i[:-1])
    at = at[first]
    columns = {k: v[at] for k, v in raw.items()}
    scores_file = os.path.join(out_dir, SCORES_FILE)
    scores = _nan_null(read_json(scores_file)) if os.path.isfile(scores_file) else None
    return Results(out_dir=out_dir, config=config, columns=columns, scores=scores)
