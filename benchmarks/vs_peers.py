"""Our engine against its peers on identical work, as ratios measured in one run.

Same model, same image, same target, same windows, same number of forward passes, same batch size:

- **Captum's** ``Occlusion`` (optional: ``pip install captum``; skipped when it is not importable):
  square windows, ``SlidingWindow(radius=r, stride=s, shape="square")`` against
  ``Occlusion.attribute(sliding_window_shapes=(3, 2r+1, 2r+1), strides=(3, s, s),
  perturbations_per_eval=batch_size)``, both with a black (0) substrate. Captum slides its windows
  inside the image (and needs ``s <= 2r + 1``), ours are centred on ``0, s, 2s, ...`` and clipped, so
  the two grids hold as many windows only when the windows tile the image: ``s = 2r + 1`` dividing
  the side (7x7 windows, stride 7 on 224: 32 x 32 = 1024); the script checks the counts agree.
  (Occlusion removes the window where PAMI keeps it; the work — one masked image and one forward
  pass per window — is the same.)
- **a plain reference-style loop**, as in the authors' scripts: one mask and one masked image built
  per window in a Python loop, batches of 90, and the map accumulated window by window; the paper's
  circles (radius 40, stride 6: 1444 windows on 224) and blur. Our map must equal it.

Each method runs ``--repeats`` times, interleaved, and the best time counts (the first round warms up). ``forward only`` is the
model alone on as many inputs at the same batch size: the floor no explainer can beat.

    python benchmarks/vs_peers.py            # about 1.5 minutes on 2 CPU cores
    python benchmarks/vs_peers.py --fast     # one round, coarser reference grid: a quick check
"""

from __future__ import annotations

import argparse
import itertools
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pami_lightning import PAMI, Blur, Constant, SlidingWindow

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
SIZE = 224


def preprocess(x: Tensor) -> Tensor:
    """ImageNet normalisation of masked images (pixel space -> model space)."""
    return (x - MEAN) / STD


def small_cnn(num_classes: int = 1000) -> nn.Module:
    """Four strided conv layers on 3x224x224 (~0.1 GFLOP per input), random weights, eval mode."""
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    widths = [3, 16, 32, 64, 128]
    for cin, cout in itertools.pairwise(widths):
        layers += [nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(widths[-1], num_classes)).eval()


class Counted(nn.Module):
    """The model, counting the inputs it sees (forward passes)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.passes = model, 0

    def forward(self, x: Tensor) -> Tensor:
        self.passes += x.shape[0]
        return self.model(x)


def astronaut() -> Tensor:
    """scikit-image's astronaut as ``[3, 224, 224]`` in ``[0, 1]``."""
    from skimage import data

    image = torch.from_numpy(data.astronaut().copy()).permute(2, 0, 1).float()[None] / 255
    return F.interpolate(image, size=(SIZE, SIZE), mode="area")[0]


def reference_loop(model: nn.Module, image: Tensor, target: int, radius: int, stride: int, batch_size: int = 90) -> Tensor:
    """The authors' way: per window, a mask and a masked image in Python; per window, its share of the map."""
    substrate = Blur().substrate(image[None])[0]  # computed once per image, as the reference does
    ys, xs = torch.arange(SIZE).view(-1, 1), torch.arange(SIZE).view(1, -1)
    heat = torch.zeros(SIZE, SIZE, dtype=torch.float64)
    count = torch.zeros(SIZE, SIZE, dtype=torch.float64)
    images: list[Tensor] = []
    masks: list[Tensor] = []

    def flush() -> None:
        with torch.no_grad():
            probs = model(preprocess(torch.stack(images))).softmax(dim=1)[:, target]
        for p, m in zip(probs.double(), masks, strict=True):
            heat.add_(m * p)
            count.add_(m)
        images.clear()
        masks.clear()

    for cy in range(0, SIZE, stride):
        for cx in range(0, SIZE, stride):
            mask = ((ys - cy) ** 2 + (xs - cx) ** 2 <= radius**2).double()
            images.append(image * mask.float() + substrate * (1 - mask.float()))
            masks.append(mask)
            if len(images) == batch_size:
                flush()
    if images:
        flush()
    return torch.where(count > 0, heat / count.clamp_min(1), torch.zeros_like(heat)).float()


def forward_only(model: nn.Module, image: Tensor, passes: int, batch_size: int) -> None:
    """The model alone on ``passes`` inputs in batches of ``batch_size``."""
    batch = image.expand(batch_size, -1, -1, -1).contiguous()
    with torch.inference_mode():
        for start in range(0, passes, batch_size):
            model(preprocess(batch[: min(batch_size, passes - start)]))


def race(runs: dict[str, Callable[[], object]], repeats: int) -> tuple[dict[str, float], dict[str, object]]:
    """Best wall time of each run over ``repeats`` interleaved rounds, and each run's last result."""
    best, results = {name: float("inf") for name in runs}, {}
    # Interleaved: a slow spell of the machine hits every method, not one.
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            results[name] = run()
            best[name] = min(best[name], time.perf_counter() - start)
    return best, results


