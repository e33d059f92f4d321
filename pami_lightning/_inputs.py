"""The engine's view of inputs: a tensor ``[B, ...]`` or a dict of tensors sharing the batch axis.

Images and signals are one tensor ``[B, C, *spatial]``; token sequences are a tensor ``[B, L]`` of
ids or a dict such as a tokenizer's ``{"input_ids": [B, L], "attention_mask": [B, L], ...}``. These
helpers slice, batch and blend either kind, so the engine has one code path and images keep their
single ``where`` into a preallocated buffer.

Dict inputs reach the model as keywords, ``model(**batch)``. Keys in :data:`META_KEYS` (word
boundaries a partition reads) are never passed to it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Union, cast

import torch
from torch import Tensor

__all__ = ["Batch", "META_KEYS", "main_tensor", "batch_len", "index", "take", "to_batch", "allocate", "blend"]

#: An input batch (or one input): a tensor or a dict of tensors.
Batch = Union[Tensor, Mapping[str, Tensor]]

#: Dict keys read by partitions (``Words``) and never passed to the model.
META_KEYS = frozenset({"word_ids", "offset_mapping", "special_tokens_mask"})

#: The dict key that holds the sequence a token partition splits and a token masker fills.
IDS_KEY = "input_ids"


def main_tensor(x: Batch) -> Tensor:
    """The tensor whose axes the partition covers: ``x`` itself or ``x["input_ids"]``."""
    return x[IDS_KEY] if isinstance(x, Mapping) else x


def batch_len(x: Batch) -> int:
    """Number of inputs ``B`` in a batch."""
    return main_tensor(x).shape[0]


def index(x: Batch, b: int) -> Batch:
    """Input ``b`` of a batch (dicts keep their meta keys: partitions read them)."""
    return {k: v[b] for k, v in x.items()} if isinstance(x, Mapping) else x[b]


def take(x: Batch, start: int, stop: int) -> Batch:
    """Inputs ``start..stop-1`` as the model sees them (meta keys dropped)."""
    if isinstance(x, Mapping):
        return {k: v[start:stop] for k, v in x.items() if k not in META_KEYS}
    return x[start:stop]


def to_batch(x: Batch) -> Batch:
    """One input as a batch of one."""
    return {k: v.unsqueeze(0) for k, v in x.items()} if isinstance(x, Mapping) else x.unsqueeze(0)


def allocate(x: Batch, n: int) -> Batch:
    """An uninitialised batch of ``n`` inputs shaped like those of ``x`` (the masked-input buffer)."""
    if isinstance(x, Mapping):
        return {k: torch.empty(n, *v.shape[1:], dtype=v.dtype, device=v.device) for k, v in x.items() if k not in META_KEYS}
    return torch.empty(n, *x.shape[1:], dtype=x.dtype, device=x.device)


def blend(x: Batch, substrate: Batch, masks: Tensor, lead: int, out: Batch | None = None) -> Batch:
    """Masked inputs ``where(m_j, x, substrate)`` for masks ``[n, *spatial]``, into ``out`` if given.

    Args:
        x: one input (a tensor ``[*lead, *spatial, *trail]`` or a dict of them).
        substrate: what replaces removed positions, shaped like ``x``; dict entries that *are*
            ``x``'s tensors (unchanged by the masker) are copied without a ``where``.
        masks: bool ``[n, *spatial]``, True where ``x`` is kept.
        lead: number of axes before the spatial ones (1 for the channel axis of ``[C, *spatial]``).
        out: a batch of ``n`` inputs to write into (default: new tensors).
    """
    # ``substrate`` and ``out`` are the same kind as ``x`` (a tensor, or a dict of tensors).
    if not isinstance(x, Mapping):
        return _where(x, cast(Tensor, substrate), masks, lead, cast("Tensor | None", out))
    subs, outs = cast("Mapping[str, Tensor]", substrate), cast("Mapping[str, Tensor] | None", out)
    result = {}
    for key, value in x.items():
        if outs is None and key in META_KEYS:
            continue
        if outs is not None and key not in outs:
            continue
        sub = subs[key]
        target = outs[key] if outs is not None else None
        if sub is value:
            # Untouched by the masker: a broadcast copy (or the tensor itself when not batching).
            result[key] = target.copy_(value.expand_as(target)) if target is not None else value
        else:
            result[key] = _where(value, sub, masks, lead, target)
    return result


def _where(x: Tensor, substrate: Tensor, masks: Tensor, lead: int, out: Tensor | None) -> Tensor:
    trail = x.ndim - lead - (masks.ndim - 1)
    if trail < 0:
        raise ValueError(f"masks over {masks.ndim - 1} axes do not fit an input of shape {list(x.shape)}")
    m = masks.view(masks.shape[0], *([1] * lead), *masks.shape[1:], *([1] * trail))
    return torch.where(m, x, substrate, out=out)
