"""Captum's Occlusion and FeatureAblation as :class:`~pami_lightning.evaluation.Explainer` s (captum is optional).

Both score what PAMI scores: the model runs through the same :class:`~pami_lightning.ModelCall`
(preprocess, eval mode, autocast) and Captum attributes its score of the target class (by default
the softmax probability), not the raw logit. Captum is imported when an adapter is built, so the
package works without it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, Union

import numpy as np
import torch
from torch import Tensor

from ..forward import ModelCall
from ..maskers import Masker
from .explainers import check_method_name

__all__ = ["CaptumOcclusion", "CaptumFeatureAblation", "grid_features", "slic_features"]

BaselineLike = Union[float, Masker]
FeaturesLike = Union[Literal["grid", "slic"], Callable[[Tensor], Tensor]]


def _captum_attr() -> Any:
    try:
        import captum.attr
    except ImportError:
        raise ImportError("the Captum adapters need captum: pip install captum") from None
    return captum.attr


def _as_call(model: Callable[..., Any] | ModelCall) -> ModelCall:
    return model if isinstance(model, ModelCall) else ModelCall(model)


class _CaptumBase:
    """What both adapters share: the forward function Captum calls, pass counting, baselines."""

    name: str

    def __init__(self, model: Callable[..., Any] | ModelCall, baselines: BaselineLike, perturbations_per_eval: int | None) -> None:
        _captum_attr()  # fail here, not on the first batch, when captum is missing
        self.call = _as_call(model)
        if not isinstance(baselines, (int, float, Masker)) or isinstance(baselines, bool):
            raise TypeError(f"baselines must be a number (a constant image) or a Masker such as Blur(49, 100); got {type(baselines).__name__}")
        self.baselines = baselines
        if perturbations_per_eval is not None and perturbations_per_eval < 1:
            raise ValueError(f"perturbations_per_eval must be None (fill the model call's batch_size) or >= 1; got {perturbations_per_eval}")
        self.perturbations_per_eval = perturbations_per_eval
        self._counted = 0
        self._last = 0.0

    def _probabilities(self, x: Tensor, target: Tensor) -> Tensor:
        # Captum repeats additional_forward_args along with the perturbed inputs: one target per row.
        outputs = self.call(x)
        self._counted += x.shape[0]
        return self.call.score(outputs, target.to(x.device))

    def _per_eval(self, b: int) -> int:
        return self.perturbations_per_eval or max(1, self.call.batch_size // max(b, 1))

    def _baseline(self, images: Tensor) -> Tensor | float:
        return self.baselines.substrate(images) if isinstance(self.baselines, Masker) else float(self.baselines)

    def _run(self, method: Any, images: Tensor, target: Tensor, **kwargs: Any) -> Tensor:
        self._counted = 0
        with self.call.running():
            attributions = method.attribute(images, baselines=self._baseline(images), additional_forward_args=(target,),
                                            perturbations_per_eval=self._per_eval(images.shape[0]), **kwargs)
        self._last = self._counted / max(images.shape[0], 1)
        # Channels summed: Captum's own convention for one map per pixel.
        return attributions.sum(dim=1).float()

    def passes(self, images: Tensor) -> float:
        """Forward passes per image of the last call (Captum runs every perturbation for the whole batch)."""
        return self._last


class CaptumOcclusion(_CaptumBase):
    """``captum.attr.Occlusion``: the score drop when a sliding window is replaced by ``baselines``.

    Args:
        model: the model (or a :class:`~pami_lightning.ModelCall`, whose settings are used).
        window: the occluding square's side in pixels (default 16); all channels at once.
        stride: the window's step in pixels (default 8).
        baselines: what fills the window: a number (default 0.0, Captum's) or a
            :class:`~pami_lightning.Masker` such as ``Blur(49, 100)`` (PAMI's substrate).
        perturbations_per_eval: occluded copies per image in one forward (default: enough to fill
            the model call's ``batch_size``).
        name: default ``"occlusion"``.
    """

    def __init__(self, model: Callable[..., Any] | ModelCall, *, window: int = 16, stride: int = 8, baselines: BaselineLike = 0.0,
                 perturbations_per_eval: int | None = None, name: str = "occlusion") -> None:
        super().__init__(model, baselines, perturbations_per_eval)
        if window < 1 or stride < 1:
            raise ValueError(f"window and stride must be >= 1 pixel; got window={window}, stride={stride}")
        self.window, self.stride = int(window), int(stride)
        self.name = check_method_name(name)

    def __call__(self, images: Tensor, target: Tensor) -> Tensor:
        c = images.shape[1]
        # Built per call: the adapter then pickles (ddp_spawn) without Captum objects in it.
        return self._run(_captum_attr().Occlusion(self._probabilities), images, target, sliding_window_shapes=(c, self.window, self.window), strides=(c, self.stride, self.stride))

    def __repr__(self) -> str:
        return f"CaptumOcclusion(window={self.window}, stride={self.stride}, baselines={self.baselines!r}, name={self.name!r})"


def grid_features(images: Tensor, cell: int) -> Tensor:
    """Square cells of ``cell`` pixels as a feature mask: long ``[B, H, W]``, row-major cell ids."""
    h, w = images.shape[-2:]
    cols = -(-w // cell)
    ys = torch.arange(h, device=images.device) // cell
    xs = torch.arange(w, device=images.device) // cell
    return (ys[:, None] * cols + xs[None, :]).expand(images.shape[0], h, w)


def slic_features(images: Tensor, n_segments: int = 50, compactness: float = 20.0) -> Tensor:
    """SLIC superpixels of each image (scikit-image, on ``uint8(255 x)``): long ``[B, H, W]``, labels ``0..K-1``."""
    from skimage.segmentation import slic

    from ..partitions.base import consecutive_labels

    pixels = (images.detach().float().clamp(0, 1) * 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    labels = [consecutive_labels(np.asarray(slic(p, n_segments=n_segments, compactness=compactness, start_label=0))) for p in pixels]
    return torch.from_numpy(np.stack(labels)).long().to(images.device) if labels else torch.zeros(0, *images.shape[-2:], dtype=torch.long)


class CaptumFeatureAblation(_CaptumBase):
    """``captum.attr.FeatureAblation`` over a feature mask: each feature (a grid cell or a superpixel) ablated in turn.

    Captum ablates, for every image of a batch, as many features as the batch's largest mask has:
    per-image superpixel counts make an image's cost (``passes``) depend on its batch.

    Args:
        model: the model (or a :class:`~pami_lightning.ModelCall`).
        features: ``"grid"`` (default: square cells of ``cell`` px), ``"slic"`` (SLIC superpixels,
            ``n_segments``) or a callable ``images [B, 3, H, W] -> long [B, H, W]`` feature ids ``0..K-1``.
        cell: grid cell side in pixels (default 16).
        n_segments: SLIC's target number of superpixels (default 50).
        baselines: the ablated value: a number (default 0.0) or a :class:`~pami_lightning.Masker`.
        perturbations_per_eval: ablated copies per image in one forward (default: fill ``batch_size``).
        name: default ``"feature_ablation"``.
    """

    def __init__(self, model: Callable[..., Any] | ModelCall, *, features: FeaturesLike = "grid", cell: int = 16, n_segments: int = 50,
                 baselines: BaselineLike = 0.0, perturbations_per_eval: int | None = None, name: str = "feature_ablation") -> None:
        super().__init__(model, baselines, perturbations_per_eval)
        if features not in ("grid", "slic") and not callable(features):
            raise ValueError(f'features must be "grid", "slic" or a callable images -> long [B, H, W]; got {features!r}')
        if cell < 1 or n_segments < 1:
            raise ValueError(f"cell and n_segments must be >= 1; got cell={cell}, n_segments={n_segments}")
        self.features, self.cell, self.n_segments = features, int(cell), int(n_segments)
        self.name = check_method_name(name)

    def feature_mask(self, images: Tensor) -> Tensor:
        """The feature ids ``[B, H, W]`` (long) of ``images``."""
        if self.features == "grid":
            return grid_features(images, self.cell)
        if self.features == "slic":
            return slic_features(images, self.n_segments)
        assert callable(self.features)
        mask = self.features(images)
        if not isinstance(mask, Tensor) or mask.shape != (images.shape[0], *images.shape[-2:]) or mask.is_floating_point():
            got = f"{mask.dtype} {list(mask.shape)}" if isinstance(mask, Tensor) else type(mask).__name__
            raise ValueError(f"features(images) must return integer feature ids [B, H, W] = {[images.shape[0], *images.shape[-2:]]}; got {got}")
        return mask.long().to(images.device)

    def __call__(self, images: Tensor, target: Tensor) -> Tensor:
        return self._run(_captum_attr().FeatureAblation(self._probabilities), images, target, feature_mask=self.feature_mask(images)[:, None])

    def __repr__(self) -> str:
        what = self.features if isinstance(self.features, str) else getattr(self.features, "__qualname__", "callable")
        return f"CaptumFeatureAblation(features={what!r}, cell={self.cell}, n_segments={self.n_segments}, baselines={self.baselines!r}, name={self.name!r})"
