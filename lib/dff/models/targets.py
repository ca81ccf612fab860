"""Training targets of the end-to-end R-FCN: RPN anchor labels and Fast R-CNN roi sampling (docs/design.md §1.9).

* :func:`anchor_target` -- the reference's ``lib/rpn/rpn.assign_anchor`` (run by its data loader on
  the CPU, per image): which anchors are positive / negative / ignored, their regression targets and
  weights.
* :func:`proposal_target` -- the reference's ``proposal_target`` custom op (``core/rcnn.sample_rois``):
  gt boxes appended to the proposals, class labels, normalised regression targets in the class slot.

Both are device-agnostic torch code without gradients (targets are constants). Randomness (the
subsampling) comes only from the ``generator`` argument, so a training run is reproducible and
resumable from the generator's state. The reference draws with ``numpy.random.choice`` (without
replacement); the same distribution is drawn here, not the same numbers.

IoUs are float64 with the "+1" convention, as the reference's Cython ``bbox_overlaps`` on
``astype(np.float)`` inputs, so the 0.3 / 0.5 / 0.7 thresholds and the "equals the maximum" ties
are decided on the same values.
"""
from __future__ import annotations

import functools
from typing import Sequence

import torch
from torch import Tensor

from dff.config import Config
from dff.models.rpn.anchors import generate_anchors, shifted_anchors
from dff.ops.boxes import bbox_overlaps, nonlinear_transform

__all__ = ["anchor_target", "proposal_target", "random_subset"]


