"""Pascal VOC XML annotations (also the format of ImageNet's validation boxes) as a dataset of (image, class) items."""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from typing import Literal

from ._base import AnnotatedDataset, AnnotatedObject, SizeLike, find_file, pair_entries
from .classes import ClassesLike, Unknown
from .items import DatasetError

__all__ = ["VOCDataset", "Difficult", "voc_box_to_xyxy", "parse_voc_xml"]

#: How VOC ``<difficult>1</difficult>`` objects count: see :class:`VOCDataset`.
Difficult = Literal["torchray", "drop", "keep"]


def voc_box_to_xyxy(xmin: float, ymin: float, xmax: float, ymax: float) -> tuple[float, float, float, float]:
    """A VOC ``<bndbox>`` (1-based, inclusive ends) as 0-based continuous ``(x1, y1, x2, y2)``.

    VOC's pixel ``i`` (1-based) is the continuous interval ``[i - 1, i)``: ``xmin=1`` is the first
    column, and the inclusive end ``xmax`` ends at ``xmax``. Only the start moves.

    Example:
        >>> voc_box_to_xyxy(1, 1, 4, 3)  # columns 0..3, rows 0..2: mask[0:3, 0:4]
        (0.0, 0.0, 4.0, 3.0)
    """
    return (float(xmin) - 1.0, float(ymin) - 1.0, float(xmax), float(ymax))


def _text(node: ET.Element, tag: str, where: str) -> str:
    child = node.find(tag)
    if child is None or child.text is None or not child.text.strip():
        raise DatasetError(f"{where} has no <{tag}>")
    return child.text.strip()


def _number(node: ET.Element, tag: str, where: str) -> float:
    text = _text(node, tag, where)
    try:
        return float(text)
    except ValueError:
        raise DatasetError(f"{where}: <{tag}> is {text!r}, not a number") from None


def parse_voc_xml(path: str) -> tuple[str | None, tuple[int, int] | None, list[tuple[AnnotatedObject, bool]]]:
    """One VOC / ImageNet XML file: ``(<filename> or None, (H, W) from <size> or None, [(object, difficult)])``.

    Boxes are converted by :func:`voc_box_to_xyxy`; an object's ``area`` is its box's pixel count.

    Raises:
        DatasetError: unreadable or invalid XML, an object without name or box, a box that ends
            before it starts (one line, naming the file and the object).
    """
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        raise DatasetError(f"{path}: not valid XML ({e})") from None
    except OSError as e:
        raise DatasetError(f"{path}: cannot read it ({e.strerror or e})") from None
    if root.tag != "annotation":
        raise DatasetError(f"{path}: root element is <{root.tag}>, not VOC's <annotation>")
    fn = root.find("filename")
    filename = fn.text.strip() if fn is not None and fn.text and fn.text.strip() else None
    size = None
    sz = root.find("size")
    if sz is not None and sz.find("width") is not None and sz.find("height") is not None:
        w, h = int(_number(sz, "width", f"{path}: <size>")), int(_number(sz, "height", f"{path}: <size>"))
        size = (h, w) if w > 0 and h > 0 else None  # some exports write 0x0: then trust the image
    objects = []
    for i, obj in enumerate(root.findall("object")):  # direct children: a person's <part>s are not objects
        where = f"{path}: object {i}"
        name = _text(obj, "name", where)
        where = f"{path}: object {i} ({name!r})"
        bb = obj.find("bndbox")
        if bb is None:
            raise DatasetError(f"{where} has no <bndbox>")
        x1, y1, x2, y2 = voc_box_to_xyxy(*(_number(bb, t, where) for t in ("xmin", "ymin", "xmax", "ymax")))
        if x2 <= x1 or y2 <= y1:
            raise DatasetError(f"{where}: box xmin..xmax={x1 + 1:g}..{x2:g}, ymin..ymax={y1 + 1:g}..{y2:g} ends before it starts")
        d = obj.find("difficult")
        difficult = d is not None and (d.text or "0").strip() not in ("0", "", "false", "False")
        objects.append((AnnotatedObject(name=name, box=(x1, y1, x2, y2), area=(x2 - x1) * (y2 - y1)), difficult))
    return filename, size, objects


