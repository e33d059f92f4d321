"""Text samples for the callback: token sequences in, highlighted tokens out.

When the explainer splits token sequences (``TokenWindows`` / ``Words``) the callback's samples are
token ids ``[B, L]`` or a tokenizer-style dict, the maps are ``[B, L]``, and each sample is shown as
its tokens on backgrounds coloured by importance: an image for TensorBoard and files, HTML for W&B.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from .._inputs import Batch, main_tensor
from ..explainer import PAMI
from .samples import _LABEL_KEYS, Sample, _as_labels, _first

__all__ = ["is_text", "text_batch_to_sample", "select_rows", "spatial_shape"]

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
