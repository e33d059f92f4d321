"""Throughput of PAMI.explain against the model's own forward throughput, measured side by side.

Every case times, in the same run and interleaved (each method right after its own raw-forward
measurement, ``--repeat`` rounds, the median of the per-round ratios is printed):

- ``engine/raw``: masked inputs per second of ``PAMI.explain`` divided by the raw forward inputs per
  second of the same model (and ``preprocess``) at the same batch size. 1.0 means the engine adds
  nothing on top of the forward passes. Goal: >= 0.95.
- ``loop/raw``: the obvious hand-written loop on identical work: all bool masks of the partition
  (``partition.masks(img)``, built inside the timed region, as the engine builds its own), then per
  batch ``torch.where(m, x, substrate)`` -> model -> softmax gather -> ``heat += scores @ m.float()``,
  ``cover += m.sum(0)``; ``heat / cover``.
- ``captum/raw``: Captum's ``Occlusion`` (``perturbations_per_eval=batch_size``, the blurred image as
  ``baselines=``), its own forward passes per second (counted with a forward pre-hook, its
  unoccluded pass included) divided by raw. Captum slides rectangles that are neither centred on our
  grid nor clipped, so it runs square ``(3, 2r+1, 2r+1)`` windows with ``strides=(3, s, s)``: the
  same kind of work, a different number of windows; its map is not compared. ``n/a`` for superpixels.

Cases (batch size 64 unless ``--batch-size``; the tiny CNN is the demo's four conv/BN/ReLU/maxpool
blocks 3->8->16->32->32 plus global pooling and a linear layer; images are scikit-image photos):

    tiny32           tiny CNN, 32x32,   SlidingWindow(8, 2)    256 windows
    tiny64           tiny CNN, 64x64,   SlidingWindow(16, 4)   256 windows
    tiny160          tiny CNN, 160x160, SlidingWindow(24, 6)   729 windows
    cnn224           small_cnn (5 strided convs), 224x224, SlidingWindow(40, 6)  1444 windows
    superpixels224   tiny CNN, 224x224, Superpixels.paper(): the first explain of an image (fresh
                     partition, segmentations included) and a repeated explain (segmentations of an
                     unchanged image may be cached) are reported separately
    large1024        a near-free model (AdaptiveAvgPool2d(8), Linear), 1024x1024, SlidingWindow(128, 64)
    large2048        the same, 2048x2048, SlidingWindow(256, 128); 256 windows each, batch 16

For the large cases the unit is memory bandwidth: seconds per masked input divided by the seconds of
one ``buffer.copy_(other)`` of one input-sized float32 tensor (the mean of a 0.25 s block of copies
right before and after each measurement; goal <= 3), also for the raw forward alone and for
``engine - raw`` (the near-free model still reads every input: 2.5-5 copies on one CPU thread),
and the peak extra memory of one explain call (RSS high-water mark in a fresh subprocess; CUDA peak
allocation on a GPU) in batches of inputs.

    python benchmarks/throughput.py --case all --fast         # every case, quick (7-14 min on 2 busy shared cores)
    python benchmarks/throughput.py --case all                # 2 images per case, longer timings
    python benchmarks/throughput.py --case tiny32,cnn224 --keep-memory   # glibc keeps freed memory (see below)
    python benchmarks/throughput.py --case tiny32 --threads 2
    python benchmarks/throughput.py --case large2048 --batch-size 32
    python benchmarks/throughput.py --case cnn224,superpixels224 --model resnet50 --device cuda --dtype bf16 --batch-size 256 --channels-last

Allocator note (glibc malloc; measured on a 2-core AMD EPYC VM shared with other jobs, torch 2.13 CPU,
1 thread, batch 64, raw forward alone): glibc serves blocks above its mmap threshold with ``mmap``
and unmaps them on ``free``. The threshold adapts upwards to the largest freed block, but only up to
32 MiB; above it (and for heap memory above the trim threshold) every forward hands its activations
back to the OS and page-faults them in again on the next one, and those faults (kernel time, page
zeroing) then dominate and vary with the machine's load:

    model, input           faults/forward    raw inputs/s    with --keep-memory
    tiny CNN, 32x32         ~0               ~7,600          ~7,600 (0 faults; same within noise)
    tiny CNN, 160x160       64,000-82,000    140-170         310-320 (~2x)
    tiny CNN, 224x224       ~190,000-207,000 ~78             ~157 (2x)
    small_cnn, 224x224      ~163,000         ~80-95          ~185-215 (2.3x)

(first activation of small_cnn at 224: 64x32x112x112 float32 = 103 MB; of the tiny CNN at 32: 2 MB,
under the adaptive threshold, so tiny32 never faults). The ratios printed here are mostly robust to
it, because the engine and the raw forward both pay it, but not entirely: how often a method frees
a large block changes the adaptive threshold for what runs next, and the fault cost swings with the
load of the machine (engine/raw and loop/raw above 1, or far below, on a busy machine are that).
Use ``--keep-memory`` for stable figures on big inputs: it calls
:func:`pami_lightning.keep_freed_memory` first (``mallopt``: mmap and trim thresholds of 1 GiB;
freed blocks stay in the heap; RSS stays at its high-water mark), the same as starting the process
with ``MALLOC_MMAP_THRESHOLD_`` and ``MALLOC_TRIM_THRESHOLD_`` set. Either setting alone is worse:
``MALLOC_TRIM_THRESHOLD_`` alone freezes the mmap threshold at 128 KiB (the tiny CNN at 32 then
faults too and runs ~2.3x slower than with the defaults); ``MALLOC_MMAP_THRESHOLD_`` alone still
trims the heap top (about half the faults remain). The header line says which settings were in
force; each method's line of details gives its minor page faults per input.

Raw input note: the raw forward runs one batch of real masked inputs (the image, blurred outside
one part each, the parts spread over the image), not ``batch_size`` copies of one image: a batch of
identical images ran the tiny CNN at 32x32 15-45% faster in repeated measurements (max pooling is
the layer whose time depends on the content; uniform random inputs were slower still), which made
engine/raw ~0.77 where it is ~0.92 against the engine's own kind of input.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

from pami_lightning import PAMI, Blur, SlidingWindow, Superpixels, keep_freed_memory

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)

#: With --fast, a method whose first round took longer than this runs no further rounds (seconds).
FAST_ROUND_SECONDS = 10.0


@dataclass(frozen=True)
class CaseSpec:
    model: str  # "tiny", "small_cnn", "free" (the default model; --model replaces it where swappable)
    size: int
    window: tuple[int, int] | None  # (radius, stride) of SlidingWindow; None: Superpixels.paper()
    swappable: bool = False  # --model applies
    large: bool = False  # bandwidth units, batch 16, memory probe


CASES: dict[str, CaseSpec] = {
    "tiny32": CaseSpec("tiny", 32, (8, 2)),
    "tiny64": CaseSpec("tiny", 64, (16, 4)),
    "tiny160": CaseSpec("tiny", 160, (24, 6)),
    "cnn224": CaseSpec("small_cnn", 224, (40, 6), swappable=True),
    "superpixels224": CaseSpec("tiny", 224, None, swappable=True),
    "large1024": CaseSpec("free", 1024, (128, 64), large=True),
    "large2048": CaseSpec("free", 2048, (256, 128), large=True),
}


# ---------------------------------------------------------------------------------------- models


def tiny_cnn(num_classes: int = 10) -> nn.Module:
    """The demo's four-block CNN (examples/train_shapes.py), random weights."""

    def block(cin: int, cout: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(2))

    return nn.Sequential(block(3, 8), block(8, 16), block(16, 32), block(32, 32), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, num_classes))


