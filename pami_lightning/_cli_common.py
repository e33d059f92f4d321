"""Pieces shared by the command lines (``pami-explain``, ``pami-evaluate``): model loading, normalisation, one-line errors.

Torch is imported inside the functions so that ``--help`` and flag errors answer at once.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import sys
import warnings
import zipfile
from collections.abc import Callable, Sequence
from functools import reduce
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .cpu_memory import keep_freed_memory

if TYPE_CHECKING:
    from torch import Tensor, nn

__all__ = [
    "CLIError", "IMAGENET_MEAN", "IMAGENET_STD", "Normalize", "load_class", "load_model", "normalisation", "parse_init_args",
    "add_model_arguments", "add_normalisation_arguments", "warning_printer",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class CLIError(Exception):
    """A user error: reported as one line on stderr, exit status 2."""



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


class Normalize:
    """``(x - mean) / std`` per channel, applied to each masked image before the model.

    A class rather than a closure: its ``repr`` is stable (an evaluation's ``run.json`` records it
    and compares it on resume) and it pickles (spawned DDP workers).
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)

    def __call__(self, x: Tensor) -> Tensor:
        import torch

        m = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        s = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        return (x - m) / s

    def __repr__(self) -> str:
        return f"Normalize(mean={list(self.mean)}, std={list(self.std)})"


def normalisation(preprocess: str, mean: Sequence[float] | None, std: Sequence[float] | None) -> Normalize | None:
    """The ``--preprocess`` / ``--mean`` / ``--std`` normalisation of masked images, or None."""
    if (mean is None) != (std is None):
        raise CLIError("--mean and --std go together: pass both (one value, or one per channel)")
    if mean is not None and std is not None:
        if preprocess != "none":
            raise CLIError("pass either --preprocess imagenet or --mean/--std, not both")
    elif preprocess == "imagenet":
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    else:
        return None
    if len(mean) not in (1, 3) or len(std) not in (1, 3):
        raise CLIError(f"--mean and --std take one value or three (RGB); got {len(mean)} and {len(std)}")
    if any(s <= 0 for s in std):
        raise CLIError(f"--std values must be > 0; got {list(std)}")
    return Normalize(mean, std)


def parse_init_args(text: str) -> dict[str, Any]:
    """``--init-args``: a JSON object of keyword arguments for the model class."""
    try:
        init_args = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CLIError(f"--init-args must be a JSON object such as '{{\"num_classes\": 10}}': {exc}") from exc
    if not isinstance(init_args, dict):
        raise CLIError(f"--init-args must be a JSON object such as '{{\"num_classes\": 10}}'; got {text}")
    return init_args


def add_model_arguments(group: argparse._ArgumentGroup) -> None:
    """``--checkpoint``, ``--module`` (required) and ``--init-args``: how both command lines load a model."""
    group.add_argument("--checkpoint", required=True, type=Path, metavar="CKPT", help="model checkpoint (Lightning .ckpt, or a torch.save'd state_dict)")
    group.add_argument("--module", required=True, metavar="PKG.MOD:CLASS", help="the model class: a LightningModule or an nn.Module subclass (see below)")


def add_normalisation_arguments(group: argparse._ArgumentGroup) -> None:
    """``--preprocess``, ``--mean``, ``--std``, ``--init-args``."""
    group.add_argument("--preprocess", choices=("none", "imagenet"), default="none",
                       help="normalisation applied to each masked image before the model: none (default) or ImageNet mean/std")
    group.add_argument("--mean", type=float, nargs="+", metavar="M", help="custom normalisation mean, one value or one per channel (needs --std)")
    group.add_argument("--std", type=float, nargs="+", metavar="S", help="custom normalisation std, one value or one per channel (needs --mean)")
    group.add_argument("--init-args", default="{}", metavar="JSON",
                       help="""keyword arguments for the model class as a JSON object, e.g. '{"num_classes": 10}' (default: none)""")


def warning_printer(prog: str) -> Callable[..., None]:
    """A ``warnings.showwarning`` that prints Python warnings as the command's own lines: ``PROG: warning: ...``."""

    def show(message: Warning | str, category: type[Warning], filename: str, lineno: int, file: Any = None, line: str | None = None) -> None:
        print(f"{prog}: warning: {' '.join(str(message).split())}", file=sys.stderr)

    return show


def run_command(prog: str, args: argparse.Namespace, run: Callable[[argparse.Namespace], object]) -> int:
    """Run a command's body: warnings as ``PROG: warning:`` lines, user errors as one ``PROG: error:`` line and exit status 2."""
    keep_freed_memory()  # the process is the command's: its CPU forwards need not page-fault their activations in
    with warnings.catch_warnings():
        warnings.showwarning = warning_printer(prog)
        try:
            run(args)
        except CLIError as exc:
            if args.traceback:
                raise
            print(f"{prog}: error: {exc}", file=sys.stderr)
            return 2
    return 0
