"""The callback's interpretation scores, exact under any sharding of the samples over DDP ranks.

- Mask metrics (pointing game, energy pointing game) need no model: every rank scores the gathered
  maps of *all* samples locally (no collective), so each rank holds the single-process value.
- Model metrics (insertion, deletion) run the model hundreds of times per sample: each rank updates
  them on its own shard and ``compute()`` sums their sum-states over the ranks (torchmetrics'
  sync, a collective that every rank runs).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Optional

import torch
from torch import Tensor

from .._inputs import Batch
from ..forward import ModelCall
from ..metrics import Deletion, Insertion
from ..metrics.functional import energy_pointing_game, pointing_game

__all__ = ["METRICS", "MASK_METRICS", "MetricName", "Scorer"]

MetricName = Literal["pointing_game", "energy_pointing_game", "insertion", "deletion"]

MASK_METRICS: tuple[MetricName, ...] = ("pointing_game", "energy_pointing_game")
MODEL_METRICS: tuple[MetricName, ...] = ("insertion", "deletion")
METRICS: tuple[MetricName, ...] = MASK_METRICS + MODEL_METRICS


class Scorer:
    """Owns the metric objects of one callback.

    Args:
        names: metrics to compute, a subset of :data:`METRICS`.
        call: the explainer's model call (model, preprocess, output, batch size, grad mode), which
            insertion / deletion run.
        tolerance: pointing game tolerance in pixels (0: the point must lie inside the mask).
    """

    def __init__(self, names: Sequence[str], call: ModelCall, tolerance: float) -> None:
        self.names = list(names)
        self.tolerance = tolerance
        self.mask_names = [name for name in MASK_METRICS if name in self.names]
        self.model_metrics = {name: cls(call) for name, cls in (("insertion", Insertion), ("deletion", Deletion)) if name in self.names}

    def to(self, device: torch.device) -> Scorer:
        """Move the metric states (Lightning does not move metrics a callback owns)."""
        for metric in self.model_metrics.values():
            metric.to(device)
        return self

    def update_shard(self, images: Batch, maps: Tensor, targets: Tensor) -> None:
        """Feed this rank's shard to the model metrics (``images [m, C, H, W]``, ``maps [m, H, W]``).

        Token samples (ids or a dict) come with no model metrics: the callback asks for none on text.
        """
        if not self.model_metrics:
            return
        if not isinstance(images, Tensor):
            raise TypeError(f"{', '.join(self.model_metrics)} need image tensors [m, C, H, W]; got a dict of {sorted(images)}")
        for metric in self.model_metrics.values():
            metric.update(images, maps, target=targets)

    def compute_shards(self) -> dict[str, float]:
        """Model metrics over all ranks' shards, then reset. A collective: call it on every rank."""
        scores = {}
        for name, metric in self.model_metrics.items():
            scores[name] = float(metric.compute())
            metric.reset()
        return scores

    def score_all(self, maps: Tensor, masks: Optional[Tensor]) -> tuple[dict[str, float], dict[str, Tensor]]:
        """Mask metrics of all samples (no collective): the values and per-sample ``[n]`` values.

        Per-sample values are NaN where a sample is not counted (empty mask, no positive energy).
        Returns empty dicts when ``masks`` is None.
        """
        if masks is None or not self.mask_names:
            return {}, {}
        masks = masks.to(maps.device)
        functional = {"pointing_game": lambda m, k: pointing_game(m, k, tolerance=self.tolerance), "energy_pointing_game": energy_pointing_game}
        scores: dict[str, float] = {}
        per_sample: dict[str, Tensor] = {}
        for name in self.mask_names:
            values = torch.stack([functional[name](maps[i : i + 1], masks[i : i + 1]) for i in range(maps.shape[0])]).float().cpu()
            # The metrics' own reduction (float64 sum over counted samples / their count), from the
            # per-sample values rather than a second pass over the maps.
            counted = ~values.isnan()
            scores[name] = float(values[counted].double().sum() / counted.sum())
            per_sample[name] = values
        return scores, per_sample
