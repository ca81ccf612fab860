"""Training losses of the end-to-end R-FCN with the reference's normalisations (docs/design.md §1.9, 3.3, 3.4).

MXNet builds the losses from ``SoftmaxOutput`` (whose *gradient* is ``p - onehot`` divided by a
normaliser) and ``MakeLoss(smooth_l1(...), grad_scale=g)``. The functions here return scalar losses
whose autograd gradients are exactly those:

==============  ==============================================  ================================
loss            value                                           reference
==============  ==============================================  ================================
RPN cls         mean 2-way CE over non-ignored anchors          SoftmaxOutput(multi_output,
                                                                normalization='valid', ignore -1)
RPN box         sum(w * smooth_l1(pred - t, sigma)) / 256       MakeLoss(grad_scale=1/RPN_BATCH_SIZE),
                (sigma 1 if NORMALIZE_RPN else 3)               256 is a constant, not the count
R-FCN cls       mean C-way CE over non-ignored rois             SoftmaxOutput(normalization='valid')
R-FCN box       sum(w * smooth_l1(pred - t, 1)) / 128           MakeLoss(grad_scale=1/BATCH_ROIS_OHEM)
==============  ==============================================  ================================

The reference's logged metrics differ (its ``RPNL1LossMetric``/``RCNNL1LossMetric`` divide the summed
box loss by the number of non-ignored anchors/rois); only the gradients matter for training.
"""
from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

__all__ = ["smooth_l1", "softmax_ce_valid", "accuracy_valid", "ohem_select", "rpn_losses", "rcnn_losses"]

IGNORE = -1


def smooth_l1(x: Tensor, sigma: float = 1.0) -> Tensor:
    """MXNet ``smooth_l1(x, scalar=sigma)``, elementwise, any shape.

    ``0.5*(sigma*x)^2`` where ``|x| < 1/sigma^2``, else ``|x| - 0.5/sigma^2``.
    """
    s2 = float(sigma) ** 2
    ax = x.abs()
    return torch.where(ax < 1.0 / s2, 0.5 * s2 * x * x, ax - 0.5 / s2)


