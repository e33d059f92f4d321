"""Strategy II of the paper: pre-segmentation into superpixels, with an ensemble of segmenters
(:mod:`~pami_lightning.partitions.segmenters`), the reference's byte conversions and a label cache."""

from __future__ import annotations

import hashlib
import threading
import warnings
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from concurrent.futures import Executor
from typing import Any, Literal, NamedTuple, Union, cast

import numpy as np
import torch
from torch import Tensor

from .._warnings import user_stacklevel
from .base import LabelParts, Partition, PartsOrFuture, consecutive_labels
from .segmenters import PRESETS, SEGMENTERS, Segmenter, SettingSpec, felzenszwalb, register_segmenter, resolve_setting, seeds, seeds_supported, slic, unsupported, watershed

# The segmenters (now in .segmenters) stay importable from here, their 0.1 path: pickles of a
# Superpixels made by 0.1 name its functions as pami_lightning.partitions.superpixels.<name>.
__all__ = ["CacheInfo", "Superpixels", "colour_guide", "to_uint8_image",
           "SEGMENTERS", "register_segmenter", "seeds_supported", "felzenszwalb", "slic", "seeds", "watershed"]


def to_uint8_image(x: Tensor) -> np.ndarray:
    """An image as the segmenters see it: uint8 ``[H, W, 3]`` (a fresh, C-contiguous array).

    Args:
        x: ``[3, H, W]`` or grey ``[1, H, W]`` (expanded to 3 channels), either float in ``[0, 1]`` or
            uint8. Floats become ``uint8(255 x)`` by truncation, as the reference does (``np.uint8(255 *
            x)``; rounding instead changes the chaotic segmenters' output). The product is taken in
            the input's dtype (float32 or float64; half and bfloat16 go to float32 first) and clamped
            to ``[0, 255]``. uint8 inputs (e.g. :func:`colour_guide`'s guides) pass through unchanged:
            a float round trip ``b / 255 * 255`` may land just under ``b`` and truncate to ``b - 1``.
    """
    if x.ndim != 3:
        raise ValueError(f"superpixel segmenters need one image [C, H, W]; got shape {list(x.shape)}")
    if x.shape[0] == 1:
        x = x.expand(3, -1, -1)
    if x.shape[0] != 3:
        raise ValueError(f"superpixel segmenters need 1- or 3-channel images [C, H, W]; got {x.shape[0]} channels")
    x = x.detach().cpu()
    if x.dtype == torch.uint8:
        out = x
    elif x.is_floating_point():
        if x.dtype not in (torch.float32, torch.float64):
            x = x.float()
        # A float -> uint8 cast truncates toward zero: floor, once clamped to [0, 255].
        out = (x * 255).clamp_(0, 255).to(torch.uint8)
    else:
        raise TypeError(f"superpixel segmenters need float images in [0, 1] or uint8 images; got {x.dtype}")
    # A copy: the caller's uint8 tensor must not be shared with segmenters that edit their input.
    return np.array(out.permute(1, 2, 0).numpy(), order="C")


def colour_guide(maps: Tensor) -> Tensor:
    """Second-run guides: each map coloured with viridis as the reference does, uint8 ``[B, 3, H, W]`` (CPU).

    Per map: ``v = (h - min) / (max - min + 1e-9)`` in float64, colour index ``uint8(255 v)`` (an
    integer 0..255, by truncation — not matplotlib's float lookup ``cmap(v)``, which indexes by
    ``floor(256 v)``), the index's entry of matplotlib's 256-colour ``viridis`` table (RGB floats),
    and bytes ``uint8(255 c)`` by truncation. A constant map gets colour 0 everywhere. Pass one
    guide ``[3, H, W]`` as ``Superpixels.parts(x, guide=...)``: its bytes reach the segmenters unchanged.

    Args:
        maps: heatmaps ``[B, H, W]`` (any real dtype, any device).
    """
    import matplotlib  # here, not at module level: importing matplotlib is slow

    if maps.ndim != 3:
        raise ValueError(f"colour_guide needs heatmaps [B, H, W]; got shape {list(maps.shape)} — use maps[None] for one map")
    if maps.is_complex() or maps.dtype == torch.bool:
        raise TypeError(f"colour_guide needs real-valued heatmaps; got {maps.dtype}")
    h = maps.detach().cpu().double().numpy()
    b = h.shape[0]
    flat = h.reshape(b, -1)
    if flat.shape[1] == 0:
        return torch.zeros(b, 3, *h.shape[1:], dtype=torch.uint8)
    lo = flat.min(axis=1).reshape(b, 1, 1)
    hi = flat.max(axis=1).reshape(b, 1, 1)
    v = (h - lo) / (hi - lo + 1e-9)
    index = (255 * v).astype(np.uint8)  # v in [0, 1): truncation, as np.uint8(255 * v)
    from matplotlib.colors import ListedColormap

    viridis = cast(ListedColormap, matplotlib.colormaps["viridis"])  # the registry is typed Colormap; viridis is a ListedColormap
    table = (255 * np.asarray(viridis.colors, dtype=np.float64)[:, :3]).astype(np.uint8)
    rgb = table[index]  # [B, H, W, 3]
    return torch.from_numpy(np.ascontiguousarray(rgb.transpose(0, 3, 1, 2)))


