"""Annotated image datasets for dataset-scale explanation and scoring: Pascal VOC / ImageNet XML, COCO, image folders.

Every reader is a plain ``torch.utils.data.Dataset`` of :class:`Item` dicts — one per (image,
explained class) pair — batched by :func:`collate`::

    from torch.utils.data import DataLoader
    from pami_lightning.data import VOCDataset, collate

    ds = VOCDataset("VOC2007", split="test", size=224)
    loader = DataLoader(ds, batch_size=32, collate_fn=collate)

Class names map to the model's output indices through ``classes`` (a file, a comma list or a
sequence; default: the dataset's class names, sorted) — see :func:`resolve_classes`.
"""

from .classes import ClassesLike, resolve_classes
from .coco import CocoDataset, coco_box_to_xyxy, segmentation_to_mask
from .folder import FolderDataset
from .items import DatasetError, Item, ItemBatch, collate
from .voc import VOCDataset, parse_voc_xml, voc_box_to_xyxy

__all__ = [
    "VOCDataset",
    "CocoDataset",
    "FolderDataset",
    "Item",
    "ItemBatch",
    "collate",
    "DatasetError",
    "ClassesLike",
    "resolve_classes",
    "voc_box_to_xyxy",
    "coco_box_to_xyxy",
    "parse_voc_xml",
    "segmentation_to_mask",
]
