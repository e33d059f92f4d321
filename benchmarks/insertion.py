"""Insertion / deletion: how close to forward-bound, and the forward passes saved, measured in one run.

For each setting and each metric (``Insertion`` from RISE's ``Blur(11, 5)``, ``Deletion`` to
RISE's black ``Constant(0)``; ``target=None``: the clean image's top-1, as RISE):

- ``forward_share``: the seconds spent inside the model's calls during ``update()`` divided by the
  seconds of ``update()`` (goal >= 0.95: building the step images, scoring and the substrate cost
  little), and the same with the metric's batch sizes replayed on the bare model instead (the
  second figure moves with the machine's load between the two runs; on a GPU every call is
  synchronised for the first);
- ``passes``: inputs the model saw, next to a curve's ``B * (n + 1)`` points plus the ``B`` clean
  images of the top-1 pass (what the engine ran before it dropped the repeats: the clean image is
  insertion's last and deletion's first point; deletion's last point, all black, is the same image
  for every sample);
- for the 224 px setting, the speed-up over a plain RISE loop (one forward per step, pixels copied
  in place, as RISE's ``CausalMetric``) and the difference of their AUCs.

Settings: ``rise`` -- 4 images 3x224x224, ``step=224`` (225 points), batch 64, RISE's; ``demo`` --
8 images 3x32x32, ``step=224`` (6 points: the callback's demo), batch 64. Model: a small random CNN
(5 conv layers).

Run: ``python benchmarks/insertion.py`` (about a minute on 2 CPU cores; ``--threads 1 --clock process``
for steadier numbers on a shared machine; ``--keep-memory`` with :func:`pami_lightning.keep_freed_memory`), ``--fast`` for a smoke run, ``--device cuda`` on a GPU.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch
from torch import nn

from pami_lightning import Blur, keep_freed_memory
from pami_lightning.metrics import Deletion, Insertion
from pami_lightning.metrics.functional import curve_auc

CLOCK = time.perf_counter  # --clock process: time.process_time, this process's CPU seconds


def make_model(num_classes: int = 10) -> nn.Module:
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for c_in, c_out in ((3, 16), (16, 32), (32, 64), (64, 64), (64, 128)):
        layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.ReLU()]
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, num_classes)).eval()


class Timed(nn.Module):
    """The model, recording the batch size and the seconds of every call (synchronised on a GPU)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.calls: list[int] = []
        self.seconds = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sync(x.device)
        start = CLOCK()
        out = self.inner(x)
        sync(x.device)
        self.seconds += CLOCK() - start
        self.calls.append(x.shape[0])
        return out


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def replay(model: nn.Module, sizes: list[int], shape: tuple[int, ...], device: torch.device, repeat: int) -> float:
    """Seconds of plain forward calls with these batch sizes (``repeat`` times over)."""
    batch = torch.rand(max(sizes), *shape, device=device)
    with torch.inference_mode():
        sync(device)
        start = CLOCK()
        for _ in range(repeat):
            for n in sizes:
                model(batch[:n])
        sync(device)
        return CLOCK() - start


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


def measure(name: str, model: nn.Module, images: torch.Tensor, heatmaps: torch.Tensor, args: argparse.Namespace, inner: int) -> dict[str, float]:
    """Both metrics on one setting; ``inner`` updates per timing (tiny workloads need several)."""
    device = images.device
    b, _, h, w = images.shape
    points = math.ceil(h * w / args.step) + 1
    timed = Timed(model)
    results: dict[str, float] = {}
    for cls in (Insertion, Deletion):
        metric = cls(timed, step=args.step, batch_size=args.batch_size).to(device)
        metric.update(heatmaps[:1], images=images[:1])  # warm-up: allocator, kernels
        timed.calls = []
        metric.update(heatmaps, images=images)
        sizes = list(timed.calls)
        best = (math.inf, 0.0)
        t_replay = math.inf
        for _ in range(args.repeats):  # interleaved, so load changes hit both sides alike
            t_replay = min(t_replay, replay(model, sizes, tuple(images.shape[1:]), device, inner))
            metric.reset()
            timed.seconds = 0.0
            sync(device)
            start = CLOCK()
            for _ in range(inner):
                metric.update(heatmaps, images=images)
            sync(device)
            best = min(best, (CLOCK() - start, timed.seconds))
        t_update, t_forward = best
        before = b * points + b  # every point of every curve, plus the top-1 pass
        kind = cls.__name__.lower()
        results[kind] = metric.compute().item()
        print(
            f"{name} {kind:9s}  forward_share: {t_forward / t_update:.3f}  (vs a replay of its batches: {t_replay / t_update:.3f})  "
            f"update_s: {t_update / inner:.4f}  passes: {sum(sizes)} (was {before}: {before - sum(sizes)} saved, {(before - sum(sizes)) / before:.1%})"
        )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--step", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats; the best is kept")
    parser.add_argument("--fast", action="store_true", help="2 images at 224 px, step 448, one repeat: a quick smoke run")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--clock", choices=["wall", "process"], default="wall", help="process: CPU seconds of this process (CPU only; steadier on a busy machine)")
    parser.add_argument("--keep-memory", action="store_true",
                        help="pami_lightning.keep_freed_memory() first: glibc keeps freed activations instead of unmapping them")
    args = parser.parse_args()
    if args.keep_memory and not keep_freed_memory():
        parser.error("--keep-memory needs glibc's malloc (Linux)")
    global CLOCK
    if args.clock == "process":
        if args.device != "cpu":
            parser.error("--clock process measures CPU time: use it with --device cpu")
        CLOCK = time.process_time
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model = make_model().to(device)
    g = torch.Generator().manual_seed(0)
    where = f"cuda ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    allocator = "freed memory kept" if args.keep_memory else "glibc defaults"
    print(f"device: {where}; model: 5-conv CNN; step: {args.step}; batch_size: {args.batch_size}; best of {args.repeats}; clock: {args.clock}; "
          f"allocator: {allocator}")

    n_rise = 2 if args.fast else 4
    step = args.step
    if args.fast:
        args.step, args.repeats = 448, 1
    images = torch.rand(n_rise, 3, 224, 224, generator=g).to(device)
    heatmaps = torch.rand(n_rise, 224, 224, generator=g).to(device)
    auc = measure(f"rise {n_rise}x224px", model, images, heatmaps, args, inner=1)
    sync(device)
    start = CLOCK()
    curves = rise_loop(model, images, heatmaps, args.step)
    sync(device)
    t_rise = CLOCK() - start
    metric = Insertion(model, step=args.step, batch_size=args.batch_size).to(device)
    sync(device)
    start = CLOCK()
    metric.update(heatmaps, images=images)
    sync(device)
    t_metric = CLOCK() - start
    auc_rise = curve_auc(curves).mean().item()
    print(f"rise {n_rise}x224px insertion  rise_loop_s: {t_rise:.2f}  update_s: {t_metric:.2f}  speedup_vs_rise_loop: {t_rise / t_metric:.1f}")
    print(f"rise {n_rise}x224px insertion  auc: {auc['insertion']:.6f}  auc_rise_loop: {auc_rise:.6f}  abs_diff: {abs(auc['insertion'] - auc_rise):.2e}")

    args.step = step
    images = torch.rand(8, 3, 32, 32, generator=g).to(device)
    heatmaps = torch.rand(8, 32, 32, generator=g).to(device)
    measure("demo 8x32px", model, images, heatmaps, args, inner=5 if args.fast else 50)


if __name__ == "__main__":
    main()
