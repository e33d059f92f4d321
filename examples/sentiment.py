"""Explain a sentiment classifier word by word with PAMI (paper §4.6, Fig. 14).

The example generates its own corpus: template reviews ("the plot was truly wonderful", "what a
dreadful ending") whose label is the polarity of their one sentiment word, among neutral words. A toy
subword tokenizer splits long words into pieces (``wonderful`` -> ``wond ##erfu ##l``) and returns
``word_ids``, as a Hugging Face tokenizer does. A small bag-of-embeddings classifier is trained
from scratch with Lightning; after every epoch :class:`~pami_lightning.PAMICallback` explains 4 fixed
validation reviews with ``Words()`` (one part per word, its pieces together) and ``AttentionMask()``
(removed words are not attended) and logs them to TensorBoard as highlighted tokens
(``pami/sample_<i>`` images, one step per epoch) with ``pami/stability``. At the end the example
explains a few more reviews, prints each word's importance and writes ``words.html``.

Run::

    python examples/sentiment.py            # about 20 s on 2 CPU cores
    tensorboard --logdir logs/sentiment

Flags: ``--fast`` (a few seconds, for CI), ``--max-epochs N``, ``--log-dir DIR``, ``--seed S``.
"""

from __future__ import annotations

import argparse
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor, nn
from torch.utils.data import DataLoader

from pami_lightning import PAMI, AttentionMask, PAMICallback, Words
from pami_lightning.callbacks import PAMIOptions, Pictures
from pami_lightning.visualize import highlight_tokens

POSITIVE = ("wonderful", "great", "superb", "delightful", "brilliant", "charming", "excellent", "moving")
NEGATIVE = ("dreadful", "awful", "boring", "terrible", "clumsy", "tedious", "dull", "disappointing")
NOUNS = ("film", "movie", "plot", "cast", "ending", "script", "soundtrack", "story", "director")
ADVERBS = ("truly", "really", "quite", "rather", "somewhat", "simply")
TEMPLATES = (
    "the {noun} was {adverb} {word}",
    "what a {word} {noun}",
    "i found the {noun} {adverb} {word} overall",
    "honestly the {noun} is {word}",
    "a {word} {noun} with a {noun2} to match",
)
#: Reviews explained after training.
PROBES = ("the soundtrack was simply wonderful", "what a tedious story", "honestly the cast is excellent", "i found the ending rather disappointing overall")


def make_corpus(n: int, seed: int) -> list[tuple[str, int]]:
    """``n`` template reviews with label 1 (positive) or 0 (negative)."""
    rng = random.Random(seed)
    corpus = []
    for _ in range(n):
        label = rng.randrange(2)
        word = rng.choice(POSITIVE if label else NEGATIVE)
        template = rng.choice(TEMPLATES)
        fill = {"noun": rng.choice(NOUNS), "noun2": rng.choice(NOUNS), "adverb": rng.choice(ADVERBS), "word": word}
        corpus.append((template.format(**fill), label))
    return corpus


class PieceTokenizer:
    """A toy subword tokenizer: words of more than 5 letters split into 4-letter pieces (``##`` marks
    a continuation). ``__call__`` returns padded ``input_ids``, ``attention_mask`` and ``word_ids``."""

    PAD = "[PAD]"

    def __init__(self, texts: Sequence[str]) -> None:
        pieces = sorted({p for text in texts for word in text.split() for p in self.pieces(word)})
        self.vocab = [self.PAD, *pieces]
        self.ids = {p: i for i, p in enumerate(self.vocab)}

    @staticmethod
    def pieces(word: str) -> list[str]:
        if len(word) <= 5:
            return [word]
        return [word[:4]] + ["##" + word[i : i + 4] for i in range(4, len(word), 4)]

    def __call__(self, texts: Sequence[str]) -> dict[str, Tensor]:
        rows = [[(self.ids[p], w) for w, word in enumerate(text.split()) for p in self.pieces(word)] for text in texts]
        length = max(len(r) for r in rows)
        ids = torch.zeros(len(rows), length, dtype=torch.long)
        word_ids = torch.full((len(rows), length), -1, dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor([p for p, _ in row])
            word_ids[i, : len(row)] = torch.tensor([w for _, w in row])
        return {"input_ids": ids, "attention_mask": (word_ids >= 0).long(), "word_ids": word_ids}

    def tokens(self, ids: Sequence[int]) -> list[str]:
        return [self.vocab[int(i)] for i in ids]


class SentimentModel(L.LightningModule):
    """Bag of piece embeddings, averaged over the attended pieces, then an MLP: 2 logits."""

    def __init__(self, vocab_size: int, dim: int = 32, lr: float = 3e-3, word_dropout: float = 0.5) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.embed = nn.Embedding(vocab_size, dim, padding_idx=0)
        self.head = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, 2))

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        w = attention_mask.unsqueeze(-1).float()
        return self.head((self.embed(input_ids) * w).sum(1) / w.sum(1).clamp_min(1))

    def _step(self, batch: dict[str, Tensor], stage: str) -> Tensor:
        attention = batch["attention_mask"]
        if stage == "train":
            # Word dropout: the model also learns what words say on their own (a review with its
            # sentiment word dropped is a coin toss), which is what PAMI's masked inputs ask it.
            word_ids = batch["word_ids"]
            kept = torch.rand(word_ids.shape, device=word_ids.device) > self.hparams.word_dropout
            attention = attention * kept.gather(1, word_ids.clamp_min(0))
        logits = self(batch["input_ids"], attention)
        loss = F.cross_entropy(logits, batch["label"])
        self.log(f"{stage}/loss", loss, prog_bar=True)
        self.log(f"{stage}/acc", (logits.argmax(1) == batch["label"]).float().mean(), prog_bar=True)
        return loss

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=self.hparams.lr)


