"""How coarse can the window grid be? Maps at larger strides against the paper's stride 6, in one run.

On a 224x224 photo (scikit-image's astronaut with a yellow disc and a blue decoy painted on it),
with radius-40 circles (the paper's), prints for each stride the forward passes per image, their
share of stride 6's 1444, the seconds, and the Pearson correlation of the map with the stride-6 map
of the same model, image and target. Then the size-aware windows (``SlidingWindow.relative``,
optionally with ``max_parts``) at the image sizes training-time monitoring sees.

    python benchmarks/stride_budget.py            # the README's table (about a minute on 2 CPU cores)

The model is ``examples/explain_image.py``'s yellow-disc detector, trained here in a few seconds:
a map with real contrast (a random CNN's maps are nearly flat, and their correlations mostly noise).
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import torch
from torch import nn

from pami_lightning import PAMI, Blur, SlidingWindow


def disc_detector_and_picture(size: int) -> tuple[nn.Module, torch.Tensor]:
    """The example's trained yellow-disc detector and the painted astronaut ``[1, 3, size, size]``."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
    from explain_image import DECOYS, YELLOW, DiscDetector, load_picture, paint_disc, train

    torch.manual_seed(0)
    model = DiscDetector()
    train(model, steps=200, size=48, seed=0)
    return model, painted(size, load_picture, paint_disc, YELLOW, DECOYS[0])


def painted(size: int, load_picture, paint_disc, yellow, decoy) -> torch.Tensor:  # type: ignore[no-untyped-def]
    picture = load_picture(None, size)
    radius = max(4, size // 16)
    paint_disc(picture, size * 3 // 10, size * 7 // 10, radius, yellow)
    paint_disc(picture, size * 7 // 10, size * 3 // 10, radius, decoy)
    return picture[None]


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten().double(), b.flatten().double()
    a, b = a - a.mean(), b - b.mean()
    return float((a @ b) / (a.norm() * b.norm()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.parse_args()
    torch.set_num_threads(2)
    model, images = disc_detector_and_picture(224)
    target = torch.ones(1, dtype=torch.long)  # "there is a yellow disc"

    def explain(partition: SlidingWindow, x: torch.Tensor) -> tuple[torch.Tensor, float]:
        start = time.perf_counter()
        maps = PAMI(model, partition, Blur(), progress=False).explain(x, target=target.expand(len(x)))
        return maps, time.perf_counter() - start

    reference, _ = explain(SlidingWindow(40, 6), images)
    print(f"stride-6 map: min {float(reference.min()):.3f}, max {float(reference.max()):.3f}")
    print("| stride | passes / image | share of stride 6 | s / image | Pearson with stride 6 |")
    print("|---|---|---|---|---|")
    for stride in (6, 8, 12, 16, 24, 32):
        window = SlidingWindow(40, stride)
        maps, seconds = explain(window, images)
        passes = window.num_parts((224, 224))
        print(f"| {stride} | {passes} | {passes / 1444:.0%} | {seconds:.2f} | {pearson(maps[0], reference[0]):.4f} |")

    from explain_image import DECOYS, YELLOW, load_picture, paint_disc

    print("\nSize-aware windows: SlidingWindow.relative() (radius 40/224, stride 6/224 of the smaller side)")
    print("| image | relative(): radius, stride, passes | its map's spread | relative(max_parts=256): stride, passes | SlidingWindow(): passes, map's spread |")
    print("|---|---|---|---|---|")
    for size in (32, 64, 128, 224):
        rel, budget, paper = SlidingWindow.relative(), SlidingWindow.relative(max_parts=256), SlidingWindow()
        x = painted(size, load_picture, paint_disc, YELLOW, DECOYS[0])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the default's "radius >= half the image" warning is the point here
            flat, _ = explain(paper, x)
        sized, _ = explain(rel, x)
        r, s = rel.resolve((size, size))
        _, sb = budget.resolve((size, size))
        print(f"| {size}x{size} | {r}, {s}, {rel.num_parts((size, size))} | {float(sized.max() - sized.min()):.3f} | "
              f"{sb}, {budget.num_parts((size, size))} | {paper.num_parts((size, size))}, {float(flat.max() - flat.min()):.3f} |")


if __name__ == "__main__":
    main()
