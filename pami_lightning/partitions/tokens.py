"""Partitions of token sequences ``[B, L]``: sliding windows of tokens and words (paper §3.2.2).

A sequence input is a tensor ``[B, L]`` of token ids or a dict of tensors such as a tokenizer's
``{"input_ids": [B, L], "attention_mask": [B, L], ...}``. Only *real* tokens are partitioned: padding
(``attention_mask == 0`` or ``pad_id``), tokens flagged by ``special_tokens_mask`` and ``keep_ids``
(e.g. ``[CLS]``, ``[SEP]``) belong to no part. Every masked input keeps them as they are and their
importance is 0, so a sequence packed with longer ones gets the same map as alone.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Collection, Mapping, Sequence
from concurrent.futures import Executor, Future

import torch
from torch import Tensor

from .._inputs import IDS_KEY, Batch, main_tensor
from .base import LabelParts, Partition, Parts, PartsOrFuture

__all__ = ["TokenPartition", "TokenWindows", "Words", "word_ids_from_tokens"]

#: Token strings in no word by default: the special tokens of BERT, RoBERTa / SentencePiece, XLNet and GPT-2.
_SPECIAL_TOKENS = frozenset({"[CLS]", "[SEP]", "[PAD]", "[MASK]", "<s>", "</s>", "<pad>", "<mask>", "<cls>", "<sep>", "<|endoftext|>"})

#: Prefixes that start a word: SentencePiece's "▁" and byte-level BPE's "Ġ" (an encoded leading space).
_WORD_START = ("▁", "Ġ")


class TokenPartition(Partition):
    """Base class of partitions of token sequences ``[B, L]`` (a tensor of ids or a dict).

    Args:
        pad_id: id of the padding token, for inputs without an ``attention_mask`` (default: none).
        keep_ids: ids never partitioned nor masked, e.g. ``[CLS]`` / ``[SEP]`` / ``<s>`` (default: none).
    """

    spatial_dims = 1
    channel_axis = False

    def __init__(self, pad_id: int | None = None, keep_ids: Sequence[int] = ()) -> None:
        self.pad_id = None if pad_id is None else int(pad_id)
        self.keep_ids = tuple(int(i) for i in keep_ids)

    def _rule_repr(self) -> str:
        """``pad_id`` and ``keep_ids`` for ``repr`` (when set), so that equal reprs mean equal partitions."""
        pad = f", pad_id={self.pad_id}" if self.pad_id is not None else ""
        return pad + (f", keep_ids={list(self.keep_ids)}" if self.keep_ids else "")

    def domain(self, x: Batch) -> Tensor:
        """Tokens of one input that parts may cover: bool ``[L]`` (False for padding and special tokens)."""
        ids = main_tensor(x)
        real = torch.ones_like(ids, dtype=torch.bool)
        if isinstance(x, Mapping):
            if "attention_mask" in x:
                real &= x["attention_mask"].bool()
            if "special_tokens_mask" in x:
                real &= ~x["special_tokens_mask"].bool()
        if self.pad_id is not None:
            real &= ids != self.pad_id
        if self.keep_ids:
            real &= ~torch.isin(ids, torch.tensor(self.keep_ids, device=ids.device))
        return real

    def keep(self, x: Batch) -> Tensor | None:
        return ~self.domain(x)

    @abstractmethod
    def parts(
        self,
        x: Batch,
        *,
        guide: Tensor | None = None,
        device: torch.device | str | None = None,
        executor: Executor | None = None,
    ) -> Sequence[PartsOrFuture]:
        """Groups of parts of one sequence: ids ``[L]`` or a dict of them (token partitions take dicts too)."""

    def masks(self, x: Batch, guide: Tensor | None = None) -> Tensor:
        """All parts of one sequence (a tensor ``[L]`` or a dict of them) as bool masks ``[J, L]``.

        Example:
            >>> import torch
            >>> from pami_lightning import TokenWindows
            >>> TokenWindows(size=2, stride=2).masks(torch.tensor([5, 6, 7])).int().tolist()
            [[1, 1, 0], [0, 0, 1]]
        """
        batch = {k: v.unsqueeze(0) for k, v in x.items()} if isinstance(x, Mapping) else x.unsqueeze(0)
        self.check_input(batch, "x")
        groups = [g.result() if isinstance(g, Future) else g for g in self.parts(x)]
        if not groups:
            return torch.zeros(0, main_tensor(x).shape[0], dtype=torch.bool, device=main_tensor(x).device)
        return torch.cat([g.masks() for g in groups])

    def check_input(self, inputs: Batch, name: str = "inputs", batched: bool = True) -> None:
        """Raise a ValueError naming the fix when ``inputs`` is not ``[B, L]`` ids or a dict of them."""
        kind = type(self).__name__
        if isinstance(inputs, Mapping):
            if IDS_KEY not in inputs:
                raise ValueError(f'{name} given as a dict must hold the token ids under "{IDS_KEY}" for {kind}; got keys {sorted(inputs)}')
            bad = [k for k, v in inputs.items() if not isinstance(v, Tensor)]
            if bad:
                raise ValueError(f"every value of {name} must be a tensor with the batch first; {bad} are not — convert them with torch.as_tensor")
        elif not isinstance(inputs, Tensor):
            raise TypeError(f"{name} must be token ids [B, L] (a tensor) or a dict of tensors for {kind}; got {type(inputs).__name__}")
        ids = main_tensor(inputs)
        if ids.ndim != 2:
            hint = " — add a batch dimension: ids.unsqueeze(0)" if ids.ndim == 1 else ""
            raise ValueError(f"{name} must be token ids [B, L] for {kind}; got {list(ids.shape)}{hint}")
        if ids.is_floating_point() or ids.dtype == torch.bool:
            raise ValueError(f"{name} must hold integer token ids for {kind}; got {ids.dtype} — pass ids.long()")
        if isinstance(inputs, Mapping):
            b, length = ids.shape
            for key, value in inputs.items():
                if value.shape[:1] != (b,):
                    raise ValueError(f'{name}["{key}"] must have the batch of {b} first like "{IDS_KEY}"; got {list(value.shape)}')
                if key in ("attention_mask", "word_ids", "special_tokens_mask", "offset_mapping") and value.shape[1:2] != (length,):
                    raise ValueError(f'{name}["{key}"] must have one entry per token ([{b}, {length}, ...]); got {list(value.shape)}')


class _WindowParts(Parts):
    """Windows over the ranks of the real tokens: window ``j`` keeps ranks ``lo[j] .. hi[j]``."""

    def __init__(self, rank: Tensor, lo: Tensor, hi: Tensor) -> None:
        self.rank, self.lo, self.hi = rank, lo, hi

    def __len__(self) -> int:
        return self.lo.numel()

    def masks(self, start: int = 0, stop: int | None = None) -> Tensor:
        lo, hi = self.lo[start:stop, None], self.hi[start:stop, None]
        return (self.rank >= lo) & (self.rank <= hi)


class TokenWindows(TokenPartition):
    """Sliding windows of ``size`` consecutive real tokens, centred ``stride`` tokens apart (strategy I).

    As :class:`SlidingWindow` does for pixels: centres lie on real tokens ``0, stride, 2*stride, ...``
    and each window spans ``(size - 1) // 2`` tokens before its centre and ``size // 2`` after,
    clipped at the ends of the sequence. Tokens are covered by equally many windows except near the
    ends, where the windows are shorter; every token is covered when ``stride <= size``. Padding and
    special tokens are skipped (see :class:`TokenPartition`): a window spans real tokens on both sides.

    Args:
        size: tokens per window (default 3).
        stride: tokens between window centres (default 1).
        pad_id: id of the padding token for inputs without an ``attention_mask`` (default: none).
        keep_ids: ids never partitioned nor masked, e.g. ``[CLS]`` / ``[SEP]`` (default: none).

    Example:
        >>> import torch
        >>> from pami_lightning import TokenWindows
        >>> TokenWindows(size=3, stride=2, pad_id=0).masks(torch.tensor([5, 6, 7, 0])).int().tolist()
        [[1, 1, 0, 0], [0, 1, 1, 0]]
    """

    def __init__(self, size: int = 3, stride: int = 1, *, pad_id: int | None = None, keep_ids: Sequence[int] = ()) -> None:
        if size < 1:
            raise ValueError(f"size must be >= 1 token; got {size}")
        if stride < 1:
            raise ValueError(f"stride must be >= 1 token; got {stride}")
        super().__init__(pad_id, keep_ids)
        self.size, self.stride = int(size), int(stride)

    def parts(
        self,
        x: Batch,
        *,
        guide: Tensor | None = None,
        device: torch.device | str | None = None,
        executor: Executor | None = None,
    ) -> list[Parts]:
        real = self.domain(x)
        if device is not None:
            real = real.to(device)
        n = int(real.sum())
        if n == 0:
            return []
        # Rank of each real token among the real ones; -1 elsewhere, below every window.
        rank = torch.where(real, real.cumsum(0) - 1, -1)
        centres = torch.arange(0, n, self.stride, device=real.device)
        lo = (centres - (self.size - 1) // 2).clamp_min(0)
        return [_WindowParts(rank, lo, centres + self.size // 2)]

    def num_parts(self, length: int) -> int:
        """Number of windows (forward passes) for a sequence of ``length`` real tokens."""
        return -(-length // self.stride)

    def __repr__(self) -> str:
        return f"TokenWindows(size={self.size}, stride={self.stride}{self._rule_repr()})"


class Words(TokenPartition):
    """Pre-segmentation of a token sequence into words: each word is one part (strategy II).

    Word boundaries come from, in order:

    1. ``word_ids`` in a dict input: ``[B, L]`` ints, the word of each token, negative for tokens in
       no word (a Hugging Face encoding's ``[enc.word_ids(b) for b ...]`` with ``None`` as ``-1``, or
       :func:`word_ids_from_tokens` of each row's token strings when there is no tokenizer library);
    2. ``offset_mapping`` in a dict input (``tokenizer(..., return_offsets_mapping=True)``): a token
       that starts where the previous one ends continues its word, so words are split at whitespace;
    3. otherwise ``separator_ids``: words are runs of tokens between separators (e.g. the space of a
       character-level vocabulary); without separators every real token is a word (word-level vocabularies).

    ``word_ids``, ``offset_mapping`` and ``special_tokens_mask`` are never passed to the model.
    Separators, padding and special tokens belong to no word (see :class:`TokenPartition`).

    Args:
        separator_ids: ids of tokens that separate words, e.g. a space (default: none).
        pad_id: id of the padding token for inputs without an ``attention_mask`` (default: none).
        keep_ids: ids never partitioned nor masked, e.g. ``[CLS]`` / ``[SEP]`` (default: none).

    Example:
        >>> import torch
        >>> from pami_lightning import Words
        >>> chars = torch.tensor([ord(c) for c in "hi yo"])
        >>> Words(separator_ids=[ord(" ")]).masks(chars).int().tolist()
        [[1, 1, 0, 0, 0], [0, 0, 0, 1, 1]]
    """

    def __init__(self, separator_ids: Sequence[int] = (), *, pad_id: int | None = None, keep_ids: Sequence[int] = ()) -> None:
        super().__init__(pad_id, keep_ids)
        self.separator_ids = tuple(int(i) for i in separator_ids)

    def labels(self, x: Batch) -> Tensor:
        """Word index of each token of one input: long ``[L]``, ``0..K-1`` in order, ``-1`` outside words."""
        ids = main_tensor(x)
        real = self.domain(x)
        if isinstance(x, Mapping) and "word_ids" in x:
            word = x["word_ids"].to(ids.device).long()
            real = real & (word >= 0)
            # Same word id, same word; relabel to 0..K-1 in order of appearance.
            _, labels = torch.unique(torch.where(real, word, word.max() + 1 if word.numel() else 0), return_inverse=True)
            return torch.where(real, labels, -1)
        if isinstance(x, Mapping) and "offset_mapping" in x:
            offsets = x["offset_mapping"].to(ids.device).long()
            real = real & (offsets[:, 1] > offsets[:, 0])  # (0, 0): special tokens
            pos = real.nonzero().flatten()
            new = torch.ones_like(pos, dtype=torch.bool)
            new[1:] = offsets[pos[1:], 0] != offsets[pos[:-1], 1]
            return self._number(real, pos, new)
        if self.separator_ids:
            real = real & ~torch.isin(ids, torch.tensor(self.separator_ids, device=ids.device))
            pos = real.nonzero().flatten()
            new = torch.ones_like(pos, dtype=torch.bool)
            new[1:] = pos[1:] != pos[:-1] + 1  # a gap (separator, special token) ends the word
            return self._number(real, pos, new)
        return torch.where(real, real.cumsum(0) - 1, -1)

    @staticmethod
    def _number(real: Tensor, pos: Tensor, new: Tensor) -> Tensor:
        labels = torch.full(real.shape, -1, dtype=torch.long, device=real.device)
        labels[pos] = new.cumsum(0) - 1
        return labels

    def keep(self, x: Batch) -> Tensor | None:
        return self.labels(x) < 0

    def parts(
        self,
        x: Batch,
        *,
        guide: Tensor | None = None,
        device: torch.device | str | None = None,
        executor: Executor | None = None,
    ) -> list[Parts]:
        parts = LabelParts(self.labels(x), device)
        return [parts] if len(parts) else []

    def __repr__(self) -> str:
        args = f"separator_ids={list(self.separator_ids)}{self._rule_repr()}" if self.separator_ids else self._rule_repr()[2:]
        return f"Words({args})"


def word_ids_from_tokens(tokens: Sequence[str], *, special: Collection[str] = _SPECIAL_TOKENS) -> list[int]:
    """The word of each token string, ``0..K-1`` in order, ``-1`` for special tokens: ``Words``' ``word_ids``.

    Sub-word pieces are grouped by the usual conventions, read from the strings alone:

    - if any token starts with ``▁`` (SentencePiece) or ``Ġ`` (byte-level BPE, e.g. GPT-2 / RoBERTa),
      those tokens start words and every other token continues the word before it;
    - otherwise a token starting with ``##`` (WordPiece) continues the word before it and every other
      token is a word of its own (so plain whitespace-split tokens are one word each).

    Tokens in ``special`` are in no word and end the word before them. A byte-level BPE sequence with
    no ``Ġ`` at all (one word without a leading space) reads as plain tokens, one word each.

    Args:
        tokens: the token strings of one sequence, padding included, e.g. ``tokenizer.convert_ids_to_tokens(ids)``.
        special: token strings in no word (default: ``[CLS]``, ``[SEP]``, ``[PAD]``, ``[MASK]``, ``<s>``,
            ``</s>``, ``<pad>``, ``<mask>``, ``<cls>``, ``<sep>``, ``<|endoftext|>``).

    Returns:
        One int per token; ``torch.tensor([word_ids_from_tokens(t) for t in rows])`` is the ``word_ids``
        of a dict input whose rows of token strings have equal lengths.

    Example:
        >>> import torch
        >>> from pami_lightning import Words, word_ids_from_tokens
        >>> word_ids_from_tokens(["[CLS]", "the", "gr", "##eat", "film", "[SEP]", "[PAD]"])
        [-1, 0, 1, 1, 2, -1, -1]
        >>> word_ids_from_tokens(["<s>", "▁the", "▁gr", "eat", "▁film", "</s>"])
        [-1, 0, 1, 1, 2, -1]
        >>> x = {"input_ids": torch.tensor([11, 12, 13]), "word_ids": torch.tensor(word_ids_from_tokens(["gr", "##eat", "film"]))}
        >>> Words().masks(x).int().tolist()
        [[1, 1, 0], [0, 0, 1]]
    """
    if isinstance(tokens, str):
        raise TypeError("tokens must be the token strings of one sequence, e.g. text.split(); got one str")
    bad = next((t for t in tokens if not isinstance(t, str)), None)
    if bad is not None:
        raise TypeError(f"tokens must be strings; got {type(bad).__name__} {bad!r} — map ids to strings first, "
                        "e.g. tokenizer.convert_ids_to_tokens(ids)")
    marked = any(t.startswith(_WORD_START) for t in tokens if t not in special)
    word_ids: list[int] = []
    word, in_word = -1, False
    for token in tokens:
        if token in special:
            word_ids.append(-1)
            in_word = False
            continue
        continues = not token.startswith(_WORD_START) if marked else token.startswith("##")
        if not (in_word and continues):
            word += 1
        word_ids.append(word)
        in_word = True
    return word_ids
