"""``pami-explain``: explain one image with a trained model, from the command line.

Writes a heatmap overlay (``OUT.png``) and the raw map (``OUT.npy``, float32 ``[H, W]``). User
errors (bad paths, class paths, checkpoints, images, flags) end with one line on stderr and exit
status 2; ``--traceback`` shows the full Python traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import sys
import time
import warnings
import zipfile
from collections.abc import Callable, Sequence
from functools import reduce
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported lazily so that --help and flag errors answer at once
    from torch import Tensor, nn

    from .partitions import Partition

__all__ = ["main", "build_parser", "load_class", "load_model", "read_image"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
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


class CLIError(Exception):
    """A user error: reported as one line on stderr, exit status 2."""


class _DeprecatedAlias(argparse.Action):
    """An old flag that still works: stores into the new flag's ``dest`` and says, on stderr, which flag to use."""

    def __init__(self, option_strings: Sequence[str], dest: str, *, new: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, **kwargs)
        self.new = new

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any, option_string: str | None = None) -> None:
        print(f"{parser.prog}: warning: {option_string} is deprecated; use {self.new} (the same values)", file=sys.stderr)
        setattr(namespace, self.dest, values)


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int, file: Any = None, line: str | None = None) -> None:
    """Python warnings as the CLI's own lines: ``pami-explain: warning: ...`` (no file and line of library code)."""
    print(f"pami-explain: warning: {' '.join(str(message).split())}", file=sys.stderr)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1; got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0; got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The ``pami-explain`` argument parser (every flag documented in ``--help``)."""
    parser = argparse.ArgumentParser(
        prog="pami-explain", description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    need = parser.add_argument_group("required")
    need.add_argument("--checkpoint", required=True, type=Path, metavar="CKPT", help="model checkpoint (Lightning .ckpt, or a torch.save'd state_dict)")
    need.add_argument("--module", required=True, metavar="PKG.MOD:CLASS", help="the model class: a LightningModule or an nn.Module subclass (see below)")
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
    data.add_argument("--preprocess", choices=("none", "imagenet"), default="none",
                      help="normalisation applied to each masked image before the model: none (default) or ImageNet mean/std")
    data.add_argument("--mean", type=float, nargs="+", metavar="M", help="custom normalisation mean, one value or one per channel (needs --std)")
    data.add_argument("--std", type=float, nargs="+", metavar="S", help="custom normalisation std, one value or one per channel (needs --mean)")
    data.add_argument("--init-args", default="{}", metavar="JSON",
                      help="""keyword arguments for the model class as a JSON object, e.g. '{"num_classes": 10}' (default: none)""")
    data.add_argument("--device", help="torch device, e.g. cpu or cuda:0 (default: cuda if available, else cpu)")
    data.add_argument("--alpha", type=float, default=0.5, help="weight of the heatmap colour in the overlay (default 0.5)")
    data.add_argument("--cmap", default="jet", help="matplotlib colour map of the overlay (default jet)")
    data.add_argument("--traceback", action="store_true", help="on errors, show the full Python traceback instead of one line")
    return parser


def _one_line(exc: BaseException) -> str:
    """An exception as ``Type: message`` on one line (long messages cut)."""
    text = " ".join(str(exc).split()) or repr(exc)
    text = text if len(text) <= 400 else text[:397] + "..."
    return f"{type(exc).__name__}: {text}"


def _import(module: str) -> Any:
    """Import ``pkg.mod`` (from the current directory or PYTHONPATH) or a ``path/to/file.py``."""
    if module.endswith(".py"):
        path = Path(module).expanduser().resolve()
        if not path.is_file():
            raise CLIError(f"--module: file not found: {module}")
        # Its folder goes on sys.path so that the file's own sibling imports work.
        sys.path.insert(0, str(path.parent))
        spec = importlib.util.spec_from_file_location(path.stem, path)
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        sys.modules[path.stem] = mod
        try:
            spec.loader.exec_module(mod)
        except Exception as exc:
            raise CLIError(f"--module: importing {module} failed: {_one_line(exc)}") from exc
        return mod
    # Console scripts do not put the current directory on sys.path; `python -m` does, and users expect it.
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (module == exc.name or module.startswith(exc.name + ".")):
            raise CLIError(f"--module: no module named '{module}'; run from the folder that holds it, add that folder to PYTHONPATH, or pass a file path (models.py:ClassName)") from exc
        raise CLIError(f"--module: importing '{module}' failed: {_one_line(exc)}") from exc
    except Exception as exc:
        raise CLIError(f"--module: importing '{module}' failed: {_one_line(exc)}") from exc


def load_class(spec: str) -> type:
    """The model class named by ``pkg.mod:ClassName`` (or ``path/to/file.py:ClassName``)."""
    from torch import nn

    module, sep, name = spec.rpartition(":")
    if not sep or not module or not name:
        raise CLIError(f"--module must look like pkg.mod:ClassName (or path/to/file.py:ClassName); got '{spec}'")
    mod = _import(module)
    try:
        obj = reduce(getattr, name.split("."), mod)
    except AttributeError as exc:
        found = sorted(k for k, v in vars(mod).items() if isinstance(v, type) and issubclass(v, nn.Module) and v.__module__ == mod.__name__)
        hint = f"; its nn.Module classes: {', '.join(found)}" if found else "; it defines no nn.Module class"
        raise CLIError(f"--module: '{module}' has no attribute '{name}'{hint}") from exc
    if not isinstance(obj, type):
        raise CLIError(f"--module: '{spec}' is a {type(obj).__name__}, not a class; name a LightningModule or nn.Module subclass")
    if not issubclass(obj, nn.Module):
        raise CLIError(f"--module: '{spec}' is not an nn.Module subclass; name a LightningModule or nn.Module subclass")
    return obj


def _not_a_checkpoint(path: Path, exc: Exception) -> str:
    """Why loading failed; torch's own message for a file that is no checkpoint at all misleads."""
    if not zipfile.is_zipfile(path):  # torch.save has written zip archives since PyTorch 1.6
        return "not a PyTorch checkpoint (torch.save and Lightning write zip archives; this file is not one)"
    return _one_line(exc)