def small_cnn(num_classes: int = 1000) -> nn.Module:
    """Five conv layers on 3x224x224 (~0.5 GFLOP per input): small, but forward-bound like real models."""
    layers: list[nn.Module] = []
    widths = [3, 32, 64, 128, 128, 256]
    for cin, cout in itertools.pairwise(widths):
        layers += [nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(widths[-1], num_classes))


def free_model(num_classes: int = 10) -> nn.Module:
    """Nearly free: one read of the input (8x8 average pooling) and a 192 -> 10 linear layer."""
    return nn.Sequential(nn.AdaptiveAvgPool2d(8), nn.Flatten(), nn.Linear(3 * 64, num_classes))


def build_model(name: str) -> nn.Module:
    torch.manual_seed(0)
    if name == "resnet50":
        # Only where torchvision is installed (GPU boxes).
        from torchvision.models import resnet50

        return resnet50()
    return {"tiny": tiny_cnn, "small_cnn": small_cnn, "free": free_model}[name]()


def natural_images(n: int, size: int = 224) -> torch.Tensor:
    """Real photographs shipped with scikit-image, so segmenters see natural structure."""
    import numpy as np
    from skimage import data, transform

    names = ["astronaut", "chelsea", "coffee", "rocket", "cat"]
    imgs = []
    for i in range(n):
        img = getattr(data, names[i % len(names)])()
        img = transform.resize(img, (size, size), anti_aliasing=True)
        imgs.append(torch.from_numpy(np.asarray(img, dtype=np.float32)).permute(2, 0, 1))
    return torch.stack(imgs)


