"""PAMICallback on a text model: token samples, maps logged as highlighted tokens, TensorBoard read back."""

from __future__ import annotations

from typing import Any

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from torch import Tensor, nn
from torch.utils.data import DataLoader

from pami_lightning import AttentionMask, PAMICallback, TokenWindows, Words
from pami_lightning.callbacks import PAMIOptions
from pami_lightning.callbacks.text import text_batch_to_sample

VOCAB = ["[PAD]", "the", "film", "was", "great", "awful", "plot", "very"]
GREAT, AWFUL = 4, 5


def reviews(n: int, seed: int = 0) -> list[dict[str, Tensor]]:
    """Reviews of 3..7 words (padded to 7); label 1 when they hold "great", 0 when "awful"."""
    g = torch.Generator().manual_seed(seed)
    items = []
    for i in range(n):
        length = int(torch.randint(3, 8, (1,), generator=g))
        ids = torch.zeros(7, dtype=torch.long)
        ids[:length] = torch.tensor([1, 2, 3, 6, 7])[torch.randint(0, 5, (length,), generator=g)]
        label = i % 2
        ids[int(torch.randint(0, length, (1,), generator=g))] = GREAT if label else AWFUL
        word_ids = torch.where(ids > 0, torch.arange(7), -1)
        items.append({"input_ids": ids, "attention_mask": (ids > 0).long(), "word_ids": word_ids, "label": torch.tensor(label)})
    return items


class KeywordModel(L.LightningModule):
    """Known answer: logits [awful seen, great seen] * 4 over attended tokens (a bias learns nothing else)."""

    def __init__(self) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(2))

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        seen = attention_mask.bool()
        hits = torch.stack([((input_ids == AWFUL) & seen).any(1), ((input_ids == GREAT) & seen).any(1)], 1)
        return 4 * hits.float() + self.bias

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        return F.cross_entropy(self(batch["input_ids"], batch["attention_mask"]), batch["label"])

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self.log("val_loss", F.cross_entropy(self(batch["input_ids"], batch["attention_mask"]), batch["label"]))

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def fit(tmp_path: Any, callback: PAMICallback, epochs: int = 2) -> tuple[TensorBoardLogger, CSVLogger]:
    tb, csv = TensorBoardLogger(tmp_path, name="tb"), CSVLogger(tmp_path, name="csv")
    trainer = L.Trainer(
        max_epochs=epochs, logger=[tb, csv], callbacks=[callback], enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=1,
    )
    trainer.fit(KeywordModel(), DataLoader(reviews(16), batch_size=8), DataLoader(reviews(8, seed=1), batch_size=8))
    return tb, csv


@pytest.mark.parametrize("partition", [Words(), TokenWindows(size=1)])
def test_text_samples_are_explained_and_logged_to_tensorboard(tmp_path, partition):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    callback = PAMICallback(num_samples=3, explainer=PAMIOptions(partition=partition, masker=AttentionMask()), tokens=lambda ids: [VOCAB[i] for i in ids])
    tb, _csv = fit(tmp_path, callback)
    events = EventAccumulator(tb.log_dir, size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    tags = events.Tags()
    names = [f"pami/sample_{i}" for i in (1, 4, 6)]  # evenly spaced over 8 validation samples
    assert sorted(t for t in tags["images"] if t.startswith("pami/")) == names
    for name in names:
        steps = events.Images(name)
        assert len(steps) == 2 and steps[0].width == 640 and steps[0].height > 10  # one picture per epoch
    assert len(events.Scalars("pami/stability")) == 1  # from the second explained validation on
    assert events.Scalars("pami/stability")[0].value == pytest.approx(1.0)  # a fixed model's maps do not drift

    # Files: the maps and the HTML of every sample; the known answer: the keyword wins, padding is 0.
    step = sorted((tmp_path / "csv").rglob("step_*"))[-1]
    saved = np.load(step / "maps.npz")
    for row, index in enumerate(saved["indices"]):
        item = reviews(8, seed=1)[index]
        ids, n = item["input_ids"], int(item["attention_mask"].sum())
        key = int((ids == (GREAT if item["label"] else AWFUL)).nonzero()[0])
        assert saved["maps"][row, :n].argmax() == key and (saved["maps"][row, n:] == 0).all()
    # The callback's own copy: token maps [N, L], the same as the saved ones, with the stability it logged.
    assert callback.last_maps is not None and callback.last_maps.shape == (3, 7)
    assert np.array_equal(callback.last_maps.numpy(), saved["maps"]) and callback.explained_indices == [1, 4, 6]
    assert callback.last_scores["stability"] == pytest.approx(1.0) and callback.validations_seen == 2
    page = (step / "sample_1.html").read_text()
    assert page.count("<span") == int(reviews(8, seed=1)[1]["attention_mask"].sum()) and ("great" in page or "awful" in page)


def test_text_batch_to_sample_unpacks_dicts_tuples_and_tensors():
    batch = {"input_ids": torch.ones(2, 3, dtype=torch.long), "attention_mask": torch.ones(2, 3), "label": torch.tensor([0, 1]), "text": ["a", "b"]}
    sample = text_batch_to_sample(batch)
    assert set(sample.images) == {"input_ids", "attention_mask"} and sample.labels.tolist() == [0, 1]
    assert text_batch_to_sample((batch["input_ids"], torch.tensor([1, 0]))).labels.tolist() == [1, 0]
    assert text_batch_to_sample(batch["input_ids"]).labels is None
    with pytest.raises(ValueError, match='token ids under "input_ids"'):
        text_batch_to_sample({"ids": batch["input_ids"]})


def test_tokens_must_be_callable():
    with pytest.raises(ValueError, match="tokens must be callable"):
        PAMICallback(explainer=PAMIOptions(partition=Words(), masker=AttentionMask()), tokens=VOCAB)  # type: ignore[arg-type]
