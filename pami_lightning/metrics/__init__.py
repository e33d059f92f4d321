"""Interpretation metrics as torchmetrics: pointing game, energy pointing game, insertion, deletion.

Stateful metrics accumulate over batches (and DDP ranks) and log like any torchmetrics ``Metric``;
their functional twins live in :mod:`pami_lightning.metrics.functional`.
"""

from . import functional
from .energy_pointing_game import EnergyPointingGame
from .functional import boxes_to_mask
from .insertion import Deletion, Insertion
from .pointing_game import PointingGame

__all__ = ["PointingGame", "EnergyPointingGame", "Insertion", "Deletion", "boxes_to_mask", "functional"]
