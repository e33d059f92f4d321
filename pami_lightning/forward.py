"""How the explained model is called: one object that the engine, the metrics and the callback share.

Every model call of the package — masked inputs in the engine, step images of insertion / deletion,
clean predictions in the callback — goes through a :class:`ModelCall`. It owns the model and the
module(s) whose train/eval mode it manages, an optional forward adapter, the preprocess applied
after masking, autocast, dict inputs (``model(**x)``), copies against in-place preprocessing, the
grad mode (``torch.inference_mode()`` or ``torch.no_grad()``) and the score function.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager, nullcontext
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from ._inputs import META_KEYS, Batch, batch_len, main_tensor, take
from ._warnings import user_stacklevel
from .scores import OutputSpec, check_scores, check_target, resolve_output, softmax_score, top1

__all__ = ["ModelCall", "Clean", "clone_batch"]


class Clean(NamedTuple):
    """What the model says about clean (unmasked) inputs, one row per input ``[B]``."""

    pred: Tensor  #: top-1 class (long); -1 where the outputs have no classes to rank (a dict scored by a callable ``output=``)
    target: Tensor  #: the class scored (the given one, else ``pred``)
    score: Tensor  #: score of ``target`` (float32), e.g. p(target)
    pred_score: Tensor  #: score of ``pred`` (float32), e.g. p(pred); NaN where ``pred`` is -1


class ModelCall:
    """The explained model and how to call it.

    Args:
        model: the ``nn.Module`` explained — or any callable, with ``modules=`` naming the modules
            it runs (a bound method or ``functools.partial`` of a module counts as that module).
        forward: optional adapter ``forward(model, x)`` (``forward(model, **x)`` for dict inputs),
            e.g. ``lambda m, **kw: m(**kw).logits`` for a Hugging Face model (default: ``model(x)``,
            or ``model(**x)`` for a dict; keys in ``word_ids`` / ``offset_mapping`` /
            ``special_tokens_mask`` are never passed).
        preprocess: applied to every batch before the model, e.g. mean/std normalisation (default: none).
        output: score of each input: ``"softmax"`` (default: probability of the target class),
            ``"sigmoid"``, ``"identity"`` or a callable ``(outputs, target [N]) -> [N]``.
        autocast_dtype: run the model under ``torch.autocast`` with ``torch.bfloat16`` /
            ``torch.float16`` (default: none); scores are float32.
        batch_size: inputs per forward call of :meth:`clean` (default 64); the engine and the
            metrics batch by it too.
        inference_mode: call the model under ``torch.inference_mode()`` (default) or, when False,
            ``torch.no_grad()`` — what a callback inside ``fit`` needs, so that tensors the model
            caches during the call stay usable by training.
        modules: the modules whose train/eval mode is managed (default: found from ``model``). While
            the model runs they are in eval mode (BatchNorm statistics untouched, dropout off), and
            each submodule's own mode is restored afterwards. Pass ``()`` for a model that has none.

    A plain callable without ``modules=`` gets a warning: its modules cannot be put in eval mode, so
    dropout would make two identical calls differ and BatchNorm would overwrite its statistics.

    Example:
        >>> import torch
        >>> from pami_lightning import ModelCall
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Dropout(0.5), torch.nn.Linear(12, 3))
        >>> call = ModelCall(model, preprocess=lambda x: 2 * x - 1)
        >>> x = torch.rand(4, 3, 2, 2)
        >>> with call.running():
        ...     same = torch.equal(call(x), call(x))  # eval mode: dropout is off
        >>> same, model.training
        (True, True)
        >>> call.clean(x).pred.shape
        torch.Size([4])
    """

    def __init__(
        self,
        model: Callable[..., Any],
        *,
        forward: Callable[..., Any] | None = None,
        preprocess: Callable[[Any], Any] | None = None,
        output: OutputSpec = "softmax",
        autocast_dtype: torch.dtype | None = None,
        batch_size: int = 64,
        inference_mode: bool = True,
        modules: Sequence[nn.Module] | None = None,
    ) -> None:
        if isinstance(model, ModelCall):
            raise TypeError("model is already a ModelCall; use it as is or call .replace(...) to change it")
        if not callable(model):
            raise TypeError(f"model must be an nn.Module or a callable inputs -> outputs; got {type(model).__name__}")
        if forward is not None and not callable(forward):
            raise TypeError(f"forward must be a callable forward(model, x) -> outputs; got {type(forward).__name__}")
        if preprocess is not None and not callable(preprocess):
            raise TypeError(f"preprocess must be a callable batch -> batch; got {type(preprocess).__name__}")
        if autocast_dtype not in (None, torch.bfloat16, torch.float16):
            raise ValueError(f"autocast_dtype must be None, torch.bfloat16 or torch.float16; got {autocast_dtype}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size}")
        self.model = model
        self.forward = forward
        self.preprocess = preprocess
        self.output = output
        self.score_fn = resolve_output(output)
        self.autocast_dtype = autocast_dtype
        self.batch_size = int(batch_size)
        self.inference_mode = bool(inference_mode)
        self._looked = False
        if modules is None:
            # A preprocess that is a module (a BatchNorm, a learned normaliser) runs in eval mode too.
            found = _modules_of(model) + ((preprocess,) if isinstance(preprocess, nn.Module) else ())
            if not _modules_of(model):
                warnings.warn(
                    f"the model {model!r} is a plain callable, so its modules cannot be put in eval mode (dropout and "
                    "BatchNorm would run in training mode): pass the nn.Module as model= and the call as "
                    "forward=lambda m, x: ..., or name them with modules=[...] (modules=() if there are none)",
                    UserWarning,
                    stacklevel=user_stacklevel(),
                )
            self.modules: tuple[nn.Module, ...] = found
        else:
            if not all(isinstance(m, nn.Module) for m in modules):
                raise TypeError("modules must be nn.Module instances")
            self.modules = tuple(modules)

    def replace(self, **changes: Any) -> ModelCall:
        """A copy with some arguments changed, e.g. ``call.replace(inference_mode=False)``."""
        args: dict[str, Any] = {
            "forward": self.forward, "preprocess": self.preprocess, "output": self.output, "autocast_dtype": self.autocast_dtype,
            "batch_size": self.batch_size, "inference_mode": self.inference_mode, "modules": self.modules,
        }
        unknown = set(changes) - set(args) - {"model"}
        if unknown:
            raise TypeError(f"ModelCall.replace() got unknown arguments {sorted(unknown)}")
        args.update(changes)
        model = args.pop("model", self.model)
        if "model" in changes and "modules" not in changes:
            args["modules"] = None
        return ModelCall(model, **args)

    @contextmanager
    def running(self) -> Iterator[None]:
        """The context of model calls: the grad mode and every managed module in eval mode (restored on exit)."""
        with ExitStack() as stack:
            stack.enter_context(torch.inference_mode() if self.inference_mode else torch.no_grad())
            for module in self.modules:
                stack.enter_context(_eval_mode(module))
            yield

    def __call__(self, batch: Batch) -> Any:
        """Outputs of one batch (preprocess, autocast, adapter); checks one output row per input.

        Call inside :meth:`running`. ``batch`` is used as is: the caller owns it (see :meth:`clean`
        for calls on copies of user data).
        """
        n = batch_len(batch)
        x = self.preprocess(batch) if self.preprocess is not None else batch
        device = main_tensor(batch).device
        ctx = torch.autocast(device_type=device.type, dtype=self.autocast_dtype) if self.autocast_dtype else nullcontext()
        with ctx:
            if isinstance(x, Mapping):
                kwargs = {k: v for k, v in x.items() if k not in META_KEYS}
                outputs = self.forward(self.model, **kwargs) if self.forward is not None else self.model(**kwargs)
            else:
                outputs = self.forward(self.model, x) if self.forward is not None else self.model(x)
        _check_batch(outputs, n, self)
        return outputs

    def score(self, outputs: Any, target: Tensor, noun: str = "input") -> Tensor:
        """Score of ``target [N]`` in each row of ``outputs``: float32 ``[N]`` (``noun`` names a row in errors)."""
        scores = self.score_fn(outputs, target)
        check_scores(scores, target.shape[0], noun)
        return scores.float()

    def check_outputs(self, outputs: Any, target: Tensor | None) -> None:
        """Given targets (a CPU tensor) are classes of the outputs; and, once, that softmax is not asked of probabilities."""
        if target is not None:
            check_target(self.score_fn, outputs, target)
        if not self._looked and self.score_fn is softmax_score and isinstance(outputs, Tensor) and outputs.ndim == 2:
            self._looked = True  # one look (a device sync) per ModelCall
            _warn_if_probabilities(outputs)

    def clean(self, inputs: Batch, target: Tensor | None = None) -> Clean:
        """Predictions on clean inputs, in chunks of ``batch_size``, on copies of the inputs.

        Copies, because an in-place preprocess or model (``Normalize(inplace=True)``) would rewrite
        the caller's inputs. Runs inside :meth:`running` (entered here when needed).

        Args:
            inputs: a batch ``[B, ...]`` (or a dict of them).
            target: classes to score ``[B]`` (default: each input's top-1 class).

        Returns:
            :class:`Clean`: ``pred``, ``target``, ``score``, ``pred_score``, each ``[B]``.
        """
        n = batch_len(inputs)
        device = main_tensor(inputs).device
        preds, targets, scores, pred_scores = [], [], [], []
        with self.running():
            for lo in range(0, n, self.batch_size):
                outputs = self(clone_batch(take(inputs, lo, lo + self.batch_size)))
                if lo == 0:
                    self.check_outputs(outputs, None if target is None else target.cpu())
                t = target[lo : lo + self.batch_size] if target is not None else None
                pred = _top1_or_none(outputs, required=t is None)
                t = t if t is not None else pred
                assert t is not None
                targets.append(t)
                scores.append(self.score(outputs, t))
                if pred is None:  # unknown, not the target: a report must not show the model as right
                    preds.append(torch.full_like(t, -1))
                    pred_scores.append(torch.full_like(scores[-1], math.nan))
                else:
                    preds.append(pred)
                    pred_scores.append(self.score(outputs, pred))
        if not preds:
            empty = torch.zeros(0, dtype=torch.long, device=device)
            return Clean(empty, empty, empty.float(), empty.float())
        return Clean(*(torch.cat(v) for v in (preds, targets, scores, pred_scores)))

    def __repr__(self) -> str:
        parts = [repr(self.model)]
        if self.forward is not None:
            parts.append(f"forward={self.forward!r}")
        if self.output != "softmax":
            parts.append(f"output={self.output!r}")
        if self.autocast_dtype is not None:
            parts.append(f"autocast_dtype={self.autocast_dtype}")
        return f"ModelCall({', '.join(parts)})"


def clone_batch(x: Batch) -> Batch:
    """A batch the model may modify in place without touching the caller's tensors."""
    return {k: v.clone() for k, v in x.items()} if isinstance(x, Mapping) else x.clone()


def _modules_of(model: Any) -> tuple[nn.Module, ...]:
    """The modules a model runs: itself, a bound method's module, a partial's function and module arguments."""
    if isinstance(model, nn.Module):
        return (model,)
    owner = getattr(model, "__self__", None)
    if isinstance(owner, nn.Module):
        return (owner,)
    if isinstance(model, functools.partial):
        found = list(_modules_of(model.func))
        found += [a for a in (*model.args, *model.keywords.values()) if isinstance(a, nn.Module)]
        return tuple(dict.fromkeys(found))
    return ()


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode for ``model``; every submodule's own flag restored on exit.

    A blanket ``.train()`` afterwards would undo submodules the user froze in eval mode (e.g. a
    frozen backbone's BatchNorm), so each flag is recorded and put back.
    """
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def _check_batch(outputs: Any, n: int, call: ModelCall) -> None:
    """One output row per input: a wrong batch would later fail as an unreadable index error."""
    tensors = [outputs] if isinstance(outputs, Tensor) else []
    # In a dict or tuple (a Hugging Face output), 0-d entries such as a loss are not per-input rows.
    if isinstance(outputs, Mapping):
        tensors = [v for v in outputs.values() if isinstance(v, Tensor) and v.ndim]
    elif isinstance(outputs, (tuple, list)):
        tensors = [v for v in outputs if isinstance(v, Tensor) and v.ndim]
    for t in tensors:
        if t.ndim == 0 or t.shape[0] != n:
            got = list(t.shape)
            raise ValueError(
                f"the model returned outputs of shape {got} for a batch of {n} inputs; it must return one row per input "
                f"([{n}, ...]) — check {call!r} (a squeeze, a fixed batch size or a reduction over the batch?)"
            )


def _top1_or_none(outputs: Any, required: bool) -> Tensor | None:
    """Top-1 classes, or None when the outputs have none and none is needed (a callable score of a dict)."""
    try:
        return top1(outputs)
    except ValueError:
        if required:
            raise
        return None


def _warn_if_probabilities(outputs: Tensor) -> None:
    """Softmax of probabilities squashes every score towards 1/K: a distorted map, no error."""
    o = outputs.detach().float()
    if o.shape[1] > 1 and bool((o >= 0).all() & ((o.sum(dim=1) - 1).abs() <= 1e-3).all()):
        warnings.warn(
            'the model\'s outputs look like probabilities already (every row is >= 0 and sums to 1), and output="softmax" '
            'would apply softmax again; pass output="identity" to explain the probabilities as they are',
            UserWarning,
            stacklevel=user_stacklevel(),
        )
