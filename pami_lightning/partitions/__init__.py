"""Partition strategies: how an input is split into the parts PAMI keeps one at a time."""

from .base import LabelParts, Partition, Parts
from .pooled import Pooled
from .sliding_window import SlidingWindow
from .superpixels import SEGMENTERS, Superpixels, register_segmenter
from .tokens import TokenPartition, TokenWindows, Words, word_ids_from_tokens

__all__ = ["Partition", "Parts", "LabelParts", "Pooled", "SlidingWindow", "Superpixels", "SEGMENTERS", "register_segmenter",
           "TokenPartition", "TokenWindows", "Words", "word_ids_from_tokens"]
