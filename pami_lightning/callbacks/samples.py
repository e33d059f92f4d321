"""The callback's fixed validation samples: picking, loading, unpacking, sharding and gathering.

The samples are picked once, without any random number generator, read straight from the validation
dataset (so the loader's sampler and shuffling are never touched) and collated with the loader's own
``collate_fn``. Everything that could draw random numbers runs inside :func:`isolated_rng`.
"""

from __future__ import annotations

import copy
import hashlib
import math
import random
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Optional, cast

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset

from ..metrics import boxes_to_mask

__all__ = ["Sample", "default_batch_to_sample", "select_indices", "load_items", "pick_loader", "to_device", "digest", "shard", "pad_to", "isolated_rng"]

_IMAGE_KEYS = ("image", "images", "input", "inputs")
_LABEL_KEYS = ("label", "labels", "target", "targets")
_MASK_KEYS = ("mask", "masks")
_BOX_KEYS = ("boxes", "box", "bboxes")


@dataclass
class Sample:
    """A batch of samples in the form the callback explains.

    Attributes:
        images: ``[B, C, H, W]`` floating-point images in ``[0, 1]`` (the engine's pixel space).
        labels: ``[B]`` integer class labels, or ``None``.
        masks: ``[B, H, W]`` bool object masks (True on the labelled object), or ``None``.
    """

    images: Tensor
    labels: Optional[Tensor] = None
    masks: Optional[Tensor] = None


def default_batch_to_sample(batch: Any) -> Sample:
    """Unpack a collated batch: ``x``, ``(x, y)``, ``(x, y, mask)`` or a dict.

    Dicts are read by key: the images from ``image``/``images``/``input``/``inputs``, the labels from
    ``label``/``labels``/``target``/``targets``, the object masks from ``mask``/``masks`` or, failing
    that, boxes from ``boxes``/``box``/``bboxes`` (``xyxy`` pixels, 0-based, ``[B, N, 4]`` or a list of
    ``[N_i, 4]``). Non-bool masks count non-zero pixels as the object; ``[B, 1, H, W]`` is squeezed.

    Args:
        batch: what the validation loader yields (after the transfer hooks).

    Returns:
        A :class:`Sample`.
    """
    if isinstance(batch, Sample):
        return batch
    boxes = None
    if isinstance(batch, Tensor):
        images, labels, masks = batch, None, None
    elif isinstance(batch, Mapping):
        images = _first(batch, _IMAGE_KEYS)
        if images is None:
            raise ValueError(
                f"batch_to_sample: a dict batch needs its images under one of {list(_IMAGE_KEYS)}; got keys {list(batch)} "
                "— pass batch_to_sample= to PAMICallback"
            )
        labels, masks = _first(batch, _LABEL_KEYS), _first(batch, _MASK_KEYS)
        boxes = _first(batch, _BOX_KEYS) if masks is None else None
    elif isinstance(batch, (tuple, list)) and 1 <= len(batch) <= 3:
        images, labels, masks = [*batch, None, None][:3]
    else:
        raise ValueError(
            f"batch_to_sample: cannot unpack a batch of type {type(batch).__name__}; the default understands x, (x, y), "
            "(x, y, mask) and dicts — pass batch_to_sample= to PAMICallback"
        )
    if not isinstance(images, Tensor) or images.ndim != 4:
        got = list(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"batch_to_sample: images must be a [B, C, H, W] tensor; got {got}")
    if images.shape[-1] in (1, 3, 4) and images.shape[1] not in (1, 3, 4):
        # Before the masks are checked against the image size, which would blame the masks.
        raise ValueError(f"batch_to_sample: images look channels-last [B, H, W, C] ({list(images.shape)}); PAMI needs [B, C, H, W] "
                         "— use images.permute(0, 3, 1, 2) in the dataset or in batch_to_sample=")
    if boxes is not None:
        masks = _boxes_to_masks(boxes, images.shape[0], (images.shape[-2], images.shape[-1]))
    return Sample(images, _as_labels(labels, images.shape[0]), _as_masks(masks, images.shape))


def _first(batch: Mapping, keys: Sequence[str]) -> Any:
    return next((batch[k] for k in keys if k in batch), None)


def _as_labels(labels: Any, n: int) -> Optional[Tensor]:
    if labels is None:
        return None
    labels = torch.as_tensor(labels)
    if labels.is_floating_point() or labels.shape != (n,):
        raise ValueError(
            f"batch_to_sample: labels must be [B] = [{n}] integer classes; got {labels.dtype} {list(labels.shape)} "
            "— pass batch_to_sample= for one-hot or multi-label targets"
        )
    return labels.long()


def _as_masks(masks: Any, image_shape: torch.Size) -> Optional[Tensor]:
    if masks is None:
        return None
    masks = torch.as_tensor(masks)
    if masks.ndim == 4 and masks.shape[1] == 1:
        masks = masks[:, 0]
    want = (image_shape[0], *image_shape[-2:])
    if tuple(masks.shape) != want:
        raise ValueError(f"batch_to_sample: masks must be [B, H, W] = {list(want)}; got {list(masks.shape)}")
    return masks if masks.dtype == torch.bool else masks != 0


def _boxes_to_masks(boxes: Any, n: int, size: tuple[int, int]) -> Tensor:
    if len(boxes) != n:
        raise ValueError(f"batch_to_sample: boxes must hold one [N_i, 4] entry per image ({n}); got {len(boxes)}")
    return torch.stack([boxes_to_mask(torch.as_tensor(b).reshape(-1, 4), size) for b in boxes])