def load_model(cls: type, checkpoint: Path, device: str, init_args: dict[str, Any]) -> nn.Module:
    """Build ``cls`` with the weights of ``checkpoint`` on ``device``, in eval mode.

    A LightningModule goes through ``cls.load_from_checkpoint``; any other ``nn.Module`` is built as
    ``cls(**init_args)`` and loads the checkpoint's state_dict (or its ``"state_dict"`` entry) strictly.
    """
    import torch

    if not checkpoint.is_file():
        raise CLIError(f"--checkpoint: file not found: {checkpoint}")
    name = cls.__name__
    if hasattr(cls, "load_from_checkpoint"):
        try:
            model = cls.load_from_checkpoint(checkpoint, map_location=device, **init_args)
        except Exception as exc:
            raise CLIError(f"--checkpoint: {name}.load_from_checkpoint('{checkpoint}') failed: {_not_a_checkpoint(checkpoint, exc)}") from exc
        return model.eval()
    try:
        state = torch.load(checkpoint, map_location=device, weights_only=True)
    except Exception as exc:
        raise CLIError(f"--checkpoint: cannot read '{checkpoint}': {_not_a_checkpoint(checkpoint, exc)}") from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CLIError(f"--checkpoint: '{checkpoint}' holds no state_dict for the nn.Module {name}; save one with torch.save(model.state_dict(), path)")
    try:
        model = cls(**init_args)
    except Exception as exc:
        raise CLIError(f"--module: {name}(**{init_args}) failed: {_one_line(exc)}; pass its arguments with --init-args '{{...}}'") from exc
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches raise even when not strict
        raise CLIError(f"--checkpoint: '{checkpoint}' does not fit {name}: {_one_line(exc)}") from exc
    if result.missing_keys or result.unexpected_keys:
        raise CLIError(
            f"--checkpoint: '{checkpoint}' does not fit {name}: missing keys {result.missing_keys[:5]}, "
            f"unexpected keys {result.unexpected_keys[:5]}"
        )
    return model.to(device).eval()


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


def _preprocess(args: argparse.Namespace) -> Callable[[Tensor], Tensor] | None:
    """Mean/std normalisation of masked images, or None."""
    import torch

    if (args.mean is None) != (args.std is None):
        raise CLIError("--mean and --std go together: pass both (one value, or one per channel)")
    if args.mean is not None:
        if args.preprocess != "none":
            raise CLIError("pass either --preprocess imagenet or --mean/--std, not both")
        mean, std = args.mean, args.std
    elif args.preprocess == "imagenet":
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    else:
        return None
    if len(mean) not in (1, 3) or len(std) not in (1, 3):
        raise CLIError(f"--mean and --std take one value or three (RGB); got {len(mean)} and {len(std)}")
    if any(s <= 0 for s in std):
        raise CLIError(f"--std values must be > 0; got {list(std)}")
    m, s = torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)
    return lambda x: (x - m.to(x.device)) / s.to(x.device)


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
    try:
        init_args = json.loads(args.init_args)
    except json.JSONDecodeError as exc:
        raise CLIError(f"--init-args must be a JSON object such as '{{\"num_classes\": 10}}': {exc}") from exc
    if not isinstance(init_args, dict):
        raise CLIError(f"--init-args must be a JSON object such as '{{\"num_classes\": 10}}'; got {args.init_args}")
    return init_args


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
    preprocess = _preprocess(args)
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
    args = build_parser().parse_args(argv)
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        try:
            run(args)
        except CLIError as exc:
            if args.traceback:
                raise
            print(f"pami-explain: error: {exc}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
