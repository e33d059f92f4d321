"""Strategy I of the paper: sliding windows on a regular grid."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from concurrent.futures import Executor
from typing import TYPE_CHECKING, Literal, Optional

import torch
from torch import Tensor

from .base import Partition, Parts
from .window_parts import WindowParts

if TYPE_CHECKING:
    from .pooled import Pooled

__all__ = ["SlidingWindow", "WindowParts"]  # WindowParts: its 0.1 import path


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