def word_scores(tokenizer: PieceTokenizer, encoded: dict[str, Tensor], heat: Tensor, i: int) -> tuple[list[str], Tensor]:
    """Words of review ``i`` and their importance (every piece of a word has its word's value)."""
    word_ids, n = encoded["word_ids"][i], int(encoded["attention_mask"][i].sum())
    tokens = tokenizer.tokens(encoded["input_ids"][i, :n])
    words = ["".join(t.removeprefix("##") for t, w in zip(tokens, word_ids[:n], strict=True) if w == k) for k in range(int(word_ids.max()) + 1)]
    first = [int((word_ids == k).nonzero()[0]) for k in range(len(words))]
    return words, heat[i, first]


def main(argv: Optional[Sequence[str]] = None) -> dict[str, list[tuple[str, float]]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fast", action="store_true", help="tiny corpus and one epoch (for CI)")
    parser.add_argument("--max-epochs", type=int, default=3)
    parser.add_argument("--log-dir", default="logs/sentiment")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    L.seed_everything(args.seed, verbose=False)

    train, val = make_corpus(400 if args.fast else 2000, args.seed), make_corpus(64 if args.fast else 300, args.seed + 1)
    tokenizer = PieceTokenizer([t for t, _ in train + val] + list(PROBES))

    def loader(corpus: list[tuple[str, int]], shuffle: bool) -> DataLoader:
        enc = tokenizer([t for t, _ in corpus])
        enc["label"] = torch.tensor([y for _, y in corpus])
        rows = [{k: v[i] for k, v in enc.items()} for i in range(len(corpus))]
        return DataLoader(rows, batch_size=32, shuffle=shuffle)

    model = SentimentModel(len(tokenizer.vocab))
    logger = TensorBoardLogger(args.log_dir, name="", default_hp_metric=False)
    # Every epoch: 4 validation reviews explained word by word, logged as highlighted tokens.
    callback = PAMICallback(num_samples=4, explainer=PAMIOptions(partition=Words(), masker=AttentionMask()), tokens=tokenizer.tokens,
                            pictures=Pictures(cmap="Reds"))
    trainer = L.Trainer(
        max_epochs=1 if args.fast else args.max_epochs, logger=logger, callbacks=[callback],
        enable_checkpointing=False, enable_model_summary=False, enable_progress_bar=not args.fast, log_every_n_steps=10,
    )
    trainer.fit(model, loader(train, True), loader(val, False))

    encoded = tokenizer(PROBES)
    heat, target = PAMI(model, Words(), AttentionMask(), progress=False).explain(encoded, return_target=True)
    results, spans = {}, []
    for i, review in enumerate(PROBES):
        words, scores = word_scores(tokenizer, encoded, heat, i)
        results[review] = list(zip(words, scores.tolist(), strict=True))
        label = ("negative", "positive")[int(target[i])]
        print(f"\n{review!r} -> {label}")
        for word, score in results[review]:
            print(f"  {word:>14s} {score:.3f} {'#' * round(30 * score)}")
        spans.append(f"<p>{label}: {highlight_tokens(words, scores, vmin=0, vmax=1)}</p>")
    out = Path(logger.log_dir) / "words.html"
    out.write_text("\n".join(spans))
    print(f"\nwrote {out}; TensorBoard: tensorboard --logdir {args.log_dir}")
    return results


if __name__ == "__main__":
    main()
