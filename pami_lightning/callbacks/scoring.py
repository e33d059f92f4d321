"""The callback's interpretation scores, from the metrics' per-sample functional forms.

Every score is a per-sample value first (kept for the sample x validation table), and the logged
value is the metric's own reduction of them — so sharding the samples over DDP ranks changes nothing:

- insertion / deletion run the model: each rank scores its own shard and the per-sample AUCs are
  gathered with the maps;
- the pointing games need no model: every rank scores the gathered maps of all samples.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal, Optional, Union

import torch
from torch import Tensor

from ..forward import Clean, ModelCall
from ..metrics.functional import RELATIVE_TOLERANCE, deletion, energy_pointing_game, insertion, pointing_game, pointing_game_baselines

__all__ = ["METRICS", "MASK_METRICS", "MODEL_METRICS", "MetricName", "Scorer", "CAUSAL_STEP", "causal_points", "mean"]

MetricName = Literal["pointing_game", "energy_pointing_game", "insertion", "deletion"]

MASK_METRICS: tuple[MetricName, ...] = ("pointing_game", "energy_pointing_game")
MODEL_METRICS: tuple[MetricName, ...] = ("insertion", "deletion")
METRICS: tuple[MetricName, ...] = MASK_METRICS + MODEL_METRICS

#: Pixels per insertion / deletion step (RISE's, for 224x224 images).
CAUSAL_STEP = 224
#: Seed of the random-point baseline: the same points at every validation and on every rank.
BASELINE_SEED = 0


def causal_points(spatial: Sequence[int]) -> int:
    """Forward passes of one insertion or deletion curve, at most: ``ceil(H * W / CAUSAL_STEP) + 1``."""
    return -(-math.prod(spatial) // CAUSAL_STEP) + 1


def mean(values: Tensor) -> float:
    """Mean of per-sample values ``[n]`` in float64 (any order gives the same sum); NaN entries are not counted."""
    counted = values[~values.isnan()].double()
    return float(counted.sum() / counted.numel()) if counted.numel() else math.nan


class Scorer:
    """The callback's metrics.

    Args:
        names: metrics to compute, a subset of :data:`METRICS`.
        call: the explainer's model call, which insertion and deletion run.
        tolerance: pointing game tolerance in pixels, or None for the metrics' ``"relative"`` one:
            15/224 of the masks' smaller side (0: the point must lie inside the mask).
    """

    def __init__(self, names: Sequence[str], call: ModelCall, tolerance: Optional[float]) -> None:
        self.call = call
        self.tolerance = tolerance
        self.mask_names = [name for name in MASK_METRICS if name in names]
        self.model_names = [name for name in MODEL_METRICS if name in names]

    def tolerance_px(self, spatial: Sequence[int]) -> float:
        """The pointing tolerance in pixels for masks of this size."""
        return self.tolerance if self.tolerance is not None else RELATIVE_TOLERANCE * min(spatial)

    def model_scores(self, images: Tensor, maps: Tensor, clean: Clean) -> Tensor:
        """Per-sample insertion / deletion AUCs of one shard: ``[m, len(model_names)]`` float32, in that order.

        ``clean`` (the shard's clean predictions) gives the explained classes and the clean points, so
        the clean images are not run again.
        """
        metric = {"insertion": insertion, "deletion": deletion}
        columns = [metric[name](self.call, images, maps, step=CAUSAL_STEP, reduction="none", clean=clean) for name in self.model_names]
        return torch.stack(columns, 1).float() if columns else maps.new_zeros(maps.shape[0], 0)

    def mask_scores(self, maps: Tensor, masks: Tensor) -> tuple[dict[str, float], dict[str, Tensor]]:
        """Pointing game and energy pointing game of all samples: the logged values and the per-sample ones ``[n]``.

        The pointing game counts a map without a unique maximum (a flat map) as a miss; the energy is
        the baseline-subtracted variant (``baseline="min"``: the map's minimum removed first), which
        a uniform offset cannot pull towards the object's area fraction.
        """
        masks = masks.to(maps.device)
        functions = {
            "pointing_game": lambda reduction: pointing_game(maps, masks, self._tolerance(), reduction=reduction),
            "energy_pointing_game": lambda reduction: energy_pointing_game(maps, masks, baseline="min", reduction=reduction),
        }
        scores: dict[str, float] = {name: float(functions[name]("mean")) for name in self.mask_names}
        per_sample: dict[str, Tensor] = {name: functions[name]("none").float().cpu() for name in self.mask_names}
        return scores, per_sample

    def baselines(self, masks: Tensor) -> dict[str, float]:
        """The pointing game of the paper's Table 4 baselines on these masks: the image centre and a random point."""
        generator = torch.Generator().manual_seed(BASELINE_SEED)
        values = pointing_game_baselines(masks, self._tolerance(), generator=generator)
        return {"pointing_game_center": mean(values["center"].cpu()), "pointing_game_random": mean(values["random"].cpu())}

    def _tolerance(self) -> Union[float, Literal["relative"]]:
        return self.tolerance if self.tolerance is not None else "relative"
