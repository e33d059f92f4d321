"""``boxes_to_mask``: object masks from bounding boxes (VOC, COCO and ImageNet conventions)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

__all__ = ["boxes_to_mask"]


def boxes_to_mask(
    boxes: Tensor | Sequence[Sequence[float]],
    size: tuple[int, int],
    format: Literal["xyxy", "xywh"] = "xyxy",
    one_based: bool = False,
) -> Tensor:
    """The union of ``boxes`` as a boolean mask ``[H, W]``.

    A pixel ``(y, x)`` is inside a box when its centre ``(y + 0.5, x + 0.5)`` lies in the half-open
    box ``[x1, x2) x [y1, y2)``; for integer coordinates that is exactly ``mask[y1:y2, x1:x2]``.
    Boxes are clipped to the image.

    Args:
        boxes: ``[N, 4]`` (or one box ``[4]``) as ``(x1, y1, x2, y2)`` for ``format="xyxy"`` or
            ``(x, y, width, height)`` for ``"xywh"`` — x (column) first, as in VOC, COCO and
            ImageNet annotations.
        size: ``(H, W)`` of the mask.
        format: ``"xyxy"`` (default) or ``"xywh"``.
        one_based: VOC / ImageNet-XML convention: 1-based coordinates with an inclusive end, so
            ``(xmin, ymin, xmax, ymax)`` covers ``mask[ymin - 1:ymax, xmin - 1:xmax]``.

    Returns:
        bool mask ``[H, W]`` on the boxes' device (all False for no boxes).

    Example:
        >>> from pami_lightning.metrics import boxes_to_mask
        >>> boxes_to_mask([[2, 1, 3, 2]], (3, 4), one_based=True).int()
        tensor([[0, 1, 1, 0],
                [0, 1, 1, 0],
                [0, 0, 0, 0]], dtype=torch.int32)
    """
    b = torch.as_tensor(boxes, dtype=torch.float64)
    if b.ndim == 1 and b.numel() == 4:
        b = b[None]
    if b.numel() == 0:
        b = b.reshape(0, 4)
    if b.ndim != 2 or b.shape[1] != 4:
        raise ValueError(f"boxes must be [N, 4] (or one box [4]); got {list(b.shape)}")
    if format not in ("xyxy", "xywh"):
        raise ValueError(f'format must be "xyxy" or "xywh"; got "{format}"')
    if not torch.isfinite(b).all():
        raise ValueError("boxes hold NaN or inf coordinates")
    x1, y1, a, c = b.unbind(1)
    if one_based:  # 1-based inclusive end == 0-based exclusive end: only the start moves
        x1, y1 = x1 - 1, y1 - 1
    x2, y2 = (x1 + a, y1 + c) if format == "xywh" else (a, c)
    if bool((x2 < x1).any() or (y2 < y1).any()):
        i = int(((x2 < x1) | (y2 < y1)).nonzero()[0])
        raise ValueError(
            f"box {i} {b[i].tolist()} ends before it starts: check format ({format!r}: "
            f"{'(x, y, w, h)' if format == 'xywh' else '(x1, y1, x2, y2)'}) and that x (column) comes before y (row)"
        )
    h, w = size
    ys = torch.arange(h, dtype=torch.float64, device=b.device) + 0.5
    xs = torch.arange(w, dtype=torch.float64, device=b.device) + 0.5
    in_y = (ys >= y1[:, None]) & (ys < y2[:, None])  # [N, H]
    in_x = (xs >= x1[:, None]) & (xs < x2[:, None])  # [N, W]
    # Union over boxes without an [N, H, W] intermediate: count of boxes covering each pixel.
    return (in_y.T.float() @ in_x.float()) > 0
