"""``pami-explain``: explain one image with a trained model, from the command line.

Writes a heatmap overlay (``OUT.png``) and the raw map (``OUT.npy``, float32 ``[H, W]``). User
errors (bad paths, class paths, checkpoints, images, flags) end with one line on stderr and exit
status 2; ``--traceback`` shows the full Python traceback instead.
"""

from __future__ import annotations

import argparse
import sys
import time
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

if TYPE_CHECKING:  # torch is imported lazily so that --help and flag errors answer at once
    from torch import Tensor

    from .partitions import Partition

__all__ = ["main", "build_parser", "load_class", "load_model", "read_image"]

#: What ``--output`` may explain (the names of the API's ``output=``).
OUTPUTS = ("softmax", "sigmoid", "identity")

DESCRIPTION = "Explain one image with a trained model (PAMI): write a heatmap overlay (OUT.png) and the raw map (OUT.npy)."
EPILOG = """\
how the model is loaded (--module pkg.mod:ClassName):
  LightningModule  ClassName.load_from_checkpoint(CKPT): a checkpoint written by a Trainer or by
                   trainer.save_checkpoint(); its saved hyperparameters rebuild the model
                   (--init-args overrides them).
  nn.Module        ClassName(**INIT_ARGS) (no arguments by default), then load_state_dict() from
                   CKPT: a state_dict saved with torch.save(model.state_dict(), CKPT), or a dict
                   holding one under "state_dict".
  pkg.mod is imported like `python -m` does, from the current directory or PYTHONPATH; a file
  path works too: --module path/to/models.py:ClassName.

the image is read with Pillow as RGB in [0, 1] (EXIF rotation applied) and explained at its own
size unless --size is given; masking happens in pixel space and --preprocess/--mean/--std
normalise each masked image before the model, so pass the model's own normalisation there.

examples:
  pami-explain --checkpoint model.ckpt --module mypkg.models:Classifier --image cat.jpg --out cat.png
  pami-explain --checkpoint resnet.pt --module models.py:ResNet --image cat.jpg --size 224 224 \\
      --preprocess imagenet --strategy superpixels --second-run --out cat_sp.png
"""


class _DeprecatedAlias(argparse.Action):
    """An old flag that still works: stores into the new flag's ``dest`` and says, on stderr, which flag to use."""

    def __init__(self, option_strings: Sequence[str], dest: str, *, new: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, **kwargs)
        self.new = new

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any, option_string: str | None = None) -> None:
        print(f"{parser.prog}: warning: {option_string} is deprecated; use {self.new} (the same values)", file=sys.stderr)
        setattr(namespace, self.dest, values)