# ---------------------------------------------------------------------------------------- set-up


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class PassCounter:
    """Inputs the model sees (a forward pre-hook): Captum's passes, and a check of the engine's."""

    def __init__(self, model: nn.Module) -> None:
        self.n = 0
        model.register_forward_pre_hook(self._hook)

    def _hook(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        if args and isinstance(args[0], Tensor):
            self.n += int(args[0].shape[0])


@dataclass
class Setup:
    """One case, built: the model, its inputs and how each method runs on them."""

    name: str
    spec: CaseSpec
    model: nn.Module
    model_name: str
    preprocess: Callable[[Tensor], Tensor] | None
    images: Tensor
    targets: list[int]
    batch_size: int
    device: torch.device
    autocast: Callable[[], Any]
    pami_kwargs: dict[str, Any]
    counter: PassCounter
    passes: int = 0  # masked inputs per explain of all images
    notes: list[str] = field(default_factory=list)

    def forward(self, x: Tensor) -> Tensor:
        with self.autocast():
            return self.model(self.preprocess(x) if self.preprocess is not None else x)


def build_setup(name: str, args: argparse.Namespace, n_images: int) -> Setup:
    spec = CASES[name]
    device = torch.device(args.device)
    model_name = args.model if (args.model and spec.swappable) else spec.model
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    model = build_model(model_name).to(device, memory_format=memory_format).eval()
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    preprocess: Callable[[Tensor], Tensor] | None = None
    if not spec.large:  # the near-free model takes pixels as they are: nothing but the engine's own traffic
        mean, std = MEAN.to(device), STD.to(device)

        def preprocess(x: Tensor) -> Tensor:
            return ((x - mean) / std).contiguous(memory_format=memory_format)

    elif args.channels_last:

        def preprocess(x: Tensor) -> Tensor:
            return x.contiguous(memory_format=memory_format)

    batch_size = args.batch_size or (16 if spec.large else 64)
    images = natural_images(n_images, spec.size).to(device)
    autocast = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype else nullcontext
    pami_kwargs: dict[str, Any] = {"preprocess": preprocess, "batch_size": batch_size, "progress": False}
    if dtype is not None:
        pami_kwargs["autocast_dtype"] = dtype
    if args.workers is not None:
        pami_kwargs["num_workers"] = args.workers
    setup = Setup(name, spec, model, model_name, preprocess, images, [], batch_size, device, autocast, pami_kwargs, PassCounter(model))
    with torch.inference_mode():
        setup.targets = [int(setup.forward(img[None]).argmax()) for img in images]
    if spec.window is not None:
        setup.passes = n_images * SlidingWindow(*spec.window).num_parts((spec.size, spec.size))
    else:
        # Parts depend on the image: counted once, outside the timed runs, on a partition of its own.
        setup.passes = sum(Superpixels.paper().masks(img.cpu()).shape[0] for img in images)
    return setup


def make_partition(spec: CaseSpec, shape: Literal["circle", "square"] = "circle", stride: int | None = None) -> Any:
    if spec.window is None:
        return Superpixels.paper()
    radius, step = spec.window
    return SlidingWindow(radius=radius, stride=stride or step, shape=shape)


# ---------------------------------------------------------------------------------------- methods


def loop_explain(s: Setup, partition: Any, images: Tensor) -> Tensor:
    """The plain torch loop a user would write (masks, where, model, softmax gather, matmul)."""
    masker = Blur()
    maps = []
    with torch.inference_mode():
        for img, t in zip(images, s.targets[: len(images)], strict=True):  # warm-up calls explain a prefix
            masks = partition.masks(img)  # [J, H, W] bool, all of them
            substrate = masker.substrate(img[None])[0]
            flat = masks.flatten(1)
            heat = torch.zeros(flat.shape[1], device=img.device)
            cover = torch.zeros(flat.shape[1], device=img.device)
            for start in range(0, masks.shape[0], s.batch_size):
                m = masks[start : start + s.batch_size]
                x = torch.where(m[:, None], img, substrate)
                scores = s.forward(x).float().softmax(dim=1)[:, t]
                mf = flat[start : start + s.batch_size].float()
                heat += scores @ mf
                cover += mf.sum(0)
            maps.append((heat / cover.clamp_min(1)).view(img.shape[1:]))
    return torch.stack(maps)


def captum_explain(s: Setup, images: Tensor, window: tuple[int, int]) -> None:
    from captum.attr import Occlusion

    radius, stride = window
    width = 2 * radius + 1
    occlusion = Occlusion(lambda z: s.forward(z).float().softmax(dim=1))
    masker = Blur()
    with torch.inference_mode():
        for img, t in zip(images, s.targets[: len(images)], strict=True):  # warm-up calls explain a prefix
            occlusion.attribute(img[None], sliding_window_shapes=(3, width, width), strides=(3, stride, stride),
                                baselines=masker.substrate(img[None]), target=t, perturbations_per_eval=s.batch_size)


def sample_masks(spec: CaseSpec, img: Tensor, n: int) -> Tensor:
    """``n`` of the case's part masks (bool ``[n, H, W]``), spread evenly over the parts of ``img``."""
    if spec.window is None:
        masks = Superpixels.paper().masks(img.cpu()).to(img.device)
        return masks[torch.linspace(0, masks.shape[0] - 1, n).round().long()]
    # Windows built here, not with partition.masks(): that would hold all J masks (GBs at 2048x2048).
    radius, stride = spec.window
    axis = torch.arange(0, spec.size, stride, device=img.device)
    cy, cx = torch.meshgrid(axis, axis, indexing="ij")
    pick = torch.linspace(0, cy.numel() - 1, n, device=img.device).round().long()
    cy, cx = cy.flatten()[pick].view(-1, 1, 1), cx.flatten()[pick].view(-1, 1, 1)
    coord = torch.arange(spec.size, device=img.device)
    return (coord.view(1, -1, 1) - cy) ** 2 + (coord.view(1, 1, -1) - cx) ** 2 <= radius**2


def raw_forward(s: Setup) -> Callable[[], None]:
    """One forward batch of real masked inputs (the image outside one part blurred), built once.

    Real masked inputs, not ``batch_size`` copies of one image: max-pooling CNNs run a batch of
    identical images measurably faster (branch prediction in ``max_pool2d``), which would make the
    raw figure optimistic.
    """
    img = s.images[0]
    x = torch.where(sample_masks(s.spec, img, s.batch_size)[:, None], img, Blur().substrate(img[None])[0]).contiguous()

    def run() -> None:
        with torch.inference_mode():
            s.forward(x)

    return run


@dataclass
class Timing:
    seconds: float
    calls: int
    hooked: int  # inputs the model saw
    faults: int = 0  # minor page faults (Linux/macOS getrusage; 0 elsewhere)


def minor_faults() -> int:
    try:
        import resource
    except ImportError:  # Windows
        return 0
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_minflt)


