"""pami-lightning: PAMI black-box explanations as a first-class part of Lightning training."""

from .cpu_memory import keep_freed_memory
from .data import CocoDataset, DatasetError, FolderDataset, VOCDataset, collate
from .explainer import PAMI, REFERENCE_SHIFTS
from .forward import Clean, ModelCall
from .maskers import AttentionMask, Blur, Constant, Masker, TokenMask
from .metrics import boxes_to_mask
from .partitions import Partition, Pooled, SlidingWindow, Superpixels, TokenWindows, Words, register_segmenter, word_ids_from_tokens
from .scores import caption_word_score

#: The installed version of pami-lightning.
__version__ = "0.2.0"


#: Names whose modules pull in Lightning or torchmetrics (seconds to import): loaded only when asked for.
_LAZY = {
    "PAMICallback": "callbacks",
    **dict.fromkeys(["PointingGame", "EnergyPointingGame", "Insertion", "Deletion"], "metrics"),
    **dict.fromkeys(
        ["ExplanationModule", "ExplanationWriter", "EvaluationData", "evaluate", "load_results", "Results", "Explainer",
         "PAMIExplainer", "RandomBaseline", "CenterBaseline", "CaptumOcclusion", "CaptumFeatureAblation"],
        "evaluation",
    ),
}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'pami_lightning' has no attribute '{name}'")

__all__ = [
    "PAMI",
    "REFERENCE_SHIFTS",
    "ModelCall",
    "Clean",
    "keep_freed_memory",
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
    "ExplanationModule",
    "ExplanationWriter",
    "EvaluationData",
    "evaluate",
    "load_results",
    "Results",
    "Explainer",
    "PAMIExplainer",
    "RandomBaseline",
    "CenterBaseline",
    "CaptumOcclusion",
    "CaptumFeatureAblation",
    "VOCDataset",
    "CocoDataset",
    "FolderDataset",
    "DatasetError",
    "collate",
    "__version__",
]
