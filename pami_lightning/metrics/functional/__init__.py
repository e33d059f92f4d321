"""Functional interpretation metrics: pointing game (and its chance baselines), energy pointing game,
insertion and deletion, each per sample (``reduction="none"``) or reduced.

One module per metric, in torchmetrics' layout: ``_<metric>_arg_validation``, ``_<metric>_update``
(per-sample values or sum states of a batch) and ``_<metric>_compute`` beside the public function;
each stateful metric in :mod:`pami_lightning.metrics` keeps states and calls these. Semantics follow
the reference implementations (TorchRay's pointing game, RISE's causal metrics); every deviation is
an explicit, documented option.
"""

from .boxes import boxes_to_mask
from .energy_pointing_game import energy_pointing_game
from .insertion import curve_auc, deletion, deletion_curves, insertion, insertion_curves
from .pointing_game import RELATIVE_TOLERANCE, pointing_game, pointing_game_baselines

__all__ = [
    "boxes_to_mask",
    "pointing_game",
    "pointing_game_baselines",
    "RELATIVE_TOLERANCE",
    "energy_pointing_game",
    "insertion_curves",
    "deletion_curves",
    "curve_auc",
    "insertion",
    "deletion",
]
