"""Overhead of the dataset-scale pipeline: images/s of ``evaluate`` over images/s of ``PAMI.explain`` alone; bytes written per image.

The pipeline (``Trainer.predict`` + ``ExplanationModule`` + ``ExplanationWriter``) includes reading
and decoding the VOC files, the clean pass, segmentation, the pointing game and writing the maps,
the per-sample table and run files. ``PAMI.explain`` alone gets the same images already decoded
in memory, in the same batches, with the same model and partition. Goal: ratio >= 0.9.

Insertion and deletion are off in the ratio (each adds ``n_steps + 1`` forward passes per image:
a metric's cost, not the pipeline's); ``--with-curves`` also times a run with them.

    python benchmarks/evaluate.py                      # 32 images, 64x64, both strategies
    python benchmarks/evaluate.py --images 64 --size 96 --strategy sliding
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
from evaluate_shapes import CLASSES, ShapeNet, write_shapes_voc

from pami_lightning import PAMI, Blur, SlidingWindow, Superpixels
from pami_lightning.data import VOCDataset, collate
from pami_lightning.evaluation import ExplanationModule, evaluate


def _pami(model: nn.Module, strategy: str, size: int) -> PAMI:
    partition = SlidingWindow(radius=size // 5, stride=max(size // 16, 1)) if strategy == "sliding" else Superpixels.paper()
    return PAMI(model, partition, masker=Blur(25, 10), batch_size=256, progress=False)


def _folder_bytes(folder: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(folder) for f in files)


def bench(strategy: str, voc: Path, size: int, batch_size: int, curves: bool) -> dict[str, float]:
    torch.manual_seed(0)
    model = ShapeNet().eval()
    data = VOCDataset(voc, classes=",".join(CLASSES))
    n = len(data)

    # PAMI.explain alone: decoded images in memory, the same batches, the ground-truth targets.
    batches = [collate([data[i] for i in range(k, min(k + batch_size, n))]) for k in range(0, n, batch_size)]
    pami = _pami(model, strategy, size)
    start = time.perf_counter()
    for b in batches:
        pami.explain(b["image"], target=b["label"])
    alone = n / (time.perf_counter() - start)

    metrics = ("pointing_game", "insertion", "deletion") if curves else ("pointing_game",)
    with tempfile.TemporaryDirectory() as out:
        module = ExplanationModule(model, {"PAMI": _pami(model, strategy, size)}, metrics=metrics, n_steps=32, insertion_substrate=Blur(25, 10))
        trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False)
        start = time.perf_counter()
        evaluate(trainer, module, data, out, batch_size=batch_size)
        pipeline = n / (time.perf_counter() - start)
        written = _folder_bytes(out) / n
    return {"alone": alone, "pipeline": pipeline, "ratio": pipeline / alone, "bytes_per_image": written}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--strategy", choices=("sliding", "superpixels", "both"), default="both")
    parser.add_argument("--with-curves", action="store_true", help="also time a pipeline run with insertion and deletion (32 steps)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as root:
        voc = write_shapes_voc(Path(root) / "voc", args.images, args.size, seed=0)
        strategies = ("sliding", "superpixels") if args.strategy == "both" else (args.strategy,)
        print(f"{args.images} images {args.size}x{args.size}, batches of {args.batch_size}, {torch.get_num_threads()} threads")
        for strategy in strategies:
            for curves in (False, True) if args.with_curves else (False,):
                r = bench(strategy, voc, args.size, args.batch_size, curves)
                label = strategy + (" +insertion/deletion" if curves else "")
                print(f"{label:>32}: PAMI.explain {r['alone']:.2f} img/s, pipeline {r['pipeline']:.2f} img/s, "
                      f"ratio {r['ratio']:.3f} (goal >= 0.9), {r['bytes_per_image'] / 1024:.1f} KiB written per image")


if __name__ == "__main__":
    main()
