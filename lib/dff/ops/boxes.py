"""Box arithmetic with the reference's "+1" pixel convention (``lib/bbox/bbox_transform.py``, ``lib/nms``).

A box ``[x1, y1, x2, y2]`` covers the pixels x1..x2 inclusive, so its width is ``x2 - x1 + 1``; every
area, IoU, encoding and decoding below uses that convention. All functions are device-agnostic torch
code and never track gradients of their own (targets and decoded boxes are constants for training).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torchvision
from torch import Tensor

__all__ = ["bbox_pred", "clip_boxes", "bbox_overlaps", "nonlinear_transform", "nms_sorted", "nms_plus1"]


def _check_boxes(name: str, t: Tensor, cols_multiple_of: int = 4) -> None:
    if t.dim() != 2 or t.shape[1] % cols_multiple_of != 0 or t.shape[1] == 0:
        raise ValueError(f"{name}: expected shape (R, 4k), got {tuple(t.shape)}")


def bbox_pred(boxes: Tensor, deltas: Tensor, dtype: torch.dtype = torch.float64) -> Tensor:
    """Decode ``deltas`` (R, 4k) ``[dx, dy, dw, dh]*k`` relative to ``boxes`` (R, 4) -> (R, 4k) in ``dtype``.

    ``x1 = dx*w + cx - 0.5*(exp(dw)*w - 1)``, ``x2 = dx*w + cx + 0.5*(exp(dw)*w - 1)`` with ``w = x2-x1+1``,
    ``cx = x1 + 0.5*(w-1)`` (docs/design.md §1.8). The reference (``nonlinear_pred``) casts the boxes to float64 but
    leaves the float32 deltas alone, so ``exp(dw)`` is a float32 exp promoted to float64 afterwards;
    that is reproduced here (the exp is taken in the deltas' own dtype), the rest is done in ``dtype``.
    """
    _check_boxes("bbox_pred: boxes", boxes)
    _check_boxes("bbox_pred: deltas", deltas)
    if boxes.shape[1] != 4 or boxes.shape[0] != deltas.shape[0]:
        raise ValueError(f"bbox_pred: boxes must be (R, 4) and deltas (R, 4k) with the same R, got "
                         f"{tuple(boxes.shape)} and {tuple(deltas.shape)}")
    b = boxes.to(dtype)
    widths = (b[:, 2] - b[:, 0] + 1.0).unsqueeze(1)
    heights = (b[:, 3] - b[:, 1] + 1.0).unsqueeze(1)
    ctr_x = b[:, 0].unsqueeze(1) + 0.5 * (widths - 1.0)
    ctr_y = b[:, 1].unsqueeze(1) + 0.5 * (heights - 1.0)
    dx, dy = deltas[:, 0::4].to(dtype), deltas[:, 1::4].to(dtype)
    pred_ctr_x = dx * widths + ctr_x
    pred_ctr_y = dy * heights + ctr_y
    pred_w = torch.exp(deltas[:, 2::4]).to(dtype) * widths
    pred_h = torch.exp(deltas[:, 3::4]).to(dtype) * heights
    out = torch.stack([pred_ctr_x - 0.5 * (pred_w - 1.0), pred_ctr_y - 0.5 * (pred_h - 1.0),
                       pred_ctr_x + 0.5 * (pred_w - 1.0), pred_ctr_y + 0.5 * (pred_h - 1.0)], dim=2)
    return out.reshape(deltas.shape[0], -1)


def clip_boxes(boxes: Tensor, im_shape: Sequence[float] | Tensor) -> Tensor:
    """Clip (R, 4k) boxes to ``x in [0, W-1]``, ``y in [0, H-1]`` with ``im_shape = (H, W)``; returns a new tensor."""
    _check_boxes("clip_boxes: boxes", boxes)
    if len(im_shape) < 2:
        raise ValueError(f"clip_boxes: im_shape must be (H, W), got {im_shape!r}")
    h, w = im_shape[0], im_shape[1]
    if isinstance(h, Tensor):  # keep it on the device: no host sync for a tensor im_info
        h = h.to(dtype=boxes.dtype, device=boxes.device)
        w = w.to(dtype=boxes.dtype, device=boxes.device)
    out = boxes.clone()
    # min then max, the reference's order: a degenerate image (W < 1) clips to 0
    out[:, 0::2] = torch.clamp(out[:, 0::2], max=w - 1).clamp(min=0)
    out[:, 1::2] = torch.clamp(out[:, 1::2], max=h - 1).clamp(min=0)
    return out


def bbox_overlaps(boxes: Tensor, query: Tensor) -> Tensor:
    """IoU matrix (N, K) between ``boxes`` (N, 4) and ``query`` (K, 4) with +1 areas, in their dtype.

    Same formula as the reference's Cython ``bbox_overlaps`` (0 where the +1 intersection is empty).
    Hand-written rather than ``torchvision.ops.box_iou`` on (x2+1, y2+1)-shifted boxes because that
    rounds the shift in float32 and gives NaN (0/0) for pairs of zero-area boxes.
    """
    if boxes.dim() != 2 or boxes.shape[1] != 4 or query.dim() != 2 or query.shape[1] != 4:
        raise ValueError(f"bbox_overlaps: expected (N, 4) and (K, 4), got {tuple(boxes.shape)} and "
                         f"{tuple(query.shape)}")
    q_area = (query[:, 2] - query[:, 0] + 1) * (query[:, 3] - query[:, 1] + 1)
    b_area = (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)
    iw = torch.minimum(boxes[:, None, 2], query[None, :, 2]) - torch.maximum(boxes[:, None, 0], query[None, :, 0]) + 1
    ih = torch.minimum(boxes[:, None, 3], query[None, :, 3]) - torch.maximum(boxes[:, None, 1], query[None, :, 1]) + 1
    inter = iw * ih
    valid = (iw > 0) & (ih > 0)
    ua = torch.where(valid, b_area[:, None] + q_area[None, :] - inter, torch.ones_like(inter))
    return torch.where(valid, inter / ua, torch.zeros_like(inter))


def nonlinear_transform(ex_rois: Tensor, gt_rois: Tensor) -> Tensor:
    """Regression targets (N, 4) ``[dx, dy, dw, dh]`` from ``ex_rois`` (N, 4) to ``gt_rois`` (N, 4), +1 widths.

    ``dx = (gx - ex)/(ew + 1e-14)``, ``dw = log(gw/ew)`` (the reference's ``nonlinear_transform``; the 1e-14
    only matters in float64). Not normalised: callers divide by the means/stds themselves.
    """
    if ex_rois.dim() != 2 or ex_rois.shape[1] < 4 or gt_rois.dim() != 2 or gt_rois.shape[1] < 4 \
            or ex_rois.shape[0] != gt_rois.shape[0]:
        raise ValueError(f"nonlinear_transform: expected two (N, 4) arrays, got {tuple(ex_rois.shape)} and "
                         f"{tuple(gt_rois.shape)}")
    ex_w = ex_rois[:, 2] - ex_rois[:, 0] + 1.0
    ex_h = ex_rois[:, 3] - ex_rois[:, 1] + 1.0
    ex_cx = ex_rois[:, 0] + 0.5 * (ex_w - 1.0)
    ex_cy = ex_rois[:, 1] + 0.5 * (ex_h - 1.0)
    gt_w = gt_rois[:, 2] - gt_rois[:, 0] + 1.0
    gt_h = gt_rois[:, 3] - gt_rois[:, 1] + 1.0
    gt_cx = gt_rois[:, 0] + 0.5 * (gt_w - 1.0)
    gt_cy = gt_rois[:, 1] + 0.5 * (gt_h - 1.0)
    return torch.stack([(gt_cx - ex_cx) / (ex_w + 1e-14), (gt_cy - ex_cy) / (ex_h + 1e-14),
                        torch.log(gt_w / ex_w), torch.log(gt_h / ex_h)], dim=1)


def nms_sorted(boxes: Tensor, thresh: float, max_keep: int | None = None, chunk: int = 0) -> Tensor:
    """Greedy NMS of boxes (n, 4) that are **already in priority order**; returns kept row indices (int64).

    A box is suppressed iff its +1-convention IoU with an earlier *kept* box is strictly greater than
    ``thresh`` (MXNet's Proposal NMS and ``py_nms`` both keep ``IoU <= thresh``). Keeps come out in
    priority order; with ``max_keep`` the first ``max_keep`` of them (MXNet stops there).

    Built on ``torchvision.ops.nms``, which suppresses on ``IoU > thresh`` with areas ``(x2-x1)*(y2-y1)``
    and orders by score with no documented order among tied scores (its CPU and CUDA kernels sort
    differently; tied CPU runs tried here came out in index order, which is nothing to rely on).
    Shifting boxes to (x1, y1, x2+1, y2+1) gives the +1 areas (the shift is exact in float64 and rounds
    by at most half an ulp in float32, far inside the fixtures' smallest decision margin of 3e-6 in
    IoU), and feeding the strictly decreasing surrogate score ``-arange(n)`` makes its order exactly
    the given one. Greedy NMS decisions for a box depend
    only on the kept boxes before it, so with ``max_keep`` the list is processed in chunks (each chunk
    together with the keeps so far) and stops once enough are kept; this gives the same keeps as one
    call on everything, without the O(n * keeps) cost of finishing a 6000-box NMS to keep 300. One host
    sync per chunk is needed to know how many were kept.
    """
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(f"nms_sorted: boxes must be (n, 4), got {tuple(boxes.shape)}")
    n = boxes.shape[0]
    dev = boxes.device
    if n == 0 or (max_keep is not None and max_keep <= 0):
        return torch.zeros(0, dtype=torch.long, device=dev)
    shifted = boxes.clone()
    shifted[:, 2:] += 1
    rank = -torch.arange(n, device=dev, dtype=boxes.dtype)  # strictly decreasing: the order is the input order
    if max_keep is None or max_keep >= n:
        keep = torchvision.ops.nms(shifted, rank, float(thresh))
        return keep if max_keep is None else keep[:max_keep]
    step = chunk if chunk > 0 else max(2 * max_keep, 256)
    keep = torch.zeros(0, dtype=torch.long, device=dev)
    start = 0
    while start < n:
        end = min(n, start + step)
        cand = torch.cat([keep, torch.arange(start, end, device=dev)])
        keep = cand[torchvision.ops.nms(shifted[cand], rank[cand], float(thresh))]
        start = end
        if keep.numel() >= max_keep:
            break
    return keep[:max_keep]


def nms_plus1(boxes: Tensor, scores: Tensor, thresh: float) -> Tensor:
    """Greedy NMS by descending ``scores`` (n,), +1 areas, keep ``IoU <= thresh``; indices in keep order.

    Ties in ``scores`` are broken by index (stable sort). The reference's ``py_nms`` uses NumPy's
    unstable ``argsort()[::-1]`` instead, so on ties it may keep another of the tied boxes; see
    :func:`dff.engine.postprocess.pred_eval_frame` for why that does not matter for its outputs.
    """
    if scores.dim() != 1 or scores.shape[0] != boxes.shape[0]:
        raise ValueError(f"nms_plus1: scores must be (n,) matching boxes (n, 4), got {tuple(scores.shape)} "
                         f"and {tuple(boxes.shape)}")
    order = torch.sort(scores, descending=True, stable=True).indices
    return order[nms_sorted(boxes[order], thresh)]
