"""Throughput of PAMI.explain relative to the model's own forward throughput, measured in one run.

Prints, for the sliding window (radius 40, stride 6: 1444 passes per 224x224 image) and for the
paper's 20-setting superpixel ensemble (segmentation included), the masked inputs per second of
``explain`` divided by the raw forward inputs per second of the same model at the same batch size.
A ratio of 1.0 means the engine adds nothing on top of the forward passes.

    python benchmarks/throughput.py                      # small CNN on the CPU (goals: >= 0.90, >= 0.80)
    python benchmarks/throughput.py --fast               # fewer images, a quick check
    python benchmarks/throughput.py --model resnet50 --device cuda --dtype bf16 --batch-size 256
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from pami_lightning import PAMI, SlidingWindow, Superpixels

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def small_cnn(num_classes: int = 1000) -> nn.Module:
    """Five conv layers on 3x224x224 (~0.5 GFLOP per input): small, but forward-bound like real models."""
    layers: list[nn.Module] = []
    widths = [3, 32, 64, 128, 128, 256]
    for cin, cout in zip(widths, widths[1:]):
        layers += [nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(widths[-1], num_classes))


def natural_images(n: int) -> torch.Tensor:
    """Real photographs shipped with scikit-image, so segmenters see natural structure."""
    import numpy as np
    from skimage import data, transform

    names = ["astronaut", "chelsea", "coffee", "rocket", "cat"]
    imgs = []
    for i in range(n):
        img = getattr(data, names[i % len(names)])()
        img = transform.resize(img, (224, 224), anti_aliasing=True)
        imgs.append(torch.from_numpy(np.asarray(img, dtype=np.float32)).permute(2, 0, 1))
    return torch.stack(imgs)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def forward_rate(model: nn.Module, preprocess, batch_size: int, device: torch.device, dtype, seconds: float) -> float:
    """Raw forward inputs per second at ``batch_size`` (inference mode, same autocast as PAMI)."""
    x = torch.rand(batch_size, 3, 224, 224, device=device)
    ctx = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype else torch.no_grad
    with torch.inference_mode():
        for _ in range(2):
            with ctx():
                model(preprocess(x))
        sync(device)
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds or n < 3:
            with ctx():
                model(preprocess(x))
            n += 1
        sync(device)
        return n * batch_size / (time.perf_counter() - start)


def explain_rate(explainer: PAMI, images: torch.Tensor, passes_of) -> tuple[float, float]:
    """(masked inputs per second, seconds per image) of ``explainer.explain``."""
    explainer.explain(images[:1])  # warm-up: caches, thread pool, kernels
    sync(images.device)
    start = time.perf_counter()
    explainer.explain(images)
    sync(images.device)
    elapsed = time.perf_counter() - start
    return passes_of(images) / elapsed, elapsed / images.shape[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["small_cnn", "resnet50"], default="small_cnn")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--images", type=int, default=2, help="images per strategy")
    parser.add_argument("--workers", type=int, default=None, help="segmentation threads")
    parser.add_argument("--channels-last", action="store_true", help="channels-last model and inputs (faster convs on GPUs)")
    parser.add_argument("--fast", action="store_true", help="one image per strategy, short forward timing")
    args = parser.parse_args()

    device = torch.device(args.device)
    torch.manual_seed(0)
    if args.model == "resnet50":
        from torchvision.models import resnet50

        model = resnet50()
    else:
        model = small_cnn()
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    model = model.to(device, memory_format=memory_format).eval()
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    mean, std = MEAN.to(device), STD.to(device)

    def preprocess(x: torch.Tensor) -> torch.Tensor:
        return ((x - mean) / std).contiguous(memory_format=memory_format)

    n_images = 1 if args.fast else args.images
    images = natural_images(max(n_images, 1)).to(device)
    raw = forward_rate(model, preprocess, args.batch_size, device, dtype, seconds=2.0 if args.fast else 5.0)
    print(f"device: {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else f'{torch.get_num_threads()} threads'})")
    print(f"model: {args.model}, dtype {args.dtype}, batch size {args.batch_size}, channels_last {args.channels_last}")
    print(f"raw forward: {raw:.1f} inputs/s")

    window = SlidingWindow(radius=40, stride=6)
    ensemble = Superpixels.paper()
    common = dict(preprocess=preprocess, batch_size=args.batch_size, autocast_dtype=dtype, num_workers=args.workers, progress=False)
    for name, partition, goal in [("sliding_window", window, 0.90), ("ensemble", ensemble, 0.80)]:
        explainer = PAMI(model, partition=partition, **common)
        if partition is window:
            passes = lambda imgs: imgs.shape[0] * window.num_parts((224, 224))  # noqa: E731
        else:
            # Parts per image depend on the image: count them outside the timed run.
            counts = [ensemble.masks(img.cpu()).shape[0] for img in images]
            passes = lambda imgs: sum(counts[: imgs.shape[0]])  # noqa: E731
        rate, per_image = explain_rate(explainer, images, passes)
        print(f"{name}: {passes(images) / images.shape[0]:.0f} passes/image, {rate:.1f} masked inputs/s, "
              f"{per_image:.3f} s/image")
        print(f"{name}_vs_forward_ratio: {rate / raw:.3f} (goal >= {goal:.2f})")


if __name__ == "__main__":
    main()
