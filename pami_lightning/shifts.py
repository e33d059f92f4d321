"""Shift augmentation (the reference code's, not in the paper): circularly shifted views of an input."""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from .partitions.base import Partition

__all__ = ["REFERENCE_SHIFTS", "as_shifts", "roll"]

#: The reference code's shift augmentation: identity plus circular shifts of 36, 30 and 24 pixels
#: up, down, left and right (13 views).
REFERENCE_SHIFTS: tuple[tuple[int, int], ...] = (
    (0, 0),
    *(s for d in (36, 30, 24) for s in ((d, 0), (-d, 0), (0, d), (0, -d))),
)


def as_shifts(shifts: Sequence[Sequence[int]] | str | None, partition: Partition) -> list[tuple[int, ...]] | None:
    """The views ``[(dy, dx), ...]`` of ``shifts`` (``"reference"``: :data:`REFERENCE_SHIFTS`), checked against the partition."""
    if shifts is None:
        return None
    if isinstance(shifts, str):
        if shifts != "reference":
            raise ValueError(f'shifts must be a list of (dy, dx) views or "reference"; got "{shifts}"')
        shifts = REFERENCE_SHIFTS
    if not partition.channel_axis:
        raise ValueError(f"shifts augment images and signals; {partition!r} splits token sequences — pass shifts=None")
    views = [_as_shift(s) for s in shifts]
    if not views:
        raise ValueError("shifts must hold at least one view; use [(0, 0)] (or None) for no augmentation")
    bad = [s for s in views if len(s) != partition.spatial_dims]
    if bad:
        raise ValueError(f"each shift needs {partition.spatial_dims} offsets (one per spatial axis); got {bad[0]}")
    if len(set(views)) != len(views):
        raise ValueError(f"shifts must not repeat a view; got {views}")
    return views


def _as_shift(shift: Any) -> tuple[int, ...]:
    """One view's offsets as ints; refuses what ``int()`` would silently truncate (1.5 -> 1)."""
    if isinstance(shift, (str, bytes)) or not hasattr(shift, "__iter__"):
        raise ValueError(f"each shift must be a (dy, dx) pair of pixel offsets; got {shift!r}")
    values = [v.item() if isinstance(v, Tensor) else v for v in shift]
    if not all(isinstance(v, numbers.Integral) or (isinstance(v, numbers.Real) and float(v).is_integer()) for v in values):
        raise ValueError(f"shifts must be whole numbers of pixels; got {tuple(values)}")
    return tuple(int(v) for v in values)


def roll(t: Any, shift: Sequence[int], first: int = 0, back: bool = False) -> Any:
    """Circularly shift the spatial axes of ``t`` (starting at axis ``first``) by ``shift`` (or back)."""
    if not any(shift):
        return t
    shifts = tuple(-v for v in shift) if back else tuple(shift)
    return torch.roll(t, shifts=shifts, dims=tuple(range(first, first + len(shift))))
