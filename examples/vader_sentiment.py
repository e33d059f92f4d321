"""Explain a third-party black box nobody here trained: the VADER sentiment analyser.

PAMI needs only scores. VADER (``pip install vaderSentiment``, a lexicon and rule based analyser)
takes a string and returns a compound polarity in ``[-1, 1]``; wrapped as a "model" from token ids to
that score, it is explained with the regression recipe (``output="identity"``): every masked input
keeps one part of the review and drops the rest of its words. Two partitions show what VADER reads:

- ``Words()``: each word alone (``good`` is positive on its own, ``not`` is nothing);
- ``TokenWindows(size=3)``: three words at a time, so VADER's rules that span words, such as
  negation (``not good``) and boosters (``very good``), show up.

Run::

    pip install vaderSentiment
    python examples/vader_sentiment.py

Without vaderSentiment installed the example says so and exits.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import torch
from torch import Tensor

from pami_lightning import PAMI, TokenMask, TokenWindows, Words

REVIEWS = (
    "the plot was not good at all",
    "the acting was very good but the ending felt awful",
    "a beautiful and moving film",
)
PAD, MASK = 0, 1


class VaderModel:
    """Token ids ``[N, L]`` -> VADER's compound score ``[N]``; PAD and MASK ids are dropped from the text."""

    def __init__(self, vocab: Sequence[str]) -> None:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        self.vocab, self.analyser = list(vocab), SentimentIntensityAnalyzer()

    def __call__(self, ids: Tensor) -> Tensor:
        texts = [" ".join(self.vocab[i] for i in row.tolist() if i > MASK) for row in ids]
        return torch.tensor([self.analyser.polarity_scores(t)["compound"] for t in texts])


def main(argv: Optional[Sequence[str]] = None) -> Optional[dict[str, dict[str, list[float]]]]:
    try:
        import vaderSentiment  # noqa: F401
    except ImportError:
        print("this example needs the vaderSentiment package: pip install vaderSentiment")
        return None
    words = [review.split() for review in REVIEWS]
    vocab = ["[PAD]", "[MASK]", *sorted({w for ws in words for w in ws})]
    index = {w: i for i, w in enumerate(vocab)}
    ids = torch.full((len(words), max(map(len, words))), PAD, dtype=torch.long)
    for i, ws in enumerate(words):
        ids[i, : len(ws)] = torch.tensor([index[w] for w in ws])

    model = VaderModel(vocab)
    results: dict[str, dict[str, list[float]]] = {}
    for name, partition in (("words", Words(pad_id=PAD)), ("windows of 3", TokenWindows(size=3, pad_id=PAD))):
        # VADER is a regression: explain its compound score itself (one output, target 0).
        heat = PAMI(model, partition, TokenMask(MASK), output="identity", batch_size=32, progress=False).explain(ids)
        results[name] = {review: heat[i, : len(words[i])].tolist() for i, review in enumerate(REVIEWS)}
    for i, review in enumerate(REVIEWS):
        print(f"\n{review!r}: compound {float(model(ids[i : i + 1])):+.3f}")
        print(f"  {'word':>10s} {'alone':>7s} {'in 3s':>7s}")
        for w, word in enumerate(words[i]):
            print(f"  {word:>10s} {results['words'][review][w]:+7.3f} {results['windows of 3'][review][w]:+7.3f}")
    return results


if __name__ == "__main__":
    main()
