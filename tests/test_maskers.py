"""Maskers: the blurred substrate is the reference's dense 2-D Gaussian convolution; constants and callables."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

from pami_lightning import PAMI, Blur, Constant, SlidingWindow
from pami_lightning.maskers import as_masker

from helpers.images import random_images


def dense_reference_blur(x: torch.Tensor, kernel_size: int, sigma: float) -> torch.Tensor:
    """The reference code's substrate: each channel convolved with the 2-D kernel that scipy's
    gaussian_filter makes of a centred delta, zero padding, one dense conv2d (float64)."""
    delta = np.zeros((kernel_size, kernel_size))
    delta[kernel_size // 2, kernel_size // 2] = 1.0
    kernel = torch.from_numpy(gaussian_filter(delta, sigma))
    c = x.shape[1]
    weight = kernel.expand(c, 1, kernel_size, kernel_size)
    return F.conv2d(x.double(), weight, padding=kernel_size // 2, groups=c)


@pytest.mark.parametrize("kernel_size, sigma", [(49, 100.0), (11, 5.0)])
def test_blur_equals_dense_2d_gaussian_conv_with_zero_padding(kernel_size, sigma):
    x = random_images(2, 64, seed=1)
    got = Blur(kernel_size, sigma).substrate(x)
    want = dense_reference_blur(x, kernel_size, sigma)
    assert got.shape == x.shape and got.dtype == x.dtype
    torch.testing.assert_close(got.double(), want, atol=1e-6, rtol=0)
    # Zero padding: the border of a uniform image darkens; the centre keeps its value.
    ones = Blur(kernel_size, sigma).substrate(torch.ones(1, 1, 64, 64))
    assert ones[0, 0, 0, 0] < 0.6 and abs(ones[0, 0, 32, 32].item() - 1) < 1e-6


def test_blur_kernel_is_the_scipy_2d_kernel():
    delta = np.zeros((49, 49))
    delta[24, 24] = 1.0
    torch.testing.assert_close(Blur(49, 100).kernel, torch.from_numpy(gaussian_filter(delta, 100.0)), atol=1e-12, rtol=0)


def test_blur_rejects_bad_arguments():
    with pytest.raises(ValueError, match="positive odd"):
        Blur(kernel_size=10)
    with pytest.raises(ValueError, match="sigma must be > 0"):
        Blur(sigma=0)


@pytest.mark.parametrize("value", [0.0, 1.0])
def test_constant_substrate(value):
    x = random_images(1, 8)
    s = Constant(value).substrate(x)
    assert s.shape == x.shape and torch.all(s == value)


def test_callable_masker_must_keep_the_shape():
    masker = as_masker(lambda x: x[:, :1])
    with pytest.raises(ValueError, match="substrate shaped like its input"):
        masker.substrate(torch.rand(1, 3, 8, 8))
    with pytest.raises(TypeError, match="masker must be"):
        as_masker(3)


def test_callable_masker_gives_the_same_map_as_the_equivalent_masker(cnn):
    x = random_images(2, 24, seed=2)
    part = SlidingWindow(radius=5, stride=4)
    by_class = PAMI(cnn, part, masker=Constant(0.0)).explain(x)
    by_callable = PAMI(cnn, part, masker=lambda t: torch.zeros_like(t)).explain(x)
    torch.testing.assert_close(by_callable, by_class, atol=1e-7, rtol=0)
    # ... and the substrate matters: white gives another map.
    white = PAMI(cnn, part, masker=Constant(1.0)).explain(x)
    assert (white - by_class).abs().max() > 1e-3
