"""What PAMICallback costs, against two yardsticks: the validation it extends, and its own forward passes.

The demo's model, validation set (256 images of 64x64) and callback (8 samples, 11 x 11 windows,
insertion, deletion and both pointing games, images to TensorBoard) from ``examples/train_shapes.py``.
Each repeat times one validation run without the callback and one with it (interleaved, after a
warm-up of each), from ``on_validation_start`` to ``on_validation_end``. Printed, as medians:

- ``x of validation``: the validation with the callback over the one without (what a user waits);
- ``x of its forward passes``: the callback's wall time (``pami/seconds``, pictures included) over
  the time its forward passes (``pami/passes``) take at the model's raw throughput — the model alone,
  in eval mode without autograd, on batches of the callback's batch size, timed right after each
  validation. That is the floor for the work it does; the goal is within 1.15x;
- the same against the time spent inside its own model calls, at the batch sizes it ran;
- the share of the callback's time spent drawing and logging the pictures (goal: under 10%).

    python benchmarks/callback_overhead.py [--repeats 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.data import DataLoader

import pami_lightning.callbacks.pami_callback as callback_module
from pami_lightning.callbacks.cost import CountedCall

EXAMPLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples", "train_shapes.py")
SIZE = 64


class _ValidationTimer(Callback):
    """Wall time of each validation run, the callbacks' epoch-end work included."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.times.append(time.perf_counter() - self._start)


class _Timed:
    """Wraps a function, adding up its wall time (``seconds``) and this process's CPU time (``cpu``)."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn, self.seconds, self.cpu = fn, 0.0, 0.0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        start, cpu = time.perf_counter(), time.process_time()
        try:
            return self.fn(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - start
            self.cpu += time.process_time() - cpu


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


def forward_floor(model: torch.nn.Module, passes: int, batch_size: int) -> tuple[float, float]:
    """Wall and CPU seconds the model alone takes for ``passes`` inputs: eval mode, no autograd, batches of ``batch_size``."""
    x = torch.rand(batch_size, 3, SIZE, SIZE)
    model.eval()
    with torch.inference_mode():
        start, cpu = time.perf_counter(), time.process_time()
        for lo in range(0, passes, batch_size):
            model(x[: min(batch_size, passes - lo)])
        return time.perf_counter() - start, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed validation runs of each kind (default 5)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: steadier on a shared machine)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    spec = importlib.util.spec_from_file_location("train_shapes", EXAMPLE)
    assert spec is not None and spec.loader is not None
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)

    # The pictures' share: the callback module's own references to the drawing and writing, timed;
    # and the time inside the callback's model calls (every forward pass goes through its CountedCall).
    drawing, writing = _Timed(callback_module.build_report), _Timed(callback_module.dispatch)
    callback_module.build_report, callback_module.dispatch = drawing, writing  # type: ignore[assignment]
    forwards = _Timed(CountedCall.__call__)
    CountedCall.__call__ = lambda self, batch: forwards(self, batch)  # type: ignore[method-assign]

    L.seed_everything(0, verbose=False)
    model = demo.ShapeNet()
    val = DataLoader(demo.make_shapes(256, seed=1), batch_size=128)
    seconds, cpus, passes, floors = [], [], [], []
    with tempfile.TemporaryDirectory() as log_dir:
        plain_timer, pami_timer = _ValidationTimer(), _ValidationTimer()
        callback = demo.make_callback()
        run = _Timed(callback._run)  # CPU time of each explanation: steadier than wall time under load
        callback._run = run  # type: ignore[method-assign]
        plain = _trainer(log_dir, [plain_timer])
        # The timer goes last: its on_validation_end runs after the PAMI callback's epoch-end work.
        with_pami = _trainer(log_dir, [callback, pami_timer])
        for k in range(args.repeats + 1):  # the first of each is a warm-up
            plain.validate(model, val, verbose=False)
            if k == 1:
                drawing.seconds = writing.seconds = forwards.seconds = 0.0
            cpu = run.cpu
            with_pami.validate(model, val, verbose=False)
            cpus.append(run.cpu - cpu)
            seconds.append(float(with_pami.callback_metrics["pami/seconds"]))
            passes.append(int(with_pami.callback_metrics["pami/passes"]))
            # Interleaved, so that the floor and the callback see the same load on a shared machine.
            assert callback.pami is not None
            floors.append(forward_floor(model, passes[-1], callback.pami.batch_size))

    without = statistics.median(plain_timer.times[1:])
    with_cb = statistics.median(pami_timer.times[1:])
    cb_seconds, floor = statistics.median(seconds[1:]), statistics.median(f for f, _ in floors[1:])
    vs_floor = statistics.median(s / f for s, (f, _) in zip(seconds[1:], floors[1:], strict=True))
    vs_floor_cpu = statistics.median(c / f for c, (_, f) in zip(cpus[1:], floors[1:], strict=True))
    pictures = (drawing.seconds + writing.seconds) / sum(seconds[1:])
    in_situ = sum(seconds[1:]) / forwards.seconds
    n_windows = callback.pami.partition.num_parts((SIZE, SIZE))
    print(f"validation epoch, 256 images of {SIZE}x{SIZE}, {args.threads} thread(s), median of {args.repeats}:")
    print(f"  without the callback: {without:.3f} s")
    print(f"  with PAMICallback(8 samples, {n_windows} windows each, 4 metrics, TensorBoard images): {with_cb:.3f} s")
    print(f"  the callback: {cb_seconds:.3f} s for {passes[-1]} forward passes; the model alone runs them in {floor:.3f} s "
          f"(batches of {callback.pami.batch_size})")
    print(f"callback_overhead_ratio: {with_cb / without:.2f}x of validation  (+{with_cb - without:.3f} s per explained validation)")
    print(f"callback_vs_forward_floor: {vs_floor:.2f}x of its own forward passes in wall time, {vs_floor_cpu:.2f}x in CPU time  (goal <= 1.15x)")
    print(f"  in place: {in_situ:.2f}x of the time inside its own model calls (their batch sizes as run)")
    print(f"pictures_share: {100 * pictures:.1f}% of the callback's time drawing {100 * drawing.seconds / sum(seconds[1:]):.1f}%, "
          f"writing {100 * writing.seconds / sum(seconds[1:]):.1f}%  (goal < 10%)")


if __name__ == "__main__":
    main()
