"""Watch a model learn *where to look*: PAMI explanations logged while a small CNN trains.

The data are generated, so the object of every image is known to the pixel. Each 64x64 image shows
one shape whose colour is its class (red, green, blue or yellow) among distractor shapes in other,
equally striking colours (cyan, magenta, white, black) on a random colour texture. A small CNN learns the classes from scratch while
:class:`~pami_lightning.PAMICallback` explains 8 fixed validation images before training (the
untrained model, at step 0) and after every epoch, and logs to TensorBoard:

- ``pami/pointing_game``: how often the map's maximum lies on the object (rises as the model
  learns to look at the class-coloured shape instead of the distractors), ``pami/energy_pointing_game``,
  ``pami/insertion`` and ``pami/deletion``;
- ``pami/stability``: how much the maps still change from one epoch to the next;
- images: the heatmap overlays (``pami/overlays``, ``pami/sample_<i>``) and ``pami/timeline``, one row
  per sample and one column per epoch.

Run::

    python examples/train_shapes.py            # under a minute on 2 CPU cores
    tensorboard --logdir logs

Flags: ``--fast`` (small data, 2 epochs, for CI), ``--max-epochs N``, ``--log-dir DIR``, ``--seed S``.

``clever_hans.py`` and ``train_shapes_wandb.py`` import its data, model, callback and trainer.
"""

from __future__ import annotations

import argparse
import math
from typing import Any, Optional

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import Logger, TensorBoardLogger
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from pami_lightning import Blur, PAMICallback, SlidingWindow
from pami_lightning.callbacks import PAMIOptions, Pictures

#: The class of an image is the colour of its one class-coloured shape (RGB in [0, 1]).
CLASSES = ("red", "green", "blue", "yellow")
COLOURS = torch.tensor([[0.9, 0.1, 0.1], [0.1, 0.8, 0.1], [0.15, 0.25, 0.95], [0.95, 0.85, 0.1]])
#: Distractor colours: as striking as the class colours to an untrained network, but no class.
DISTRACTOR_COLOURS = torch.tensor([[0.1, 0.9, 0.9], [0.9, 0.1, 0.9], [0.97, 0.97, 0.97], [0.05, 0.05, 0.05]])


def _shape_masks(kind: Tensor, cy: Tensor, cx: Tensor, r: Tensor, size: int) -> Tensor:
    """Bool masks ``[N, size, size]`` of shape ``kind[i]`` (0 disk, 1 square, 2 diamond, 3 cross)."""
    coords = torch.arange(size, dtype=torch.float32)
    dy = (coords.view(1, -1, 1) - cy.view(-1, 1, 1)).abs()
    dx = (coords.view(1, 1, -1) - cx.view(-1, 1, 1)).abs()
    r = r.view(-1, 1, 1)
    masks = torch.zeros(kind.numel(), size, size, dtype=torch.bool)
    for k, shape in enumerate(
        (
            lambda dy, dx, r: dy**2 + dx**2 <= r**2,
            lambda dy, dx, r: torch.maximum(dy, dx) <= r,
            lambda dy, dx, r: dy + dx <= 1.3 * r,
            lambda dy, dx, r: (torch.maximum(dy, dx) <= r) & (torch.minimum(dy, dx) <= r / 3),
        )
    ):
        i = kind == k
        masks[i] = shape(dy[i], dx[i], r[i])
    return masks


def make_shapes(n: int, size: int = 64, distractors: int = 3, seed: int = 0) -> TensorDataset:
    """``n`` images ``[3, size, size]`` in ``[0, 1]``, class labels ``[n]`` and object masks ``[n, size, size]``.

    Each image: a random colour texture, ``distractors`` shapes in distractor colours, then one shape
    (disk, square, diamond or cross, at random) in its class colour, drawn last so that its mask is
    exactly its visible pixels.
    """
    g = torch.Generator().manual_seed(seed)

    def rand(*shape: int) -> Tensor:
        return torch.rand(*shape, generator=g)

    def shapes(n: int, r_min: float, r_span: float) -> tuple[Tensor, Tensor]:
        kind = torch.randint(0, 4, (n,), generator=g)
        radius = r_min + r_span * rand(n)
        cy, cx = (radius + 1 + rand(n) * (size - 2 * radius - 2) for _ in range(2))
        return _shape_masks(kind, cy, cx, radius, size), kind

    texture = F.interpolate(rand(n, 3, 8, 8), size=(size, size), mode="bilinear", align_corners=False)
    images = (0.2 + 0.45 * texture + 0.15 * rand(n, 1, size, size)).clamp(0, 1)
    for _ in range(distractors):
        mask, _ = shapes(n, 4, 5)
        colour = DISTRACTOR_COLOURS[torch.randint(0, len(DISTRACTOR_COLOURS), (n,), generator=g)]
        images = torch.where(mask[:, None], colour.view(n, 3, 1, 1), images)
    masks, _ = shapes(n, 5, 4)
    labels = torch.randint(0, len(CLASSES), (n,), generator=g)
    images = torch.where(masks[:, None], COLOURS[labels].view(n, 3, 1, 1), images)
    return TensorDataset(images, labels, masks)


