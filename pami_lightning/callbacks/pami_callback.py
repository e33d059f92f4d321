r"""
PAMI Callback
=============

Explains a fixed set of validation samples with PAMI during training, scores the explanations and
logs the scores, heatmap overlays and explanation drift next to the validation metrics.
"""

from __future__ import annotations

import copy
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, Optional, Union

import lightning.pytorch as pl
from lightning.pytorch.callbacks.callback import Callback
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from torch import Tensor
from typing_extensions import override

from ..explainer import PAMI
from .cost import CountedCall, fit_to_budget, with_window_budget
from .distributed import broadcast_outcome, guard
from .drift import DriftHistory
from .explaining import Shard, as_history, explain_shard, gather, predict
from .logging import dispatch
from .options import PAMIOptions, warn_if_coarse
from .pictures import Pictures
from .report import Explained, build_report, table_rows
from .samples import Sample, default_batch_to_sample, digest, isolated_rng, load_items, pick_loader, to_device
from .scoring import METRICS, MODEL_METRICS, MetricName, Scorer, causal_points
from .text import TokensFn, text_batch_to_sample

#: What is logged for a metric before it has any value to carry over.
WORST: dict[str, float] = {"pointing_game": 0.0, "energy_pointing_game": 0.0, "insertion": 0.0, "deletion": 1.0}