def softmax_ce_valid(logits: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy (M, K) logits vs (M,) labels, summed over labels != -1 and divided by their count (min 1).

    The loss whose gradient is MXNet ``SoftmaxOutput(normalization='valid', use_ignore=True,
    ignore_label=-1)``'s: ``(softmax - onehot) / max(#valid, 1)`` on valid rows, 0 on ignored ones.
    """
    if logits.dim() != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(f"softmax_ce_valid: expected logits (M, K) and labels (M,), got {tuple(logits.shape)} "
                         f"and {tuple(labels.shape)}")
    labels = labels.to(torch.int64)
    valid = (labels != IGNORE).sum().clamp(min=1)
    ce = F.cross_entropy(logits, labels, ignore_index=IGNORE, reduction="sum")
    return ce / valid.to(ce.dtype)


@torch.no_grad()
def accuracy_valid(logits: Tensor, labels: Tensor) -> Tensor:
    """Fraction of labels != -1 whose argmax class matches (the reference's RPNAcc / RCNNAcc), 0-d float.

    0 when nothing is valid (the reference's metric would skip the batch).
    """
    labels = labels.to(torch.int64)
    valid = labels != IGNORE
    hit = (logits.argmax(dim=1) == labels) & valid
    return hit.sum().to(torch.float32) / valid.sum().clamp(min=1).to(torch.float32)


@torch.no_grad()
def ohem_select(cls_score: Tensor, bbox_pred: Tensor, labels: Tensor, bbox_targets: Tensor,
                bbox_weights: Tensor, num_keep: int = 128) -> tuple[Tensor, Tensor]:
    """Online hard example mining (the reference's ``BoxAnnotatorOHEM``); no gradient.

    Args:
        cls_score: (R, C) class logits (before the softmax).
        bbox_pred: (R, 4K) box deltas; bbox_targets, bbox_weights: (R, 4K) from :func:`proposal_target`.
        labels: (R,) int labels from :func:`proposal_target` (all >= 0).
        num_keep: ``TRAIN.BATCH_ROIS_OHEM``.
    Returns:
        labels_ohem (R,) int64 and bbox_weights_ohem (R, 4K): the ``num_keep`` rois with the largest loss
        ``-log(softmax(cls_score)[label] + 1e-14) + sum_j w_j * smooth_l1(pred_j - t_j, sigma=1)`` keep
        their label and weights; the others get label -1 and weight 0.

    The reference ranks with NumPy's unstable ``argsort`` reversed; here the sort is stable and
    descending (equal losses keep index order), which can only differ on exact ties.
    """
    if cls_score.dim() != 2 or labels.shape != cls_score.shape[:1] or bbox_pred.shape != bbox_targets.shape \
            or bbox_pred.shape != bbox_weights.shape or bbox_pred.shape[0] != cls_score.shape[0]:
        raise ValueError(f"ohem_select: expected cls_score (R, C), labels (R,), bbox_pred/targets/weights (R, 4K); "
                         f"got {tuple(cls_score.shape)}, {tuple(labels.shape)}, {tuple(bbox_pred.shape)}, "
                         f"{tuple(bbox_targets.shape)}, {tuple(bbox_weights.shape)}")
    labels = labels.to(torch.int64)
    prob = F.softmax(cls_score.detach(), dim=1) + 1e-14
    loss_cls = -torch.log(prob.gather(1, labels.clamp(min=0)[:, None])[:, 0])
    loss_box = (bbox_weights * smooth_l1(bbox_pred.detach() - bbox_targets, 1.0)).sum(dim=1)
    order = torch.sort(loss_cls + loss_box, descending=True, stable=True).indices
    drop = order[int(num_keep):]
    labels_ohem = labels.clone()
    labels_ohem[drop] = IGNORE
    weights_ohem = bbox_weights.clone()
    weights_ohem[drop] = 0
    return labels_ohem, weights_ohem


def rpn_losses(cls_score: Tensor, bbox_pred: Tensor, labels: Tensor, bbox_targets: Tensor, bbox_weights: Tensor,
               *, sigma: float, batch_size: int) -> tuple[Tensor, Tensor, Tensor]:
    """RPN losses of one image.

    Args:
        cls_score: (1, 2A, h, w) logits, channel a = background of anchor a, a + A = its foreground.
        bbox_pred: (1, 4A, h, w) **normalised** deltas (the raw head output).
        labels: (A*h*w,) in (a, y, x) order (:func:`dff.models.targets.anchor_target`).
        bbox_targets, bbox_weights: (1, 4A, h, w).
        sigma: smooth-L1 sigma (1 with NORMALIZE_RPN, else 3); batch_size: ``TRAIN.RPN_BATCH_SIZE``.
    Returns:
        (cls_loss, bbox_loss, accuracy) -- accuracy detached.
    """
    n, c2, h, w = cls_score.shape
    if n != 1 or bbox_pred.shape != bbox_targets.shape or bbox_pred.shape != bbox_weights.shape \
            or labels.numel() != (c2 // 2) * h * w:
        raise ValueError(f"rpn_losses: expected one image: cls_score (1, 2A, h, w), labels (A*h*w,), "
                         f"bbox_pred/targets/weights (1, 4A, h, w); got {tuple(cls_score.shape)}, "
                         f"{tuple(labels.shape)}, {tuple(bbox_pred.shape)}, {tuple(bbox_targets.shape)}, "
                         f"{tuple(bbox_weights.shape)}")
    # the reference's reshape to (1, 2, A*h, w): row k of (2, A*h*w) is class k of anchors in (a, y, x) order
    logits = cls_score.reshape(2, -1).t()
    labels = labels.reshape(-1)
    cls_loss = softmax_ce_valid(logits, labels)
    bbox_loss = (bbox_weights * smooth_l1(bbox_pred - bbox_targets, sigma)).sum() / float(batch_size)
    return cls_loss, bbox_loss, accuracy_valid(logits.detach(), labels)


def rcnn_losses(cls_score: Tensor, bbox_pred: Tensor, labels: Tensor, bbox_targets: Tensor, bbox_weights: Tensor,
                *, normalizer: float) -> tuple[Tensor, Tensor, Tensor]:
    """R-FCN losses of one image's rois.

    Args:
        cls_score: (R, C) logits; bbox_pred: (R, 4K) deltas.
        labels: (R,) (OHEM labels: -1 = ignored); bbox_targets, bbox_weights: (R, 4K).
        normalizer: divisor of the summed box loss (``BATCH_ROIS_OHEM`` with OHEM).
    Returns:
        (cls_loss, bbox_loss, accuracy) -- accuracy detached.
    """
    if bbox_pred.shape != bbox_targets.shape or bbox_pred.shape != bbox_weights.shape \
            or bbox_pred.shape[0] != cls_score.shape[0]:
        raise ValueError(f"rcnn_losses: expected cls_score (R, C), bbox_pred/targets/weights (R, 4K); got "
                         f"{tuple(cls_score.shape)}, {tuple(bbox_pred.shape)}, {tuple(bbox_targets.shape)}, "
                         f"{tuple(bbox_weights.shape)}")
    cls_loss = softmax_ce_valid(cls_score, labels)
    bbox_loss = (bbox_weights * smooth_l1(bbox_pred - bbox_targets, 1.0)).sum() / float(normalizer)
    return cls_loss, bbox_loss, accuracy_valid(cls_score.detach(), labels)
