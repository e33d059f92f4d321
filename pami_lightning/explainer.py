"""PAMI: Partition the input, Aggregate the model's outputs (paper Eq. 1). Configuration and ``explain``.

The batching loop lives in :mod:`pami_lightning.engine`; how the model is called, in
:class:`~pami_lightning.forward.ModelCall`.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any, Literal, Union, overload

import torch
from torch import Tensor

from ._inputs import Batch, batch_len, blend, index, main_tensor, to_batch
from .engine import Progress, View, run_views
from .forward import ModelCall
from .maskers import Blur, Masker, as_masker
from .partitions.base import Partition, Source
from .partitions.sliding_window import SlidingWindow
from .partitions.superpixels import colour_guide
from .scores import OutputSpec, as_target
from .shifts import REFERENCE_SHIFTS, as_shifts, roll

__all__ = ["PAMI", "REFERENCE_SHIFTS", "TargetSpec"]

TargetSpec = Union[int, Sequence[int], Tensor, None]


class PAMI:
    """Black-box explanations by Partitioning the input and Aggregating the model's outputs.

    For each part ``j`` of an input (a window or a superpixel) the model sees the input with only
    that part kept and the rest masked, ``x_j = x m_j + substrate(x) (1 - m_j)``; its score for the
    target class ``f_k(x_j)`` is spread over the part, and every pixel's value is the mean over the
    parts that cover it (paper Eq. 1): ``h = sum_j f_k(x_j) m_j / N``. Pixels no part covers get 0.

    Masked inputs of all inputs are packed into full forward batches of ``batch_size`` and written
    into one reused buffer; the sums of Eq. 1 are float64. The model runs through a
    :class:`~pami_lightning.ModelCall`: under ``torch.inference_mode()`` with its modules in eval mode
    (every submodule's mode restored afterwards). Segmentations run in a thread pool and overlap
    the forward passes.

    The same engine explains token sequences (``TokenWindows`` / ``Words`` with ``TokenMask`` /
    ``AttentionMask``; inputs ``[B, L]`` or a tokenizer's dict) and 1-D signals ``[B, C, T]``
    (``SlidingWindow(spatial_dims=1)``); ``output=`` turns any model's outputs into the score.

    Args:
        model: the ``nn.Module`` explained (called ``model(x)``, or ``model(**x)`` for a dict input;
            ``word_ids``, ``offset_mapping`` and ``special_tokens_mask`` are not passed), or a ready
            :class:`~pami_lightning.ModelCall` (then leave ``preprocess`` / ``output`` /
            ``autocast_dtype`` / ``forward`` unset). Other calling conventions take ``forward=``.
        partition: how inputs are split (default ``SlidingWindow(radius=40, stride=6)``, the paper's
            strategy I for 224x224 images — ``SlidingWindow.relative()`` scales it to any size;
            ``Superpixels.paper()`` is strategy II; ``TokenWindows`` / ``Words`` for tokens).
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
        forward: adapter ``forward(model, x)`` / ``forward(model, **x)``, e.g.
            ``lambda m, **kw: m(**kw).logits`` (default: call the model).
        second_run: re-partition the colour-mapped first map and explain again (paper Fig. 11);
            the second map is returned. Needs a content-aware partition such as ``Superpixels``.
        shifts: views ``[(dy, dx), ...]`` of circularly shifted inputs, each explained on its own
            (with ``second_run``, from its own first map) and shifted back before Eq. 1 pools them
            (``REFERENCE_SHIFTS``, or ``"reference"``, are the reference code's 13 views). Include
            ``(0, 0)`` to keep the unshifted view. Default: none.
        autocast_dtype: run forward passes under ``torch.autocast`` with this dtype
            (``torch.bfloat16`` / ``torch.float16``); scores are float32 and the sums float64.
        num_workers: threads for segmentation (default ``min(8, os.cpu_count())``).
        progress: a tqdm bar on a terminal (default: only there); ``True`` off a terminal prints a
            line to stderr every 10 s (passes done, rate, time left); ``False``: nothing.

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
        model: Callable[..., Any] | ModelCall,
        partition: Partition | None = None,
        masker: Masker | Callable[[Tensor], Tensor] | None = None,
        preprocess: Callable[[Any], Any] | None = None,
        output: OutputSpec = "softmax",
        batch_size: int = 64,
        *,
        forward: Callable[..., Any] | None = None,
        second_run: bool = False,
        shifts: Sequence[Sequence[int]] | str | None = None,
        autocast_dtype: torch.dtype | None = None,
        num_workers: int | None = None,
        progress: bool | None = None,
    ) -> None:
        if isinstance(model, ModelCall):
            if preprocess is not None or output != "softmax" or autocast_dtype is not None or forward is not None:
                raise ValueError("model is a ModelCall: set preprocess / output / autocast_dtype / forward on it, not on PAMI")
            self.call = model if batch_size == 64 else model.replace(batch_size=batch_size)
        else:
            self.call = ModelCall(model, forward=forward, preprocess=preprocess, output=output,
                                  autocast_dtype=autocast_dtype, batch_size=batch_size)
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
        if second_run and not self.partition.content_aware:
            raise ValueError(f"second_run=True re-partitions the first map, which needs a content-aware partition such as Superpixels; got {self.partition!r}")
        self.second_run = bool(second_run)
        self.shifts = as_shifts(shifts, self.partition)
        self.num_workers = num_workers if num_workers is not None else min(8, os.cpu_count() or 1)
        if self.num_workers < 1:
            raise ValueError(f"num_workers must be >= 1; got {num_workers}")
        self.progress = progress

    # The model call's settings, readable where users look for them.
    model = property(lambda self: self.call.model, doc="The explained model.")
    preprocess = property(lambda self: self.call.preprocess, doc="Applied to masked inputs before the model.")
    output = property(lambda self: self.call.output, doc="What is scored: a built-in name or a callable.")
    score_fn = property(lambda self: self.call.score_fn, doc="The score function ``(outputs, target) -> [N]``.")
    batch_size = property(lambda self: self.call.batch_size, doc="Masked inputs per forward call.")
    autocast_dtype = property(lambda self: self.call.autocast_dtype, doc="The autocast dtype, or None.")

    # ------------------------------------------------------------------ public API

    @overload
    def explain(self, inputs: Batch, target: TargetSpec = None, *, return_target: Literal[False] = False) -> Tensor: ...

    @overload
    def explain(self, inputs: Batch, target: TargetSpec = None, *, return_target: Literal[True]) -> tuple[Tensor, Tensor]: ...

    def explain(self, inputs: Batch, target: TargetSpec = None, *, return_target: bool = False) -> Tensor | tuple[Tensor, Tensor]:
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
        self.check_inputs(inputs)
        with self.call.running():
            n, device = batch_len(inputs), main_tensor(inputs).device
            targets = as_target(target, n, device) if target is not None else self.call.clean(inputs).pred
            given = targets.cpu() if target is not None else None
            heat = self._explain(inputs, targets, given)
        # Clones made outside inference mode are ordinary tensors users may edit in place.
        heat, targets = heat.clone(), targets.clone()
        return (heat, targets) if return_target else heat

    def attribute(self, inputs: Batch, target: TargetSpec = None, *, return_target: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """Alias of :meth:`explain` for Captum users."""
        return self.explain(inputs, target, return_target=return_target)  # type: ignore[call-overload]

    __call__ = explain

    # ------------------------------------------------------------------ checks

    def check_inputs(self, inputs: Batch) -> None:
        """Raise a ValueError naming the fix when :meth:`explain` cannot take ``inputs`` (rank, dtype,
        layout, non-finite values); warn when images look outside pixel space. Cheap: no model call."""
        if self.partition.channel_axis and isinstance(inputs, Mapping):
            raise ValueError(f"dict inputs are token sequences for TokenWindows or Words; {self.partition!r} needs a tensor [B, C, *spatial]")
        if not isinstance(inputs, (Tensor, Mapping)):
            raise TypeError(f"inputs must be a torch.Tensor [B, C, H, W] (token ids [B, L], or a dict of tensors); got {type(inputs).__name__}")
        self.partition.check_input(inputs)
        self.masker.check_input(inputs)
        if not isinstance(inputs, Tensor) or not self.partition.channel_axis:
            return
        if not inputs.is_floating_point():
            raise ValueError(f"inputs must be floating-point images in [0, 1]; got {inputs.dtype} — use images.float() / 255")
        if self.partition.spatial_dims == 2 and inputs.shape[-1] in (1, 3, 4) and inputs.shape[1] not in (1, 3, 4):
            raise ValueError(f"inputs look channels-last [B, H, W, C] ({list(inputs.shape)}); PAMI needs [B, C, H, W] — use images.permute(0, 3, 1, 2)")
        if not bool(torch.isfinite(inputs).all()):
            raise ValueError("inputs hold NaN or inf values; every masked input would carry them into the model — clean the inputs first")
        # Signals have no pixel space: only images are expected in [0, 1].
        if self.masker.pixel_space and self.partition.spatial_dims >= 2 and inputs.numel():
            lo, hi = inputs.min().item(), inputs.max().item()
            if lo < -0.5 or hi > 1.5:
                warnings.warn(
                    f"inputs range over [{lo:.2f}, {hi:.2f}] but {self.masker!r} masks in pixel space [0, 1]: "
                    "pass un-normalised images and put the normalisation in preprocess=",
                    UserWarning,
                    stacklevel=3,
                )

    # ------------------------------------------------------------------ the runs

    def _explain(self, inputs: Batch, targets: Tensor, given: Tensor | None) -> Tensor:
        """Run 1 (and run 2) over every view; the views of each input pooled by Eq. 1: ``[B, *spatial]`` float32."""
        main = main_tensor(inputs)
        b, spatial, device = main.shape[0], main.shape[1 + self._lead :], main.device
        acc = torch.float32 if device.type == "mps" else torch.float64
        heat = torch.zeros(b, *spatial, dtype=acc, device=device)
        cover = torch.zeros_like(heat)
        bad = torch.zeros(b, dtype=torch.long, device=device)
        views = self.shifts or [(0,) * self.partition.spatial_dims]
        guides: dict[tuple[int, int], Tensor] = {}

        def pool(view: View) -> None:
            if view.heat is not None:
                heat[view.owner] += roll(view.heat, view.shift, back=True)
                cover[view.owner] += roll(torch.as_tensor(view.cover, dtype=acc, device=device).expand(spatial), view.shift, back=True)
                bad[view.owner] += view.bad

        def keep_guide(view: View) -> None:
            first = view.eq1()
            bad[view.owner] += view.bad
            if first is not None:  # the view's own first map, in its own (shifted) coordinates
                guides[view.owner, views.index(view.shift)] = colour_guide(first[None])[0]

        # Once for both runs: content-aware partitions segment a CPU copy of the inputs, and one masker
        # call serves every unshifted view (a shifted view's blur differs at the borders).
        seen = main_tensor(inputs).detach().cpu() if self.partition.content_aware else None
        unshifted = self.masker.substrate(inputs) if any(not any(v) for v in views) else None
        executor = ThreadPoolExecutor(self.num_workers, thread_name_prefix="pami-segment") if self.partition.content_aware else None
        progress = Progress(self.progress)
        try:
            for second in ([False, True] if self.second_run else [False]):
                run_views(
                    self.call, self._views(inputs, targets, views, seen, unshifted, executor, guides if second else None), inputs,
                    self.batch_size, acc, pool if second or not self.second_run else keep_guide,
                    given_target=given, progress=progress,
                    lookahead=lambda view: _lookahead(view, self.num_workers) if executor else 2,
                )
        finally:
            progress.close()
            if executor is not None:
                executor.shutdown(wait=True, cancel_futures=True)
        if bad.any():
            where = bad.nonzero().flatten().tolist()
            raise ValueError(
                f"the model's scores were NaN or inf for {int(bad.sum())} masked inputs (inputs {where}); "
                "check the model, preprocess and autocast_dtype (float16 overflows easily)"
            )
        return torch.where(cover > 0, heat / cover.clamp_min(1), torch.zeros_like(heat)).float()

    def _views(self, inputs: Batch, targets: Tensor, shifts: list[tuple[int, ...]], seen_all: Tensor | None, unshifted: Batch | None,
               executor: Executor | None, guides: dict[tuple[int, int], Tensor] | None) -> Iterator[View]:
        """Each view of each input, created lazily: creating one starts its segmentations.

        ``seen_all``: the inputs on the CPU for content-aware partitions; ``unshifted``: the substrate of
        the inputs, for the unshifted views (both None when not needed).
        """
        device = main_tensor(inputs).device
        for b in range(batch_len(inputs)):
            for v, shift in enumerate(shifts):
                if guides is not None and (b, v) not in guides:
                    continue  # a view without parts has no first map to re-partition
                x = roll(index(inputs, b), shift, first=self._lead)
                seen = roll(seen_all[b], shift, first=1) if seen_all is not None else x
                guide = guides[b, v] if guides is not None else None
                groups = self.partition.parts(seen, guide=guide, device=device, executor=executor)
                substrate = index(unshifted, b) if unshifted is not None and not any(shift) else index(self.masker.substrate(to_batch(x)), 0)
                keep = self.partition.keep(x)
                if keep is not None:
                    # Positions no part covers (padding, special tokens) reach every masked input unchanged.
                    substrate = index(blend(x, substrate, keep.unsqueeze(0), self._lead), 0)
                diff = x - substrate if isinstance(x, Tensor) and isinstance(substrate, Tensor) and x.dtype in (torch.float32, torch.float64) else None
                yield View(b, shift, Source(x, substrate, diff, self._lead), targets[b], groups)


def _lookahead(view: View, workers: int) -> int:
    """Views to keep created ahead: enough segmentations queued to keep every worker busy."""
    return max(2, 1 + -(-2 * workers // max(1, len(view.groups))))