class PAMICallback(Callback):
    r"""Explain fixed validation samples with PAMI at every (n-th) validation and log the results.

    At the end of an explained validation the callback explains its samples (sharded over DDP ranks,
    in full forward batches, under the trainer's precision), scores the maps and logs, at the step of
    the validation scalars:

    - ``<key_prefix>/<metric>`` for each of ``metrics`` through ``pl_module.log``, so ModelCheckpoint
      and EarlyStopping can monitor them: ``pointing_game`` (a flat map, without a real maximum,
      counts as a miss; TorchRay takes its first pixel), ``energy_pointing_game`` (baseline-subtracted:
      the map's minimum removed first, so a uniform map scores no energy), and
      ``insertion`` / ``deletion``, mean RISE AUCs;
    - ``<key_prefix>/stability``: the mean Spearman rank correlation of each sample's map with its map
      at the previous explained validation (from the second one on);
    - once per set of samples, ``<key_prefix>/pointing_game_center`` and ``.../pointing_game_random``:
      the pointing game of the image centre and of a random point (the paper's Table 4 baselines), so
      the pointing game can be read against chance;
    - per explanation ``<key_prefix>/seconds`` (wall time, pictures included) and ``.../passes``
      (forward passes, all ranks), and at every validation ``.../carried_over`` and ``.../failed``
      (1 or 0, see below);
    - images: overlays and a timeline to TensorBoard, W&B or, for other loggers with a ``log_dir``
      (e.g. CSVLogger), files (see :mod:`pami_lightning.callbacks.logging`).

    While it works, the forward passes show on the trainer's progress bar.

    How the samples are picked and checked before training, which validations are explained,
    faults and resuming: :doc:`/guide/callback`.

    It never changes training: the random states, every submodule's train/eval mode and the weights
    are untouched, and the model runs without autograd.

    Args:
        num_samples: how many samples to explain, evenly spaced over the dataset (default 8).
            Ignored when ``sample_indices`` is given.
        sample_indices: dataset indices of the samples to explain.
        explainer: the explainer: :class:`~pami_lightning.callbacks.PAMIOptions` (default
            ``PAMIOptions()``: size-aware windows, the paper's blur), built around the LightningModule
            at setup, or a ready :class:`~pami_lightning.PAMI`, used as given (the callback runs a
            copy whose forward passes it counts; the given one is unchanged).
        dataloader_idx: which validation (or test) dataloader the samples come from (default 0).
        target: explain each sample's ``"label"`` (default) or the model's ``"pred"`` (top-1).
        every_n_validations: explain the first validation and every n-th after it (default 1: all);
            it counts validation runs, several per epoch with ``val_check_interval < 1``.
        metrics: scores to log, any of ``"pointing_game"``, ``"energy_pointing_game"`` (need object
            masks), ``"insertion"``, ``"deletion"`` (default: all four).
        pointing_tolerance: pointing game tolerance in pixels (default None: 15/224 of the masks'
            smaller side, TorchRay's 15 px at 224 px); 0 means the maximum must lie inside the mask.
        max_passes: forward passes per explained validation, at most (default None: no budget). The
            callback meets it by widening the windows' stride (the radius is kept; a ``SlidingWindow``
            partition is needed), after the clean passes and the insertion / deletion curves, and
            logs the stride it chose.
        pictures: what the logged pictures show and how (:class:`~pami_lightning.callbacks.Pictures`,
            or a dict of its arguments; default ``Pictures()``).
        key_prefix: prefix of every logged key (default ``"pami"``).
        batch_to_sample: turns a collated batch into ``(images, labels, masks)`` or a
            :class:`~pami_lightning.callbacks.Sample`; the default understands ``x``, ``(x, y)``,
            ``(x, y, mask)`` and dicts with ``image``/``input``, ``label``/``target``, ``mask``/``boxes``
            keys (for text: ids, ``(ids, labels)`` and tokenizer dicts with a ``label`` key).
        tokens: text samples: turns a sample's token ids into the strings shown, e.g.
            ``tokenizer.convert_ids_to_tokens`` (default: the ids themselves).
        on_validate: also explain under ``trainer.validate()`` (default False).
        on_test: also explain under ``trainer.test()``, samples from the test dataloader (default False).
        on_error: ``"warn"`` (default: report, flag and go on) or ``"raise"``.
        every_n_val_epochs: deprecated name of ``every_n_validations``.

    Text: with a token partition (``TokenWindows`` / ``Words`` and ``TokenMask`` / ``AttentionMask``)
    the samples are token ids or dicts, the model is called ``model(**inputs)``, and each sample is
    logged as its tokens highlighted by importance. Only ``stability`` is scored: the other metrics
    need images.

    Attributes:
        pami: the :class:`~pami_lightning.PAMI` the callback runs, built at setup (its partition
            within the ``max_passes`` budget once the samples' size is known).

    What it has seen is readable after (or during) a run: :attr:`last_scores`, :attr:`last_maps`,
    :attr:`explained_indices`, :attr:`sample_rows`, :attr:`timeline_validations` and
    :attr:`validations_seen`.

    Raises:
        ValueError, TypeError: on an invalid argument.
        MisconfigurationException: with FSDP / DeepSpeed / model-parallel strategies (each rank calls
            the module on its own shard) or without the dataloader the samples come from.

    Example::

        import lightning as L
        from lightning.pytorch.loggers import TensorBoardLogger
        from pami_lightning import PAMICallback, SlidingWindow
        from pami_lightning.callbacks import PAMIOptions

        trainer = L.Trainer(
            callbacks=[PAMICallback(num_samples=8, explainer=PAMIOptions(partition=SlidingWindow(radius=16, stride=4)))],
            logger=TensorBoardLogger("logs"),
        )
    """

    def __init__(
        self,
        num_samples: int = 8,
        sample_indices: Optional[Sequence[int]] = None,
        explainer: Optional[Union[PAMIOptions, PAMI]] = None,
        dataloader_idx: int = 0,
        target: Literal["label", "pred"] = "label",
        every_n_validations: int = 1,
        metrics: Sequence[MetricName] = METRICS,
        pointing_tolerance: Optional[float] = None,
        max_passes: Optional[int] = None,
        pictures: Optional[Union[Pictures, Mapping[str, Any]]] = None,
        key_prefix: str = "pami",
        batch_to_sample: Optional[Callable[[Any], Any]] = None,
        tokens: Optional[TokensFn] = None,
        on_validate: bool = False,
        on_test: bool = False,
        on_error: Literal["warn", "raise"] = "warn",
        every_n_val_epochs: Optional[int] = None,
    ) -> None:
        if every_n_val_epochs is not None:
            warnings.warn("PAMICallback(every_n_val_epochs=) is deprecated: it counts validation runs, not epochs — use every_n_validations=",
                          DeprecationWarning, stacklevel=2)
            every_n_validations = every_n_val_epochs
        if sample_indices is not None:
            sample_indices = [int(i) for i in sample_indices]
            if not sample_indices or len(set(sample_indices)) != len(sample_indices):
                raise ValueError(f"sample_indices must be non-empty and without repeats; got {sample_indices}")
        elif num_samples < 1:
            raise ValueError(f"num_samples must be >= 1; got {num_samples}")
        if explainer is not None and not isinstance(explainer, (PAMIOptions, PAMI)):
            raise TypeError(f"explainer must be PAMIOptions(...) or a PAMI; got {type(explainer).__name__}")
        if target not in ("label", "pred"):
            raise ValueError(f'target must be "label" or "pred"; got "{target}"')
        if every_n_validations < 1:
            raise ValueError(f"every_n_validations must be >= 1; got {every_n_validations}")
        unknown = [m for m in metrics if m not in METRICS]
        if unknown:
            raise ValueError(f"unknown metrics {unknown}; choose from {list(METRICS)}")
        if pointing_tolerance is not None and pointing_tolerance < 0:
            raise ValueError(f"pointing_tolerance must be >= 0 pixels, or None for 15/224 of the image; got {pointing_tolerance}")
        if max_passes is not None:
            if max_passes < 1:
                raise ValueError(f"max_passes must be >= 1 forward passes per validation, or None; got {max_passes}")
            partition = explainer.partition if explainer is not None else None
            if partition is not None:
                with_window_budget(partition, 1)  # refuses partitions without a stride to widen
        if not key_prefix:
            raise ValueError("key_prefix must be a non-empty string")
        for name, value in (("batch_to_sample", batch_to_sample), ("tokens", tokens)):
            if value is not None and not callable(value):
                raise ValueError(f"{name} must be callable; got {type(value).__name__}")
        if on_error not in ("warn", "raise"):
            raise ValueError(f'on_error must be "warn" or "raise"; got "{on_error}"')

        self.num_samples, self.sample_indices, self.explainer = num_samples, sample_indices, explainer
        self.dataloader_idx, self.target, self.every_n_validations = dataloader_idx, target, every_n_validations
        self.metrics = list(dict.fromkeys(metrics))
        self.pointing_tolerance, self.max_passes = pointing_tolerance, max_passes
        self.pictures = Pictures(**pictures) if isinstance(pictures, Mapping) else pictures if pictures is not None else Pictures()
        self.key_prefix, self.batch_to_sample, self.tokens = key_prefix, batch_to_sample, tokens
        self.on_validate, self.on_test, self.on_error = on_validate, on_test, on_error

        self.pami: Optional[PAMI] = None  #: the PAMI the callback runs (built at setup)
        self._call: Optional[CountedCall] = None  # its model call, counting forward passes
        self._partition: Any = None  # the partition before the window budget
        self._scorer: Optional[Scorer] = None
        self._text = False  # token sequences instead of images (from the partition)
        # Kept in checkpoints: fit validation runs seen, the drift history, the last logged values and
        # what the history's maps were made of (settings and samples).
        self._val_count = 0
        self._history = DriftHistory()
        self._last: dict[str, float] = {}
        self._made_of: Optional[tuple[str, str]] = None
        # The samples: read per run, again when the loader's dataset changes.
        self._dataset: Any = None
        self._indices: list[int] = []
        self._sample: Optional[Sample] = None  # on the device, after the transfer hooks
        self._baselines_due = False
        self._warned_no_masks = False

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(key_prefix=self.key_prefix, dataloader_idx=self.dataloader_idx)

    # What the callback remembers, read-only (copies); all of it is restored from checkpoints.

    @property
    def validations_seen(self) -> int:
        """Fit validation runs seen so far, explained or not (what ``every_n_validations`` counts)."""
        return self._val_count

    @property
    def last_scores(self) -> dict[str, float]:
        """The scores of the last explanation, by metric name without the prefix (``"insertion"``,
        ``"stability"``, ...); empty before the first. They are what in-between validations carry
        over, so they outlive a change of samples until the next explanation."""
        return dict(self._last)

    @property
    def last_maps(self) -> Optional[Tensor]:
        """The maps of the last explanation, ``[N, H, W]`` float32 on the CPU (text: ``[N, L]``), in the
        order of :attr:`explained_indices`; ``None`` before the first."""
        maps = self._history.last_maps
        return None if maps is None else (maps[:, 0] if self._text else maps).clone()

    @property
    def explained_indices(self) -> list[int]:
        """Dataset indices of the samples behind :attr:`last_maps`."""
        return list(self._history.indices)

    @property
    def timeline_validations(self) -> list[int]:
        """The validation count of each column of the drift timeline, oldest first: the fit
        validation it followed (1 = the first; a ``trainer.validate()`` or ``test()`` column has the
        count of the last fit validation, 0 before any).

        It restarts when the samples or their size change, and keeps the newest 50."""
        return list(self._history.columns)

    @property
    def sample_rows(self) -> list[dict[str, Any]]:
        """One row per sample and explanation, oldest first: what the W&B table and the CSV logger get
        (``sample`` (its dataset index), ``validation``, ``epoch``, ``label``, ``prediction``,
        ``p_target``, the sample's scores, ...)."""
        return [dict(row) for row in self._history.rows]

    # ------------------------------------------------------------------ hooks

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if isinstance(trainer.strategy, (FSDPStrategy, DeepSpeedStrategy, ModelParallelStrategy)):
            raise MisconfigurationException(
                f"PAMICallback calls the LightningModule directly on each rank, which {type(trainer.strategy).__name__} "
                "does not allow (every forward is a collective there); use a DDP or single-device strategy"
            )
        # Built per run: a later fit or validate may bring another LightningModule.
        given = self.explainer if isinstance(self.explainer, PAMI) else (self.explainer or PAMIOptions()).build(pl_module)
        self.pami = copy.copy(given)
        self._call = CountedCall(given.call)
        self.pami.call, self.pami.progress = self._call, False
        self._partition = given.partition
        if self.max_passes is not None:
            with_window_budget(self._partition, 1)
        self._text = not given.partition.channel_axis
        self._scorer = Scorer([] if self._text else self.metrics, self.pami.call, self.pointing_tolerance)
        self._dataset, self._sample = None, None
        if not trainer.loggers:
            rank_zero_warn(f"PAMICallback: the Trainer has no logger, so no images are logged; the scores are still in "
                           f"trainer.callback_metrics under '{self.key_prefix}/...'")

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if _fast_dev_run(trainer):
            rank_zero_info("PAMICallback: fast_dev_run, so nothing is explained")
        elif trainer.val_dataloaders is not None:  # None without validation batches (or before a later first validation)
            self._prepare(trainer, pl_module, trainer.val_dataloaders)

    @override
    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == TrainerFn.VALIDATING and self.on_validate and not _fast_dev_run(trainer):
            self._prepare(trainer, pl_module, trainer.val_dataloaders)

    @override
    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.on_test and not _fast_dev_run(trainer):
            self._prepare(trainer, pl_module, trainer.test_dataloaders)

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or _fast_dev_run(trainer):
            return
        if trainer.state.fn == TrainerFn.FITTING:
            self._val_count += 1
            if (self._val_count - 1) % self.every_n_validations:
                self._log(pl_module, self._last, carried=True, failed=False)
                return
            self._run(trainer, pl_module, trainer.val_dataloaders)
        elif trainer.state.fn == TrainerFn.VALIDATING and self.on_validate:
            self._run(trainer, pl_module, trainer.val_dataloaders)

    @override
    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.on_test and not _fast_dev_run(trainer):
            self._run(trainer, pl_module, trainer.test_dataloaders)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"val_count": self._val_count, "history": self._history.state_dict(), "last": dict(self._last), "made_of": self._made_of}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._val_count = state_dict["val_count"]
        self._history.load_state_dict(state_dict["history"])
        self._last = dict(state_dict.get("last", {}))
        made_of = state_dict.get("made_of")
        self._made_of = (made_of[0], made_of[1]) if made_of is not None else None

    @override
    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        states = checkpoint.get("callbacks", {})
        if self.state_key in states:
            return
        claimed = {c.state_key for c in getattr(trainer, "callbacks", []) if isinstance(c, PAMICallback)}
        others = [key for key in states if key.startswith(type(self).__qualname__) and key not in claimed]
        if others:
            rank_zero_warn(f"PAMICallback: the checkpoint holds PAMICallback state under {others[0]}, not under this callback's "
                           f"{self.state_key} (another key_prefix or dataloader_idx): its drift history starts afresh")

    # ------------------------------------------------------------------ samples

    def _prepare(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loaders: Any) -> None:
        """Read and check the samples when the loader's dataset is new; size the windows and tolerance to them."""
        assert self.pami is not None and self._scorer is not None
        loader = pick_loader(loaders, self.dataloader_idx, "test" if trainer.testing else "validation")
        if loader.dataset is self._dataset and self._sample is not None:
            return
        with isolated_rng(pl_module.device):
            indices, batch = broadcast_outcome(trainer, lambda: load_items(loader, self.num_samples, self.sample_indices))
            sample = self._to_sample(trainer, pl_module, batch)
            try:
                self._check(trainer, sample)
            except ValueError as error:
                raise ValueError(f"PAMICallback cannot explain its samples (dataset indices {indices}): {error}") from error
        if not self._text:
            self._size_to(trainer, sample)
        made_of = (self._settings(), digest(batch))
        if self._made_of is not None and made_of != self._made_of and self._history.last_maps is not None:
            what = "settings" if made_of[0] != self._made_of[0] else "samples"
            note = f"PAMICallback: the maps in its drift history were made of other {what}"
            if what == "settings":
                rank_zero_warn(f"{note} ({self._made_of[0]}, now {made_of[0]}): stability starts afresh")
            else:
                rank_zero_info(f"{note} (the dataset changed): stability starts afresh")
            self._history = DriftHistory()
        # The chance baselines depend on the masks alone: logged once per set of samples.
        if self._made_of is None or made_of[1] != self._made_of[1]:
            self._baselines_due = sample.masks is not None and "pointing_game" in self._scorer.mask_names
        self._made_of, self._dataset, self._indices, self._sample = made_of, loader.dataset, indices, sample

    def _to_sample(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any) -> Sample:
        """The samples on the device, through the same transfer path as validation batches."""
        batch = to_device(trainer, pl_module, batch, self.dataloader_idx)
        unpack = text_batch_to_sample if self._text else default_batch_to_sample
        return unpack(self.batch_to_sample(batch) if self.batch_to_sample is not None else batch)

    def _check(self, trainer: pl.Trainer, sample: Sample) -> None:
        """The engine's input checks, then one clean forward pass (outputs, labels within the classes)."""
        assert self.pami is not None
        self.pami.check_inputs(sample.images)
        with trainer.precision_plugin.forward_context():
            predict(self.pami, sample.images, sample.labels, self.target)

    def _size_to(self, trainer: pl.Trainer, sample: Sample) -> None:
        """Windows within the budget and warnings for settings sized for larger images."""
        assert self.pami is not None and self._scorer is not None
        spatial = tuple(sample.images.shape[2:])
        n = sample.images.shape[0]
        if self.max_passes is not None:
            chosen = fit_to_budget(self.pami, self._partition, self.max_passes, n, spatial, self._causal_passes(spatial))
            rank_zero_info(f"PAMICallback(max_passes={self.max_passes}): {chosen}")
        masks = sample.masks
        tolerance = self._scorer.tolerance_px(masks.shape[-2:] if masks is not None else spatial)
        warn_if_coarse(self.pami, spatial, tolerance, explicit_tolerance=self.pointing_tolerance is not None)

    def _causal_passes(self, spatial: Sequence[int]) -> int:
        return sum(causal_points(spatial) for name in self.metrics if name in MODEL_METRICS)

    def _settings(self) -> str:
        """What the maps are made of, besides the samples: compared on resume."""
        assert self.pami is not None
        return f"{self.pami.partition!r}, {self.pami.masker!r}, shifts={self.pami.shifts}, second_run={self.pami.second_run}, target={self.target}"

    # ------------------------------------------------------------------ one explanation

    def _run(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loaders: Any) -> None:
        """Explain, score, draw and log; a failure in any step on any rank is reported and flagged (or raised)."""
        assert self._call is not None
        start, passes = time.perf_counter(), self._call.passes
        had_values = bool(self._last)
        with isolated_rng(pl_module.device):
            step = "explaining"
            shard_out, error = guard(trainer, lambda: self._explain(trainer, pl_module, loaders), self.on_error)
            result = None
            if error is None:
                assert shard_out is not None
                step = "scoring"
                result, error = guard(trainer, lambda: self._gather(trainer, shard_out), self.on_error)
            if result is not None:
                rows = table_rows(self._indices, self._val_count, trainer.current_epoch, result)
                step = "logging the pictures of"
                _, error = guard(trainer, lambda: self._draw(trainer, result, rows), self.on_error)
                self._history.push(self._indices, as_history(result.maps, self._text), self._val_count, rows)
                self._last = dict(result.scores)
        seconds, passes = time.perf_counter() - start, self._call.passes - passes
        if result is not None and self._baselines_due and result.sample.masks is not None:
            assert self._scorer is not None
            self._baselines_due = False
            for name, value in self._scorer.baselines(result.sample.masks).items():
                pl_module.log(f"{self.key_prefix}/{name}", value, sync_dist=True, reduce_fx="max")
        self._log(pl_module, self._last, carried=result is None, failed=error is not None, cost=(seconds, passes) if result is not None else None)
        if error is not None:
            run = "training" if trainer.state.fn == TrainerFn.FITTING else "the run"
            kept = "the scores are logged" if result is not None else "the last scores are carried over" if had_values else "each metric's worst value is logged"
            warnings.warn(f"PAMICallback: {step} the samples failed ({type(error).__name__}: {error}); {run} goes on, {kept} and "
                          f"{self.key_prefix}/failed is 1 (on_error=\"raise\" stops instead)", RuntimeWarning, stacklevel=2)
        elif result is not None:
            where = " on rank 0" if trainer.world_size > 1 else ""
            rank_zero_info(f"PAMICallback: {len(self._indices)} samples explained in {seconds:.2f} s, {passes} forward passes{where}")

    def _explain(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loaders: Any) -> Shard:
        """The samples (read when new), then this rank's shard explained; no collective."""
        self._prepare(trainer, pl_module, loaders)
        assert self.pami is not None and self._call is not None and self._scorer is not None and self._sample is not None
        desc = "PAMI" if self.key_prefix == "pami" else f"PAMI ({self.key_prefix})"
        return explain_shard(trainer, self.pami, self._call, self._scorer, self._sample, target=self.target, text=self._text,
                             causal_passes=self._causal_passes, desc=desc)

    def _gather(self, trainer: pl.Trainer, part: Shard) -> Explained:
        assert self._scorer is not None and self._sample is not None
        return gather(trainer, part, self._scorer, self._sample, self._masks(), self._history, self._indices, self._text)

    def _draw(self, trainer: pl.Trainer, result: Explained, rows: list[dict[str, Any]]) -> None:
        """Pictures and tables to the loggers (global rank zero)."""
        if not trainer.is_global_zero:
            return
        report = build_report(
            step=trainer.fit_loop.epoch_loop._batches_that_stepped,  # pl_module.log's step for validation scalars
            prefix=self.key_prefix,
            indices=self._indices,
            result=result,
            rows=rows,
            history=self._history,
            pictures=self.pictures,
            tokens=self.tokens,
            text=self._text,
        )
        dispatch(trainer.loggers, report)

    def _log(self, pl_module: pl.LightningModule, values: Mapping[str, float], *, carried: bool, failed: bool,
             cost: Optional[tuple[float, int]] = None) -> None:
        """The scalars of one validation; the same keys on every rank (Lightning syncs them)."""
        if carried and not values and self._scorer is not None:
            # Nothing to carry yet (the first explanation failed): each metric's worst value, which no monitor prefers.
            values = {name: WORST[name] for name in (*self._scorer.mask_names, *self._scorer.model_names)}
        # Every rank holds the same values; "max" makes Lightning's distributed sync an exact no-op.
        logged = {name: value for name, value in values.items() if name in (*self.metrics, "stability")}
        logged.update(carried_over=float(carried), failed=float(failed))
        for name, value in logged.items():
            pl_module.log(f"{self.key_prefix}/{name}", value, sync_dist=True, reduce_fx="max")
        if cost is not None:
            pl_module.log(f"{self.key_prefix}/seconds", cost[0], sync_dist=True, reduce_fx="max")
            pl_module.log(f"{self.key_prefix}/passes", float(cost[1]), sync_dist=True, reduce_fx="sum")

    def _masks(self) -> Optional[Tensor]:
        assert self._sample is not None and self._scorer is not None
        if self._sample.masks is None and self._scorer.mask_names and not self._warned_no_masks:
            self._warned_no_masks = True
            rank_zero_warn(f"PAMICallback: the samples have no object masks (mask or boxes), so {self._scorer.mask_names} are skipped")
        return self._sample.masks


def _fast_dev_run(trainer: pl.Trainer) -> bool:
    # Set on the Trainer at init (an int or a bool), not declared on the class.
    return bool(getattr(trainer, "fast_dev_run", False))
