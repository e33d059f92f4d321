"""A plain folder of images, one sub-folder per class (``torchvision.datasets.ImageFolder`` layout), without boxes."""

from __future__ import annotations

import os

import numpy as np

from ._base import IMAGE_EXTENSIONS, AnnotatedDataset, Entry, SizeLike
from .classes import ClassesLike, Unknown
from .items import DatasetError

__all__ = ["FolderDataset"]


class FolderDataset(AnnotatedDataset):
    """``root/<class_name>/*.png|jpg|...``: one item per image, labelled by its folder.

    Nothing says where the object is: items have ``mask=None`` and no boxes (``[0, 4]``), and
    :func:`~pami_lightning.data.collate` gives them an all-False mask, so the pointing game skips
    them (they count for insertion / deletion only). Images are found in every sub-folder, at any
    depth, in sorted order; files directly in ``root`` are ignored.

    Args:
        root: the folder holding one sub-folder per class.
        classes: class names → output indices (:func:`~pami_lightning.data.resolve_classes`);
            default: the sub-folder names, sorted (``ImageFolder``'s indices).
        size: resize images to ``(H, W)`` or ``(size, size)``; default None.
        unknown: a sub-folder that ``classes`` lacks: ``"error"`` (default) or ``"skip"`` its images with a warning.

    Raises:
        DatasetError: a bad path, no class folder, no image, unknown classes (one line).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        classes: ClassesLike | None = None,
        size: SizeLike | None = None,
        unknown: Unknown = "error",
    ) -> None:
        super().__init__(size)
        self.root = os.fspath(root)
        if not os.path.isdir(self.root):
            raise DatasetError(f"{self.root}: no such folder")
        folders = sorted(d.name for d in os.scandir(self.root) if d.is_dir() and not d.name.startswith("."))
        if not folders:
            raise DatasetError(f"{self.root}: no class sub-folders (expected root/<class_name>/<image>)")
        index = self._class_index(classes, folders, unknown)
        for name in folders:
            files = []
            for dirpath, _, names in sorted(os.walk(os.path.join(self.root, name))):
                files += [os.path.join(dirpath, f) for f in sorted(names) if f.lower().endswith(IMAGE_EXTENSIONS)]
            if not files:
                continue
            label = index.index(name, count=len(files))
            if label is None:
                continue
            for path in files:
                rel = os.path.relpath(path, self.root).replace(os.sep, "/")
                self.entries.append(Entry(path=path, id=rel, label=label, class_name=name, boxes=np.zeros((0, 4)), size=None, has_mask=False))
        index.check()
        if not self.entries:
            raise DatasetError(f"{self.root}: no image files ({', '.join(IMAGE_EXTENSIONS)}) in its class folders")
