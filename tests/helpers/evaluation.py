"""Evaluation test pieces: a VOC-format shapes dataset written on the fly, the explainers compared, and one
evaluation run as a function (also run as a separate process: ``python -m helpers.evaluation VOC OUT [DELAY]``)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from PIL import Image
from torch import nn

from pami_lightning import PAMI, Blur, SlidingWindow, Superpixels
from pami_lightning.data import VOCDataset
from pami_lightning.evaluation import CaptumOcclusion, CenterBaseline, ExplanationModule, RandomBaseline, evaluate

from helpers.models import ColourModel

CLASSES = ("blue", "green", "red")
COLOURS = {"red": (230, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 230)}
SIZE = 32

# id -> objects (class, xmin, ymin, xmax, ymax; VOC 1-based inclusive). 6 images, 7 items:
# 000004 holds two classes; 000006's box is faint, so the model gets it wrong (only_correct drops it).
IMAGES = {
    "000001": [("red", 3, 4, 12, 13)],
    "000002": [("green", 18, 2, 29, 11)],
    "000003": [("blue", 10, 17, 21, 28)],
    "000004": [("red", 2, 20, 11, 29), ("blue", 20, 3, 29, 12)],
    "000005": [("green", 12, 12, 22, 22)],
    "000006": [("red", 22, 21, 30, 30)],
}
FAINT = {"000006"}


def write_voc(root: Path) -> Path:
    """A VOC folder (Annotations/*.xml, JPEGImages/*.png) of coloured boxes on a textured grey background."""
    (root / "Annotations").mkdir(parents=True, exist_ok=True)
    (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
    for k, (i, objects) in enumerate(IMAGES.items()):
        rng = np.random.default_rng(k)
        pixels = (90 + 40 * rng.random((SIZE, SIZE, 1)) + 10 * rng.random((SIZE, SIZE, 3))).astype(np.uint8)
        objs = ""
        for name, x1, y1, x2, y2 in objects:
            colour = np.array(COLOURS[name]) if i not in FAINT else np.array([120, 110, 125])
            pixels[y1 - 1 : y2, x1 - 1 : x2] = colour
            objs += (f"<object><name>{name}</name><difficult>0</difficult><bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin>"
                     f"<xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>")
        Image.fromarray(pixels).save(root / "JPEGImages" / f"{i}.png")
        (root / "Annotations" / f"{i}.xml").write_text(
            f"<annotation><filename>{i}.png</filename><size><width>{SIZE}</width><height>{SIZE}</height><depth>3</depth></size>{objs}</annotation>"
        )
    return root


def dataset(root: Path) -> VOCDataset:
    return VOCDataset(root, classes=",".join(CLASSES))


def explainers(model: nn.Module) -> dict[str, Any]:
    return {
        "PAMI-I": PAMI(model, SlidingWindow(radius=6, stride=4), masker=Blur(11, 5), batch_size=48, progress=False),
        "PAMI-II": PAMI(model, Superpixels([("slic", {"n_segments": 12, "compactness": 20})]), masker=Blur(11, 5), batch_size=48, progress=False),
        "occlusion": CaptumOcclusion(model, window=8, stride=4),
        "random": RandomBaseline(seed=3),
        "center": CenterBaseline(),
    }


def module(model: nn.Module, **kwargs: Any) -> ExplanationModule:
    return ExplanationModule(model, explainers(model), n_steps=8, insertion_substrate=Blur(11, 5), **kwargs)


def trainer(devices: int = 1, **kwargs: Any) -> pl.Trainer:
    strategy = "ddp_fork" if devices > 1 else "auto"
    return pl.Trainer(accelerator="cpu", devices=devices, strategy=strategy, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, enable_checkpointing=False, **kwargs)


def run(voc: Path, out: Path, devices: int = 1, batch_size: int = 2, delay: float = 0.0, **kwargs: Any) -> Any:
    torch.set_num_threads(1)
    model = ColourModel(delay=delay)
    return evaluate(trainer(devices), module(model, **kwargs), dataset(voc), out, batch_size=batch_size)


if __name__ == "__main__":  # one run, as a separate process
    run(Path(sys.argv[1]), Path(sys.argv[2]), delay=float(sys.argv[3]) if len(sys.argv) > 3 else 0.0)
    os._exit(0)
