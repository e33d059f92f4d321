"""Partitions: how one input is split into the parts that PAMI keeps one at a time.

A partition turns one input ``[C, *spatial]`` into groups of parts. A group (:class:`Parts`) knows
how many parts it holds and builds their boolean masks ``[n, *spatial]`` on demand, a slice at a
time, so the engine never holds all ``J`` masks (let alone all ``J`` masked inputs) at once. Groups
that need CPU work (segmentations) come back as futures of a thread pool so that the work overlaps
the device's forward passes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from concurrent.futures import Executor, Future
from typing import Any, Sequence, Union

import numpy as np
import torch
from torch import Tensor

__all__ = ["Parts", "LabelParts", "Partition", "PartsOrFuture"]


class Parts(ABC):
    """A group of parts of one input, each a boolean mask over the input's spatial axes."""

    @abstractmethod
    def __len__(self) -> int:
        """Number of parts ``n`` in the group."""

    @abstractmethod
    def masks(self, start: int = 0, stop: int | None = None) -> Tensor:
        """Masks of parts ``start..stop-1``: bool ``[stop - start, *spatial]`` (True = kept)."""


class LabelParts(Parts):
    """Parts given by a label map: part ``k`` keeps the pixels labelled ``k``.

    Args:
        labels: integer label map ``[*spatial]`` with consecutive labels ``0..K-1`` (see
            :func:`consecutive_labels`); a CPU tensor is moved to ``device`` at first use.
        device: where the masks are built.
    """

    def __init__(self, labels: Tensor, device: torch.device | str | None = None) -> None:
        self._labels = labels
        self.device = torch.device(device) if device is not None else labels.device
        self._count = int(labels.max()) + 1 if labels.numel() else 0

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
            guide: an image ``[3, *spatial]`` in ``[0, 1]`` to partition instead of ``x`` (second run).
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
            guide: optional image ``[3, *spatial]`` to partition instead of ``x`` (second run).
        """
        self.check_input(x.unsqueeze(0), "x", batched=False)
        groups = [g.result() if isinstance(g, Future) else g for g in self.parts(x, guide=guide)]
        spatial = tuple(x.shape[1:])
        if not groups:
            return torch.zeros(0, *spatial, dtype=torch.bool, device=x.device)
        return torch.cat([g.masks() for g in groups])

    def check_input(self, inputs: Tensor, name: str = "inputs", batched: bool = True) -> None:
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
