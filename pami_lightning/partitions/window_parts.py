"""The windows of one image (Strategy I's parts): masked inputs blended from cached masks or box by box,
and Eq. 1's numerator as prefix sums of the score grid."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from .base import Parts, Source

__all__ = ["DENSE_BYTES", "WindowParts"]


#: A window grid's float masks are cached when they take at most this many bytes: on small inputs
#: building masks for every batch costs more than the forward passes; on large ones the cache would
#: outgrow a batch of inputs, and windows are blended box by box instead.
DENSE_BYTES = 64 << 20

#: Elements of the float64 temporaries of one step of :meth:`WindowParts.aggregate`: small enough to stay
#: in cache (larger steps ran several times slower at 224 px), and bounded memory on large images.
_AGGREGATE_ELEMENTS = 1 << 16


class WindowParts(Parts):
    """Windows of one ``radius`` centred on a grid of ``stride``: every window a translate of one kernel.

    That structure makes both halves of Eq. 1 cheap and exact. Masked inputs are
    ``substrate + diff * m_j`` from cached float masks (small inputs) or one box per window (large
    inputs on the CPU), and the numerator ``sum_j s_j m_j`` is the score grid spread by the kernel:
    along the last axis every window is a run of pixels per offset of the other axes, so it is a
    difference of prefix sums in float64 — independent of the batch and of the mask count.
    """

    def __init__(self, spatial: Sequence[int], radius: int, stride: int, shape: str, device: torch.device) -> None:
        self.spatial = tuple(spatial)
        self.radius, self.stride, self.shape, self.device = radius, stride, shape, device
        axes = [torch.arange(0, n, stride, device=device) for n in self.spatial]
        self.grid = tuple(a.numel() for a in axes)
        # Row-major grid of centres: [J, ndim]
        self.centres = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, len(self.spatial))
        self._coords = [torch.arange(n, device=device) for n in self.spatial]
        self._dense: dict[torch.dtype, Tensor] = {}
        self._kernel: dict[torch.dtype, Tensor] = {}
        self._boxes: list[tuple[tuple[slice, ...], tuple[slice, ...]]] | None = None
        self._plan: tuple[Tensor, list[int], Tensor, Tensor, Tensor] | None = None
        self._cover: Tensor | None = None

    def __len__(self) -> int:
        return self.centres.shape[0]

    def masks(self, start: int = 0, stop: int | None = None) -> Tensor:
        centres = self.centres[start:stop]
        ndim = len(self.spatial)
        total = None
        for axis, coord in enumerate(self._coords):
            view = [-1] + [1] * ndim
            view[axis + 1] = coord.numel()
            d = coord.view(view) - centres[:, axis].view([-1] + [1] * ndim)
            term = d * d if self.shape == "circle" else d.abs()
            if total is None:
                total = term
            elif self.shape == "circle":
                total = total + term
            else:
                total = torch.maximum(total, term)
        assert total is not None
        bound = self.radius**2 if self.shape == "circle" else self.radius
        return total <= bound

    # ------------------------------------------------------------------ blending

    def blend(self, source: Source, start: int, stop: int, out: Any) -> None:
        d = source.diff
        if d is None or source.lead != 1 or d.ndim != 1 + len(self.spatial):
            super().blend(source, start, stop, out)
        elif len(self) * math.prod(self.spatial) * d.element_size() <= DENSE_BYTES:
            torch.addcmul(source.substrate, d, self._dense_masks(d.dtype)[start:stop].unsqueeze(1), out=out)
        elif self.device.type == "cpu":
            self._blend_boxes(source.substrate, d, start, stop, out)
        else:
            super().blend(source, start, stop, out)  # accelerators build a batch of masks in one kernel

    def _dense_masks(self, dtype: torch.dtype) -> Tensor:
        if dtype not in self._dense:
            self._dense = {dtype: torch.cat([self.masks(lo, lo + 256).to(dtype) for lo in range(0, len(self), 256)])}
        return self._dense[dtype]

    def _blend_boxes(self, substrate: Tensor, diff: Tensor, start: int, stop: int, out: Tensor) -> None:
        """``out = substrate`` everywhere, then ``+= diff * kernel`` in each window's box (the same sums as the dense path)."""
        if self._boxes is None:
            r = self.radius
            self._boxes = [
                (
                    tuple(slice(max(0, c - r), min(n, c + r + 1)) for c, n in zip(centre, self.spatial, strict=True)),
                    tuple(slice(max(0, c - r) - (c - r), min(n, c + r + 1) - (c - r)) for c, n in zip(centre, self.spatial, strict=True)),
                )
                for centre in self.centres.tolist()
            ]
        if diff.dtype not in self._kernel:
            self._kernel = {diff.dtype: self._window_kernel().to(diff.dtype)}
        kernel = self._kernel[diff.dtype]
        out.copy_(substrate.expand_as(out))
        channels = (slice(None),)
        for k, (box, kbox) in enumerate(self._boxes[start:stop]):
            out[k][channels + box].addcmul_(diff[channels + box], kernel[kbox])

    def _window_kernel(self) -> Tensor:
        """The window centred in a ``(2r + 1)``-wide box: bool ``[2r + 1] * ndim``."""
        r, ndim = self.radius, len(self.spatial)
        offsets = torch.arange(-r, r + 1, device=self.device)
        grids = torch.meshgrid(*([offsets] * ndim), indexing="ij")
        if self.shape == "circle":
            return sum(g * g for g in grids) <= r * r  # type: ignore[return-value]
        return torch.ones([2 * r + 1] * ndim, dtype=torch.bool, device=self.device)

    # ------------------------------------------------------------------ Eq. 1

    def aggregate(self, scores: Tensor) -> Tensor:
        *lead_spatial, width = self.spatial
        r = self.radius
        lead_cells = math.prod(self.grid[:-1])
        # Scores on the pixel grid of the last axis (zero between centres); prefix sums padded so
        # that every run [x - w, x + w] is a difference of two slices (prefix[k + r] = sum of the first k).
        stuffed = scores.new_zeros(lead_cells, width)
        stuffed[:, :: self.stride] = scores.view(lead_cells, self.grid[-1])
        cums = stuffed.cumsum(1)
        prefix = torch.cat([scores.new_zeros(lead_cells, r + 1), cums, cums[:, -1:].expand(-1, r)], dim=1)
        heat = scores.new_zeros(math.prod(lead_spatial), width)
        widths, offsets, cells, which, rows = self._aggregation_plan()
        # runs[q, k, x]: the run of half-width widths[k] around x, for every leading grid cell q; a few
        # widths at a time, so the temporaries stay small on large images.
        windows = prefix.unfold(1, width, 1)
        step = max(1, _AGGREGATE_ELEMENTS // (lead_cells * width))
        for k0 in range(0, len(widths), step):
            k1 = min(len(widths), k0 + step)
            ws = widths[k0:k1]
            runs = windows[:, ws + r + 1] - windows[:, r - ws]
            a, z = offsets[k0], offsets[k1]
            heat.index_add_(0, rows[a:z], runs.reshape(-1, width)[cells[a:z] * (k1 - k0) + which[a:z] - k0])
        return heat.view(self.spatial)

    def coverage(self) -> Tensor | float:
        if self._cover is None:
            dtype = torch.float32 if self.device.type == "mps" else torch.float64
            self._cover = self.aggregate(torch.ones(len(self), dtype=dtype, device=self.device))
        return self._cover

    def _aggregation_plan(self) -> tuple[Tensor, list[int], Tensor, Tensor, Tensor]:
        """Which leading grid cell adds its run of which half-width to which pixel row.

        A window centred at ``c`` covers, at offset ``delta`` of the leading axes, the pixels
        ``|x - c_last| <= w`` of the last axis, ``w = isqrt(r**2 - |delta|**2)`` (circle) or ``r``
        (square). Returns the half-widths ``[K]``, and, ordered by half-width (pairs of width ``k``
        at ``offsets[k]:offsets[k + 1]``), each pair's leading cell, width index and pixel row.
        """
        if self._plan is not None:
            return self._plan
        r, s = self.radius, self.stride
        *lead_spatial, _ = self.spatial
        pairs: dict[int, tuple[list[int], list[int]]] = {}
        for d in itertools.product(range(-r, r + 1), repeat=len(lead_spatial)):
            squared = sum(v * v for v in d)
            if self.shape == "circle" and squared > r * r:
                continue
            w = math.isqrt(r * r - squared) if self.shape == "circle" else r
            cells, rows = pairs.setdefault(w, ([], []))
            for q, cell in enumerate(itertools.product(*(range(g) for g in self.grid[:-1]))):
                pixel = [i * s + v for i, v in zip(cell, d, strict=True)]
                if all(0 <= p < n for p, n in zip(pixel, lead_spatial, strict=True)):
                    row = 0
                    for p, n in zip(pixel, lead_spatial, strict=True):
                        row = row * n + p
                    cells.append(q)
                    rows.append(row)
        kept = [(w, cells, rows) for w, (cells, rows) in sorted(pairs.items()) if rows]
        offsets = [0]
        for _, _, rows in kept:
            offsets.append(offsets[-1] + len(rows))

        def tensor(values: list[int]) -> Tensor:
            return torch.tensor(values, dtype=torch.long, device=self.device)

        self._plan = (
            tensor([w for w, _, _ in kept]),
            offsets,
            tensor([q for _, cells, _ in kept for q in cells]),
            tensor([k for k, (_, cells, _) in enumerate(kept) for _ in cells]),
            tensor([row for _, _, rows in kept for row in rows]),
        )
        return self._plan
