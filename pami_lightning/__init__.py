"""pami-lightning: PAMI black-box explanations as a first-class part of Lightning training."""

from .data import CocoDataset, DatasetError, FolderDataset, VOCDataset, collate
from .explainer import PAMI, REFERENCE_SHIFTS
from .forward import ModelCall
from .maskers import AttentionMask, Blur, Constant, Masker, TokenMask
from .metrics import Deletion, EnergyPointingGame, Insertion, PointingGame, boxes_to_mask
from .partitions import Partition, Pooled, SlidingWindow, Superpixels, TokenWindows, Words, register_segmenter, word_ids_from_tokens
from .scores import caption_word_score

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    # The callback pulls in Lightning (seconds to import): load it only when asked for.
    if name == "PAMICallback":
        from .callbacks import PAMICallback

        return PAMICallback
    raise AttributeError(f"module 'pami_lightning' has no attribute '{name}'")

__all__ = [
    "PAMI",
    "REFERENCE_SHIFTS",
    "ModelCall",
    "Partition",
    "SlidingWindow",
    "Pooled",
    "Superpixels",
    "register_segmenter",
    "Masker",
    "Blur",
    "Constant",
    "TokenWindows",
    "Words",
    "word_ids_from_tokens",
    "TokenMask",
    "AttentionMask",
    "caption_word_score",
    "PointingGame",
    "EnergyPointingGame",
    "Insertion",
    "Deletion",
    "boxes_to_mask",
    "PAMICallback",
    "VOCDataset",
    "CocoDataset",
    "FolderDataset",
    "DatasetError",
    "collate",
    "__version__",
]
