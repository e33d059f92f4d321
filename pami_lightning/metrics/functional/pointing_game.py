"""The pointing game (Zhang et al. 2018) with TorchRay's benchmark semantics, per sample or reduced,
and the chance baselines of the PAMI paper's Table 4 ("center" and "random")."""

from __future__ import annotations

import math
import numbers
from typing import Literal, Union

import torch
from torch import Tensor

from .._utils import FLAT_TOL, MasksLike, Reduction, check_flat_tol, check_reduction, flat_maps, mask_groups, resize_maps

__all__ = ["pointing_game", "pointing_game_baselines", "RELATIVE_TOLERANCE"]

Average = Literal["macro", "micro", "none"]
Tolerance = Union[float, Literal["relative"]]

#: ``tolerance="relative"``: TorchRay's 15 px on its ~224 px images, as a fraction of the mask's smaller side.
RELATIVE_TOLERANCE = 15 / 224


def tolerance_pixels(tolerance: Tolerance, size: tuple[int, ...]) -> float:
    """The hit radius in pixels of a mask of ``size`` ``(H, W)``: ``tolerance``, or ``15/224 * min(H, W)`` for ``"relative"``."""
    if isinstance(tolerance, str):
        return 15 * min(size) / 224
    return float(tolerance)


def _check_tolerance(tolerance: object) -> None:
    if isinstance(tolerance, str):
        if tolerance != "relative":
            raise ValueError(f'tolerance must be pixels (a number >= 0) or "relative" (15/224 of the mask\'s smaller side); got "{tolerance}"')
        return
    if isinstance(tolerance, bool) or not isinstance(tolerance, numbers.Real):
        hint = ""
        if isinstance(tolerance, (list, tuple)) or (isinstance(tolerance, Tensor) and tolerance.ndim > 0):
            hint = " — labels and num_classes are keyword arguments: pointing_game(heatmaps, masks, tolerance, labels=labels, num_classes=K)"
        raise TypeError(f'tolerance must be pixels (a number >= 0) or "relative"; got {type(tolerance).__name__}{hint}')
    if not float(tolerance) >= 0:  # also NaN
        raise ValueError(f"tolerance must be >= 0 pixels (0: the point must lie inside the mask); got {tolerance}")


def _pointing_game_arg_validation(
    tolerance: Tolerance = 15, num_classes: int | None = None, average: str = "macro", reduction: str = "mean", flat_tol: float | None = FLAT_TOL
) -> None:
    _check_tolerance(tolerance)
    if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1):
        raise ValueError(f"num_classes must be None or an int >= 1; got {num_classes!r}")
    if average not in ("macro", "micro", "none"):
        raise ValueError(f'average must be "macro", "micro" or "none"; got "{average}"')
    check_reduction(reduction)
    check_flat_tol(flat_tol)


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


def _within(d2: Tensor, tolerance: float) -> Tensor:
    """Squared distances that count as a hit (tolerance 0: the point itself)."""
    return d2 < tolerance**2 if tolerance > 0 else d2 == 0


def _hits_at_pixels(py: Tensor, px: Tensor, masks: Tensor, tolerance: float) -> Tensor:
    """bool ``[b]``: some pixel of ``masks [b, H, W]`` within ``tolerance`` of the integer points ``(py, px)``."""
    b, (h, w) = masks.shape[0], masks.shape[1:]
    flat = masks.reshape(b, -1)
    r = min(math.ceil(tolerance), max(h, w))
    if (2 * r + 1) ** 2 <= h * w:
        # Only mask pixels within the tolerance disc can make a hit: test those offsets alone.
        d = torch.arange(-r, r + 1, device=masks.device)
        dy, dx = torch.meshgrid(d, d, indexing="ij")
        near = _within(dy * dy + dx * dx, tolerance)
        ys, xs = py[:, None] + dy[near], px[:, None] + dx[near]
        inside = (ys >= 0) & (ys < h) & (xs >= 0) & (xs < w)
        return (flat.gather(1, ys.clamp(0, h - 1) * w + xs.clamp(0, w - 1)) & inside).any(dim=1)
    # The disc holds more offsets than the mask has pixels: measure every pixel, sample by sample.
    ys, xs = torch.arange(h, device=masks.device)[:, None], torch.arange(w, device=masks.device)
    hit = torch.zeros(b, dtype=torch.bool, device=masks.device)
    for i in range(b):
        hit[i] = (masks[i] & _within((ys - py[i]) ** 2 + (xs - px[i]) ** 2, tolerance)).any()
    return hit


