"""Explain one image with a model checkpoint: the standalone API, no Trainer.

A tiny CNN learns in a few seconds to answer "is there a yellow disc?" on generated pictures: crops
of scikit-image photographs with a yellow disc (class 1) or without one (class 0), and decoy discs
of other colours in both classes, so colour *and* shape matter. The example then paints a yellow
disc and a blue decoy onto a picture the model never saw (``skimage.data.astronaut()``, or your own
``--image``) and explains class 1 three ways:

- ``SlidingWindow(radius=16, stride=4)``: the paper's strategy I (one forward pass per window);
- ``Superpixels.paper()``: strategy II, the paper's 20 segmentations pooled by Eq. 1;
- the same with ``second_run=True``: the first map is segmented again, which sharpens it.

It writes ``input.png`` (the painted picture), one overlay per strategy and ``grid.png`` (all side by
side) to ``--out-dir``, and prints for each map whether its maximum lies on the yellow disc — it
should, and not on the decoy.

Run::

    python examples/explain_image.py                      # about 15 s on 2 CPU cores
    python examples/explain_image.py --image photo.jpg    # paint the discs onto your own picture
    python examples/explain_image.py --save disc.pt       # keep the trained weights ...
    python examples/explain_image.py --checkpoint disc.pt # ... and reuse them without training
    pami-explain --checkpoint disc.pt --module examples/explain_image.py:DiscDetector \\
        --image outputs/explain_image/input.png --out outputs/explain_image/cli.png

Flags: ``--fast`` (small data, coarse windows, no second run: a few seconds, for CI), ``--image PATH``,
``--size N``, ``--checkpoint PATH``, ``--save PATH``, ``--out-dir DIR``, ``--seed S``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from pami_lightning import PAMI, Blur, SlidingWindow, Superpixels
from pami_lightning.visualize import overlay

YELLOW = (0.95, 0.85, 0.10)
DECOYS = ((0.15, 0.30, 0.90), (0.90, 0.15, 0.10), (0.15, 0.75, 0.20), (0.85, 0.20, 0.85), (0.20, 0.85, 0.90))
#: Photographs the backgrounds are cropped from; the explained astronaut is not among them.
BACKGROUNDS = ("chelsea", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field")


class DiscDetector(nn.Module):
    """Three small conv blocks and a global max pool: logits [no yellow disc, yellow disc], any input size."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
        )
        self.head = nn.Linear(32, 2)

    def forward(self, x: Tensor) -> Tensor:
        # Max pooling: one disc anywhere is enough evidence, whatever the image size.
        return self.head(self.features(x).amax(dim=(2, 3)))


def paint_disc(image: Tensor, cy: int, cx: int, radius: int, colour: Sequence[float]) -> None:
    """Paint a filled disc onto ``image`` ``[3, H, W]`` in place."""
    h, w = image.shape[-2:]
    inside = (torch.arange(h)[:, None] - cy) ** 2 + (torch.arange(w)[None, :] - cx) ** 2 <= radius**2
    image[:, inside] = torch.tensor(colour).view(3, 1)


def photographs(side: int) -> list[Tensor]:
    """The background photographs as ``[3, H, W]`` in ``[0, 1]``, shrunk so the short side is ``side``."""
    from skimage import data

    photos = []
    for name in BACKGROUNDS:
        photo = torch.from_numpy(getattr(data, name)()[..., :3].copy()).permute(2, 0, 1).float()[None] / 255
        scale = side / min(photo.shape[-2:])
        photos.append(F.interpolate(photo, scale_factor=scale, mode="area")[0])
    return photos


def make_data(n: int, size: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """``n`` pictures ``[n, 3, size, size]`` and labels ``[n]`` (1 when a yellow disc is painted)."""
    # Crops of a quarter to all of a photo's short side, from photos shrunk once (crops stay cheap).
    photos = photographs(4 * size)

    def randint(lo: int, hi: int) -> int:
        return int(torch.randint(lo, hi, (1,), generator=generator))

    images, labels = torch.empty(n, 3, size, size), torch.randint(0, 2, (n,), generator=generator)
    for i in range(n):
        photo = photos[randint(0, len(photos))]
        side = randint(size, 4 * size + 1)
        top, left = randint(0, photo.shape[1] - side + 1), randint(0, photo.shape[2] - side + 1)
        crop = photo[None, :, top : top + side, left : left + side].contiguous()  # area pooling crawls on strided views
        images[i] = F.interpolate(crop, size=(size, size), mode="area")[0]
        discs = [YELLOW] if labels[i] else []
        discs += [DECOYS[randint(0, len(DECOYS))] for _ in range(randint(1 - len(discs), 3))]
        for colour in discs:
            r = randint(size // 16, size // 8 + 1)
            paint_disc(images[i], randint(r, size - r), randint(r, size - r), r, colour)
    return images, labels


def train(model: nn.Module, steps: int, size: int, seed: int) -> float:
    """Adam steps on generated pictures (each seen about four times); returns the accuracy on fresh ones."""
    g = torch.Generator().manual_seed(seed)
    x, y = make_data(8 * steps, size, g)
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(x), (32,), generator=g)
        optimizer.zero_grad()
        F.cross_entropy(model(x[idx]), y[idx]).backward()
        optimizer.step()
    model.eval()
    x_test, y_test = make_data(256, size, g)
    with torch.no_grad():
        return (model(x_test).argmax(1) == y_test).float().mean().item()


def load_picture(path: Optional[Path], size: int) -> Tensor:
    """``[3, size, size]`` in ``[0, 1]``: the file at ``path`` (RGB) or the astronaut, resized."""
    if path is None:
        from skimage import data

        pixels = data.astronaut()
    else:
        with Image.open(path) as img:
            pixels = np.asarray(img.convert("RGB"))
    image = torch.from_numpy(pixels.copy()).permute(2, 0, 1).float()[None] / 255
    return F.interpolate(image, size=(size, size), mode="area")[0]


def save_png(image: Tensor, path: Path) -> None:
    """Write ``[3, H, W]`` in ``[0, 1]`` as an 8-bit PNG."""
    Image.fromarray(image.clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).numpy()).save(path)


