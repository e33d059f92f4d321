"""Every public partition and masker written in YAML, saved by LightningCLI in ``config.yaml``, and rerun from it.

jsonargparse rebuilds an object from ``class_path`` / ``init_args`` and writes the parsed values back
when it saves the config, so each constructor's types must be ones it can both read and write: a
``Callable`` anywhere in a type (as ``Superpixels``' settings once had) turns the saved value into the
text "Unable to serialize instance ...", and the saved config no longer runs.
"""

from __future__ import annotations

import textwrap
import warnings
from pathlib import Path
from typing import Any, Optional

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LightningCLI
from torch import Tensor, nn
from torch.utils.data import DataLoader

from pami_lightning import AttentionMask, Blur, Constant, Masker, PAMICallback, Pooled, SlidingWindow, Superpixels, TokenMask, TokenWindows, Words
from pami_lightning.maskers import as_masker
from pami_lightning.partitions import Partition

from helpers.images import shapes
from helpers.models import TinyLit

#: name -> (the object as a config file writes it, the object built in Python).
IMAGE_PARTITIONS: dict[str, tuple[str, Partition]] = {
    "windows in pixels": ("""
        class_path: pami_lightning.SlidingWindow
        init_args: {radius: 8, stride: 4, shape: square}
        """, SlidingWindow(8, 4, "square")),
    "windows as fractions with a budget": ("""
        class_path: pami_lightning.SlidingWindow
        init_args: {radius: 0.25, stride: 0.125, unit: fraction, max_parts: 20}
        """, SlidingWindow(0.25, 0.125, unit="fraction", max_parts=20)),
    "SlidingWindow.relative()": ("""
        class_path: pami_lightning.SlidingWindow
        init_args: {unit: fraction}
        """, SlidingWindow.relative()),
    "pooled": ("""
        class_path: pami_lightning.Pooled
        init_args:
          partitions:
            - {class_path: pami_lightning.SlidingWindow, init_args: {radius: 6, stride: 8}}
            - class_path: pami_lightning.Superpixels
              init_args: {settings: [[slic, {n_segments: 8, compactness: 20}]]}
        """, Pooled([SlidingWindow(6, 8), Superpixels([("slic", {"n_segments": 8, "compactness": 20})])])),
    "superpixels in every setting form": ("""
        class_path: pami_lightning.Superpixels
        init_args:
          settings:
            - [slic, {n_segments: 12, compactness: 20}]
            - {segmenter: felzenszwalb, params: {scale: 100, sigma: 0.8, min_size: 20}}
            - watershed
            - [seeds, {num_superpixels: 10}]
          cache_mb: 16
        """, Superpixels([("slic", {"n_segments": 12, "compactness": 20}), ("felzenszwalb", {"scale": 100, "sigma": 0.8, "min_size": 20}),
                          "watershed", ("seeds", {"num_superpixels": 10})], cache_mb=16)),
    "Superpixels.paper()": ("""
        class_path: pami_lightning.Superpixels
        init_args: {settings: paper}
        """, Superpixels.paper()),
}

TOKEN_PARTITIONS: dict[str, tuple[str, Partition]] = {
    "token windows": ("""
        class_path: pami_lightning.TokenWindows
        init_args: {size: 2, stride: 1, pad_id: 0, keep_ids: [7]}
        """, TokenWindows(2, 1, pad_id=0, keep_ids=[7])),
    "words": ("""
        class_path: pami_lightning.Words
        init_args: {separator_ids: [3], pad_id: 0}
        """, Words(separator_ids=[3], pad_id=0)),
}

IMAGE_MASKERS: dict[str, tuple[str, Masker]] = {
    "blur": ("""
        class_path: pami_lightning.Blur
        init_args: {kernel_size: 7, sigma: 3}
        """, Blur(7, 3)),
    "constant": ("""
        class_path: pami_lightning.Constant
        init_args: {value: 0.5}
        """, Constant(0.5)),
}

TOKEN_MASKERS: dict[str, tuple[str, Masker]] = {
    "token mask": ("""
        class_path: pami_lightning.TokenMask
        init_args: {mask_id: 0}
        """, TokenMask(mask_id=0)),
    "attention mask": ("class_path: pami_lightning.AttentionMask", AttentionMask()),
}

