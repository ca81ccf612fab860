"""Test-time detection post-processing of one frame: the reference's ``core/tester.im_detect`` box
decoding and the per-class NMS / ``max_per_image`` cap of ``tester.pred_eval`` (docs/design.md §1.8 and 6.3).

Boxes are float64 as in the reference (NumPy float64 after ``bbox_pred``); everything stays a torch
tensor on the input's device. The only float difference from the reference is the float32 ``exp`` of
the size deltas (torch's and NumPy's differ by an ulp now and then): <= 1.2e-4 px on the fixtures.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from dff.ops.boxes import bbox_pred, clip_boxes, nms_plus1
from dff.ops.nms import nms_fixed

__all__ = ["im_detect_pred_boxes", "im_detect_boxes", "im_detect", "pred_eval_frame", "pred_eval_fixed",
           "rows_to_dets", "dets_to_rows"]


def _rois_2d(rois: Tensor) -> Tensor:
    if rois.dim() != 2 or rois.shape[1] not in (4, 5):
        raise ValueError(f"rois must be (R, 5) [batch, x1, y1, x2, y2] or (R, 4), got {tuple(rois.shape)}")
    return rois[:, 1:] if rois.shape[1] == 5 else rois


def im_detect_pred_boxes(rois: Tensor, bbox_pred_out: Tensor, im_info: Tensor, *,
                         im_shape: Sequence[float] | None = None) -> Tensor:
    """Decoded boxes (R, 4k) float64 in **original-image** pixels, as ``tester.im_detect``.

    Args:
        rois: (R, 5) ``[batch_idx, x1, y1, x2, y2]`` proposals in scaled-image pixels (or (R, 4)).
        bbox_pred_out: (1, R, 4k) or (R, 4k) box deltas (k = 2 for the class-agnostic head: background
            slot, then the foreground slot used by every class).
        im_info: (1, 3) or (3,) ``[height, width, scale]`` of the scaled image.
        im_shape: (H, W) to clip to. The reference clips to the *data* tensor's shape, which equals
            ``im_info[:2]`` unless images are padded (``IMAGE_STRIDE > 0``; 0 in every shipped config).
    Decode (+1 convention, :func:`bbox_pred`), clip to ``[0, W-1] x [0, H-1]``, divide by the scale.
    """
    r = _rois_2d(rois)
    deltas = bbox_pred_out[0] if bbox_pred_out.dim() == 3 else bbox_pred_out
    if deltas.dim() != 2 or deltas.shape[0] != r.shape[0] or deltas.shape[1] % 4 != 0:
        raise ValueError(f"bbox_pred must be (1, {r.shape[0]}, 4k) or ({r.shape[0]}, 4k), got "
                         f"{tuple(bbox_pred_out.shape)}")
    info = im_info.reshape(-1)
    if info.numel() < 3:
        raise ValueError(f"im_info must be (1, 3) [height, width, scale], got {tuple(im_info.shape)}")
    info = info.to(device=deltas.device, dtype=torch.float64)
    boxes = bbox_pred(r.to(deltas.device), deltas, dtype=torch.float64)
    boxes = clip_boxes(boxes, (info[0], info[1]) if im_shape is None else tuple(im_shape))
    return boxes / info[2]


def im_detect_boxes(rois: Tensor, cls_prob: Tensor, bbox_pred_out: Tensor, im_info: Tensor, *,
                    im_shape: Sequence[float] | None = None) -> tuple[Tensor, Tensor]:
    """``tester.im_detect`` for one frame -> (scores (R, C), boxes (R, 4k) float64, original-image pixels).

    ``scores`` is ``cls_prob`` (1, R, C) or (R, C) as (R, C), unchanged; boxes as :func:`im_detect_pred_boxes`.
    """
    scores = cls_prob[0] if cls_prob.dim() == 3 else cls_prob
    if scores.dim() != 2 or scores.shape[0] != rois.shape[0]:
        raise ValueError(f"cls_prob must be (1, {rois.shape[0]}, C) or ({rois.shape[0]}, C), got "
                         f"{tuple(cls_prob.shape)}")
    return scores, im_detect_pred_boxes(rois, bbox_pred_out, im_info, im_shape=im_shape)


# the reference's name
im_detect = im_detect_boxes


def _check_scores_boxes(where: str, scores: Tensor, boxes: Tensor, class_agnostic: bool) -> None:
    if scores.dim() != 2:
        raise ValueError(f"{where}: scores must be (R, C), got {tuple(scores.shape)}")
    n_rois, n_cls = scores.shape
    if boxes.dim() != 2 or boxes.shape[0] != n_rois:
        raise ValueError(f"{where}: boxes must be ({n_rois}, 8 or 4C), got {tuple(boxes.shape)}")
    if class_agnostic and boxes.shape[1] < 8:
        raise ValueError(f"{where}: class-agnostic boxes need the foreground slot (columns 4:8), "
                         f"got {tuple(boxes.shape)}")
    if not class_agnostic and boxes.shape[1] != 4 * n_cls:
        raise ValueError(f"{where}: per-class boxes must be ({n_rois}, {4 * n_cls}), got {tuple(boxes.shape)}")


def pred_eval_frame(scores: Tensor, boxes: Tensor, thresh: float, nms_thresh: float = 0.3,
                    max_per_image: int = 300, class_agnostic: bool = True) -> list[Tensor]:
    """Per-class detections of one frame, ``tester.pred_eval`` post-processing (docs/design.md §6.3).

    Args:
        scores: (R, C) class probabilities, column 0 = background.
        boxes: (R, 8) class-agnostic boxes (foreground slot = columns 4:8) or (R, 4C) per-class boxes
            with ``class_agnostic=False``; original-image pixels.
        thresh: a class's rois are candidates iff their score is **strictly greater** (compared in the
            scores' dtype, like NumPy does with a float32 array and a Python float).
    Returns:
        C tensors (k_j, 5) ``[x1, y1, x2, y2, score]`` float64; entry 0 (background) is empty (0, 5). Each
        holds the greedy NMS keeps (+1 areas, kept iff IoU <= ``nms_thresh`` with every higher kept box) in
        descending score order. If more than ``max_per_image`` (> 0) survive over all classes, only those
        with score >= the ``max_per_image``-th highest stay (ties can leave more).

    Tie-break: the reference's ``py_nms`` orders by ``argsort()[::-1]`` (unstable quicksort), so among tied
    scores its order is implementation-defined; here ties go to the lower roi index (stable sort). The
    only within-class ties in practice are Proposal's cyclic padding, i.e. identical boxes with identical
    scores, where either choice gives the same rows.
    """
    _check_scores_boxes("pred_eval_frame", scores, boxes, class_agnostic)
    n_rois, n_cls = scores.shape
    boxes = boxes.to(torch.float64)
    dev = boxes.device
    scores = scores.to(dev)
    thr = torch.tensor(thresh, dtype=scores.dtype, device=dev)
    out: list[Tensor] = [torch.zeros((0, 5), dtype=torch.float64, device=dev)]
    for j in range(1, n_cls):
        idx = torch.nonzero(scores[:, j] > thr).squeeze(1)
        cls_boxes = boxes[idx, 4:8] if class_agnostic else boxes[idx, 4 * j:4 * j + 4]
        dets = torch.cat([cls_boxes, scores[idx, j].to(torch.float64).unsqueeze(1)], dim=1)
        out.append(dets[nms_plus1(dets[:, :4], dets[:, 4], nms_thresh)])
    if max_per_image > 0:
        image_scores = torch.cat([d[:, 4] for d in out[1:]])
        if image_scores.numel() > max_per_image:
            image_thresh = torch.topk(image_scores, max_per_image).values[-1]
            out = [out[0]] + [d[d[:, 4] >= image_thresh] for d in out[1:]]
    return out


def pred_eval_fixed(scores: Tensor, boxes: Tensor, thresh: float, nms_thresh: float = 0.3,
                    max_per_image: int = 300, class_agnostic: bool = True) -> tuple[Tensor, Tensor]:
    """:func:`pred_eval_frame` with fixed shapes and no host synchronisation, for a CUDA graph.

    Returns (rows (M, 6) float64, count (1,) int64) with M = R*(C-1): the first ``count`` rows are
    the rows ``[class, x1, y1, x2, y2, score]`` of :func:`dets_to_rows` (:func:`pred_eval_frame`) in its order (classes ascending,
    NMS keep order within a class); the rest are filler.

    All R*(C-1) (roi, class) pairs go through one :func:`dff.ops.nms_fixed` in descending score order
    (ties by roi index, the loop's order within a class), with ``labels`` = class so boxes only suppress
    their own class, ``valid`` = score above ``thresh``, and the ``max_per_image`` rule as the scan's
    ``cap``: greedy NMS decides a box from the higher-scoring keeps of its class only, so processing
    all classes by one descending score order gives each class's keeps, and the scan stops at the
    first would-be keep below the ``max_per_image``-th kept score, leaving exactly the capped set.
    """
    _check_scores_boxes("pred_eval_fixed", scores, boxes, class_agnostic)
    n_rois, n_cls = scores.shape
    if n_cls < 2:
        raise ValueError(f"pred_eval_fixed: scores need a background and at least one class, got {n_cls} columns")
    boxes = boxes.to(torch.float64)
    scores = scores.to(boxes.device)
    fg = scores[:, 1:].reshape(-1)  # (roi, class) pairs, roi-major
    valid = fg > thresh  # compared in the scores' dtype, as pred_eval_frame (a Python float is cast to it)
    order = torch.sort(torch.where(valid, fg, torch.full_like(fg, -1.0)), descending=True, stable=True).indices
    roi = torch.div(order, n_cls - 1, rounding_mode="floor")
    cls = order - roi * (n_cls - 1) + 1
    score = fg[order].to(torch.float64)
    cand = boxes[roi, 4:8] if class_agnostic else boxes.view(n_rois, n_cls, 4)[roi, cls]
    total = order.numel()
    keep, count = nms_fixed(cand, nms_thresh, total, valid=valid[order], labels=cls, scores=score,
                            cap=max(int(max_per_image), 0))
    kept = torch.arange(total, device=keep.device) < count
    keep = keep.clamp(min=0)
    # classes ascending, keep order within a class; filler last
    by_class = torch.sort(torch.where(kept, cls[keep], torch.full_like(cls, n_cls)), stable=True).indices
    keep = keep[by_class]
    rows = torch.cat([cls[keep].to(torch.float64)[:, None], cand[keep], score[keep][:, None]], dim=1)
    return rows, count


def rows_to_dets(rows: np.ndarray | Tensor, num_classes: int) -> list[np.ndarray]:
    """(N, 6) rows ``[class, x1, y1, x2, y2, score]`` grouped by class -> per-class (k, 5) arrays
    (index 0, background, empty): the layout of :func:`pred_eval_frame`, as NumPy."""
    rows = rows.cpu().numpy() if isinstance(rows, Tensor) else np.asarray(rows)
    cls = rows[:, 0].astype(np.int64)
    return [rows[cls == j, 1:6] if j else np.zeros((0, 5)) for j in range(num_classes)]


def dets_to_rows(dets: Sequence[Tensor]) -> Tensor:
    """Flatten per-class detections (index 0 = background, skipped) to (N, 6) float64 rows
    ``[class, x1, y1, x2, y2, score]``: classes 1..C-1 in order, NMS keep order within a class
    (the layout of the fixtures' ``dets_cls_x1y1x2y2_score``)."""
    if len(dets) == 0:
        return torch.zeros((0, 6), dtype=torch.float64)
    rows = []
    for j, d in enumerate(dets):
        if j == 0 or d.shape[0] == 0:
            continue
        if d.dim() != 2 or d.shape[1] != 5:
            raise ValueError(f"dets_to_rows: class {j} must be (k, 5), got {tuple(d.shape)}")
        rows.append(torch.cat([torch.full((d.shape[0], 1), float(j), dtype=torch.float64, device=d.device),
                               d.to(torch.float64)], dim=1))
    if not rows:
        return torch.zeros((0, 6), dtype=torch.float64, device=dets[0].device)
    return torch.cat(rows, dim=0)
