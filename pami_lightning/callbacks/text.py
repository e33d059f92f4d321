"""Text samples for the callback: token sequences in, highlighted tokens out.

When the explainer splits token sequences (``TokenWindows`` / ``Words``) the callback's samples are
token ids ``[B, L]`` or a tokenizer-style dict, the maps are ``[B, L]``, and each sample is shown as
its tokens on backgrounds coloured by importance: an image for TensorBoard and files, HTML for W&B.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Optional

import torch
from torch import Tensor

from .._inputs import Batch, main_tensor
from ..explainer import PAMI
from ..visualize import highlight_tokens, highlight_tokens_image
from .samples import _LABEL_KEYS, Sample, _as_labels, _first

__all__ = ["is_text", "text_batch_to_sample", "select_rows", "spatial_shape", "token_pictures"]

TokensFn = Callable[[list[int]], Sequence[str]]


def is_text(explainer: PAMI) -> bool:
    """Whether the explainer splits token sequences (no channel axis)."""
    return not explainer.partition.channel_axis


def text_batch_to_sample(batch: Any) -> Sample:
    """Unpack a collated batch of token sequences.

    Understands ids ``[B, L]``, ``(ids, labels)`` and dicts: labels come from ``label`` / ``labels`` /
    ``target`` / ``targets``; every other tensor (``input_ids``, ``attention_mask``, ``word_ids``, ...)
    is the model's input. Values that are not tensors (e.g. the raw strings) are dropped.

    Returns:
        A :class:`Sample` whose ``images`` are the token inputs (a tensor or a dict).
    """
    if isinstance(batch, Sample):
        return batch
    if isinstance(batch, Mapping):
        labels = _first(batch, _LABEL_KEYS)
        inputs: Batch = {k: v for k, v in batch.items() if k not in _LABEL_KEYS and isinstance(v, Tensor)}
        if "input_ids" not in inputs:
            raise ValueError(f'batch_to_sample: a dict batch of text needs its token ids under "input_ids"; got keys {list(batch)} — pass batch_to_sample=')
    elif isinstance(batch, (tuple, list)) and len(batch) == 2:
        inputs, labels = batch
    elif isinstance(batch, Tensor):
        inputs, labels = batch, None
    else:
        raise ValueError(f"batch_to_sample: cannot unpack a text batch of type {type(batch).__name__}; pass batch_to_sample= to PAMICallback")
    return Sample(inputs, _as_labels(labels, main_tensor(inputs).shape[0]))  # type: ignore[arg-type]


def select_rows(inputs: Batch, part: slice) -> Batch:
    """Samples ``part`` of a batch, every key kept (partitions read ``word_ids``)."""
    return {k: v[part] for k, v in inputs.items()} if isinstance(inputs, Mapping) else inputs[part]


def spatial_shape(inputs: Batch, explainer: PAMI) -> torch.Size:
    """The axes a map covers: ``[H, W]`` of images ``[B, C, H, W]``, ``[L]`` of tokens ``[B, L]``."""
    return main_tensor(inputs).shape[1 if is_text(explainer) else 2 :]


def token_pictures(inputs: Batch, maps: Tensor, k: int, tokens: Optional[TokensFn], colormap: str) -> tuple[list[Tensor], list[str]]:
    """The first ``k`` samples' attended tokens coloured by their maps ``[B, L]``: images and HTML.

    Args:
        inputs: token ids ``[B, L]`` or a dict with ``input_ids`` (and ``attention_mask``).
        maps: ``[B, L]`` importance maps.
        k: how many samples to draw.
        tokens: ids -> token strings (e.g. ``tokenizer.convert_ids_to_tokens``); default: the ids.
        colormap: a matplotlib colour map name.
    """
    ids = main_tensor(inputs).cpu()
    shown = inputs["attention_mask"].bool().cpu() if isinstance(inputs, Mapping) and "attention_mask" in inputs else torch.ones_like(ids, dtype=torch.bool)
    images, pages = [], []
    for i in range(k):
        kept = ids[i][shown[i]].tolist()
        words = list(tokens(kept)) if tokens is not None else [str(t) for t in kept]
        scores = maps[i].cpu()[shown[i]]
        images.append(highlight_tokens_image(words, scores, cmap=colormap))
        pages.append(highlight_tokens(words, scores, cmap=colormap))
    return images, pages