def timed(s: Setup, fn: Callable[[], Any], min_seconds: float, min_calls: int = 1) -> Timing:
    """Call ``fn`` until ``min_seconds`` and ``min_calls`` are reached."""
    sync(s.device)
    seen, calls, start = s.counter.n, 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        sync(s.device)
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds and calls >= min_calls:
            return Timing(elapsed, calls, s.counter.n - seen)


def paired(s: Setup, fn: Callable[[], Any], raw: Callable[[], None], raw_batches: int, min_seconds: float) -> tuple[Timing, Timing]:
    """Calls of ``fn``, each between two halves of ``raw_batches`` raw forward batches, until both ran ``min_seconds``.

    The raw batches hold about as many inputs as one call's masked inputs and sit right before and
    after it, so a slow spell of the shared machine slows both sides of the ratio alike.
    """
    method, base = Timing(0.0, 0, 0), Timing(0.0, 0, 0)

    def raw_part(batches: int) -> None:
        if batches <= 0:
            return
        sync(s.device)
        faults, start = minor_faults(), time.perf_counter()
        for _ in range(batches):
            raw()
        sync(s.device)
        base.seconds += time.perf_counter() - start
        base.faults += minor_faults() - faults
        base.calls += batches

    while method.seconds < min_seconds or base.seconds < min_seconds or method.calls == 0:
        raw_part((raw_batches + 1) // 2)
        sync(s.device)
        seen, faults, start = s.counter.n, minor_faults(), time.perf_counter()
        fn()
        sync(s.device)
        method.seconds += time.perf_counter() - start
        method.faults += minor_faults() - faults
        method.calls += 1
        method.hooked += s.counter.n - seen
        raw_part(raw_batches // 2)
    return method, base


def copy_seconds(s: Setup, seconds: float = 0.25) -> float:
    """Seconds of one ``buffer.copy_(other)`` of one input-sized float32 tensor: the mean over ``seconds`` of copies.

    A block of copies, not the median of a few single ones: on a shared machine a single copy of a
    few ms is either preempted or not, a block averages the contention as the method's run does.
    """
    a = torch.rand(s.images.shape[1:], device=s.device)
    b = torch.empty_like(a)
    for _ in range(3):
        b.copy_(a)
    sync(s.device)
    n, start = 0, time.perf_counter()
    while n < 5 or time.perf_counter() - start < seconds:
        b.copy_(a)
        n += 1
        if s.device.type == "cuda" and n % 16 == 0:
            sync(s.device)
    sync(s.device)
    return (time.perf_counter() - start) / n


@dataclass
class Method:
    """One timed method of a case: its runner and its masked inputs per call."""

    name: str
    run: Callable[[], Any]
    passes: Callable[[Timing], int]  # masked (or, for Captum, all) inputs of one timing
    warm: Callable[[], Any] | None = None
    rates: list[float] = field(default_factory=list)  # inputs/s per round
    ratios: list[float] = field(default_factory=list)  # rate / raw rate of the same round
    seconds: list[float] = field(default_factory=list)  # seconds per call
    calls_per_round: int = 0
    faults: list[float] = field(default_factory=list)  # minor page faults per input
    copies: list[float] = field(default_factory=list)  # large cases: seconds per input / seconds of one input copy
    raw_copies: list[float] = field(default_factory=list)  # the same for the raw forward paired with it
    error: str | None = None


def methods_of(s: Setup, args: argparse.Namespace) -> list[Method]:
    spec, images = s.spec, s.images

    def known(t: Timing) -> int:
        return t.calls * s.passes

    warm_images = images[:1]
    # A coarse grid of ~2 batches of windows warms kernels and code paths cheaply (--fast).
    coarse = None
    if spec.window is not None:
        coarse = max(spec.window[1], spec.size // math.ceil(math.sqrt(2 * s.batch_size)))
    out: list[Method] = []
    if spec.window is not None:
        explainer = PAMI(s.model, partition=make_partition(spec), **s.pami_kwargs)
        warm_explainer = PAMI(s.model, partition=make_partition(spec, stride=coarse), **s.pami_kwargs) if args.fast else explainer
        out.append(Method("engine", lambda: explainer.explain(images, target=s.targets), known,
                          warm=lambda: warm_explainer.explain(warm_images, target=s.targets[:1])))
        loop_partition = make_partition(spec)
        warm_partition = make_partition(spec, stride=coarse) if args.fast else loop_partition
        out.append(Method("loop", lambda: loop_explain(s, loop_partition, images), known,
                          warm=lambda: loop_explain(s, warm_partition, warm_images)))
        # --fast skips Captum on the large cases (80 s per 2048x2048 image on 1 CPU thread).
        if not args.no_captum and not (args.fast and spec.large) and captum_version() is not None:
            window = spec.window
            warm_window = (window[0], coarse) if args.fast and coarse else window
            out.append(Method("captum", lambda: captum_explain(s, images, window), lambda t: t.hooked,
                              warm=lambda: captum_explain(s, warm_images, warm_window)))
    else:
        # First explain: a fresh partition (empty label cache) and explainer per call.
        out.append(Method("engine first", lambda: PAMI(s.model, partition=Superpixels.paper(), **s.pami_kwargs).explain(images, target=s.targets),
                          known, warm=lambda: PAMI(s.model, partition=Superpixels.paper(), **s.pami_kwargs).explain(warm_images, target=s.targets[:1])))
        repeated = PAMI(s.model, partition=Superpixels.paper(), **s.pami_kwargs)
        out.append(Method("engine repeat", lambda: repeated.explain(images, target=s.targets), known,
                          warm=lambda: repeated.explain(images, target=s.targets)))
        out.append(Method("loop", lambda: loop_explain(s, Superpixels.paper(), images), known,
                          warm=lambda: loop_explain(s, Superpixels.paper(), warm_images)))
    return out


def captum_version() -> str | None:
    try:
        import captum
        from captum.attr import Occlusion  # noqa: F401
    except ImportError:
        return None
    return str(captum.__version__)


# ---------------------------------------------------------------------------------------- memory


def _status_kb(field_name: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def memory_probe(case: str, method: str, args: argparse.Namespace) -> dict[str, Any]:
    """Peak extra bytes of one call of ``method`` (engine / loop) on one image, in this fresh process."""
    import resource

    s = build_setup(case, args, n_images=1)
    images = s.images
    if method == "engine":
        explainer = PAMI(s.model, partition=make_partition(s.spec), **s.pami_kwargs)
        partition = None
    else:
        explainer, partition = None, make_partition(s.spec)

    def call() -> Any:
        return explainer.explain(images, target=s.targets) if explainer is not None else loop_explain(s, partition, images)

    if s.device.type == "cuda":
        sync(s.device)
        torch.cuda.reset_peak_memory_stats(s.device)
        base = torch.cuda.memory_allocated(s.device)
        call()
        sync(s.device)
        return {"bytes": torch.cuda.max_memory_allocated(s.device) - base, "how": "CUDA peak allocated"}
    how = "RSS high-water (VmHWM reset)"
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak RSS to the current RSS (Linux >= 4.0)
    except OSError:
        how = "ru_maxrss (not reset: an earlier peak may hide the call's)"
    base_kb = _status_kb("VmRSS")
    call()
    if how.startswith("RSS") and base_kb is not None:
        peak_kb = _status_kb("VmHWM") or 0
    else:
        peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
        base_kb = base_kb or 0
    return {"bytes": max(0, peak_kb - base_kb) * 1024, "how": how}


def measure_memory(case: str, method: str, args: argparse.Namespace) -> dict[str, Any] | None:
    """Run :func:`memory_probe` in a fresh subprocess (a clean high-water mark, no earlier heap)."""
    cmd = [sys.executable, os.path.abspath(__file__), "--memory-probe", f"{case}:{method}", "--threads", str(args.threads),
           "--device", args.device, "--dtype", args.dtype]
    if args.batch_size:
        cmd += ["--batch-size", str(args.batch_size)]
    if args.channels_last:
        cmd.append("--channels-last")
    if args.workers is not None:
        cmd += ["--workers", str(args.workers)]
    if args.keep_memory:
        cmd.append("--keep-memory")
    done = subprocess.run(cmd, check=False, capture_output=True, text=True)
    if done.returncode != 0:
        print(f"  memory probe {case}:{method} failed: {(done.stderr.strip().splitlines() or ['?'])[-1]}")
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------- a case


@dataclass
class Result:
    name: str
    line: str
    cells: tuple[str, str, str, str]


def fmt(values: list[float], digits: int = 2) -> str:
    return f"{statistics.median(values):.{digits}f}" if values else "failed"


def run_case(name: str, args: argparse.Namespace) -> Result:
    n_images = 1 if args.fast else args.images
    min_seconds = args.min_seconds if args.min_seconds is not None else (0.5 if args.fast else 2.0)
    s = build_setup(name, args, n_images)
    methods = methods_of(s, args)
    raw = raw_forward(s)
    threads = f"{torch.get_num_threads()} thread{'s' if torch.get_num_threads() > 1 else ''}"

    # Warm-ups: kernels, thread pools, segmenter imports, allocator state.
    timed(s, raw, 0.0, min_calls=3)
    for m in methods:
        try:
            if m.warm is not None:
                m.warm()
        except Exception as exc:  # whatever a method raises is reported; the others still run
            m.error = f"{type(exc).__name__}: {exc}"
    # Raw batches per call: as many inputs as the call's masked inputs (Captum's too: about the same time).
    raw_batches = max(2, math.ceil(s.passes / n_images / s.batch_size) * n_images)
    raw_rates: list[float] = []
    raw_faults: list[float] = []
    copies: list[float] = []  # seconds of one input copy, next to each measurement
    for _ in range(args.repeat):
        for m in methods:
            if m.error or (args.fast and m.seconds and m.seconds[0] * m.calls_per_round > FAST_ROUND_SECONDS):
                continue  # --fast: a method whose round took over FAST_ROUND_SECONDS runs one round
            try:
                before = copy_seconds(s) if s.spec.large else 0.0
                t, r = paired(s, m.run, raw, raw_batches, min_seconds)
                copy = (before + copy_seconds(s)) / 2 if s.spec.large else 0.0
            except Exception as exc:  # as above
                m.error = f"{type(exc).__name__}: {exc}"
                continue
            raw_rate = r.calls * s.batch_size / r.seconds
            raw_rates.append(raw_rate)
            rate = m.passes(t) / t.seconds
            m.rates.append(rate)
            m.ratios.append(rate / raw_rate)
            m.seconds.append(t.seconds / t.calls)
            m.calls_per_round = t.calls
            m.faults.append(t.faults / max(1, m.passes(t)))
            if s.spec.large:
                copies.append(copy)
                m.copies.append(t.seconds / m.passes(t) / copy)
                m.raw_copies.append(1 / raw_rate / copy)
            raw_faults.append(r.faults / (r.calls * s.batch_size))
            if m.name.startswith("engine") and t.hooked and t.hooked != t.calls * s.passes:
                note = f"{m.name} ran {t.hooked / t.calls:.0f} forward inputs per call for {s.passes} masked inputs"
                if note not in s.notes:
                    s.notes.append(note)

    by_name = {m.name: m for m in methods}
    per_image = s.passes / n_images
    raw_med = statistics.median(raw_rates) if raw_rates else float("nan")
    for m in methods:
        if m.error:
            print(f"  {name}: {m.name} failed: {m.error}")
    captum = by_name.get("captum")
    if s.spec.window is None:
        captum_cell = "n/a"
    elif captum is None:
        captum_cell = "skipped" if (args.no_captum or (args.fast and s.spec.large)) else "n/a (not installed)"
    else:
        captum_cell = fmt(captum.ratios)
    notes = [f"{per_image:.0f} passes/image", f"raw {raw_med:.0f} inputs/s", f"batch {s.batch_size}", threads]
    if s.model_name != CASES[name].model:
        notes.insert(0, s.model_name)
    if captum is not None and captum.rates and captum.seconds:
        width = 2 * s.spec.window[0] + 1  # type: ignore[index]
        passes = captum.rates[-1] * captum.seconds[-1] / n_images
        notes.append(f"captum {width}x{width} squares stride {s.spec.window[1]}: {passes:.0f} passes/image")  # type: ignore[index]

    if s.spec.window is None:
        first, repeat = by_name["engine first"], by_name["engine repeat"]
        engine_cell = f"first {fmt(first.ratios)}, repeat {fmt(repeat.ratios)}"
        line = (f"{name}: engine/raw first {fmt(first.ratios)}  repeat {fmt(repeat.ratios)}  loop/raw {fmt(by_name['loop'].ratios)}  "
                f"captum n/a  ({', '.join(notes)})")
        workers = s.pami_kwargs.get("num_workers", min(8, os.cpu_count() or 1))
        notes.append(f"segmentations in the engine's {workers}-thread pool, the loop's inline")
    else:
        engine = by_name["engine"]
        engine_cell = fmt(engine.ratios)
        line = (f"{name}: engine/raw {engine_cell}  loop/raw {fmt(by_name['loop'].ratios)}  captum/raw {captum_cell}  "
                f"({', '.join(notes)})")

    details = [f"  rounds: raw inputs/s {' '.join(f'{r:.0f}' for r in raw_rates)}; "
               f"{statistics.median(raw_faults) if raw_faults else 0:.0f} minor page faults per input"]
    for m in methods:
        if m.ratios:
            details.append(f"  {m.name}: ratios {' '.join(f'{r:.2f}' for r in m.ratios)}; {statistics.median(m.seconds):.3f} s per call "
                           f"({statistics.median(m.seconds) / n_images:.3f} s/image); {statistics.median(m.faults):.0f} minor page faults per input")

    if s.spec.large:
        copy = statistics.median(copies)
        nbytes = s.images[0].numel() * 4
        unit = (f"copy of {nbytes / 1e6:.1f} MB in {copy * 1e3:.2f} ms = {2 * nbytes / copy / 1e9:.1f} GB/s read+write")
        extra = [f"{m.name} {statistics.median(m.copies):.2f}" for m in methods if m.copies]
        window_engine = by_name.get("engine")
        if window_engine is not None and window_engine.copies:
            extra.append(f"raw forward alone {statistics.median(window_engine.raw_copies):.2f} (next to the engine)")
            # Per round: engine and raw of the same measurement.
            minus = [c * (1 - ratio) for c, ratio in zip(window_engine.copies, window_engine.ratios, strict=True)]
            extra.append(f"engine - raw {statistics.median(minus):.2f}")
        batch_bytes = s.batch_size * nbytes
        peaks = []
        # --fast probes the engine only: the loop's probe repeats a whole loop call (and ~12 batches of memory).
        for method in ("engine",) if args.fast else ("engine", "loop"):
            if method in by_name and not by_name[method].error:
                probe = measure_memory(name, method, args)
                if probe is not None:
                    peaks.append(f"{method} +{probe['bytes'] / batch_bytes:.2f}")
                    details.append(f"  peak extra memory, {method}: {probe['bytes'] / 1e6:.0f} MB ({probe['how']})")
        copies_text = f"copies/input: {', '.join(extra)} (goal engine <= 3)"
        peak_text = f"peak extra memory in batches of {batch_bytes / 1e6:.0f} MB: {', '.join(peaks) or 'n/a'}"
        line += f"\n  {copies_text}; {unit}\n  {peak_text}"
        notes = [copies_text, unit, peak_text, *notes]
    notes += s.notes
    print(line)
    print("\n".join(details))
    loop_cell = fmt(by_name["loop"].ratios) if "loop" in by_name else "n/a"
    return Result(name, line, (engine_cell, loop_cell, captum_cell, "; ".join(notes)))


# ---------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", default="all", help=f"comma-separated cases, or 'all' (default): {', '.join(CASES)}")
    parser.add_argument("--model", choices=["tiny", "small_cnn", "resnet50"], default=None,
                        help="replace the model of cnn224 and superpixels224 (resnet50 needs torchvision)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32")
    parser.add_argument("--batch-size", type=int, default=None, help="batch size of every case (default 64; 16 for the large cases)")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    parser.add_argument("--repeat", type=int, default=3, help="timed rounds per method; the median ratio is printed (default 3)")
    parser.add_argument("--images", type=int, default=2, help="images per explain call (default 2; 1 with --fast)")
    parser.add_argument("--min-seconds", type=float, default=None,
                        help="each measurement repeats its call until this long (default 2; 0.5 with --fast)")
    parser.add_argument("--workers", type=int, default=None, help="segmentation threads of the engine (default: its own)")
    parser.add_argument("--channels-last", action="store_true", help="channels-last model and inputs (faster convs on GPUs)")
    parser.add_argument("--no-captum", action="store_true", help="skip Captum's Occlusion")
    parser.add_argument("--fast", action="store_true", help="one image per case, short timings, cheap warm-ups")
    parser.add_argument("--keep-memory", action="store_true",
                        help="call pami_lightning.keep_freed_memory() first (glibc keeps freed blocks in the process)")
    parser.add_argument("--memory-probe", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    names = list(CASES) if args.case == "all" else [c.strip() for c in args.case.split(",") if c.strip()]
    unknown = [c for c in names if c not in CASES]
    if unknown:
        parser.error(f"unknown case(s) {unknown}; choose from {', '.join(CASES)} or 'all'")
    args.cases = names
    return args


def allocator_state(args: argparse.Namespace) -> str:
    if args.keep_memory:
        return "pami_lightning.keep_freed_memory(): mmap and trim thresholds of 1 GiB (freed activations stay in the process)"
    keys = ["MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_MAX_", "MALLOC_TOP_PAD_", "GLIBC_TUNABLES"]
    set_ = [f"{k}={os.environ[k]}" for k in keys if k in os.environ]
    return " ".join(set_) if set_ else "glibc defaults (freed activations go back to the OS; see --keep-memory)"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.keep_memory and not keep_freed_memory():
        raise SystemExit("--keep-memory needs glibc's malloc (Linux) taking a 1 GiB mmap threshold")
    torch.set_num_threads(args.threads)
    if args.memory_probe:
        case, method = args.memory_probe.split(":")
        print(json.dumps(memory_probe(case, method, args)))
        return
    device = torch.device(args.device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} thread{'s' if torch.get_num_threads() > 1 else ''} of {os.cpu_count()} cores"
    print(f"torch {torch.__version__}, captum {captum_version() or 'not installed'}; device {device} ({where}); dtype {args.dtype}")
    print(f"allocator: {allocator_state(args)}")
    print(f"{args.repeat} rounds per method, median of per-round ratios; {'--fast' if args.fast else f'{args.images} images per call'}")
    results = []
    for name in args.cases:
        try:
            results.append(run_case(name, args))
        except Exception as exc:  # one broken case must not hide the others
            print(f"{name}: failed: {type(exc).__name__}: {exc}")
            results.append(Result(name, "", ("failed", "failed", "failed", f"{type(exc).__name__}: {exc}")))
        sys.stdout.flush()
    print()
    print("| case | engine/raw | loop/raw | captum/raw | notes |")
    print("|---|---|---|---|---|")
    for r in results:
        print(f"| {r.name} | {' | '.join(r.cells)} |")


if __name__ == "__main__":
    main()