def _perm(n: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
    """A random permutation of ``range(n)`` on ``device``, drawn from ``generator`` on its own device."""
    gen_dev = generator.device if generator is not None else device
    return torch.randperm(n, generator=generator, device=gen_dev).to(device)


def random_subset(mask: Tensor, k: Tensor | int, generator: torch.Generator | None) -> Tensor:
    """Keep a uniformly random subset of ``min(k, mask.sum())`` of the True entries of ``mask`` (M,).

    Equivalent in distribution to ``numpy.random.choice(np.where(mask)[0], size, replace=False)``:
    the candidates are ranked by their position in one random permutation and the first ``k`` kept.
    ``k`` may be a 0-d tensor, so no host synchronisation is needed. Returns a bool mask (M,).
    """
    m = mask.shape[0]
    if m == 0:
        return mask.clone()
    perm = _perm(m, generator, mask.device)
    cand = mask[perm]
    rank = torch.cumsum(cand.to(torch.int64), 0) - 1  # rank of each candidate in permutation order
    keep_perm = cand & (rank < k)
    keep = torch.zeros_like(mask)
    keep[perm] = keep_perm
    return keep


@functools.lru_cache(maxsize=8)
def _base_anchors(stride: int, ratios: tuple[float, ...], scales: tuple[float, ...]) -> Tensor:
    # once per setting: keeps NumPy off the per-image path
    return torch.from_numpy(generate_anchors(stride, ratios, scales))


def _gt_2d(gt_boxes: Tensor, cols: int, name: str) -> Tensor:
    g = gt_boxes
    if g.dim() == 3 and g.shape[0] == 1:
        g = g[0]
    if g.dim() != 2 or g.shape[1] < cols:
        raise ValueError(f"{name}: gt_boxes must be (G, {cols}) or (1, G, {cols}), got {tuple(gt_boxes.shape)}")
    return g


@torch.no_grad()
def anchor_target(feat_shape: Sequence[int], gt_boxes: Tensor, im_info: Tensor | Sequence[float], cfg: Config,
                  generator: torch.Generator | None = None, allowed_border: float = 0) -> tuple[Tensor, Tensor, Tensor]:
    """RPN training labels and regression targets of one image (the reference's ``assign_anchor``).

    Args:
        feat_shape: ``(h, w)`` of the RPN feature map (a longer shape uses its last two entries).
        gt_boxes: (G, 4+) or (1, G, 4+) gt boxes ``[x1, y1, x2, y2, ...]`` in scaled-image pixels; extra
            columns (the class) are ignored.
        im_info: (3,) or (1, 3) ``[height, width, scale]`` of the scaled image.
        cfg: uses ``network.RPN_FEAT_STRIDE / ANCHOR_SCALES / ANCHOR_RATIOS / NORMALIZE_RPN /
            ANCHOR_MEANS / ANCHOR_STDS`` and ``TRAIN.RPN_*``.
        generator: source of the subsampling randomness.
        allowed_border: anchors may stick out of the image by this many pixels (the reference: 0).

    Returns (on ``gt_boxes``' device):
        labels (A*h*w,) int64 in the reference's **(a, y, x)** order (index ``(a*h + y)*w + x``, the order
        of the RPN score map reshaped to (1, 2, A*h, w)): 1 positive, 0 negative, -1 ignored;
        bbox_targets (1, 4A, h, w) float32, channel ``4a+k``: the encoding of the max-IoU gt for every
        inside anchor (0 outside), ``(t - ANCHOR_MEANS) / ANCHOR_STDS`` when ``NORMALIZE_RPN``;
        bbox_weights (1, 4A, h, w) float32: ``TRAIN.RPN_BBOX_WEIGHTS`` on positives, 0 elsewhere.

    Rules (``RPN_CLOBBER_POSITIVES: false``): only anchors with ``x1 >= -b, y1 >= -b, x2 < W + b,
    y2 < H + b`` are eligible; label 0 where the max IoU < ``RPN_NEGATIVE_OVERLAP``; then label 1 for
    every anchor whose IoU with some gt **equals** that gt's maximum IoU over all eligible anchors
    (ties all included); then label 1 where the max IoU >= ``RPN_POSITIVE_OVERLAP``. Subsampling: at
    most ``RPN_FG_FRACTION * RPN_BATCH_SIZE`` positives survive (random), then at most
    ``RPN_BATCH_SIZE - #positives`` negatives (random); the rest become -1.

    Reproduced quirk (py-faster-rcnn's ``np.where(overlaps == gt_max_overlaps)`` on the whole matrix):
    a gt that overlaps **no** eligible anchor has maximum IoU 0, so every eligible anchor with IoU 0 to
    that gt is marked positive (before the random cut to the positive quota), even an anchor that is a
    clear negative for every other gt. With no gt at all every eligible anchor is labelled 0 first.
    With no eligible anchor every label is -1 (the reference would crash in ``argmax``).
    Anchors are built with MXNet's rounding (:func:`dff.models.rpn.anchors.generate_anchors`); the loader's
    py-faster-rcnn anchors round with ``np.round``; both give the same anchors for the shipped ratios
    and scales.
    """
    net, tr = cfg.network, cfg.TRAIN
    if len(feat_shape) < 2:
        raise ValueError(f"anchor_target: feat_shape must end with (h, w), got {tuple(feat_shape)}")
    h, w = int(feat_shape[-2]), int(feat_shape[-1])
    gt = _gt_2d(gt_boxes, 4, "anchor_target")
    dev = gt.device
    info = torch.as_tensor(im_info, device=dev).reshape(-1)
    if info.numel() < 2:
        raise ValueError(f"anchor_target: im_info must be [height, width, scale], got shape {tuple(info.shape)}")
    stride = int(net.RPN_FEAT_STRIDE)
    base = _base_anchors(stride, tuple(float(r) for r in net.ANCHOR_RATIOS), tuple(float(c) for c in net.ANCHOR_SCALES))
    num_a = base.shape[0]
    f64 = torch.float64
    # (h*w*A, 4) in (y, x, a) order, integer-valued, exact in float64
    anchors = shifted_anchors(h, w, stride, base, device=dev, dtype=f64)
    total = anchors.shape[0]
    im_h, im_w = info[0].to(f64), info[1].to(f64)
    b = float(allowed_border)
    inside = (anchors[:, 0] >= -b) & (anchors[:, 1] >= -b) & (anchors[:, 2] < im_w + b) & (anchors[:, 3] < im_h + b)

    labels = torch.full((total,), -1, dtype=torch.int64, device=dev)
    targets = torch.zeros((total, 4), dtype=f64, device=dev)
    g4 = gt[:, :4].to(f64)
    if g4.shape[0] > 0:
        overlaps = bbox_overlaps(anchors, g4)  # (total, G); outside anchors are masked below
        overlaps = torch.where(inside[:, None], overlaps, torch.full_like(overlaps, -1.0))
        max_ov, argmax_ov = overlaps.max(dim=1)
        gt_max = overlaps.max(dim=0).values  # (G,) max over eligible anchors (-1 if none eligible)
        is_gt_argmax = (overlaps == gt_max[None, :]).any(dim=1) & inside
        if not tr.RPN_CLOBBER_POSITIVES:
            labels[inside & (max_ov < float(tr.RPN_NEGATIVE_OVERLAP))] = 0
        labels[is_gt_argmax] = 1
        labels[inside & (max_ov >= float(tr.RPN_POSITIVE_OVERLAP))] = 1
        if tr.RPN_CLOBBER_POSITIVES:
            labels[inside & (max_ov < float(tr.RPN_NEGATIVE_OVERLAP))] = 0
        # the reference encodes in float64 and stores float32
        targets = nonlinear_transform(anchors, g4[argmax_ov]).to(torch.float32).to(f64)
        targets = torch.where(inside[:, None], targets, torch.zeros_like(targets))
    else:
        labels[inside] = 0

    # subsample positives, then negatives up to the batch size (both without replacement)
    batch = int(tr.RPN_BATCH_SIZE)
    num_fg = int(float(tr.RPN_FG_FRACTION) * batch)
    fg = labels == 1
    fg_keep = random_subset(fg, num_fg, generator)
    labels[fg & ~fg_keep] = -1
    num_bg = batch - fg_keep.sum()
    bg = labels == 0
    bg_keep = random_subset(bg, num_bg, generator)
    labels[bg & ~bg_keep] = -1

    weights = torch.zeros((total, 4), dtype=torch.float32, device=dev)
    weights[labels == 1] = torch.as_tensor(tr.RPN_BBOX_WEIGHTS, dtype=torch.float32, device=dev)
    if net.NORMALIZE_RPN:
        mean = torch.as_tensor(net.ANCHOR_MEANS, dtype=f64, device=dev)
        std = torch.as_tensor(net.ANCHOR_STDS, dtype=f64, device=dev)
        targets = torch.where(inside[:, None], (targets - mean) / std, targets)
    targets = targets.to(torch.float32)

    # (y, x, a) rows -> label (a, y, x); targets/weights (1, 4A, h, w) with channel 4a + k
    labels = labels.view(h, w, num_a).permute(2, 0, 1).reshape(-1)
    targets = targets.view(h, w, num_a * 4).permute(2, 0, 1).unsqueeze(0).contiguous()
    weights = weights.view(h, w, num_a * 4).permute(2, 0, 1).unsqueeze(0).contiguous()
    return labels, targets, weights


@torch.no_grad()
def proposal_target(rois: Tensor, gt_boxes: Tensor, cfg: Config,
                    generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Fast R-CNN training rois of one image (the reference's ``proposal_target`` op / ``sample_rois``).

    Args:
        rois: (R, 5) ``[0, x1, y1, x2, y2]`` proposals in scaled-image pixels (single image: batch index 0).
        gt_boxes: (G, 5) or (1, G, 5) ``[x1, y1, x2, y2, class]``, class in 1..C-1.
        cfg: uses ``CLASS_AGNOSTIC``, ``dataset.NUM_CLASSES``, ``TRAIN.BATCH_IMAGES / BATCH_ROIS /
            FG_FRACTION / FG_THRESH / BG_THRESH_HI / BG_THRESH_LO / BBOX_NORMALIZATION_PRECOMPUTED /
            BBOX_MEANS / BBOX_STDS / BBOX_WEIGHTS``.
        generator: source of the sampling randomness.

    Returns:
        rois (R', 5) float32, labels (R',) int64 (0 = background), bbox_targets (R', 4K) float32 and
        bbox_weights (R', 4K) float32 with K = 2 when ``CLASS_AGNOSTIC`` (slot 1, columns 4:8, holds every
        foreground roi's target) else K = NUM_CLASSES (slot = class).

    The gt boxes are appended to the proposals as rois. Each roi takes the class of its max-IoU gt;
    foreground = IoU >= FG_THRESH, background = IoU in [BG_THRESH_LO, BG_THRESH_HI).
    ``BATCH_ROIS = -1`` (the shipped configs): every candidate is "wanted", so all foreground rois
    (index order) then all background rois (index order) are kept -- with LO = 0 and HI = FG_THRESH
    that is every roi, R' = R + G, and nothing is random. ``BATCH_ROIS > 0``: R' = BATCH_ROIS /
    BATCH_IMAGES, at most ``round(FG_FRACTION * R')`` random foreground rois, then random background
    rois to fill; if still short, random rois (any, without replacement within one draw, repeated
    while short) are appended **as background**, as the reference pads. Targets (``nonlinear_transform``
    to the max-IoU gt, float32 as the reference) are normalised by BBOX_MEANS/BBOX_STDS when
    ``BBOX_NORMALIZATION_PRECOMPUTED`` and written, with BBOX_WEIGHTS, only for foreground rois.
    With no gt boxes (the reference crashes; its roidb filter removes such images) every roi is
    background.
    """
    tr = cfg.TRAIN
    if rois.dim() != 2 or rois.shape[1] != 5:
        raise ValueError(f"proposal_target: rois must be (R, 5) [batch, x1, y1, x2, y2], got {tuple(rois.shape)}")
    gt = _gt_2d(gt_boxes, 5, "proposal_target")
    dev = rois.device
    gt = gt.to(device=dev, dtype=torch.float32)
    r = rois.to(torch.float32)
    if r.shape[0] and bool((r[:, 0] != 0).any()):
        raise ValueError("proposal_target: only single-image batches are supported (rois[:, 0] must be 0)")
    num_classes = int(cfg.dataset.NUM_CLASSES)
    num_reg = 2 if cfg.CLASS_AGNOSTIC else num_classes
    batch_rois, batch_images = int(tr.BATCH_ROIS), int(tr.BATCH_IMAGES)
    if batch_rois != -1 and (batch_rois <= 0 or batch_rois % batch_images != 0):
        raise ValueError(f"proposal_target: TRAIN.BATCH_ROIS must be -1 or a positive multiple of "
                         f"TRAIN.BATCH_IMAGES ({batch_images}), got {batch_rois}")

    all_rois = torch.cat([r, torch.cat([torch.zeros_like(gt[:, :1]), gt[:, :4]], dim=1)], dim=0)
    n = all_rois.shape[0]
    if batch_rois == -1:
        rois_per_image = n
        fg_per_image = n
    else:
        rois_per_image = batch_rois // batch_images
        fg_per_image = int(round(float(tr.FG_FRACTION) * rois_per_image))  # np.round: half to even

    if gt.shape[0] > 0:
        ov = bbox_overlaps(all_rois[:, 1:].to(torch.float64), gt[:, :4].to(torch.float64))
        max_ov, assign = ov.max(dim=1)
        cls = gt[assign, 4].round().to(torch.int64)
    else:
        max_ov = torch.zeros(n, dtype=torch.float64, device=dev)
        assign = torch.zeros(n, dtype=torch.int64, device=dev)
        cls = torch.zeros(n, dtype=torch.int64, device=dev)

    fg = max_ov >= float(tr.FG_THRESH)
    num_fg = min(fg_per_image, int(fg.sum()))
    fg_keep = random_subset(fg, num_fg, generator) if int(fg.sum()) > num_fg else fg
    bg = (max_ov < float(tr.BG_THRESH_HI)) & (max_ov >= float(tr.BG_THRESH_LO))
    num_bg = min(rois_per_image - num_fg, int(bg.sum()))
    bg_keep = random_subset(bg, num_bg, generator) if int(bg.sum()) > num_bg else bg
    idx = torch.arange(n, device=dev)
    # the reference's random choice returns the picks in random order; index order is kept here
    keep = torch.cat([idx[fg_keep], idx[bg_keep]])
    while keep.numel() < rois_per_image:  # pad with random rois (counted as background below)
        gap = min(n, rois_per_image - keep.numel())
        keep = torch.cat([keep, _perm(n, generator, dev)[:gap]])

    labels = cls[keep].clone()
    labels[num_fg:] = 0
    out_rois = all_rois[keep]
    t = nonlinear_transform(out_rois[:, 1:], gt[assign[keep], :4]) if gt.shape[0] > 0 \
        else torch.zeros((keep.numel(), 4), dtype=torch.float32, device=dev)
    if tr.BBOX_NORMALIZATION_PRECOMPUTED:
        mean = torch.as_tensor(tr.BBOX_MEANS, dtype=torch.float64, device=dev)
        std = torch.as_tensor(tr.BBOX_STDS, dtype=torch.float64, device=dev)
        t = ((t.to(torch.float64) - mean) / std).to(torch.float32)

    m = keep.numel()
    targets = torch.zeros((m, num_reg, 4), dtype=torch.float32, device=dev)
    weights = torch.zeros((m, num_reg, 4), dtype=torch.float32, device=dev)
    pos = labels > 0
    slot = torch.ones_like(labels) if cfg.CLASS_AGNOSTIC else labels
    if bool((slot[pos] >= num_reg).any()):
        raise ValueError(f"proposal_target: gt class {int(slot[pos].max())} is out of range for "
                         f"dataset.NUM_CLASSES = {num_classes}")
    rows = torch.arange(m, device=dev)[pos]
    targets[rows, slot[pos]] = t[pos]
    weights[rows, slot[pos]] = torch.as_tensor(tr.BBOX_WEIGHTS, dtype=torch.float32, device=dev)
    return out_rois, labels, targets.view(m, 4 * num_reg), weights.view(m, 4 * num_reg)
