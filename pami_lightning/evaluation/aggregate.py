"""Aggregate scores of one method: sum states synced across ranks, and the one formula that reduces them.

:class:`MethodScores` keeps per-class sums (hits, counted images, AUC sums) and curve sums —
torchmetrics ``"sum"`` states, so any sharding (uneven included) adds up to the single-process
totals. :func:`summarize` turns such sums into the reported numbers; the loader
(:func:`~pami_lightning.evaluation.load_results`) rebuilds the same sums from the per-sample table
and calls the same function, so the two agree by construction (up to float64 summation order).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric

__all__ = ["MethodScores", "summarize", "class_sums", "SUM_KEYS"]

#: The per-class sums ``[K]`` behind every aggregate.
SUM_KEYS = ("images", "hits", "pointed", "insertion", "deletion")


def summarize(sums: Mapping[str, Any], metrics: Sequence[str]) -> dict[str, Any]:
    """The reported aggregates of one method from its sums.

    Args:
        sums: per-class ``[K]`` arrays ``images`` (images explained), ``hits`` and ``pointed``
            (pointing-game hits and images with a mask), ``insertion`` / ``deletion`` (AUC sums), and
            curve sums ``insertion_curve`` / ``deletion_curve`` ``[P]``.
        metrics: the metrics computed (``"pointing_game"``, ``"insertion"``, ``"deletion"``).

    Returns:
        ``images``; for the pointing game ``pointing_game`` (hits over all images with a mask),
        ``pointing_game_per_class`` (the paper's: mean over classes of the per-class hit rate,
        classes without a masked image left out) and ``pointing_images``; for insertion and
        deletion the mean AUC over images, ``<metric>_per_class`` (mean over classes of the
        per-class mean) and ``<metric>_curve`` (the mean curve, a list). NaN where nothing was counted.
    """
    f = {k: np.asarray(v, dtype=np.float64) for k, v in sums.items()}
    images = f["images"]
    out: dict[str, Any] = {"images": round(float(images.sum()))}
    if "pointing_game" in metrics:
        out["pointing_game"] = _ratio(f["hits"].sum(), f["pointed"].sum())
        out["pointing_game_per_class"] = _macro(f["hits"], f["pointed"])
        out["pointing_images"] = round(float(f["pointed"].sum()))
    for kind in ("insertion", "deletion"):
        if kind in metrics:
            out[kind] = _ratio(f[kind].sum(), images.sum())
            out[f"{kind}_per_class"] = _macro(f[kind], images)
            curve = f[f"{kind}_curve"]
            out[f"{kind}_curve"] = (curve / images.sum()).tolist() if images.sum() > 0 else [math.nan] * curve.shape[0]
    return out


def _ratio(a: float, b: float) -> float:
    return float(a / b) if b > 0 else math.nan


def _macro(values: np.ndarray, counts: np.ndarray) -> float:
    present = counts > 0
    return float(np.mean(values[present] / counts[present])) if present.any() else math.nan


def class_sums(labels: np.ndarray, num_classes: int, **values: np.ndarray) -> dict[str, np.ndarray]:
    """Per-class float64 sums ``[num_classes]`` of each named per-sample array (NaN entries skipped)."""
    labels = np.asarray(labels, dtype=np.int64)
    out = {}
    for name, v in values.items():
        v = np.asarray(v, dtype=np.float64)
        ok = ~np.isnan(v)
        out[name] = np.bincount(labels[ok], weights=v[ok], minlength=num_classes).astype(np.float64)
    return out


class MethodScores(Metric):
    """Sum states of one method's per-sample scores, per class; :meth:`compute` gives :func:`summarize`'s numbers.

    Args:
        num_classes: number of classes (the per-class sums' length).
        points: points per insertion / deletion curve (``n_steps + 1``).
        metrics: the metrics scored.
    """

    images: Tensor
    hits: Tensor
    pointed: Tensor
    insertion: Tensor
    deletion: Tensor
    insertion_curve: Tensor
    deletion_curve: Tensor
    full_state_update = False  # forward() must not run update() twice
    is_differentiable = False
    higher_is_better = None

    def __init__(self, num_classes: int, points: int, metrics: Sequence[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.num_classes, self.points, self.metrics = int(num_classes), int(points), tuple(metrics)
        for key in SUM_KEYS:
            self.add_state(key, torch.zeros(self.num_classes, dtype=torch.float64), dist_reduce_fx="sum")
        for kind in ("insertion", "deletion"):
            self.add_state(f"{kind}_curve", torch.zeros(self.points, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, labels: Tensor, hit: Tensor | None = None, insertion: Tensor | None = None, deletion: Tensor | None = None,
               insertion_curve: Tensor | None = None, deletion_curve: Tensor | None = None) -> None:
        """Add explained images: ``labels`` long ``[B]``; per image ``hit`` (1/0, NaN without mask), AUCs ``[B]``, curves ``[B, P]``."""
        dev = self.images.device
        labels = labels.to(dev).long()
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            raise ValueError(f"labels must lie in [0, {self.num_classes - 1}] (num_classes={self.num_classes}); got {sorted(set(labels.tolist()))}")
        self.images += torch.bincount(labels, minlength=self.num_classes).double()
        if hit is not None:
            hit = hit.to(dev).double()
            ok = ~hit.isnan()
            self.hits += torch.zeros_like(self.hits).index_add_(0, labels[ok], hit[ok])
            self.pointed += torch.bincount(labels[ok], minlength=self.num_classes).double()
        for key, value in (("insertion", insertion), ("deletion", deletion)):
            if value is not None:
                state = getattr(self, key)
                state += torch.zeros_like(state).index_add_(0, labels, value.to(dev).double())
        for key, curve in (("insertion_curve", insertion_curve), ("deletion_curve", deletion_curve)):
            if curve is not None and curve.numel():
                state = getattr(self, key)
                state += curve.to(dev).double().sum(dim=0)

    def add_sums(self, sums: Mapping[str, Any]) -> None:
        """Add sums made elsewhere (the table of an earlier run, :meth:`Results.sums`) to the states."""
        for key in (*SUM_KEYS, "insertion_curve", "deletion_curve"):
            if key in sums:
                state = getattr(self, key)
                value = torch.as_tensor(np.asarray(sums[key], dtype=np.float64), device=state.device)
                if value.shape != state.shape:
                    raise ValueError(f"sums[{key!r}] has shape {list(value.shape)}; the state has {list(state.shape)} (another num_classes or n_steps?)")
                state += value

    def compute(self) -> dict[str, Any]:
        sums = {k: getattr(self, k).cpu().numpy() for k in (*SUM_KEYS, "insertion_curve", "deletion_curve")}
        return summarize(sums, self.metrics)

    def synced(self) -> dict[str, Any]:
        """:meth:`compute` on every rank (a collective), quiet on a rank that saw no image."""
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The ``compute`` method")
            return self.compute()
