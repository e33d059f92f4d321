"""PAMICallback: arguments, sample handling, training side effects, resume, precision, CLI (CPU, real Trainer)."""

from __future__ import annotations

import random
import warnings
from typing import Any

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from torch.utils.data import DataLoader, Dataset

from pami_lightning import PAMI, PAMICallback, SlidingWindow, Words
from pami_lightning.callbacks import Sample, default_batch_to_sample
from pami_lightning.callbacks.samples import select_indices, shard

from helpers.callbacks import callback, loaders, scores, trainer
from helpers.images import shapes
from helpers.models import TinyLit

METRICS = ["pointing_game", "energy_pointing_game", "insertion", "deletion"]


# ---------------------------------------------------------------------------------------- arguments


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_samples": 0}, "num_samples"),
        ({"sample_indices": [1, 1]}, "repeats"),
        ({"target": "logits"}, "target"),
        ({"every_n_validations": 0}, "every_n_validations"),
        ({"metrics": ["pointing_game", "iou"]}, "unknown metrics"),
        ({"pointing_tolerance": -1}, "pointing_tolerance"),
        ({"pictures": {"max_images": 0}}, "max_images"),
        ({"pictures": {"alpha": 1.5}}, "alpha"),
        ({"pictures": {"cmap": "nope"}}, "colour map"),
        ({"key_prefix": ""}, "key_prefix"),
        ({"batch_size": 0}, "batch_size"),
        ({"output": "logsoftmax"}, "output"),
        ({"explainer": "pami"}, "explainer must be"),
        ({"partition": "windows"}, "partition must be"),
        ({"partition": Words(), "max_passes": 100}, "SlidingWindow"),
        ({"max_passes": 0}, "max_passes"),
        ({"on_error": "ignore"}, "on_error"),
        ({"batch_to_sample": 3}, "callable"),
    ],
)
def test_constructor_validates_early(kwargs: dict, match: str) -> None:
    with pytest.raises((ValueError, TypeError), match=match):
        if "explainer" in kwargs:
            PAMICallback(**kwargs)
        else:
            callback(**kwargs)


