"""COCO instances JSON (boxes and instance masks) as a dataset of (image, class) items."""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from types import ModuleType
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from ..metrics.functional.boxes import boxes_to_mask
from ._base import AnnotatedDataset, AnnotatedObject, Entry, SizeLike, find_file, pair_entries, resize_mask
from .classes import ClassesLike, Unknown
from .items import DatasetError

__all__ = ["CocoDataset", "coco_box_to_xyxy", "segmentation_to_mask"]


def _mask_api() -> ModuleType:
    # Imported lazily: pycocotools is an optional dependency, needed only for instance masks.
    try:
        from pycocotools import mask
    except ImportError as e:
        raise ImportError("COCO instance masks need pycocotools: pip install pycocotools (or CocoDataset(mask_from='boxes') for box masks)") from e
    return mask


def coco_box_to_xyxy(box: Sequence[float]) -> tuple[float, float, float, float]:
    """A COCO ``bbox`` ``[x, y, width, height]`` (0-based, continuous) as ``(x1, y1, x2, y2)``.

    Example:
        >>> coco_box_to_xyxy([2, 1, 4, 3])
        (2.0, 1.0, 6.0, 4.0)
    """
    x, y, w, h = (float(v) for v in box)
    return (x, y, x + w, y + h)


def segmentation_to_mask(segmentation: Any, height: int, width: int) -> np.ndarray | None:
    """A COCO ``segmentation`` as a bool mask ``[height, width]``, as ``pycocotools.coco.COCO.annToMask``.

    Polygons (a list of ``[x0, y0, x1, y1, ...]``), uncompressed RLE (``counts`` a list, as crowd
    annotations are written) and compressed RLE (``counts`` a string). Polygons of fewer than
    three points are ignored; None when nothing is left (the caller falls back to the box).

    Raises:
        DatasetError: an RLE whose ``size`` is not ``[height, width]``, or a malformed segmentation.
    """
    api = _mask_api()
    try:
        if isinstance(segmentation, list):
            polygons = [p for p in segmentation if isinstance(p, list) and len(p) >= 6]
            if not polygons:
                return None
            rle = api.merge(api.frPyObjects(polygons, height, width))
        elif isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation:
            if list(segmentation["size"]) != [height, width]:
                raise DatasetError(f"RLE size {list(segmentation['size'])} is not the image's [height, width] = [{height}, {width}]")
            rle = api.frPyObjects(segmentation, height, width) if isinstance(segmentation["counts"], list) else segmentation
        else:
            raise DatasetError(f"segmentation is neither polygons nor RLE ({type(segmentation).__name__})")
        with warnings.catch_warnings():
            # pycocotools 2.0.x's decoder warns under numpy 2 on every call (its own __array__): not the user's concern.
            warnings.filterwarnings("ignore", message="__array__ implementation", category=DeprecationWarning)
            return np.asarray(api.decode(rle), dtype=bool)
    except DatasetError:
        raise
    except (TypeError, ValueError, IndexError) as e:  # pycocotools' own errors on malformed input
        raise DatasetError(f"malformed segmentation ({e})") from None


