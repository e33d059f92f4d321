"""Strategy I of the paper: sliding windows on a regular grid."""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Sequence
from concurrent.futures import Executor
from typing import TYPE_CHECKING, Any, Literal, Optional

import torch
from torch import Tensor

from .base import Partition, Parts, Source

if TYPE_CHECKING:
    from .pooled import Pooled

__all__ = ["SlidingWindow", "WindowParts"]


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


class SlidingWindow(Partition):
    """Windows of a fixed size whose centres lie on a regular grid (paper §3.2.1, Strategy I).

    Centres are at ``0, stride, 2*stride, ...`` along every spatial axis (the reference's grid: on a
    224x224 image with ``stride=6``, rows and columns ``0..222``, 38 x 38 = 1444 windows). A pixel is
    in a circular window when ``dy**2 + dx**2 <= radius**2``, in a square one when
    ``max(|dy|, |dx|) <= radius`` (a ``2*radius + 1`` wide square). Windows are clipped at the border.

    The paper's radius 40 and stride 6 are sized for 224x224 images; on a 32x32 image every such
    window covers the whole image and the map is flat. :meth:`relative` gives windows sized as a
    fraction of each input (``unit="fraction"``), :meth:`resolve` the pixels used for a size, and
    ``max_parts`` caps the forward passes per input by widening the stride.

    Args:
        radius: window radius in pixels (default 40, the paper's); with ``unit="fraction"``, a
            fraction in ``[0, 1]`` of the input's smallest spatial size, rounded to whole pixels
            (default ``40/224``, the paper's scaled: ``SlidingWindow(unit="fraction")`` is :meth:`relative`).
        stride: step between window centres in pixels (default 6, the paper's); with
            ``unit="fraction"``, a fraction in ``(0, 1]`` of the smallest spatial size, at least 1
            pixel (default ``6/224``).
        shape: ``"circle"`` (default) or ``"square"``.
        spatial_dims: 2 for images ``[B, C, H, W]`` (default), 1 for signals ``[B, C, T]``.
        unit: ``"px"`` (default) or ``"fraction"``: what ``radius`` and ``stride`` are measured in.
        max_parts: budget of windows (forward passes) per input, or ``None`` (default) for none. When
            the grid has more windows, the stride grows to the smallest one whose grid fits; the
            radius is kept.

    Example:
        >>> import torch
        >>> from pami_lightning import SlidingWindow
        >>> SlidingWindow(radius=40, stride=6).masks(torch.rand(3, 224, 224)).shape
        torch.Size([1444, 224, 224])
        >>> SlidingWindow(radius=40, stride=6, max_parts=400).resolve((224, 224))  # 19 x 19 = 361 windows
        (40, 12)
    """

    def __init__(
        self,
        radius: Optional[float] = None,
        stride: Optional[float] = None,
        shape: Literal["circle", "square"] = "circle",
        spatial_dims: int = 2,
        *,
        unit: Literal["px", "fraction"] = "px",
        max_parts: Optional[int] = None,
    ) -> None:
        # None: the paper's 40 and 6 px, in the unit given (a config file can then write just `unit: fraction`).
        if radius is None:
            radius = 40 / 224 if unit == "fraction" else 40
        if stride is None:
            stride = 6 / 224 if unit == "fraction" else 6
        if unit == "px":
            if radius < 0:
                raise ValueError(f"radius must be >= 0 pixels; got {radius}")
            if stride < 1:
                raise ValueError(f"stride must be >= 1 pixel; got {stride}")
        elif unit == "fraction":
            # A pixel count passed as a fraction (radius=40) would make every window cover everything.
            if not 0 <= radius <= 1:
                raise ValueError(f'radius must be in [0, 1] with unit="fraction" (a fraction of the smallest spatial '
                                 f'size, e.g. 40/224); got {radius} — for pixels use unit="px"')
            if not 0 < stride <= 1:
                raise ValueError(f'stride must be in (0, 1] with unit="fraction" (a fraction of the smallest spatial '
                                 f'size, e.g. 6/224); got {stride} — for pixels use unit="px"')
        else:
            raise ValueError(f'unit must be "px" (pixels) or "fraction" (of the smallest spatial size); got "{unit}"')
        if shape not in ("circle", "square"):
            raise ValueError(f'shape must be "circle" or "square"; got "{shape}"')
        if spatial_dims not in (1, 2, 3):
            raise ValueError(f"spatial_dims must be 1 (signals), 2 (images) or 3 (volumes); got {spatial_dims}")
        if max_parts is not None and (isinstance(max_parts, bool) or int(max_parts) != max_parts or max_parts < 1):
            raise ValueError(f"max_parts must be a whole number >= 1 of forward passes per input, or None for no "
                             f"budget; got {max_parts}")
        self.radius: float = int(radius) if unit == "px" else float(radius)
        self.stride: float = int(stride) if unit == "px" else float(stride)
        self.shape, self.spatial_dims = shape, int(spatial_dims)
        self.unit, self.max_parts = unit, None if max_parts is None else int(max_parts)
        self._cache: dict[tuple, WindowParts] = {}
        self._warned: set[tuple] = set()

    @classmethod
    def relative(
        cls,
        radius: float = 40 / 224,
        stride: float = 6 / 224,
        shape: Literal["circle", "square"] = "circle",
        spatial_dims: int = 2,
        *,
        max_parts: int | None = None,
    ) -> SlidingWindow:
        """Windows sized as fractions of each input's smallest spatial size (``unit="fraction"``).

        The defaults are the paper's radius 40 and stride 6 at 224x224, scaled to any size: radius
        ``round(40/224 * n)`` and stride ``max(1, round(6/224 * n))`` pixels for a smallest side ``n``
        (halves round up).

        Args:
            radius: fraction in ``[0, 1]`` of the smallest spatial size (default ``40/224``).
            stride: fraction in ``(0, 1]`` of the smallest spatial size (default ``6/224``).
            shape: ``"circle"`` (default) or ``"square"``.
            spatial_dims: 2 for images (default), 1 for signals.
            max_parts: budget of windows per input (default: none), see :class:`SlidingWindow`.

        Example:
            >>> from pami_lightning import SlidingWindow
            >>> sw = SlidingWindow.relative()
            >>> sw.resolve((224, 224)), sw.resolve((64, 64)), sw.resolve((32, 32))
            ((40, 6), (11, 2), (6, 1))
        """
        return cls(radius, stride, shape, spatial_dims, unit="fraction", max_parts=max_parts)

    @classmethod
    def multiscale(
        cls,
        radii: Sequence[float] = (20, 40, 60),
        stride: float = 6,
        shape: Literal["circle", "square"] = "circle",
        spatial_dims: int = 2,
        *,
        unit: Literal["px", "fraction"] = "px",
        max_parts: int | None = None,
    ) -> Pooled:
        """Windows of several radii pooled into one partition (paper §3.2.1, multi-scale interpretation).

        Eq. 1 runs once over the windows of every radius (see :class:`~pami_lightning.partitions.Pooled`).

        Args:
            radii: window radii, in ``unit`` (default ``(20, 40, 60)`` pixels).
            stride: step between window centres, in ``unit``, shared by every radius (default 6).
            shape: ``"circle"`` (default) or ``"square"``.
            spatial_dims: 2 for images (default), 1 for signals.
            unit: ``"px"`` (default) or ``"fraction"``, as for :class:`SlidingWindow`.
            max_parts: budget of windows per input for all radii together (default: none); each
                radius gets ``max_parts // len(radii)``.

        Example:
            >>> from pami_lightning import SlidingWindow
            >>> SlidingWindow.multiscale(radii=(20, 40), stride=8).num_parts((224, 224))  # 2 x 28 x 28
            1568
        """
        # Imported here so that pooled.py may import this module some day without a cycle.
        from .pooled import Pooled

        radii = list(radii)
        if not radii:
            raise ValueError("radii must hold at least one window radius, e.g. (20, 40, 60)")
        budget = None
        if max_parts is not None:
            if isinstance(max_parts, bool) or int(max_parts) != max_parts or max_parts < len(radii):
                raise ValueError(f"max_parts must be a whole number >= {len(radii)} (one window per radius at least) "
                                 f"or None; got {max_parts}")
            budget = int(max_parts) // len(radii)
        return Pooled([cls(r, stride, shape, spatial_dims, unit=unit, max_parts=budget) for r in radii])

    def resolve(self, spatial: Sequence[int] | int) -> tuple[int, int]:
        """The ``(radius, stride)`` in pixels used for inputs of this spatial size.

        With ``unit="fraction"``, both are scaled by the smallest spatial size and rounded (halves up;
        the stride is at least 1). With ``max_parts``, the stride then grows to the smallest one whose
        grid of ``prod(ceil(n_i / stride))`` windows fits the budget.

        Args:
            spatial: the input's spatial size, e.g. ``(H, W)`` (an int for signals).

        Example:
            >>> from pami_lightning import SlidingWindow
            >>> SlidingWindow.relative(max_parts=100).resolve((32, 32))  # radius 6 px; 8 x 8 windows at stride 4
            (6, 4)
        """
        spatial = (int(spatial),) if isinstance(spatial, int) else tuple(int(n) for n in spatial)
        if len(spatial) != self.spatial_dims:
            raise ValueError(f"spatial must hold {self.spatial_dims} sizes (one per spatial axis, no channel axis) "
                             f"for {self!r}; got {list(spatial)}")
        if self.unit == "fraction":
            side = min(spatial)
            # int(v + 0.5): round half up (Python's round() sends 2.5 to 2).
            radius, stride = int(self.radius * side + 0.5), max(1, int(self.stride * side + 0.5))
        else:
            radius, stride = int(self.radius), int(self.stride)
        if self.max_parts is not None and self._grid_size(spatial, stride) > self.max_parts:
            # The count never grows with the stride, so bisect; at max(spatial) every axis has one centre.
            lo, hi = stride + 1, max(stride + 1, *spatial)
            while lo < hi:
                mid = (lo + hi) // 2
                if self._grid_size(spatial, mid) <= self.max_parts:
                    hi = mid
                else:
                    lo = mid + 1
            stride = lo
        return radius, stride

    def parts(
        self,
        x: Tensor,
        *,
        guide: Tensor | None = None,
        device: torch.device | str | None = None,
        executor: Executor | None = None,
    ) -> list[Parts]:
        device = torch.device(device) if device is not None else x.device
        spatial = tuple(x.shape[1:])
        radius, stride = self.resolve(spatial)
        # The resolved window is in the key: the attributes are public and may be changed between calls.
        key = (spatial, device, radius, stride, self.shape)
        parts = self._cache.get(key)
        if parts is None:
            self._warn_if_flat(spatial, radius)
            parts = WindowParts(spatial, radius, stride, self.shape, device)
            self._cache = {key: parts}
        return [parts]

    def num_parts(self, spatial: Sequence[int] | int) -> int:
        """Number of windows (forward passes per input) for inputs of this spatial size."""
        return self._grid_size(spatial if not isinstance(spatial, int) else (spatial,), self.resolve(spatial)[1])

    @staticmethod
    def _grid_size(spatial: Sequence[int], stride: int) -> int:
        count = 1
        for n in spatial:
            count *= -(-n // stride)
        return count

    def _warn_if_flat(self, spatial: tuple[int, ...], radius: int) -> None:
        side = min(spatial)
        if side > 0 and 2 * radius >= side and (spatial, radius) not in self._warned:
            self._warned.add((spatial, radius))
            size = "x".join(map(str, spatial))
            warnings.warn(f"{self!r} resolves to a {radius} px radius on {size} inputs, at least half their smallest "
                          "side: every window covers most of the image: the map will be nearly flat — use "
                          "SlidingWindow.relative() or a smaller radius", UserWarning, stacklevel=3)

    def __repr__(self) -> str:
        extra = f", spatial_dims={self.spatial_dims}" if self.spatial_dims != 2 else ""
        extra += f', unit="{self.unit}"' if self.unit != "px" else ""
        extra += f", max_parts={self.max_parts}" if self.max_parts is not None else ""
        return f'SlidingWindow(radius={self.radius}, stride={self.stride}, shape="{self.shape}"{extra})'
