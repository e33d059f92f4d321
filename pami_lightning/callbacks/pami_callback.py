r"""
PAMI Callback
=============

Explains a fixed set of validation samples with PAMI during training, scores the explanations and
logs the scores, heatmap overlays and explanation drift next to the validation metrics.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, Optional, Union

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks.callback import Callback
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch import Tensor
from typing_extensions import override

from .._inputs import Batch, batch_len, main_tensor
from ..explainer import PAMI
from ..forward import Clean
from ..maskers import Masker
from ..partitions.base import Partition
from .drift import DriftHistory
from .logging import dispatch
from .pictures import Pictures
from .report import Explained, build_report, table_rows
from .samples import Sample, default_batch_to_sample, isolated_rng, load_items, pad_to, shard
from .scoring import MASK_METRICS, METRICS, MetricName, Scorer
from .text import TokensFn, is_text, select_rows, spatial_shape, text_batch_to_sample


class PAMICallback(Callback):
    r"""Explain fixed validation samples with PAMI at every (n-th) validation and log the results.

    At the end of an explained validation the callback explains its samples (sharded over DDP ranks,
    in full forward batches, under the trainer's precision), scores the maps and logs, at the step of
    the validation scalars:

    - ``<key_prefix>/<metric>`` for each of ``metrics`` through ``pl_module.log``, so ModelCheckpoint
      and EarlyStopping can monitor them (``pointing_game`` pools all samples; ``insertion`` and
      ``deletion`` are mean RISE AUCs);
    - ``<key_prefix>/stability``: the mean Spearman rank correlation of each sample's map with its map
      at the previous explained validation (from the second one on);
    - images: an overlay grid, one overlay per sample and a timeline (one row per sample, one column
      per explained validation) to TensorBoard, W&B (with captions and a sample x validation table)
      or, for other loggers with a ``log_dir`` such as CSVLogger, PNG files and an ``.npz`` of the maps.

    The samples are picked once without any random generator (evenly spaced over the validation
    dataset, or ``sample_indices``), read from ``trainer.val_dataloaders[dataloader_idx].dataset``,
    collated with the loader's ``collate_fn`` (under DDP, global rank zero's samples are broadcast to
    every rank) and passed through the same transfer hooks as validation batches, so each sample's
    map can be followed from one validation to the next.

    It never changes training: the random states, every submodule's train/eval mode and the weights
    are untouched, the model runs without autograd (under the trainer's ``no_grad`` inside ``fit``,
    as validation steps do), and the sanity check is skipped.

    Args:
        num_samples: how many validation samples to explain, evenly spaced over the validation
            dataset (default 8). Ignored when ``sample_indices`` is given.
        sample_indices: dataset indices of the samples to explain.
        partition: how images are split (default ``SlidingWindow(radius=40, stride=6)``).
        masker: what replaces the removed parts (default ``Blur(49, 100)``).
        preprocess: applied to masked images before the model (e.g. normalisation); the samples must
            be pixel-space images in ``[0, 1]``.
        output: ``"softmax"`` (default), ``"sigmoid"``, ``"identity"`` or ``callable(outputs, target) -> [N]``.
        batch_size: masked images per forward call (default 64).
        explainer: a ready :class:`~pami_lightning.PAMI` whose settings and model call
            (``explainer.call``: model, ``forward``, preprocess, output, autocast) are used, instead
            of ``partition`` / ``masker`` / ``preprocess`` / ``output`` / ``batch_size``. The callback
            runs a copy whose model calls keep the trainer's ``no_grad``; the given one is unchanged.
        dataloader_idx: which validation dataloader the samples come from (default 0).
        target: explain each sample's ``"label"`` (default) or the model's ``"pred"`` (top-1).
        every_n_val_epochs: explain every n-th validation run (default 1: all). The keys are logged
            only at explained validations: an ``EarlyStopping`` monitoring them then needs ``strict=False``.
        metrics: scores to log, any of ``"pointing_game"``, ``"energy_pointing_game"`` (need object
            masks), ``"insertion"``, ``"deletion"`` (default: all four).
        pointing_tolerance: pointing game tolerance in pixels (default 15, TorchRay's); 0 means the
            map's maximum must lie inside the mask.
        pictures: what the logged pictures show and how (:class:`~pami_lightning.callbacks.Pictures`:
            ``enabled``, ``max_images``, ``cmap``, ``alpha``, ``scale``, ``class_names``; default ``Pictures()``).
        key_prefix: prefix of every logged key (default ``"pami"``).
        batch_to_sample: turns a collated validation batch into ``(images, labels, masks)`` or a
            :class:`~pami_lightning.callbacks.Sample`; the default understands ``x``, ``(x, y)``,
            ``(x, y, mask)`` and dicts with ``image``/``input``, ``label``/``target``, ``mask``/``boxes`` keys.
        on_validate: also explain under ``trainer.validate()`` (default False).
        tokens: text samples: turns a sample's token ids into the strings shown, e.g.
            ``tokenizer.convert_ids_to_tokens`` (default: the ids themselves).

    Text: with a token partition (``TokenWindows`` / ``Words`` and ``TokenMask`` / ``AttentionMask``)
    the samples are token ids or dicts (``input_ids``, ``attention_mask``, ``word_ids``, ... and a
    ``label`` key), the model is called ``model(**inputs)``, and each sample is logged as its tokens
    highlighted by importance (images to TensorBoard, ``wandb.Html`` to W&B, PNG and HTML files
    otherwise). Only ``stability`` is scored: the other metrics need images.

    Raises:
        ValueError: on an invalid argument.
        MisconfigurationException: with FSDP / DeepSpeed / model-parallel strategies (each rank calls
            the module on its own shard) or without a validation dataloader.

    Example::

        import lightning as L
        from lightning.pytorch.loggers import TensorBoardLogger
        from pami_lightning import PAMICallback, SlidingWindow

        trainer = L.Trainer(
            callbacks=[PAMICallback(num_samples=8, partition=SlidingWindow(radius=16, stride=4))],
            logger=TensorBoardLogger("logs"),
        )
    """

    def __init__(
        self,
        num_samples: int = 8,
        sample_indices: Optional[Sequence[int]] = None,
        partition: Optional[Partition] = None,
        masker: Optional[Masker] = None,
        preprocess: Optional[Callable[[Tensor], Tensor]] = None,
        output: Union[Literal["softmax", "sigmoid", "identity"], Callable[[Tensor, Tensor], Tensor]] = "softmax",
        batch_size: int = 64,
        explainer: Optional[PAMI] = None,
        dataloader_idx: int = 0,
        target: Literal["label", "pred"] = "label",
        every_n_val_epochs: int = 1,
        metrics: Sequence[MetricName] = METRICS,
        pointing_tolerance: float = 15,
        pictures: Optional[Union[Pictures, Mapping[str, Any]]] = None,
        key_prefix: str = "pami",
        batch_to_sample: Optional[Callable[[Any], Any]] = None,
        on_validate: bool = False,
        tokens: Optional[TokensFn] = None,
    ) -> None:
        if sample_indices is not None:
            sample_indices = [int(i) for i in sample_indices]
            if not sample_indices or len(set(sample_indices)) != len(sample_indices):
                raise ValueError(f"sample_indices must be non-empty and without repeats; got {sample_indices}")
        elif num_samples < 1:
            raise ValueError(f"num_samples must be >= 1; got {num_samples}")
        if explainer is not None and (
            partition is not None or masker is not None or preprocess is not None or output != "softmax" or batch_size != 64
        ):
            raise ValueError("pass either explainer= or partition/masker/preprocess/output/batch_size, not both")
        if explainer is None:
            # Validate the engine's arguments now; the real explainer needs the LightningModule (setup).
            PAMI(torch.nn.Identity(), partition, masker, preprocess, output, batch_size)
        if target not in ("label", "pred"):
            raise ValueError(f'target must be "label" or "pred"; got "{target}"')
        if every_n_val_epochs < 1:
            raise ValueError(f"every_n_val_epochs must be >= 1; got {every_n_val_epochs}")
        unknown = [m for m in metrics if m not in METRICS]
        if unknown:
            raise ValueError(f"unknown metrics {unknown}; choose from {list(METRICS)}")
        if pointing_tolerance < 0:
            raise ValueError(f"pointing_tolerance must be >= 0 pixels; got {pointing_tolerance}")
        if not key_prefix:
            raise ValueError("key_prefix must be a non-empty string")
        if batch_to_sample is not None and not callable(batch_to_sample):
            raise ValueError(f"batch_to_sample must be callable; got {type(batch_to_sample).__name__}")
        if tokens is not None and not callable(tokens):
            raise ValueError(f"tokens must be callable (ids -> token strings); got {type(tokens).__name__}")

        self.num_samples, self.sample_indices = num_samples, sample_indices
        self.partition, self.masker, self.preprocess, self.output, self.batch_size = partition, masker, preprocess, output, batch_size
        self.explainer = self._given_explainer = explainer
        self.dataloader_idx, self.target, self.every_n_val_epochs = dataloader_idx, target, every_n_val_epochs
        self.metrics = list(dict.fromkeys(metrics))
        self.pointing_tolerance = pointing_tolerance
        self.pictures = Pictures(**pictures) if isinstance(pictures, Mapping) else pictures if pictures is not None else Pictures()
        self.key_prefix = key_prefix
        self.batch_to_sample = batch_to_sample or default_batch_to_sample
        self.on_validate, self.tokens = on_validate, tokens
        self._text = False  # token sequences instead of images: set in setup from the partition

        self._val_count = 0  # fit validation runs seen (not the sanity check), kept in checkpoints
        self._history = DriftHistory()
        self._indices: Optional[list[int]] = None  # dataset indices of the samples, chosen once
        self._batch: Any = None  # their collated batch, on the CPU, before the transfer hooks
        self._scorer: Optional[Scorer] = None
        self._warned_no_masks = self._warned_no_logger = False

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(key_prefix=self.key_prefix, dataloader_idx=self.dataloader_idx)

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if isinstance(trainer.strategy, (FSDPStrategy, DeepSpeedStrategy, ModelParallelStrategy)):
            raise MisconfigurationException(
                f"PAMICallback calls the LightningModule directly on each rank, which {type(trainer.strategy).__name__} "
                "does not allow (every forward is a collective there); use a DDP or single-device strategy"
            )
        # Built per run: a later fit or validate may bring another LightningModule.
        explainer = self._given_explainer
        if explainer is None:
            explainer = PAMI(pl_module, self.partition, self.masker, self.preprocess, self.output, self.batch_size, progress=False)
        # The model calls keep the trainer's own grad-free context: no_grad inside fit, where a tensor
        # the model caches in inference mode would break the next training step (and no_grad inside
        # validate()'s inference mode stays inference mode). A copy: the user's explainer is untouched.
        self.explainer = copy.copy(explainer)
        self.explainer.call = explainer.call.replace(inference_mode=False)
        self._text = is_text(self.explainer)
        if self._text:
            self.metrics = []  # pointing games, insertion and deletion need images
        self._scorer = Scorer(self.metrics, self.explainer.call, self.pointing_tolerance)
        if not trainer.loggers and not self._warned_no_logger:
            self._warned_no_logger = True
            rank_zero_warn(
                "PAMICallback: the Trainer has no logger, so no images are logged; "
                f"the scores are still in trainer.callback_metrics under '{self.key_prefix}/...'"
            )

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        if trainer.state.fn == TrainerFn.FITTING:
            self._val_count += 1
            if self._val_count % self.every_n_val_epochs:
                return
        elif not (trainer.state.fn == TrainerFn.VALIDATING and self.on_validate):
            return
        with isolated_rng(pl_module.device):
            result = self._explain(trainer, pl_module)
            self._log(trainer, pl_module, result)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"val_count": self._val_count, "history": self._history.state_dict()}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._val_count = state_dict["val_count"]
        self._history.load_state_dict(state_dict["history"])

    # ------------------------------------------------------------------ the work

    def _explain(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Explained:
        """Explain this rank's shard, gather all shards and score them (every rank, same collectives)."""
        assert self.explainer is not None and self._scorer is not None
        sample = self._samples(trainer, pl_module)
        assert self._indices is not None
        part, size = shard(batch_len(sample.images), trainer.global_rank, trainer.world_size)
        images = select_rows(sample.images, part)
        self._scorer.to(pl_module.device)
        # Hooks run outside the precision context; the model must see what validation_step sees.
        with trainer.precision_plugin.forward_context():
            clean = self._predict(images, None if sample.labels is None else sample.labels[part])
            preds, targets = clean.pred, clean.target
            if batch_len(images):
                maps = self.explainer.explain(images, target=targets).float()
                self._scorer.update_shard(images, maps, targets)
            else:  # more ranks than samples: this rank only pads the gather
                maps = main_tensor(images).new_zeros(0, *spatial_shape(images, self.explainer), dtype=torch.float32)
        maps, ints, floats = self._gather(trainer, size, maps, torch.stack([preds, targets], 1), torch.stack([clean.score, clean.pred_score], 1))
        scores = self._scorer.compute_shards()  # a collective: every rank, never behind is_global_zero
        mask_scores, per_sample = self._scorer.score_all(maps, self._masks(sample))
        scores.update(mask_scores)
        stability = self._history.stability(self._indices, self._as_history(maps))
        if stability is not None:
            scores["stability"] = float(stability.mean())
            per_sample["stability"] = stability
        return Explained(sample, maps, ints[:, 0], ints[:, 1], floats[:, 0], floats[:, 1], scores, per_sample)

    def _log(self, trainer: pl.Trainer, pl_module: pl.LightningModule, result: Explained) -> None:
        for name in [*self.metrics, "stability"]:
            if name in result.scores:
                # Every rank holds the same value; "max" makes Lightning's distributed sync an exact no-op.
                pl_module.log(f"{self.key_prefix}/{name}", result.scores[name], sync_dist=True, reduce_fx="max")
        assert self._indices is not None
        rows = table_rows(self._indices, self._val_count, trainer.current_epoch, result)
        if trainer.is_global_zero:
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
        self._history.push(self._indices, self._as_history(result.maps), self._val_count, rows)

    def _as_history(self, maps: Tensor) -> Tensor:
        """Maps as the drift history keeps them: token maps ``[n, L]`` as one-row images ``[n, 1, L]``."""
        return maps.unsqueeze(1) if self._text else maps

    def _samples(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Sample:
        """The samples on the device, through the same transfer path as validation batches."""
        if self._batch is None:
            loader = _val_loader(trainer.val_dataloaders, self.dataloader_idx)
            # Rank zero's samples for every rank: a stream sharded by rank, or augmentations drawing
            # from per-rank random states, would give each rank other items under the same indices.
            self._indices, self._batch = trainer.strategy.broadcast(load_items(loader, self.num_samples, self.sample_indices), src=0)
        # A copy: users' transfer hooks may edit the batch in place.
        batch = trainer.precision_plugin.convert_input(copy.deepcopy(self._batch))
        batch = pl_module._on_before_batch_transfer(batch, dataloader_idx=self.dataloader_idx)
        batch = trainer.strategy.batch_to_device(batch, dataloader_idx=self.dataloader_idx)
        if self._text:
            return text_batch_to_sample(batch if self.batch_to_sample is default_batch_to_sample else self.batch_to_sample(batch))
        return default_batch_to_sample(self.batch_to_sample(batch))

    def _predict(self, images: Batch, labels: Optional[Tensor]) -> Clean:
        """Top-1 prediction, explained class and the scores of both, per sample ``[m]``."""
        assert self.explainer is not None
        if self.target == "label" and labels is None:
            raise ValueError('PAMICallback(target="label") needs labels, but the samples have none: use target="pred" or pass batch_to_sample=')
        given = labels.to(main_tensor(images).device) if self.target == "label" and labels is not None else None
        # On copies of the samples: an in-place preprocess or model must not rewrite them before they
        # are explained and scored.
        return self.explainer.call.clean(images, given)

    def _gather(self, trainer: pl.Trainer, size: int, maps: Tensor, ints: Tensor, floats: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """All ranks' shards in sample order; shards are padded to ``size`` rows, marked by id -1."""
        ids = torch.arange(ints.shape[0], device=ints.device)
        ints = torch.cat([ids[:, None], ints], 1)
        gathered = [
            trainer.strategy.all_gather(pad_to(t, size, fill)).reshape(-1, *t.shape[1:])
            for t, fill in ((maps, 0), (ints, -1), (floats, 0))
        ]
        keep = gathered[1][:, 0] >= 0
        return gathered[0][keep], gathered[1][keep, 1:], gathered[2][keep]

    def _masks(self, sample: Sample) -> Optional[Tensor]:
        asked = [m for m in self.metrics if m in MASK_METRICS]
        if sample.masks is None and asked and not self._warned_no_masks:
            self._warned_no_masks = True
            rank_zero_warn(f"PAMICallback: the samples have no object masks (mask or boxes), so {asked} are skipped")
        return sample.masks


def _val_loader(loaders: Any, idx: int) -> Any:
    if loaders is None:
        raise MisconfigurationException("PAMICallback needs a validation dataloader")
    if isinstance(loaders, Mapping):
        loaders = list(loaders.values())
    if not isinstance(loaders, (list, tuple)):
        loaders = [loaders]
    if not 0 <= idx < len(loaders):
        raise MisconfigurationException(f"PAMICallback(dataloader_idx={idx}) but there are {len(loaders)} validation dataloaders")
    return loaders[idx]
