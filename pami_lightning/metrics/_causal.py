"""The engine of the insertion / deletion metrics: RISE curves in full forward batches."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal, Union

import torch
from torch import Tensor

from ..forward import ModelCall
from ..maskers import Masker
from ..scores import OutputSpec, as_target
from ._utils import check_heatmaps, resize_maps

__all__ = ["TargetLike", "causal_curves", "model_call"]

TargetLike = Union[int, Sequence[int], Tensor, None]

_INT_VIEW = {2: torch.int16, 4: torch.int32, 8: torch.int64}  # same-width integer view of each float dtype


def model_call(
    model: Callable[..., Any] | ModelCall,
    *,
    forward: Callable[..., Any] | None = None,
    preprocess: Callable[[Any], Any] | None = None,
    output: OutputSpec = "softmax",
    autocast_dtype: torch.dtype | None = None,
    batch_size: int = 64,
) -> ModelCall:
    """The :class:`~pami_lightning.ModelCall` of a causal metric: ``model`` itself, or one built from the settings.

    As in :class:`~pami_lightning.PAMI`: a ready ``ModelCall`` carries its own ``forward`` /
    ``preprocess`` / ``output`` / ``autocast_dtype``; only a ``batch_size`` other than the default
    64 overrides its own.
    """
    if isinstance(model, ModelCall):
        if forward is not None or preprocess is not None or output != "softmax" or autocast_dtype is not None:
            raise ValueError("model is a ModelCall: set forward / preprocess / output / autocast_dtype on it, not on the metric")
        return model if batch_size == 64 else model.replace(batch_size=batch_size)
    return ModelCall(model, forward=forward, preprocess=preprocess, output=output, autocast_dtype=autocast_dtype, batch_size=batch_size)


def _thresholds(hw: int, step: int, n_steps: int | None) -> Tensor:
    """Pixels taken from ``finish`` at each of the curve's points ``[n + 1]``."""
    if n_steps is None:
        n = -(-hw // step)
        return (torch.arange(n + 1) * step).clamp(max=hw)
    return (torch.arange(n_steps + 1) * hw + n_steps - 1) // n_steps  # ceil(i * HW / n_steps)


def causal_curves(
    kind: Literal["insertion", "deletion"],
    call: ModelCall,
    images: Tensor,
    heatmaps: Tensor,
    target: TargetLike,
    step: int,
    n_steps: int | None,
    substrate: Masker,
) -> Tensor:
    """RISE curves ``[B, n + 1]`` (float32), every point of every image in full batches of ``call.batch_size``."""
    if not isinstance(images, Tensor) or images.ndim != 4 or not images.is_floating_point():
        got = f"{images.dtype} {list(images.shape)}" if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"images must be floating-point [B, C, H, W] (pixel space, before preprocess); got {got}")
    check_heatmaps(heatmaps)
    b, c, h, w = images.shape
    if heatmaps.shape[0] != b:
        raise ValueError(f"images and heatmaps must hold the same number of samples; got {b} and {heatmaps.shape[0]}")
    given = None if target is None else as_target(target, b, images.device, noun="image")
    thresholds = _thresholds(h * w, step, n_steps).to(images.device)
    points = thresholds.numel()
    maps = resize_maps(heatmaps.to(images.device), (h, w)).reshape(b, -1)
    # Rank of each pixel in decreasing saliency (stable: ties keep row-major order).
    order = maps.sort(dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(h * w, device=images.device).expand(b, -1))

    total, batch_size = b * points, call.batch_size
    if total == 0:
        return torch.zeros(0, points, device=images.device)
    with call.running():
        blurred = substrate.substrate(images)
        start, finish = (blurred, images) if kind == "insertion" else (images, blurred)
        # RISE: the clean image's top-1 class (on copies: a model may edit its input in place).
        targets = given if given is not None else call.clean(images).pred
        targets = targets.repeat_interleave(points)  # one per step image, in the flat order
        curves = torch.empty(total, dtype=torch.float32, device=images.device)
        buffer = torch.empty(min(batch_size, total), c, h, w, dtype=images.dtype, device=images.device)
        # where(rank < t, finish, start) as bit operations on the floats' integer views: exact
        # copies, and vectorised on CPU, where torch.where with broadcasting is ~5x slower.
        ints = _INT_VIEW[images.element_size()]
        start_bits, buffer_bits = start.view(ints), buffer.view(ints)
        flip = start_bits ^ finish.view(ints)  # the bits where finish differs from start
        for lo in range(0, total, batch_size):
            hi = min(lo + batch_size, total)
            k = lo
            while k < hi:  # one pass per run of points that belong to the same image
                i, first = divmod(k, points)
                end = min(hi, (i + 1) * points)
                take = (rank[i] < thresholds[first : first + end - k, None]).to(ints).neg_()  # all ones: finish
                out = buffer_bits[k - lo : end - lo]
                torch.bitwise_and(flip[i], take.view(-1, 1, h, w), out=out)
                out.bitwise_xor_(start_bits[i])
                k = end
            outputs = call(buffer[: hi - lo])
            if lo == 0:
                call.check_outputs(outputs, None if given is None else given.cpu())
            curves[lo:hi] = call.score(outputs, targets[lo:hi], noun="image")
    # A clone made outside inference mode is an ordinary tensor (usable in metric states).
    curves = curves.view(b, points).clone()
    if not bool(torch.isfinite(curves).all()):
        raise ValueError("the model's scores were NaN or inf on some insertion/deletion steps; check the model, preprocess and autocast_dtype")
    return curves
