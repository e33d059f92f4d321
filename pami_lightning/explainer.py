"""PAMI: the engine. Partition -> mask -> forward -> score -> aggregate (paper Eq. 1)."""

from __future__ import annotations

import math
import numbers
import os
import sys
import warnings
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Sequence, Union

import torch
from torch import Tensor

from ._inputs import Batch, allocate, batch_len, blend, call, index, main_tensor, take, to_batch
from ._modes import eval_mode, grad_free
from .maskers import Blur, Masker, as_masker
from .partitions.base import Partition, Parts, PartsOrFuture
from .partitions.sliding_window import SlidingWindow
from .scores import OutputSpec, as_target, check_scores, check_target, resolve_output, softmax_score, top1
from .visualize import colorize

__all__ = ["PAMI", "REFERENCE_SHIFTS", "TargetSpec"]

TargetSpec = Union[int, Sequence[int], Tensor, None]

#: The reference code's shift augmentation: identity plus circular shifts of 36, 30 and 24 pixels
#: up, down, left and right (13 views).
REFERENCE_SHIFTS: tuple[tuple[int, int], ...] = ((0, 0),) + tuple(
    s for d in (36, 30, 24) for s in ((d, 0), (-d, 0), (0, d), (0, -d))
)


@dataclass
class _Sums:
    """Per-call accumulators of Eq. 1 and the state a forward batch needs."""

    heat: Tensor  # [B, *spatial], sum of s_j m_j
    cover: Tensor  # [B, *spatial], N: number of parts covering each pixel
    bad: Tensor  # [B], count of non-finite scores
    buffer: Batch  # [batch_size, C, *spatial] (or a dict of [batch_size, L, ...]), masked inputs
    target_cpu: Tensor | None  # user-given targets, checked against the number of outputs
    looked: bool = False  # whether the outputs were checked for already being probabilities


@dataclass
class _Item:
    """One view of one input: what the masked inputs of its parts are blended from."""

    owner: int
    shift: tuple[int, ...]
    x: Batch
    substrate: Batch
    target: Tensor
    groups: Sequence[PartsOrFuture]


