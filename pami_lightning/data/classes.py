"""Class names → model output indices: the ``classes`` argument of every dataset (``--classes`` on the command line)."""

from __future__ import annotations

import os
import warnings
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Literal, Union

from .items import DatasetError

__all__ = ["ClassesLike", "Unknown", "resolve_classes", "ClassIndex"]

#: A path to a file with one class name per line, a comma-separated list, or a sequence of names.
ClassesLike = Union[str, "os.PathLike[str]", Sequence[str]]

#: What to do with an annotated class that ``classes`` does not name: ``"error"`` or ``"skip"`` (with a warning).
Unknown = Literal["error", "skip"]


def resolve_classes(classes: ClassesLike | None, found: Iterable[str]) -> list[str]:
    """The class list: index ``i`` is the model's output ``i``.

    Args:
        classes: None (default): the names ``found`` in the dataset, sorted (Python string order,
            as ``torchvision.datasets.ImageFolder``; for the 20 VOC classes that is the usual VOC
            order, and for ImageNet synset ids the usual 1000-class order — but only when every
            class occurs: give the model's list otherwise). A path to an existing file: one name
            per line (surrounding spaces and blank lines ignored; names may contain spaces, e.g.
            ``traffic light``). Another string: comma-separated names. A sequence: the names.
        found: the class names the dataset's annotations use (duplicates allowed).

    Returns:
        the names, in output order (no duplicates).

    Raises:
        DatasetError: an empty list, a duplicate name, or a string that looks like a path to a
            file that does not exist.

    Example:
        >>> resolve_classes("dog, cat", ["cat"])
        ['dog', 'cat']
        >>> resolve_classes(None, ["dog", "cat", "dog"])
        ['cat', 'dog']
    """
    if classes is None:
        names = sorted(set(found))
        source = "the dataset"
    elif isinstance(classes, os.PathLike) or (isinstance(classes, str) and os.path.isfile(classes)):
        path = os.fspath(classes)
        try:
            with open(path, encoding="utf-8") as f:
                names = [line.strip() for line in f if line.strip()]
        except OSError as e:
            raise DatasetError(f"classes file {path}: cannot read it ({e.strerror or e})") from None
        source = f"classes file {path}"
    elif isinstance(classes, str):
        if "," not in classes and (os.sep in classes or classes.endswith(".txt")):
            # Looks like a path: a typo should not become a one-class list.
            raise DatasetError(f"classes file {classes} not found (give a file with one name per line, or a comma list)")
        names = [c.strip() for c in classes.split(",") if c.strip()]
        source = "the classes list"
    else:
        names = [str(c).strip() for c in classes]
        source = "the classes list"
    if not names:
        raise DatasetError(f"no class names in {source}")
    dup = [n for n, k in Counter(names).items() if k > 1]
    if dup:
        raise DatasetError(f"{source} names {dup[0]!r} more than once")
    return names


class ClassIndex:
    """Maps annotated class names to indices of ``names``; unknown names raise or are skipped.

    Call :meth:`index` for every annotated object, then :meth:`check` once: it raises (``"error"``)
    or warns (``"skip"``) about the unknown names seen, with counts.
    """

    def __init__(self, names: Sequence[str], unknown: Unknown = "error", source: str = "classes") -> None:
        if unknown not in ("error", "skip"):
            raise ValueError(f'unknown must be "error" or "skip"; got {unknown!r}')
        self.names = list(names)
        self.unknown = unknown
        self.source = source
        self._index = {n: i for i, n in enumerate(self.names)}
        self._missing: Counter[str] = Counter()

    def index(self, name: str, count: int = 1) -> int | None:
        """The index of ``name``, or None (recorded, ``count`` objects) if ``classes`` does not name it."""
        i = self._index.get(name)
        if i is None:
            self._missing[name] += count
        return i

    def check(self) -> None:
        """Raise or warn once about the unknown class names met by :meth:`index`."""
        if not self._missing:
            return
        shown = ", ".join(f"{n!r} ({k})" for n, k in self._missing.most_common(5))
        more = f" and {len(self._missing) - 5} more" if len(self._missing) > 5 else ""
        what = f"annotations name {len(self._missing)} class(es) that {self.source} lacks: {shown}{more}"
        if self.unknown == "error":
            raise DatasetError(f"{what}; give the model's full class list, or unknown='skip' to drop those objects")
        warnings.warn(f"{what}; their objects are skipped", stacklevel=3)