def main(argv: Optional[Sequence[str]] = None) -> dict[str, object]:
    """Train (or load) the detector, explain the painted picture, save overlays; returns the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fast", action="store_true", help="small data, coarse windows, no second run (for CI)")
    parser.add_argument("--image", type=Path, help="picture to paint the discs on and explain (default: skimage's astronaut)")
    parser.add_argument("--size", type=int, help="side of the explained picture in pixels (default 128; 96 with --fast)")
    parser.add_argument("--checkpoint", type=Path, help="load DiscDetector weights (a state_dict) instead of training")
    parser.add_argument("--save", type=Path, help="write the trained DiscDetector state_dict here (for pami-explain)")
    parser.add_argument("--out-dir", type=Path, default=Path("outputs/explain_image"), help="where the PNGs go (default outputs/explain_image)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)

    model = DiscDetector()
    if args.checkpoint is not None:
        model.load_state_dict(torch.load(args.checkpoint, weights_only=True))
        model.eval()
    else:
        start = time.perf_counter()
        accuracy = train(model, steps=60 if args.fast else 200, size=48, seed=args.seed)
        print(f"trained DiscDetector in {time.perf_counter() - start:.1f} s: accuracy {accuracy:.1%} on fresh pictures")
        if args.save is not None:
            args.save.parent.mkdir(parents=True, exist_ok=True)
            torch.save(model.state_dict(), args.save)

    size = args.size or (96 if args.fast else 128)
    picture = load_picture(args.image, size)
    disc = (size * 3 // 10, size * 7 // 10, max(4, size // 16))  # (row, column, radius)
    paint_disc(picture, *disc, YELLOW)
    paint_disc(picture, size * 7 // 10, size * 3 // 10, disc[2], DECOYS[0])
    with torch.no_grad():
        p_disc = model(picture[None]).softmax(1)[0, 1].item()
    print(f"P(yellow disc) on the painted picture: {p_disc:.3f}")

    explainers = {"sliding": PAMI(model, SlidingWindow(radius=size // 8, stride=8 if args.fast else 4), Blur()),
                  "superpixels": PAMI(model, Superpixels.paper(), Blur())}
    if not args.fast:
        explainers["second_run"] = PAMI(model, Superpixels.paper(), Blur(), second_run=True)

    args.out_dir.mkdir(parents=True, exist_ok=True)
    save_png(picture, args.out_dir / "input.png")
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    on_disc = (yy - disc[0]) ** 2 + (xx - disc[1]) ** 2 <= (disc[2] + 2) ** 2  # a 2-pixel tolerance
    maps: dict[str, Tensor] = {}
    pictures = [picture]
    for name, explainer in explainers.items():
        start = time.perf_counter()
        maps[name] = explainer.explain(picture[None], target=1)[0]
        peak = divmod(int(maps[name].argmax()), size)
        hit = bool(on_disc[peak])
        pictures.append(overlay(picture[None], maps[name][None])[0])
        save_png(pictures[-1], args.out_dir / f"{name}.png")
        print(f"{name:>12}: {time.perf_counter() - start:4.1f} s, maximum at {peak}: {'on the yellow disc' if hit else 'NOT on the yellow disc'}")
    gap = torch.ones(3, size, 4)
    save_png(torch.cat([t for p in pictures for t in (p, gap)][:-1], dim=2), args.out_dir / "grid.png")
    print(f"wrote {args.out_dir}/grid.png: input | {' | '.join(maps)}")
    return {"maps": maps, "p_disc": p_disc, "disc": disc, "out_dir": args.out_dir}


if __name__ == "__main__":
    main()
