"""PAMICallback in the Lightning lifecycle: defaults that fit the image, chance baselines, every-n
validations under monitors, reused callbacks, validate/test, fast_dev_run, the cost it logs and its
forward-pass budget (CPU, real Trainer)."""

from __future__ import annotations

import csv
import os
import warnings
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch import Tensor
from torch.utils.data import DataLoader

from pami_lightning import PAMI, Constant, PAMICallback, SlidingWindow
from pami_lightning.callbacks import PAMIOptions

from helpers.callbacks import callback, loaders, scores, trainer
from helpers.images import SIZE, shapes
from helpers.models import TinyLit


def _csv_rows(logger: CSVLogger) -> list[dict[str, str]]:
    with open(os.path.join(logger.log_dir, "metrics.csv")) as f:
        return list(csv.DictReader(f))


def _column(rows: list[dict[str, str]], key: str) -> list[float]:
    return [float(r[key]) for r in rows if r.get(key, "") != ""]


class _Counting(TinyLit):
    """Counts the inputs its forward sees outside training steps (the callback's forward passes)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen = 0

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or not torch.is_grad_enabled():
            self.seen += x.shape[0]
        return super().forward(x)


# ---------------------------------------------------------------------------------------- 1. defaults


class _Blind(TinyLit):
    """Knows nothing: the same logits for every input (so every map is flat)."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x) * 0 + torch.tensor([0.3, 0.2, 0.1])


def test_default_windows_and_tolerance_scale_with_the_image(tmp_path: Any) -> None:
    # The paper's SlidingWindow(40, 6) covers a 32x32 image with every window: flat maps whose
    # maximum (0, 0) lay within 15 px of most masks, so a blind model scored ~1.0.
    cb = PAMICallback(num_samples=4, metrics=["pointing_game"])
    tr = trainer(tmp_path, [cb], max_epochs=1, limit_train_batches=1)
    tr.fit(_Blind(), *loaders())
    assert cb.pami.partition.resolve((SIZE, SIZE)) == (6, 1)  # 40/224 and 6/224 of 32 px
    assert scores(tr)["pami/pointing_game"] == 0.0  # a flat map has no maximum: a miss


def test_chance_baselines_are_logged_once(tmp_path: Any) -> None:
    logger = CSVLogger(tmp_path, name="csv")
    tr = trainer(tmp_path, [callback(metrics=["pointing_game"])], logger=logger, max_epochs=2)
    tr.fit(TinyLit(), *loaders())
    rows = _csv_rows(logger)
    centre, chance = _column(rows, "pami/pointing_game_center"), _column(rows, "pami/pointing_game_random")
    assert len(centre) == 1 and len(chance) == 1 and 0 <= centre[0] <= 1 and 0 <= chance[0] <= 1
    assert len(_column(rows, "pami/pointing_game")) == 2


def test_settings_too_coarse_for_the_image_warn_before_training(tmp_path: Any) -> None:
    model = TinyLit()
    explainer = PAMI(model, partition=SlidingWindow(radius=16, stride=8), masker=Constant(0.0), shifts=[(0, 0), (12, 0)])
    cb = PAMICallback(num_samples=2, explainer=explainer, metrics=["pointing_game"], pointing_tolerance=15)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first_step = _AtFirstStep(lambda: [str(w.message) for w in caught])
        trainer(tmp_path, [cb, first_step], max_epochs=1, limit_train_batches=1).fit(model, *loaders())
    before = " ".join(first_step.value)
    assert "16 px radius" in before and "half" in before
    assert "pointing_tolerance=15" in before and "32x32" in before
    assert "shift" in before and "(12, 0)" in before


class _AtFirstStep(Callback):
    """Evaluates ``read()`` just before the first training step."""

    def __init__(self, read: Any) -> None:
        self.read, self.value = read, None

    def on_train_batch_start(self, *args: Any) -> None:
        if self.value is None:
            self.value = self.read()


# ---------------------------------------------------------------------------------------- 3. lifecycle


def test_every_n_validations_works_with_checkpoint_and_early_stopping(tmp_path: Any) -> None:
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="pami/pointing_game", mode="max")
    stop = EarlyStopping(monitor="pami/insertion", mode="max", patience=10)
    logger = CSVLogger(tmp_path, name="csv")
    cb = callback(every_n_validations=2, metrics=["pointing_game", "insertion"])
    tr = trainer(tmp_path, [cb, ckpt, stop], logger=logger, max_epochs=4, enable_checkpointing=True)
    tr.fit(TinyLit(), *loaders())
    rows = _csv_rows(logger)
    # Explained at validations 1 and 3; 2 and 4 carry the last values over, flagged.
    assert _column(rows, "pami/carried_over") == [0, 1, 0, 1]
    points = _column(rows, "pami/pointing_game")
    assert len(points) == 4 and points[1] == points[0] and points[3] == points[2]
    assert cb.timeline_validations == [1, 3] and ckpt.best_model_path