PARTITIONS = {**IMAGE_PARTITIONS, **TOKEN_PARTITIONS, "Superpixels() by default": ("class_path: pami_lightning.Superpixels", Superpixels.paper()),
              "SlidingWindow() by default": ("class_path: pami_lightning.SlidingWindow", SlidingWindow())}
MASKERS = {**IMAGE_MASKERS, **TOKEN_MASKERS}


def _tokens() -> dict[str, Tensor]:
    ids = torch.tensor([7, 4, 3, 5, 6, 3, 4, 0, 0])
    return {"input_ids": ids, "attention_mask": (ids > 0).long()}


def assert_same(built: Any, expected: Any) -> None:
    """Same class, same repr, and the same behaviour: equal masks (partitions) or substrates (maskers)."""
    assert type(built) is type(expected) and repr(built) == repr(expected)
    if isinstance(expected, Partition):
        x: Any = torch.rand(3, 20, 24, generator=torch.Generator().manual_seed(0)) if expected.channel_axis else _tokens()
        assert torch.equal(built.masks(x), expected.masks(x))
    else:
        x = {k: v[None] for k, v in _tokens().items()} if expected.for_tokens else torch.rand(1, 3, 20, 24)
        a, b = as_masker(built).substrate(x), as_masker(expected).substrate(x)
        if isinstance(a, dict):
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        else:
            assert torch.equal(a, b)


def _block(yaml: str, indent: int) -> str:
    return textwrap.indent(textwrap.dedent(yaml).strip(), " " * indent)


@pytest.mark.parametrize(("kind", "name"), [("partition", n) for n in PARTITIONS] + [("masker", n) for n in MASKERS])
def test_written_in_yaml_dumped_and_read_back(kind: str, name: str) -> None:
    from jsonargparse import ArgumentParser

    yaml, expected = (PARTITIONS if kind == "partition" else MASKERS)[name]
    parser = ArgumentParser()
    parser.add_argument("--obj", type=Optional[Partition] if kind == "partition" else Optional[Masker])
    # Recorded, not raised: raised inside jsonargparse's writer, the warning would change what it writes.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cfg = parser.parse_string(f"obj:\n{_block(yaml, 2)}")
        dumped = parser.dump(cfg)
        again = parser.parse_string(dumped)
        assert parser.dump(again) == dumped  # a fixed point: saving the saved config changes nothing
        built = parser.instantiate(again).obj
    assert "Unable to serialize" not in dumped and not [w for w in caught if "serialize" in str(w.message)], dumped
    assert_same(built, expected)


def test_superpixels_paper_preset_is_the_paper_ensemble() -> None:
    assert repr(Superpixels.paper()) == repr(Superpixels("paper")) == repr(Superpixels()) == "Superpixels('paper')"
    paper = Superpixels.paper()
    assert [(name, params) for _, params, name in paper.settings][14:17] == [
        ("seeds", {"num_superpixels": n, "num_levels": 5, "n_iter": 10}) for n in (10, 20, 30)]
    assert len(paper) == 20 and paper.preset == "paper"
    listed = Superpixels([(name, params) for _, params, name in paper.settings])
    image = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(1))
    assert torch.equal(listed.masks(image), paper.masks(image))


def test_superpixels_settings_errors_say_what_to_write() -> None:
    with pytest.raises(ValueError, match=r"not a preset .* pass a list: Superpixels\(\['slic'\]\)"):
        Superpixels("slic")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="does not take"):
        Superpixels([{"segmenter": "slic", "params": {"n_segment": 10}}])  # misspelt, as a config file may have it
    with pytest.raises(ValueError, match='holds "segmenter"'):
        Superpixels([{"name": "slic"}])
    with pytest.raises(ValueError, match="setting pair is"):
        Superpixels([("slic", 10)])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="wrap one segmenter in a list"):
        Superpixels(lambda image: image[..., 0])  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------- LightningCLI


class ImageData(L.LightningDataModule):
    """32x32 images with one coloured square (the class) and its mask."""

    def train_dataloader(self) -> DataLoader:
        return DataLoader(shapes(16, seed=0), batch_size=8)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(shapes(8, seed=1), batch_size=8)


