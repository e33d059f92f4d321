"""What PAMICallback costs: the training demo's validation epoch with and without it, as a ratio.

The demo's model, validation set (256 images of 64x64) and callback (8 samples, 11 x 11 windows,
insertion, deletion and both pointing games, images to TensorBoard) from ``examples/train_shapes.py``.
Each repeat times one validation run without the callback and one with it (interleaved, after a
warm-up of each), from ``on_validation_start`` to ``on_validation_end`` — so the callback's work in
``on_validation_epoch_end``, logging included, is inside. The ratio is of the medians of one run.

    python benchmarks/callback_overhead.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import tempfile
import time
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.data import DataLoader

EXAMPLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples", "train_shapes.py")


class _ValidationTimer(Callback):
    """Wall time of each validation run, the callbacks' epoch-end work included."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.times.append(time.perf_counter() - self._start)


def _trainer(log_dir: str, callbacks: list[Any]) -> L.Trainer:
    return L.Trainer(
        callbacks=callbacks,
        logger=TensorBoardLogger(log_dir, name="overhead"),
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        accelerator="cpu",
        devices=1,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed validation runs of each kind (default 5)")
    args = parser.parse_args()

    spec = importlib.util.spec_from_file_location("train_shapes", EXAMPLE)
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)

    L.seed_everything(0, verbose=False)
    model = demo.ShapeNet()
    val = DataLoader(demo.make_shapes(256, seed=1), batch_size=128)
    with tempfile.TemporaryDirectory() as log_dir:
        plain_timer, pami_timer = _ValidationTimer(), _ValidationTimer()
        callback = demo.make_callback()
        plain = _trainer(log_dir, [plain_timer])
        # The timer goes last: its on_validation_end runs after the PAMI callback's epoch-end work.
        with_pami = _trainer(log_dir, [callback, pami_timer])
        for _ in range(args.repeats + 1):  # the first of each is a warm-up
            plain.validate(model, val, verbose=False)
            with_pami.validate(model, val, verbose=False)

    without = statistics.median(plain_timer.times[1:])
    with_cb = statistics.median(pami_timer.times[1:])
    n_windows = callback.explainer.partition.num_parts((64, 64))
    print(f"validation epoch, 256 images of 64x64 (median of {args.repeats}):")
    print(f"  without the callback: {without:.3f} s")
    print(f"  with PAMICallback(8 samples, {n_windows} windows each, 4 metrics, TensorBoard images): {with_cb:.3f} s")
    print(f"callback_overhead_ratio: {with_cb / without:.2f}x  (+{with_cb - without:.3f} s per explained validation)")


if __name__ == "__main__":
    main()
