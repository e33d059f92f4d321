"""Functional interpretation metrics: pointing game, energy pointing game, insertion and deletion.

Each stateful metric in :mod:`pami_lightning.metrics` is a thin accumulator over these functions.
Semantics follow the reference implementations (TorchRay's pointing game, RISE's causal metrics);
every deviation is an explicit, documented option.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Literal, Union

import torch
from torch import Tensor

from ..forward import ModelCall
from ..maskers import Blur, Constant, Masker, as_masker
from ..scores import OutputSpec
from ._causal import TargetLike, causal_curves, model_call
from ._utils import check_heatmaps, resize_maps

__all__ = [
    "boxes_to_mask",
    "pointing_game",
    "energy_pointing_game",
    "insertion_curves",
    "deletion_curves",
    "curve_auc",
    "insertion",
    "deletion",
]

Average = Literal["macro", "micro", "none"]
MasksLike = Union[Tensor, Sequence[Tensor]]
SubstrateLike = Union[Masker, Callable[[Tensor], Tensor], None]
ModelLike = Union[Callable[..., Any], ModelCall]


# ---------------------------------------------------------------------------------------- boxes


def boxes_to_mask(
    boxes: Tensor | Sequence[Sequence[float]],
    size: tuple[int, int],
    format: Literal["xyxy", "xywh"] = "xyxy",
    one_based: bool = False,
) -> Tensor:
    """The union of ``boxes`` as a boolean mask ``[H, W]``.

    A pixel ``(y, x)`` is inside a box when its centre ``(y + 0.5, x + 0.5)`` lies in the half-open
    box ``[x1, x2) x [y1, y2)``; for integer coordinates that is exactly ``mask[y1:y2, x1:x2]``.
    Boxes are clipped to the image.

    Args:
        boxes: ``[N, 4]`` (or one box ``[4]``) as ``(x1, y1, x2, y2)`` for ``format="xyxy"`` or
            ``(x, y, width, height)`` for ``"xywh"`` — x (column) first, as in VOC, COCO and
            ImageNet annotations.
        size: ``(H, W)`` of the mask.
        format: ``"xyxy"`` (default) or ``"xywh"``.
        one_based: VOC / ImageNet-XML convention: 1-based coordinates with an inclusive end, so
            ``(xmin, ymin, xmax, ymax)`` covers ``mask[ymin - 1:ymax, xmin - 1:xmax]``.

    Returns:
        bool mask ``[H, W]`` on the boxes' device (all False for no boxes).

    Example:
        >>> from pami_lightning.metrics import boxes_to_mask
        >>> boxes_to_mask([[2, 1, 3, 2]], (3, 4), one_based=True).int()
        tensor([[0, 1, 1, 0],
                [0, 1, 1, 0],
                [0, 0, 0, 0]], dtype=torch.int32)
    """
    b = torch.as_tensor(boxes, dtype=torch.float64)
    if b.ndim == 1 and b.numel() == 4:
        b = b[None]
    if b.numel() == 0:
        b = b.reshape(0, 4)
    if b.ndim != 2 or b.shape[1] != 4:
        raise ValueError(f"boxes must be [N, 4] (or one box [4]); got {list(b.shape)}")
    if format not in ("xyxy", "xywh"):
        raise ValueError(f'format must be "xyxy" or "xywh"; got "{format}"')
    if not torch.isfinite(b).all():
        raise ValueError("boxes hold NaN or inf coordinates")
    x1, y1, a, c = b.unbind(1)
    if one_based:  # 1-based inclusive end == 0-based exclusive end: only the start moves
        x1, y1 = x1 - 1, y1 - 1
    x2, y2 = (x1 + a, y1 + c) if format == "xywh" else (a, c)
    if bool((x2 < x1).any() or (y2 < y1).any()):
        i = int(((x2 < x1) | (y2 < y1)).nonzero()[0])
        raise ValueError(
            f"box {i} {b[i].tolist()} ends before it starts: check format ({format!r}: "
            f"{'(x, y, w, h)' if format == 'xywh' else '(x1, y1, x2, y2)'}) and that x (column) comes before y (row)"
        )
    h, w = size
    ys = torch.arange(h, dtype=torch.float64, device=b.device) + 0.5
    xs = torch.arange(w, dtype=torch.float64, device=b.device) + 0.5
    in_y = (ys >= y1[:, None]) & (ys < y2[:, None])  # [N, H]
    in_x = (xs >= x1[:, None]) & (xs < x2[:, None])  # [N, W]
    # Union over boxes without an [N, H, W] intermediate: count of boxes covering each pixel.
    return (in_y.T.float() @ in_x.float()) > 0


# ---------------------------------------------------------------------------------------- checks


def _mask_groups(heatmaps: Tensor, masks: MasksLike) -> list[tuple[Tensor, Tensor]]:
    """Validate ``masks`` and split them into groups of one size: ``(maps [b, h, w], masks [b, H, W])``."""
    check_heatmaps(heatmaps)
    if isinstance(masks, Tensor):
        if masks.ndim != 3:
            raise ValueError(f"masks must be [B, H, W] (or a list of B [H, W] masks); got {list(masks.shape)}")
        groups = [(heatmaps, masks)]
    else:
        masks = list(masks)
        if any(not isinstance(m, Tensor) or m.ndim != 2 for m in masks):
            raise ValueError("a list of masks must hold B tensors [H, W]")
        groups = [(heatmaps[i : i + 1], m[None]) for i, m in enumerate(masks)]
    n = len(masks)
    if heatmaps.shape[0] != n:
        raise ValueError(f"heatmaps and masks must hold the same number of samples; got {heatmaps.shape[0]} and {n}")
    for _, m in groups:
        if m.dtype != torch.bool:
            raise ValueError(f"masks must be bool; got {m.dtype} — pass masks.bool() (or masks > 0), or build them with boxes_to_mask")
    return groups


def _check_labels(labels: Tensor | None, n: int, num_classes: int | None, device: torch.device) -> Tensor:
    """Class index per sample (all 0 when scoring without classes)."""
    if num_classes is None:
        if labels is not None:
            raise ValueError("labels were given but num_classes is None: pass num_classes=K for per-class scores, or drop labels")
        return torch.zeros(n, dtype=torch.long, device=device)
    if labels is None:
        raise ValueError(f"num_classes={num_classes} scores each class, so update() needs labels [B] (the class of each sample)")
    labels = torch.as_tensor(labels, device=device)
    if labels.shape != (n,) or labels.is_floating_point() or labels.dtype == torch.bool:
        raise ValueError(f"labels must be integer class indices [{n}]; got {labels.dtype} {list(labels.shape)}")
    bad = labels[(labels < 0) | (labels >= num_classes)]
    if bad.numel():
        raise ValueError(f"labels must lie in [0, {num_classes - 1}] for num_classes={num_classes}; got {bad.unique().tolist()}")
    return labels.long()


# ---------------------------------------------------------------------------------------- pointing game


def _within(d2: Tensor, tolerance: float) -> Tensor:
    """Squared distances that count as a hit (tolerance 0: the point itself)."""
    return d2 < tolerance**2 if tolerance > 0 else d2 == 0


def _pointing_hits(maps: Tensor, masks: Tensor, tolerance: float) -> tuple[Tensor, Tensor]:
    """Per sample: ``(hit, counted)``, bool ``[B]``; maps already at the masks' size."""
    b, (h, w) = masks.shape[0], masks.shape[1:]
    flat = masks.reshape(b, -1)
    point = maps.reshape(b, -1).argmax(dim=1)  # the first maximum in row-major order
    py, px = point // w, point % w
    r = min(math.ceil(tolerance), max(h, w))
    if (2 * r + 1) ** 2 <= h * w:
        # Only mask pixels within the tolerance disc can make a hit: test those offsets alone.
        d = torch.arange(-r, r + 1, device=masks.device)
        dy, dx = torch.meshgrid(d, d, indexing="ij")
        near = _within(dy * dy + dx * dx, tolerance)
        ys, xs = py[:, None] + dy[near], px[:, None] + dx[near]
        inside = (ys >= 0) & (ys < h) & (xs >= 0) & (xs < w)
        hit = (flat.gather(1, ys.clamp(0, h - 1) * w + xs.clamp(0, w - 1)) & inside).any(dim=1)
    else:
        # The disc holds more offsets than the mask has pixels: measure every pixel, sample by sample.
        ys, xs = torch.arange(h, device=masks.device)[:, None], torch.arange(w, device=masks.device)
        hit = torch.zeros(b, dtype=torch.bool, device=masks.device)
        for i in range(b):
            hit[i] = (masks[i] & _within((ys - py[i]) ** 2 + (xs - px[i]) ** 2, tolerance)).any()
    return hit, flat.any(dim=1)


