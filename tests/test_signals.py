"""1-D signals [B, C, T] through the one engine: SlidingWindow(spatial_dims=1) with Blur / Constant."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from pami_lightning import PAMI, Blur, Constant, ModelCall, SlidingWindow

T = 120
EVIDENCE = slice(70, 90)


def regressor(x: torch.Tensor) -> torch.Tensor:
    """Known answer (regression, outputs [N]): the mean of channel 0 over EVIDENCE only."""
    return x[:, 0, EVIDENCE].mean(dim=1)


def wiggle_detector(x: torch.Tensor) -> torch.Tensor:
    """Known answer for blurring: high-frequency energy inside EVIDENCE (a blur removes it)."""
    d = x[:, :, EVIDENCE].diff(dim=2)
    return (d * d).sum(dim=(1, 2))


def signals(b: int = 2, seed: int = 0) -> torch.Tensor:
    """[b, 2, T] smooth random signals with a fast oscillation inside EVIDENCE."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(T, dtype=torch.float32)
    x = 0.5 + 0.3 * torch.sin(t / 15 + torch.rand(b, 2, 1, generator=g) * 6)
    x[:, :, EVIDENCE] += 0.4 * torch.sign(torch.sin(t[EVIDENCE] * 2.5))
    return x


@pytest.mark.parametrize(("masker", "model"), [(Constant(0.0), regressor), (Blur(15, 5), wiggle_detector)])
def test_the_evidence_interval_wins(masker, model):
    x = signals()
    heat = PAMI(model, SlidingWindow(radius=5, stride=2, spatial_dims=1), masker, output="identity", batch_size=16).explain(x)
    assert heat.shape == (2, T)
    inside = torch.zeros(T, dtype=torch.bool)
    inside[EVIDENCE] = True
    for b in range(2):
        assert inside[heat[b].argmax()]
        assert heat[b, inside].mean() > 2 * heat[b, ~inside].mean()


def test_blur_substrate_of_a_signal_is_the_reference_gaussian_per_channel():
    from scipy.ndimage import convolve1d

    x = signals(1)
    blur = Blur(15, 5)
    expected = convolve1d(x.double().numpy(), blur.kernel_1d.numpy()[::-1], axis=2, mode="constant")
    torch.testing.assert_close(blur.substrate(x), torch.from_numpy(expected).float(), atol=1e-6, rtol=0)


def test_engine_equals_a_plain_eq1_loop_for_signals():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(2, 4, 5, padding=2), nn.ReLU(), nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(4, 3)).eval()
    with torch.no_grad():
        model[-1].weight.mul_(20)
    x = signals(2, seed=1)
    part, masker = SlidingWindow(radius=8, stride=5, shape="square", spatial_dims=1), Blur(9, 3)
    heat, target = PAMI(model, part, masker, batch_size=7).explain(x, return_target=True)
    for b in range(2):
        masks = part.masks(x[b])
        substrate = masker.substrate(x[b : b + 1])[0]
        with torch.no_grad():
            scores = model(torch.where(masks[:, None], x[b], substrate)).softmax(1)[:, target[b]].double()
        m = masks.double()
        expected = (scores @ m) / m.sum(0)
        torch.testing.assert_close(heat[b], expected.float(), atol=1e-6, rtol=0)


def test_signals_outside_the_unit_range_raise_no_pixel_space_warning():
    x = 10 * signals()  # e.g. millivolts: signals have no pixel space
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # modules=(): the regressor is a plain function, with no module to put in eval mode.
        call = ModelCall(regressor, output="identity", modules=())
        PAMI(call, SlidingWindow(radius=10, stride=10, spatial_dims=1), Constant(0.0)).explain(x)


def test_a_signal_without_its_channel_axis_is_refused():
    with pytest.raises(ValueError, match=r"\[B, C, T\]"):
        PAMI(regressor, SlidingWindow(radius=10, stride=10, spatial_dims=1), Constant(0.0), output="identity").explain(signals()[:, 0])
