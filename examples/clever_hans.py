"""Catch a "Clever Hans" model: its validation accuracy looks fine, PAMI shows it reads a watermark.

The shapes of ``train_shapes.py`` (the class is the colour of one shape among distractors), with a
flaw that real data sets have: every training image carries a 12x12 logo in its bottom-right corner,
and each class has its own logo (stripes across, stripes down, a checkerboard, a frame), as if each
class had been collected from a different source that stamps its pictures. The logo is an easier cue
than the coloured shape, and the CNN learns it instead.

Two validation splits of the *same* images tell the story (two validation dataloaders):

- ``leaky``: logos as in training, the split a team would cut from the same sources; its accuracy,
  ``val_leaky/acc``, reaches 1.0 within an epoch;
- ``clean``: each image gets a random logo, unrelated to its class; ``val_clean/acc`` stays near chance.

Real projects often have only the leaky split. The explanations give the shortcut away there:
:class:`~pami_lightning.PAMICallback` explains 8 leaky validation images before training (step 0)
and after every epoch, and logs to TensorBoard

- ``pami/pointing_game``: how often the map's maximum lies on the labelled shape (falls to about 0),
  with the other scores, overlays and timeline of ``train_shapes.py``, where every map lights up the
  corner;
- ``pami_watermark/pointing_game``, from a second callback that scores the same samples against the
  logo's square instead of the shape: how often the map's maximum lies on the logo (about 1).

At the end it prints both accuracies, the pointing game on the shape and the fraction of map maxima
on the logo.

Run::

    python examples/clever_hans.py             # about 15 s on 2 CPU cores
    tensorboard --logdir logs

Flags: ``--fast`` (less data, 2 epochs, for CI), ``--max-epochs N``, ``--log-dir DIR``, ``--seed S``,
``--summary FILE`` (the four numbers as JSON).
"""

from __future__ import annotations

import json
from typing import Optional

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset
from train_shapes import CLASSES, ShapeNet, format_scores, make_callback, make_shapes, make_trainer, training_parser

from pami_lightning.callbacks import Pictures, Sample

#: Side of the logo, in pixels; it sits in the image's bottom-right corner.
LOGO = 12
_ROWS, _COLS = torch.meshgrid(torch.arange(LOGO), torch.arange(LOGO), indexing="ij")
#: One black-and-white logo per class: stripes across, stripes down, a checkerboard, a frame.
LOGOS = torch.stack(
    [
        (_ROWS // 2) % 2 == 0,
        (_COLS // 2) % 2 == 0,
        (_ROWS // 2 + _COLS // 2) % 2 == 0,
        (torch.minimum(_ROWS, _COLS) < 2) | (torch.maximum(_ROWS, _COLS) >= LOGO - 2),
    ]
).float()
SPLITS = ("leaky", "clean")


def watermark_region(size: int) -> Tensor:
    """Bool mask ``[size, size]`` of the logo's square in the bottom-right corner."""
    region = torch.zeros(size, size, dtype=torch.bool)
    region[-LOGO:, -LOGO:] = True
    return region


def stamp(data: TensorDataset, logo_classes: Tensor) -> TensorDataset:
    """``data`` with logo ``logo_classes[i]`` stamped on image ``i``; the shape's mask loses the pixels under it."""
    images, labels, masks = data.tensors
    region = watermark_region(images.shape[-1])
    images = images.clone()
    images[..., -LOGO:, -LOGO:] = LOGOS[logo_classes].unsqueeze(1)  # the same grey level in R, G and B
    return TensorDataset(images, labels, masks & ~region)


def watermark_sample(batch: tuple[Tensor, Tensor, Tensor]) -> Sample:
    """The samples with the logo's square as their "object": the pointing game then counts maps that point at it."""
    images, labels, _ = batch
    region = watermark_region(images.shape[-1]).to(images.device)
    return Sample(images, labels, region.expand(images.shape[0], -1, -1))


class CleverHansNet(ShapeNet):
    """``ShapeNet``, validated on two splits: accuracy logged as ``val_<split>/acc``."""

    def validation_step(self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        x, y, _ = batch
        logits = self(x)
        split = SPLITS[dataloader_idx]
        # Named per split here, so Lightning's "/dataloader_idx_k" suffix is not needed.
        self.log(f"val_{split}/loss", F.cross_entropy(logits, y), add_dataloader_idx=False)
        self.log(f"val_{split}/acc", (logits.argmax(1) == y).float().mean(), add_dataloader_idx=False)


def main(argv: Optional[list[str]] = None) -> dict[str, float]:
    parser = training_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--log-dir", default="logs", help="TensorBoard log directory (default: logs)")
    parser.add_argument("--summary", default=None, help="also write the summary to this JSON file")
    args = parser.parse_args(argv)

    L.seed_everything(args.seed, verbose=False)
    n_train, n_val = (1500, 128) if args.fast else (2000, 256)
    train = make_shapes(n_train, seed=args.seed)
    val = make_shapes(n_val, seed=args.seed + 1)
    # The leak: in training and in the leaky split, the logo is the class.
    train_loader = DataLoader(stamp(train, train.tensors[1]), batch_size=64, shuffle=True)
    random_logos = torch.randint(0, len(CLASSES), (n_val,), generator=torch.Generator().manual_seed(args.seed + 2))
    # In SPLITS' order: leaky (logo = class), then clean (the same images, random logos).
    val_loaders = [DataLoader(stamp(val, logos), batch_size=128) for logos in (val.tensors[1], random_logos)]
    callbacks = [
        make_callback(),  # explains the first validation loader: the leaky split
        make_callback(key_prefix="pami_watermark", batch_to_sample=watermark_sample, metrics=["pointing_game"], pictures=Pictures(enabled=False)),
    ]
    logger = TensorBoardLogger(args.log_dir, name="clever_hans")
    trainer = make_trainer(args.fast, args.max_epochs, callbacks, logger)
    model = CleverHansNet()
    # The untrained model first (step 0): the curves then show how fast the shortcut is learned.
    trainer.validate(model, val_loaders, verbose=False)
    trainer.fit(model, train_loader, val_loaders)

    scores = {k: float(v) for k, v in trainer.callback_metrics.items()}
    summary = {
        "leaky_accuracy": scores["val_leaky/acc"],
        "clean_accuracy": scores["val_clean/acc"],
        "pointing_game_object": scores["pami/pointing_game"],
        "maxima_on_watermark": scores["pami_watermark/pointing_game"],
    }
    print(f"\nLogs: {logger.log_dir}  (tensorboard --logdir {args.log_dir})")
    print("Final scores: " + format_scores(scores))
    rows = [
        ("accuracy, leaky validation (logo = class, as in training)", f"{summary['leaky_accuracy']:.2f}"),
        ("accuracy, clean validation (same images, random logos)", f"{summary['clean_accuracy']:.2f}  (chance {1 / len(CLASSES):.2f})"),
        ("pointing game on the coloured shape", f"{summary['pointing_game_object']:.2f}"),
        ("map maxima on the logo", f"{summary['maxima_on_watermark']:.2f}"),
    ]
    print(f"\nClever Hans check ({callbacks[0].num_samples} explained leaky validation images)")
    for label, value in rows:
        print(f"  {label + ':':<60}{value}")
    if summary["maxima_on_watermark"] > summary["pointing_game_object"]:
        print("The maps point at the logo, not the shape: the leaky accuracy is no evidence that the task was learned.")
    else:
        print("The maps point at the shape more often than at the logo.")
    if args.summary:
        with open(args.summary, "w") as f:
            json.dump(summary, f, indent=2)
    return summary


if __name__ == "__main__":
    main()