def build_parser() -> argparse.ArgumentParser:
    """The ``pami-explain`` argument parser (every flag documented in ``--help``)."""
    parser = argparse.ArgumentParser(
        prog="pami-explain", description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    need = parser.add_argument_group("required")
    add_model_arguments(need)
    need.add_argument("--image", required=True, type=Path, metavar="IMG", help="image file to explain (any format Pillow reads)")
    need.add_argument("--out", required=True, type=Path, metavar="OUT.png", help="overlay PNG to write; the raw map goes to the same path with .npy")

    how = parser.add_argument_group("explanation")
    how.add_argument("--strategy", choices=("sliding", "superpixels"), default="sliding",
                     help="sliding: windows on a grid (paper strategy I, default); superpixels: the paper's 20-segmentation ensemble (strategy II)")
    how.add_argument("--second-run", action="store_true", help="superpixels only: segment the first map and explain again (paper Fig. 11)")
    how.add_argument("--target", type=_non_negative_int, metavar="K", help="class index to explain (default: the model's top-1 class on the image)")
    how.add_argument("--radius", type=_non_negative_int, metavar="R", help="sliding only: window radius in pixels (default 40)")
    how.add_argument("--stride", type=_positive_int, metavar="S", help="sliding only: step between window centres in pixels (default 6)")
    how.add_argument("--shape", choices=("circle", "square"), help="sliding only: window shape (default circle)")
    how.add_argument("--masker", choices=("blur", "black", "white"), default="blur",
                     help="what replaces the masked-out pixels: the paper's 49x49 blur (default), black or white")
    how.add_argument("--output", choices=OUTPUTS, default="softmax",
                     help="what is explained (the API's output=): softmax probability of the class (default), sigmoid of its logit "
                          "(multi-label), or the raw output")
    how.add_argument("--score", choices=OUTPUTS, dest="output", action=_DeprecatedAlias, new="--output", default=argparse.SUPPRESS,
                     help="deprecated alias of --output")
    how.add_argument("--batch-size", type=_positive_int, default=64, metavar="N", help="masked images per forward pass (default 64)")

    data = parser.add_argument_group("input and output")
    data.add_argument("--size", type=_positive_int, nargs=2, metavar=("H", "W"), help="resize the image to H x W before explaining (default: keep its size)")
    add_normalisation_arguments(data)
    data.add_argument("--device", help="torch device, e.g. cpu or cuda:0 (default: cuda if available, else cpu)")
    data.add_argument("--alpha", type=float, default=0.5, help="weight of the heatmap colour in the overlay (default 0.5)")
    data.add_argument("--cmap", default="jet", help="matplotlib colour map of the overlay (default jet)")
    data.add_argument("--traceback", action="store_true", help="on errors, show the full Python traceback instead of one line")
    return parser


def read_image(path: Path, size: Sequence[int] | None = None) -> Tensor:
    """An image file as RGB ``[1, 3, H, W]`` float32 in ``[0, 1]`` (resized to ``size = (H, W)`` if given)."""
    import numpy as np
    import torch
    from PIL import Image, ImageOps

    if not path.is_file():
        raise CLIError(f"--image: file not found: {path}")
    try:
        with Image.open(path) as img:
            # Photos store their rotation in EXIF; the map must match the picture as people see it.
            rgb = ImageOps.exif_transpose(img).convert("RGB")
    except Exception as exc:
        raise CLIError(f"--image: cannot read '{path}' as an image: {_one_line(exc)}") from exc
    if size is not None:
        rgb = rgb.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    array = np.asarray(rgb, dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0).contiguous()


def _check_flags(args: argparse.Namespace) -> dict[str, Any]:
    """Flag combinations argparse cannot check; returns the parsed ``--init-args``."""
    sliding_only = [f"--{k}" for k in ("radius", "stride", "shape") if getattr(args, k) is not None]
    if args.strategy == "superpixels" and sliding_only:
        raise CLIError(f"{', '.join(sliding_only)} shape sliding windows; drop them or use --strategy sliding")
    if args.second_run and args.strategy != "superpixels":
        raise CLIError("--second-run re-segments the first map: it needs --strategy superpixels")
    if not args.checkpoint.is_file():
        raise CLIError(f"--checkpoint: file not found: {args.checkpoint}")
    if args.out.suffix.lower() != ".png":
        raise CLIError(f"--out must be a .png path (the raw map goes next to it as .npy); got '{args.out}'")
    if not 0 <= args.alpha <= 1:
        raise CLIError(f"--alpha must lie in [0, 1]; got {args.alpha}")
    import matplotlib

    if args.cmap not in matplotlib.colormaps:
        raise CLIError(f"--cmap: unknown matplotlib colour map '{args.cmap}' (e.g. jet, viridis, inferno)")
    return parse_init_args(args.init_args)


def _planned_passes(partition: Partition, spatial: Sequence[int], top1: bool, second_run: bool) -> str:
    """What the run will cost, said before it starts: a large image can take an hour on a CPU."""
    from . import SlidingWindow, Superpixels

    clean = " + 1 for the top-1 class" if top1 else ""
    if isinstance(partition, SlidingWindow):
        windows = partition.num_parts(tuple(spatial))
        return f"{windows + top1} forward passes ({windows} windows{clean})"
    segmentations = f"{len(partition.settings)} segmentations" if isinstance(partition, Superpixels) else "the partition"
    runs = ", in each of two runs" if second_run else ""
    return f"one forward pass per superpixel of {segmentations}{runs}{clean}: counted after segmentation"


def run(args: argparse.Namespace) -> tuple[Path, Path]:
    """Explain ``args.image`` and write the overlay and the map; returns their paths."""
    init_args = _check_flags(args)
    preprocess = normalisation(args.preprocess, args.mean, args.std)
    image = read_image(args.image, args.size)  # before the model: a bad path should not wait for it

    import numpy as np
    import torch
    from PIL import Image

    from . import PAMI, Blur, Constant, SlidingWindow, Superpixels
    from .visualize import overlay, to_uint8

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        kind = torch.device(device).type
    except RuntimeError as exc:
        raise CLIError(f"--device: {_one_line(exc)}") from exc
    if kind == "cuda" and not torch.cuda.is_available():
        raise CLIError(f"--device {device}: CUDA is not available here; use --device cpu")
    model = load_model(load_class(args.module), args.checkpoint, device, init_args)

    partition: Partition
    if args.strategy == "sliding":
        partition = SlidingWindow(radius=40 if args.radius is None else args.radius, stride=args.stride or 6, shape=args.shape or "circle")
    else:
        partition = Superpixels.paper()
    masker = {"blur": Blur(), "black": Constant(0.0), "white": Constant(1.0)}[args.masker]
    # progress=True: off a terminal (a log file, a job queue) the engine reports progress as lines on stderr.
    explainer = PAMI(model, partition, masker, preprocess, output=args.output, batch_size=args.batch_size,
                     second_run=args.second_run, progress=True)
    planned = _planned_passes(partition, image.shape[-2:], top1=args.target is None, second_run=args.second_run)
    print(f"pami-explain: 1 image ({image.shape[-2]}x{image.shape[-1]}), {planned}", flush=True)

    passes = [0]
    hook = model.register_forward_pre_hook(lambda _, inputs: passes.__setitem__(0, passes[0] + len(inputs[0])))
    start = time.perf_counter()
    try:
        heat, target = explainer.explain(image.to(device), target=args.target, return_target=True)
    except ValueError as exc:  # the engine's own checks: targets, outputs, scores
        raise CLIError(f"cannot explain: {' '.join(str(exc).split())}") from exc
    except (RuntimeError, TypeError) as exc:
        h, w = image.shape[-2:]
        raise CLIError(f"the model failed on a [N, 3, {h}, {w}] batch: {_one_line(exc)} (if it expects another size, pass --size H W)") from exc
    finally:
        hook.remove()
    seconds = time.perf_counter() - start

    npy = args.out.with_suffix(".npy")
    pixels = to_uint8(overlay(image, heat.cpu(), alpha=args.alpha, cmap=args.cmap)[0])
    try:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(args.out)
        np.save(npy, heat[0].cpu().numpy())
    except OSError as exc:
        raise CLIError(f"--out: cannot write '{args.out}': {_one_line(exc)}") from exc
    values = heat[0]
    print(
        f"class {int(target[0])}: map {values.shape[0]}x{values.shape[1]} in [{values.min():.4g}, {values.max():.4g}], "
        f"{passes[0]} forward passes in {seconds:.1f} s -> {args.out}, {npy}"
    )
    return args.out, npy


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``pami-explain``; returns the exit status (0, or 2 for user errors)."""
    return run_command("pami-explain", build_parser().parse_args(argv), run)


if __name__ == "__main__":
    sys.exit(main())
