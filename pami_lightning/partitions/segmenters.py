"""The segmenters of Strategy II: a registry of ``fn(image uint8 [H, W, 3], **params) -> labels [H, W]``,
the four of the paper's Table 3 (felzenszwalb, SLIC, SEEDS with its safe domain, watershed), the named
ensembles and how one setting is read."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any, Union

import numpy as np

__all__ = ["PRESETS", "SEGMENTERS", "Segmenter", "SettingSpec", "register_segmenter", "resolve_setting", "seeds_supported", "unsupported"]

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


def _seeds_problem(height: int, width: int, num_superpixels: int, num_levels: int) -> str | None:
    """Why OpenCV's SEEDS cannot segment a ``height x width`` image with these settings, or None when it can.

    This follows ``SuperpixelSEEDSImpl::initialize`` (opencv_contrib ``ximgproc/src/seeds.cpp``), in its
    float32 arithmetic: SEEDS lays ``rows = int(sqrt(n * H / W))`` by ``cols = rows * W // H`` initial
    superpixels, takes the most levels ``L <= num_levels`` whose finest blocks ``W / cols / 2**(L-1)``
    by ``H / rows / 2**(L-1)`` are at least a pixel, and builds a block grid ``(W // ceil(block_w)) x
    (H // ceil(block_h))`` that halves at each level up to the top one. Outside the domain below it
    loops forever (no ``L >= 1`` fits) or reads and writes out of bounds, which kills the process
    with SIGSEGV: with ``rows`` or ``cols`` 0 the block size is infinite and the grid empty, with one
    level (``L == 1``) the top blocks' parents are never initialised, and an empty top grid has no
    superpixel to hold the pixels. Probed with OpenCV 5.0 in forked processes (15,736 runs: every
    size up to 40x40 and thin ones up to 8x1000 / 1000x8 with 10, 20 and 30 superpixels and 5
    levels, plus 1,000 random sizes with 2-6 levels and up to 50 superpixels): all 5,025 accepted
    sizes ran and gave valid labels; every rejected one hung or died, except with one level, where
    47 of 460 ran by chance on uninitialised memory and the rest died or gave out-of-range labels.
    """
    f32 = np.float32
    n, levels = max(int(num_superpixels), 10), max(int(num_levels), 2)  # SEEDS's own clamps
    rows = int(np.sqrt(f32(n) * f32(height) / f32(width)))
    cols = rows * width // height
    if rows == 0 or cols == 0:
        return f"its grid of initial superpixels is {cols} x {rows} (the image is too thin)"
    for level in range(levels, 0, -1):
        block_w = f32(width) / f32(cols) / f32(1 << (level - 1))
        block_h = f32(height) / f32(rows) / f32(1 << (level - 1))
        if block_w >= 1 and block_h >= 1:
            break
    else:
        return f"its {cols} x {rows} initial superpixels are smaller than a pixel (SEEDS would loop forever)"
    if level == 1:
        return "it would run with a single block level, whose labels it never initialises"
    top_w, top_h = (width // int(np.ceil(block_w))) >> (level - 1), (height // int(np.ceil(block_h))) >> (level - 1)
    if top_w == 0 or top_h == 0:
        return f"its grid of superpixels at the top level is {top_w} x {top_h}"
    return None


def seeds_supported(height: int, width: int, num_superpixels: int = 20, num_levels: int = 5) -> bool:
    """Whether OpenCV's SEEDS can segment a ``height x width`` image without hanging or crashing the process.

    OpenCV's SEEDS does not check the image size: on small or thin images it loops forever or dies
    with SIGSEGV (no Python exception). The rule mirrors its grid set-up (see ``_seeds_problem``)
    and was checked by probing sizes in subprocesses. With 5 levels, every square image from 6x6
    (10 superpixels), 8x8 (20) or 10x10 (30) up is supported; an image whose long side is more than
    ``num_superpixels`` times its short side never is (2x100, 64x3); for other shapes, ask.

    Args:
        height, width: image size in pixels.
        num_superpixels: SEEDS's ``num_superpixels`` (default 20; OpenCV raises values under 10 to 10).
        num_levels: SEEDS's ``num_levels`` (default 5; OpenCV raises values under 2 to 2).

    Example:
        >>> from pami_lightning.partitions.segmenters import seeds_supported
        >>> seeds_supported(224, 224, 30), seeds_supported(8, 8, 30), seeds_supported(4, 200, 10)
        (True, False, False)
    """
    return height >= 1 and width >= 1 and _seeds_problem(height, width, num_superpixels, num_levels) is None


def _seeds_grid_args(params: Mapping[str, Any]) -> tuple[int, int]:
    """``(num_superpixels, num_levels)`` of a SEEDS setting's parameters, with :func:`seeds`'s defaults."""
    args = inspect.signature(seeds).bind(None, **params)
    args.apply_defaults()
    return int(args.arguments["num_superpixels"]), int(args.arguments["num_levels"])


@register_segmenter("seeds")
def seeds(image: np.ndarray, num_superpixels: int = 20, num_levels: int = 5, n_iter: int = 10,
          prior: int = 2, histogram_bins: int = 5, double_step: bool = True) -> np.ndarray:
    """OpenCV contrib's SEEDS superpixels; a ValueError, not a crash, on sizes it cannot segment (:func:`seeds_supported`)."""
    import cv2

    if not hasattr(cv2, "ximgproc"):
        raise ImportError("SEEDS needs OpenCV contrib: pip install opencv-contrib-python-headless (and uninstall opencv-python)")
    h, w, c = image.shape
    problem = _seeds_problem(h, w, num_superpixels, num_levels) if h and w else "the image is empty"
    if problem is not None:
        # Checked here because OpenCV would hang or kill the process (SIGSEGV) instead of raising.
        raise ValueError(f"SEEDS (num_superpixels={num_superpixels}, num_levels={num_levels}) cannot segment a {h}x{w} "
                         f"image: {problem}; use a larger image, fewer superpixels or levels, or another segmenter (e.g. slic)")
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


#: One segmentation setting as a config file writes it: a registered segmenter's name (with its
#: default parameters), a ``(name, params)`` pair, or a mapping ``{"segmenter": name, "params": {...}}``.
SettingSpec = Union[str, tuple[str, dict[str, Any]], Mapping[str, Any]]

#: Named ensembles, given as ``Superpixels(settings=name)``; ``"paper"`` is the paper's Table 3.
PRESETS: dict[str, list[tuple[str, dict[str, Any]]]] = {
    "paper": (
        [("felzenszwalb", {"scale": s, "sigma": 0.8, "min_size": 784}) for s in (250, 200, 150, 100, 70, 50)]
        + [("slic", {"n_segments": n, "compactness": 20}) for n in (10, 20, 30, 40, 50, 60, 70, 80)]
        + [("seeds", {"num_superpixels": n, "num_levels": 5, "n_iter": 10}) for n in (10, 20, 30)]
        + [("watershed", {"markers": m, "compactness": 0.0001}) for m in (10, 20, 30)]
    ),
}


def resolve_setting(spec: Any) -> tuple[Segmenter, dict[str, Any], str]:
    """``(fn, params, name)`` of one setting: a name or callable, a ``(segmenter, params)`` pair, or a mapping."""
    if isinstance(spec, Mapping):
        if "segmenter" not in spec or set(spec) - {"segmenter", "params"}:
            raise ValueError(f'a setting mapping holds "segmenter" and optionally "params", e.g. {{"segmenter": "slic", '
                             f'"params": {{"n_segments": 50}}}}; got keys {sorted(map(str, spec))} — a lone (name, params) '
                             "pair must be in a list: Superpixels([(name, params)])")
        segmenter, params = spec["segmenter"], spec.get("params") or {}
    elif isinstance(spec, (tuple, list)):
        if len(spec) != 2 or not isinstance(spec[1], Mapping):
            raise ValueError(f"a setting pair is (segmenter, params dict), e.g. ('slic', {{'n_segments': 50}}); got {spec!r}")
        segmenter, params = spec
    else:
        segmenter, params = spec, {}
    if isinstance(segmenter, str):
        if segmenter not in SEGMENTERS:
            raise ValueError(f"unknown segmenter '{segmenter}'; registered: {sorted(SEGMENTERS)} — or pass a callable, "
                             "or register yours with register_segmenter (a name can be written in a config file)")
        name, fn = segmenter, SEGMENTERS[segmenter]
    elif callable(segmenter):
        name, fn = getattr(segmenter, "__name__", repr(segmenter)), segmenter
    else:
        raise TypeError(f"a segmenter is a registered name or a callable; got {type(segmenter).__name__}")
    params = dict(params)
    try:  # a misspelt parameter (from a config file, say) fails here, not in the middle of a fit
        inspect.signature(fn).bind(None, **params)
    except TypeError as exc:
        raise ValueError(f"segmenter '{name}' does not take {sorted(params)}: {exc}") from None
    except ValueError:  # a builtin without a signature: checked when it runs
        pass
    return fn, params, name


def unsupported(fn: Segmenter, params: Mapping[str, Any], height: int, width: int) -> str | None:
    """How setting ``(fn, params)`` is named when it cannot segment ``height x width`` images (SEEDS
    outside :func:`seeds_supported`); ``None`` when it can."""
    if fn is not seeds:
        return None
    num_superpixels, num_levels = _seeds_grid_args(params)
    if seeds_supported(height, width, num_superpixels, num_levels):
        return None
    return f"seeds(num_superpixels={num_superpixels}, num_levels={num_levels})"