def select_indices(length: int, num_samples: int, sample_indices: Optional[Sequence[int]]) -> list[int]:
    """Dataset indices to explain: ``sample_indices`` as given, or ``num_samples`` evenly spaced ones.

    Evenly spaced indices (the centres of ``num_samples`` equal slices of the dataset) need no random
    number generator and cover class-sorted datasets such as ``ImageFolder`` class by class.
    """
    if sample_indices is not None:
        bad = [i for i in sample_indices if not -length <= i < length]
        if bad:
            raise IndexError(f"PAMICallback: sample_indices {bad} are out of range for a validation dataset of {length} samples")
        return [i % length for i in sample_indices]
    n = min(num_samples, length)
    return [(2 * k + 1) * length // (2 * n) for k in range(n)]


def load_items(loader: DataLoader, num_samples: int, sample_indices: Optional[Sequence[int]]) -> tuple[list[int], Any]:
    """Read the chosen samples from ``loader.dataset`` and collate them with ``loader.collate_fn``.

    Returns:
        The dataset indices (positions in the stream for an ``IterableDataset``) and the collated batch.
    """
    dataset = loader.dataset
    if isinstance(dataset, IterableDataset) or not hasattr(dataset, "__len__"):
        if sample_indices is not None:
            raise ValueError("PAMICallback: sample_indices needs a map-style validation dataset; this one is iterable — use num_samples")
        # Iterable (``__iter__``, or ``__getitem__`` until IndexError); zip stops after the first num_samples.
        items = [item for _, item in zip(range(num_samples), cast(Iterable[Any], dataset), strict=False)]
        indices = list(range(len(items)))
    else:
        indices = select_indices(len(dataset), num_samples, sample_indices)
        items = [dataset[i] for i in indices]
    if not items:
        raise ValueError("PAMICallback: the validation dataset is empty, there is nothing to explain")
    collate = loader.collate_fn if loader.collate_fn is not None else torch.utils.data.default_collate
    try:
        return indices, collate(items)
    except RuntimeError as error:
        sizes = sorted({tuple(t.shape) for t in map(_first_tensor, items) if t is not None})
        if len(sizes) > 1:
            raise ValueError(
                f"PAMICallback: the samples (dataset indices {indices}) have different sizes {sizes}, and the callback explains "
                "them as one batch: give the validation images one size (resize or crop in the dataset), pick sample_indices "
                "of one size, or give the loader a collate_fn that pads"
            ) from error
        raise


def _first_tensor(item: Any) -> Optional[Tensor]:
    """The first tensor of a dataset item (its image, for the usual layouts)."""
    if isinstance(item, Tensor):
        return item
    values = item.values() if isinstance(item, Mapping) else item if isinstance(item, (tuple, list)) else ()
    return next((v for v in values if isinstance(v, Tensor)), None)


def digest(batch: Any) -> str:
    """A fingerprint of a collated batch (its tensors' bytes, dtypes and shapes; other values' repr).

    Tells whether a re-read validation set still holds the images whose maps the drift history keeps.
    """
    h = hashlib.sha1()

    def feed(value: Any) -> None:
        if isinstance(value, Tensor):
            t = value.detach().cpu().contiguous()
            h.update(f"{t.dtype}{list(t.shape)}".encode())
            h.update(t.flatten().view(torch.uint8).numpy().tobytes())
        elif isinstance(value, Mapping):
            for key in sorted(value, key=str):
                h.update(str(key).encode())
                feed(value[key])
        elif isinstance(value, (tuple, list)):
            for v in value:
                feed(v)
        else:
            h.update(repr(value).encode())

    feed(batch)
    return h.hexdigest()


def shard(n: int, rank: int, world_size: int) -> tuple[slice, int]:
    """Rank ``rank``'s contiguous share of ``n`` samples and the padded share size ``ceil(n / world_size)``.

    Contiguous shares keep ``all_gather``'s rank-major order equal to the sample order once padding
    is dropped.
    """
    size = math.ceil(n / world_size)
    start = min(rank * size, n)
    return slice(start, min(start + size, n)), size


def pad_to(t: Tensor, size: int, value: float = 0) -> Tensor:
    """Pad ``t`` along its first axis to ``size`` rows of ``value`` (``all_gather`` needs equal shapes)."""
    if t.shape[0] == size:
        return t
    return torch.cat([t, t.new_full((size - t.shape[0], *t.shape[1:]), value)])


@contextmanager
def isolated_rng(device: torch.device) -> Iterator[None]:
    """Run a block with torch (CPU and ``device``'s CUDA), numpy and Python random states restored after.

    Datasets may draw random numbers in ``__getitem__`` (augmentations) and user hooks may too; the
    training run must see exactly the same random streams with the callback as without it.
    """
    py_state, np_state = random.getstate(), np.random.get_state()
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


def pick_loader(loaders: Any, idx: int, stage: str) -> Any:
    """Dataloader ``idx`` of the trainer's ``stage`` (validation / test) loaders: one, a list or a dict."""
    if loaders is None:
        raise MisconfigurationException(f"PAMICallback needs a {stage} dataloader")
    if isinstance(loaders, Mapping):
        loaders = list(loaders.values())
    if not isinstance(loaders, (list, tuple)):
        loaders = [loaders]
    if not 0 <= idx < len(loaders):
        raise MisconfigurationException(f"PAMICallback(dataloader_idx={idx}) but there are {len(loaders)} {stage} dataloaders")
    return loaders[idx]


def to_device(trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, dataloader_idx: int) -> Any:
    """A copy of ``batch`` through the same transfer path as the stage's batches (precision, the module's
    transfer hooks, the strategy's device); users' hooks may edit a batch in place."""
    batch = trainer.precision_plugin.convert_input(copy.deepcopy(batch))
    batch = pl_module._on_before_batch_transfer(batch, dataloader_idx=dataloader_idx)
    return trainer.strategy.batch_to_device(batch, dataloader_idx=dataloader_idx)
