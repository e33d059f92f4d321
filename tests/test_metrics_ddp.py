"""Two CPU processes (gloo): shards of different sizes -- and a rank with no data at all -- give
exactly (bit for bit) the single-process value of every metric."""

from __future__ import annotations

import datetime
import socket
import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pami_lightning.metrics import Deletion, EnergyPointingGame, Insertion, PointingGame

from helpers.images import random_images
from helpers.models import make_cnn

pytestmark = [pytest.mark.ddp, pytest.mark.slow]

N = 5
SHARDS = {"uneven": (slice(0, 3), slice(3, 5)), "empty_rank": (slice(0, 5), slice(5, 5))}


def _data() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    masks = torch.zeros(N, 16, 16, dtype=torch.bool)
    for i in range(N):
        y, x = torch.randint(0, 10, (2,), generator=g).tolist()
        masks[i, y : y + 6, x : x + 5] = True
    return {
        "images": random_images(N, 16, seed=4),
        "heatmaps": torch.randn(N, 8, 8, generator=g),
        "masks": masks,
        "labels": torch.tensor([0, 1, 0, 2, 1]),
    }


def _metrics(**kwargs) -> dict[str, object]:
    model = make_cnn()
    return {
        "pointing_macro": PointingGame(num_classes=3, tolerance=4, **kwargs),
        "pointing_micro": PointingGame(num_classes=3, tolerance=4, average="micro", **kwargs),
        "pointing_none": PointingGame(num_classes=3, tolerance=4, average="none", **kwargs),
        "pointing_relative": PointingGame(tolerance="relative", **kwargs),
        "energy": EnergyPointingGame(**kwargs),
        "energy_min": EnergyPointingGame(baseline="min", **kwargs),
        "insertion": Insertion(model, step=16, batch_size=7, **kwargs),
        "deletion": Deletion(model, step=16, batch_size=7, **kwargs),
    }


def _update(metric, data: dict[str, torch.Tensor], rows: slice) -> None:
    # One argument order for every metric: (heatmaps, masks, keywords each metric takes).
    kwargs = {"labels": data["labels"][rows]} if getattr(metric, "num_classes", None) else {}
    if isinstance(metric, (Insertion, Deletion)):
        kwargs = {"images": data["images"][rows]}
    metric.update(data["heatmaps"][rows], data["masks"][rows], **kwargs)


def _results(metrics: dict[str, object]) -> dict[str, torch.Tensor]:
    out = {name: m.compute() for name, m in metrics.items()}
    out.update({f"{name}_curve": metrics[name].curve()[1] for name in ("insertion", "deletion")})
    return out


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", message="The ``compute`` method")  # the empty rank computes before any update
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=60))
    try:
        data = _data()
        results = {}
        for scenario, shards in SHARDS.items():
            metrics = _metrics()
            for metric in metrics.values():
                if shards[rank].stop > shards[rank].start:  # the empty rank never calls update()
                    _update(metric, data, shards[rank])
            results[scenario] = _results(metrics)
        if rank == 0:  # the single-process value, in the same process (same threads, same kernels)
            local = _metrics(sync_on_compute=False)
            for metric in local.values():
                _update(metric, data, slice(0, N))
            results["single"] = _results(local)
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_uneven_shards_give_exactly_the_single_process_value(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    single = ranks[0]["single"]
    assert single["pointing_none"].shape == (3,) and single["insertion_curve"].shape == (17,)
    assert 0 < single["pointing_micro"] < 1 and 0 < single["energy"] < 1  # not a degenerate case
    for scenario in SHARDS:
        for rank in ranks:
            for name, want in single.items():
                got = rank[scenario][name]
                assert torch.equal(got, want), f"{scenario} {name}: {got} != {want}"
