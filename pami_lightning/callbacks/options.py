"""The callback's explainer: PAMI's settings without the model, and checks of them against the samples."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Optional, Union

import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch import Tensor, nn

from ..explainer import PAMI
from ..maskers import Masker, as_masker
from ..partitions.base import Partition
from ..partitions.sliding_window import SlidingWindow
from ..scores import resolve_output

__all__ = ["PAMIOptions", "warn_if_coarse"]


@dataclass
class PAMIOptions:
    """How :class:`~pami_lightning.PAMICallback` builds its :class:`~pami_lightning.PAMI` around the LightningModule.

    The settings of a PAMI without the model, so that they can be given before the model exists (in
    a LightningCLI config, for instance). Pass a ready ``PAMI`` to the callback instead when the
    explained model is not the LightningModule itself or for settings not listed here.

    Args:
        partition: how images are split (default ``SlidingWindow.relative()``: the paper's radius 40
            and stride 6 at 224x224, scaled to the samples' size; ``TokenWindows`` / ``Words`` for text).
        masker: what replaces the removed parts (default ``Blur(49, 100)``; ``TokenMask`` /
            ``AttentionMask`` for text).
        preprocess: applied to masked images before the model (e.g. normalisation); the samples must
            be pixel-space images in ``[0, 1]``.
        output: ``"softmax"`` (default), ``"sigmoid"``, ``"identity"`` or ``callable(outputs, target) -> [N]``
            (e.g. for a model returning a dict or a tuple).
        batch_size: masked images per forward call (default 64).
        forward: adapter ``forward(model, x)`` for other calling conventions (default: ``model(x)``).
        shifts: views ``[(dy, dx), ...]`` of circularly shifted images, or ``"reference"`` (default: none).
        second_run: re-partition the first map and explain again (needs ``Superpixels``; default False).
    """

    partition: Optional[Partition] = None
    masker: Optional[Masker] = None
    preprocess: Optional[Callable[[Tensor], Tensor]] = None
    output: Union[Literal["softmax", "sigmoid", "identity"], Callable[[Any, Tensor], Tensor]] = "softmax"
    batch_size: int = 64
    forward: Optional[Callable[..., Any]] = None
    shifts: Union[Sequence[Sequence[int]], Literal["reference"], None] = None
    second_run: bool = False

    def __post_init__(self) -> None:
        # Checks of each value alone; how they combine is checked when the PAMI is built (at setup).
        if self.partition is not None and not isinstance(self.partition, Partition):
            raise TypeError(f"partition must be a Partition (SlidingWindow, Superpixels, Words, ...); got {type(self.partition).__name__}")
        if self.masker is not None:
            as_masker(self.masker)
        resolve_output(self.output)
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {self.batch_size}")
        for name in ("preprocess", "forward"):
            value = getattr(self, name)
            if value is not None and not callable(value):
                raise TypeError(f"{name} must be callable; got {type(value).__name__}")

    def build(self, model: nn.Module) -> PAMI:
        """The PAMI of ``model`` with these settings."""
        return PAMI(
            model, self.partition if self.partition is not None else SlidingWindow.relative(), self.masker, self.preprocess,
            self.output, self.batch_size, forward=self.forward, shifts=self.shifts, second_run=self.second_run, progress=False,
        )


def warn_if_coarse(explainer: PAMI, spatial: Sequence[int], tolerance: Optional[float], explicit_tolerance: bool) -> None:
    """Warn about settings sized for larger images than the samples' ``spatial`` size.

    A window radius of half the image or more gives near-flat maps (``SlidingWindow`` warns itself,
    here before training instead of at the first explanation); a pointing tolerance above a tenth
    of the image counts maps that miss the object as hits; shifts beyond a quarter of it move the
    object far across the image (the reference's 24 to 36 px shifts are for 224 px images).
    """
    side = min(spatial)
    size = "x".join(map(str, spatial))
    if isinstance(explainer.partition, SlidingWindow):
        explainer.partition.parts(_probe(spatial))  # warns when the radius is >= half the image (and warms its cache)
    if explicit_tolerance and tolerance is not None and tolerance > side / 10:
        rank_zero_warn(f"PAMICallback(pointing_tolerance={tolerance:g}) is more than a tenth of the {size} samples: maps that miss "
                       "the object count as hits — leave pointing_tolerance=None (15/224 of the image, TorchRay's 15 px at 224 px)")
    far = [tuple(s) for s in explainer.shifts or [] if max(abs(v) for v in s) > side / 4]
    if far:
        rank_zero_warn(f"PAMICallback: the explainer's shift {far[0]} moves the {size} samples by more than a quarter of their size "
                       "(the reference's shifts are sized for 224 px images): scale the shifts to the image or drop them")


def _probe(spatial: Sequence[int]) -> Tensor:
    """A one-channel input of this spatial size: all ``SlidingWindow.parts`` reads is its shape."""
    return torch.zeros(1, *spatial)
