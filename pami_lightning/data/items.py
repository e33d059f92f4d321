"""What the datasets of :mod:`pami_lightning.data` yield (:class:`Item`) and how items batch (:func:`collate`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypedDict

import torch
from torch import Tensor

__all__ = ["Item", "ItemBatch", "DatasetError", "collate"]


class DatasetError(ValueError):
    """A dataset's files are missing or malformed; the message is one line naming the file and the fault.

    A command line prints it as it is and exits with status 2.
    """


class Item(TypedDict):
    """One (image, explained class) pair.

    Keys:
        image: float32 ``[3, H, W]`` in ``[0, 1]`` (RGB), resized to the dataset's ``size`` if given.
            Not normalised: normalisation belongs to the model call's ``preprocess`` (maskers blur
            and fill in image space).
        label: the explained class, an index into the dataset's ``classes`` (the model's output).
        mask: bool ``[H, W]``, the union of the boxes (VOC, ImageNet XML) or instance masks (COCO)
            of the label's class: the pointing game's target. None where the dataset has no
            annotations (:class:`~pami_lightning.data.FolderDataset`).
        boxes: float32 ``[K, 4]``, the class's boxes as ``(x1, y1, x2, y2)`` in pixels of the
            (resized) image, 0-based and continuous: pixel ``(row r, col c)`` is the square
            ``[c, c + 1) x [r, r + 1)``, so an integer box covers ``mask[y1:y2, x1:x2]``. ``[0, 4]``
            without annotations.
        index: the item's position in the dataset (``dataset[index]``).
        id: the image's id: the annotation / image file stem (VOC, ImageNet), the COCO image id,
            the path relative to the root (folder). Several items share an id when an image holds
            several classes; ``(id, label)`` is unique.
        class_name: ``classes[label]``.
        path: the image file.
    """

    image: Tensor
    label: int
    mask: Tensor | None
    boxes: Tensor
    index: int
    id: str
    class_name: str
    path: str


class ItemBatch(TypedDict):
    """A batch of :class:`Item` as :func:`collate` makes it (``B`` items)."""

    image: Tensor  #: float32 [B, 3, H, W]
    label: Tensor  #: int64 [B]
    mask: Tensor  #: bool [B, H, W]; all False for an item without mask (the pointing game skips it)
    boxes: list[Tensor]  #: B tensors [K_i, 4] (K varies per item)
    index: Tensor  #: int64 [B]
    id: list[str]
    class_name: list[str]
    path: list[str]


def collate(items: Sequence[Item]) -> ItemBatch:
    """Batch items for a ``DataLoader(collate_fn=collate)``.

    Images (and masks) are stacked, so every item must have the same size: give the dataset a
    ``size=`` when its images differ. An item without mask (``mask=None``) gets an all-False mask,
    which :class:`~pami_lightning.metrics.PointingGame` skips (not counted, as TorchRay skips an
    empty mask). Boxes stay a list, one ``[K_i, 4]`` tensor per item.

    Example:
        >>> import torch
        >>> item = {"image": torch.zeros(3, 2, 2), "label": 1, "mask": None, "boxes": torch.zeros(0, 4),
        ...         "index": 0, "id": "a", "class_name": "dog", "path": "a.png"}
        >>> batch = collate([item, {**item, "index": 1, "mask": torch.ones(2, 2, dtype=torch.bool)}])
        >>> batch["image"].shape, batch["label"].tolist(), batch["mask"].sum().item()
        (torch.Size([2, 3, 2, 2]), [1, 1], 4)
    """
    if len(items) == 0:
        raise ValueError("collate: no items")
    shapes = {tuple(it["image"].shape) for it in items}
    if len(shapes) > 1:
        raise ValueError(f"collate: images of different sizes {sorted(shapes)}; give the dataset size=(H, W) so that all are resized alike")
    image = torch.stack([it["image"] for it in items])
    h, w = image.shape[-2:]
    masks = [it["mask"] if it["mask"] is not None else torch.zeros(h, w, dtype=torch.bool) for it in items]
    return {
        "image": image,
        "label": torch.tensor([it["label"] for it in items], dtype=torch.long),
        "mask": torch.stack(masks),
        "boxes": [it["boxes"] for it in items],
        "index": torch.tensor([it["index"] for it in items], dtype=torch.long),
        "id": [it["id"] for it in items],
        "class_name": [it["class_name"] for it in items],
        "path": [it["path"] for it in items],
    }
