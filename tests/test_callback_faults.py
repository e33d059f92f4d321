"""A fault in PAMICallback never kills training: configuration errors before the first training step,
runtime errors reported and flagged, the engine's own input checks, resumes across changed settings."""

from __future__ import annotations

import csv
import os
import warnings
from typing import Any

import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, TensorDataset

from pami_lightning import SlidingWindow

from helpers.callbacks import callback, loaders, scores, trainer
from helpers.images import shapes
from helpers.models import TinyLit


class _Steps(Callback):
    """Counts training steps."""

    def __init__(self) -> None:
        self.steps = 0

    def on_train_batch_start(self, *args: Any) -> None:
        self.steps += 1


class _Items(Dataset):
    """A validation set of the given (image, label, mask) items."""

    def __init__(self, items: list[tuple]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple:
        return self.items[i]


def _val(transform: Any, batch_size: int = 4) -> DataLoader:
    x, y, m = shapes(8, seed=1).tensors
    return DataLoader(_Items([transform(x[i], y[i], m[i], i) for i in range(8)]), batch_size=batch_size)


@pytest.mark.parametrize(
    "kwargs, val, error, match",
    [
        ({"sample_indices": [2, 100]}, None, IndexError, "out of range"),
        ({"dataloader_idx": 2}, None, MisconfigurationException, "dataloader_idx=2"),
        ({"num_samples": 8}, _val(lambda x, y, m, i: (x[:, : 32 - i % 2], y, m[: 32 - i % 2]), batch_size=1), ValueError, "different sizes"),
        ({}, _val(lambda x, y, m, i: (x, y.float() + 0.5, m)), ValueError, "labels must be"),
        ({}, _val(lambda x, y, m, i: (x, y + 5, m)), ValueError, "out of range for a model with 3 outputs"),
        ({}, _val(lambda x, y, m, i: ((x * 255).to(torch.uint8), y, m)), ValueError, "floating-point"),
        ({}, _val(lambda x, y, m, i: (x.permute(1, 2, 0).contiguous(), y, m)), ValueError, "channels-last"),
    ],
    ids=["sample_indices", "dataloader_idx", "mixed_sizes", "float_labels", "label_range", "uint8", "channels_last"],
)
def test_configuration_errors_before_the_first_training_step(tmp_path: Any, kwargs: dict, val: Any, error: type, match: str) -> None:
    steps = _Steps()
    train, default_val = loaders()
    tr = trainer(tmp_path, [callback(metrics=["pointing_game"], **kwargs), steps], max_epochs=1)
    with pytest.raises(error, match=match):
        tr.fit(_Tolerant(), train, val if val is not None else default_val)
    assert steps.steps == 0


class _Tolerant(TinyLit):
    """Validates any batch (uint8, channels-last, odd labels): only the callback looks at them."""

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.log("val_seen", float(len(batch[0])))


class _TurnsNaN(TinyLit):
    """Outputs NaN from epoch ``start`` on (default: the second), outside training steps (as a diverging model would)."""

    def __init__(self, start: int = 1) -> None:
        super().__init__()
        self.start = start

    def forward(self, x: Tensor) -> Tensor:
        out = super().forward(x)
        return out * float("nan") if self.current_epoch >= self.start and not self.training else out


def _warnings_of(run: Any) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run()
    return [str(w.message) for w in caught]


def test_nan_outputs_are_reported_and_training_goes_on(tmp_path: Any) -> None:
    logger = CSVLogger(tmp_path, name="csv")
    cb = callback(metrics=["pointing_game", "insertion"])
    tr = trainer(tmp_path, [cb], logger=logger, max_epochs=3)
    messages = _warnings_of(lambda: tr.fit(_TurnsNaN(), *loaders()))
    assert tr.current_epoch == 3  # every epoch ran
    assert any("PAMICallback" in m and "NaN" in m and "training goes on" in m for m in messages)
    with open(os.path.join(logger.log_dir, "metrics.csv")) as f:
        rows = [r for r in csv.DictReader(f) if r["pami/failed"]]
    assert [float(r["pami/failed"]) for r in rows] == [0, 1, 1]
    assert [float(r["pami/carried_over"]) for r in rows] == [0, 1, 1]
    # The last good values stay in place for monitors.
    assert len({r["pami/pointing_game"] for r in rows}) == 1 and len({r["pami/insertion"] for r in rows}) == 1


def test_a_failed_first_explanation_logs_the_worst_values_for_monitors(tmp_path: Any) -> None:
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="pami/pointing_game", mode="max")
    tr = trainer(tmp_path, [callback(metrics=["pointing_game", "deletion"]), ckpt], max_epochs=1, enable_checkpointing=True)
    _warnings_of(lambda: tr.fit(_TurnsNaN(start=0), *loaders()))
    got = scores(tr)
    assert got["pami/failed"] == 1 and got["pami/pointing_game"] == 0 and got["pami/deletion"] == 1 and ckpt.best_model_path


