"""Spatially-adaptive partial feature updating: the feature network on crops around the cells that need it.

On a non-key frame the positions whose feature temporal consistency Q is at most tau take the frame's own
feature instead of the warped one ("Towards High Performance Video Object Detection", §3.2). Running the
feature network on the whole frame for them would cost a key frame; here its cost follows the updated area.

The feature network is the backbone (ResNet to res5) and one 3x3 convolution of dilation 6
(``feat_conv_3x3``), which reads backbone cells 6 cells away. A crop that gave that convolution its real
input would need a margin of 6 cells and more around every updated cell (an updated 10 % of a
600x1000 frame would cost over a third of the frame). So the two halves are updated apart:

1. the backbone runs on image crops around the updated cells, each grown by ``margin`` cells of context
   (its receptive field reaches beyond one cell, so a cell from a crop equals the full-frame one only
   approximately; the error shrinks as the margin grows, ``tests/test_thp.py`` measures it). The crops are
   batched into one call when padding them to a common size wastes little, else run one by one;
2. the updated cells' backbone features are pasted into the reference's backbone map warped to the frame,
   so ``feat_conv_3x3``'s far taps read warped backbone features, as DFF reads warped features;
3. ``feat_conv_3x3`` runs on windows around the updated cells only, exactly as the full-frame layer would on
   that combined map.

All coordinates are feature cells (stride 16); a crop of ``(y0, x0, y1, x1)`` cells is the image window of
pixels ``16 * y0 .. 16 * y1`` (the input is zero-padded to a multiple of 16 first, which is the mean colour
after the preprocessing).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable

import torch
from torch import Tensor
from torch.nn import functional as F

FEATURE_STRIDE = 16
# batch the crops in one call when the common (largest) crop size costs at most this much more area
BATCH_WASTE = 1.5

Box = tuple[int, int, int, int]  # (y0, x0, y1, x1) feature cells, end exclusive


@dataclasses.dataclass
class UpdateInfo:
    """What one partial update did: cells recomputed (the mask's), crops and the cells they covered."""

    cells: int
    total_cells: int
    crops: list[Box]
    crop_cells: int
    batched: bool

    @property
    def area_fraction(self) -> float:
        """The fraction of the feature map whose feature was recomputed."""
        return self.cells / self.total_cells if self.total_cells else 0.0


def _components(grid: list[list[bool]]) -> list[Box]:
    """Bounding boxes of the 4-connected True components of a small boolean grid."""
    h, w = len(grid), len(grid[0]) if grid else 0
    seen = [[False] * w for _ in range(h)]
    boxes = []
    for sy in range(h):
        for sx in range(w):
            if not grid[sy][sx] or seen[sy][sx]:
                continue
            stack = [(sy, sx)]
            seen[sy][sx] = True
            y0, x0, y1, x1 = sy, sx, sy + 1, sx + 1
            while stack:
                y, x = stack.pop()
                y0, x0, y1, x1 = min(y0, y), min(x0, x), max(y1, y + 1), max(x1, x + 1)
                for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                    if 0 <= ny < h and 0 <= nx < w and grid[ny][nx] and not seen[ny][nx]:
                        seen[ny][nx] = True
                        stack.append((ny, nx))
            boxes.append((y0, x0, y1, x1))
    return boxes


def _overlap(a: Box, b: Box) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def plan_crops(mask: Tensor, margin: int) -> list[Box]:
    """The crops that cover every True cell of ``mask`` (h, w) with ``margin`` cells of context around it.

    Components of the mask grown by the margin, as rectangles clipped to the map; overlapping rectangles are
    merged (one larger crop costs less than two overlapping ones).
    """
    if margin < 0:
        raise ValueError(f"partial update: the margin must be >= 0 cells, got {margin}")
    h, w = mask.shape
    grown = F.max_pool2d(mask[None, None].float(), 2 * margin + 1, 1, margin)[0, 0] > 0 if margin else mask
    boxes = _components(grown.cpu().tolist())
    merged = True
    while merged:
        merged = False
        for i in range(len(boxes)):
            for j in range(i + 1, len(boxes)):
                if _overlap(boxes[i], boxes[j]):
                    a, b = boxes[i], boxes.pop(j)
                    boxes[i] = (min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3]))
                    merged = True
                    break
            if merged:
                break
    return [(max(y0, 0), max(x0, 0), min(y1, h), min(x1, w)) for y0, x0, y1, x1 in boxes]


def _area(b: Box) -> int:
    return (b[2] - b[0]) * (b[3] - b[1])


def _pad_to_cells(data: Tensor, h: int, w: int) -> Tensor:
    ph, pw = h * FEATURE_STRIDE - data.shape[-2], w * FEATURE_STRIDE - data.shape[-1]
    return F.pad(data, (0, pw, 0, ph)) if ph or pw else data


