"""The energy-based pointing game (Score-CAM; Quantus' relevance mass accuracy), per sample or reduced,
with an optional baseline subtraction for maps that carry an offset (PAMI's probability maps)."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from .._utils import FLAT_TOL, MasksLike, Reduction, check_flat_tol, check_reduction, flat_maps, mask_groups, resize_maps

__all__ = ["energy_pointing_game"]

Baseline = Literal["none", "min"]


def _energy_pointing_game_arg_validation(baseline: str = "none", reduction: str = "mean", flat_tol: float | None = FLAT_TOL) -> None:
    if baseline not in ("none", "min"):
        raise ValueError(f'baseline must be "none" (the energy of relu(h)) or "min" (of h - min(h)); got "{baseline}"')
    check_reduction(reduction)
    check_flat_tol(flat_tol)


def _energy_pointing_game_update(heatmaps: Tensor, masks: MasksLike, baseline: Baseline, flat_tol: float | None) -> tuple[Tensor, Tensor]:
    """Per sample ``(energy, counted)``: float32 ``[B]`` (0 where not counted) and bool ``[B]`` (the mask is not empty)."""
    energy, counted = [], []
    for maps, m in mask_groups(heatmaps, masks):
        maps = resize_maps(maps, m.shape[1:]).double()
        flat = flat_maps(maps, flat_tol)
        pos = maps.flatten(1)
        if baseline == "min":
            pos = pos - pos.amin(dim=1, keepdim=True)
        pos = pos.clamp_min(0)
        m = m.flatten(1)
        total = pos.sum(dim=1)
        ok = m.any(dim=1)
        # A flat map, or one without positive energy, places nothing on the object: 0, and counted.
        share = torch.where(~flat & (total > 0), (pos * m).sum(dim=1) / total.clamp_min(1e-300), 0.0)
        energy.append(torch.where(ok, share, 0.0))
        counted.append(ok)
    # float32 per-sample values: their float64 sums are exact, so any sharding gives the same total.
    return torch.cat(energy).float(), torch.cat(counted)


def _energy_pointing_game_compute(energy_sum: Tensor, count: Tensor) -> Tensor:
    """Mean energy share over counted samples (float32; NaN for none)."""
    return (energy_sum.double() / count).float()


def energy_pointing_game(
    heatmaps: Tensor,
    masks: MasksLike,
    *,
    baseline: Baseline = "none",
    reduction: Reduction = "mean",
    flat_tol: float | None = FLAT_TOL,
) -> Tensor:
    """Energy-based pointing game: the share of a map's energy on the object; see :class:`~pami_lightning.metrics.EnergyPointingGame`.

    Per sample, ``sum(e * mask) / sum(e)`` with ``e = relu(h)`` (``baseline="none"``, Score-CAM's
    and Quantus' definition) or ``e = h - min(h)`` (``baseline="min"``), ``h`` resized (bilinear)
    to the mask's size. A flat map (``max - min <= flat_tol * max(|max|, |min|)``) and a map
    without positive energy score 0; a sample with an empty mask is not counted.

    Args:
        heatmaps: ``[B, h, w]`` importance maps.
        masks: bool ``[B, H, W]`` or a list of ``B`` bool ``[H_i, W_i]`` masks.
        baseline: ``"none"`` (default) or ``"min"``: subtract each map's minimum first, so an
            offset shared by every pixel (a PAMI map of probabilities near 0.9) does not pull the
            score towards the object's area fraction.
        reduction: ``"mean"`` (default: mean over counted samples) or ``"none"``: float32 ``[B]``,
            NaN where the mask is empty.
        flat_tol: relative range under which a map is flat (default 1e-6); None: no flat rule.

    Returns:
        float32 scalar in ``[0, 1]`` (NaN when no sample was counted), or ``[B]``.

    Example:
        >>> import torch
        >>> from pami_lightning.metrics.functional import energy_pointing_game
        >>> heatmaps = torch.tensor([[[3.0, 1.0], [-2.0, 0.0]]])
        >>> masks = torch.tensor([[[True, False], [True, False]]])
        >>> energy_pointing_game(heatmaps, masks)
        tensor(0.7500)
        >>> perfect = torch.full((1, 16, 16), 0.9); perfect[0, 4:8, 4:8] = 1.0  # 1.0 on the box, 0.9 elsewhere
        >>> box = torch.zeros(1, 16, 16, dtype=torch.bool); box[0, 4:8, 4:8] = True  # area 1/16
        >>> energy_pointing_game(perfect, box).item() < 0.07, energy_pointing_game(perfect, box, baseline="min").item()
        (True, 1.0)
    """
    _energy_pointing_game_arg_validation(baseline, reduction, flat_tol)
    energy, counted = _energy_pointing_game_update(heatmaps, masks, baseline, flat_tol)
    if reduction == "none":
        return torch.where(counted, energy, torch.tensor(float("nan"), device=energy.device))
    return _energy_pointing_game_compute(energy.double().sum(), counted.sum())
