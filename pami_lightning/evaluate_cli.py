"""``pami-evaluate``: explain and score a whole annotated dataset with several methods; the paper's Table 4 in one command.

Runs :func:`pami_lightning.evaluation.evaluate` on a Lightning ``Trainer`` (DDP over ``--devices``
and ``--num-nodes``), then writes the report (``report.md``, ``report.csv``, ``curves.png``) into
``--out``. Run the same command again after a kill: it resumes. User errors (bad paths, formats,
flags) end with one line on stderr and exit status 2; ``--traceback`` shows the full traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._cli_common import (
    CLIError,
    _non_negative_int,
    _one_line,
    _positive_int,
    add_model_arguments,
    add_normalisation_arguments,
    load_class,
    load_model,
    normalisation,
    parse_init_args,
    run_command,
)

if TYPE_CHECKING:  # torch and Lightning are imported lazily: --help and flag errors answer at once
    import lightning.pytorch as pl
    from torch import nn
    from torch.utils.data import Dataset

    from .evaluation import Report

__all__ = ["main", "build_parser", "METHODS", "ImagesProgressBar"]

PROG = "pami-evaluate"
#: The methods ``--methods`` knows, in report order.
METHODS = ("pami1", "pami2", "occlusion", "ablation", "random", "center")
METRIC_NAMES = ("pointing_game", "insertion", "deletion")
OUTPUTS = ("softmax", "sigmoid", "identity")

DESCRIPTION = ("Explain and score every image of an annotated dataset with several methods (PAMI I/II, Captum occlusion and "
               "feature ablation, Random and Center baselines): the pointing game, insertion and deletion, as in the paper's Table 4.")
EPILOG = """\
the model is loaded as pami-explain does (--checkpoint CKPT --module pkg.mod:ClassName
[--init-args JSON]): a LightningModule through load_from_checkpoint, an nn.Module from a state_dict.

