"""Several partitions pooled into one (paper §3.2.1: "multiple window sizes for multi-scale interpretation")."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from typing import Any

import torch
from torch import Tensor

from .base import Partition, PartsOrFuture
from .tokens import TokenPartition

__all__ = ["Pooled"]


class Pooled(Partition):
    """The parts of several partitions as one partition: Eq. 1 runs once over their union.

    ``parts()`` returns the groups of every member in order, so the engine packs the forward passes
    of all members into the same batches, and the map is
    ``h = sum_j s_j * m_j / sum_j m_j`` over every part ``j`` of every member (0 where no part
    covers). Pooling windows of several radii is the paper's multi-scale interpretation (see
    :meth:`SlidingWindow.multiscale`); pooling segmentations that each cover every pixel once
    averages their maps, as :class:`Superpixels` does with its settings.

    Members must take the same inputs (equal ``spatial_dims`` and ``channel_axis``) and keep the same
    positions out of every part (:meth:`keep`: token partitions need equal ``pad_id`` and
    ``keep_ids``). The pool is content-aware when any member is.

    Args:
        partitions: the members, at least one, e.g. ``[SlidingWindow(20, 6), SlidingWindow(40, 6)]``
            or ``[SlidingWindow(40, 6), Superpixels([...])]``.

    Example:
        >>> import torch
        >>> from pami_lightning.partitions import Pooled, SlidingWindow
        >>> pooled = Pooled([SlidingWindow(radius=8, stride=8), SlidingWindow(radius=16, stride=8)])
        >>> pooled.num_parts((64, 64))  # 8 x 8 windows of each radius
        128
        >>> pooled.masks(torch.rand(3, 64, 64)).shape
        torch.Size([128, 64, 64])
    """

    def __init__(self, partitions: Sequence[Partition]) -> None:
        if isinstance(partitions, Partition):
            raise TypeError(f"Pooled takes a list of partitions; got one {type(partitions).__name__} — "
                            f"wrap it: Pooled([{type(partitions).__name__}(...), ...])")
        members = tuple(partitions)
        if not members:
            raise ValueError("Pooled needs at least one partition, e.g. Pooled([SlidingWindow(20, 6), SlidingWindow(40, 6)])")
        bad = next((m for m in members if not isinstance(m, Partition)), None)
        if bad is not None:
            raise TypeError(f"every member of Pooled must be a Partition (SlidingWindow, Superpixels, ...); "
                            f"got {type(bad).__name__}")
        first = members[0]
        for m in members[1:]:
            if m.channel_axis != first.channel_axis:
                raise ValueError(f"members of Pooled must take the same inputs: {first!r} and {m!r} do not (one "
                                 "partitions token sequences [B, L], the other [B, C, *spatial] inputs)")
            if m.spatial_dims != first.spatial_dims:
                raise ValueError(f"members of Pooled must have the same spatial_dims: {first!r} has "
                                 f"{first.spatial_dims}, {m!r} has {m.spatial_dims} — pass e.g. spatial_dims="
                                 f"{first.spatial_dims} to every SlidingWindow")
        # Positions kept out of every part are kept in every masked input: one rule for the whole pool.
        rules = {(m.pad_id, m.keep_ids) for m in members if isinstance(m, TokenPartition)}
        if len(rules) > 1:
            raise ValueError(f"token partitions of Pooled must keep the same tokens out of every part; got "
                             f"(pad_id, keep_ids) {sorted(rules, key=repr)} — give every member the same pad_id= and keep_ids=")
        self.partitions: tuple[Partition, ...] = members
        self.spatial_dims = first.spatial_dims
        self.channel_axis = first.channel_axis
        self.content_aware = any(m.content_aware for m in members)

    def parts(
        self,
        x: Any,
        *,
        guide: Tensor | None = None,
        device: torch.device | str | None = None,
        executor: Executor | None = None,
    ) -> list[PartsOrFuture]:
        groups: list[PartsOrFuture] = []
        for m in self.partitions:
            groups.extend(m.parts(x, guide=guide, device=device, executor=executor))
        return groups

    def keep(self, x: Any) -> Tensor | None:
        """The members' kept positions (bool ``[*spatial]`` or ``None``), which must agree on ``x``."""
        keeps = [m.keep(x) for m in self.partitions]
        first = keeps[0]
        for m, k in zip(self.partitions[1:], keeps[1:], strict=True):
            # None means "nothing kept", the same as an all-False mask.
            same = (k is None or not bool(k.any())) if first is None else (
                not bool(first.any()) if k is None else torch.equal(first.to(k.device), k))
            if not same:
                raise ValueError(f"members of Pooled keep different positions out of every part: {self.partitions[0]!r} "
                                 f"and {m!r} (e.g. Words(separator_ids=...) keeps separators, TokenWindows covers them) "
                                 "— pool partitions that skip the same tokens")
        return first

    def masks(self, x: Any, guide: Tensor | None = None) -> Tensor:
        """All parts of one input as bool masks ``[J, *spatial]``: each member's, in order.

        Args:
            x: one input ``[C, *spatial]`` (for token partitions, ids ``[L]`` or a dict of them).
            guide: optional image ``[3, *spatial]`` to partition instead of ``x`` (second run).
        """
        if self.channel_axis:
            return super().masks(x, guide)
        # Token inputs may be dicts, which only the token partitions know how to check and batch.
        return torch.cat([m.masks(x, guide) for m in self.partitions])

    def check_input(self, inputs: Any, name: str = "inputs", batched: bool = True) -> None:
        """Raise a ValueError naming the fix when ``inputs`` is not what the members take."""
        # Every member takes the same inputs; the first knows their format (token dicts included).
        self.partitions[0].check_input(inputs, name, batched)

    @property
    def num_parts(self) -> Callable[..., int]:
        """``num_parts(spatial)``: the members' number of parts summed, when every member has one.

        Absent (``hasattr(pooled, "num_parts")`` is False) when a member's count depends on the
        input's content, as for :class:`Superpixels`.
        """
        missing = next((m for m in self.partitions if not hasattr(m, "num_parts")), None)
        if missing is not None:
            raise AttributeError(f"Pooled has no num_parts: {missing!r} has no fixed number of parts per input")
        return self._num_parts

    def _num_parts(self, spatial: Any) -> int:
        return sum(m.num_parts(spatial) for m in self.partitions)  # type: ignore[attr-defined]

    def __repr__(self) -> str:
        return f"Pooled([{', '.join(map(repr, self.partitions))}])"
