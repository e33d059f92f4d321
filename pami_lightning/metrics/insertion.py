"""RISE's causal metrics, insertion and deletion, as torchmetrics ``Metric`` s."""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
import torchmetrics
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities.distributed import gather_all_tensors
from torchmetrics.utilities.plot import _AX_TYPE, _PLOT_OUT_TYPE, plot_curve

from ..forward import Clean, ModelCall
from ..maskers import Blur, Constant, Masker, as_masker
from ..scores import OutputSpec
from ._causal import TargetLike, causal_curves, model_call
from .functional.insertion import _causal_arg_validation, curve_auc

__all__ = ["Insertion", "Deletion"]


class _Shared:
    """Holds the model call outside ``nn.Module`` registration (so a model's weights stay out of the
    metric's ``state_dict`` and ``.to()``); copies of the metric share it rather than copy it."""

    __slots__ = ("obj",)

    def __init__(self, obj: Any) -> None:
        self.obj = obj

    def __deepcopy__(self, memo: dict) -> _Shared:
        return self


class _CausalMetric(Metric):
    """Shared engine of :class:`Insertion` and :class:`Deletion` (see there)."""

    is_differentiable = False
    full_state_update = False  # True would run update() -- hundreds of forward passes -- twice per forward()
    plot_lower_bound = 0.0
    plot_upper_bound = 1.0

    _kind: Literal["insertion", "deletion"]

    def __init__(
        self,
        model: Callable[..., Any] | ModelCall,
        step: int = 224,
        n_steps: int | None = None,
        substrate: Masker | Callable[[Tensor], Tensor] | None = None,
        preprocess: Callable[[Tensor], Tensor] | None = None,
        output: OutputSpec = "softmax",
        batch_size: int = 64,
        *,
        forward: Callable[..., Any] | None = None,
        autocast_dtype: torch.dtype | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        _causal_arg_validation(step, n_steps, batch_size)
        call = model_call(model, forward=forward, preprocess=preprocess, output=output, autocast_dtype=autocast_dtype, batch_size=batch_size)
        self._call = _Shared(call)
        self.step, self.n_steps = int(step), n_steps
        self.substrate = as_masker(substrate if substrate is not None else self._default_substrate())
        # float32 per-image values summed in float64: sums stay exact in any order, so DDP shards
        # of any sizes reproduce the single-process result. The names carry the kind: a
        # MetricCollection merges metrics whose states have the same names and values after the
        # first update (compute groups), and Insertion and Deletion of a model that ignores its
        # input (a zero-initialised head) start out with equal values.
        self.add_state(f"{self._kind}_auc_sum", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state(f"{self._kind}_count", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        # 0-dim until the first image fixes the curve length (it depends on H * W unless n_steps is set).
        self.add_state(f"{self._kind}_curve_sum", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    @property
    def auc_sum(self) -> Tensor:
        """Sum of the per-image AUCs (float64 state)."""
        return getattr(self, f"{self._kind}_auc_sum")

    @property
    def count(self) -> Tensor:
        """Number of images (int64 state)."""
        return getattr(self, f"{self._kind}_count")

    @property
    def curve_sum(self) -> Tensor:
        """Sum of the curves ``[n + 1]`` (float64 state; 0-dim before the first image)."""
        return getattr(self, f"{self._kind}_curve_sum")

    @staticmethod
    def _default_substrate() -> Masker:
        raise NotImplementedError

    @property
    def call(self) -> ModelCall:
        """How the model is called (preprocess, autocast, eval mode, score); not a registered submodule."""
        return self._call.obj

    @property
    def model(self) -> Callable[..., Any]:
        """The explained model (not a registered submodule)."""
        return self.call.model

    @property
    def preprocess(self) -> Callable[[Any], Any] | None:
        """Applied to each batch of step images before the model (not a registered submodule)."""
        return self.call.preprocess

    @property
    def output(self) -> OutputSpec:
        """What is scored: a built-in name or a callable."""
        return self.call.output

    @property
    def batch_size(self) -> int:
        """Step images per forward call."""
        return self.call.batch_size

    def update(
        self, heatmaps: Tensor, masks: Any = None, *, images: Tensor | None = None, target: TargetLike = None, clean: Clean | None = None
    ) -> None:
        """Run the curves of a batch of images and add their AUCs.

        The argument order of every metric here is ``update(heatmaps, masks, ...)``, so one
        ``MetricCollection`` call updates the mask metrics and these:
        ``collection.update(heatmaps, masks, images=images, target=target)`` (keyword arguments
        reach only the metrics that take them). The order of 0.1, ``update(images, heatmaps)``,
        is recognised by the ranks (images ``[B, C, H, W]`` first) and still runs, with a
        ``FutureWarning``.

        Args:
            heatmaps: ``[B, h, w]`` saliency maps, resized (bilinear) to ``H x W`` when needed.
            masks: not used (the place of the object masks of the pointing games).
            images: ``[B, C, H, W]`` float images in pixel space (what ``substrate`` expects); required.
            target: class scored per image: None (default: the clean image's top-1, as RISE),
                an int, or ``[B]``.
            clean: the :meth:`ModelCall.clean` result of these images (e.g. the explainer's): its
                ``target`` is scored and its ``score`` is the clean point, not run again.
        """
        if images is None:
            if isinstance(heatmaps, Tensor) and heatmaps.ndim == 4 and isinstance(masks, Tensor) and masks.ndim == 3:
                warnings.warn(
                    f"{type(self).__name__}.update(images, heatmaps) is the old argument order; call update(heatmaps, images=images) "
                    "(one order for every metric, so that a MetricCollection can hold them)",
                    FutureWarning,
                    stacklevel=_caller_stacklevel(),
                )
                heatmaps, images = masks, heatmaps
            else:
                raise ValueError(f"{type(self).__name__}.update needs the images: update(heatmaps, images=images [B, C, H, W], target=None)")
        curves = causal_curves(self._kind, self.call, images, heatmaps, target, self.step, self.n_steps, self.substrate, clean)
        if self.curve_sum.ndim == 1 and self.curve_sum.numel() != curves.shape[1]:
            raise ValueError(
                f"these {list(images.shape[2:])} images give curves of {curves.shape[1]} points but earlier ones gave "
                f"{self.curve_sum.numel()}; pass n_steps= for curves of one length across image sizes"
            )
        device = self.auc_sum.device
        setattr(self, f"{self._kind}_auc_sum", self.auc_sum + curve_auc(curves).double().sum().to(device))
        setattr(self, f"{self._kind}_count", self.count + curves.shape[0])
        setattr(self, f"{self._kind}_curve_sum", self.curve_sum + curves.double().sum(dim=0).to(device))

    def compute(self) -> Tensor:
        """Mean AUC over all images: float32 scalar; NaN before any image."""
        return (self.auc_sum / self.count).float()

    def curve(self) -> tuple[Tensor, Tensor]:
        """The mean curve: ``(x, y)``, float32 ``[n + 1]`` each, ``x = i / n`` the fraction of steps.

        Synchronised across processes like ``compute()`` (when ``sync_on_compute``). Its AUC equals
        ``compute()`` (up to rounding).
        """
        with self.sync_context(should_sync=self.sync_on_compute, distributed_available=self.distributed_available_fn):
            if self.curve_sum.ndim == 0:
                raise ValueError(f"{type(self).__name__}.curve() needs at least one update() first")
            y = (self.curve_sum / self.count).float()
        return torch.linspace(0, 1, y.numel(), device=y.device), y

    def plot(self, val: Tensor | Sequence[Tensor] | None = None, ax: _AX_TYPE | None = None) -> _PLOT_OUT_TYPE:
        """Plot the mean curve with its AUC (default), or given values (e.g. ``compute()`` per epoch).

        Returns:
            ``(fig, ax)`` (``fig`` is None when ``ax`` is given).
        """
        if val is not None:
            return self._plot(val, ax)
        x, y = self.curve()
        removed = "inserted" if self._kind == "insertion" else "deleted"
        # plot_curve reads curve[:2] and accepts (x, y) (its docstring: "2 or 3 elements"), but is annotated for (x, y, thresholds).
        return plot_curve((x, y), score=self.compute(), ax=ax, label_names=(f"fraction of pixels {removed}", "score"), name=type(self).__name__)  # type: ignore[arg-type]

    def _sync_dist(self, dist_sync_fn: Callable = gather_all_tensors, process_group: Any | None = None) -> None:
        # A rank without images holds a 0-dim curve: give it the others' length so the states stack.
        mine = torch.tensor([self.curve_sum.numel() if self.curve_sum.ndim else 0], device=self.device)
        lengths = {int(n) for n in dist_sync_fn(mine, group=process_group or self.process_group) if int(n) > 0}
        if len(lengths) > 1:
            raise ValueError(f"processes saw images of different sizes (curves of {sorted(lengths)} points); pass n_steps= for one curve length")
        if self.curve_sum.ndim == 0 and lengths:
            setattr(self, f"{self._kind}_curve_sum", self.curve_sum.new_zeros(lengths.pop()))
        super()._sync_dist(dist_sync_fn, process_group)


def _caller_stacklevel() -> int:
    """The ``stacklevel`` of the first frame outside this package and torchmetrics (whose wrappers call ``update``)."""
    skip = tuple(os.path.dirname(os.path.abspath(m.__file__ or "")) + os.sep for m in (sys.modules["pami_lightning"], torchmetrics))
    frame, level = sys._getframe(1), 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(skip):
        frame, level = frame.f_back, level + 1  # type: ignore[assignment]
    return level


_ARGS_DOC = """
    The step images go through the model in full batches of ``batch_size`` (points of several
    images share a batch; each is built with one comparison of each pixel's saliency rank) through
    a :class:`~pami_lightning.ModelCall`: under ``torch.inference_mode()`` with the model in eval
    mode (each submodule's mode is restored). No input is run twice: with ``target=None`` the clean
    images are the first rows, giving both the top-1 class and the clean point; a ``clean=`` pass
    given to ``update`` replaces them; a substrate that is one image for the whole batch
    (``Constant``) is run once. The curves are those of the plain one-forward-per-step loop.

    The model is not registered as a submodule: its weights stay out of the metric's
    ``state_dict``. States are sums (AUCs, image count, curves; named ``insertion_*`` /
    ``deletion_*``, so that a ``MetricCollection`` never merges the two), and DDP ranks with
    different numbers of images give exactly the single-process result.

    ``update(heatmaps, masks=None, *, images, target=None, clean=None)`` takes the arguments in the
    order of every metric here, so one ``MetricCollection`` call updates the pointing games and
    these (``masks`` is not used).

    Args:
        model: the ``nn.Module`` scored, ``[N, C, H, W] -> outputs`` (``[N, K]`` for the built-in
            outputs), or a ready :class:`~pami_lightning.ModelCall` (e.g. an explainer's
            ``PAMI.call``; then leave ``preprocess`` / ``output`` / ``forward`` / ``autocast_dtype``
            unset). A pure function without modules goes through ``ModelCall(fn, modules=())``.
        step: pixels per step (default 224: 224 steps on 224x224 images, as RISE).
        n_steps: when given, replaces ``step``: exactly ``n_steps + 1`` points, point ``i`` holding
            ``ceil(i * H * W / n_steps)`` pixels — one curve length for every image size.
        substrate: {substrate}
        preprocess: applied to each batch of step images before the model (e.g. normalisation).
        output: ``"softmax"`` (default), ``"sigmoid"``, ``"identity"`` or ``callable(outputs, target) -> [N]``.
        batch_size: images per forward call (default 64). On a CPU, a small model can run faster
            with smaller batches (its activations then stay in cache).
        forward: adapter ``forward(model, x)`` for other calling conventions, e.g.
            ``lambda m, x: m(pixel_values=x).logits`` (default: ``model(x)``).
        autocast_dtype: run the model under ``torch.autocast`` with ``torch.bfloat16`` /
            ``torch.float16`` (default: none); scores are float32.
        kwargs: passed to :class:`torchmetrics.Metric` (``sync_on_compute``, ``process_group``, ...).
"""


class Insertion(_CausalMetric):
    __doc__ = (
        """RISE's insertion metric: AUC of the score as pixels are restored, most salient first.

    Each image starts as ``substrate(image)``; step ``i`` copies the pixels ranked
    ``[i * step, (i + 1) * step)`` in decreasing saliency (stable sort: ties in row-major order; all
    channels) from the image. The curve holds the model's score of the target class at each of the
    ``ceil(H * W / step) + 1`` points; its AUC is ``(sum(y) - y[0]/2 - y[-1]/2) / n``. ``compute()``
    is the mean AUC; ``curve()`` / ``plot()`` give the mean curve. Higher is better.
"""
        + _ARGS_DOC.format(substrate="the starting image: ``Blur(11, 5)`` (default, RISE's) or ``Blur(49, 100)`` (the PAMI paper's), any masker or callable ``x -> substrate``.")
        + """
    Example:
        >>> import torch
        >>> from pami_lightning import Constant, ModelCall
        >>> from pami_lightning.metrics import Insertion
        >>> logits = lambda x: torch.stack([x.flatten(1).sum(1) - 5, torch.zeros(len(x))], dim=1)
        >>> metric = Insertion(ModelCall(logits, modules=()), step=1, substrate=Constant(0.0))  # a pure function
        >>> images, heatmaps = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]]), torch.tensor([[[0.1, 0.4], [0.3, 0.2]]])
        >>> metric.update(heatmaps, images=images)
        >>> round(metric.compute().item(), 5)
        0.50736
        >>> metric.curve()[1].round(decimals=4)
        tensor([0.0067, 0.0474, 0.5000, 0.9820, 0.9933])
    """
    )
    higher_is_better = True
    _kind = "insertion"

    @staticmethod
    def _default_substrate() -> Masker:
        return Blur(11, 5)


class Deletion(_CausalMetric):
    __doc__ = (
        """RISE's deletion metric: AUC of the score as pixels are removed, most salient first.

    Each image starts whole; step ``i`` replaces the pixels ranked ``[i * step, (i + 1) * step)`` in
    decreasing saliency (stable sort; all channels) by the substrate's. Curves, AUC and states as
    :class:`Insertion`. Lower is better.
"""
        + _ARGS_DOC.format(substrate="what removed pixels become: ``Constant(0.0)`` (default, RISE's black), any masker or callable.")
        + """
    Example:
        >>> import torch
        >>> from pami_lightning import ModelCall
        >>> from pami_lightning.metrics import Deletion
        >>> logits = lambda x: torch.stack([x.flatten(1).sum(1) - 5, torch.zeros(len(x))], dim=1)
        >>> metric = Deletion(ModelCall(logits, modules=()), step=1)
        >>> metric.update(torch.tensor([[[0.1, 0.4], [0.3, 0.2]]]), images=torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]]))
        >>> round(metric.compute().item(), 5)
        0.49264
    """
    )
    higher_is_better = False
    _kind = "deletion"

    @staticmethod
    def _default_substrate() -> Masker:
        return Constant(0.0)
