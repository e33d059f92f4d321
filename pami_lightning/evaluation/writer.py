"""Writing a run as it goes (``ExplanationWriter``), resuming it (``EvaluationData``), and both in one call (``evaluate``)."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from typing import Any, Literal

import lightning.pytorch as pl
import numpy as np
from lightning.pytorch.callbacks import BasePredictionWriter
from torch.utils.data import DataLoader, Dataset

from ..data.items import collate
from .layout import CURVES, MAPS, RUN_FILE, SAMPLES, SCORES_FILE, atomic_write, clean, format_rows, next_run, read_json, save_npy, shard_stem, write_json
from .module import ExplainedBatch, ExplanationModule
from .results import Results, load_results

__all__ = ["ExplanationWriter", "EvaluationData", "evaluate"]

_FLOAT16_MAX = float(np.finfo(np.float16).max)


class ExplanationWriter(BasePredictionWriter):
    """Stores what :class:`ExplanationModule` explains, batch by batch and rank by rank, in ``out_dir``; resumes a killed run.

    Layout (see :mod:`pami_lightning.evaluation.layout`): ``run.json``, ``scores.json``,
    ``samples/<shard>.csv`` (the per-sample table), ``maps/<method>/<shard>.npy`` (float16
    ``[n, H, W]``), ``insertion|deletion/<method>/<shard>.npy`` (float32 curves), ``<shard>`` =
    ``run{R}-rank{r}-batch{b}``. Files are written atomically and the table last, so a batch is
    either wholly written or not at all.

    Why ``.npy``: numpy is already a dependency, every array tool reads it (``np.load``, memory-mapped
    with ``mmap_mode="r"`` for lazy access; Julia, R and C readers exist), one file per (method,
    batch, rank) needs no locking between ranks, and an atomic rename per file is all the crash
    safety needed. (``safetensors`` and ``zarr`` are not installed here; zarr's concurrent chunk
    writes would need a shared array created up front with the dataset's final size.) float16
    keeps ~3 significant digits, enough to draw and rank a map; scores are computed from the float32
    maps before they are stored.

    On start (rank 0, before any batch): checks ``run.json`` against the module's settings (a
    different configuration is an error), deletes leftovers of a killed run (and ``scores.json``,
    rewritten when the run completes), reads the samples
    already written (:attr:`done`) and adds their sums to the module's metric states, so that
    ``scores.json`` covers the whole dataset. :class:`EvaluationData` leaves the done samples out of
    the dataloader; the module skips them in any other dataloader.

    Args:
        out_dir: the output folder (created).
        map_dtype: ``"float16"`` (default) or ``"float32"``; a batch whose maps exceed float16's
            range is stored as float32 (with a warning).
        save_maps: store the maps (default True); False keeps only the table and curves.
        fsync: flush every file to the disk before its rename (default False: safe against a killed
            process; True: also against a machine crash, at some cost on network file systems).
    """

    def __init__(self, out_dir: str | os.PathLike[str], *, map_dtype: Literal["float16", "float32"] = "float16", save_maps: bool = True, fsync: bool = False) -> None:
        super().__init__(write_interval="batch")
        if map_dtype not in ("float16", "float32"):
            raise ValueError(f'map_dtype must be "float16" or "float32"; got {map_dtype!r}')
        self.out_dir = os.fspath(out_dir)
        self.map_dtype = map_dtype
        self.save_maps = bool(save_maps)
        self.fsync = bool(fsync)
        self.run = 0  #: this run's attempt number (set on setup)
        self.done: list[int] = []  #: dataset indices written by earlier runs (set on setup)
        self._previous: Results | None = None
        self._started = False
        self._warned = False

    # ------------------------------------------------------------------ start

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "predict":
            return
        module = _check_module(pl_module)
        state: tuple[int, list[int]] | None = None
        if trainer.is_global_zero:
            state = self._prepare(module.config(), _dataset_info(trainer))
        # Every rank gets the attempt number and the done samples; nobody writes before this.
        state = trainer.strategy.broadcast(state, src=0)
        assert state is not None
        self.run, self.done = state
        self._started = False

    def _prepare(self, config: dict[str, Any], dataset: dict[str, Any] | None) -> tuple[int, list[int]]:
        os.makedirs(os.path.join(self.out_dir, SAMPLES), exist_ok=True)
        config = {**config, "dataset": dataset}
        path = os.path.join(self.out_dir, RUN_FILE)
        if os.path.isfile(path):
            old = read_json(path)
            changed = sorted(k for k in set(old) | set(config) if old.get(k) != config.get(k) and not (k == "dataset" and (old.get(k) is None or config.get(k) is None)))
            if changed:
                details = "; ".join(f"{k}: {old.get(k)!r} -> {config.get(k)!r}" for k in changed[:4])
                raise ValueError(f"{self.out_dir} holds results of other settings ({details}): resume with the same settings, or write to a new folder")
        else:
            write_json(path, config, self.fsync)
        clean(self.out_dir)
        scores = os.path.join(self.out_dir, SCORES_FILE)
        if os.path.isfile(scores):
            os.remove(scores)  # rewritten when this run completes: never stale next to a partial table
        self._previous = load_results(self.out_dir)
        return next_run(self.out_dir), self._previous.indices().tolist()

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        module = _check_module(pl_module)
        self._started = True
        module.skip(self.done)
        if trainer.is_global_zero and self._previous is not None and len(self._previous):
            # Once, on one rank: the synced sum then counts earlier samples exactly once.
            module.restore({m: self._previous.sums(m) for m in self._previous.methods})

    # ------------------------------------------------------------------ batches

    def write_on_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, prediction: Any, batch_indices: Sequence[int] | None,
                           batch: Any, batch_idx: int, dataloader_idx: int) -> None:
        if not isinstance(prediction, ExplainedBatch):
            raise TypeError(f"ExplanationWriter stores what ExplanationModule.predict_step returns; got {type(prediction).__name__}")
        if not len(prediction):
            return  # padding, or samples already written
        stem = shard_stem(self.run, trainer.global_rank, batch_idx if dataloader_idx == 0 else dataloader_idx * 10**6 + batch_idx)
        for method, out in prediction.methods.items():
            if not out.maps.shape[0]:
                continue
            if self.save_maps:
                save_npy(os.path.join(self.out_dir, MAPS, method, f"{stem}.npy"), self._map_array(out.maps.numpy(), method), self.fsync)
            for kind in CURVES:
                curve = getattr(out, f"{kind}_curve")
                if curve is not None:
                    save_npy(os.path.join(self.out_dir, kind, method, f"{stem}.npy"), curve.numpy().astype(np.float32), self.fsync)
        rows = prediction.rows()
        for row in rows:
            row["shard"] = stem
        data = format_rows(rows)
        # The table last: it commits the batch (the arrays it points to are complete by now).
        atomic_write(os.path.join(self.out_dir, SAMPLES, f"{stem}.csv"), lambda f: f.write(data), self.fsync)

    def _map_array(self, maps: np.ndarray, method: str) -> np.ndarray:
        if self.map_dtype == "float32":
            return maps.astype(np.float32)
        if maps.size and float(np.abs(maps).max()) > _FLOAT16_MAX:
            if not self._warned:
                self._warned = True
                warnings.warn(f"maps of {method!r} exceed float16's range (|value| > {_FLOAT16_MAX:g}): such batches are stored as float32",
                              UserWarning, stacklevel=2)
            return maps.astype(np.float32)
        return maps.astype(np.float16)

    # ------------------------------------------------------------------ end

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        module = _check_module(pl_module)
        if trainer.is_global_zero:
            write_json(os.path.join(self.out_dir, SCORES_FILE), module.scores, self.fsync)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # Nothing was left to explain (Lightning skips an empty loop and its hooks): the scores of the
        # table, which are what the metric states would hold.
        if stage == "predict" and not self._started and trainer.is_global_zero and self._previous is not None and len(self._previous):
            write_json(os.path.join(self.out_dir, SCORES_FILE), _state_keys(self._previous.summary()), self.fsync)


def _state_keys(summary: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The summary without the table-only keys (scores.json holds what the metric states hold)."""
    return {m: {k: v for k, v in s.items() if k not in ("skipped", "seconds", "passes")} for m, s in summary.items()}


