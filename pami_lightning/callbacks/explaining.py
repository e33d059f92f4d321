"""The callback's data path for one explanation, as functions of what they use (the callback keeps the
state): this rank's shard -> clean predictions -> PAMI maps -> the model metrics; then every rank's
shard gathered -> the mask metrics and stability."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Optional

import lightning.pytorch as pl
import torch
from torch import Tensor

from .._inputs import main_tensor
from ..explainer import PAMI
from ..forward import Clean
from .cost import CountedCall, PassesBar, expected_passes
from .distributed import gather_shards
from .drift import DriftHistory
from .report import Explained
from .samples import Sample, shard
from .scoring import Scorer, mean
from .text import select_rows, spatial_shape

__all__ = ["Shard", "as_history", "explain_shard", "gather", "predict"]


@dataclass
class Shard:
    """One rank's part of an explanation, ready to be gathered.

    ``maps`` ``[m, H, W]`` float32 (``[m, L]`` for text); ``ints`` ``[m, 2]``: top-1 class and explained
    class; ``floats`` ``[m, 2 + k]``: p(target), p(pred) and the ``k`` model metrics; ``size``: the
    largest shard of any rank (what the gather pads to).
    """

    maps: Tensor
    ints: Tensor
    floats: Tensor
    size: int


def predict(pami: PAMI, images: Any, labels: Optional[Tensor], target: Literal["label", "pred"]) -> Clean:
    """Top-1 prediction, explained class and the scores of both, per sample ``[m]``."""
    if target == "label" and labels is None:
        raise ValueError('target="label" needs labels, but the samples have none: use target="pred" or pass batch_to_sample=')
    given = labels.to(main_tensor(images).device) if target == "label" and labels is not None else None
    # On copies of the samples: an in-place preprocess or model must not rewrite them before they
    # are explained and scored.
    return pami.call.clean(images, given)


def explain_shard(trainer: pl.Trainer, pami: PAMI, call: CountedCall, scorer: Scorer, sample: Sample, *, target: Literal["label", "pred"],
                  text: bool, causal_passes: Callable[[tuple[int, ...]], int], desc: str) -> Shard:
    """This rank's shard explained and scored by the model metrics; no collective."""
    n = main_tensor(sample.images).shape[0]
    part, size = shard(n, trainer.global_rank, trainer.world_size)
    images = select_rows(sample.images, part)
    m = main_tensor(images).shape[0]
    spatial = tuple(spatial_shape(images, pami))
    total = expected_passes(pami, m, spatial, causal_passes(spatial)) if not text else None
    call.bar = PassesBar(trainer, total, desc=desc)
    try:
        # Hooks run outside the precision context; the model must see what validation_step sees.
        with trainer.precision_plugin.forward_context():
            clean = predict(pami, images, None if sample.labels is None else sample.labels[part], target)
            if m:
                maps = pami.explain(images, target=clean.target).float()
                # Text has no model metrics (tensor images only).
                model = scorer.model_scores(images, maps, clean) if isinstance(images, Tensor) else maps.new_zeros(m, 0)
            else:  # more ranks than samples: this rank only pads the gather
                maps = main_tensor(images).new_zeros(0, *spatial, dtype=torch.float32)
                model = maps.new_zeros(0, len(scorer.model_names))
    finally:
        call.bar.close()
        call.bar = None
    floats = torch.cat([clean.score[:, None], clean.pred_score[:, None], model.to(clean.score.device)], 1)
    return Shard(maps, torch.stack([clean.pred, clean.target], 1), floats, size)


def gather(trainer: pl.Trainer, part: Shard, scorer: Scorer, sample: Sample, masks: Optional[Tensor], history: DriftHistory,
           indices: list[int], text: bool) -> Explained:
    """Every rank's shard in sample order, then the mask metrics (when ``masks``) and stability: the same on every rank."""
    maps, ints, floats = gather_shards(trainer, part.size, part.maps, part.ints, part.floats)
    floats = floats.cpu()
    per_sample: dict[str, Tensor] = {name: floats[:, 2 + k] for k, name in enumerate(scorer.model_names)}
    scores: dict[str, float] = {name: mean(values) for name, values in per_sample.items()}
    if masks is not None:
        mask_scores, mask_values = scorer.mask_scores(maps, masks)
        scores.update(mask_scores)
        per_sample.update(mask_values)
    stability = history.stability(indices, as_history(maps, text))
    if stability is not None:
        per_sample["stability"] = stability
        scores["stability"] = mean(stability)
    return Explained(sample, maps, ints[:, 0], ints[:, 1], floats[:, 0], floats[:, 1], scores, per_sample)


def as_history(maps: Tensor, text: bool) -> Tensor:
    """Maps as the drift history keeps them: token maps ``[n, L]`` as one-row images ``[n, 1, L]``."""
    return maps.unsqueeze(1) if text else maps
