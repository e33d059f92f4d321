"""RISE's causal metrics, insertion and deletion: curves, their AUC, and the AUC per image or averaged.

The curves are run by :func:`~pami_lightning.metrics._causal.causal_curves`: every step image in
full forward batches through a :class:`~pami_lightning.ModelCall`, and no input run twice.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Union

import torch
from torch import Tensor

from ...forward import Clean, ModelCall
from ...maskers import Blur, Constant, Masker, as_masker
from ...scores import OutputSpec
from .._causal import TargetLike, causal_curves, model_call
from .._utils import Reduction, check_reduction

__all__ = ["insertion_curves", "deletion_curves", "curve_auc", "insertion", "deletion"]

SubstrateLike = Union[Masker, Callable[[Tensor], Tensor], None]
ModelLike = Union[Callable[..., Any], ModelCall]


def _causal_arg_validation(step: int, n_steps: int | None, batch_size: int, reduction: str = "mean") -> None:
    if isinstance(step, bool) or not isinstance(step, int) or step < 1:
        raise ValueError(f"step must be an int >= 1 pixel per step; got {step!r}")
    if n_steps is not None and (isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 1):
        raise ValueError(f"n_steps must be None or an int >= 1; got {n_steps!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    check_reduction(reduction)


def _causal_update(
    kind: str,
    model: ModelLike,
    images: Tensor,
    heatmaps: Tensor,
    target: TargetLike,
    *,
    step: int = 224,
    n_steps: int | None = None,
    substrate: SubstrateLike = None,
    preprocess: Callable[[Tensor], Tensor] | None = None,
    output: OutputSpec = "softmax",
    batch_size: int = 64,
    forward: Callable[..., Any] | None = None,
    autocast_dtype: torch.dtype | None = None,
    clean: Clean | None = None,
) -> Tensor:
    """Curves ``[B, n + 1]`` of ``kind`` with the functional defaults (``Blur(11, 5)`` / ``Constant(0)``)."""
    _causal_arg_validation(step, n_steps, batch_size)
    default = Blur(11, 5) if kind == "insertion" else Constant(0.0)
    masker = as_masker(substrate if substrate is not None else default)
    call = model_call(model, forward=forward, preprocess=preprocess, output=output, autocast_dtype=autocast_dtype, batch_size=batch_size)
    return causal_curves("insertion" if kind == "insertion" else "deletion", call, images, heatmaps, target, step, n_steps, masker, clean)


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
    clean: Clean | None = None,
) -> Tensor:
    """RISE insertion curves: pixels of ``images`` restored onto ``substrate(images)``, most salient first.

    Point ``i`` of a curve is the model's score of the image whose first ``i * step`` pixels in
    decreasing saliency (a stable sort: ties in row-major order; all channels) come from the image
    and the rest from the substrate; ``n = ceil(H * W / step)`` steps, ``n + 1`` points. With
    ``n_steps`` the curve has exactly ``n_steps + 1`` points, point ``i`` holding
    ``ceil(i * H * W / n_steps)`` pixels (a documented option; RISE has only ``step``).

    No input goes through the model twice: the last point (the clean image) reuses the score of
    the pass that finds the top-1 class (``target=None``) or the given ``clean``, and a substrate
    that is the same image for the whole batch (``Constant``) is run once for all.

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
        clean: the :meth:`ModelCall.clean` result of these images under the same call (e.g. what
            an explainer computed already): its ``target`` is scored and its ``score`` is the clean
            point, so the clean images are not run again.

    Returns:
        float32 curves ``[B, n + 1]``.
    """
    return _causal_update(
        "insertion", model, images, heatmaps, target, step=step, n_steps=n_steps, substrate=substrate, preprocess=preprocess,
        output=output, batch_size=batch_size, forward=forward, autocast_dtype=autocast_dtype, clean=clean,
    )


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
    clean: Clean | None = None,
) -> Tensor:
    """RISE deletion curves: pixels of ``images`` replaced by ``substrate(images)``, most salient first.

    Same arguments as :func:`insertion_curves`, with the roles of image and substrate swapped; the
    default substrate is ``Constant(0.0)`` (RISE's black). The first point is the clean image, the
    last the substrate (with ``Constant``: one forward for the whole batch).

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
    return _causal_update(
        "deletion", model, images, heatmaps, target, step=step, n_steps=n_steps, substrate=substrate, preprocess=preprocess,
        output=output, batch_size=batch_size, forward=forward, autocast_dtype=autocast_dtype, clean=clean,
    )


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


def _causal_compute(aucs: Tensor, reduction: Reduction) -> Tensor:
    """Per-image AUCs ``[B]`` (``"none"``) or their mean in float64, as float32 (``"mean"``; NaN for no image)."""
    return aucs if reduction == "none" else aucs.double().mean().float()


def insertion(
    model: ModelLike, images: Tensor, heatmaps: Tensor, target: TargetLike = None, *, reduction: Reduction = "mean", **kwargs: Any
) -> Tensor:
    """Insertion AUC: the mean over images (float32 scalar) or, with ``reduction="none"``, per image ``[B]``.

    Keyword arguments as :func:`insertion_curves`; ``Insertion`` accumulates the same values.

    Example:
        >>> import torch
        >>> from pami_lightning import Constant, ModelCall
        >>> from pami_lightning.metrics.functional import insertion
        >>> model = ModelCall(lambda x: torch.stack([x.flatten(1).sum(1) - 5, torch.zeros(len(x))], dim=1), modules=())
        >>> images = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]], [[[4.0, 3.0], [2.0, 1.0]]]])
        >>> heatmaps = torch.tensor([[[0.1, 0.4], [0.3, 0.2]]]).expand(2, 2, 2)
        >>> insertion(model, images, heatmaps, step=1, substrate=Constant(0.0), reduction="none")
        tensor([0.5074, 0.4626])
    """
    check_reduction(reduction)
    return _causal_compute(curve_auc(insertion_curves(model, images, heatmaps, target, **kwargs)), reduction)


def deletion(
    model: ModelLike, images: Tensor, heatmaps: Tensor, target: TargetLike = None, *, reduction: Reduction = "mean", **kwargs: Any
) -> Tensor:
    """Deletion AUC (lower is better): the mean over images (float32 scalar) or per image ``[B]`` (``reduction="none"``).

    Keyword arguments as :func:`deletion_curves`; ``Deletion`` accumulates the same values.
    """
    check_reduction(reduction)
    return _causal_compute(curve_auc(deletion_curves(model, images, heatmaps, target, **kwargs)), reduction)
