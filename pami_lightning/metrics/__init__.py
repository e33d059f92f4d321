"""Interpretation metrics as torchmetrics: pointing game, energy pointing game, insertion, deletion.

Stateful metrics accumulate over batches (and DDP ranks) and log like any torchmetrics ``Metric``;
their functional twins, per sample (``reduction="none"``) or reduced, live in
:mod:`pami_lightning.metrics.functional`, with the pointing game's chance baselines
(:func:`~pami_lightning.metrics.functional.pointing_game_baselines`).

Every metric takes ``update(heatmaps, masks, ...)``, so one ``MetricCollection`` holds them all
and one call updates them (keyword arguments reach the metrics that take them):

Example:
    >>> import torch
    >>> from torchmetrics import MetricCollection
    >>> from pami_lightning import ModelCall
    >>> from pami_lightning.metrics import Deletion, EnergyPointingGame, Insertion, PointingGame
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4))
    >>> metrics = MetricCollection({
    ...     "pointing_game": PointingGame(tolerance="relative"),
    ...     "energy_pointing_game": EnergyPointingGame(baseline="min"),
    ...     "insertion": Insertion(model, step=16),
    ...     "deletion": Deletion(model, step=16),
    ... }, prefix="pami/")
    >>> images, heatmaps = torch.rand(2, 3, 8, 8), torch.rand(2, 8, 8)
    >>> masks = torch.zeros(2, 8, 8, dtype=torch.bool); masks[:, 2:6, 2:6] = True
    >>> metrics.update(heatmaps, masks, images=images, target=torch.tensor([0, 3]))
    >>> sorted(metrics.compute())
    ['pami/deletion', 'pami/energy_pointing_game', 'pami/insertion', 'pami/pointing_game']
"""

from . import functional
from .functional import boxes_to_mask

#: The stateful metrics import torchmetrics (about a second): loaded when first asked for.
_LAZY = {"PointingGame": "pointing_game", "EnergyPointingGame": "energy_pointing_game", "Insertion": "insertion", "Deletion": "insertion"}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = ["PointingGame", "EnergyPointingGame", "Insertion", "Deletion", "boxes_to_mask", "functional"]