def _pointing_game_update(
    heatmaps: Tensor, masks: MasksLike, labels: Tensor | None, num_classes: int | None, tolerance: float
) -> tuple[Tensor, Tensor]:
    """Per-class ``(hits, misses)`` counts ``[num_classes or 1]`` (int64) of one batch."""
    groups = _mask_groups(heatmaps, masks)
    cls = _check_labels(labels, heatmaps.shape[0], num_classes, heatmaps.device)
    hit, counted = [], []
    for maps, m in groups:
        h, c = _pointing_hits(resize_maps(maps, m.shape[1:]), m.to(maps.device), tolerance)
        hit.append(h)
        counted.append(c)
    hit_t, counted_t = torch.cat(hit), torch.cat(counted)
    n = num_classes or 1
    hits = torch.bincount(cls[hit_t & counted_t], minlength=n)
    misses = torch.bincount(cls[~hit_t & counted_t], minlength=n)
    return hits, misses


def _pointing_game_compute(hits: Tensor, misses: Tensor, average: Average) -> Tensor:
    total = hits + misses
    if average == "micro":
        return hits.sum().double().div(total.sum()).float() if total.sum() > 0 else torch.tensor(float("nan"), device=hits.device)
    rate = hits.double() / total.clamp_min(1)  # TorchRay's hits / max(hits + misses, 1)
    if average == "none":
        return rate.float()
    present = total > 0
    return rate[present].mean().float() if present.any() else torch.tensor(float("nan"), device=hits.device)