class ShapeNet(L.LightningModule):
    """A four-block CNN with batch norm and global average pooling."""

    def __init__(self, num_classes: int = len(CLASSES), lr: float = 3e-3) -> None:
        super().__init__()
        self.save_hyperparameters()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(2))

        self.features = nn.Sequential(block(3, 8), block(8, 16), block(16, 32), block(32, 32))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))

    def training_step(self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y, _ = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int) -> None:
        x, y, _ = batch
        logits = self(x)
        self.log("val/loss", F.cross_entropy(logits, y))
        self.log("val/acc", (logits.argmax(1) == y).float().mean())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


def make_callback(**overrides: Any) -> PAMICallback:
    """The demo's callback: 8 samples, windows sized for 64x64 images, object hits only; ``overrides`` change any argument."""
    options: dict[str, Any] = {
        "num_samples": 8,
        # 11 x 11 windows per image
        "explainer": PAMIOptions(partition=SlidingWindow(radius=10, stride=6), masker=Blur(kernel_size=15, sigma=5), batch_size=256),
        "pointing_tolerance": 0,  # the map's maximum must lie on the object itself
        "pictures": Pictures(class_names=CLASSES),  # captions and timeline rows name the class
        "on_validate": True,
    }
    return PAMICallback(**{**options, **overrides})


def make_trainer(fast: bool, max_epochs: Optional[int], callbacks: list[Callback], logger: Logger) -> L.Trainer:
    """The demo's trainer: ``max_epochs`` (default 4, 2 when ``fast``), no checkpoints, a progress bar unless ``fast``."""
    return L.Trainer(
        max_epochs=max_epochs or (2 if fast else 4),
        callbacks=callbacks,
        logger=logger,
        enable_model_summary=False,
        enable_progress_bar=not fast,
        enable_checkpointing=False,
        log_every_n_steps=10,
    )


def training_parser(description: str) -> argparse.ArgumentParser:
    """The flags every shapes example shares: ``--fast``, ``--max-epochs``, ``--seed``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--fast", action="store_true", help="small data, 2 epochs (CI)")
    parser.add_argument("--max-epochs", type=int, default=None, help="training epochs (default 4, 2 with --fast)")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def train(fast: bool, max_epochs: Optional[int], seed: int, logger: Logger) -> dict[str, float]:
    """Train the demo (seeded data, model and callback), logging to ``logger``; the final ``callback_metrics``."""
    L.seed_everything(seed, verbose=False)
    n_train, n_val = (512, 128) if fast else (2000, 256)
    train_loader = DataLoader(make_shapes(n_train, seed=seed), batch_size=64, shuffle=True)
    val_loader = DataLoader(make_shapes(n_val, seed=seed + 1), batch_size=128)
    trainer = make_trainer(fast, max_epochs, [make_callback()], logger)
    model = ShapeNet()
    # The untrained model's explanations first: the timeline's first column, logged at step 0.
    trainer.validate(model, val_loader, verbose=False)
    trainer.fit(model, train_loader, val_loader)
    return {k: float(v) for k, v in trainer.callback_metrics.items()}


def format_scores(scores: dict[str, float]) -> str:
    """``"key value, ..."`` sorted by key, without the NaNs of keys never logged."""
    return ", ".join(f"{k} {v:.3f}" for k, v in sorted(scores.items()) if not math.isnan(v))


def main(argv: Optional[list[str]] = None) -> dict[str, float]:
    parser = training_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--log-dir", default="logs", help="TensorBoard log directory (default: logs)")
    args = parser.parse_args(argv)

    logger = TensorBoardLogger(args.log_dir, name="train_shapes")
    scores = train(args.fast, args.max_epochs, args.seed, logger)
    print(f"\nLogs: {logger.log_dir}  (tensorboard --logdir {args.log_dir})")
    print("Final scores: " + format_scores(scores))
    return scores


if __name__ == "__main__":
    main()