def _callbacks(trainer: pl.Trainer | None) -> list[Any]:
    """The trainer's callback list (mutable: a callback appended before ``predict`` runs)."""
    return getattr(trainer, "callbacks", []) if trainer is not None else []


def _check_module(pl_module: pl.LightningModule) -> ExplanationModule:
    if not isinstance(pl_module, ExplanationModule):
        raise TypeError(f"ExplanationWriter writes the predictions of an ExplanationModule; the trainer runs a {type(pl_module).__name__}")
    return pl_module


def _dataset_info(trainer: pl.Trainer) -> dict[str, Any] | None:
    data = getattr(trainer, "datamodule", None)
    return data.describe() if isinstance(data, EvaluationData) else None


class _Remaining(Dataset[Any]):
    """The samples not yet written, padded with marked repeats (``index = -1``) up to one per rank."""

    def __init__(self, dataset: Dataset[Any], indices: list[int], length: int) -> None:
        self.dataset, self.indices, self.length = dataset, indices, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, k: int) -> Any:
        if k < len(self.indices):
            return self.dataset[self.indices[k]]
        item = dict(self.dataset[self.indices[0]])
        item["index"] = -1  # padding: ExplanationModule leaves it out
        return item


class EvaluationData(pl.LightningDataModule):
    """A dataset of :mod:`pami_lightning.data` items as Lightning data for ``Trainer.predict``, without the samples already written.

    The dataloader holds the dataset's indices that the trainer's :class:`ExplanationWriter` has not
    written yet (all of them on a fresh run), in order; Lightning shards them over the ranks. When
    fewer samples remain than there are ranks, marked repeats pad the list so that every rank runs
    (the end-of-run metric sync is a collective); the module leaves them out.

    Args:
        dataset: a map-style dataset of items (dicts with ``image``, ``label``, ``index``, and
            ``mask``, ``id``, ``class_name`` when known), e.g. :class:`~pami_lightning.data.VOCDataset`.
        batch_size: images per batch (default 16): each method explains a batch at once.
        num_workers: dataloader workers (default 0).
        collate_fn: default :func:`~pami_lightning.data.collate`.
        pin_memory: default False.
    """

    def __init__(self, dataset: Dataset[Any], batch_size: int = 16, num_workers: int = 0, collate_fn: Callable[[list[Any]], Any] = collate,
                 pin_memory: bool = False) -> None:
        super().__init__()
        if not hasattr(dataset, "__len__") or not hasattr(dataset, "__getitem__"):
            raise TypeError(f"dataset must be a map-style dataset (len() and [i]); got {type(dataset).__name__}")
        if batch_size < 1 or num_workers < 0:
            raise ValueError(f"batch_size must be >= 1 and num_workers >= 0; got {batch_size}, {num_workers}")
        self.dataset, self.batch_size, self.num_workers = dataset, int(batch_size), int(num_workers)
        self.collate_fn, self.pin_memory = collate_fn, bool(pin_memory)

    @property
    def classes(self) -> list[str] | None:
        """The dataset's class names (``ExplanationModule`` takes ``num_classes`` from them)."""
        classes = getattr(self.dataset, "classes", None)
        return list(classes) if classes is not None else None

    def describe(self) -> dict[str, Any]:
        """What ``run.json`` records of the dataset (a resumed run must see the same size and classes)."""
        return {"type": type(self.dataset).__name__, "size": len(self.dataset), "classes": self.classes}

    def predict_dataloader(self) -> DataLoader[Any]:
        n = len(self.dataset)
        writer = next((c for c in _callbacks(self.trainer) if isinstance(c, ExplanationWriter)), None)
        done = set(writer.done) if writer is not None else set()
        if done and max(done) >= n:
            raise ValueError(f"the output folder holds dataset index {max(done)} but the dataset has {n} items: resume with the same dataset")
        remaining = [i for i in range(n) if i not in done]
        world = self.trainer.world_size if self.trainer is not None else 1
        length = max(len(remaining), world) if remaining else 0
        return DataLoader(_Remaining(self.dataset, remaining, length), batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers,
                          collate_fn=self.collate_fn, pin_memory=self.pin_memory)