def test_samples_are_evenly_spaced_and_need_no_rng() -> None:
    state = torch.get_rng_state()
    assert select_indices(100, 4, None) == [12, 37, 62, 87]
    assert select_indices(3, 8, None) == [0, 1, 2]
    assert select_indices(10, 4, [7, -1]) == [7, 9]
    with pytest.raises(IndexError, match="out of range"):
        select_indices(10, 4, [10])
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("n, world", [(8, 2), (5, 2), (3, 4), (1, 2), (7, 3)])
def test_shards_are_contiguous_and_cover_every_sample_once(n: int, world: int) -> None:
    parts = [shard(n, rank, world) for rank in range(world)]
    assert all(size == -(-n // world) for _, size in parts)
    assert [i for part, _ in parts for i in range(n)[part]] == list(range(n))


def test_default_batch_to_sample_formats() -> None:
    x, y = torch.rand(2, 3, 8, 8), torch.tensor([1, 0])
    mask = torch.zeros(2, 8, 8, dtype=torch.bool)
    mask[:, 2:4, 2:6] = True
    assert default_batch_to_sample((x, y)).masks is None
    got = default_batch_to_sample([x, y, mask.float()[:, None]])
    assert torch.equal(got.masks, mask) and torch.equal(got.labels, y)
    got = default_batch_to_sample({"input": x, "target": y, "boxes": [torch.tensor([[2, 2, 6, 4]]), torch.tensor([[2.0, 2, 6, 4]])]})
    assert torch.equal(got.masks, mask)
    assert default_batch_to_sample(x).labels is None
    assert default_batch_to_sample(Sample(x)).images is x
    with pytest.raises(ValueError, match="images under one of"):
        default_batch_to_sample({"pixels": x})
    with pytest.raises(ValueError, match="labels must be"):
        default_batch_to_sample((x, torch.rand(2, 3)))
    with pytest.raises(ValueError, match="masks must be"):
        default_batch_to_sample((x, y, mask[:, :4]))


# ---------------------------------------------------------------------------------------- behaviour in fit


def _metric_scores(tr: L.Trainer, prefix: str = "pami") -> dict[str, float]:
    """The logged metrics, without the cost and flag keys."""
    return {k: v for k, v in scores(tr, prefix).items() if k.split("/")[1] in (*METRICS, "stability")}


def test_no_logger_warns_once_and_scores_reach_callback_metrics(tmp_path: Any) -> None:
    cb = callback(every_n_validations=2, pointing_tolerance=0)
    tr = trainer(tmp_path, [cb], max_epochs=4, num_sanity_val_steps=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tr.fit(TinyLit(), *loaders())
    assert sum("no logger" in str(w.message) for w in caught) == 1
    assert set(_metric_scores(tr)) == {f"pami/{m}" for m in [*METRICS, "stability"]}
    assert all(np.isfinite(v) for v in scores(tr).values())
    # Four validations (the sanity check is not one): the first and every second after it explained.
    assert cb.validations_seen == 4 and cb.timeline_validations == [1, 3]


class _Record(Callback):
    """Records each submodule's mode, grad mode and the RNG just before/after the PAMI callback."""

    def __init__(self) -> None:
        self.seen: list[tuple] = []

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        modes = tuple(m.training for m in pl_module.modules())
        self.seen.append((modes, torch.is_grad_enabled(), torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()))


class _RandomAugment(Dataset):
    """A validation dataset whose ``__getitem__`` draws from every global RNG (like augmentations)."""

    def __init__(self, base: Dataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> Any:
        x, y, m = self.base[i]
        noise = 0.01 * torch.rand(1).item() + 0.01 * np.random.rand() + 0.01 * random.random()
        return (x + noise).clamp(0, 1), y, m


def _batch_norm(model: TinyLit) -> torch.nn.BatchNorm2d:
    return next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))


def _seeded_fit(tmp_path: Any, callbacks: list) -> tuple[L.Trainer, TinyLit]:
    L.seed_everything(7, verbose=False)
    model = TinyLit()
    _batch_norm(model).eval()  # a user-frozen BatchNorm: must stay in eval mode
    train, val = loaders()
    val = DataLoader(_RandomAugment(val.dataset), batch_size=16)
    tr = trainer(tmp_path, callbacks, max_epochs=2, limit_train_batches=3)
    tr.fit(model, train, val)
    return tr, model


def test_never_changes_training(tmp_path: Any) -> None:
    before, after = _Record(), _Record()
    cb = callback()
    tr, with_cb = _seeded_fit(tmp_path / "a", [before, cb, after])
    rng_with = (torch.get_rng_state(), np.random.get_state()[1], random.getstate())
    _, without = _seeded_fit(tmp_path / "b", [])
    rng_without = (torch.get_rng_state(), np.random.get_state()[1], random.getstate())

    assert "pami/insertion" in tr.callback_metrics
    for (name, p), q in zip(with_cb.state_dict().items(), without.state_dict().values(), strict=False):
        assert torch.equal(p, q), f"{name} differs with the callback"
    assert torch.equal(rng_with[0], rng_without[0]) and np.array_equal(rng_with[1], rng_without[1]) and rng_with[2] == rng_without[2]
    assert not _batch_norm(with_cb).training and with_cb.net[0].training
    # Around the callback's own hook: same modes, grad mode and RNG states.
    for b, a in zip(before.seen, after.seen, strict=False):
        assert b[0] == a[0] and b[1] == a[1] and b[4] == a[4]
        assert torch.equal(b[2], a[2]) and np.array_equal(b[3], a[3])
    assert not cb.last_maps.requires_grad and all(p.grad is None or not p.grad.requires_grad for p in with_cb.parameters())


def test_resume_keeps_counter_and_drift_history(tmp_path: Any) -> None:
    # The callback's scores can be monitored like any validation metric.
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="pami/pointing_game", mode="max", save_top_k=-1, save_last=True)
    stop = EarlyStopping(monitor="pami/insertion", mode="max", patience=5)
    first = callback(metrics=["pointing_game", "insertion"])
    trainer(tmp_path, [first, ckpt, stop], max_epochs=2, enable_checkpointing=True).fit(TinyLit(), *loaders())
    assert ckpt.best_model_score is not None and stop.best_score.isfinite()
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)["callbacks"][first.state_key]
    assert saved["val_count"] == 2 and saved["history"]["columns"] == [1, 2]

    resumed = callback(metrics=["pointing_game", "insertion"])
    tr = trainer(tmp_path, [resumed], max_epochs=3)
    tr.fit(TinyLit(), *loaders(), ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert resumed.validations_seen == 3 and resumed.timeline_validations == [1, 2, 3]
    # The first validation after the resume already compares with the maps saved in the checkpoint.
    assert "pami/stability" in tr.callback_metrics
    assert len(resumed.sample_rows) == 3 * 4


def test_two_instances_keep_separate_state(tmp_path: Any) -> None:
    a, b = callback(metrics=["pointing_game"]), callback(metrics=["insertion"], key_prefix="pami_b", num_samples=2)
    assert a.state_key != b.state_key
    tr = trainer(tmp_path, [a, b], max_epochs=1)
    tr.fit(TinyLit(), *loaders())
    assert {"pami/pointing_game", "pami_b/insertion"} <= set(tr.callback_metrics)
    assert len(a.explained_indices) == 4 and len(b.explained_indices) == 2


def test_missing_masks_warn_once_and_skip_mask_metrics(tmp_path: Any) -> None:
    ds = shapes(24, seed=1)
    val = DataLoader(torch.utils.data.TensorDataset(*ds.tensors[:2]), batch_size=16)
    tr = trainer(tmp_path, [callback()], max_epochs=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tr.fit(TinyLit(), loaders()[0], val)
    assert sum("no object masks" in str(w.message) for w in caught) == 1
    assert set(_metric_scores(tr)) == {"pami/insertion", "pami/deletion", "pami/stability"}


def _images_only(batch: Any) -> Sample:
    return Sample(batch[0])


def test_target_label_needs_labels(tmp_path: Any) -> None:
    tr = trainer(tmp_path, [callback(metrics=["insertion"], batch_to_sample=_images_only)], max_epochs=1)
    with pytest.raises(ValueError, match='target="pred"'):
        tr.fit(TinyLit(), *loaders())
    tr = trainer(tmp_path, [callback(metrics=["insertion"], batch_to_sample=_images_only, target="pred")], max_epochs=1)
    tr.fit(TinyLit(), *loaders())
    assert "pami/insertion" in tr.callback_metrics


class _DictNet(TinyLit):
    """Loads uint8 dict batches and converts them in the transfer hooks, as users do."""

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        return {"image": batch["pixels"], "label": batch["y"], "mask": batch["m"]}

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        return {**batch, "image": batch["image"].float() / 255}

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return super().training_step((batch["image"], batch["label"]), batch_idx)

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        super().validation_step((batch["image"], batch["label"]), batch_idx)


class _DictShapes(Dataset):
    def __init__(self, n: int, seed: int) -> None:
        self.x, self.y, self.m = shapes(n, seed).tensors

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict:
        return {"pixels": (self.x[i] * 255).round().to(torch.uint8), "y": self.y[i], "m": self.m[i]}


def test_batches_go_through_the_transfer_hooks_and_second_dataloader(tmp_path: Any) -> None:
    seen: list[torch.Tensor] = []
    cb = callback(dataloader_idx=1, sample_indices=[0, 5], batch_to_sample=lambda b: (seen.append(b["image"]), default_batch_to_sample(b))[1])
    vals = [DataLoader(_DictShapes(8, seed=1), batch_size=8), DataLoader(_DictShapes(8, seed=2), batch_size=8)]
    tr = trainer(tmp_path, [cb], max_epochs=1)
    tr.fit(_DictNet(), DataLoader(_DictShapes(32, seed=0), batch_size=16), vals)
    assert seen[0].dtype == torch.float32 and float(seen[0].max()) <= 1.0
    assert torch.allclose(seen[0], shapes(8, seed=2).tensors[0][[0, 5]], atol=1 / 255)
    assert "pami/pointing_game" in tr.callback_metrics


@pytest.mark.parametrize("precision", ["bf16-mixed", "bf16-true"])
def test_runs_under_the_trainers_precision(tmp_path: Any, precision: str) -> None:
    tr = trainer(tmp_path, [callback(metrics=["pointing_game", "insertion"])], max_epochs=1, precision=precision)
    tr.fit(TinyLit(), *loaders())
    assert all(np.isfinite(v) for v in scores(tr).values()) and len(_metric_scores(tr)) == 2


def test_ready_explainer_is_used_as_given(tmp_path: Any) -> None:
    model = TinyLit()
    calls = []
    explainer = PAMI(model, forward=lambda m, x: (calls.append(len(x)), m(x))[1], partition=SlidingWindow(radius=8, stride=8), batch_size=16)
    tr = trainer(tmp_path, [PAMICallback(num_samples=2, explainer=explainer, metrics=["pointing_game"])], max_epochs=1)
    tr.fit(model, *loaders())
    # 2 clean forwards checking the samples at fit start; at the validation 2 clean forwards and
    # 2 images x 16 windows in full batches of 16.
    assert calls == [2, 2, 16, 16]
    assert explainer.call.inference_mode  # the callback ran a copy under fit's no_grad; the user's explainer is untouched


def test_dict_outputs_with_a_callable_output(tmp_path: Any) -> None:
    # The clean predictions are scored per chunk, so outputs that cannot be concatenated work.
    model = TinyLit()

    def probability(outputs: dict, target: torch.Tensor) -> torch.Tensor:
        return outputs["logits"].softmax(1).gather(1, target[:, None])[:, 0]

    explainer = PAMI(model, forward=lambda m, x: {"logits": m(x)}, output=probability, partition=SlidingWindow(radius=8, stride=8))
    tr = trainer(tmp_path, [PAMICallback(num_samples=2, explainer=explainer, metrics=["pointing_game", "insertion"])], max_epochs=1)
    tr.fit(model, *loaders())
    assert set(_metric_scores(tr)) == {"pami/pointing_game", "pami/insertion"} and all(np.isfinite(v) for v in scores(tr).values())


# ---------------------------------------------------------------------------------------- LightningCLI


class _CLINet(TinyLit):
    def train_dataloader(self) -> DataLoader:
        return loaders()[0]

    def val_dataloader(self) -> DataLoader:
        return loaders()[1]


@pytest.mark.slow
def test_lightning_cli_yaml_config(tmp_path: Any) -> None:
    from lightning.pytorch.cli import LightningCLI

    (tmp_path / "in").mkdir()
    config = tmp_path / "in" / "config.yaml"
    config.write_text(
        f"""
trainer:
  default_root_dir: {tmp_path}
  max_epochs: 1
  limit_train_batches: 2
  logger: false
  enable_checkpointing: false
  enable_progress_bar: false
  enable_model_summary: false
  callbacks:
    - class_path: pami_lightning.PAMICallback
      init_args:
        num_samples: 2
        metrics: [pointing_game, insertion]
        pointing_tolerance: 0
        key_prefix: explain
        explainer:
          class_path: pami_lightning.callbacks.PAMIOptions
          init_args:
            partition:
              class_path: pami_lightning.SlidingWindow
              init_args: {{radius: 8, stride: 4}}
            masker:
              class_path: pami_lightning.Constant
              init_args: {{value: 0.0}}
            batch_size: 32
"""
    )
    cli = LightningCLI(_CLINet, args=["fit", "--config", str(config)], save_config_kwargs={"overwrite": True})
    (cb,) = [c for c in cli.trainer.callbacks if isinstance(c, PAMICallback)]
    assert cb.num_samples == 2 and cb.explainer.partition.radius == 8 and cb.explainer.partition.stride == 4 and cb.key_prefix == "explain"
    assert cb.pami.batch_size == 32
    assert {"explain/pointing_game", "explain/insertion"} == set(_metric_scores(cli.trainer, "explain"))
    # The config LightningCLI saved runs again as it is.
    saved = tmp_path / "config.yaml"
    again = LightningCLI(_CLINet, args=["fit", "--config", str(saved)], save_config_kwargs={"overwrite": True})
    (cb,) = [c for c in again.trainer.callbacks if isinstance(c, PAMICallback)]
    assert cb.explainer.partition.radius == 8 and cb.pami.batch_size == 32


@pytest.mark.slow
def test_in_place_preprocess_does_not_rewrite_the_samples(tmp_path: Any) -> None:
    # Normalize(inplace=True)-style preprocessing: the clean prediction must not normalise the
    # samples before they are explained and scored.
    def in_place(x: torch.Tensor) -> torch.Tensor:
        return x.sub_(0.5).mul_(4)

    def out_of_place(x: torch.Tensor) -> torch.Tensor:
        return (x - 0.5) * 4

    metrics = ["pointing_game", "insertion"]
    a = callback(preprocess=in_place, on_validate=True, metrics=metrics)
    b = callback(preprocess=out_of_place, on_validate=True, metrics=metrics, key_prefix="out")
    torch.manual_seed(0)
    tr = trainer(tmp_path, [a, b])
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="inputs range")  # samples pushed outside [0, 1]
        tr.validate(TinyLit(), loaders()[1], verbose=False)
    assert torch.equal(a.last_maps, b.last_maps)
    assert list(_metric_scores(tr).values()) == list(_metric_scores(tr, "out").values())


class _BatchCache(TinyLit):
    """Keeps one tensor built for the last batch size seen (as RNN initial states or mask caches do)."""

    def __init__(self) -> None:
        super().__init__()
        self.gain = torch.nn.Parameter(torch.ones(1))
        self._cache: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._cache is None or self._cache.shape[0] != x.shape[0]:
            self._cache = torch.ones(x.shape[0], 1)
        return self.net(x) * (self.gain * self._cache)


@pytest.mark.slow
def test_fit_validation_hands_no_inference_tensors_to_training(tmp_path: Any) -> None:
    # Lightning validates under no_grad during fit so that tensors a model caches there can be used in
    # training; the callback's forward passes (batches of 16, as training's) must not change that.
    train = DataLoader(shapes(32, seed=0), batch_size=16)
    val = DataLoader(shapes(24, seed=1), batch_size=24)
    cb = callback(metrics=["pointing_game"], batch_size=16)
    trainer(tmp_path, [cb], max_epochs=2).fit(_BatchCache(), train, val)
    assert cb.validations_seen == 2