def _window(box: Box, size: tuple[int, int], h: int, w: int) -> Box:
    """A ``size`` window that contains ``box``, moved inside the (h, w) map."""
    y0 = min(box[0], h - size[0])
    x0 = min(box[1], w - size[1])
    return (y0, x0, y0 + size[0], x0 + size[1])


def _crops_of(data: Tensor, boxes: list[Box], h: int, w: int) -> tuple[list[Box], list[Tensor], bool]:
    """The crop windows (equal sizes when batched), their image crops, and whether they form one batch."""
    size = (max(b[2] - b[0] for b in boxes), max(b[3] - b[1] for b in boxes))
    batched = len(boxes) > 1 and len(boxes) * size[0] * size[1] <= BATCH_WASTE * sum(_area(b) for b in boxes)
    windows = [_window(b, size, h, w) for b in boxes] if batched else list(boxes)
    padded = _pad_to_cells(data, h, w)
    s = FEATURE_STRIDE
    return windows, [padded[:, :, b[0] * s:b[2] * s, b[1] * s:b[3] * s] for b in windows], batched


def partial_update(backbone_fn: Callable[[Tensor], Tensor], head_fn: Callable[[Tensor], Tensor], reach: int,
                   data: Tensor, warped: Tensor, warped_backbone: Tensor, mask: Tensor,
                   margin: int) -> tuple[Tensor, Tensor, UpdateInfo]:
    """The warped feature with the ``mask`` cells replaced by the frame's own feature, computed on crops.

    Args:
        backbone_fn: the backbone, (B, 3, 16 a, 16 b) -> (B, C_b, a, b).
        head_fn: the feature network's last layer, (1, C_b, a, b) -> (1, C, a, b), reading ``reach`` cells away.
        data: (1, 3, H, W) the preprocessed frame.
        warped: (1, C, h, w) the warped (propagated) feature, h = ceil(H / 16), w = ceil(W / 16).
        warped_backbone: (1, C_b, h, w) the reference's backbone map warped to the frame.
        mask: (h, w) bool, the cells to recompute.
        margin: backbone context cells around the mask's cells in each crop.
    Returns the updated feature (1, C, h, w), the backbone map with the mask's cells recomputed (the next
    reference's), both new tensors, and an :class:`UpdateInfo`.
    """
    h, w = warped.shape[-2:]
    if tuple(mask.shape) != (h, w):
        raise ValueError(f"partial update: mask {tuple(mask.shape)} must be the feature map's size {(h, w)}")
    cells = int(mask.sum())
    if cells == 0:
        return warped, warped_backbone, UpdateInfo(0, h * w, [], 0, False)
    boxes = plan_crops(mask, margin)
    windows, crops, batched = _crops_of(data, boxes, h, w)
    if batched:
        fresh = list(backbone_fn(torch.cat(crops)).unbind(0))
    else:
        fresh = [backbone_fn(c)[0] for c in crops]
    backbone = warped_backbone.clone()
    todo = mask.clone()
    for b, f in zip(windows, fresh):
        region = todo[b[0]:b[2], b[1]:b[3]]
        dst = backbone[0, :, b[0]:b[2], b[1]:b[3]]
        dst.copy_(torch.where(region, f.to(dst.dtype), dst))
        region.fill_(False)
    # feat_conv on each updated region's box, from the combined map with its ``reach`` cells of context
    out = warped.clone()
    padded = F.pad(backbone, (reach, reach, reach, reach))
    for y0, x0, y1, x1 in plan_crops(mask, 0):
        window = padded[:, :, y0:y1 + 2 * reach, x0:x1 + 2 * reach]
        feat = head_fn(window)[:, :, reach:reach + y1 - y0, reach:reach + x1 - x0]
        region = mask[y0:y1, x0:x1]
        dst = out[0, :, y0:y1, x0:x1]
        dst.copy_(torch.where(region, feat[0].to(dst.dtype), dst))
    return out, backbone, UpdateInfo(cells, h * w, windows, sum(_area(b) for b in windows), batched)


def forced_mask(h: int, w: int, fraction: float, device: torch.device | str = "cpu") -> Tensor:
    """A centred rectangle of about ``fraction`` of an (h, w) map, the map's aspect ratio (benchmarks)."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"the forced update area must be in (0, 1], got {fraction}")
    mh = min(h, max(1, round(h * math.sqrt(fraction))))
    mw = min(w, max(1, round(h * w * fraction / mh)))
    mask = torch.zeros(h, w, dtype=torch.bool, device=device)
    y0, x0 = (h - mh) // 2, (w - mw) // 2
    mask[y0:y0 + mh, x0:x0 + mw] = True
    return mask
