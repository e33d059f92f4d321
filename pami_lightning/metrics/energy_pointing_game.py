"""The energy-based pointing game (Score-CAM; Quantus' relevance mass accuracy) as a torchmetrics ``Metric``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities.plot import _AX_TYPE, _PLOT_OUT_TYPE

from ._utils import FLAT_TOL, MasksLike
from .functional.energy_pointing_game import Baseline, _energy_pointing_game_arg_validation, _energy_pointing_game_compute, _energy_pointing_game_update

__all__ = ["EnergyPointingGame"]


class EnergyPointingGame(Metric):
    """Share of a map's energy that falls on the object, averaged over samples.

    For each sample, ``sum(e * mask) / sum(e)`` with ``h`` resized (bilinear,
    ``align_corners=False``) to the mask's size and ``e = relu(h)`` (``baseline="none"``, the
    default: Score-CAM's and Quantus' relevance mass accuracy) or ``e = h - min(h)``
    (``baseline="min"``). Useful when images hold several objects, where the pointing game only
    looks at one point.

    **Which baseline.** ``"none"`` is the published definition and the default, so values compare
    with the literature. It suits maps that are ~0 away from the evidence (Grad-CAM, masks). A map
    with an offset -- PAMI's maps are class probabilities, e.g. 0.9 everywhere and 1.0 on the
    object -- scores close to the object's *area fraction* with it (0.069 for a perfect map of a
    box of area 0.0625), whatever the map knows. ``"min"`` removes that offset first (that map then
    scores 1.0); use it for PAMI maps.

    **Flat maps score 0.** A map with ``max - min <= flat_tol * max(|max|, |min|)`` knows nothing:
    it scores 0, not its area fraction (which flatters large objects) and is not skipped (which
    would leave the mean to the other samples). So does a map without positive energy (all
    ``<= 0`` for ``"none"``). Only an empty mask skips a sample.

    Per-sample values are rounded to float32 and summed in float64, which keeps the sums exact, so
    any split over batches or DDP ranks gives the same value.

    Args:
        baseline: ``"none"`` (default) or ``"min"`` (subtract each map's minimum).
        flat_tol: relative range under which a map is flat (default 1e-6); None: no flat rule.
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
        >>> perfect = torch.full((1, 16, 16), 0.9); perfect[0, 4:8, 4:8] = 1.0
        >>> box = torch.zeros(1, 16, 16, dtype=torch.bool); box[0, 4:8, 4:8] = True
        >>> EnergyPointingGame(baseline="min")(perfect, box)
        tensor(1.)
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False
    plot_lower_bound = 0.0
    plot_upper_bound = 1.0

    energy_sum: Tensor
    count: Tensor

    def __init__(self, baseline: Baseline = "none", *, flat_tol: float | None = FLAT_TOL, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        _energy_pointing_game_arg_validation(baseline, "mean", flat_tol)
        self.baseline = baseline
        self.flat_tol = flat_tol
        self.add_state("energy_sum", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, heatmaps: Tensor, masks: MasksLike) -> None:
        """Add a batch (argument order as every metric here: ``update(heatmaps, masks, ...)``).

        Args:
            heatmaps: ``[B, h, w]`` importance maps (NaN or inf raise).
            masks: bool ``[B, H, W]`` object masks, or a list of ``B`` bool ``[H_i, W_i]`` masks.
        """
        energy, counted = _energy_pointing_game_update(heatmaps, masks, self.baseline, self.flat_tol)
        self.energy_sum = self.energy_sum + energy.double().sum().to(self.energy_sum.device)
        self.count = self.count + counted.sum().to(self.count.device)

    def compute(self) -> Tensor:
        """Mean energy share over counted samples: float32 scalar; NaN before any counted sample."""
        return _energy_pointing_game_compute(self.energy_sum, self.count)

    def plot(self, val: Tensor | Sequence[Tensor] | None = None, ax: _AX_TYPE | None = None) -> _PLOT_OUT_TYPE:
        """Plot one value (default: ``compute()``) or a sequence of values; returns ``(fig, ax)``."""
        return self._plot(val, ax)
