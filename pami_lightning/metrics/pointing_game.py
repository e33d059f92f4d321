"""The pointing game (Zhang et al. 2018; TorchRay's benchmark semantics) as a torchmetrics ``Metric``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities.plot import _AX_TYPE, _PLOT_OUT_TYPE

from ._utils import FLAT_TOL, MasksLike
from .functional.pointing_game import (
    Average,
    Tolerance,
    _pointing_game_arg_validation,
    _pointing_game_compute,
    _pointing_game_counts,
    _pointing_game_update,
)

__all__ = ["PointingGame"]


class PointingGame(Metric):
    """Pointing game hit rate: does the map's maximum fall on (or near) the object?

    Each map is resized (bilinear, ``align_corners=False``) to the size of its mask; its point is the
    *first* maximum in row-major order, as TorchRay's benchmark. It is a hit when some mask pixel
    lies at squared distance ``dx**2 + dy**2 < tolerance**2`` from the point (strictly less, as
    TorchRay: distance exactly ``tolerance`` misses), a miss otherwise. ``tolerance=0`` means the
    point itself must be inside the mask (the official PAMI script's rule; TorchRay would count
    every such sample a miss). Samples with an empty mask are skipped.

    **Flat maps miss** (where we differ from TorchRay). A map without a maximum worth the name --
    ``max - min <= flat_tol * max(|max|, |min|)``, constant up to rounding -- counts as a miss.
    TorchRay's ``argmax`` sends such a map to its first pixel ``(0, 0)``, which lies within 15 px of
    many objects on small images: a map that knows nothing would score well. Ties among the maxima
    of a map that is not flat (a plateau of equal values, common in sliding-window maps) are still
    broken as TorchRay does, by the first maximum. ``flat_tol=None`` restores TorchRay's rule.

    **Tolerance that fits the image.** ``tolerance=15`` is TorchRay's, in pixels, for ~224 px
    images; on a 64 px image a centred blob that knows nothing hits most objects with it.
    ``tolerance="relative"`` means ``15/224`` of each mask's smaller side (15 px at 224, 4.3 px at
    64). Read the score next to its chance level, :func:`~pami_lightning.metrics.functional.pointing_game_baselines`
    (the paper's Table 4 "center" and "random").

    Counts are kept per class (int64 sums), so results are exact however samples are split over
    batches or DDP ranks. TorchRay's mean over *all* classes (absent ones counting 0) is
    ``PointingGame(num_classes=K, average="none").compute().mean()``.

    Args:
        num_classes: score each class separately; ``update`` then needs ``labels``. Default None:
            every sample is pooled into one class.
        tolerance: hit radius in pixels of the mask (default 15, TorchRay's), or ``"relative"``.
        average: ``"macro"`` (default: mean of the per-class rates over classes with at least one
            counted sample), ``"micro"`` (hits over all counted samples), ``"none"`` (per-class
            rates ``[num_classes]``, 0 for a class without samples).
        flat_tol: relative range under which a map is flat and misses (default 1e-6); None: TorchRay.
        kwargs: passed to :class:`torchmetrics.Metric` (``sync_on_compute``, ``process_group``, ...).

    Example:
        >>> import torch
        >>> from pami_lightning.metrics import PointingGame, boxes_to_mask
        >>> metric = PointingGame(tolerance=15)
        >>> masks = boxes_to_mask([[50, 50, 60, 60]], (100, 100)).expand(3, 100, 100)
        >>> heatmaps = torch.zeros(3, 100, 100)
        >>> heatmaps[0, 55, 36] = 1  # 14 px left of the box: hit
        >>> heatmaps[1, 55, 35] = 1  # exactly 15 px: miss
        >>> heatmaps[2] = 0.5  # flat: a miss, wherever the box is
        >>> metric.update(heatmaps, masks)
        >>> metric.compute()
        tensor(0.3333)
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False
    plot_lower_bound = 0.0
    plot_upper_bound = 1.0
    plot_legend_name = "Class"

    hits: Tensor
    misses: Tensor

    def __init__(
        self, num_classes: int | None = None, tolerance: Tolerance = 15, average: Average = "macro", *, flat_tol: float | None = FLAT_TOL, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        _pointing_game_arg_validation(tolerance, num_classes, average, "mean", flat_tol)
        self.num_classes = num_classes
        self.tolerance = tolerance
        self.average = average
        self.flat_tol = flat_tol
        n = num_classes or 1
        self.add_state("hits", torch.zeros(n, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("misses", torch.zeros(n, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, heatmaps: Tensor, masks: MasksLike, labels: Tensor | None = None) -> None:
        """Count the hits and misses of a batch.

        The argument order of every metric here: ``update(heatmaps, masks, ...)``, so one
        ``MetricCollection`` call updates them all (pass ``labels=`` by keyword there).

        Args:
            heatmaps: ``[B, h, w]`` importance maps (any real dtype; NaN or inf raise).
            masks: bool ``[B, H, W]`` object masks (e.g. from :func:`boxes_to_mask`), or a list of
                ``B`` bool ``[H_i, W_i]`` masks when image sizes differ.
            labels: ``[B]`` class of each sample; required when ``num_classes`` is set.
        """
        hit, counted = _pointing_game_update(heatmaps, masks, self.tolerance, self.flat_tol)
        hits, misses = _pointing_game_counts(hit, counted, labels, self.num_classes)
        self.hits = self.hits + hits.to(self.hits.device)
        self.misses = self.misses + misses.to(self.misses.device)

    def compute(self) -> Tensor:
        """The hit rate: float32 scalar, or ``[num_classes]`` for ``average="none"``; NaN before any counted sample."""
        return _pointing_game_compute(self.hits, self.misses, self.average)

    def plot(self, val: Tensor | Sequence[Tensor] | None = None, ax: _AX_TYPE | None = None) -> _PLOT_OUT_TYPE:
        """Plot one value (default: ``compute()``) or a sequence of values; returns ``(fig, ax)``.

        Example:
            >>> import torch
            >>> from pami_lightning.metrics import PointingGame
            >>> metric = PointingGame(tolerance=0)
            >>> metric.update(torch.rand(4, 8, 8), torch.rand(4, 8, 8) > 0.5)
            >>> fig, ax = metric.plot()
        """
        return self._plot(val, ax)
