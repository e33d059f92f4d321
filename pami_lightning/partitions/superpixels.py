"""Strategy II of the paper: pre-segmentation into superpixels, with an ensemble of segmenters."""

from __future__ import annotations

from concurrent.futures import Executor
from typing import Any, Callable, Mapping, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from .base import LabelParts, Partition, PartsOrFuture, consecutive_labels

__all__ = ["Superpixels", "SEGMENTERS", "register_segmenter", "to_uint8_image"]

Segmenter = Callable[..., np.ndarray]
#: Registered segmenters: ``name -> fn(image uint8 [H, W, 3], **params) -> int labels [H, W]``.
SEGMENTERS: dict[str, Segmenter] = {}


def register_segmenter(name: str) -> Callable[[Segmenter], Segmenter]:
    """Register ``fn(image uint8 [H, W, 3], **params) -> int labels [H, W]`` under ``name``."""

    def decorator(fn: Segmenter) -> Segmenter:
        SEGMENTERS[name] = fn
        return fn

    return decorator


@register_segmenter("felzenszwalb")
def felzenszwalb(image: np.ndarray, scale: float = 250, sigma: float = 0.8, min_size: int = 784) -> np.ndarray:
    from skimage.segmentation import felzenszwalb as _felzenszwalb

    return _felzenszwalb(image, scale=scale, sigma=sigma, min_size=min_size)


@register_segmenter("slic")
def slic(image: np.ndarray, n_segments: int = 50, compactness: float = 20) -> np.ndarray:
    from skimage.segmentation import slic as _slic

    return _slic(image, n_segments=n_segments, compactness=compactness)


@register_segmenter("seeds")
def seeds(image: np.ndarray, num_superpixels: int = 20, num_levels: int = 5, n_iter: int = 10,
          prior: int = 2, histogram_bins: int = 5, double_step: bool = True) -> np.ndarray:
    import cv2

    if not hasattr(cv2, "ximgproc"):
        raise ImportError("SEEDS needs OpenCV contrib: pip install opencv-contrib-python-headless (and uninstall opencv-python)")
    h, w, c = image.shape
    # Keywords, not positions: OpenCV 5 inserted `prior` before `histogram_bins`.
    engine = cv2.ximgproc.createSuperpixelSEEDS(
        image_width=w, image_height=h, image_channels=c, num_superpixels=num_superpixels,
        num_levels=num_levels, prior=prior, histogram_bins=histogram_bins, double_step=double_step,
    )
    engine.iterate(np.ascontiguousarray(image), n_iter)
    return engine.getLabels()


@register_segmenter("watershed")
def watershed(image: np.ndarray, markers: int = 10, compactness: float = 0.0001) -> np.ndarray:
    from skimage.color import rgb2gray
    from skimage.filters import sobel
    from skimage.segmentation import watershed as _watershed

    return _watershed(sobel(rgb2gray(image)), markers=markers, compactness=compactness)


def to_uint8_image(x: Tensor) -> np.ndarray:
    """An image ``[C, H, W]`` in ``[0, 1]`` as the segmenters see it: uint8 ``[H, W, 3]``, ``round(255 x)``."""
    if x.shape[0] == 1:
        x = x.expand(3, -1, -1)
    if x.shape[0] != 3:
        raise ValueError(f"superpixel segmenters need 1- or 3-channel images [C, H, W]; got {x.shape[0]} channels")
    return (x.detach().float().cpu() * 255).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()


Setting = Union[str, Segmenter, tuple[Union[str, Segmenter], Mapping[str, Any]]]


