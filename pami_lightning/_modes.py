"""Running a black-box model without side effects: no autograd, eval mode, every submodule's mode restored."""

from __future__ import annotations

from contextlib import AbstractContextManager, contextmanager, nullcontext
from contextvars import ContextVar
from typing import Any, Iterator

import torch
from torch import nn

__all__ = ["eval_mode", "grad_free", "keep_no_grad"]

_KEEP_NO_GRAD: ContextVar[bool] = ContextVar("pami_keep_no_grad", default=False)


def grad_free() -> AbstractContextManager:
    """The context of the model calls: ``torch.inference_mode()``, or the caller's ``no_grad`` inside :func:`keep_no_grad`."""
    if _KEEP_NO_GRAD.get() and not torch.is_grad_enabled():
        return nullcontext()
    return torch.inference_mode()


@contextmanager
def keep_no_grad() -> Iterator[None]:
    """Model calls in this block keep an enclosing ``no_grad`` instead of entering inference mode.

    Lightning validates under ``no_grad`` inside ``fit`` because tensors a model creates and keeps
    during a forward (caches, recurrent states) cannot take part in training when made in inference
    mode; a callback's model calls there must leave them ordinary tensors too.
    """
    token = _KEEP_NO_GRAD.set(True)
    try:
        yield
    finally:
        _KEEP_NO_GRAD.reset(token)


@contextmanager
def eval_mode(model: Any) -> Iterator[None]:
    """Put an ``nn.Module`` in eval mode; restore each submodule's own mode on exit.

    A blanket ``.train()`` afterwards would undo submodules the user froze in eval mode (e.g. a
    frozen backbone's BatchNorm), so every submodule's flag is recorded and put back. A bound method
    of a module counts as its module; other plain callables pass through untouched.
    """
    if not isinstance(model, nn.Module):
        # A bound method (model.forward, module.predict) runs its module: that module goes to eval.
        owner = getattr(model, "__self__", None)
        if not isinstance(owner, nn.Module):
            yield
            return
        model = owner
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training