class PAMI:
    """Black-box explanations by Partitioning the input and Aggregating the model's outputs.

    For each part ``j`` of an input (a window or a superpixel) the model sees the input with only
    that part kept and the rest masked, ``x_j = where(m_j, x, substrate(x))``; its score for the
    target class ``f_k(x_j)`` is spread over the part, and every pixel's value is the mean over the
    parts that cover it (paper Eq. 1): ``h = sum_j f_k(x_j) m_j / N``. Pixels no part covers get 0.

    Masked inputs of all inputs are packed into full forward batches of ``batch_size``; masks are
    built slice by slice on the input's device, blended with one ``where`` per slice, and aggregated
    with one matmul per batch. The model runs under ``torch.inference_mode()`` in eval mode (every
    submodule's mode is restored afterwards). Segmentations run in a thread pool and overlap the
    forward passes.

    The same engine explains token sequences (``TokenWindows`` / ``Words`` with ``TokenMask`` /
    ``AttentionMask``; inputs ``[B, L]`` or a tokenizer's dict) and 1-D signals ``[B, C, T]``
    (``SlidingWindow(spatial_dims=1)``); ``output=`` turns any model's outputs into the score.

    Args:
        model: an ``nn.Module`` or any callable mapping a batch of inputs to outputs (``[N, K]`` for
            the built-in ``output`` modes): ``model(x)`` for a tensor ``[N, C, *spatial]`` or
            ``[N, L]``, ``model(**x)`` for a dict input (``word_ids``, ``offset_mapping`` and
            ``special_tokens_mask`` are not passed). Other conventions take a lambda, e.g.
            ``lambda **kw: hf_model(**kw).logits``.
        partition: how inputs are split (default ``SlidingWindow(radius=40, stride=6)``, the paper's
            strategy I; ``Superpixels.paper()`` is strategy II; ``TokenWindows`` / ``Words`` for tokens).
        masker: what replaces the removed part: ``Blur(49, 100)`` (default for images and signals,
            the paper's), ``Constant(0.0)`` (black), ``Constant(1.0)`` (white), ``TokenMask(mask_id)``
            or ``AttentionMask()`` (token sequences: one of them is required), or a callable
            ``x -> substrate``.
        preprocess: applied to each batch of masked inputs before the model, e.g. mean/std
            normalisation; masking happens in pixel space, before it (default: none).
        output: ``"softmax"`` (default: the probability of the target class), ``"sigmoid"``
            (multi-label), ``"identity"`` (raw logit or regression value), or a callable
            ``(outputs, target [N]) -> scores [N]``.
        batch_size: masked inputs per forward call (default 64).
        second_run: re-partition the colour-mapped first map and explain again (paper Fig. 11);
            the second map is returned. Needs a content-aware partition such as ``Superpixels``.
        shifts: views ``[(dy, dx), ...]`` of circularly shifted inputs, each explained and shifted
            back before Eq. 1 pools them (``REFERENCE_SHIFTS``, or ``"reference"``, are the reference
            code's 13 views). Include ``(0, 0)`` to keep the unshifted view. Default: none.
        autocast_dtype: run forward passes under ``torch.autocast`` with this dtype
            (``torch.bfloat16`` / ``torch.float16``); scores and aggregation stay float32/float64.
        num_workers: threads for segmentation (default ``min(8, os.cpu_count())``).
        progress: show a tqdm bar (default: only when stderr is a terminal).

    Example:
        >>> import torch
        >>> from pami_lightning import PAMI, SlidingWindow, Constant
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10))
        >>> explainer = PAMI(model, partition=SlidingWindow(radius=8, stride=4), masker=Constant(0.0))
        >>> heatmaps, target = explainer.explain(torch.rand(2, 3, 32, 32), return_target=True)
        >>> heatmaps.shape, target.shape
        (torch.Size([2, 32, 32]), torch.Size([2]))
    """

    def __init__(
        self,
        model: Callable[[Tensor], Any],
        partition: Partition | None = None,
        masker: Masker | Callable[[Tensor], Tensor] | None = None,
        preprocess: Callable[[Tensor], Tensor] | None = None,
        output: OutputSpec = "softmax",
        batch_size: int = 64,
        *,
        second_run: bool = False,
        shifts: Sequence[Sequence[int]] | str | None = None,
        autocast_dtype: torch.dtype | None = None,
        num_workers: int | None = None,
        progress: bool | None = None,
    ) -> None:
        if not callable(model):
            raise TypeError(f"model must be an nn.Module or a callable inputs -> outputs; got {type(model).__name__}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size}")
        self.model = model
        self.partition = partition if partition is not None else SlidingWindow()
        if not isinstance(self.partition, Partition):
            raise TypeError(f"partition must be a Partition (SlidingWindow, Superpixels, ...); got {type(partition).__name__}")
        if masker is None and not self.partition.channel_axis:
            raise ValueError(f"{self.partition!r} splits token sequences: pass masker=TokenMask(mask_id) or masker=AttentionMask()")
        self.masker = as_masker(masker if masker is not None else Blur())
        if self.masker.for_tokens and self.partition.channel_axis:
            raise ValueError(f"{self.masker!r} fills token sequences but {self.partition!r} splits images or signals [B, C, *spatial]; use TokenWindows or Words")
        if self.masker.pixel_space and not self.partition.channel_axis:
            raise ValueError(f"{self.masker!r} fills images or signals but {self.partition!r} splits token sequences; use masker=TokenMask(mask_id) or AttentionMask()")
        # Axes before the spatial ones in one input: the channel of [C, *spatial]; none for [L].
        self._lead = 1 if self.partition.channel_axis else 0
        self.preprocess = preprocess
        self.output = output
        self.score_fn = resolve_output(output)
        self.batch_size = int(batch_size)
        if second_run and not self.partition.content_aware:
            raise ValueError(f"second_run=True re-partitions the first map, which needs a content-aware partition such as Superpixels; got {self.partition!r}")
        self.second_run = bool(second_run)
        if isinstance(shifts, str):
            if shifts != "reference":
                raise ValueError(f'shifts must be a list of (dy, dx) views or "reference"; got "{shifts}"')
            shifts = REFERENCE_SHIFTS
        self.shifts = [_as_shift(s) for s in shifts] if shifts is not None else None
        if self.shifts is not None:
            if not self.partition.channel_axis:
                raise ValueError(f"shifts augment images and signals; {self.partition!r} splits token sequences — pass shifts=None")
            if not self.shifts:
                raise ValueError("shifts must hold at least one view; use [(0, 0)] (or None) for no augmentation")
            bad = [s for s in self.shifts if len(s) != self.partition.spatial_dims]
            if bad:
                raise ValueError(f"each shift needs {self.partition.spatial_dims} offsets (one per spatial axis); got {bad[0]}")
        if autocast_dtype not in (None, torch.bfloat16, torch.float16):
            raise ValueError(f"autocast_dtype must be None, torch.bfloat16 or torch.float16; got {autocast_dtype}")
        self.autocast_dtype = autocast_dtype
        self.num_workers = num_workers if num_workers is not None else min(8, os.cpu_count() or 1)
        if self.num_workers < 1:
            raise ValueError(f"num_workers must be >= 1; got {num_workers}")
        self.progress = progress

    # ------------------------------------------------------------------ public API

    def explain(self, inputs: Tensor | Mapping[str, Tensor], target: TargetSpec = None, *, return_target: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """Importance maps of ``inputs`` for ``target``.

        Args:
            inputs: ``[B, C, H, W]`` images in pixel space (``[0, 1]``) — or ``[B, C, *spatial]`` for
                the partition's ``spatial_dims`` (``[B, C, T]`` signals); for token partitions, ids
                ``[B, L]`` or a dict of ``[B, L, ...]`` tensors with ``"input_ids"`` (a tokenizer's output).
            target: class explained per input: ``None`` (default: each input's top-1 class on the
                unmasked input), an int for all inputs, or a list / ``[B]`` tensor of ints.
            return_target: also return the ``[B]`` long tensor of the classes explained.

        Returns:
            float32 heatmaps ``[B, *spatial]`` (``[B, L]`` for tokens, 0 at padding and special tokens)
            on the inputs' device (and the targets if asked).
        """
        self._check_inputs(inputs)
        with grad_free(), eval_mode(self.model):
            targets = self._targets(inputs, target)
            given = targets.cpu() if target is not None else None
            heat = self._aggregate(inputs, targets, given, guides=None)
            if self.second_run:
                heat = self._aggregate(inputs, targets, given, guides=colorize(heat))
        # Clones made outside inference mode are ordinary tensors users may edit in place.
        heat, targets = heat.clone(), targets.clone()
        return (heat, targets) if return_target else heat

    def attribute(self, inputs: Tensor | Mapping[str, Tensor], target: TargetSpec = None, *, return_target: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """Alias of :meth:`explain` for Captum users."""
        return self.explain(inputs, target, return_target=return_target)

    __call__ = explain

    # ------------------------------------------------------------------ checks

    def _check_inputs(self, inputs: Batch) -> None:
        if self.partition.channel_axis and isinstance(inputs, Mapping):
            raise ValueError(f"dict inputs are token sequences for TokenWindows or Words; {self.partition!r} needs a tensor [B, C, *spatial]")
        if not isinstance(inputs, (Tensor, Mapping)):
            raise TypeError(f"inputs must be a torch.Tensor [B, C, H, W] (token ids [B, L], or a dict of tensors); got {type(inputs).__name__}")
        self.partition.check_input(inputs)
        self.masker.check_input(inputs)
        if not self.partition.channel_axis:
            return
        if not inputs.is_floating_point():
            raise ValueError(f"inputs must be floating-point images in [0, 1]; got {inputs.dtype} — use images.float() / 255")
        if self.partition.spatial_dims == 2 and inputs.shape[-1] in (1, 3, 4) and inputs.shape[1] not in (1, 3, 4):
            raise ValueError(f"inputs look channels-last [B, H, W, C] ({list(inputs.shape)}); PAMI needs [B, C, H, W] — use images.permute(0, 3, 1, 2)")
        if not bool(torch.isfinite(inputs).all()):
            raise ValueError("inputs hold NaN or inf values; every masked input would carry them into the model — clean the inputs first")
        # Signals have no pixel space: only images are expected in [0, 1].
        if getattr(self.masker, "pixel_space", False) and self.partition.spatial_dims >= 2 and inputs.numel():
            lo, hi = inputs.min().item(), inputs.max().item()
            if lo < -0.5 or hi > 1.5:
                warnings.warn(
                    f"inputs range over [{lo:.2f}, {hi:.2f}] but {self.masker!r} masks in pixel space [0, 1]: "
                    "pass un-normalised images and put the normalisation in preprocess=",
                    UserWarning,
                    stacklevel=3,
                )

    def _targets(self, inputs: Batch, target: TargetSpec) -> Tensor:
        n, device = batch_len(inputs), main_tensor(inputs).device
        if target is None:
            # A copy: an in-place preprocess or model (Normalize(inplace=True)) would rewrite the
            # caller's inputs, and with them every masked input built afterwards.
            found = [top1(self._forward(_copy(take(inputs, i, i + self.batch_size)))) for i in range(0, n, self.batch_size)]
            return torch.cat(found) if found else torch.zeros(0, dtype=torch.long, device=device)
        return as_target(target, n, device)

    # ------------------------------------------------------------------ the engine

    def _forward(self, batch: Batch) -> Any:
        x = self.preprocess(batch) if self.preprocess is not None else batch
        device = main_tensor(batch).device
        ctx = torch.autocast(device_type=device.type, dtype=self.autocast_dtype) if self.autocast_dtype else nullcontext()
        with ctx:
            return call(self.model, x)

    def _items(self, inputs: Batch, targets: Tensor, guides: Tensor | None, executor: ThreadPoolExecutor | None) -> Iterator[tuple[_Item, Parts]]:
        """Each (view of an input, group of parts), in order; later views are partitioned ahead."""
        views = self.shifts or [(0,) * self.partition.spatial_dims]
        n_items = batch_len(inputs) * len(views)
        device = main_tensor(inputs).device
        # Segmenters run on the CPU: copy once here rather than syncing the device per input.
        source = inputs.detach().cpu() if self.partition.content_aware else None

        def make(i: int) -> _Item:
            b, v = divmod(i, len(views))
            shift = views[v]
            x = _roll(index(inputs, b), shift, first_dim=1)
            seen = _roll(source[b], shift, first_dim=1) if source is not None else x
            guide = _roll(guides[b], shift, first_dim=1) if guides is not None else None
            groups = self.partition.parts(seen, guide=guide, device=device, executor=executor)
            substrate = index(self.masker.substrate(to_batch(x)), 0)
            keep = self.partition.keep(x)
            if keep is not None:
                # Positions no part covers (padding, special tokens) reach every masked input unchanged.
                substrate = index(blend(x, substrate, keep.unsqueeze(0), self._lead), 0)
            return _Item(b, shift, x, substrate, targets[b], groups)

        window: deque[_Item] = deque()
        lookahead, nxt = 2, 0
        while window or nxt < n_items:
            while nxt < n_items and len(window) < lookahead:
                window.append(make(nxt))
                nxt += 1
                # Enough views ahead to keep every segmentation worker busy.
                lookahead = max(2, 1 + math.ceil(2 * self.num_workers / max(1, len(window[0].groups)))) if executor else 2
            item = window.popleft()
            for group in item.groups:
                yield item, group.result() if isinstance(group, Future) else group

    def _aggregate(self, inputs: Batch, targets: Tensor, target_cpu: Tensor | None, guides: Tensor | None) -> Tensor:
        """Eq. 1 over every part of every view of every input: ``[B, *spatial]`` float32."""
        from tqdm.auto import tqdm

        main = main_tensor(inputs)
        b, spatial, device = main.shape[0], main.shape[1 + self._lead :], main.device
        acc_dtype = torch.float32 if device.type == "mps" else torch.float64
        heat = torch.zeros(b, *spatial, dtype=acc_dtype, device=device)
        sums = _Sums(
            heat=heat,
            cover=torch.zeros_like(heat),
            bad=torch.zeros(b, dtype=torch.long, device=device),
            buffer=allocate(inputs, self.batch_size),
            target_cpu=target_cpu,
        )
        show = self.progress if self.progress is not None else sys.stderr.isatty()
        executor = ThreadPoolExecutor(self.num_workers, thread_name_prefix="pami-segment") if self.partition.content_aware else None
        chunk: list[tuple[_Item, Parts, int, int]] = []
        filled = 0
        try:
            with tqdm(total=0, unit="pass", desc="PAMI", disable=not show, leave=False) as bar:
                for item, group in self._items(inputs, targets, guides, executor):
                    n, j = len(group), 0
                    bar.total += n
                    while j < n:
                        take = min(n - j, self.batch_size - filled)
                        chunk.append((item, group, j, j + take))
                        filled, j = filled + take, j + take
                        if filled == self.batch_size:
                            self._flush(chunk, sums)
                            bar.update(filled)
                            chunk, filled = [], 0
                if chunk:
                    self._flush(chunk, sums)
                    bar.update(filled)
        finally:
            if executor is not None:
                executor.shutdown(wait=True, cancel_futures=True)
        if sums.bad.any():
            where = sums.bad.nonzero().flatten().tolist()
            raise ValueError(
                f"the model's scores were NaN or inf for {int(sums.bad.sum())} masked inputs (inputs {where}); "
                "check the model, preprocess and autocast_dtype (float16 overflows easily)"
            )
        return torch.where(sums.cover > 0, heat / sums.cover.clamp_min(1), torch.zeros_like(heat)).float()

    def _flush(self, chunk: list[tuple[_Item, Parts, int, int]], sums: _Sums) -> None:
        """One forward batch: blend, forward, score, and add ``s_j m_j`` and ``m_j`` (one matmul)."""
        masks = torch.cat([group.masks(a, z) for _, group, a, z in chunk]) if len(chunk) > 1 else chunk[0][1].masks(chunk[0][2], chunk[0][3])
        n, device = masks.shape[0], masks.device
        counts = [z - a for _, _, a, z in chunk]
        offset = 0
        for (item, _, _, _), k in zip(chunk, counts):
            blend(item.x, item.substrate, masks[offset : offset + k], self._lead, out=take(sums.buffer, offset, offset + k))
            offset += k
        outputs = self._forward(take(sums.buffer, 0, n))
        # Row -> (segment, input) built on the CPU; a pageable copy would stall on the device's queue.
        rows = torch.repeat_interleave(torch.tensor([[i, item.owner] for i, (item, *_) in enumerate(chunk)]), torch.tensor(counts), dim=0)
        segment, owner = (rows.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else rows.to(device)).unbind(1)
        target = torch.stack([item.target for item, *_ in chunk])[segment]
        if sums.target_cpu is not None:
            check_target(self.score_fn, outputs, sums.target_cpu)
            sums.target_cpu = None  # the number of outputs is fixed: one check per call
        if not sums.looked and self.score_fn is softmax_score and isinstance(outputs, Tensor) and outputs.ndim == 2:
            sums.looked = True  # once per call: one sync
            _warn_if_probabilities(outputs)
        scores = self.score_fn(outputs, target)
        check_scores(scores, n, "masked input")
        sums.bad.index_add_(0, owner, (~torch.isfinite(scores)).long())
        # Rows 0..S-1: sum of s_j m_j per segment; rows S..2S-1: the coverage count of the segment.
        s, dtype = len(chunk), sums.heat.dtype
        weights = torch.zeros(2 * s, n, dtype=dtype, device=device)
        cols = torch.arange(n, device=device)
        weights[segment, cols] = scores.to(dtype)
        weights[segment + s, cols] = 1
        added = (weights @ masks.reshape(n, -1).to(dtype)).view(2 * s, *masks.shape[1:])
        for i, (item, *_) in enumerate(chunk):
            sums.heat[item.owner] += _roll(added[i], item.shift, first_dim=0, back=True)
            sums.cover[item.owner] += _roll(added[s + i], item.shift, first_dim=0, back=True)


def _warn_if_probabilities(outputs: Tensor) -> None:
    """Softmax of probabilities squashes every score towards 1/K: a distorted map, no error."""
    o = outputs.detach().float()
    if o.shape[1] > 1 and bool((o >= 0).all() & ((o.sum(dim=1) - 1).abs() <= 1e-3).all()):
        warnings.warn(
            'the model\'s outputs look like probabilities already (every row is >= 0 and sums to 1), and output="softmax" '
            'would apply softmax again; pass output="identity" to explain the probabilities as they are',
            UserWarning,
            stacklevel=5,  # the caller of explain()
        )


def _copy(x: Batch) -> Batch:
    """A batch the model may modify in place without touching the caller's tensors."""
    return {k: v.clone() for k, v in x.items()} if isinstance(x, Mapping) else x.clone()


def _as_shift(shift: Any) -> tuple[int, ...]:
    """One view's offsets as ints; refuses what ``int()`` would silently truncate (1.5 -> 1)."""
    if isinstance(shift, (str, bytes)) or not hasattr(shift, "__iter__"):
        raise ValueError(f"each shift must be a (dy, dx) pair of pixel offsets; got {shift!r}")
    values = [v.item() if isinstance(v, Tensor) else v for v in shift]
    if not all(isinstance(v, numbers.Integral) or (isinstance(v, numbers.Real) and float(v).is_integer()) for v in values):
        raise ValueError(f"shifts must be whole numbers of pixels; got {tuple(values)}")
    return tuple(int(v) for v in values)


def _roll(t: Tensor, shift: Sequence[int], first_dim: int, back: bool = False) -> Tensor:
    """Circularly shift the spatial axes of ``t`` (starting at ``first_dim``) by ``shift`` (or back)."""
    if not any(shift):
        return t
    shifts = tuple(-v for v in shift) if back else tuple(shift)
    return torch.roll(t, shifts=shifts, dims=tuple(range(first_dim, first_dim + len(shift))))
