"""Partition strategies: how an input is split into the parts PAMI keeps one at a time."""

from .base import LabelParts, Partition, Parts
from .pooled import Pooled
from .segmenters import PRESETS, SEGMENTERS, register_segmenter, seeds_supported
from .sliding_window import SlidingWindow
from .superpixels import CacheInfo, Superpixels, colour_guide, to_uint8_image
from .tokens import TokenPartition, TokenWindows, Words, word_ids_from_tokens

__all__ = ["Partition", "Parts", "LabelParts", "Pooled", "SlidingWindow", "Superpixels", "CacheInfo", "SEGMENTERS", "PRESETS",
           "register_segmenter", "seeds_supported", "to_uint8_image", "colour_guide", "TokenPartition", "TokenWindows", "Words",
           "word_ids_from_tokens"]
