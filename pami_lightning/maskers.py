"""Maskers: what fills the removed part of a majority-masked input.

A masker turns a batch of inputs ``[B, C, *spatial]`` into a *substrate* of the same shape; the
engine then keeps the preserved part of the input and takes everything else from the substrate:
``x_j = where(m_j, x, substrate(x))``. Image maskers work in pixel space (inputs in ``[0, 1]``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["Masker", "Blur", "Constant", "TokenMask", "AttentionMask", "as_masker"]


class Masker(ABC):
    """Base class: ``substrate(x)`` returns what replaces the masked part of each input."""

    #: True when the masker fills float images or signals ``[B, C, *spatial]`` (pixel space ``[0, 1]``
    #: for images: the engine warns otherwise).
    pixel_space: bool = False
    #: True when the masker fills token sequences ``[B, L]`` (a tensor of ids or a dict).
    for_tokens: bool = False

    # Any: the engine passes whatever inputs it explains (a tensor, or a dict for token maskers);
    # check_input rejects the kinds a masker cannot fill, and image maskers narrow to Tensor.
    @abstractmethod
    def substrate(self, x: Any) -> Any:
        """Args: x: inputs ``[B, C, *spatial]``. Returns: a tensor of the same shape and dtype."""

    def check_input(self, inputs: Any) -> None:  # noqa: B027 (an optional hook: the default accepts everything)
        """Raise a ValueError naming the fix when the masker cannot fill ``inputs`` (default: accept)."""


class Blur(Masker):
    """The paper's blurred substrate: each channel convolved with a Gaussian kernel, zero padding.

    The kernel is the reference's: ``scipy.ndimage.gaussian_filter`` of a centred delta on a
    ``kernel_size``-wide grid (scipy's default ``reflect`` mode and ``truncate=4``), so ``Blur(49, 100)``
    is the PAMI paper's nearly uniform 49x49 box and ``Blur(11, 5)`` is RISE's insertion substrate.
    That kernel is exactly separable, so it runs as one 1-D convolution per spatial axis on the
    input's device (by FFT, zero-padded: equal to the direct convolution up to float rounding,
    ~1e-7). Borders darken, as in the reference.

    Args:
        kernel_size: odd kernel width in pixels (default 49).
        sigma: standard deviation of the Gaussian in pixels (default 100).

    Example:
        >>> import torch
        >>> from pami_lightning import Blur
        >>> round(Blur(11, 5).substrate(torch.ones(1, 1, 224, 224))[0, 0, 112, 112].item(), 6)
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
        from scipy.ndimage import gaussian_filter1d  # here: scipy costs a quarter second to import

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
        y = x.to(dtype)
        k, pad = self.kernel_1d.to(device=x.device, dtype=dtype), self.kernel_size // 2
        for axis in range(2, x.ndim):
            # A zero-padded linear convolution by FFT (length n + K - 1: no wrap-around): n log n per
            # row instead of n K, which on the CPU is 3x faster at 224 px and more on large images.
            n = y.shape[axis]
            length = n + self.kernel_size - 1
            spectrum = torch.fft.rfft(y, n=length, dim=axis) * _along(torch.fft.rfft(k, n=length), axis, y.ndim)
            y = torch.fft.irfft(spectrum, n=length, dim=axis).narrow(axis, pad, n)
        return y.contiguous().to(x.dtype)

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

    def substrate(self, x: Any) -> Any:
        s = self.fn(x)
        if isinstance(x, Mapping):
            # Dict inputs (token sequences): the same keys, each shaped like the input's.
            if not isinstance(s, Mapping) or any(k not in s or s[k].shape != v.shape for k, v in x.items()):
                raise ValueError(f"masker {self.fn!r} must return a dict with the input's keys {sorted(x)}, each shaped like the input's")
            return s
        if not isinstance(s, Tensor) or s.shape != x.shape:
            got = list(s.shape) if isinstance(s, Tensor) else type(s).__name__
            raise ValueError(f"masker {self.fn!r} must return a substrate shaped like its input {list(x.shape)}; got {got}")
        return s

    def __repr__(self) -> str:
        return f"masker({self.fn!r})"


class TokenMask(Masker):
    """Removed tokens become ``mask_id`` (a ``[MASK]``, ``<unk>`` or pad id); the attention mask is kept.

    Works on token ids ``[B, L]`` or on the ``"input_ids"`` of a dict input. Padding and special
    tokens are kept by the token partitions, so only real tokens are ever replaced.

    Args:
        mask_id: the id that replaces removed tokens.

    Example:
        >>> import torch
        >>> from pami_lightning import TokenMask
        >>> TokenMask(mask_id=0).substrate(torch.tensor([[5, 6, 7]])).tolist()
        [[0, 0, 0]]
    """

    for_tokens = True

    def __init__(self, mask_id: int) -> None:
        self.mask_id = int(mask_id)

    def substrate(self, x: Any) -> Any:
        if isinstance(x, Mapping):
            return {**x, "input_ids": torch.full_like(x["input_ids"], self.mask_id)}
        return torch.full_like(x, self.mask_id)

    def __repr__(self) -> str:
        return f"TokenMask(mask_id={self.mask_id})"


class AttentionMask(Masker):
    """Removed tokens get ``attention_mask = 0``; ``input_ids`` stay as they are.

    The model must honour its attention mask (most transformers, or a pooling that ignores
    unattended tokens): it then sees the kept tokens alone, with no mask token it never trained on.
    Inputs must be a dict with an ``"attention_mask"`` ``[B, L]``.

    Example:
        >>> import torch
        >>> from pami_lightning import AttentionMask
        >>> batch = {"input_ids": torch.tensor([[5, 6]]), "attention_mask": torch.ones(1, 2, dtype=torch.long)}
        >>> AttentionMask().substrate(batch)["attention_mask"].tolist()
        [[0, 0]]
    """

    for_tokens = True

    def substrate(self, x: Any) -> Any:
        return {**x, "attention_mask": torch.zeros_like(x["attention_mask"])}

    def check_input(self, inputs: Any) -> None:
        if not isinstance(inputs, Mapping) or "attention_mask" not in inputs:
            raise ValueError(
                'AttentionMask() zeroes the attention mask of removed tokens, so inputs must be a dict with "input_ids" '
                'and "attention_mask" [B, L] (e.g. a tokenizer\'s output); for bare token ids use TokenMask(mask_id)'
            )

    def __repr__(self) -> str:
        return "AttentionMask()"


def _along(v: Tensor, axis: int, ndim: int) -> Tensor:
    """A 1-D tensor shaped to broadcast along ``axis`` of an ``ndim``-D tensor."""
    shape = [1] * ndim
    shape[axis] = -1
    return v.view(shape)


def as_masker(masker: Masker | Callable[[Tensor], Tensor]) -> Masker:
    """A :class:`Masker` as is; a callable ``x -> substrate`` wrapped into one."""
    if isinstance(masker, Masker):
        return masker
    if callable(masker):
        return _CallableMasker(masker)
    raise TypeError(f"masker must be a Masker (Blur, Constant, ...) or a callable x -> substrate; got {type(masker).__name__}")
