"""What an explanation costs: its forward passes, counted, shown on the trainer's progress bar and bounded."""

from __future__ import annotations

import sys
from typing import Any, Optional

import lightning.pytorch as pl
from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm
from lightning.pytorch.trainer.states import TrainerFn

from .._inputs import Batch, batch_len
from ..explainer import PAMI
from ..forward import ModelCall
from ..partitions.base import Partition
from ..partitions.sliding_window import SlidingWindow

__all__ = ["CountedCall", "PassesBar", "expected_passes", "fit_to_budget", "windows_per_sample", "with_window_budget"]


class CountedCall(ModelCall):
    """The explainer's model call, counting the inputs it runs: every forward pass of the callback goes through it.

    Built from ``call`` with ``inference_mode=False``: the model calls keep the trainer's own
    grad-free context (``no_grad`` inside fit, where a tensor the model caches under inference mode
    would break the next training step; ``validate()``'s inference mode stays inference mode).
    """

    def __init__(self, call: ModelCall) -> None:
        super().__init__(call.model, forward=call.forward, preprocess=call.preprocess, output=call.output, autocast_dtype=call.autocast_dtype,
                         batch_size=call.batch_size, inference_mode=False, modules=call.modules)
        self.passes = 0  #: inputs run so far
        self.bar: Optional[PassesBar] = None  #: where passes are shown while an explanation runs

    def __call__(self, batch: Batch) -> Any:
        outputs = super().__call__(batch)
        n = batch_len(batch)
        self.passes += n
        if self.bar is not None:
            self.bar.update(n)
        return outputs


class PassesBar:
    """The explanation's forward passes on the trainer's progress bar, on global rank zero.

    A task of a ``RichProgressBar``; under a ``TQDMProgressBar`` a tqdm bar in its style, below its
    validation bar (which would otherwise sit at 100% while the callback works); a plain tqdm bar
    under another progress bar callback; nothing when the trainer shows none.
    """

    def __init__(self, trainer: pl.Trainer, total: Optional[int], desc: str) -> None:
        self._tqdm: Any = None
        self._rich: Any = None
        bar = trainer.progress_bar_callback
        # is_enabled: declared by Lightning's two bars, not by the ProgressBar base class.
        if not trainer.is_global_zero or bar is None or not getattr(bar, "is_enabled", True):
            return
        if isinstance(bar, RichProgressBar):
            if bar.progress is not None:
                self._rich = (bar.progress, bar.progress.add_task(desc, total=float(total) if total else float("inf")))
            return
        position, bar_format = 0, None
        if isinstance(bar, TQDMProgressBar):
            # Lightning's main bar (fit only) and its validation bar sit above.
            position = 2 * bar.process_position + (trainer.state.fn == TrainerFn.FITTING) + 1
            bar_format = bar.BAR_FORMAT
        self._tqdm = Tqdm(desc=desc, total=total, unit="pass", position=position, leave=False, dynamic_ncols=True, file=sys.stdout, bar_format=bar_format)

    def update(self, n: int) -> None:
        if self._tqdm is not None:
            self._tqdm.update(n)
        elif self._rich is not None:
            progress, task = self._rich
            progress.update(task, advance=n)

    def close(self) -> None:
        if self._tqdm is not None:
            self._tqdm.close()
        elif self._rich is not None:
            progress, task = self._rich
            progress.remove_task(task)


def expected_passes(explainer: PAMI, n: int, spatial: tuple[int, ...], causal: int) -> Optional[int]:
    """Forward passes of explaining ``n`` samples and scoring them, at most; None when the part count is only known once run.

    Args:
        explainer: the callback's PAMI.
        n: number of samples.
        spatial: their spatial size.
        causal: forward passes of the insertion / deletion curves of one sample.
    """
    if not isinstance(explainer.partition, SlidingWindow):
        return None  # superpixels and words: as many parts as the segmentation finds
    views = len(explainer.shifts or [()])
    return n * (1 + views * explainer.partition.num_parts(spatial) + causal)


def windows_per_sample(max_passes: int, n: int, views: int, causal: int) -> int:
    """Windows per sample that keep one validation's forward passes within ``max_passes``.

    The clean pass and the insertion / deletion curves (``causal`` passes per sample) come first;
    the rest is shared by the ``views`` (shifts) of each sample.
    """
    fixed = n * (1 + causal)
    windows = (max_passes - fixed) // (n * views)
    if windows < 1:
        raise ValueError(
            f"PAMICallback(max_passes={max_passes}) leaves no window to explain {n} samples: their clean predictions and "
            f"insertion / deletion curves alone take {fixed} forward passes; raise max_passes to at least {fixed + n * views}, "
            "explain fewer samples or drop insertion / deletion from metrics"
        )
    return windows


def with_window_budget(partition: Partition, max_parts: int) -> SlidingWindow:
    """A copy of a ``SlidingWindow`` whose stride grows until at most ``max_parts`` windows fit (its own cap kept)."""
    if not isinstance(partition, SlidingWindow):
        raise ValueError(f"max_passes is met by widening the stride of a SlidingWindow; {partition!r} has none — "
                         "pass max_passes=None or a SlidingWindow partition")
    cap = max_parts if partition.max_parts is None else min(max_parts, partition.max_parts)
    return SlidingWindow(partition.radius, partition.stride, partition.shape, partition.spatial_dims, unit=partition.unit, max_parts=cap)


def fit_to_budget(explainer: PAMI, partition: Partition, max_passes: int, n: int, spatial: tuple[int, ...], causal: int) -> str:
    """Give ``explainer`` the copy of ``partition`` with the narrowest stride whose forward passes for
    ``n`` samples of size ``spatial`` stay within ``max_passes``; returns what was chosen, in words."""
    views = len(explainer.shifts or [()])
    explainer.partition = with_window_budget(partition, windows_per_sample(max_passes, n, views, causal))
    radius, stride = explainer.partition.resolve(spatial)
    total = expected_passes(explainer, n, spatial, causal)
    return (f"windows of radius {radius} px at stride {stride} px, {explainer.partition.num_parts(spatial)} per sample, for {n} samples "
            f"of {'x'.join(map(str, spatial))}: at most {total} forward passes per explanation")
