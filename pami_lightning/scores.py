"""Score functions: model outputs of masked inputs -> one number per masked input.

A score function is ``fn(outputs, target) -> [N]`` where ``target`` is a ``[N]`` long tensor (the
explained class of each masked input's source). The built-ins follow the paper: the softmax
probability of the target class (default), the sigmoid of one logit (multi-label), or the raw
output (logits, regression values).
"""

from __future__ import annotations

from typing import Callable, Literal, Union

import torch
from torch import Tensor

__all__ = ["ScoreFn", "OutputSpec", "softmax_score", "sigmoid_score", "identity_score", "resolve_output"]

ScoreFn = Callable[[Tensor, Tensor], Tensor]
OutputSpec = Union[Literal["softmax", "sigmoid", "identity"], ScoreFn]


def _class_outputs(outputs: Tensor, target: Tensor, kind: str) -> Tensor:
    if not isinstance(outputs, Tensor):
        raise ValueError(
            f'output="{kind}" needs the model to return a Tensor [N, num_classes]; got {type(outputs).__name__} '
            "— pass a callable(outputs, target) -> [N] scores that picks the logits"
        )
    if outputs.ndim != 2:
        raise ValueError(
            f'output="{kind}" needs model outputs [N, num_classes]; got {list(outputs.shape)} '
            '— pass output="identity" or a callable(outputs, target) -> [N] scores'
        )
    if kind == "softmax" and outputs.shape[1] == 1:
        # Softmax over one logit is 1 for every masked input: the map would be constant.
        raise ValueError(
            'output="softmax" of a single output is always 1, which gives a constant map; '
            'pass output="sigmoid" for a binary logit or output="identity" for a raw value'
        )
    return outputs


def check_target(target: Tensor, num_classes: int) -> None:
    """Raise when a target class does not exist among ``num_classes`` outputs (CPU tensor, no sync)."""
    if target.numel() and (int(target.min()) < 0 or int(target.max()) >= num_classes):
        bad = target[(target < 0) | (target >= num_classes)][0].item()
        raise ValueError(f"target {bad} is out of range for a model with {num_classes} outputs; targets must lie in [0, {num_classes - 1}]")


def softmax_score(outputs: Tensor, target: Tensor) -> Tensor:
    """Softmax probability of ``target`` for outputs ``[N, K]`` (computed in float32)."""
    outputs = _class_outputs(outputs, target, "softmax")
    return outputs.float().softmax(dim=1).gather(1, target[:, None]).squeeze(1)


def sigmoid_score(outputs: Tensor, target: Tensor) -> Tensor:
    """Sigmoid of the ``target`` logit for outputs ``[N, K]`` (multi-label models)."""
    outputs = _class_outputs(outputs, target, "sigmoid")
    return outputs.float().gather(1, target[:, None]).squeeze(1).sigmoid()


def identity_score(outputs: Tensor, target: Tensor) -> Tensor:
    """The raw output: ``outputs[n, target[n]]`` for ``[N, K]``, the value itself for ``[N]`` or ``[N, 1]``."""
    if outputs.ndim == 2 and outputs.shape[1] > 1:
        return outputs.float().gather(1, target[:, None]).squeeze(1)
    if outputs.ndim == 1 or (outputs.ndim == 2 and outputs.shape[1] == 1):
        return outputs.float().reshape(-1)
    raise ValueError(
        f'output="identity" needs model outputs [N], [N, 1] or [N, K]; got {list(outputs.shape)} '
        "— pass a callable(outputs, target) -> [N] scores"
    )


_BUILTIN: dict[str, ScoreFn] = {"softmax": softmax_score, "sigmoid": sigmoid_score, "identity": identity_score}


def resolve_output(output: OutputSpec) -> ScoreFn:
    """The score function for ``output``: a built-in name or a callable ``(outputs, target) -> [N]``."""
    if isinstance(output, str):
        if output not in _BUILTIN:
            raise ValueError(f'output must be "softmax", "sigmoid", "identity" or a callable(outputs, target) -> [N]; got "{output}"')
        return _BUILTIN[output]
    if callable(output):
        return output
    raise TypeError(f"output must be a string or a callable(outputs, target) -> [N]; got {type(output).__name__}")


def is_builtin(fn: ScoreFn) -> bool:
    """Whether ``fn`` indexes outputs by class, so targets must be checked against ``K``."""
    return fn in (softmax_score, sigmoid_score) or fn is identity_score


def top1(outputs: Tensor) -> Tensor:
    """Top-1 class of outputs ``[N, K]``; ``0`` for single-valued outputs ``[N]`` / ``[N, 1]``."""
    if not isinstance(outputs, Tensor):
        raise ValueError(f"target=None explains the top-1 class, which needs outputs [N, K]; the model returned {type(outputs).__name__} — pass target=")
    if outputs.ndim == 1 or (outputs.ndim == 2 and outputs.shape[1] == 1):
        return torch.zeros(outputs.shape[0], dtype=torch.long, device=outputs.device)
    if outputs.ndim != 2:
        raise ValueError(f"target=None explains the top-1 class, which needs outputs [N, K]; got {list(outputs.shape)} — pass target=")
    return outputs.argmax(dim=1)
