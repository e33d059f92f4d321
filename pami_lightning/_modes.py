"""Running a black-box model without side effects: eval mode, every submodule's mode restored."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

from torch import nn

__all__ = ["eval_mode"]


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
