"""The engine of the insertion / deletion metrics: RISE curves in full forward batches, no input run twice.

Every input the model sees is one row of a flat list, walked in full batches of ``call.batch_size``:

1. with ``target=None``, the clean images first: each is a curve's clean point (insertion's last,
   deletion's first) *and* gives the image's top-1 class, the target of its other points -- no
   separate top-1 pass, and the clean image is not run again as a step image. With ``clean=``
   (the caller's own clean pass) the clean point is taken from it and not run at all;
2. the other points, image by image;
3. when the substrate is the same image for the whole batch (``Constant``), the all-substrate
   point (insertion's first, deletion's last) once, as the last row: its outputs are scored for
   every image's target.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal, Union

import torch
from torch import Tensor

from ..forward import Clean, ModelCall
from ..maskers import Masker
from ..scores import OutputSpec, as_target, top1
from ._utils import check_heatmaps, resize_maps

__all__ = ["TargetLike", "causal_curves", "model_call"]

TargetLike = Union[int, Sequence[int], Tensor, None]

_INT_VIEW = {2: torch.int16, 4: torch.int32, 8: torch.int64}  # same-width integer view of each float dtype

#: Points per image below which a batch's step images are built in one vectorised pass (many short
#: runs of images per batch), above which image by image (few long runs, no gathered copies).
_RUN_MIN = 12

#: On a CPU, images of at least this many values are built row by row within a run: a copy of the
#: previous step image and the pixels of one step (memory-bound: ~40% less traffic at 224 px).
_INCREMENTAL_MIN = 2**15


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


def _levels(maps: Tensor, thresholds: Tensor) -> tuple[Tensor, Tensor]:
    """The pixels in decreasing saliency ``[B, HW]`` (int64), and per pixel the first point that takes it from ``finish`` (int32).

    Pixels are ranked by decreasing saliency (a stable sort: ties keep row-major order); point ``p``
    takes the pixels of rank ``< thresholds[p]``, i.e. those whose level is ``<= p``.
    """
    b, hw = maps.shape
    order = maps.sort(dim=1, descending=True, stable=True).indices
    by_rank = torch.searchsorted(thresholds.to(maps.device), torch.arange(hw, device=maps.device), right=True).to(torch.int32)
    return order, torch.empty(b, hw, dtype=torch.int32, device=maps.device).scatter_(1, order, by_rank.expand(b, -1))


def _check_clean(clean: Clean, b: int, given: Tensor | None, device: torch.device) -> tuple[Tensor, Tensor]:
    """``(target, score)`` of a caller's clean pass over these images."""
    target, score = getattr(clean, "target", None), getattr(clean, "score", None)
    if not isinstance(target, Tensor) or not isinstance(score, Tensor) or target.shape != (b,) or score.shape != (b,):
        raise ValueError(f"clean must be the ModelCall.clean(images) result of these {b} images (target and score [{b}])")
    target = target.to(device).long()
    if given is not None and not torch.equal(given, target):
        raise ValueError("target and clean.target differ: pass the clean pass of the same targets (or only clean=)")
    return target, score.to(device).float()


def _score_shared(call: ModelCall, outputs: Any, row: int, targets: Tensor, scored: Tensor, scored_target: Tensor) -> Tensor:
    """Scores ``[B]`` of the shared image, row ``row`` of ``outputs``, for every image's target.

    Tensor outputs: the row repeated for each target, in one score call. Other output structures
    cannot be sliced in general: the row was scored for ``scored_target`` with its batch
    (``scored``); NaN for the other images, whose classes share one more forward of the shared image.
    """
    if isinstance(outputs, Tensor):
        one = outputs[row : row + 1]
        return call.score(one.expand(targets.shape[0], *one.shape[1:]), targets, noun="image")
    return torch.where(targets == scored_target, scored, torch.nan)


