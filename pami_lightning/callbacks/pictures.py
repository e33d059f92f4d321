"""How the callback draws what it logs: one options object, so the callback keeps one argument for it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional, Sequence

__all__ = ["Pictures"]


@dataclass
class Pictures:
    """Picture options of :class:`~pami_lightning.PAMICallback`.

    Args:
        enabled: log pictures at all (default True); scores are logged either way.
        max_images: most samples drawn (default 8).
        cmap: matplotlib colour map of the heatmaps (default ``"jet"``).
        alpha: heatmap weight in the overlays (default 0.5).
        scale: ``"minmax"`` (default: each map stretched over the colour map, its range printed
            beside it) or ``"absolute"`` (0..1 scores: the same colour means the same probability
            across samples and epochs).
        class_names: names of the model's classes, shown in captions (default: class indices).
    """

    enabled: bool = True
    max_images: int = 8
    cmap: str = "jet"
    alpha: float = 0.5
    scale: Literal["minmax", "absolute"] = "minmax"
    class_names: Optional[Sequence[str]] = None

    def __post_init__(self) -> None:
        import matplotlib

        if self.max_images < 1:
            raise ValueError(f"max_images must be >= 1; got {self.max_images}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1]; got {self.alpha}")
        if self.cmap not in matplotlib.colormaps:
            raise ValueError(f'cmap "{self.cmap}" is not a matplotlib colour map (e.g. "jet", "viridis", "inferno")')
        if self.scale not in ("minmax", "absolute"):
            raise ValueError(f'scale must be "minmax" or "absolute"; got "{self.scale}"')
        if self.class_names is not None:
            self.class_names = [str(n) for n in self.class_names]