class CocoDataset(AnnotatedDataset):
    """Images with COCO instance annotations (``instances_*.json``): boxes and instance masks.

    Items: one per (image, class present) pair, in image-id order then label order (TorchRay's
    pointing game explains every class of an image); ``one_per_image=True`` keeps the class of
    largest total ``area`` (the annotations' ``area`` field, the mask's pixel count; ties: the
    smaller label). Images without (kept) annotations give no item.

    Masks: the union of the class's instance masks (polygons and RLE, decoded by
    ``pycocotools`` as ``COCO.annToMask``), or of its boxes with ``mask_from="boxes"`` (and for an
    annotation without segmentation). Boxes: ``bbox`` ``[x, y, w, h]`` (0-based, continuous)
    becomes ``(x, y, x + w, y + h)``.

    Crowd annotations (``iscrowd=1``, an RLE over a crowd of the class's objects) count as the
    object by default, as TorchRay's COCO pointing game: pointing into a crowd of people is
    pointing at people. ``keep_crowd=False`` drops them (an image whose class is only a crowd then
    gives no item for it).

    Class names come from ``categories`` (their ids need not be contiguous, and are not in COCO);
    the default ``classes`` is every category name, sorted. A model trained in category-id order
    (the usual 80-class order) needs ``classes=dataset_order`` — :attr:`names_by_id` lists them.

    Args:
        annotations: the instances JSON file.
        images: the folder of the images (``file_name`` is looked up in it, then by base name below it).
        classes: class names → output indices (:func:`~pami_lightning.data.resolve_classes`);
            default: the category names, sorted.
        size: resize images (and boxes, masks) to ``(H, W)`` or ``(size, size)``; default None.
        one_per_image: one item per image instead of one per class present (default False).
        keep_crowd: crowd annotations count as the object (default True).
        mask_from: ``"segmentation"`` (default; needs ``pycocotools``) or ``"boxes"``.
        unknown: a category that ``classes`` lacks: ``"error"`` (default) or ``"skip"`` with a warning.

    Raises:
        DatasetError: a bad path, invalid JSON, dangling ids, a missing image file (one line).
        ImportError: ``mask_from="segmentation"`` without ``pycocotools``.
    """

    def __init__(
        self,
        annotations: str | os.PathLike[str],
        images: str | os.PathLike[str],
        classes: ClassesLike | None = None,
        size: SizeLike | None = None,
        one_per_image: bool = False,
        keep_crowd: bool = True,
        mask_from: Literal["segmentation", "boxes"] = "segmentation",
        unknown: Unknown = "error",
    ) -> None:
        super().__init__(size)
        if mask_from not in ("segmentation", "boxes"):
            raise ValueError(f'mask_from must be "segmentation" or "boxes"; got {mask_from!r}')
        if mask_from == "segmentation":
            _mask_api()  # fail now, not in a data-loader worker hours later
        self.mask_from = mask_from
        self.annotations = ann = os.fspath(annotations)
        self.images = os.fspath(images)
        if not os.path.isdir(self.images):
            raise DatasetError(f"{self.images}: no such image folder")
        try:
            with open(ann, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            raise DatasetError(f"{ann}: annotation file not found") from None
        except (OSError, UnicodeDecodeError) as e:
            raise DatasetError(f"{ann}: cannot read it ({e})") from None
        except json.JSONDecodeError as e:
            raise DatasetError(f"{ann}: not valid JSON ({e})") from None
        for key in ("images", "annotations", "categories"):
            if not isinstance(data, dict) or not isinstance(data.get(key), list):
                raise DatasetError(f"{ann}: no {key!r} list (not a COCO instances file?)")
        try:
            self.names_by_id: dict[int, str] = {int(c["id"]): str(c["name"]) for c in data["categories"]}
            images_by_id = {int(im["id"]): im for im in data["images"]}
        except (KeyError, TypeError, ValueError) as e:
            raise DatasetError(f"{ann}: a category or image lacks its id/name ({e!r})") from None
        if len(set(self.names_by_id.values())) < len(self.names_by_id):
            raise DatasetError(f"{ann}: two categories share a name")
        index = self._class_index(classes, self.names_by_id.values(), unknown)

        objects: dict[int, list[AnnotatedObject]] = {}
        for a in data["annotations"]:
            where = f"{ann}: annotation {a.get('id', '?')}" if isinstance(a, dict) else f"{ann}: an annotation"
            try:
                image_id, cat, bbox = int(a["image_id"]), int(a["category_id"]), a["bbox"]
                box = coco_box_to_xyxy(bbox)
            except (KeyError, TypeError, ValueError):
                raise DatasetError(f"{where} lacks image_id, category_id or a bbox [x, y, w, h]") from None
            if image_id not in images_by_id:
                raise DatasetError(f"{where} refers to image_id {image_id}, which 'images' lacks")
            if cat not in self.names_by_id:
                raise DatasetError(f"{where} refers to category_id {cat}, which 'categories' lacks")
            if box[2] < box[0] or box[3] < box[1]:
                raise DatasetError(f"{where}: bbox {bbox} has a negative width or height")
            if a.get("iscrowd", 0) and not keep_crowd:
                continue
            seg = a.get("segmentation") if mask_from == "segmentation" else None
            area = float(a.get("area", (box[2] - box[0]) * (box[3] - box[1])))
            objects.setdefault(image_id, []).append(AnnotatedObject(name=self.names_by_id[cat], box=box, area=area, segmentation=(a.get("id"), seg) if seg else None))

        cache: dict[str, dict[str, str]] = {}
        for image_id in sorted(images_by_id):
            if image_id not in objects:
                continue
            im = images_by_id[image_id]
            name = str(im.get("file_name", ""))
            path = find_file(self.images, [name], cache) if name else None
            if path is None:
                raise DatasetError(f"{ann}: image {image_id}'s file {name!r} not found in {self.images}")
            hw = (int(im["height"]), int(im["width"])) if "height" in im and "width" in im else None
            self.entries += pair_entries(path, str(image_id), hw, objects[image_id], index, one_per_image)
        index.check()

    def _mask(self, entry: Entry, boxes: Tensor, size: tuple[int, int], out: tuple[int, int]) -> Tensor:
        if entry.segmentations is None:
            return super()._mask(entry, boxes, size, out)
        h, w = size
        full = torch.zeros(h, w, dtype=torch.bool)
        for box, seg in zip(entry.boxes, entry.segmentations, strict=True):
            m = None
            if seg is not None:
                ann_id, segmentation = seg
                try:
                    m = segmentation_to_mask(segmentation, h, w)
                except DatasetError as e:
                    raise DatasetError(f"{self.annotations}: annotation {ann_id}: {e}") from None
            # An annotation without a usable segmentation is its box.
            full |= torch.from_numpy(m) if m is not None else boxes_to_mask(torch.from_numpy(box), size)
        return resize_mask(full, out)