def evaluate(trainer: pl.Trainer, module: ExplanationModule, dataset: Dataset[Any], out_dir: str | os.PathLike[str], *,
             batch_size: int = 16, num_workers: int = 0, map_dtype: Literal["float16", "float32"] = "float16") -> Results | None:
    """Explain and score ``dataset`` with ``module``'s methods into ``out_dir``, resuming what is there; the merged results.

    ``trainer.predict`` with an :class:`ExplanationWriter` (added to the trainer's callbacks unless
    one is there) and :class:`EvaluationData`; any strategy, e.g. ``Trainer(strategy="ddp",
    devices=8, num_nodes=4)``. Run the same command again after a kill: it skips what is written
    and ends with the results of an uninterrupted run.

    Returns:
        :func:`load_results` of ``out_dir`` on global rank 0, None on the other ranks.
    """
    out = os.fspath(out_dir)
    writers = [c for c in _callbacks(trainer) if isinstance(c, ExplanationWriter)]
    if writers and os.path.abspath(writers[0].out_dir) != os.path.abspath(out):
        raise ValueError(f"the trainer already has an ExplanationWriter into {writers[0].out_dir}, not {out}")
    if not writers:
        _callbacks(trainer).append(ExplanationWriter(out, map_dtype=map_dtype))
    trainer.predict(module, datamodule=EvaluationData(dataset, batch_size=batch_size, num_workers=num_workers), return_predictions=False)
    return load_results(out) if trainer.is_global_zero else None
