"""The energy-based pointing game (Score-CAM; Quantus' relevance mass accuracy) as a torchmetrics ``Metric``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities.plot import _AX_TYPE, _PLOT_OUT_TYPE

from .functional import MasksLike, _energy_scores

__all__ = ["EnergyPointingGame"]


class EnergyPointingGame(Metric):
    """Share of a map's positive energy that falls on the object, averaged over samples.

    For each sample, ``sum(relu(h) * mask) / sum(relu(h))`` with ``h`` resized (bilinear,
    ``align_corners=False``) to the mask's size. A sample is skipped (not counted) when its mask is
    empty or its map has no positive value (``sum(relu(h)) == 0``: no energy to place). Useful when
    images hold several objects, where the pointing game only looks at one point.

    Per-sample values are rounded to float32 and summed in float64, which keeps the sums exact, so
    any split over batches or DDP ranks gives the same value.

    Args:
        kwargs: passed to :class:`torchmetrics.Metric` (``sync_on_compute``, ``process_group``, ...).

    Example:
        >>> import torch
        >>> from pami_lightning.metrics import EnergyPointingGame
        >>> metric = EnergyPointingGame()
        >>> heatmaps = torch.tensor([[[3.0, 1.0], [-2.0, 0.0]], [[0.0, 0.0], [0.0, 1.0]]])
        >>> masks = torch.tensor([[[True, False], [True, False]], [[True, True], [True, True]]])
        >>> metric.update(heatmaps, masks)
        >>> metric.compute()  # (0.75 + 1.0) / 2
        tensor(0.8750)
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False
    plot_lower_bound = 0.0
    plot_upper_bound = 1.0

    energy_sum: Tensor
    count: Tensor

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("energy_sum", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, heatmaps: Tensor, masks: MasksLike) -> None:
        """Add a batch.

        Args:
            heatmaps: ``[B, h, w]`` importance maps (NaN or inf raise).
            masks: bool ``[B, H, W]`` object masks, or a list of ``B`` bool ``[H_i, W_i]`` masks.
        """
        energy, counted = _energy_scores(heatmaps, masks)
        self.energy_sum = self.energy_sum + energy.double().sum().to(self.energy_sum.device)
        self.count = self.count + counted.sum().to(self.count.device)

    def compute(self) -> Tensor:
        """Mean energy share over counted samples: float32 scalar; NaN before any counted sample."""
        return (self.energy_sum / self.count).float()

    def plot(self, val: Tensor | Sequence[Tensor] | None = None, ax: _AX_TYPE | None = None) -> _PLOT_OUT_TYPE:
        """Plot one value (default: ``compute()``) or a sequence of values; returns ``(fig, ax)``."""
        return self._plot(val, ax)
