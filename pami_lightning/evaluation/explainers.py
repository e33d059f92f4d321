"""The :class:`Explainer` protocol and its adapters: PAMI, the Random and Center baselines, any callable.

Every method of a comparison is called the same way, ``explainer(images [B, 3, H, W], target [B])
-> maps [B, H, W]``, so that one runner scores all of them with the same code on the same images.
Captum's Occlusion and FeatureAblation adapters live in :mod:`pami_lightning.evaluation.captum`.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any, Protocol, Union, runtime_checkable

import numpy as np
import torch
from torch import Tensor

from .._inputs import Batch, batch_len
from ..explainer import PAMI
from ..forward import ModelCall
from ..partitions.base import Partition, PartsOrFuture
from ..partitions.superpixels import Superpixels

__all__ = [
    "Explainer",
    "ExplainerLike",
    "as_explainer",
    "check_method_name",
    "PAMIExplainer",
    "FunctionExplainer",
    "RandomBaseline",
    "CenterBaseline",
    "CountingCall",
]

#: Method names become folder names of the on-disk layout: letters, digits and ``._+-``.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


@runtime_checkable
class Explainer(Protocol):
    """An explanation method: ``explainer(images, target) -> maps``.

    Attributes:
        name: the method's name in tables and on disk (letters, digits, ``._+-``).

    ``__call__(images, target)``: ``images`` float ``[B, 3, H, W]`` in pixel space (``[0, 1]``, the
    model's preprocess is the explainer's business), ``target`` long ``[B]`` (the class explained);
    returns float maps ``[B, H, W]`` (any other ``[B, h, w]`` is resized bilinearly by the scoring),
    higher = more important, on any device.

    Optional members the runner uses when present:

    - ``passes(images) -> int | Tensor``: forward passes per image spent on the last call on
      ``images`` (an int for all, or ``[B]``), for the table's ``passes`` column (empty without it).
    - ``needs_index = True``: the call also gets ``index=`` (long ``[B]``, the samples' dataset
      indices), for methods that must not depend on how the dataset is sharded (a seed per sample).
    """

    name: str

    def __call__(self, images: Tensor, target: Tensor) -> Tensor: ...


#: What ``ExplanationModule`` accepts as a method: an :class:`Explainer`, a :class:`~pami_lightning.PAMI`, or
#: a function ``(images [B, C, H, W], target [B]) -> maps [B, H, W]``.
ExplainerLike = Union[Explainer, PAMI, Callable[[Tensor, Tensor], Tensor]]


def check_method_name(name: object) -> str:
    """``name`` if it can name a method on disk, else a ValueError saying what to change."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"method name {name!r} must start with a letter or digit and hold only letters, digits and ._+- (it names folders of the output)")
    return name


def as_explainer(obj: ExplainerLike, name: str | None = None) -> Explainer:
    """An :class:`Explainer` from a PAMI instance, an explainer, or a callable ``(images, target) -> maps``.

    Args:
        obj: a :class:`~pami_lightning.PAMI` (wrapped in :class:`PAMIExplainer`), an object with
            ``name`` and ``__call__`` (kept, renamed to ``name`` if given), or any callable.
        name: the method's name (default: the explainer's own; a callable's ``__name__``).
    """
    if isinstance(obj, PAMI):
        return PAMIExplainer(obj, name=name)
    if isinstance(obj, Explainer) and not isinstance(obj, type):
        if name is not None and name != obj.name:
            obj = copy.copy(obj)
            obj.name = check_method_name(name)
        check_method_name(obj.name)
        return obj
    if callable(obj):
        return FunctionExplainer(obj, name=name)
    raise TypeError(f"an explainer is a PAMI, an Explainer (name + __call__(images, target) -> maps) or a callable; got {type(obj).__name__}")


class CountingCall(ModelCall):
    """A copy of a :class:`~pami_lightning.ModelCall` that counts the inputs it runs (``passes``)."""

    def __init__(self, call: ModelCall) -> None:
        super().__init__(call.model, forward=call.forward, preprocess=call.preprocess, output=call.output, autocast_dtype=call.autocast_dtype,
                         batch_size=call.batch_size, inference_mode=call.inference_mode, modules=call.modules)
        self.passes = 0

    def __call__(self, batch: Batch) -> Any:
        outputs = super().__call__(batch)
        self.passes += batch_len(batch)
        return outputs


