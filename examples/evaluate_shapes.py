"""The paper's Table 4 on data made offline: PAMI I and II, Occlusion, Random and Center side by side.

1. Writes a Pascal VOC-format dataset of shapes (``Annotations/*.xml`` with boxes, ``JPEGImages/*.png``):
   one square, disc or triangle of a random colour on a noisy background per image; the class is the shape.
2. Trains a small CNN on a training split (under a minute on 2 CPU cores).
3. Evaluates the validation split with :func:`pami_lightning.evaluation.evaluate` on a Lightning
   ``Trainer`` (pointing game, insertion, deletion) and writes the report (``report.md``,
   ``report.csv``, ``curves.png``) into ``--out``, printing the table.

    python examples/evaluate_shapes.py --out shapes_eval/
    python examples/evaluate_shapes.py --fast        # a few seconds (CI)
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torch import Tensor, nn

from pami_lightning import PAMI, Blur, SlidingWindow, Superpixels
from pami_lightning.data import VOCDataset, collate
from pami_lightning.evaluation import CaptumOcclusion, CenterBaseline, ExplanationModule, RandomBaseline, evaluate, write_report

CLASSES = ("disc", "square", "triangle")


def write_shapes_voc(root: Path, n: int, size: int, seed: int) -> Path:
    """``n`` images of ``size`` x ``size`` pixels in VOC layout; boxes in VOC's 1-based inclusive pixels."""
    rng = np.random.default_rng(seed)
    (root / "Annotations").mkdir(parents=True, exist_ok=True)
    (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        name = CLASSES[i % len(CLASSES)]
        pixels = (100 + 50 * rng.random((size, size, 3))).astype(np.uint8)  # noise: nothing to find but the shape
        image = Image.fromarray(pixels)
        side = int(rng.integers(size // 4, size // 2))
        x1, y1 = (int(v) for v in rng.integers(0, size - side, 2))
        x2, y2 = x1 + side - 1, y1 + side - 1
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        draw = ImageDraw.Draw(image)
        if name == "disc":
            draw.ellipse((x1, y1, x2, y2), fill=colour)
        elif name == "square":
            draw.rectangle((x1, y1, x2, y2), fill=colour)
        else:
            draw.polygon([(x1, y2), (x2, y2), ((x1 + x2) / 2, y1)], fill=colour)
        stem = f"{i:06d}"
        image.save(root / "JPEGImages" / f"{stem}.png")
        (root / "Annotations" / f"{stem}.xml").write_text(
            f"<annotation><filename>{stem}.png</filename><size><width>{size}</width><height>{size}</height><depth>3</depth></size>"
            f"<object><name>{name}</name><difficult>0</difficult><bndbox><xmin>{x1 + 1}</xmin><ymin>{y1 + 1}</ymin>"
            f"<xmax>{x2 + 1}</xmax><ymax>{y2 + 1}</ymax></bndbox></object></annotation>"
        )
    return root


class ShapeNet(nn.Module):
    """A small CNN: three conv blocks, global max pooling (a shape anywhere counts), a linear head."""

    def __init__(self, num_classes: int = len(CLASSES)) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
        )
        self.head = nn.Linear(32, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x).amax(dim=(2, 3)))


def train(model: nn.Module, data: VOCDataset, epochs: int, seed: int) -> float:
    """Plain Adam on the training split (a few hundred steps); returns the last epoch's training accuracy."""
    torch.manual_seed(seed)
    batch = collate([data[i] for i in range(len(data))])  # decoded once: the epochs then cost only the model
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(batch["image"], batch["label"]), batch_size=32, shuffle=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    accuracy = 0.0
    for _ in range(epochs):
        right = total = 0
        for x, y in loader:
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            right += int((logits.argmax(1) == y).sum())
            total += len(y)
        accuracy = right / total
    return accuracy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("shapes_eval"), help="output folder (default shapes_eval/)")
    parser.add_argument("--fast", action="store_true", help="a tiny run of a few seconds (tests)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(2)
    size, n_train, n_val, epochs = (32, 150, 9, 15) if args.fast else (48, 480, 60, 40)

    data_dir = args.out / "data"
    train_ds = VOCDataset(write_shapes_voc(data_dir / "train", n_train, size, args.seed), classes=",".join(CLASSES))
    val_ds = VOCDataset(write_shapes_voc(data_dir / "val", n_val, size, args.seed + 1), classes=",".join(CLASSES))

    start = time.perf_counter()
    model = ShapeNet()
    accuracy = train(model, train_ds, epochs, args.seed)
    print(f"trained ShapeNet on {n_train} images in {time.perf_counter() - start:.1f} s (training accuracy {accuracy:.2f})")

    model.eval()
    blur = Blur(11, 5) if args.fast else Blur(25, 10)  # the paper's 49x49 blur is sized for 224x224 images
    radius, stride = (6, 4) if args.fast else (12, 4)
    methods = {
        "PAMI-I": PAMI(model, SlidingWindow(radius=radius, stride=stride), masker=blur, batch_size=128, progress=False),
        # --fast: one SLIC segmentation instead of the paper's 20 (seconds, not minutes, on a CPU).
        "PAMI-II": PAMI(model, Superpixels([("slic", {"n_segments": 12, "compactness": 20})]) if args.fast else Superpixels.paper(), masker=blur, second_run=True, batch_size=128, progress=False),
        "occlusion": CaptumOcclusion(model, window=size // 4, stride=size // 8),
        "random": RandomBaseline(seed=args.seed),
        "center": CenterBaseline(),
    }
    module = ExplanationModule(model, methods, n_steps=16 if args.fast else 64, insertion_substrate=blur)
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_model_summary=False,
                         enable_progress_bar=not args.fast)
    start = time.perf_counter()
    results = evaluate(trainer, module, val_ds, args.out / "eval", batch_size=8)
    assert results is not None
    print(f"explained {n_val} images with {len(methods)} methods in {time.perf_counter() - start:.1f} s")
    report = write_report(results, resamples=200 if args.fast else 1000, seed=args.seed)
    print()
    print(report.markdown_table(per_class=True))
    print(f"\nmeans over classes with 95% bootstrap intervals; the whole report: {args.out / 'eval' / 'report.md'}")


if __name__ == "__main__":
    main()
