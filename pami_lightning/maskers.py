"""Maskers: what fills the removed part of a majority-masked input.

A masker turns a batch of inputs ``[B, C, *spatial]`` into a *substrate* of the same shape; the
engine then keeps the preserved part of the input and takes everything else from the substrate:
``x_j = where(m_j, x, substrate(x))``. Image maskers work in pixel space (inputs in ``[0, 1]``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter1d
from torch import Tensor

__all__ = ["Masker", "Blur", "Constant", "as_masker"]


class Masker(ABC):
    """Base class: ``substrate(x)`` returns what replaces the masked part of each input."""

    #: True when the masker expects pixel-space images in ``[0, 1]`` (the engine warns otherwise).
    pixel_space: bool = False

    @abstractmethod
    def substrate(self, x: Tensor) -> Tensor:
        """Args: x: inputs ``[B, C, *spatial]``. Returns: a tensor of the same shape and dtype."""


class Blur(Masker):
    """The paper's blurred substrate: each channel convolved with a Gaussian kernel, zero padding.

    The kernel is the reference's: ``scipy.ndimage.gaussian_filter`` of a centred delta on a
    ``kernel_size``-wide grid (scipy's default ``reflect`` mode and ``truncate=4``), so ``Blur(49, 100)``
    is the PAMI paper's nearly uniform 49x49 box and ``Blur(11, 5)`` is RISE's insertion substrate.
    That kernel is exactly separable, so it runs as one 1-D convolution per spatial axis on the
    input's device (``K`` taps per axis instead of ``K**2``). Borders darken, as in the reference.

    Args:
        kernel_size: odd kernel width in pixels (default 49).
        sigma: standard deviation of the Gaussian in pixels (default 100).

    Example:
        >>> import torch
        >>> from pami_lightning import Blur
        >>> Blur(11, 5).substrate(torch.ones(1, 1, 224, 224))[0, 0, 112, 112].item()
        1.0
    """

    pixel_space = True

    def __init__(self, kernel_size: int = 49, sigma: float = 100.0) -> None:
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd number; got {kernel_size}")
        if sigma <= 0:
            raise ValueError(f"sigma must be > 0; got {sigma}")
        self.kernel_size = int(kernel_size)
        self.sigma = float(sigma)
        delta = np.zeros(self.kernel_size)
        delta[self.kernel_size // 2] = 1.0
        self.kernel_1d = torch.from_numpy(gaussian_filter1d(delta, self.sigma))

    @property
    def kernel(self) -> Tensor:
        """The full 2-D kernel ``[K, K]`` (float64), as the reference builds it."""
        return torch.outer(self.kernel_1d, self.kernel_1d)

    def substrate(self, x: Tensor) -> Tensor:
        spatial = x.shape[2:]
        if not 1 <= len(spatial) <= 3:
            raise ValueError(f"Blur needs inputs [B, C, *spatial] with 1-3 spatial axes; got {list(x.shape)}")
        dtype = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
        y = x.to(dtype).reshape(-1, 1, *spatial)
        k = self.kernel_1d.to(device=x.device, dtype=dtype)
        conv = (F.conv1d, F.conv2d, F.conv3d)[len(spatial) - 1]
        pad = self.kernel_size // 2
        for axis in range(len(spatial)):
            shape = [1] * len(spatial)
            shape[axis] = self.kernel_size
            padding = [0] * len(spatial)
            padding[axis] = pad
            y = conv(y, k.view(1, 1, *shape), padding=tuple(padding))
        return y.reshape(x.shape).to(x.dtype)

    def __repr__(self) -> str:
        return f"Blur(kernel_size={self.kernel_size}, sigma={self.sigma:g})"


class Constant(Masker):
    """A constant substrate: ``Constant(0.0)`` is the paper's black, ``Constant(1.0)`` its white.

    Example:
        >>> import torch
        >>> from pami_lightning import Constant
        >>> Constant(1.0).substrate(torch.zeros(1, 3, 2, 2)).unique().tolist()
        [1.0]
    """

    pixel_space = True

    def __init__(self, value: float = 0.0) -> None:
        self.value = float(value)

    def substrate(self, x: Tensor) -> Tensor:
        return torch.full_like(x, self.value)

    def __repr__(self) -> str:
        return f"Constant({self.value:g})"


class _CallableMasker(Masker):
    def __init__(self, fn: Callable[[Tensor], Tensor]) -> None:
        self.fn = fn

    def substrate(self, x: Tensor) -> Tensor:
        s = self.fn(x)
        if not isinstance(s, Tensor) or s.shape != x.shape:
            got = list(s.shape) if isinstance(s, Tensor) else type(s).__name__
            raise ValueError(f"masker {self.fn!r} must return a substrate shaped like its input {list(x.shape)}; got {got}")
        return s

    def __repr__(self) -> str:
        return f"masker({self.fn!r})"


def as_masker(masker: Masker | Callable[[Tensor], Tensor]) -> Masker:
    """A :class:`Masker` as is; a callable ``x -> substrate`` wrapped into one."""
    if isinstance(masker, Masker):
        return masker
    if callable(masker):
        return _CallableMasker(masker)
    raise TypeError(f"masker must be a Masker (Blur, Constant, ...) or a callable x -> substrate; got {type(masker).__name__}")