def report(seconds: dict[str, float]) -> None:
    print("  seconds (best): " + ", ".join(f"{name} {s:.2f}" for name, s in seconds.items()))
    print(f"  ours at {seconds['forward only'] / seconds['ours']:.2f}x the raw forward throughput")


def versus_captum(model: nn.Module, image: Tensor, target: int, radius: int, stride: int, batch_size: int, repeats: int) -> None:
    try:
        import captum
        from captum.attr import Occlusion
    except ImportError:
        print("captum is not installed (pip install captum): skipping the comparison with Captum's Occlusion")
        return
    width = 2 * radius + 1
    ours_windows = SlidingWindow(radius, stride, shape="square").num_parts((SIZE, SIZE))
    captum_windows = (1 + (SIZE - width) // stride) ** 2
    print(f"captum {captum.__version__} Occlusion: square {width}x{width} windows, stride {stride} on {SIZE}x{SIZE}: "
          f"windows ours {ours_windows}, captum {captum_windows}")
    if stride > width or ours_windows != captum_windows:
        print(f"  not comparable: Captum needs stride <= {width}, and equal counts need stride = 2 * radius + 1 dividing {SIZE} "
              "(--captum-radius 3 --captum-stride 7); skipping")
        return
    ours_model, captum_model = Counted(model), Counted(model)
    explainer = PAMI(ours_model, SlidingWindow(radius, stride, shape="square"), Constant(0.0), preprocess, batch_size=batch_size, progress=False)
    occlusion = Occlusion(lambda x: captum_model(preprocess(x)).softmax(dim=1))
    runs: dict[str, Callable[[], object]] = {
        "ours": lambda: explainer.explain(image[None], target=target),
        "captum_occlusion": lambda: occlusion.attribute(image[None], sliding_window_shapes=(3, width, width), strides=(3, stride, stride),
                                                        baselines=0.0, target=target, perturbations_per_eval=batch_size),
        "forward only": lambda: forward_only(model, image, ours_windows, batch_size),
    }
    seconds, _ = race(runs, repeats)
    print(f"  forward passes per run: ours {ours_model.passes // repeats}, captum_occlusion {captum_model.passes // repeats} "
          "(captum also runs the unoccluded input)")
    report(seconds)
    print(f"speedup_vs_captum_occlusion: {seconds['captum_occlusion'] / seconds['ours']:.2f}x")


def versus_reference(model: nn.Module, image: Tensor, target: int, stride: int, repeats: int) -> None:
    radius, batch_size = 40, 90  # the reference's circles and batches
    windows = SlidingWindow(radius, stride).num_parts((SIZE, SIZE))
    print(f"reference-style loop: circles r={radius}, stride {stride}, blur 49, batches of {batch_size}: {windows} windows")
    ours_model, reference_model = Counted(model), Counted(model)
    explainer = PAMI(ours_model, SlidingWindow(radius, stride), Blur(), preprocess, batch_size=batch_size, progress=False)
    runs: dict[str, Callable[[], object]] = {
        "ours": lambda: explainer.explain(image[None], target=target)[0],
        "reference_loop": lambda: reference_loop(reference_model, image, target, radius, stride, batch_size),
        "forward only": lambda: forward_only(model, image, windows, batch_size),
    }
    seconds, maps = race(runs, repeats)
    diff = (maps["ours"] - maps["reference_loop"]).abs().max().item()  # type: ignore[operator]
    print(f"  forward passes per run: ours {ours_model.passes // repeats}, reference_loop {reference_model.passes // repeats}; "
          f"max |ours - reference| = {diff:.1e}")
    if diff > 1e-5:
        raise SystemExit(f"the maps differ by {diff:.2e}: the comparison is not like for like")
    report(seconds)
    print(f"speedup_vs_reference_loop: {seconds['reference_loop'] / seconds['ours']:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description="PAMI vs Captum Occlusion and a reference-style loop, on identical work")
    parser.add_argument("--fast", action="store_true", help="one round and a coarser reference grid: a quick check")
    parser.add_argument("--batch-size", type=int, default=64, help="batch size of ours and Captum's perturbations_per_eval (default 64)")
    parser.add_argument("--captum-radius", type=int, default=3, help="square window radius for the Captum comparison (default 3: 7x7)")
    parser.add_argument("--captum-stride", type=int, default=7, help="stride for the Captum comparison (default 7)")
    parser.add_argument("--reference-stride", type=int, help="stride of the reference comparison's circles (default 6, the paper's; 12 with --fast)")
    parser.add_argument("--repeats", type=int, help="timed rounds per method, the first one warming up (default 3; 1 with --fast)")
    args = parser.parse_args()
    repeats = args.repeats or (1 if args.fast else 3)
    model, image = small_cnn(), astronaut()
    with torch.inference_mode():
        target = int(model(preprocess(image[None])).argmax())
    print(f"model: small CNN ({sum(p.numel() for p in model.parameters()) / 1e3:.0f}k parameters) on 3x{SIZE}x{SIZE}, "
          f"CPU with {torch.get_num_threads()} threads; target class {target}; best of {repeats}")
    versus_captum(model, image, target, args.captum_radius, args.captum_stride, args.batch_size, repeats)
    versus_reference(model, image, target, args.reference_stride or (12 if args.fast else 6), repeats)


if __name__ == "__main__":
    main()
