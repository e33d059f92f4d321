"""The engine of the insertion / deletion metrics: RISE curves in full forward batches."""

from __future__ import annotations

from typing import Callable, Literal, Sequence, Union

import torch
from torch import Tensor

from .._modes import eval_mode, grad_free
from ..maskers import Masker
from ..scores import OutputSpec, as_target, check_scores, check_target, resolve_output, top1
from ._utils import check_heatmaps, resize_maps

__all__ = ["TargetLike", "causal_curves"]

TargetLike = Union[int, Sequence[int], Tensor, None]

_INT_VIEW = {2: torch.int16, 4: torch.int32, 8: torch.int64}  # same-width integer view of each float dtype


def _thresholds(hw: int, step: int, n_steps: int | None) -> Tensor:
    """Pixels taken from ``finish`` at each of the curve's points ``[n + 1]``."""
    if n_steps is None:
        n = -(-hw // step)
        return (torch.arange(n + 1) * step).clamp(max=hw)
    return (torch.arange(n_steps + 1) * hw + n_steps - 1) // n_steps  # ceil(i * HW / n_steps)


def causal_curves(
    kind: Literal["insertion", "deletion"],
    model: Callable[[Tensor], Tensor],
    images: Tensor,
    heatmaps: Tensor,
    target: TargetLike,
    step: int,
    n_steps: int | None,
    substrate: Masker,
    preprocess: Callable[[Tensor], Tensor] | None,
    output: OutputSpec,
    batch_size: int,
) -> Tensor:
    """RISE curves ``[B, n + 1]`` (float32), every point of every image in full forward batches."""
    if not isinstance(images, Tensor) or images.ndim != 4 or not images.is_floating_point():
        got = f"{images.dtype} {list(images.shape)}" if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"images must be floating-point [B, C, H, W] (pixel space, before preprocess); got {got}")
    check_heatmaps(heatmaps)
    b, c, h, w = images.shape
    if heatmaps.shape[0] != b:
        raise ValueError(f"images and heatmaps must hold the same number of samples; got {b} and {heatmaps.shape[0]}")
    score_fn = resolve_output(output)
    given = None if target is None else as_target(target, b, images.device, noun="image")
    thresholds = _thresholds(h * w, step, n_steps).to(images.device)
    points = thresholds.numel()
    maps = resize_maps(heatmaps.to(images.device), (h, w)).reshape(b, -1)
    # Rank of each pixel in decreasing saliency (stable: ties keep row-major order).
    order = maps.sort(dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(h * w, device=images.device).expand(b, -1))

    def forward(x: Tensor) -> Tensor:
        return model(preprocess(x) if preprocess is not None else x)

    total = b * points
    if total == 0:
        return torch.zeros(0, points, device=images.device)
    with grad_free(), eval_mode(model):
        blurred = substrate.substrate(images)
        start, finish = (blurred, images) if kind == "insertion" else (images, blurred)
        if given is None:  # RISE: the clean image's top-1 class (on copies: a model may edit its input in place)
            targets = torch.cat([top1(forward(images[i : i + batch_size].clone())) for i in range(0, b, batch_size)])
        else:
            targets = given
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
            outputs = forward(buffer[: hi - lo])
            if lo == 0 and given is not None:
                check_target(score_fn, outputs, given.cpu())
            scores = score_fn(outputs, targets[lo:hi])
            check_scores(scores, hi - lo, "image")
            curves[lo:hi] = scores
    # A clone made outside inference mode is an ordinary tensor (usable in metric states).
    curves = curves.view(b, points).clone()
    if not bool(torch.isfinite(curves).all()):
        raise ValueError("the model's scores were NaN or inf on some insertion/deletion steps; check the model and preprocess")
    return curves
