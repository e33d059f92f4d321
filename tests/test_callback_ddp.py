"""A 2-process CPU DDP fit logs the same PAMI scores as a 1-process fit (samples sharded unevenly)."""

from __future__ import annotations

import glob
import os
import sys
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger

from helpers.callbacks import callback, loaders, scores, trainer
from helpers.images import shapes
from helpers.models import TinyLit

pytestmark = [
    pytest.mark.ddp,
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ddp_fork needs fork (Linux)"),
]


def _fit(tmp_path: Any, devices: int, num_samples: int, val: Any = None, model: Any = None) -> tuple[dict[str, float], str]:
    L.seed_everything(0, verbose=False)
    # lr=0 and frozen batch-norm statistics: both runs explain the same model, whatever each rank trains on.
    model = model or _pretrained()
    model.hparams.lr = 0.0
    next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)).momentum = 0.0
    logger = CSVLogger(tmp_path, name=f"ddp{devices}", version=0)  # the version the ranks wrote to
    cb = callback(num_samples=num_samples, pointing_tolerance=6, batch_size=16)
    strategy = "ddp_fork" if devices > 1 else "auto"
    tr = trainer(tmp_path, [cb], logger=logger, max_epochs=2, devices=devices, strategy=strategy)
    train, default_val = loaders()
    tr.fit(model, train, val if val is not None else default_val)
    return scores(tr), logger.log_dir


def _pretrained() -> TinyLit:
    """A TinyLit trained for a few steps, so its maps have structure (plain torch, well under a second)."""
    model = TinyLit()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    x, y, _ = shapes(128, seed=3).tensors
    for _ in range(30):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    return model


METRICS = ("pointing_game", "energy_pointing_game", "insertion", "deletion", "stability")
COST = {"pami/seconds", "pami/passes"}  # wall time and forward passes differ per run


@pytest.mark.parametrize("num_samples", [3, 1])  # shards of 2 + 1 samples; 1 + an empty one
def test_ddp_scores_equal_single_process(tmp_path: Any, num_samples: int) -> None:
    single, _ = _fit(tmp_path / "single", 1, num_samples)
    ddp, log_dir = _fit(tmp_path / "ddp", 2, num_samples)
    assert {f"pami/{m}" for m in METRICS} <= set(single)
    assert set(ddp) == set(single)
    for name in set(single) - COST:
        assert ddp[name] == pytest.approx(single[name], rel=1e-6, abs=1e-7), name
    # Summed over the ranks; each rank scores deletion's all-substrate end point once for its shard.
    assert single["pami/passes"] <= ddp["pami/passes"] <= single["pami/passes"] + 1
    assert ddp["pami/failed"] == 0
    # Rank zero alone wrote the pictures: one folder per validation, one image per sample.
    folders = sorted(glob.glob(os.path.join(log_dir, "pami", "step_*")))
    assert len(folders) == 2
    assert len(glob.glob(os.path.join(folders[-1], "sample_*.png"))) == num_samples


class _RankStream(torch.utils.data.IterableDataset):
    """A streaming validation set sharded by rank (as WebDataset or split_dataset_by_node do)."""

    def __iter__(self) -> Any:
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        yield from shapes(8, seed=1 + rank)


def test_ddp_iterable_dataset_explains_rank_zeros_samples(tmp_path: Any) -> None:
    # Each rank reads other items from a sharded stream: all ranks must explain the same samples,
    # or maps of one rank's images are scored against another rank's masks.
    val = torch.utils.data.DataLoader(_RankStream(), batch_size=8)
    single, _ = _fit(tmp_path / "single", 1, 3, val)
    ddp, _ = _fit(tmp_path / "ddp", 2, 3, val)
    assert set(ddp) == set(single)
    for name in set(single) - COST:
        assert ddp[name] == pytest.approx(single[name], rel=1e-6, abs=1e-7), name


class _NaNOnRankOne(TinyLit):
    """NaN outputs on rank 1 outside training steps: only that rank's shard fails to explain."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        return out * float("nan") if self.global_rank == 1 and not self.training else out


def test_ddp_a_fault_on_one_rank_is_flagged_on_every_rank(tmp_path: Any) -> None:
    # Rank 0 explains its shard fine and rank 1 fails: neither may wait for the other in a collective.
    got, _ = _fit(tmp_path, 2, 3, model=_NaNOnRankOne())
    assert got["pami/failed"] == 1 and got["pami/carried_over"] == 1
