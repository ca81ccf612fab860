"""RPN proposals: the ``rpn_inv_normalize`` custom op and MXNet's ``Proposal`` / ``MultiProposal``.

``proposal`` follows the CPU algorithm of MXNet 1.9.1 ``contrib.Proposal`` (batch 1) and
``contrib.MultiProposal`` (per image of a batch) step by step (fixtures README section 4, docs/design.md §3.2):
decode with the +1 convention, clip, disable positions beyond ``int(im_size / stride)``, flag small
boxes, **stable** descending sort, top-N, greedy NMS (+1 areas, suppress ``IoU > thr``) that stops after
``post`` keeps, and cyclic padding ``keep[i % n]``. Everything is device-agnostic torch code with no host
sync where the compiled operators are built (the NMS is :func:`dff.ops.nms_fixed`; its pure-PyTorch
fallback syncs).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from dff.models.rpn.anchors import generate_anchors, shifted_anchors
from dff.ops.nms import nms_fixed

__all__ = ["rpn_inv_normalize", "proposal", "proposal_candidates", "proposal_select"]


def rpn_inv_normalize(bbox_pred: Tensor, means: Sequence[float], stds: Sequence[float]) -> Tensor:
    """Undo the RPN target normalisation: (N, 4A, H, W) -> same shape, channel ``4a+k`` is ``x*std[k] + mean[k]``.

    The reference's ``rpn_inv_normalize`` CustomOp (float32 multiply, then add; zero gradient, so the
    result is detached).
    """
    if bbox_pred.dim() != 4 or bbox_pred.shape[1] % 4 != 0:
        raise ValueError(f"rpn_inv_normalize: bbox_pred must be (N, 4A, H, W), got {tuple(bbox_pred.shape)}")
    if len(means) != 4 or len(stds) != 4:
        raise ValueError(f"rpn_inv_normalize: means and stds need 4 values each, got {len(means)} and {len(stds)}")
    n, c, h, w = bbox_pred.shape
    x = bbox_pred.detach().reshape(n, c // 4, 4, h, w)
    # Python scalars, not a (4,) device tensor: no host-to-device copy, so CUDA graphs can capture it
    out = torch.stack([x[:, :, k] * float(stds[k]) + float(means[k]) for k in range(4)], dim=2)
    return out.view(n, c, h, w)


def _decode_clip(anchors: Tensor, deltas: Tensor, im_h: Tensor, im_w: Tensor) -> Tensor:
    """MXNet ``BBoxTransformInv`` + clip: anchors (K, 4) float32, deltas (K, 4) -> boxes (K, 4) float32.

    Reproduces the C++ rounding: ``pred_ctr = d*width + ctr`` and ``exp(dw)*width`` in float32,
    ``pred_ctr -/+ 0.5*(pred_w - 1.0)`` in double (the ``0.5``/``1.0`` literals are doubles) rounded
    once to float32, and the clip against ``im - 1.0f`` in float32.
    """
    f32, f64 = torch.float32, torch.float64
    widths = anchors[:, 2] - anchors[:, 0] + 1.0
    heights = anchors[:, 3] - anchors[:, 1] + 1.0
    ctr_x = anchors[:, 0] + 0.5 * (widths - 1.0)  # exact: anchors are integers
    ctr_y = anchors[:, 1] + 0.5 * (heights - 1.0)
    d = deltas.to(f32)
    pred_ctr_x = (d[:, 0] * widths + ctr_x).to(f64)
    pred_ctr_y = (d[:, 1] * heights + ctr_y).to(f64)
    half_w = 0.5 * ((torch.exp(d[:, 2]) * widths).to(f64) - 1.0)
    half_h = 0.5 * ((torch.exp(d[:, 3]) * heights).to(f64) - 1.0)
    boxes = torch.stack([pred_ctr_x - half_w, pred_ctr_y - half_h,
                         pred_ctr_x + half_w, pred_ctr_y + half_h], dim=1).to(f32)
    xmax, ymax = im_w - 1.0, im_h - 1.0  # float32 0-d tensors
    boxes[:, 0::2] = torch.minimum(boxes[:, 0::2], xmax).clamp(min=0.0)
    boxes[:, 1::2] = torch.minimum(boxes[:, 1::2], ymax).clamp(min=0.0)
    return boxes


_GRID_CACHE: dict[tuple, tuple[Tensor, Tensor, Tensor]] = {}


def _anchor_grid(feat_h: int, feat_w: int, feature_stride: int, scales: Sequence[float], ratios: Sequence[float],
                 device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """(anchors (h*w*A, 4), feature row, feature column of each) on ``device``, made once per shape.

    Cached because making them copies from the host, which a CUDA graph cannot capture (and which
    costs a transfer per frame)."""
    key = (feat_h, feat_w, feature_stride, tuple(scales), tuple(ratios), str(device))
    grid = _GRID_CACHE.get(key)
    if grid is None:
        num_anchors = len(scales) * len(ratios)
        anchors = shifted_anchors(feat_h, feat_w, feature_stride,
                                  generate_anchors(feature_stride, ratios, scales), device=device)
        # feature row / column of every flattened anchor (index h*W*A + w*A + a)
        row = torch.arange(feat_h, device=device).repeat_interleave(feat_w * num_anchors)
        col = torch.arange(feat_w, device=device).repeat_interleave(num_anchors).repeat(feat_h)
        if len(_GRID_CACHE) > 64:  # many frame sizes: keep the cache small
            _GRID_CACHE.clear()
        grid = _GRID_CACHE[key] = (anchors, row, col)
    return grid


def _check_inputs(cls_prob: Tensor, bbox_pred: Tensor, im_info: Tensor, num_anchors: int) -> None:
    if cls_prob.dim() != 4 or bbox_pred.dim() != 4:
        raise ValueError(f"proposal: cls_prob and bbox_pred must be 4-d, got {tuple(cls_prob.shape)} and "
                         f"{tuple(bbox_pred.shape)}")
    n_img, c2, feat_h, feat_w = cls_prob.shape
    if c2 != 2 * num_anchors:
        raise ValueError(f"proposal: cls_prob has {c2} channels, expected 2*len(scales)*len(ratios) = "
                         f"{2 * num_anchors}")
    if tuple(bbox_pred.shape) != (n_img, 4 * num_anchors, feat_h, feat_w):
        raise ValueError(f"proposal: bbox_pred must be {(n_img, 4 * num_anchors, feat_h, feat_w)}, got "
                         f"{tuple(bbox_pred.shape)}")
    if im_info.dim() != 2 or im_info.shape[0] != n_img or im_info.shape[1] < 3:
        raise ValueError(f"proposal: im_info must be ({n_img}, 3), got {tuple(im_info.shape)}")
    if feat_h * feat_w == 0:
        raise ValueError(f"proposal: empty feature map {feat_h}x{feat_w}")


@torch.no_grad()
def proposal_candidates(cls_prob: Tensor, bbox_pred: Tensor, im_info: Tensor, *, feature_stride: int = 16,
                        scales: Sequence[float] = (8, 16, 32), ratios: Sequence[float] = (0.5, 1, 2),
                        pre_nms_top_n: int = 6000, min_size: float = 0) -> tuple[Tensor, Tensor]:
    """The fixed-shape first half of :func:`proposal`: decode, clip, flag, sort, top-N.

    Returns (boxes (N, pre, 4), scores (N, pre)) float32 in descending score order (stable), ``pre`` =
    ``min(pre_nms_top_n, anchors)``. No host synchronisation (a CUDA graph can capture it once the
    anchors of this feature size are cached, i.e. after one call).
    """
    num_anchors = len(scales) * len(ratios)
    _check_inputs(cls_prob, bbox_pred, im_info, num_anchors)
    n_img, _, feat_h, feat_w = cls_prob.shape
    count = feat_h * feat_w * num_anchors
    pre = min(pre_nms_top_n if pre_nms_top_n > 0 else count, count)
    dev = cls_prob.device
    anchors, row, col = _anchor_grid(feat_h, feat_w, feature_stride, scales, ratios, dev)
    info = im_info.detach().to(device=dev, dtype=torch.float32)
    # int(im / stride): float32 division, truncation; positions beyond it are padding of the image
    real_hw = torch.floor(info[:, :2] / float(feature_stride))
    all_boxes, all_scores = [], []
    for i in range(n_img):
        score = cls_prob[i, num_anchors:].detach().permute(1, 2, 0).reshape(-1).to(torch.float32)
        deltas = bbox_pred[i].detach().reshape(num_anchors, 4, feat_h, feat_w).permute(2, 3, 0, 1).reshape(-1, 4)
        boxes = _decode_clip(anchors, deltas, info[i, 0], info[i, 1])
        padded = (row >= real_hw[i, 0]) | (col >= real_hw[i, 1])
        score = torch.where(padded, torch.full_like(score, -1.0), score)
        if min_size > 0:
            ms = info[i, 2] * float(min_size)  # float32, as MXNet's min_size * im_scale
            small = ((boxes[:, 2] - boxes[:, 0] + 1.0) < ms) | ((boxes[:, 3] - boxes[:, 1] + 1.0) < ms)
            h = ms / 2
            half = torch.stack([-h, -h, h, h])
            # MXNet flags small boxes (score -1) and grows them by min_size/2 per side; it does not drop them
            boxes = torch.where(small[:, None], boxes + half, boxes)
            score = torch.where(small, torch.full_like(score, -1.0), score)
        # stable: tied scores keep the flattened anchor order, as MXNet's CPU sort does
        order = torch.sort(score, descending=True, stable=True).indices[:pre]
        all_boxes.append(boxes[order])
        all_scores.append(score[order])
    return torch.stack(all_boxes), torch.stack(all_scores)


@torch.no_grad()
def proposal_select(boxes: Tensor, scores: Tensor, *, post_nms_top_n: int = 300, nms_threshold: float = 0.7,
                    output_score: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """The second half of :func:`proposal`: greedy NMS of the sorted candidates, then ``post_nms_top_n``
    rows per image (cyclic padding). boxes (N, pre, 4), scores (N, pre) from :func:`proposal_candidates`."""
    if post_nms_top_n <= 0:
        raise ValueError(f"proposal: post_nms_top_n must be positive, got {post_nms_top_n}")
    n_img, pre = scores.shape
    post_keep = min(post_nms_top_n, pre)
    dev = scores.device
    slot = torch.arange(post_nms_top_n, device=dev)
    all_rois, all_scores = [], []
    for i in range(n_img):
        # the count stays on the device (no sync): a CUDA graph can hold this
        keep, count = nms_fixed(boxes[i], nms_threshold, post_keep)
        pick = keep[slot % count.clamp(min=1)]
        batch_col = torch.full((post_nms_top_n, 1), float(i), dtype=torch.float32, device=dev)
        all_rois.append(torch.cat([batch_col, boxes[i][pick]], dim=1))
        all_scores.append(scores[i][pick].unsqueeze(1))
    rois = torch.cat(all_rois, dim=0)
    if output_score:
        return rois, torch.cat(all_scores, dim=0)
    return rois


def proposal(cls_prob: Tensor, bbox_pred: Tensor, im_info: Tensor, *, feature_stride: int = 16,
             scales: Sequence[float] = (8, 16, 32), ratios: Sequence[float] = (0.5, 1, 2),
             pre_nms_top_n: int = 6000, post_nms_top_n: int = 300, nms_threshold: float = 0.7,
             min_size: float = 0, output_score: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """RPN proposals for each image of a batch (MXNet ``MultiProposal``; batch 1 is ``Proposal``).

    Args:
        cls_prob: (N, 2A, H, W) RPN softmax, background channels ``0..A-1``, foreground ``A..2A-1``.
        bbox_pred: (N, 4A, H, W) deltas, **already inverse-normalised** (:func:`rpn_inv_normalize`).
        im_info: (N, 3) ``[height, width, scale]`` of each scaled image.
        min_size: ``rpn_min_size`` in original-image pixels (multiplied by ``im_info[:, 2]``); 0 disables it.
    Returns:
        rois (N*post_nms_top_n, 5) float32 ``[batch_idx, x1, y1, x2, y2]`` in scaled-image pixels, and with
        ``output_score`` also the scores (N*post_nms_top_n, 1). Each image's rows are its NMS keeps in score
        order, cycled (``keep[i % n]``) when fewer than ``post_nms_top_n`` survive; masked or too-small
        boxes keep their score -1 and can appear when there are not enough others. No gradients.

    The row count is ``post_nms_top_n`` (MXNet's declared output shape) even when ``pre_nms_top_n`` or
    the anchor count is smaller; at most ``min(post, pre, count)`` distinct boxes are kept, then cycled.
    :func:`proposal_candidates` then :func:`proposal_select` (the video engine's fast path captures the
    first in a CUDA graph).
    """
    if post_nms_top_n <= 0:
        raise ValueError(f"proposal: post_nms_top_n must be positive, got {post_nms_top_n}")
    boxes, scores = proposal_candidates(cls_prob, bbox_pred, im_info, feature_stride=feature_stride, scales=scales,
                                        ratios=ratios, pre_nms_top_n=pre_nms_top_n, min_size=min_size)
    return proposal_select(boxes, scores, post_nms_top_n=post_nms_top_n, nms_threshold=nms_threshold,
                           output_score=output_score)
