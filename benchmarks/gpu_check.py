"""On a CUDA machine: PAMI maps on the GPU equal the CPU's (float32), for windows and superpixels.

    python benchmarks/gpu_check.py
"""

import torch
from torch import nn

from pami_lightning import PAMI, Blur, SlidingWindow, Superpixels


def main() -> None:
    torch.manual_seed(0)
    # Compare float32 with float32: TF32 convolutions alone would differ by ~1e-3.
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    model = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))
    images = torch.rand(3, 3, 96, 96)
    for partition in (SlidingWindow(radius=16, stride=6), Superpixels.paper()):
        maps = {}
        for device in ("cpu", "cuda"):
            explainer = PAMI(model.to(device), partition=partition, masker=Blur(), batch_size=50, progress=False)
            maps[device] = explainer.explain(images.to(device), target=[1, 2, 3]).cpu()
        err = (maps["cpu"] - maps["cuda"]).abs().max().item()
        print(f"gpu_vs_cpu_max_abs_diff[{type(partition).__name__}]: {err:.2e} ({'ok' if err < 1e-4 else 'MISMATCH'})")


if __name__ == "__main__":
    main()
