"""What the readers share: image loading, resizing, the (image, class) pairing rule, the ``Dataset`` itself."""

from __future__ import annotations

import operator
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import Dataset

from ..metrics.functional.boxes import boxes_to_mask
from .classes import ClassesLike, ClassIndex, Unknown, resolve_classes
from .items import DatasetError, Item

__all__ = ["SizeLike", "IMAGE_EXTENSIONS", "AnnotatedObject", "Entry", "AnnotatedDataset", "parse_size", "load_image", "pair_entries", "find_file", "resize_mask"]

#: ``(H, W)`` or one int for a square ``(size, size)``.
SizeLike = Union[int, Sequence[int]]

#: Image files the readers recognise (lower case), as ``torchvision.datasets.ImageFolder``.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def parse_size(size: SizeLike | None) -> tuple[int, int] | None:
    """``size`` as ``(H, W)``: an int is a square; None stays None (images keep their size)."""
    if size is None:
        return None
    try:
        if isinstance(size, bool) or (isinstance(size, Sequence) and any(isinstance(s, bool) for s in size)):
            raise TypeError
        hw = (operator.index(size), operator.index(size)) if not isinstance(size, Sequence) else tuple(map(operator.index, size))
    except TypeError:
        raise ValueError(f"size must be an int or (H, W); got {size!r}") from None
    if len(hw) != 2:
        raise ValueError(f"size must be an int or (H, W); got {size!r}")
    if min(hw) < 1:
        raise ValueError(f"size must be positive; got {size!r}")
    return (hw[0], hw[1])


def load_image(path: str) -> Tensor:
    """The image at ``path`` as uint8 ``[3, H, W]`` RGB (grey, palette and alpha images converted).

    EXIF orientation is not applied: annotations refer to the stored pixel grid.
    """
    try:
        with Image.open(path) as im:
            rgb = np.asarray(im.convert("RGB"))
    except FileNotFoundError:
        raise DatasetError(f"{path}: image file not found") from None
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise DatasetError(f"{path}: cannot read the image ({e})") from None
    return torch.from_numpy(rgb.copy()).permute(2, 0, 1)


def find_file(directory: str, names: Sequence[str], cache: dict[str, dict[str, str]]) -> str | None:
    """The first of ``names`` found in ``directory``: as a relative path, else by file name or stem anywhere below it.

    The recursive index (file name and stem → path) is built once per directory into ``cache``;
    it lets ImageNet's validation images sit flat or in class folders, and finds ``<filename>``
    values written without their extension.
    """
    for n in names:
        p = os.path.join(directory, n)
        if os.path.isfile(p):
            return p
    index = cache.get(directory)
    if index is None:
        index = {}
        for dirpath, _, files in sorted(os.walk(directory)):
            for f in sorted(files):
                if f.lower().endswith(IMAGE_EXTENSIONS):
                    p = os.path.join(dirpath, f)
                    index.setdefault(f, p)
                    index.setdefault(os.path.splitext(f)[0], p)
        cache[directory] = index
    for n in names:
        base = os.path.basename(n)
        for key in (base, os.path.splitext(base)[0]):
            if key in index:
                return index[key]
    return None


@dataclass
class AnnotatedObject:
    """One annotated object, as a reader parses it.

    ``box`` is ``(x1, y1, x2, y2)`` 0-based continuous in the original image; ``area`` ranks
    classes for ``one_per_image``; ``counts``: the object makes its class an item (False for an
    object that joins the mask only, e.g. a VOC difficult object under ``difficult="torchray"``);
    ``segmentation``: a COCO polygon list or RLE, None for a box.
    """

    name: str
    box: tuple[float, float, float, float]
    area: float
    counts: bool = True
    segmentation: Any = None


@dataclass
class Entry:
    """One item before its image is read: boxes in the original image, ``size`` ``(H, W)`` the annotation states."""

    path: str
    id: str
    label: int
    class_name: str
    boxes: np.ndarray  # float64 [K, 4] xyxy, original pixels
    size: tuple[int, int] | None
    segmentations: tuple[Any, ...] | None = None  # COCO: one per box (None where the box is the mask)
    has_mask: bool = True