class CacheInfo(NamedTuple):
    """What :meth:`Superpixels.cache_info` reports (as ``functools.lru_cache``'s ``cache_info()``)."""

    hits: int  #: segmentations served from the cache
    misses: int  #: lookups that found nothing, so the segmenter ran (none with ``cache_mb=0``)
    entries: int  #: label maps held now
    bytes: int  #: their bytes
    max_bytes: int  #: the bound, ``cache_mb`` in bytes (0: no cache)


class _LabelCache:
    """A thread-safe LRU of label maps, bounded by their bytes."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self.hits = self.misses = 0
        self._entries: OrderedDict[Hashable, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> np.ndarray | None:
        with self._lock:
            labels = self._entries.get(key)
            if labels is not None:
                self._entries.move_to_end(key)
                self.hits += 1
            else:
                self.misses += 1
            return labels

    def put(self, key: Hashable, labels: np.ndarray) -> None:
        if labels.nbytes > self.max_bytes:
            return
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self.bytes -= old.nbytes
            self._entries[key] = labels
            self.bytes += labels.nbytes
            while self.bytes > self.max_bytes:
                _, dropped = self._entries.popitem(last=False)
                self.bytes -= dropped.nbytes

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self.bytes = self.hits = self.misses = 0

    def info(self) -> CacheInfo:
        with self._lock:
            return CacheInfo(self.hits, self.misses, len(self._entries), self.bytes, self.max_bytes)


def _compact(labels: np.ndarray) -> np.ndarray:
    """Consecutive labels ``0..K-1`` in int16 when ``K`` allows (half the bytes of int32), else int32."""
    if labels.size and int(labels.max()) <= np.iinfo(np.int16).max:
        return labels.astype(np.int16)
    return labels.astype(np.int32, copy=False)


class Superpixels(Partition):
    """Superpixels from one or several segmentations (paper §3.2.2, Strategy II).

    Each segmenter sees the image (or, in a second run, the colour-mapped first heatmap) as uint8
    ``[H, W, 3]`` and returns an integer label map ``[H, W]``; every distinct label is one part. With
    several settings, the parts of all segmentations are pooled, so Eq. 1 averages their maps. The
    segmentations run in the engine's thread pool (scikit-image and OpenCV release the GIL) while
    the device runs forward passes.

    Each setting gets its own copy of the uint8 image, so a segmenter that edits its input in place
    cannot change what the other settings see.

    SEEDS on small or thin images: OpenCV's SEEDS hangs or kills the process (SIGSEGV) on sizes
    outside :func:`~pami_lightning.partitions.seeds_supported` (e.g. 5x5 with 30 superpixels, 2x100). Its settings are then left
    out for that image size, with a warning once per size: the map is the average of the
    segmentations that ran (the coverage ``N`` counts only them), never a made-up segmentation. When
    no setting is left (SEEDS alone), a ValueError names the size.

    Label maps are cached (least recently used first out, up to ``cache_mb``), keyed by the exact
    uint8 bytes and shape of the image and by the setting: explaining the same images again (the
    training callback does so at every validation) skips the segmentations, which cost ~0.9 s of
    CPU per 224x224 image for the 20 settings of :meth:`paper`. The cache assumes that segmenters
    are deterministic (the same image gives the same labels); pass ``cache_mb=0`` for random ones.

    Args:
        settings: ``"paper"`` (default: the paper's 20 segmentations, see :meth:`paper`) or a list of
            settings, each a registered segmenter's name (``"felzenszwalb"``, ``"slic"``, ``"seeds"``,
            ``"watershed"`` or one added with :func:`~pami_lightning.partitions.register_segmenter`), a ``(name, params)`` pair
            or a mapping ``{"segmenter": name, "params": {...}}``. At run time a segmenter may also be
            any callable ``uint8 [H, W, 3] -> int labels [H, W]`` (bare or in a pair), but a callable
            cannot be written in a config file (LightningCLI's saved ``config.yaml``): register it
            under a name in a module that the config's model imports, and use the name.
        cache_mb: bound of the label-map cache in MiB (default 128: about 64 images of 224x224 with
            the 20 settings of :meth:`paper`, labels stored as int16); 0 disables it.

    Example:
        >>> import torch
        >>> from pami_lightning import Superpixels
        >>> sp = Superpixels([("slic", {"n_segments": 20, "compactness": 20})])
        >>> masks = sp.masks(torch.rand(3, 64, 64))
        >>> bool(masks.sum(0).eq(1).all())  # one segmentation covers every pixel exactly once
        True

        In a LightningCLI config (``settings: paper`` for the paper's ensemble)::

            partition:
              class_path: pami_lightning.Superpixels
              init_args:
                settings:
                  - [slic, {n_segments: 20, compactness: 20}]
                  - {segmenter: seeds, params: {num_superpixels: 10}}
    """

    content_aware = True
    spatial_dims = 2

    def __init__(self, settings: Union[Literal["paper"], Sequence[SettingSpec]] = "paper", *, cache_mb: float = 128) -> None:
        if not 0 <= cache_mb < float("inf"):
            raise ValueError(f"cache_mb must be a finite number >= 0 (0 disables the label cache); got {cache_mb}")
        self.cache_mb = float(cache_mb)
        self._cache = _LabelCache(int(self.cache_mb * 2**20))
        #: The preset's name when built from one (``"paper"``), else None.
        self.preset: str | None = None
        if isinstance(settings, str):
            if settings not in PRESETS:
                raise ValueError(f"settings='{settings}' is not a preset ({', '.join(PRESETS)}); for one segmenter, pass a "
                                 f"list: Superpixels(['{settings}']) or Superpixels([('{settings}', {{...params}})])")
            self.preset, settings = settings, PRESETS[settings]
        elif callable(settings) or not isinstance(settings, Sequence):
            raise TypeError(f"settings is 'paper' or a list of settings; got {type(settings).__name__} — wrap one "
                            "segmenter in a list: Superpixels([segmenter])")
        self.settings: list[tuple[Segmenter, dict[str, Any], str]] = [resolve_setting(spec) for spec in settings]
        if not self.settings:
            raise ValueError("Superpixels needs at least one segmentation setting (or settings='paper')")
        self._left_out: dict[tuple[int, int], list[int]] = {}
        self._warned: set[tuple[int, int]] = set()

    @classmethod
    def paper(cls, *, cache_mb: float = 128) -> Superpixels:
        """The paper's Table 3 ensemble: 20 segmentations; the same as ``Superpixels("paper")``.

        felzenszwalb x6 (scale 250, 200, 150, 100, 70, 50; sigma 0.8; min_size 784), SLIC x8
        (n_segments 10..80; compactness 20), SEEDS x3 (10, 20, 30 superpixels; 5 levels; 10
        iterations), watershed on the Sobel gradient x3 (10, 20, 30 markers; compactness 1e-4).
        ``cache_mb`` as in the constructor (default 128). On images too small or thin for SEEDS
        (see :func:`~pami_lightning.partitions.seeds_supported`, e.g. under 10x10 for 30 superpixels) its settings are left out.
        """
        return cls("paper", cache_mb=cache_mb)

    def left_out(self, height: int, width: int) -> list[int]:
        """Indices of the settings that cannot segment ``height x width`` images (SEEDS outside :func:`~pami_lightning.partitions.seeds_supported`).

        The engine gets no parts from them for such images; see the class notes.
        """
        key = (int(height), int(width))
        if key not in self._left_out:
            self._left_out[key] = [i for i, (fn, params, _) in enumerate(self.settings) if unsupported(fn, params, *key)]
        return self._left_out[key]

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
        """One :class:`LabelParts` per setting (futures of ``executor`` when given).

        Args:
            x: one image ``[C, H, W]`` (``C`` = 1 or 3) in ``[0, 1]``, segmented as ``uint8(255 x)``.
            guide: segmented instead of ``x`` (second run): uint8 ``[3, H, W]`` from
                :func:`colour_guide`, whose bytes the segmenters get unchanged, or a float image in
                ``[0, 1]``, truncated like ``x``. Default: none.
            device: where masks are built (default ``x.device``).
            executor: a thread pool that runs the segmentations; without one they run inline.
        """
        device = torch.device(device) if device is not None else x.device
        if guide is not None and tuple(guide.shape[-2:]) != tuple(x.shape[-2:]):
            raise ValueError(f"guide must be an image [3, H, W] of the input's size {list(x.shape[-2:])}; got {list(guide.shape)}")
        image = to_uint8_image(guide if guide is not None else x)
        skipped = self._check_size(*image.shape[:2])
        pin = device.type == "cuda"
        cache = self._cache if self._cache.max_bytes > 0 else None
        # Hashed once, before any segmenter sees (a copy of) the image.
        digest = hashlib.blake2b(image.data, digest_size=16).digest() if cache is not None else b""

        def run(index: int) -> LabelParts:
            fn, params, _ = self.settings[index]
            # The setting itself is in the key, so a setting edited in place is not served stale labels.
            key = (digest, image.shape, index, fn, repr(sorted(params.items())))
            labels = cache.get(key) if cache is not None else None
            if labels is None:
                labels = _compact(self.segment(image.copy(), index))
                if cache is not None:
                    cache.put(key, labels)
            # The cached array stays private: each group gets its own copy (pinning copies too).
            tensor = torch.from_numpy(labels)
            return LabelParts(tensor.pin_memory() if pin else tensor.clone(), device)

        def nothing(_: int) -> LabelParts:
            # No part (label -1 everywhere): the engine adds neither scores nor coverage from it.
            return LabelParts(torch.full(image.shape[:2], -1, dtype=torch.int16), device)

        indices = range(len(self.settings))
        if executor is None:
            return [nothing(i) if i in skipped else run(i) for i in indices]
        return [nothing(i) if i in skipped else executor.submit(run, i) for i in indices]

    def _check_size(self, height: int, width: int) -> list[int]:
        """The settings left out at this size (warned once per size); a ValueError when none is left."""
        skipped = self.left_out(height, width)
        if not skipped:
            return skipped
        names = ", ".join(str(unsupported(*self.settings[i][:2], height, width)) for i in skipped)
        if len(skipped) == len(self.settings):
            raise ValueError(f"{self!r} cannot segment {height}x{width} images: OpenCV's SEEDS would hang or crash on them "
                             f"({names}); add other segmenters (e.g. ('slic', {{'n_segments': 20}})), use fewer "
                             "superpixels or levels, or resize the images")
        if (height, width) not in self._warned:
            self._warned.add((height, width))
            warnings.warn(f"{self!r}: {names} cannot segment {height}x{width} images (OpenCV's SEEDS would hang or crash "
                          f"on them) and are left out for this size: the map averages the other "
                          f"{len(self.settings) - len(skipped)} segmentations", UserWarning, stacklevel=user_stacklevel())
        return skipped

    def clear_cache(self) -> None:
        """Forget every cached label map (and reset :meth:`cache_info`'s counts)."""
        self._cache.clear()

    def cache_info(self) -> CacheInfo:
        """Hits, misses, entries and bytes of the label-map cache (a copy starts with an empty one).

        Example:
            >>> import torch
            >>> from pami_lightning import Superpixels
            >>> sp = Superpixels([("slic", {"n_segments": 4})])
            >>> image = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(0))
            >>> _ = sp.masks(image); _ = sp.masks(image)
            >>> info = sp.cache_info()
            >>> info.hits, info.misses, info.entries
            (1, 1, 1)
        """
        return self._cache.info()

    def __getstate__(self) -> dict[str, Any]:
        # Copies and pickles (e.g. for spawned processes) start with an empty cache: a lock does not pickle.
        state = self.__dict__.copy()
        state.pop("_cache", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._cache = _LabelCache(int(self.cache_mb * 2**20))

    def __len__(self) -> int:
        return len(self.settings)

    def __repr__(self) -> str:
        cache = f", cache_mb={self.cache_mb:g}" if self.cache_mb != 128 else ""
        settings = f"'{self.preset}'" if self.preset is not None else repr([(name, params) for _, params, name in self.settings])
        return f"Superpixels({settings}{cache})"