def causal_curves(
    kind: Literal["insertion", "deletion"],
    call: ModelCall,
    images: Tensor,
    heatmaps: Tensor,
    target: TargetLike,
    step: int,
    n_steps: int | None,
    substrate: Masker,
    clean: Clean | None = None,
) -> Tensor:
    """RISE curves ``[B, n + 1]`` (float32): every input once, in full batches of ``call.batch_size``."""
    if not isinstance(images, Tensor) or images.ndim != 4 or not images.is_floating_point():
        got = f"{images.dtype} {list(images.shape)}" if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"images must be floating-point [B, C, H, W] (pixel space, before preprocess); got {got}")
    check_heatmaps(heatmaps)
    b, c, h, w = images.shape
    if heatmaps.shape[0] != b:
        raise ValueError(f"images and heatmaps must hold the same number of samples; got {b} and {heatmaps.shape[0]}")
    device = images.device
    given = None if target is None else as_target(target, b, device, noun="image")
    known = None if clean is None else _check_clean(clean, b, given, device)
    thresholds = _thresholds(h * w, step, n_steps)
    points = thresholds.numel()
    if b == 0:
        return torch.zeros(0, points, device=device)
    order, level = _levels(resize_maps(heatmaps.to(device), (h, w)).reshape(b, -1), thresholds)
    clean_point, substrate_point = (points - 1, 0) if kind == "insertion" else (0, points - 1)

    with call.running():
        blurred = substrate.substrate(images)
        start, finish = (blurred, images) if kind == "insertion" else (images, blurred)
        shared = b > 1 and torch.equal(blurred, blurred[:1].expand_as(blurred))
        curves = torch.empty(b, points, dtype=torch.float32, device=device)
        if known is not None:
            targets = known[0]
            curves[:, clean_point] = known[1]
        else:
            targets = given if given is not None else torch.zeros(b, dtype=torch.long, device=device)
        # The rows: (image, point) per input the model sees, in the order above.
        head = b if known is None and given is None else 0
        skip = {clean_point} if known is not None or head else set()
        if shared:
            skip.add(substrate_point)
        kept = torch.tensor([p for p in range(points) if p not in skip], dtype=level.dtype)
        per_image = kept.numel()
        images_of = [torch.arange(b).repeat_interleave(per_image)]
        points_of = [kept.repeat(b)]
        if head:
            images_of.insert(0, torch.arange(b))
            points_of.insert(0, torch.full((b,), clean_point, dtype=level.dtype))
        if shared:
            images_of.append(torch.tensor([b - 1]))
            points_of.append(torch.tensor([substrate_point], dtype=level.dtype))
        row_image, row_point = torch.cat(images_of).to(device), torch.cat(points_of).to(device)
        total, middle = row_image.numel(), head + b * per_image  # rows [head, middle): image by image
        values = torch.empty(total, dtype=torch.float32, device=device)
        buffer = torch.empty(min(call.batch_size, total), c, h, w, dtype=images.dtype, device=device)
        ints = _INT_VIEW[images.element_size()]
        mask = torch.empty(buffer.shape[0], h * w, dtype=ints, device=device)
        # where(level <= p, finish, start) as bit operations on the floats' integer views: exact
        # copies, and vectorised on CPU, where torch.where with broadcasting is ~5x slower. The
        # mask is all ones where the row takes finish: (p < level) - 1, in one preallocated buffer.
        start_bits, buffer_bits = start.view(ints), buffer.view(ints)
        flip = start_bits ^ finish.view(ints)  # the bits where finish differs from start
        check = given.cpu() if given is not None else None  # class range, once, on the first outputs

        def blend(lo: int, r0: int, r1: int) -> None:
            """Rows ``[r0, r1)`` into the buffer (which holds rows from ``lo``), all in one pass."""
            if r0 >= r1:
                return
            image, point = row_image[r0:r1], row_point[r0:r1]
            take = torch.lt(point[:, None], level.index_select(0, image), out=mask[: r1 - r0]).sub_(1)
            out = buffer_bits[r0 - lo : r1 - lo]
            torch.bitwise_and(flip.index_select(0, image), take.view(-1, 1, h, w), out=out)
            out.bitwise_xor_(start_bits.index_select(0, image))

        incremental = device.type == "cpu" and c * h * w >= _INCREMENTAL_MIN
        kept_points, pixels = kept.tolist(), thresholds.tolist()

        def step_rows(run: Tensor, i: int, first: int) -> None:
            """Rows 1.. of ``run`` [r, C, HW] (image ``i``, kept points from ``first``): the previous row plus one step's pixels."""
            fin = finish[i].view(c, h * w)
            for j in range(1, run.shape[0]):
                a, z = pixels[kept_points[first + j - 1]], pixels[kept_points[first + j]]
                run[j].copy_(run[j - 1])
                if z > a:
                    idx = order[i, a:z]  # the pixels of ranks [a, z): taken from finish at this point
                    run[j].index_copy_(1, idx, fin.index_select(1, idx))

        for lo in range(0, total, call.batch_size):
            hi = min(lo + call.batch_size, total)
            m0, m1 = max(lo, head), min(hi, middle)
            if per_image < _RUN_MIN or m0 >= m1:  # many images per batch: every row in one pass
                blend(lo, lo, hi)
            else:  # a few long runs of one image's points; no gathered copies
                blend(lo, lo, m0)
                for i in range((m0 - head) // per_image, (m1 - 1 - head) // per_image + 1):
                    k0, k1 = max(m0, head + i * per_image), min(m1, head + (i + 1) * per_image)
                    if incremental:  # the run's first row, then each from the one before
                        blend(lo, k0, k0 + 1)
                        step_rows(buffer[k0 - lo : k1 - lo].view(k1 - k0, c, h * w), i, k0 - head - i * per_image)
                        continue
                    take = torch.lt(row_point[k0:k1, None], level[i], out=mask[: k1 - k0]).sub_(1)
                    run = buffer_bits[k0 - lo : k1 - lo]
                    torch.bitwise_and(flip[i], take.view(-1, 1, h, w), out=run)
                    run.bitwise_xor_(start_bits[i])
                blend(lo, m1, hi)
            outputs = call(buffer[: hi - lo])  # our buffer (rebuilt for every batch): an in-place preprocess may edit it
            if lo == 0:
                call.check_outputs(outputs, check)
            if lo < head:  # RISE: the clean image's top-1 class is the target of its curve
                targets[lo : min(hi, head)] = top1(outputs[: min(hi, head) - lo])
            values[lo:hi] = call.score(outputs, targets[row_image[lo:hi]], noun="image")
            if shared and hi == total:
                curves[:, substrate_point] = _score_shared(call, outputs, hi - lo - 1, targets, values[-1], targets[b - 1])
        curves.view(-1)[row_image[:middle] * points + row_point[:middle].long()] = values[:middle]
        if shared and not isinstance(outputs, Tensor):
            missing = curves[:, substrate_point].isnan()
            if bool(missing.any()):  # classes other than the one scored with its batch: one more forward for them all
                one = call(blurred[:1].clone())
                for t in targets[missing].unique():
                    curves[(targets == t) & missing, substrate_point] = call.score(one, t.view(1), noun="image")
    # A clone made outside inference mode is an ordinary tensor (usable in metric states).
    curves = curves.clone()
    if not bool(torch.isfinite(curves).all()):
        raise ValueError("the model's scores were NaN or inf on some insertion/deletion steps; check the model, preprocess and autocast_dtype")
    return curves
