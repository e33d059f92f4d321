"""Score functions: model outputs of masked inputs -> one number per masked input.

A score function is ``fn(outputs, target) -> [N]`` where ``target`` is a ``[N]`` long tensor (the
explained class of each masked input's source). The built-ins follow the paper: the softmax
probability of the target class (default), the sigmoid of one logit (multi-label), or the raw
output (logits, regression values).

Recipes (any task whose outputs give one number per masked input):

- multi-label classification: ``output="sigmoid"`` and ``target=`` the label explained; each label's
  score is independent of the others.
- regression: ``output="identity"``: the predicted value itself (outputs ``[N]`` or ``[N, 1]``; for
  ``[N, D]`` targets pick the output dimension), e.g. the predicted heart rate of a 1-D signal.
- captioning: ``output=caption_word_score(position)`` and ``target=`` the word id: the probability
  of that word at that step of a caption fed with teacher forcing (see :func:`caption_word_score`).
- anything else: a callable ``(outputs, target [N]) -> [N]``, e.g. a margin
  ``lambda out, t: out.gather(1, t[:, None])[:, 0] - out.logsumexp(1)``.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from typing import Literal, Union

import torch
from torch import Tensor

__all__ = ["ScoreFn", "OutputSpec", "softmax_score", "sigmoid_score", "identity_score", "caption_word_score", "resolve_output"]

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


def as_target(target: int | Sequence[int] | Tensor, n: int, device: torch.device, noun: str = "input") -> Tensor:
    """Given classes as a ``[n]`` long tensor on ``device``: one int for all ``n`` inputs, or a list / ``[n]`` tensor."""
    if isinstance(target, Tensor):
        t = target.detach()
    elif isinstance(target, numbers.Integral):  # int, numpy integers
        t = torch.tensor(int(target))
    else:
        t = torch.as_tensor(target)
    if t.is_floating_point() or t.dtype == torch.bool:
        raise ValueError(f"target must hold integer class indices; got {t.dtype}")
    t = t.long()
    if t.ndim == 0:
        t = t.expand(n)
    if t.shape != (n,):
        raise ValueError(f"target must be an int or hold one class per {noun} ([{n}]); got shape {list(t.shape)}")
    return t.to(device)


def check_target(score_fn: ScoreFn, outputs: object, target: Tensor) -> None:
    """Raise when a given target (a CPU tensor: no sync) is no class of the outputs ``[N, K]`` a built-in score indexes."""
    if score_fn not in (softmax_score, sigmoid_score, identity_score) or not isinstance(outputs, Tensor) or outputs.ndim != 2:
        return
    num_classes = outputs.shape[1]
    if score_fn is identity_score and num_classes == 1:
        return  # a single value: identity ignores the target
    if target.numel() and (int(target.min()) < 0 or int(target.max()) >= num_classes):
        bad = target[(target < 0) | (target >= num_classes)][0].item()
        raise ValueError(f"target {bad} is out of range for a model with {num_classes} outputs; targets must lie in [0, {num_classes - 1}]")


def check_scores(scores: object, n: int, noun: str) -> None:
    """Raise unless a score function returned one score per masked input, ``[n]``."""
    if not isinstance(scores, Tensor) or scores.shape != (n,):
        got = list(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__
        raise ValueError(f"the score function must return one score per {noun} ([{n}]); got {got}")


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


def caption_word_score(position: int) -> ScoreFn:
    """Score of a captioner: the probability of word ``target`` at step ``position`` (teacher forcing).

    A captioner fed the image and the caption so far returns the next-word logits of every step,
    ``outputs [N, T, V]`` (``outputs[:, t]`` predicts the word after the ``t + 1`` tokens fed, e.g.
    after ``<bos> w_1 .. w_t``). Fixing the caption and keeping one image part at a time, PAMI shows
    the image regions that make the model say that word there (paper §4.6, Fig. 12).

    Args:
        position: the output step ``t`` whose word is explained (negative counts from the end).

    Returns:
        ``fn(outputs [N, T, V], target [N]) -> [N]``, the softmax probability of word ``target[n]``.

    Example:
        >>> import torch
        >>> from pami_lightning import PAMI, SlidingWindow, Constant, caption_word_score
        >>> caption = torch.tensor([[0, 5, 9]])  # <bos> a dog
        >>> class Captioner(torch.nn.Module):  # any model: [N, 3, H, W], [N, T] -> [N, T, V]
        ...     def forward(self, images, tokens):
        ...         return images.mean(dim=(1, 2, 3))[:, None, None] * torch.ones(len(images), 3, 12)
        >>> explainer = PAMI(Captioner(), SlidingWindow(radius=4, stride=4), Constant(0.0), output=caption_word_score(position=1),
        ...                  forward=lambda m, images: m(images, caption.expand(len(images), -1)))
        >>> explainer.explain(torch.rand(1, 3, 16, 16), target=9).shape  # where is "dog" (id 9) seen?
        torch.Size([1, 16, 16])
    """
    step = int(position)

    def score(outputs: Tensor, target: Tensor) -> Tensor:
        if not isinstance(outputs, Tensor) or outputs.ndim != 3:
            got = list(outputs.shape) if isinstance(outputs, Tensor) else type(outputs).__name__
            raise ValueError(f"caption_word_score needs the captioner's logits [N, T, V]; got {got} — return them from the model (e.g. a lambda picking .logits)")
        if not -outputs.shape[1] <= step < outputs.shape[1]:
            raise ValueError(f"position {step} is outside the caption's {outputs.shape[1]} steps")
        return outputs[:, step].float().softmax(dim=-1).gather(1, target[:, None]).squeeze(1)

    score.__qualname__ = f"caption_word_score(position={step})"
    return score


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


def top1(outputs: Tensor) -> Tensor:
    """Top-1 class of outputs ``[N, K]``; ``0`` for single-valued outputs ``[N]`` / ``[N, 1]``."""
    if not isinstance(outputs, Tensor):
        raise ValueError(f"target=None explains the top-1 class, which needs outputs [N, K]; the model returned {type(outputs).__name__} — pass target=")
    if outputs.ndim == 1 or (outputs.ndim == 2 and outputs.shape[1] == 1):
        return torch.zeros(outputs.shape[0], dtype=torch.long, device=outputs.device)
    if outputs.ndim != 2:
        raise ValueError(f"target=None explains the top-1 class, which needs outputs [N, K]; got {list(outputs.shape)} — pass target=")
    return outputs.argmax(dim=1)