def _check_pointing_args(num_classes: int | None, tolerance: float, average: str) -> None:
    if num_classes is not None and num_classes < 1:
        raise ValueError(f"num_classes must be None or >= 1; got {num_classes}")
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0 pixels (0: the point must lie inside the mask); got {tolerance}")
    if average not in ("macro", "micro", "none"):
        raise ValueError(f'average must be "macro", "micro" or "none"; got "{average}"')


def pointing_game(
    heatmaps: Tensor,
    masks: MasksLike,
    labels: Tensor | None = None,
    num_classes: int | None = None,
    tolerance: float = 15,
    average: Average = "macro",
) -> Tensor:
    """Pointing game hit rate (TorchRay semantics); see :class:`~pami_lightning.metrics.PointingGame`.

    Args:
        heatmaps: ``[B, h, w]`` importance maps, resized (bilinear) to each mask's size.
        masks: bool ``[B, H, W]``, or a list of ``B`` bool ``[H_i, W_i]`` masks of the object class.
        labels: ``[B]`` class of each sample; needed when ``num_classes`` is set.
        num_classes: score each class separately (default None: pool every sample as one class).
        tolerance: hit iff a mask pixel lies at distance ``< tolerance`` px from the map's first
            maximum (default 15); 0 means the point itself must be inside the mask.
        average: ``"macro"`` (mean over classes with samples), ``"micro"`` (all samples pooled),
            ``"none"`` (per-class rates ``[num_classes]``, 0 for absent classes).

    Returns:
        float32 scalar (``[num_classes]`` for ``average="none"``); NaN when no sample was counted.

    Example:
        >>> import torch
        >>> from pami_lightning.metrics.functional import pointing_game
        >>> heatmaps = torch.zeros(2, 8, 8); heatmaps[0, 2, 3] = heatmaps[1, 7, 7] = 1
        >>> masks = torch.zeros(2, 8, 8, dtype=torch.bool); masks[:, 1:4, 1:4] = True
        >>> pointing_game(heatmaps, masks, tolerance=0)
        tensor(0.5000)
    """
    _check_pointing_args(num_classes, tolerance, average)
    hits, misses = _pointing_game_update(heatmaps, masks, labels, num_classes, tolerance)
    return _pointing_game_compute(hits, misses, average)