class _RecordingPartition(Partition):
    """A partition that records the groups each ``parts()`` call returns, so passes are counted per image."""

    def __init__(self, inner: Partition) -> None:
        self.inner = inner
        self.spatial_dims = inner.spatial_dims
        self.content_aware = inner.content_aware
        self.channel_axis = inner.channel_axis
        self.calls: list[tuple[bool, Sequence[PartsOrFuture]]] = []

    def parts(self, x: Tensor, *, guide: Tensor | None = None, device: torch.device | str | None = None, executor: Any = None) -> Sequence[PartsOrFuture]:
        groups = self.inner.parts(x, guide=guide, device=device, executor=executor)
        self.calls.append((guide is not None, groups))
        return groups

    def keep(self, x: Any) -> Tensor | None:
        return self.inner.keep(x)

    def check_input(self, inputs: Any, name: str = "inputs", batched: bool = True) -> None:
        self.inner.check_input(inputs, name, batched)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def __repr__(self) -> str:
        return repr(self.inner)


def _count(groups: Sequence[PartsOrFuture]) -> int:
    return sum(len(g.result() if isinstance(g, Future) else g) for g in groups)


def _per_image(calls: list[tuple[bool, Sequence[PartsOrFuture]]], b: int, views: int, total: int) -> Tensor:
    """Forward passes per image ``[B]`` from the recorded ``parts()`` calls; the batch mean if they do not add up.

    The engine asks for the parts of each view of each input in order (input-major), in run 1 and
    again, for the views that had parts, in run 2 (``second_run``). When the recorded parts do not
    sum to the passes counted, the split is unknown and every image gets the batch mean.
    """
    first = [_count(g) for guided, g in calls if not guided]
    second = [_count(g) for guided, g in calls if guided]
    if len(first) == b * views:
        per = torch.tensor(first, dtype=torch.float64).view(b, views)
        owners = [i // views for i, n in enumerate(first) if n > 0]
        if not second or len(owners) == len(second):
            for owner, n in zip(owners if second else [], second, strict=True):
                per[owner, 0] += n
            counts = per.sum(dim=1)
            if int(counts.sum()) == total:
                return counts
    return torch.full((b,), total / max(b, 1), dtype=torch.float64)


def _pami_name(pami: PAMI) -> str:
    if isinstance(pami.partition, Superpixels):
        return "PAMI-II"
    return "PAMI-I" if pami.partition.channel_axis else "PAMI"


class PAMIExplainer:
    """A :class:`~pami_lightning.PAMI` instance as an :class:`Explainer` (strategy I, II, or any partition).

    ``passes`` is exact per image: the forward passes are counted and split by the parts each image
    (and view, and second run) had — Superpixels give each image its own count.

    Args:
        pami: the explainer; its model call (preprocess, output, autocast, batch size) is used as is.
        name: default ``"PAMI-II"`` for :class:`~pami_lightning.Superpixels`, else ``"PAMI-I"``.
    """

    def __init__(self, pami: PAMI, name: str | None = None) -> None:
        if not isinstance(pami, PAMI):
            raise TypeError(f"PAMIExplainer wraps a PAMI instance; got {type(pami).__name__}")
        self.pami = pami
        self.name = check_method_name(name if name is not None else _pami_name(pami))
        self._passes: Tensor | None = None

    def __call__(self, images: Tensor, target: Tensor) -> Tensor:
        # A shallow copy with a counting call and a recording partition: the user's PAMI (and the
        # partition's caches, which the proxy shares) stays as it is.
        runner = copy.copy(self.pami)
        recorder = _RecordingPartition(self.pami.partition)
        counter = CountingCall(self.pami.call)
        runner.partition, runner.call = recorder, counter
        runner.progress = False  # the trainer's progress bar reports the run, not one bar per batch
        maps = runner.explain(images, target)
        views = len(self.pami.shifts) if self.pami.shifts else 1
        self._passes = _per_image(recorder.calls, images.shape[0], views, counter.passes)
        return maps

    def passes(self, images: Tensor) -> Tensor:
        """Forward passes per image ``[B]`` of the last call (float64; whole numbers unless the split was unknown)."""
        if self._passes is None or self._passes.shape[0] != images.shape[0]:
            raise RuntimeError("passes() reports the last call: explain these images first")
        return self._passes

    def __repr__(self) -> str:
        p = self.pami
        extra = ", second_run=True" if p.second_run else ""
        extra += f", shifts={len(p.shifts)}" if p.shifts else ""
        return f"PAMIExplainer({p.partition!r}, {p.masker!r}{extra}, name={self.name!r})"


class FunctionExplainer:
    """A user's callable ``fn(images [B, 3, H, W], target [B]) -> maps [B, H, W]`` as an :class:`Explainer`.

    Args:
        fn: the method. A map ``[B, 1, H, W]`` is squeezed; anything else but ``[B, h, w]`` is an error.
        name: default ``fn.__name__``.
        passes: forward passes per image, if known (an int, or ``callable(images) -> int | [B]``).
    """

    def __init__(self, fn: Callable[[Tensor, Tensor], Tensor], name: str | None = None, passes: int | Callable[[Tensor], Any] | None = None) -> None:
        if not callable(fn):
            raise TypeError(f"fn must be a callable (images, target) -> maps; got {type(fn).__name__}")
        self.fn = fn
        self.name = check_method_name(name if name is not None else getattr(fn, "__name__", type(fn).__name__))
        self._passes = passes

    def __call__(self, images: Tensor, target: Tensor) -> Tensor:
        maps = self.fn(images, target)
        if isinstance(maps, Tensor) and maps.ndim == 4 and maps.shape[1] == 1:
            maps = maps[:, 0]
        if not isinstance(maps, Tensor) or maps.ndim != 3 or maps.shape[0] != images.shape[0]:
            got = list(maps.shape) if isinstance(maps, Tensor) else type(maps).__name__
            raise ValueError(f"explainer {self.name!r} returned {got} for {images.shape[0]} images; it must return maps [B, H, W] (one map per image)")
        return maps

    def passes(self, images: Tensor) -> Any:
        if self._passes is None:
            return None
        return self._passes(images) if callable(self._passes) else int(self._passes)

    def __repr__(self) -> str:
        return f"FunctionExplainer({getattr(self.fn, '__qualname__', type(self.fn).__name__)}, name={self.name!r})"


def _sample_seed(seed: int, index: int) -> int:
    """A 63-bit seed of ``(seed, index)``: independent streams per sample, whatever the sharding."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1, np.uint64)[0] >> np.uint64(1))


class RandomBaseline:
    """The Random baseline: a map of independent uniform values per pixel, seeded by the sample's dataset index.

    Its maximum is a uniformly random pixel (the pointing game's random baseline) and its pixel
    order a random permutation (insertion / deletion). The same sample gets the same map in any
    batch, on any rank, in a resumed run: the generator of sample ``i`` is seeded from ``(seed, i)``.

    Args:
        seed: the run's seed (default 0).
        name: default ``"random"``.
    """

    needs_index = True

    def __init__(self, seed: int = 0, name: str = "random") -> None:
        self.seed = int(seed)
        self.name = check_method_name(name)

    def __call__(self, images: Tensor, target: Tensor, index: Tensor | None = None) -> Tensor:
        if index is None:
            raise ValueError("RandomBaseline needs the samples' dataset indices: call it as explainer(images, target, index=index [B])")
        h, w = images.shape[-2:]
        maps = [torch.rand(h, w, generator=torch.Generator().manual_seed(_sample_seed(self.seed, int(i)))) for i in index.tolist()]
        return torch.stack(maps).to(images.device) if maps else images.new_zeros(0, h, w)

    def passes(self, images: Tensor) -> int:
        return 0

    def __repr__(self) -> str:
        return f"RandomBaseline(seed={self.seed}, name={self.name!r})"


class CenterBaseline:
    """The Center baseline: a Gaussian centred on pixel ``(H // 2, W // 2)``, the same for every image.

    Its single maximum is that pixel — TorchRay's centre point ``(W/2, H/2)`` for even sizes — so it
    scores :func:`~pami_lightning.metrics.functional.pointing_game_baselines`' ``"center"``.

    Args:
        sigma: the Gaussian's standard deviation as a fraction of the image's smaller side (default 0.25).
        name: default ``"center"``.
    """

    def __init__(self, sigma: float = 0.25, name: str = "center") -> None:
        if not sigma > 0 or not math.isfinite(sigma):
            raise ValueError(f"sigma must be a positive fraction of the image's smaller side; got {sigma}")
        self.sigma = float(sigma)
        self.name = check_method_name(name)

    def __call__(self, images: Tensor, target: Tensor) -> Tensor:
        h, w = images.shape[-2:]
        s = self.sigma * min(h, w)
        ys = torch.arange(h, dtype=torch.float32, device=images.device) - h // 2
        xs = torch.arange(w, dtype=torch.float32, device=images.device) - w // 2
        g = torch.exp(-(ys[:, None] ** 2 + xs[None, :] ** 2) / (2 * s * s))
        return g.expand(images.shape[0], h, w).clone()

    def passes(self, images: Tensor) -> int:
        return 0

    def __repr__(self) -> str:
        return f"CenterBaseline(sigma={self.sigma:g}, name={self.name!r})"