the dataset (one of):
  --voc DIR [--split NAME]       Pascal VOC layout: DIR/Annotations/*.xml, DIR/JPEGImages/, optional
                                 DIR/ImageSets/Main/NAME.txt (ImageNet's validation boxes too)
  --coco ANN.json --images DIR   COCO instances JSON (boxes and masks; masks need pycocotools)
  --folder DIR                   DIR/<class name>/<image>: labels only (no pointing game)
--classes maps class names to the model's outputs (a file with one name per line, or a,b,c):
output k is the k-th name. Default: the dataset's class names, sorted.

the protocol (the paper's defaults): the explained class is the ground truth; --only-correct keeps
images the model classifies correctly (the authors' scripts); pointing game with the class's boxes
(TorchRay's tolerance, 15 px at 224); insertion from the paper's blur, deletion to black; the
headline numbers are means over classes, with 95% bootstrap intervals over images.

output (--out DIR): run.json, samples/*.csv (the per-sample table), maps/, insertion/, deletion/
(.npy shards per rank and batch), scores.json, report.md, report.csv, curves.png.

examples:
  pami-evaluate --checkpoint model.ckpt --module mypkg.models:Classifier --voc VOC2007 --split test \\
      --size 224 224 --preprocess imagenet --methods pami1,pami2,random,center --out eval/
  # 2 nodes x 8 GPUs (run the same command on every node, e.g. with srun; Lightning reads the
  # cluster's environment: SLURM, or MASTER_ADDR/MASTER_PORT/NODE_RANK):
  pami-evaluate ... --accelerator gpu --devices 8 --num-nodes 2 --out /shared/eval/
"""


def _comma_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def build_parser() -> argparse.ArgumentParser:
    """The ``pami-evaluate`` argument parser (every flag documented in ``--help``)."""
    parser = argparse.ArgumentParser(prog=PROG, description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    need = parser.add_argument_group("model and output (required)")
    add_model_arguments(need)
    need.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder (created; a folder of an earlier run is resumed)")

    data = parser.add_argument_group("dataset (one of --voc, --coco, --folder)")
    data.add_argument("--voc", type=Path, metavar="DIR", help="a Pascal VOC-format folder (Annotations/, JPEGImages/)")
    data.add_argument("--split", metavar="NAME", help="--voc only: the image list DIR/ImageSets/Main/NAME.txt (default: every annotation)")
    data.add_argument("--coco", type=Path, metavar="ANN.json", help="a COCO instances annotation file (needs --images)")
    data.add_argument("--images", type=Path, metavar="DIR", help="--coco only: the folder of its images")
    data.add_argument("--folder", type=Path, metavar="DIR", help="a folder of class folders of images (labels, no boxes)")
    data.add_argument("--classes", metavar="FILE|a,b,c", help="the model's class names in output order (default: the dataset's, sorted)")
    data.add_argument("--size", type=_positive_int, nargs=2, metavar=("H", "W"), help="resize every image (and its boxes) to H x W (default: keep sizes)")
    data.add_argument("--num-workers", type=_non_negative_int, default=0, metavar="N", help="dataloader worker processes (default 0)")

    how = parser.add_argument_group("methods")
    how.add_argument("--methods", type=_comma_list, default=["pami1", "pami2", "random", "center"], metavar="LIST",
                     help=f"comma list of {', '.join(METHODS)} (default pami1,pami2,random,center; occlusion and ablation need captum)")
    how.add_argument("--radius", type=_non_negative_int, default=40, metavar="R", help="pami1: window radius in pixels (default 40, the paper's at 224)")
    how.add_argument("--stride", type=_positive_int, default=6, metavar="S", help="pami1: step between window centres (default 6, the paper's)")
    how.add_argument("--shape", choices=("circle", "square"), default="circle", help="pami1: window shape (default circle)")
    how.add_argument("--window", type=_positive_int, default=16, metavar="W", help="occlusion: the occluding square's side (default 16)")
    how.add_argument("--window-stride", type=_positive_int, default=8, metavar="S", help="occlusion: the square's step (default 8)")
    how.add_argument("--cell", type=_positive_int, default=16, metavar="C", help="ablation: grid cell side in pixels (default 16)")
    how.add_argument("--masker", choices=("blur", "black", "white"), default="blur", help="PAMI's substrate: the paper's 49x49 blur (default), black or white")
    how.add_argument("--output", choices=OUTPUTS, default="softmax", help="what is explained and scored: softmax (default), sigmoid or the raw output")
    how.add_argument("--forward-batch", type=_positive_int, default=64, metavar="N", help="masked images per forward pass (default 64)")
    how.add_argument("--seed", type=int, default=0, help="seed of the Random baseline and of the bootstrap (default 0)")
    add_normalisation_arguments(how)

    metrics = parser.add_argument_group("metrics")
    metrics.add_argument("--metrics", type=_comma_list, default=list(METRIC_NAMES), metavar="LIST",
                         help="comma list of pointing_game, insertion, deletion (default all three)")
    metrics.add_argument("--n-steps", type=_positive_int, default=224, metavar="N", help="steps of the insertion / deletion curves (default 224)")
    metrics.add_argument("--tolerance", default="relative", metavar="PX|relative",
                         help="pointing game hit radius in pixels, or relative (default: 15/224 of the smaller side, TorchRay's)")
    metrics.add_argument("--only-correct", action="store_true", help="explain only the images the model classifies correctly (the authors' scripts)")
    metrics.add_argument("--bootstrap", type=_non_negative_int, default=1000, metavar="N", help="bootstrap resamples of the report's intervals (default 1000)")

    run = parser.add_argument_group("distributed run")
    run.add_argument("--batch-size", type=_positive_int, default=16, metavar="N", help="images per batch per rank (default 16)")
    run.add_argument("--accelerator", default="auto", help="Lightning accelerator: auto (default), cpu, gpu, cuda, mps")
    run.add_argument("--devices", type=_positive_int, default=1, metavar="N", help="devices per node (default 1); more than one runs DDP")
    run.add_argument("--num-nodes", type=_positive_int, default=1, metavar="M", help="nodes (default 1); run the same command on each")
    run.add_argument("--logger", choices=("none", "tensorboard", "csv"), default="none",
                     help="also log the report's numbers to OUT/logs with this Lightning logger (default none)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument("--traceback", action="store_true", help="on errors, show the full Python traceback instead of one line")
    return parser


def _check_flags(args: argparse.Namespace) -> dict[str, Any]:
    """What argparse cannot check, before anything heavy is imported; returns ``--init-args`` parsed."""
    sources = [flag for flag in ("voc", "coco", "folder") if getattr(args, flag) is not None]
    if len(sources) != 1:
        raise CLIError("give one dataset: --voc DIR, --coco ANN.json --images DIR, or --folder DIR" + (f" (got {', '.join('--' + s for s in sources)})" if sources else ""))
    if args.split is not None and args.voc is None:
        raise CLIError("--split names a VOC image list: it needs --voc")
    if (args.images is not None) != (args.coco is not None):
        raise CLIError("--coco ANN.json and --images DIR go together")
    for flag in ("voc", "folder", "images"):
        path = getattr(args, flag)
        if path is not None and not path.is_dir():
            raise CLIError(f"--{flag}: no such folder: {path}")
    if args.coco is not None and not args.coco.is_file():
        raise CLIError(f"--coco: file not found: {args.coco}")
    if not args.checkpoint.is_file():
        raise CLIError(f"--checkpoint: file not found: {args.checkpoint}")
    if args.out.exists() and not args.out.is_dir():
        raise CLIError(f"--out: {args.out} exists and is not a folder")
    bad = [m for m in args.methods if m not in METHODS]
    if bad or not args.methods:
        raise CLIError(f"--methods: unknown {', '.join(bad) or '(empty list)'}; choose from {', '.join(METHODS)}")
    bad = [m for m in args.metrics if m not in METRIC_NAMES]
    if bad or not args.metrics:
        raise CLIError(f"--metrics: unknown {', '.join(bad) or '(empty list)'}; choose from {', '.join(METRIC_NAMES)}")
    if args.tolerance != "relative":
        try:
            args.tolerance = float(args.tolerance)
        except ValueError:
            raise CLIError(f"--tolerance must be pixels (a number >= 0) or relative; got {args.tolerance!r}") from None
        if not args.tolerance >= 0:
            raise CLIError(f"--tolerance must be >= 0 pixels; got {args.tolerance}")
    if {"occlusion", "ablation"} & set(args.methods):
        import importlib.util

        if importlib.util.find_spec("captum") is None:
            raise CLIError("--methods occlusion/ablation use Captum, which is not installed: pip install captum (or pami-lightning[captum])")
    return parse_init_args(args.init_args)


def _dataset(args: argparse.Namespace) -> Dataset[Any]:
    """The dataset the flags name; a reader's :class:`~pami_lightning.data.DatasetError` becomes a one-line error."""
    from .data import CocoDataset, DatasetError, FolderDataset, VOCDataset

    size = tuple(args.size) if args.size else None
    flag = "--voc" if args.voc is not None else "--coco" if args.coco is not None else "--folder"
    try:
        if args.voc is not None:
            return VOCDataset(args.voc, split=args.split, classes=args.classes, size=size)
        if args.coco is not None:
            return CocoDataset(args.coco, args.images, classes=args.classes, size=size)
        return FolderDataset(args.folder, classes=args.classes, size=size)
    except (DatasetError, ValueError, OSError, ImportError) as exc:
        raise CLIError(f"{flag}: {' '.join(str(exc).split())}") from exc


def _explainers(args: argparse.Namespace, model: nn.Module, preprocess: Any) -> dict[str, Any]:
    """``{name: explainer}`` of ``--methods``, sharing the one model (the module registers it once)."""
    from . import PAMI, Blur, Constant, ModelCall, SlidingWindow, Superpixels
    from .evaluation import CenterBaseline, RandomBaseline

    masker = {"blur": Blur(), "black": Constant(0.0), "white": Constant(1.0)}[args.masker]
    common: dict[str, Any] = {"preprocess": preprocess, "output": args.output, "batch_size": args.forward_batch, "progress": False}
    call = ModelCall(model, preprocess=preprocess, output=args.output, batch_size=args.forward_batch)
    out: dict[str, Any] = {}
    for name in (m for m in METHODS if m in args.methods):
        if name == "pami1":
            out["PAMI-I"] = PAMI(model, SlidingWindow(radius=args.radius, stride=args.stride, shape=args.shape), masker, **common)
        elif name == "pami2":
            out["PAMI-II"] = PAMI(model, Superpixels.paper(), masker, second_run=True, **common)
        elif name == "occlusion":
            from .evaluation import CaptumOcclusion

            out["occlusion"] = CaptumOcclusion(call, window=args.window, stride=args.window_stride)
        elif name == "ablation":
            from .evaluation import CaptumFeatureAblation

            out["ablation"] = CaptumFeatureAblation(call, features="grid", cell=args.cell)
        elif name == "random":
            out["random"] = RandomBaseline(seed=args.seed)
        elif name == "center":
            out["center"] = CenterBaseline()
    return out


def _progress_bar_class() -> type:
    from lightning.pytorch.callbacks import TQDMProgressBar

    class _ImagesProgressBar(TQDMProgressBar):
        """Lightning's bar, counting images instead of batches: ``Explaining images: 40/100 [00:12<00:18, 3.3img/s]``.

        On each rank the total is the images of its shard (rank 0's bar shows; the others are quiet).
        """

        def __init__(self) -> None:
            super().__init__()
            self._images = 0

        @property
        def predict_description(self) -> str:
            return "Explaining images"

        def init_predict_tqdm(self) -> Any:
            bar = super().init_predict_tqdm()
            bar.unit = "img"  # the rate reads img/s; the ETA follows from the image total
            return bar

        def on_predict_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
            if not self.has_dataloader_changed(dataloader_idx):
                return
            loader = trainer.predict_dataloaders[dataloader_idx] if isinstance(trainer.predict_dataloaders, list) else trainer.predict_dataloaders
            sampler = getattr(loader, "sampler", None)
            total = len(sampler) if sampler is not None and hasattr(sampler, "__len__") else None  # this rank's shard
            self._images = 0
            self.predict_progress_bar.reset(total=total)
            self.predict_progress_bar.initial = 0
            self.predict_progress_bar.set_description(self.predict_description)

        def on_predict_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int,
                                 dataloader_idx: int = 0) -> None:
            index = batch.get("index") if isinstance(batch, dict) else getattr(batch, "index", None)
            self._images += len(index) if index is not None else 1
            bar = self.predict_progress_bar
            if bar is not None and not bar.disable:
                bar.n = self._images
                bar.refresh()

    return _ImagesProgressBar


def ImagesProgressBar() -> Any:
    """A ``TQDMProgressBar`` whose unit is images: images/s and an ETA over the rank's images (built lazily: Lightning imports late)."""
    return _progress_bar_class()()


def _trainer(args: argparse.Namespace) -> pl.Trainer:
    import lightning.pytorch as pl

    logger: Any = False
    if args.logger == "tensorboard":
        from lightning.pytorch.loggers import TensorBoardLogger

        logger = TensorBoardLogger(str(args.out), name="logs")
    elif args.logger == "csv":
        from lightning.pytorch.loggers import CSVLogger

        logger = CSVLogger(str(args.out), name="logs")
    # DDP whenever there is more than one process: Lightning launches and connects them (no home-made launcher).
    strategy = "ddp" if args.devices > 1 or args.num_nodes > 1 else "auto"
    try:
        return pl.Trainer(accelerator=args.accelerator, devices=args.devices, num_nodes=args.num_nodes, strategy=strategy, logger=logger,
                          callbacks=[] if args.no_progress else [ImagesProgressBar()], enable_progress_bar=not args.no_progress,
                          enable_checkpointing=False, enable_model_summary=False)
    except Exception as exc:  # an accelerator that is not here, more devices than there are
        raise CLIError(f"--accelerator/--devices: {_one_line(exc)}") from exc


def run(args: argparse.Namespace) -> Report | None:
    """Evaluate, write the report and print its table; returns the report (None on ranks other than 0)."""
    init_args = _check_flags(args)
    preprocess = normalisation(args.preprocess, args.mean, args.std)
    dataset = _dataset(args)  # before the model: a bad dataset should not wait for it
    if not len(dataset):  # type: ignore[arg-type]
        raise CLIError("the dataset holds no items (no annotated object of a known class)")

    from . import ModelCall
    from .evaluation import ExplanationModule, evaluate, log_report, write_report

    model = load_model(load_class(args.module), args.checkpoint, "cpu", init_args)  # the strategy moves it to each rank's device
    classes = getattr(dataset, "classes", None)
    module = ExplanationModule(ModelCall(model, preprocess=preprocess, output=args.output, batch_size=args.forward_batch),
                               _explainers(args, model, preprocess), metrics=args.metrics, tolerance=args.tolerance, n_steps=args.n_steps,
                               only_correct=args.only_correct, num_classes=len(classes) if classes else None)
    trainer = _trainer(args)
    if trainer.is_global_zero:
        print(f"{PROG}: {len(dataset)} items, methods {', '.join(module.explainers)}, metrics {', '.join(module.metrics)}, "  # type: ignore[arg-type]
              f"{trainer.world_size} process(es) -> {args.out}", flush=True)
    try:
        results = evaluate(trainer, module, dataset, args.out, batch_size=args.batch_size, num_workers=args.num_workers)
    except ValueError as exc:  # settings that differ from the folder's run, labels out of range, the engine's own checks
        raise CLIError(f"cannot evaluate: {' '.join(str(exc).split())}") from exc
    except (RuntimeError, TypeError) as exc:
        raise CLIError(f"the model failed: {_one_line(exc)} (if it expects another image size, pass --size H W)") from exc
    if results is None:
        return None
    report = write_report(results, resamples=args.bootstrap, seed=args.seed)
    if trainer.logger is not None:
        log_report(report, trainer.loggers)
    print("\n" + report.markdown_table(per_class=True))
    print(f"\nmeans over classes, 95% bootstrap intervals -> {os.path.join(args.out, 'report.md')}, report.csv, curves.png")
    return report


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``pami-evaluate``; returns the exit status (0, or 2 for user errors)."""
    return run_command(PROG, build_parser().parse_args(argv), run)


if __name__ == "__main__":
    sys.exit(main())