def _energy_scores(heatmaps: Tensor, masks: MasksLike) -> tuple[Tensor, Tensor]:
    """Per sample ``(energy, counted)``: float32 ``[B]`` (0 where not counted) and bool ``[B]``."""
    energy, counted = [], []
    for maps, m in _mask_groups(heatmaps, masks):
        pos = resize_maps(maps, m.shape[1:]).double().clamp_min(0).flatten(1)
        m = m.to(pos.device).flatten(1)
        total = pos.sum(dim=1)
        ok = m.any(dim=1) & (total > 0)
        energy.append(torch.where(ok, (pos * m).sum(dim=1) / total.clamp_min(1e-300), 0.0))
        counted.append(ok)
    # float32 per-sample values: their float64 sums are exact, so any sharding gives the same total.
    return torch.cat(energy).float(), torch.cat(counted)


def energy_pointing_game(heatmaps: Tensor, masks: MasksLike) -> Tensor:
    """Energy-based pointing game: mean over samples of ``sum(relu(h) * mask) / sum(relu(h))``.

    Maps are resized to the masks' size like :func:`pointing_game`. Samples with an empty mask or
    no positive energy (``relu(h) == 0`` everywhere) are skipped.

    Args:
        heatmaps: ``[B, h, w]`` importance maps.
        masks: bool ``[B, H, W]`` or a list of ``B`` bool ``[H_i, W_i]`` masks.

    Returns:
        float32 scalar in ``[0, 1]``; NaN when every sample was skipped.

    Example:
        >>> import torch
        >>> from pami_lightning.metrics.functional import energy_pointing_game
        >>> heatmaps = torch.tensor([[[3.0, 1.0], [-2.0, 0.0]]])
        >>> masks = torch.tensor([[[True, False], [True, False]]])
        >>> energy_pointing_game(heatmaps, masks)
        tensor(0.7500)
    """
    energy, counted = _energy_scores(heatmaps, masks)
    return energy.double().sum().div(counted.sum()).float()


# ---------------------------------------------------------------------------------------- insertion / deletion


def _check_causal_args(step: int, n_steps: int | None, batch_size: int) -> None:
    if step < 1:
        raise ValueError(f"step must be >= 1 pixel per step; got {step}")
    if n_steps is not None and n_steps < 1:
        raise ValueError(f"n_steps must be None or >= 1; got {n_steps}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")


def insertion_curves(
    model: ModelLike,
    images: Tensor,
    heatmaps: Tensor,
    target: TargetLike = None,
    *,
    step: int = 224,
    n_steps: int | None = None,
    substrate: SubstrateLike = None,
    preprocess: Callable[[Tensor], Tensor] | None = None,
    output: OutputSpec = "softmax",
    batch_size: int = 64,
    forward: Callable[..., Any] | None = None,
    autocast_dtype: torch.dtype | None = None,
) -> Tensor:
    """RISE insertion curves: pixels of ``images`` restored onto ``substrate(images)``, most salient first.

    Point ``i`` of a curve is the model's score of the image whose first ``i * step`` pixels in
    decreasing saliency (a stable sort: ties in row-major order; all channels) come from the image
    and the rest from the substrate; ``n = ceil(H * W / step)`` steps, ``n + 1`` points. With
    ``n_steps`` the curve has exactly ``n_steps + 1`` points, point ``i`` holding
    ``ceil(i * H * W / n_steps)`` pixels (a documented option; RISE has only ``step``).

    Args:
        model: the ``nn.Module`` scored, ``[N, C, H, W] -> outputs``, or a ready
            :class:`~pami_lightning.ModelCall` (then leave ``preprocess`` / ``output`` / ``forward`` /
            ``autocast_dtype`` unset); run in eval mode under ``torch.inference_mode()``, its modes
            restored afterwards. A pure function goes through ``ModelCall(fn, modules=())``.
        images: ``[B, C, H, W]`` float images in pixel space (masking happens before ``preprocess``).
        heatmaps: ``[B, h, w]`` saliency, resized (bilinear) to ``H x W`` when needed.
        target: class scored per image: None (default: the clean image's top-1, as RISE), an int,
            or ``[B]``.
        step: pixels per step (default 224, RISE's for 224x224 images).
        n_steps: number of steps instead of ``step`` (fixes the curve length across image sizes).
        substrate: what the image starts from (default ``Blur(11, 5)``, RISE's).
        preprocess: applied to each batch before the model, e.g. mean/std normalisation.
        output: ``"softmax"`` (default), ``"sigmoid"``, ``"identity"`` or ``callable(outputs, target) -> [N]``.
        batch_size: images per forward call; points of several images share a batch (default 64).
        forward: adapter ``forward(model, x)`` for other calling conventions, e.g.
            ``lambda m, x: m(pixel_values=x).logits`` (default: ``model(x)``).
        autocast_dtype: run the model under ``torch.autocast`` with ``torch.bfloat16`` /
            ``torch.float16`` (default: none); scores are float32.

    Returns:
        float32 curves ``[B, n + 1]``.
    """
    _check_causal_args(step, n_steps, batch_size)
    masker = as_masker(substrate if substrate is not None else Blur(11, 5))
    call = model_call(model, forward=forward, preprocess=preprocess, output=output, autocast_dtype=autocast_dtype, batch_size=batch_size)
    return causal_curves("insertion", call, images, heatmaps, target, step, n_steps, masker)