class Superpixels(Partition):
    """Superpixels from one or several segmentations (paper §3.2.2, Strategy II).

    Each segmenter sees the image (or, in a second run, the colour-mapped first heatmap) as uint8
    ``[H, W, 3]`` and returns an integer label map ``[H, W]``; every distinct label is one part. With
    several settings, the parts of all segmentations are pooled, so Eq. 1 averages their maps. The
    segmentations run in the engine's thread pool (scikit-image and OpenCV release the GIL) while
    the device runs forward passes.

    Args:
        settings: a list of ``(segmenter, params)`` pairs (or bare segmenters); a segmenter is a
            registered name (``"felzenszwalb"``, ``"slic"``, ``"seeds"``, ``"watershed"``, or one added
            with :func:`register_segmenter`) or any callable ``uint8 [H, W, 3] -> int labels [H, W]``.

    Example:
        >>> import torch
        >>> from pami_lightning import Superpixels
        >>> sp = Superpixels([("slic", {"n_segments": 20, "compactness": 20})])
        >>> masks = sp.masks(torch.rand(3, 64, 64))
        >>> bool(masks.sum(0).eq(1).all())  # one segmentation covers every pixel exactly once
        True
    """

    content_aware = True
    spatial_dims = 2

    def __init__(self, settings: Sequence[Setting]) -> None:
        if isinstance(settings, (str, tuple)) or callable(settings):
            settings = [settings]  # type: ignore[list-item]
        self.settings: list[tuple[Segmenter, dict[str, Any], str]] = []
        for setting in settings:
            segmenter, params = (setting if isinstance(setting, tuple) else (setting, {}))
            if isinstance(segmenter, str):
                if segmenter not in SEGMENTERS:
                    raise ValueError(f"unknown segmenter '{segmenter}'; registered: {sorted(SEGMENTERS)} — or pass a callable")
                name, fn = segmenter, SEGMENTERS[segmenter]
            elif callable(segmenter):
                name, fn = getattr(segmenter, "__name__", repr(segmenter)), segmenter
            else:
                raise TypeError(f"a segmenter is a registered name or a callable; got {type(segmenter).__name__}")
            self.settings.append((fn, dict(params), name))
        if not self.settings:
            raise ValueError("Superpixels needs at least one segmentation setting")

    @classmethod
    def paper(cls) -> "Superpixels":
        """The paper's Table 3 ensemble: 20 segmentations.

        felzenszwalb x6 (scale 250, 200, 150, 100, 70, 50; sigma 0.8; min_size 784), SLIC x8
        (n_segments 10..80; compactness 20), SEEDS x3 (10, 20, 30 superpixels; 5 levels; 10
        iterations), watershed on the Sobel gradient x3 (10, 20, 30 markers; compactness 1e-4).
        """
        return cls(
            [("felzenszwalb", {"scale": s, "sigma": 0.8, "min_size": 784}) for s in (250, 200, 150, 100, 70, 50)]
            + [("slic", {"n_segments": n, "compactness": 20}) for n in (10, 20, 30, 40, 50, 60, 70, 80)]
            + [("seeds", {"num_superpixels": n, "num_levels": 5, "n_iter": 10}) for n in (10, 20, 30)]
            + [("watershed", {"markers": m, "compactness": 0.0001}) for m in (10, 20, 30)]
        )

    def segment(self, image: np.ndarray, index: int) -> np.ndarray:
        """Run setting ``index`` on a uint8 ``[H, W, 3]`` image; consecutive labels ``0..K-1`` (int32)."""
        fn, params, name = self.settings[index]
        labels = np.asarray(fn(image, **params))
        if labels.shape != image.shape[:2]:
            raise ValueError(
                f"segmenter '{name}' returned a label map of shape {list(labels.shape)} for an image of "
                f"{list(image.shape[:2])}; a segmenter maps uint8 [H, W, 3] to int labels [H, W]"
            )
        if not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"segmenter '{name}' returned {labels.dtype} labels; return an integer label map")
        return consecutive_labels(labels)

    def parts(
        self,
        x: Tensor,
        *,
        guide: Tensor | None = None,
        device: torch.device | str | None = None,
        executor: Executor | None = None,
    ) -> list[PartsOrFuture]:
        device = torch.device(device) if device is not None else x.device
        image = to_uint8_image(guide if guide is not None else x)
        pin = device.type == "cuda"

        def run(index: int) -> LabelParts:
            labels = torch.from_numpy(self.segment(image, index))
            return LabelParts(labels.pin_memory() if pin else labels, device)

        if executor is None:
            return [run(i) for i in range(len(self.settings))]
        return [executor.submit(run, i) for i in range(len(self.settings))]

    def __len__(self) -> int:
        return len(self.settings)

    def __repr__(self) -> str:
        return f"Superpixels({[(name, params) for _, params, name in self.settings]})"
