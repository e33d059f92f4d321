"""Strategy I of the paper: sliding windows on a regular grid."""

from __future__ import annotations

from concurrent.futures import Executor
from typing import Literal, Sequence

import torch
from torch import Tensor

from .base import Partition, Parts

__all__ = ["SlidingWindow", "WindowParts"]


class WindowParts(Parts):
    """Windows of one ``radius`` centred on a grid; masks by one broadcast comparison per slice."""

    def __init__(self, spatial: Sequence[int], radius: int, stride: int, shape: str, device: torch.device) -> None:
        self.spatial = tuple(spatial)
        self.radius, self.shape, self.device = radius, shape, device
        axes = [torch.arange(0, n, stride, device=device) for n in self.spatial]
        # Row-major grid of centres: [J, ndim]
        self.centres = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, len(self.spatial))
        self._coords = [torch.arange(n, device=device) for n in self.spatial]

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


class SlidingWindow(Partition):
    """Windows of a fixed size whose centres lie on a regular grid (paper §3.2.1, Strategy I).

    Centres are at ``0, stride, 2*stride, ...`` along every spatial axis (the reference's grid: on a
    224x224 image with ``stride=6``, rows and columns ``0..222``, 38 x 38 = 1444 windows). A pixel is
    in a circular window when ``dy**2 + dx**2 <= radius**2``, in a square one when
    ``max(|dy|, |dx|) <= radius`` (a ``2*radius + 1`` wide square). Windows are clipped at the border.

    Args:
        radius: window radius in pixels (default 40, the paper's).
        stride: step between window centres in pixels (default 6, the paper's).
        shape: ``"circle"`` (default) or ``"square"``.
        spatial_dims: 2 for images ``[B, C, H, W]`` (default), 1 for signals ``[B, C, T]``.

    Example:
        >>> import torch
        >>> from pami_lightning import SlidingWindow
        >>> SlidingWindow(radius=40, stride=6).masks(torch.rand(3, 224, 224)).shape
        torch.Size([1444, 224, 224])
    """

    def __init__(
        self,
        radius: int = 40,
        stride: int = 6,
        shape: Literal["circle", "square"] = "circle",
        spatial_dims: int = 2,
    ) -> None:
        if radius < 0:
            raise ValueError(f"radius must be >= 0 pixels; got {radius}")
        if stride < 1:
            raise ValueError(f"stride must be >= 1 pixel; got {stride}")
        if shape not in ("circle", "square"):
            raise ValueError(f'shape must be "circle" or "square"; got "{shape}"')
        if spatial_dims not in (1, 2, 3):
            raise ValueError(f"spatial_dims must be 1 (signals), 2 (images) or 3 (volumes); got {spatial_dims}")
        self.radius, self.stride, self.shape, self.spatial_dims = int(radius), int(stride), shape, int(spatial_dims)
        self._cache: dict[tuple, WindowParts] = {}

    def parts(
        self,
        x: Tensor,
        *,
        guide: Tensor | None = None,
        device: torch.device | str | None = None,
        executor: Executor | None = None,
    ) -> list[Parts]:
        device = torch.device(device) if device is not None else x.device
        # The window attributes are in the key: they are public and may be changed between calls.
        key = (tuple(x.shape[1:]), device, self.radius, self.stride, self.shape)
        parts = self._cache.get(key)
        if parts is None:
            parts = WindowParts(key[0], self.radius, self.stride, self.shape, device)
            self._cache = {key: parts}
        return [parts]

    def num_parts(self, spatial: Sequence[int]) -> int:
        """Number of windows (forward passes per input) for inputs of this spatial size."""
        count = 1
        for n in spatial:
            count *= -(-n // self.stride)
        return count

    def __repr__(self) -> str:
        return f'SlidingWindow(radius={self.radius}, stride={self.stride}, shape="{self.shape}")'
