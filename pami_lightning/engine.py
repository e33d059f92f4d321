"""The batching loop behind :class:`~pami_lightning.PAMI`: mask -> forward -> score -> aggregate.

The masked inputs of every part of every view of every input are packed into full forward batches
of ``batch_size``; each batch is written into one reused buffer (one ``addcmul`` per group slice),
run through the :class:`~pami_lightning.forward.ModelCall` and scored. Scores are kept per group of
parts, and a complete group is spread over its parts at once (Eq. 1's numerator and its coverage),
in float64, by the group's own exact method (prefix sums for windows, a gather for label maps).
Segmentations run ahead in a thread pool while the model runs.
"""

from __future__ import annotations

import math
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ._inputs import Batch, allocate, take
from .forward import ModelCall
from .partitions.base import Parts, PartsOrFuture, Source

__all__ = ["View", "run_views", "Progress"]

@dataclass
class View:
    """One (possibly shifted) view of one input, and the Eq. 1 sums of its parts once run."""

    owner: int  #: index of the input in its batch
    shift: tuple[int, ...]  #: circular shift of the view (all zeros: the input itself)
    source: Source  #: what its masked inputs are blended from
    target: Tensor  #: 0-d long: the class explained
    groups: Sequence[PartsOrFuture]  #: its parts, possibly still being segmented
    heat: Tensor | None = None  #: ``sum_j s_j m_j`` ``[*spatial]`` (float64), None before any part
    cover: Tensor | float = 0.0  #: ``N``: parts covering each position
    bad: Tensor | int = 0  #: count of non-finite scores
    pending: int = field(default=-1)  #: groups not yet aggregated

    def eq1(self) -> Tensor | None:
        """The view's map ``heat / cover`` (0 where no part covers), or None when it has no parts."""
        if self.heat is None:
            return None
        cover = torch.as_tensor(self.cover, dtype=self.heat.dtype, device=self.heat.device)
        return torch.where(cover > 0, self.heat / cover.clamp_min(1), torch.zeros_like(self.heat))


@dataclass
class _Group:
    view: View
    parts: Parts
    scores: Tensor  # [len(parts)] float32
    filled: int = 0