def pair_entries(path: str, id: str, size: tuple[int, int] | None, objects: Iterable[AnnotatedObject], classes: ClassIndex, one_per_image: bool) -> list[Entry]:
    """The items of one image: one per class that has an object with ``counts``, in label order.

    ``one_per_image``: only the class of largest total ``area`` (ties: the smaller label).
    Objects of unknown classes are left to ``classes`` (error or skip).
    """
    groups: dict[int, list[AnnotatedObject]] = {}
    for obj in objects:
        label = classes.index(obj.name)
        if label is not None:
            groups.setdefault(label, []).append(obj)
    labels = sorted(k for k, objs in groups.items() if any(o.counts for o in objs))
    if one_per_image and labels:
        labels = [max(labels, key=lambda k: (sum(o.area for o in groups[k]), -k))]
    entries = []
    for k in labels:
        objs = groups[k]
        segs = tuple(o.segmentation for o in objs)
        entries.append(
            Entry(
                path=path,
                id=id,
                label=k,
                class_name=classes.names[k],
                size=size,
                boxes=np.array([o.box for o in objs], dtype=np.float64).reshape(-1, 4),
                segmentations=segs if any(s is not None for s in segs) else None,
            )
        )
    return entries


class AnnotatedDataset(Dataset[Item]):
    """Base of the readers: a list of :class:`Entry`, read and resized on access.

    Resizing (``size``): the image by bilinear interpolation with antialiasing
    (``torch.nn.functional.interpolate(..., antialias=True)`` on the float image, as
    ``torchvision``'s tensor ``resize``); boxes scaled exactly, ``x * W_new / W_old`` and
    ``y * H_new / H_old``, then clipped to the image; a box mask drawn from the scaled boxes (pixel
    centres inside the box — for integer boxes the same as resizing the original mask by
    ``nearest-exact``); an instance mask resized by ``nearest-exact``.
    """

    entries: list[Entry]
    classes: list[str]

    def __init__(self, size: SizeLike | None = None) -> None:
        self.size = parse_size(size)
        self.entries = []
        self.classes = []

    def _class_index(self, classes: ClassesLike | None, found: Iterable[str], unknown: Unknown) -> ClassIndex:
        self.classes = resolve_classes(classes, found)
        source = "the dataset's classes" if classes is None else f"classes {os.fspath(classes)!r}" if isinstance(classes, (str, os.PathLike)) else "the classes list"
        return ClassIndex(self.classes, unknown, source)

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[Item]:
        for i in range(len(self)):
            yield self[i]

    @property
    def labels(self) -> list[int]:
        """The label of every item, without reading an image (per-class counts, samplers)."""
        return [e.label for e in self.entries]

    @property
    def num_images(self) -> int:
        """How many distinct images the items come from."""
        return len({e.path for e in self.entries})

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self)} items from {self.num_images} images, {len(self.classes)} classes, size={self.size})"

    def __getitem__(self, index: int) -> Item:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        index = index % len(self)
        e = self.entries[index]
        image = load_image(e.path)
        h, w = image.shape[-2:]
        if e.size is not None and e.size != (h, w):
            raise DatasetError(f"{e.path}: the annotation says {e.size[1]}x{e.size[0]} (WxH) but the image is {w}x{h}")
        out = self.size or (h, w)
        boxes = torch.from_numpy(e.boxes) * torch.tensor([out[1] / w, out[0] / h] * 2, dtype=torch.float64)
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, out[1])
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, out[0])
        mask = self._mask(e, boxes, (h, w), out) if e.has_mask else None
        pixels = image.float().div_(255)
        if out != (h, w):
            pixels = F.interpolate(pixels[None], size=out, mode="bilinear", align_corners=False, antialias=True)[0].clamp_(0, 1)
        return {
            "image": pixels,
            "label": e.label,
            "mask": mask,
            "boxes": boxes.float(),
            "index": index,
            "id": e.id,
            "class_name": e.class_name,
            "path": e.path,
        }

    def _mask(self, entry: Entry, boxes: Tensor, size: tuple[int, int], out: tuple[int, int]) -> Tensor:
        """The class mask ``[*out]``; readers with instance masks override it."""
        return boxes_to_mask(boxes, out)


def resize_mask(mask: Tensor, out: tuple[int, int]) -> Tensor:
    """A bool mask ``[H, W]`` resized to ``out`` by ``nearest-exact`` (each output pixel takes the input pixel under its centre)."""
    if tuple(mask.shape) == out:
        return mask
    return F.interpolate(mask[None, None].float(), size=out, mode="nearest-exact")[0, 0] > 0.5