def _pointing_game_update(heatmaps: Tensor, masks: MasksLike, tolerance: Tolerance, flat_tol: float | None) -> tuple[Tensor, Tensor]:
    """Per sample ``(hit, counted)``, bool ``[B]``: a flat map never hits; an empty mask is not counted."""
    hit, counted = [], []
    for maps, m in mask_groups(heatmaps, masks):
        maps = resize_maps(maps, m.shape[1:])
        b, w = m.shape[0], m.shape[2]
        point = maps.reshape(b, -1).argmax(dim=1)  # the first maximum in row-major order, as TorchRay
        hit.append(_hits_at_pixels(point // w, point % w, m, tolerance_pixels(tolerance, m.shape[1:])) & ~flat_maps(maps, flat_tol))
        counted.append(m.flatten(1).any(dim=1))
    return torch.cat(hit), torch.cat(counted)


def _pointing_game_counts(hit: Tensor, counted: Tensor, labels: Tensor | None, num_classes: int | None) -> tuple[Tensor, Tensor]:
    """Per-class ``(hits, misses)`` counts ``[num_classes or 1]`` (int64) of per-sample hits."""
    cls = _check_labels(labels, hit.shape[0], num_classes, hit.device)
    n = num_classes or 1
    return torch.bincount(cls[hit & counted], minlength=n), torch.bincount(cls[~hit & counted], minlength=n)


def _pointing_game_compute(hits: Tensor, misses: Tensor, average: Average) -> Tensor:
    total = hits + misses
    if average == "micro":
        return hits.sum().double().div(total.sum()).float() if total.sum() > 0 else torch.tensor(float("nan"), device=hits.device)
    rate = hits.double() / total.clamp_min(1)  # TorchRay's hits / max(hits + misses, 1)
    if average == "none":
        return rate.float()
    present = total > 0
    return rate[present].mean().float() if present.any() else torch.tensor(float("nan"), device=hits.device)


def _per_sample(hit: Tensor, counted: Tensor) -> Tensor:
    """float32 ``[B]``: 1.0 hit, 0.0 miss, NaN where the mask is empty."""
    return torch.where(counted, hit.float(), torch.tensor(float("nan"), device=hit.device))


def pointing_game(
    heatmaps: Tensor,
    masks: MasksLike,
    tolerance: Tolerance = 15,
    *,
    labels: Tensor | None = None,
    num_classes: int | None = None,
    average: Average = "macro",
    reduction: Reduction = "mean",
    flat_tol: float | None = FLAT_TOL,
) -> Tensor:
    """Pointing game hit rate (TorchRay semantics, flat maps miss); see :class:`~pami_lightning.metrics.PointingGame`.

    Args:
        heatmaps: ``[B, h, w]`` importance maps, resized (bilinear) to each mask's size.
        masks: bool ``[B, H, W]``, or a list of ``B`` bool ``[H_i, W_i]`` masks of the object class.
        tolerance: hit iff a mask pixel lies at distance ``< tolerance`` px from the map's first
            maximum (default 15, TorchRay's for ~224 px images); 0 means the point itself must be
            inside the mask; ``"relative"``: ``15/224`` of each mask's smaller side (15 px at 224,
            4.3 px at 64), so one setting fits every image size.
        labels: ``[B]`` class of each sample; needed when ``num_classes`` is set (keyword only).
        num_classes: score each class separately (default None: pool every sample as one class).
        average: for ``reduction="mean"``: ``"macro"`` (mean over classes with samples), ``"micro"``
            (all samples pooled), ``"none"`` (per-class rates ``[num_classes]``, 0 for absent classes).
        reduction: ``"mean"`` (default: the rate, as ``average`` says) or ``"none"``: float32 ``[B]``,
            1.0 for a hit, 0.0 for a miss, NaN where the mask is empty (classes play no part; its
            ``nanmean()`` is the ``"micro"`` rate).
        flat_tol: a map with ``max - min <= flat_tol * max(|max|, |min|)`` is flat and counts as a
            miss (default 1e-6); None: TorchRay's rule, a flat map points at its first pixel.

    Returns:
        float32 scalar (``[num_classes]`` for ``average="none"``, ``[B]`` for ``reduction="none"``);
        NaN when no sample was counted.

    Example:
        >>> import torch
        >>> from pami_lightning.metrics.functional import pointing_game
        >>> heatmaps = torch.zeros(3, 8, 8); heatmaps[0, 2, 3] = heatmaps[1, 7, 7] = 1  # heatmaps[2] is flat
        >>> masks = torch.zeros(3, 8, 8, dtype=torch.bool); masks[:2, 1:4, 1:4] = True
        >>> pointing_game(heatmaps, masks, tolerance=0, reduction="none")
        tensor([1., 0., nan])
        >>> pointing_game(heatmaps, masks, tolerance=0)
        tensor(0.5000)
        >>> masks[2, 0, 0] = True  # TorchRay would count the flat map a hit: it "points" at (0, 0)
        >>> pointing_game(heatmaps, masks, tolerance=0, reduction="none")
        tensor([1., 0., 0.])
    """
    _pointing_game_arg_validation(tolerance, num_classes, average, reduction, flat_tol)
    hit, counted = _pointing_game_update(heatmaps, masks, tolerance, flat_tol)
    hits, misses = _pointing_game_counts(hit, counted, labels, num_classes)  # checks labels in both modes
    if reduction == "none":
        return _per_sample(hit, counted)
    return _pointing_game_compute(hits, misses, average)


def _hits_at_points(py: Tensor, px: Tensor, masks: Tensor, tolerance: float, chunk: int = 16) -> Tensor:
    """bool ``[b]``: some pixel of ``masks [b, H, W]`` at distance ``< tolerance`` from the (real) points ``(py, px)``.

    ``tolerance=0``: the pixel that holds the point is in the mask.
    """
    b, (h, w) = masks.shape[0], masks.shape[1:]
    if tolerance == 0:
        iy, ix = py.floor().long().clamp(0, h - 1), px.floor().long().clamp(0, w - 1)
        return masks[torch.arange(b, device=masks.device), iy, ix]
    ys = torch.arange(h, dtype=torch.float64, device=masks.device)
    xs = torch.arange(w, dtype=torch.float64, device=masks.device)
    hit = []
    for lo in range(0, b, chunk):  # bounded memory: [chunk, H, W] distances at a time
        dy2 = (ys - py[lo : lo + chunk, None]) ** 2
        dx2 = (xs - px[lo : lo + chunk, None]) ** 2
        near = (dy2[:, :, None] + dx2[:, None, :]) < tolerance**2
        hit.append((masks[lo : lo + chunk] & near).flatten(1).any(dim=1))
    return torch.cat(hit) if hit else torch.zeros(0, dtype=torch.bool, device=masks.device)


def pointing_game_baselines(masks: MasksLike, tolerance: Tolerance = 15, generator: torch.Generator | None = None) -> dict[str, Tensor]:
    """Per-sample hits of the chance baselines of the PAMI paper's Table 4 (and TorchRay's "center").

    - ``"center"``: the map whose maximum is the image centre, the point ``(x, y) = (W/2, H/2)``
      as TorchRay's benchmark places it (the pixel ``(H // 2, W // 2)`` for ``tolerance=0``).
    - ``"random"``: a uniformly random pixel per sample, drawn with ``generator`` (a CPU
      ``torch.Generator``; default: torch's global one), one draw of y then x per sample in order.

    Hits follow :func:`pointing_game` (squared distance ``< tolerance**2``; ``"relative"``
    tolerance per mask). A pointing game result is only worth reading next to these: on small
    images with a large tolerance, the centre alone hits most objects.

    Args:
        masks: bool ``[B, H, W]`` or a list of ``B`` bool ``[H_i, W_i]`` object masks.
        tolerance: as :func:`pointing_game` (pixels, or ``"relative"``).
        generator: random source of the ``"random"`` baseline.

    Returns:
        ``{"center": [B], "random": [B]}``, float32: 1.0 hit, 0.0 miss, NaN where the mask is empty
        (``.nanmean()`` gives the pooled rate, like ``pointing_game(..., average="micro")``).

    Example:
        >>> import torch
        >>> from pami_lightning.metrics.functional import pointing_game_baselines
        >>> masks = torch.zeros(2, 64, 64, dtype=torch.bool)
        >>> masks[0, 28:36, 28:36] = True; masks[1, :8, :8] = True  # a centred object, one in a corner
        >>> base = pointing_game_baselines(masks, tolerance="relative", generator=torch.Generator().manual_seed(0))
        >>> base["center"]
        tensor([1., 0.])
        >>> base["random"].shape
        torch.Size([2])
    """
    _check_tolerance(tolerance)
    if isinstance(masks, Tensor):
        groups = [masks] if masks.ndim == 3 else None
    else:
        groups = [m[None] for m in masks] if all(isinstance(m, Tensor) and m.ndim == 2 for m in masks) else None
    if groups is None:
        raise ValueError("masks must be bool [B, H, W] or a list of B bool [H, W] masks")
    if any(m.dtype != torch.bool for m in groups):
        raise ValueError("masks must be bool — pass masks.bool() (or masks > 0), or build them with boxes_to_mask")
    if not groups:
        return {"center": torch.zeros(0), "random": torch.zeros(0)}
    center, random = [], []
    for m in groups:
        b, h, w = m.shape
        tol = tolerance_pixels(tolerance, (h, w))
        counted = m.flatten(1).any(dim=1)
        half = torch.tensor([h / 2, w / 2], dtype=torch.float64, device=m.device).expand(b, 2)
        center.append(_per_sample(_hits_at_points(half[:, 0], half[:, 1], m, tol), counted))
        ry = torch.empty(b, dtype=torch.long)
        rx = torch.empty(b, dtype=torch.long)
        for i in range(b):  # y then x per sample: the same draws however masks are grouped
            ry[i] = torch.randint(h, (1,), generator=generator)
            rx[i] = torch.randint(w, (1,), generator=generator)
        random.append(_per_sample(_hits_at_pixels(ry.to(m.device), rx.to(m.device), m, tol), counted))
    return {"center": torch.cat(center), "random": torch.cat(random)}