class Progress:
    """Forward passes done: a tqdm bar on a terminal; off a terminal, when asked, a line on stderr every ``every`` s."""

    def __init__(self, show: bool | None, desc: str = "PAMI", every: float = 10.0) -> None:
        tty = sys.stderr.isatty()
        self.bar: Any = None
        self.lines = bool(show) and not tty
        if show is not False and tty:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=0, unit="pass", desc=desc, leave=False)
        self.desc, self.every = desc, every
        self.total = self.done = 0
        self.start = time.perf_counter()
        self.last = -math.inf

    def add_total(self, n: int) -> None:
        self.total += n
        if self.bar is not None:
            self.bar.total = self.total
            self.bar.refresh()

    def update(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.lines and (time.perf_counter() - self.last >= self.every or self.done == self.total):
            self.last = time.perf_counter()
            rate = self.done / max(self.last - self.start, 1e-9)
            eta = (self.total - self.done) / rate
            print(f"{self.desc}: {self.done}/{self.total} forward passes ({100 * self.done / max(self.total, 1):.0f}%), "
                  f"{rate:.0f} passes/s, {eta:.0f} s left", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run_views(
    call: ModelCall,
    views: Iterator[View],
    like: Batch,
    batch_size: int,
    acc_dtype: torch.dtype,
    on_done: Callable[[View], None],
    *,
    given_target: Tensor | None = None,
    lookahead: Callable[[View], int] = lambda view: 2,
    progress: Progress | None = None,
) -> None:
    """Run every part of every view through the model; ``on_done(view)`` once a view's sums are complete.

    Args:
        call: the model call (inside its ``running()`` context).
        views: the views, created lazily (creating one starts its segmentations).
        like: a batch shaped like the inputs, for the masked-input buffer.
        batch_size: masked inputs per forward call.
        acc_dtype: dtype of the sums (float64; float32 where the device has no float64).
        on_done: called with each view once all its parts are aggregated.
        given_target: user-given targets (CPU), checked once against the first outputs.
        lookahead: how many views to keep created ahead of the one running (given the next view).
        progress: where forward passes are reported.
    """
    state = _Run(call, like, batch_size, acc_dtype, on_done, given_target, progress)
    window: deque[View] = deque()
    source = iter(views)
    exhausted = False
    while True:
        while not exhausted and (not window or len(window) < lookahead(window[0])):
            view = next(source, None)
            if view is None:
                exhausted = True
            else:
                view.pending = len(view.groups)
                window.append(view)
        if not window:
            break
        view = window.popleft()
        if not view.groups:
            on_done(view)
        for group in view.groups:
            state.add(view, group.result() if isinstance(group, Future) else group)
    state.flush()


class _Run:
    """The state of one :func:`run_views`: slices waiting for the next batch, and the buffer."""

    def __init__(self, call: ModelCall, like: Batch, batch_size: int, acc_dtype: torch.dtype, on_done: Callable[[View], None],
                 given_target: Tensor | None, progress: Progress | None) -> None:
        self.call, self.like, self.batch_size, self.acc_dtype, self.on_done = call, like, batch_size, acc_dtype, on_done
        self.given_target = given_target
        self.progress = progress
        self.checked = False
        self.buffer: Batch | None = None
        self.slices: list[tuple[_Group, int, int]] = []
        self.filled = 0

    def add(self, view: View, parts: Parts) -> None:
        n = len(parts)
        if n == 0:
            self._finish_group(_Group(view, parts, torch.zeros(0)))
            return
        device = view.target.device
        group = _Group(view, parts, torch.empty(n, dtype=torch.float32, device=device))
        if self.progress is not None:
            self.progress.add_total(n)
        j = 0
        while j < n:
            k = min(n - j, self.batch_size - self.filled)
            self.slices.append((group, j, j + k))
            self.filled, j = self.filled + k, j + k
            if self.filled == self.batch_size:
                self.flush()

    def flush(self) -> None:
        if not self.slices:
            return
        n = self.filled
        if self.buffer is None or _rows(self.buffer) < n:
            # Sized by the work: a huge batch_size for a small job allocates only what it fills.
            self.buffer = allocate(self.like, n)
        batch = take(self.buffer, 0, n)
        row = 0
        for group, a, z in self.slices:
            group.parts.blend(group.view.source, a, z, take(batch, row, row + z - a))
            row += z - a
        outputs = self.call(batch)
        if not self.checked:
            self.checked = True  # the number of outputs is fixed: one check per run
            self.call.check_outputs(outputs, self.given_target)
        if len(self.slices) == 1:
            target = self.slices[0][0].view.target.expand(n)
        else:
            target = torch.cat([group.view.target.expand(z - a) for group, a, z in self.slices])
        scores = self.call.score(outputs, target, noun="masked input")
        row = 0
        for group, a, z in self.slices:
            group.scores[a:z] = scores[row : row + z - a]
            group.filled += z - a
            row += z - a
            if group.filled == len(group.parts):
                self._finish_group(group)
        if self.progress is not None:
            self.progress.update(n)
        self.slices, self.filled = [], 0

    def _finish_group(self, group: _Group) -> None:
        view = group.view
        if len(group.parts):
            heat = group.parts.aggregate(group.scores.to(self.acc_dtype))
            view.heat = heat if view.heat is None else view.heat + heat
            view.cover = view.cover + group.parts.coverage()
            view.bad = view.bad + (~torch.isfinite(group.scores)).sum()
        view.pending -= 1
        if view.pending == 0:
            self.on_done(view)


def _rows(batch: Batch) -> int:
    return next(iter(batch.values())).shape[0] if isinstance(batch, Mapping) else batch.shape[0]