def deletion_curves(
    model: ModelLike,
    images: Tensor,
    heatmaps: Tensor,
    target: TargetLike = None,
    *,
    step: int = 224,
    n_steps: int | None = None,
    substrate: SubstrateLike = None,
    preprocess: Callable[[Tensor], Tensor] | None = None,
    output: OutputSpec = "softmax",
    batch_size: int = 64,
    forward: Callable[..., Any] | None = None,
    autocast_dtype: torch.dtype | None = None,
) -> Tensor:
    """RISE deletion curves: pixels of ``images`` replaced by ``substrate(images)``, most salient first.

    Same arguments as :func:`insertion_curves`, with the roles of image and substrate swapped; the
    default substrate is ``Constant(0.0)`` (RISE's black).

    Example:
        >>> import torch
        >>> from pami_lightning import ModelCall
        >>> from pami_lightning.metrics.functional import deletion_curves
        >>> model = ModelCall(lambda x: torch.stack([x.flatten(1).sum(1) - 5, torch.zeros(len(x))], dim=1), modules=())
        >>> images = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
        >>> heatmaps = torch.tensor([[[0.1, 0.4], [0.3, 0.2]]])
        >>> deletion_curves(model, images, heatmaps, step=1).round(decimals=4)
        tensor([[0.9933, 0.9526, 0.5000, 0.0180, 0.0067]])
    """
    _check_causal_args(step, n_steps, batch_size)
    masker = as_masker(substrate if substrate is not None else Constant(0.0))
    call = model_call(model, forward=forward, preprocess=preprocess, output=output, autocast_dtype=autocast_dtype, batch_size=batch_size)
    return causal_curves("deletion", call, images, heatmaps, target, step, n_steps, masker)


def curve_auc(curves: Tensor) -> Tensor:
    """RISE's area under curves ``[..., n + 1]`` on ``x = i / n``: ``(sum(y) - y[0]/2 - y[-1]/2) / n``.

    Example:
        >>> import torch
        >>> from pami_lightning.metrics.functional import curve_auc
        >>> curve_auc(torch.tensor([[0.0, 0.25, 0.5, 0.75, 1.0], [1.0, 0.0, 0.0, 0.0, 0.0]]))
        tensor([0.5000, 0.1250])
    """
    if curves.shape[-1] < 2:
        raise ValueError(f"a curve needs at least 2 points; got shape {list(curves.shape)}")
    return (curves.sum(-1) - curves[..., 0] / 2 - curves[..., -1] / 2) / (curves.shape[-1] - 1)


def insertion(model: ModelLike, images: Tensor, heatmaps: Tensor, target: TargetLike = None, **kwargs: Any) -> Tensor:
    """Mean insertion AUC of ``images`` (float32 scalar); keyword arguments as :func:`insertion_curves`."""
    return curve_auc(insertion_curves(model, images, heatmaps, target, **kwargs)).mean()


def deletion(model: ModelLike, images: Tensor, heatmaps: Tensor, target: TargetLike = None, **kwargs: Any) -> Tensor:
    """Mean deletion AUC of ``images`` (float32 scalar, lower is better); keyword arguments as :func:`deletion_curves`."""
    return curve_auc(deletion_curves(model, images, heatmaps, target, **kwargs)).mean()
