"""Insertion metric throughput, measured in one run on one model:

(a) ``insertion_vs_forward_ratio``: step images per second through ``Insertion.update`` divided by
    the raw forward throughput of the same model at the same batch size (goal >= 0.9: building the
    step images and scoring them costs little next to the forward passes);
(b) ``speedup_vs_rise_loop``: time of a plain RISE-style loop (one forward per step, pixels copied
    in place, as RISE's ``CausalMetric``) divided by the time of ``Insertion.update`` on the same
    images, maps and steps. The two AUCs are compared too.

Model: a small random CNN (5 conv layers) on 3x224x224 images, ``step=224`` (224 steps, 225 points
per image), ``Blur(11, 5)`` substrate, batch size 64.

Run: ``python benchmarks/insertion.py`` (about a minute on 2 CPU cores), ``--fast`` for a smoke
run, ``--device cuda`` on a GPU, ``--threads N`` to pin the CPU thread count.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch
from torch import nn

from pami_lightning import Blur
from pami_lightning.metrics import Insertion
from pami_lightning.metrics.functional import curve_auc


def make_model(num_classes: int = 10) -> nn.Module:
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for c_in, c_out in ((3, 16), (16, 32), (32, 64), (64, 64), (64, 128)):
        layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.ReLU()]
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, num_classes)).eval()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def forward_throughput(model: nn.Module, batch_size: int, n_images: int, size: int, device: torch.device) -> float:
    """Images per second of plain forward calls on full batches (same work as the metric)."""
    batch = torch.rand(batch_size, 3, size, size, device=device)
    n_batches = math.ceil(n_images / batch_size)
    with torch.inference_mode():
        sync(device)
        start = time.perf_counter()
        for _ in range(n_batches):
            model(batch)
        sync(device)
        return n_batches * batch_size / (time.perf_counter() - start)


def rise_loop(model: nn.Module, images: torch.Tensor, heatmaps: torch.Tensor, step: int) -> torch.Tensor:
    """RISE's CausalMetric, insertion: one forward per step, pixels copied into a running image."""
    blurred = Blur(11, 5).substrate(images)
    _, c, h, w = images.shape
    n = math.ceil(h * w / step)
    curves = torch.zeros(images.shape[0], n + 1, device=images.device)
    with torch.inference_mode():
        for b in range(images.shape[0]):
            target = model(images[b : b + 1]).argmax(1).item()
            order = np.argsort(-heatmaps[b].flatten().cpu().numpy(), kind="stable")
            cur, fin = blurred[b].clone().reshape(c, -1), images[b].reshape(c, -1)
            for i in range(n + 1):
                curves[b, i] = model(cur.reshape(1, c, h, w)).softmax(1)[0, target]
                idx = torch.from_numpy(order[step * i : step * (i + 1)]).to(images.device)
                cur[:, idx] = fin[:, idx]
    return curves


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--step", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2, help="timed repeats of (a); the best is kept")
    parser.add_argument("--fast", action="store_true", help="2 images, step 448: a quick smoke run")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.fast:
        args.images, args.step, args.repeats = 2, 448, 1
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    model = make_model().to(device)
    g = torch.Generator().manual_seed(0)
    images = torch.rand(args.images, 3, args.size, args.size, generator=g).to(device)
    heatmaps = torch.rand(args.images, args.size, args.size, generator=g).to(device)
    points = math.ceil(args.size * args.size / args.step) + 1
    n_images = args.images * points
    where = f"cuda ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(f"device: {where}; model: 5-conv CNN; images: {args.images} x 3x{args.size}x{args.size}")
    print(f"step: {args.step} ({points} points per image, {n_images} step images); batch_size: {args.batch_size}")

    metric = Insertion(model, step=args.step, batch_size=args.batch_size).to(device)
    metric.update(images[:1], heatmaps[:1])  # warm-up: allocator, kernels
    forward_throughput(model, args.batch_size, args.batch_size, args.size, device)

    forward_ips, metric_ips = 0.0, 0.0
    for _ in range(args.repeats):  # interleaved, so load changes hit both sides alike
        forward_ips = max(forward_ips, forward_throughput(model, args.batch_size, n_images, args.size, device))
        metric.reset()
        sync(device)
        start = time.perf_counter()
        metric.update(images, heatmaps)
        sync(device)
        t_metric = time.perf_counter() - start
        metric_ips = max(metric_ips, n_images / t_metric)
    auc_metric = metric.compute().item()

    sync(device)
    start = time.perf_counter()
    curves = rise_loop(model, images, heatmaps, args.step)
    sync(device)
    t_rise = time.perf_counter() - start
    auc_rise = curve_auc(curves).mean().item()

    print(f"forward_images_per_s: {forward_ips:.1f}")
    print(f"insertion_images_per_s: {metric_ips:.1f}")
    print(f"insertion_vs_forward_ratio: {metric_ips / forward_ips:.3f}")
    print(f"rise_loop_s: {t_rise:.2f}")
    print(f"insertion_update_s: {n_images / metric_ips:.2f}")
    print(f"speedup_vs_rise_loop: {t_rise * metric_ips / n_images:.1f}")
    print(f"auc_insertion: {auc_metric:.6f}  auc_rise_loop: {auc_rise:.6f}  abs_diff: {abs(auc_metric - auc_rise):.2e}")


if __name__ == "__main__":
    main()