def _reviews(n: int) -> list[dict[str, Tensor]]:
    """Sequences of 6 ids (0 = padding) labelled 1 when they hold id 4 ("great")."""
    g = torch.Generator().manual_seed(n)
    items = []
    for i in range(n):
        ids = torch.randint(5, 7, (6,), generator=g)
        ids[int(torch.randint(0, 4, (1,), generator=g))] = 4 if i % 2 else 3
        ids[5] = 0
        items.append({"input_ids": ids, "attention_mask": (ids > 0).long(), "label": torch.tensor(i % 2)})
    return items


class TextData(L.LightningDataModule):
    def train_dataloader(self) -> DataLoader:
        return DataLoader(_reviews(8), batch_size=4)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(_reviews(4), batch_size=4)


class KeywordNet(L.LightningModule):
    """Logits [not great, great] from whether id 4 is attended (a learnt bias on top)."""

    def __init__(self) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(2))

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        great = ((input_ids == 4) & attention_mask.bool()).any(1).float()
        return 4 * torch.stack([1 - great, great], 1) + self.bias

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        return F.cross_entropy(self(batch["input_ids"], batch["attention_mask"]), batch["label"])

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self.log("val_loss", F.cross_entropy(self(batch["input_ids"], batch["attention_mask"]), batch["label"]))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _config(root: Path, pairs: list[tuple[str, str]], metrics: list[str]) -> str:
    """A fit config with one PAMICallback (key prefix ``p0``, ``p1``, ...) per (partition, masker) YAML pair."""
    callbacks = "\n".join(
        f"""  - class_path: pami_lightning.PAMICallback
    init_args:
      num_samples: 1
      metrics: {metrics}
      key_prefix: p{i}
      explainer:
        partition:
{_block(partition, 10)}
        masker:
{_block(masker, 10)}"""
        for i, (partition, masker) in enumerate(pairs)
    )
    return f"""trainer:
  default_root_dir: {root}
  max_epochs: 1
  num_sanity_val_steps: 0
  logger: false
  enable_checkpointing: false
  enable_progress_bar: false
  enable_model_summary: false
  callbacks:
{callbacks}
"""


def _round_trip(tmp_path: Path, model: type, data: type, partitions: dict[str, tuple[str, Partition]],
                maskers: dict[str, tuple[str, Masker]], metrics: list[str]) -> None:
    masker_list = list(maskers.values())
    cases = [(p, masker_list[i % len(masker_list)]) for i, p in enumerate(partitions.values())]
    written = tmp_path / "written.yaml"
    written.write_text(_config(tmp_path / "first", [(p[0], m[0]) for p, m in cases], metrics))

    runs = []
    for root, config in [("first", written), ("second", tmp_path / "first" / "config.yaml")]:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*no logger, so no images are logged")
            cli = LightningCLI(model, data, args=["fit", "--config", str(config), f"--trainer.default_root_dir={tmp_path / root}"])
        callbacks = [c for c in cli.trainer.callbacks if isinstance(c, PAMICallback)]
        assert len(callbacks) == len(cases)
        for i, (cb, ((_, partition), (_, masker))) in enumerate(zip(callbacks, cases, strict=True)):
            assert_same(cb.explainer.partition, partition)
            assert_same(cb.explainer.masker, masker)
            logged = {k: float(v) for k, v in cli.trainer.callback_metrics.items() if k.startswith(f"p{i}/")}
            assert logged[f"p{i}/failed"] == 0 and logged[f"p{i}/passes"] > 0, (i, logged)  # it ran
            assert {f"p{i}/{m}" for m in metrics} <= logged.keys(), (i, logged)
        runs.append((tmp_path / root / "config.yaml").read_text())
    assert "Unable to serialize" not in runs[0]
    # Rerun from the saved config, the config it saves is the same one (but for the run's folder).
    assert runs[1].replace(str(tmp_path / "second"), str(tmp_path / "first")) == runs[0]


@pytest.mark.slow
def test_image_partitions_and_maskers_round_trip_through_lightning_cli(tmp_path: Path) -> None:
    _round_trip(tmp_path, TinyLit, ImageData, IMAGE_PARTITIONS, IMAGE_MASKERS, ["pointing_game"])


def test_token_partitions_and_maskers_round_trip_through_lightning_cli(tmp_path: Path) -> None:
    _round_trip(tmp_path, KeywordNet, TextData, TOKEN_PARTITIONS, TOKEN_MASKERS, [])  # text samples get maps, no metrics