def test_on_error_raise_stops_the_fit(tmp_path: Any) -> None:
    tr = trainer(tmp_path, [callback(metrics=["pointing_game"], on_error="raise")], max_epochs=3)
    with pytest.raises(ValueError, match="NaN"):
        tr.fit(_TurnsNaN(), *loaders())


def test_a_failing_image_write_does_not_abort_training(tmp_path: Any) -> None:
    logger = CSVLogger(tmp_path, name="csv", version=0)
    os.makedirs(logger.log_dir)
    open(os.path.join(logger.log_dir, "pami"), "w").close()  # a file where the picture folder goes
    tr = trainer(tmp_path, [callback(metrics=["pointing_game"])], logger=logger, max_epochs=2)
    messages = _warnings_of(lambda: tr.fit(TinyLit(), *loaders()))
    assert tr.current_epoch == 2
    assert any("PAMICallback" in m and ("NotADirectoryError" in m or "FileExistsError" in m) for m in messages)
    assert scores(tr)["pami/failed"] == 1 and "pami/pointing_game" in scores(tr)


@pytest.mark.parametrize("wrap", ["dict", "tuple"])
def test_models_returning_dicts_or_tuples_with_a_callable_output(tmp_path: Any, wrap: str) -> None:
    class _Wrapped(TinyLit):
        def forward(self, x: Tensor) -> Any:
            logits = super().forward(x)
            return {"logits": logits} if wrap == "dict" else (logits, x.mean(dim=(1, 2, 3)))

        def training_step(self, batch: Any, batch_idx: int) -> Tensor:
            return torch.nn.functional.cross_entropy(_logits(self(batch[0])), batch[1])

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            self.log("val_loss", torch.nn.functional.cross_entropy(_logits(self(batch[0])), batch[1]))

    def probability(outputs: Any, target: Tensor) -> Tensor:
        return _logits(outputs).softmax(1).gather(1, target[:, None])[:, 0]

    tr = trainer(tmp_path, [callback(output=probability, metrics=["pointing_game", "insertion", "deletion"])], max_epochs=1)
    tr.fit(_Wrapped(), *loaders())
    assert {"pami/pointing_game", "pami/insertion", "pami/deletion"} <= set(scores(tr)) and scores(tr)["pami/failed"] == 0


def _logits(outputs: Any) -> Tensor:
    return outputs["logits"] if isinstance(outputs, dict) else outputs[0]


def _checkpointed(tmp_path: Any, **kwargs: Any) -> str:
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer(tmp_path, [callback(metrics=["pointing_game"], **kwargs), ckpt], max_epochs=1, enable_checkpointing=True).fit(TinyLit(), *loaders())
    return str(tmp_path / "ckpt" / "last.ckpt")


@pytest.mark.parametrize("change", [{"partition": SlidingWindow(radius=8, stride=8)}, {"key_prefix": "other"}, {}])
def test_resume_with_changed_settings_starts_stability_afresh(tmp_path: Any, change: dict) -> None:
    path = _checkpointed(tmp_path)
    prefix = change.get("key_prefix", "pami")
    resumed = callback(metrics=["pointing_game"], **change)
    tr = trainer(tmp_path, [resumed], max_epochs=2)
    messages = _warnings_of(lambda: tr.fit(TinyLit(), *loaders(), ckpt_path=path))
    noted = any("PAMICallback" in m and "afresh" in m for m in messages)
    assert noted is bool(change)
    assert (f"{prefix}/stability" in tr.callback_metrics) is not change


def test_the_constructor_builds_no_explainer(monkeypatch: Any) -> None:
    import pami_lightning.explainer as explainer

    built: list[Any] = []
    init = explainer.PAMI.__init__
    monkeypatch.setattr(explainer.PAMI, "__init__", lambda self, *a, **k: (built.append(a), init(self, *a, **k))[1])
    callback(metrics=["pointing_game"])
    assert built == []


def test_labels_only_validation_set(tmp_path: Any) -> None:
    x, y, _ = shapes(8, seed=1).tensors
    tr = trainer(tmp_path, [callback(metrics=["insertion"])], max_epochs=1)
    tr.fit(TinyLit(), loaders()[0], DataLoader(TensorDataset(x, y), batch_size=8))
    assert "pami/insertion" in tr.callback_metrics
