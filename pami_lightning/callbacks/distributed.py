"""The callback under DDP: every rank runs the same collectives, whatever fails where.

A rank that raised while the others wait in a collective hangs the run; so each step's outcome is
agreed on by all ranks before the next collective, and a failure anywhere is handled everywhere.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, Optional, TypeVar

import lightning.pytorch as pl
import torch
from torch import Tensor

from .samples import pad_to

__all__ = ["guard", "broadcast_outcome", "gather_shards"]

T = TypeVar("T")


def guard(trainer: pl.Trainer, work: Callable[[], T], on_error: Literal["warn", "raise"]) -> tuple[Optional[T], Optional[Exception]]:
    """``work()`` on every rank; a failure on any rank reaches every rank (one collective), then is raised or returned.

    Returns ``(value, None)``, or ``(None, error)``: this rank's own error, or one saying that another
    rank failed.
    """
    try:
        value, error = work(), None
    except Exception as caught:
        value, error = None, caught
    if trainer.strategy.reduce_boolean_decision(error is not None, all=False):
        error = error or RuntimeError("it failed on another rank (see that rank's warning)")
        if on_error == "raise":
            raise error
        return None, error
    return value, None


def broadcast_outcome(trainer: pl.Trainer, work: Callable[[], T]) -> T:
    """Global rank zero's result of ``work()`` on every rank, or its error raised on every rank (no rank left waiting)."""
    try:
        outcome: tuple[Any, Any] = (work(), None)
    except Exception as caught:
        outcome = (None, caught)
    value, error = trainer.strategy.broadcast(outcome, src=0)
    if error is not None:
        raise error
    return value


def gather_shards(trainer: pl.Trainer, size: int, *tensors: Tensor) -> list[Tensor]:
    """Every rank's rows of ``tensors`` in sample order: shards padded to ``size`` rows (all_gather needs equal shapes).

    Shards are contiguous (see :func:`~pami_lightning.callbacks.samples.shard`), so the rank-major
    order of ``all_gather`` is the sample order once the padding rows are dropped.
    """
    n = tensors[0].shape[0]
    real = torch.ones(n, dtype=torch.long, device=tensors[0].device)  # long, not bool: gloo gathers no bool
    gathered = [trainer.strategy.all_gather(pad_to(t, size)).reshape(-1, *t.shape[1:]) for t in (real, *tensors)]
    keep = gathered[0] > 0
    return [t[keep] for t in gathered[1:]]