class VOCDataset(AnnotatedDataset):
    """Images with Pascal VOC XML boxes: the VOC layout, or a flat folder of XMLs as ImageNet's validation boxes.

    Layouts (chosen by what ``root`` holds):

    - **VOC**: ``root/Annotations/*.xml``, images in ``root/JPEGImages`` (or ``images``), the ids
      of ``split`` read from ``root/ImageSets/Main/<split>.txt`` (default: every XML).
    - **Flat** (ImageNet): ``root/*.xml``, images in ``images`` (default ``root``), flat or in
      class sub-folders.

    The image of an XML is its ``<filename>`` in the image folder (also when written without its
    extension, as ImageNet does), else the XML's stem with an image extension.

    Coordinates: VOC boxes are 1-based with inclusive ends; items hold them 0-based continuous
    (:func:`voc_box_to_xyxy`: ``xmin=1, xmax=4`` covers columns 0..3).

    Items: one per (image, class present) pair, in image order then label order — TorchRay's
    pointing game explains every class of an image. ``one_per_image=True`` keeps one class per
    image, the one with the largest total box area (ties: the smaller label). An image without
    objects gives no item.

    Args:
        root: the VOC folder (holding ``Annotations/``) or a folder of XML files.
        split: VOC layout only: the ``ImageSets/Main/<split>.txt`` list (``"test"``, ``"val"``...).
        images: the image folder (default ``root/JPEGImages``, or ``root`` for the flat layout).
        classes: class names → output indices (:func:`~pami_lightning.data.resolve_classes`);
            default: the names found in the XMLs (difficult objects included), sorted.
        size: resize images (and boxes, masks) to ``(H, W)`` or ``(size, size)``; default None.
        one_per_image: one item per image instead of one per class present (default False).
        difficult: ``"torchray"`` (default): TorchRay's VOC pointing game — a class whose objects
            are all difficult gives no item, but difficult objects of an item's class stay in its
            boxes and mask. ``"drop"``: difficult objects are removed (VOC's detection protocol).
            ``"keep"``: difficult objects count as any other.
        unknown: a class name that ``classes`` lacks: ``"error"`` (default, names them) or ``"skip"``
            the objects with a warning.

    Raises:
        DatasetError: a bad path, invalid XML, a missing image file, unknown classes (one line).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str | None = None,
        images: str | os.PathLike[str] | None = None,
        classes: ClassesLike | None = None,
        size: SizeLike | None = None,
        one_per_image: bool = False,
        difficult: Difficult = "torchray",
        unknown: Unknown = "error",
    ) -> None:
        super().__init__(size)
        if difficult not in ("torchray", "drop", "keep"):
            raise ValueError(f'difficult must be "torchray", "drop" or "keep"; got {difficult!r}')
        self.root = os.fspath(root)
        if not os.path.isdir(self.root):
            raise DatasetError(f"{self.root}: no such folder")
        ann_dir = os.path.join(self.root, "Annotations")
        voc_layout = os.path.isdir(ann_dir)
        if not voc_layout:
            ann_dir = self.root
            if split is not None:
                raise DatasetError(f"{self.root}: split={split!r} needs the VOC layout (Annotations/, ImageSets/Main/), and this folder has no Annotations/")
        self.images = os.fspath(images) if images is not None else os.path.join(self.root, "JPEGImages") if voc_layout else self.root
        if not os.path.isdir(self.images):
            raise DatasetError(f"{self.images}: no such image folder")
        xml_files: dict[str, str] = {}
        if split is not None:
            ids_file = os.path.join(self.root, "ImageSets", "Main", f"{split}.txt")
            try:
                with open(ids_file, encoding="utf-8") as f:
                    ids = [line.split()[0] for line in f if line.strip()]
            except OSError:
                raise DatasetError(f"{ids_file}: split file not found") from None
        else:
            xml_files = {os.path.splitext(f)[0]: f for f in os.listdir(ann_dir) if f.lower().endswith(".xml")}
            ids = sorted(xml_files)
        if not ids:
            raise DatasetError(f"{ann_dir}: no .xml annotation files" + ("" if voc_layout else " (and no Annotations/ folder: give the VOC folder that holds it)"))

        parsed = []
        for i in ids:
            xml = os.path.join(ann_dir, xml_files.get(i, f"{i}.xml"))
            if not os.path.isfile(xml):
                raise DatasetError(f"{xml}: annotation file not found (listed in split {split!r})")
            parsed.append((i, xml, *parse_voc_xml(xml)))
        index = self._class_index(classes, (o.name for *_, objs in parsed for o, _ in objs), unknown)

        cache: dict[str, dict[str, str]] = {}
        for i, xml, filename, hw, objs in parsed:
            names = [filename] if filename else []
            names += [f"{i}{ext}" for ext in (".jpg", ".JPEG", ".jpeg", ".png")]
            path = find_file(self.images, names, cache)
            if path is None:
                said = f"<filename>{filename}</filename>" if filename else f"{i}.jpg"
                raise DatasetError(f"{xml}: image file {said} not found in {self.images}")
            kept = []
            for obj, diff in objs:
                if diff and difficult == "drop":
                    continue
                obj.counts = not (diff and difficult == "torchray")
                kept.append(obj)
            self.entries += pair_entries(path, i, hw, kept, index, one_per_image)
        index.check()