def test_every_n_val_epochs_is_a_deprecated_alias() -> None:
    with pytest.warns(DeprecationWarning, match="every_n_validations"):
        cb = PAMICallback(every_n_val_epochs=3)
    assert cb.every_n_validations == 3


def test_a_reused_callback_reads_the_new_validation_set(tmp_path: Any) -> None:
    seen: list[Tensor] = []
    cb = callback(metrics=["pointing_game"], batch_to_sample=lambda b: (seen.append(b[0]), b)[1])
    model = TinyLit()
    train, _ = loaders()
    for seed in (1, 2):
        val = DataLoader(shapes(24, seed=seed), batch_size=16)
        trainer(tmp_path, [cb], max_epochs=1).fit(model, train, val)
        assert torch.equal(seen[-1], shapes(24, seed=seed).tensors[0][[3, 9, 15, 21]])
    assert "pointing_game" in cb.last_scores and "stability" not in cb.last_scores  # other images: no stability across the two sets


def test_test_and_validate_explain_when_asked(tmp_path: Any) -> None:
    class _Testable(TinyLit):
        def test_step(self, batch: Any, batch_idx: int) -> None:
            self.validation_step(batch, batch_idx)

    _, val = loaders()
    for flag, run in (("on_test", "test"), ("on_validate", "validate")):
        for on in (False, True):
            tr = trainer(tmp_path, [callback(metrics=["pointing_game"], **{flag: on})])
            getattr(tr, run)(_Testable(), val, verbose=False)
            assert ("pami/pointing_game" in tr.callback_metrics) is on, (flag, on)


@pytest.mark.parametrize("kwargs", [{"fast_dev_run": True}, {"limit_val_batches": 0}])
def test_fast_dev_run_and_no_validation_skip_the_callback(tmp_path: Any, kwargs: dict) -> None:
    model = _Counting()
    kwargs.setdefault("max_epochs", 1)
    tr = trainer(tmp_path, [callback(metrics=["pointing_game", "insertion"])], **kwargs)
    tr.fit(model, *loaders())
    assert not scores(tr)
    validation = 0 if "limit_val_batches" in kwargs else 16  # fast_dev_run: one validation batch
    assert model.seen == validation


# ---------------------------------------------------------------------------------------- 4. cost


class _Seen(Callback):
    """Records the model's count of forward passes at the end of each validation epoch."""

    def __init__(self) -> None:
        self.seen: list[int] = []

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        self.seen.append(pl_module.seen)


def test_seconds_and_passes_are_logged_per_explanation(tmp_path: Any) -> None:
    before, after = _Seen(), _Seen()
    tr = trainer(tmp_path, [before, callback(metrics=["pointing_game", "insertion", "deletion"]), after], max_epochs=1, num_sanity_val_steps=0)
    tr.fit(_Counting(), *loaders())
    got = scores(tr)
    # The forward passes in the callback's hook: 4 samples, clean + 8 x 8 windows + insertion's
    # and deletion's points (at most ceil(32 * 32 / 224) + 1 = 6 each).
    assert got["pami/passes"] == after.seen[-1] - before.seen[-1]
    assert 4 * (1 + 64) < got["pami/passes"] <= 4 * (1 + 64 + 2 * 6)
    assert 0 < got["pami/seconds"] < 60


def test_max_passes_chooses_the_stride(tmp_path: Any) -> None:
    cb = PAMICallback(num_samples=4, explainer=PAMIOptions(masker=Constant(0.0)), metrics=["pointing_game"], max_passes=300)
    tr = trainer(tmp_path, [cb], max_epochs=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tr.fit(TinyLit(), *loaders())
    # 4 clean passes; 296 / 4 = 74 windows per image at most: stride 4 gives 8 x 8 = 64.
    assert cb.pami.partition.resolve((SIZE, SIZE)) == (6, 4)
    assert scores(tr)["pami/passes"] == 4 + 4 * 64 <= 300


def test_max_passes_too_small_is_a_configuration_error(tmp_path: Any) -> None:
    cb = PAMICallback(num_samples=4, metrics=["insertion"], max_passes=20)
    with pytest.raises(ValueError, match="max_passes=20"):
        trainer(tmp_path, [cb], max_epochs=1).fit(TinyLit(), *loaders())


def test_the_explanation_shows_on_the_progress_bar(tmp_path: Any, capsys: Any) -> None:
    tr = L.Trainer(
        default_root_dir=str(tmp_path), callbacks=[callback(metrics=["pointing_game"])], logger=False, accelerator="cpu",
        max_epochs=1, limit_train_batches=1, enable_model_summary=False, enable_checkpointing=False,
    )
    tr.fit(TinyLit(), *loaders())
    out = capsys.readouterr().out
    assert "PAMI" in out and "pass" in out
