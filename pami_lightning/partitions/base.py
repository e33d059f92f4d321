"""Partitions: how one input is split into the parts that PAMI keeps one at a time.

A partition turns one input ``[C, *spatial]`` into groups of parts. A group (:class:`Parts`) knows
how many parts it holds and builds their boolean masks ``[n, *spatial]`` on demand, a slice at a
time, so the engine never holds all ``J`` masks (let alone all ``J`` masked inputs) at once. Groups
that need CPU work (segmentations) come back as futures of a thread pool so that the work overlaps
the device's forward passes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from typing import Any, Union

import numpy as np
import torch
from torch import Tensor

from .._inputs import blend

__all__ = ["Source", "Parts", "LabelParts", "Partition", "PartsOrFuture"]


@dataclass(frozen=True)
class Source:
    """What the masked inputs of one input's parts are blended from.

    Attributes:
        x: one input, a tensor ``[*lead, *spatial, *trail]`` (``[C, H, W]`` for an image) or a dict of them.
        substrate: what replaces removed positions, shaped like ``x``.
        diff: ``x - substrate`` for float32/float64 tensors, so that a masked input is
            ``substrate + diff * m_j`` (one ``addcmul``); None otherwise (``where`` is used).
        lead: number of axes before the spatial ones (1 for the channel axis of ``[C, *spatial]``).
    """

    x: Any
    substrate: Any
    diff: Tensor | None
    lead: int


class Parts(ABC):
    """A group of parts of one input, each a boolean mask over the input's spatial axes.

    Besides the masks, a group knows how to write its masked inputs (:meth:`blend`) and how to
    spread scores over its parts (:meth:`aggregate`, Eq. 1's numerator); the defaults go through
    :meth:`masks`, and subclasses with structure (windows, label maps) override them with faster
    exact versions.
    """

    @abstractmethod
    def __len__(self) -> int:
        """Number of parts ``n`` in the group."""

    @abstractmethod
    def masks(self, start: int = 0, stop: int | None = None) -> Tensor:
        """Masks of parts ``start..stop-1``: bool ``[stop - start, *spatial]`` (True = kept)."""

    def blend(self, source: Source, start: int, stop: int, out: Any) -> None:
        """Write the masked inputs of parts ``start..stop-1`` into ``out`` (a batch of ``stop - start``)."""
        masks = self.masks(start, stop)
        if source.diff is None:
            blend(source.x, source.substrate, masks, source.lead, out=out)
            return
        trail = source.x.ndim - source.lead - (masks.ndim - 1)
        m = masks.view(masks.shape[0], *([1] * source.lead), *masks.shape[1:], *([1] * trail)).to(source.diff.dtype)
        torch.addcmul(source.substrate, source.diff, m, out=out)

    def aggregate(self, scores: Tensor) -> Tensor:
        """Eq. 1's numerator over this group: ``sum_j scores[j] * m_j``, ``[*spatial]`` in the scores' dtype."""
        total: Tensor | None = None
        step = max(1, _SLICE_ELEMENTS // max(1, self.masks(0, 1)[0].numel()))
        for lo in range(0, len(self), step):
            m = self.masks(lo, lo + step)
            part = torch.tensordot(scores[lo : lo + m.shape[0]], m.to(scores.dtype), dims=1)
            total = part if total is None else total + part
        assert total is not None, "aggregate() of an empty group"
        return total

    def coverage(self) -> Tensor | float:
        """Eq. 1's ``N`` over this group: how many parts keep each position (``[*spatial]`` or a number)."""
        return self.aggregate(torch.ones(len(self), dtype=torch.float64, device=self.masks(0, 1).device))


#: Mask elements converted at once by the default :meth:`Parts.aggregate` (bounds its memory).
_SLICE_ELEMENTS = 1 << 22


class LabelParts(Parts):
    """Parts given by a label map: part ``k`` keeps the pixels labelled ``k``.

    Args:
        labels: integer label map ``[*spatial]`` with consecutive labels ``0..K-1`` (see
            :func:`consecutive_labels`), ``-1`` at positions in no part; a CPU tensor is moved to
            ``device`` at first use.
        device: where the masks are built.
    """

    def __init__(self, labels: Tensor, device: torch.device | str | None = None) -> None:
        self._labels = labels
        self.device = torch.device(device) if device is not None else labels.device
        self._count = int(labels.max()) + 1 if labels.numel() else 0
        self._covered: Tensor | None = None

    def __len__(self) -> int:
        return self._count

    @property
    def labels(self) -> Tensor:
        if self._labels.device != self.device:
            # The copy is queued here, on the thread that runs the forward passes, so a worker never
            # waits for the device's queue.
            self._labels = self._labels.to(self.device, non_blocking=True)
        return self._labels

    def masks(self, start: int = 0, stop: int | None = None) -> Tensor:
        stop = len(self) if stop is None else stop
        ids = torch.arange(start, stop, device=self.device, dtype=self._labels.dtype)
        labels = self.labels
        return labels.unsqueeze(0) == ids.view(-1, *([1] * labels.ndim))

    def aggregate(self, scores: Tensor) -> Tensor:
        # A gather: each position takes its part's score (0 for positions in no part, label -1).
        padded = torch.cat([scores.new_zeros(1), scores])
        return padded[(self.labels.long() + 1).clamp_min(0)]

    def coverage(self) -> Tensor | float:
        if self._covered is None:
            self._covered = (self.labels >= 0).to(torch.float64 if self.device.type != "mps" else torch.float32)
        return self._covered


def consecutive_labels(labels: np.ndarray) -> np.ndarray:
    """Relabel any integer label map to ``0..K-1`` (int32), keeping the order of label values.

    Every distinct value is one part, so every pixel is covered; labels absent from the map (which
    the reference runs as fully masked inputs that add nothing) cost no forward pass.
    """
    # int64 first: `labels - lo` would overflow narrow types (int8 labels -100..100).
    flat = labels.ravel().astype(np.int64, copy=False)
    lo, hi = int(flat.min()), int(flat.max())
    if hi - lo < 4 * flat.size:
        present = np.bincount(flat - lo, minlength=hi - lo + 1) > 0
        lut = (np.cumsum(present) - 1).astype(np.int32)
        return lut[flat - lo].reshape(labels.shape)
    return np.unique(flat, return_inverse=True)[1].reshape(labels.shape).astype(np.int32)


PartsOrFuture = Union[Parts, "Future[Parts]"]


class Partition(ABC):
    """Base class of partition strategies (sliding windows, superpixels, token windows, ...)."""

    #: Number of spatial axes of the inputs (2 for images ``[C, H, W]``, 1 for sequences).
    spatial_dims: int = 2
    #: Whether the parts depend on the input's content (so a second run on a guide makes sense).
    content_aware: bool = False
    #: Whether inputs have a channel axis before the spatial ones (``[B, C, *spatial]``); False for
    #: token sequences ``[B, L]``.
    channel_axis: bool = True

    @abstractmethod
    def parts(
        self,
        x: Tensor,
        *,
        guide: Tensor | None = None,
        device: torch.device | str | None = None,
        executor: Executor | None = None,
    ) -> Sequence[PartsOrFuture]:
        """Groups of parts of one input.

        Args:
            x: one input ``[C, *spatial]`` (the engine passes a CPU copy to content-aware partitions).
            guide: a uint8 image ``[3, *spatial]`` to partition instead of ``x`` (the second run's
                colour-mapped first map, see :func:`~pami_lightning.partitions.superpixels.colour_guide`).
            device: where masks are built (default ``x.device``).
            executor: a thread pool for CPU work; without one the work runs inline.
        """

    def keep(self, x: Any) -> Tensor | None:
        """Positions of one input that no part covers and every masked input keeps (bool ``[*spatial]``).

        ``None`` (the default) when parts cover everything; token partitions keep padding and special
        tokens, whose importance is then 0.
        """
        return None

    def masks(self, x: Tensor, guide: Tensor | None = None) -> Tensor:
        """All parts of one input as bool masks ``[J, *spatial]``, for inspection and plotting.

        Args:
            x: one input ``[C, *spatial]`` (e.g. an image ``[3, H, W]`` in ``[0, 1]``).
            guide: optional uint8 image ``[3, *spatial]`` to partition instead of ``x`` (second run).
        """
        self.check_input(x.unsqueeze(0), "x", batched=False)
        groups = [g.result() if isinstance(g, Future) else g for g in self.parts(x, guide=guide)]
        spatial = tuple(x.shape[1:])
        if not groups:
            return torch.zeros(0, *spatial, dtype=torch.bool, device=x.device)
        return torch.cat([g.masks() for g in groups])

    # Any, like keep(): the engine passes any inputs (token partitions take dicts); this default
    # handles tensors, and PAMI rejects dict inputs for partitions with a channel axis before calling it.
    def check_input(self, inputs: Any, name: str = "inputs", batched: bool = True) -> None:
        """Raise a ValueError naming the fix when ``inputs`` is not ``[B, C, *spatial]``."""
        axes = {1: "[B, C, T]", 2: "[B, C, H, W]", 3: "[B, C, D, H, W]"}.get(self.spatial_dims, "[B, C, *spatial]")
        want = self.spatial_dims + 2
        if inputs.ndim != want:
            shape = list(inputs.shape) if batched else list(inputs.shape[1:])
            expected = axes if batched else axes.replace("B, ", "")
            hint = ""
            if batched and inputs.ndim == want - 1:
                hint = " — add a batch dimension"
            elif not batched and inputs.ndim == want + 1:
                hint = " — pass one input, not a batch"
            raise ValueError(f"{name} must be {expected} for {type(self).__name__}; got {shape}{hint}")
