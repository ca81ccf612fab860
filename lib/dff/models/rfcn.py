"""R-FCN on a dilated ResNet-v1, as the reference's ``resnet_v1_101_rfcn`` symbol (docs/design.md §1.2-1.7).

The network is split the way DFF needs it:

* :meth:`RFCN.extract_feature` -- the expensive *feature network* (ResNet + ``feat_conv_3x3``), run on
  key frames only by DFF; its output is the feature that DFF caches and warps.
* :meth:`RFCN.detect` -- the cheap *task network* (RPN, proposals, position-sensitive score maps),
  run on every frame on either the frame's own feature or a warped key-frame feature.
* :meth:`RFCN.forward_train` / :meth:`RFCN.task_losses` -- the training forward (targets, OHEM and
  the four losses of docs/design.md §1.9) on a frame's own feature, or (DFF) on a warped key-frame feature.

``dff.models.dff.DFF`` subclasses this class, so the heads are one piece of code for both models; how the
feature of a frame is made (per frame, warped, aggregated) is the temporal scheme's (:mod:`dff.temporal`).
"""
from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

from dff.config import Config
from dff.models.base import FeatureModel
from dff.models.heads import RPNHead
from dff.models.loss import ohem_select, rcnn_losses, rpn_losses
from dff.models.registry import build_head
from dff.models.rpn import rpn_inv_normalize
from dff.models.rpn.proposal import proposal_candidates, proposal_select
from dff.models.targets import anchor_target, proposal_target

# task_losses' outputs, in the order the trainer logs them (reference names: RPNLogLoss, RPNL1Loss, RCNNLogLoss,
# RCNNL1Loss, RPNAcc, RCNNAcc)
TASK_LOSSES = ("loss", "rpn_cls_loss", "rpn_bbox_loss", "rcnn_cls_loss", "rcnn_bbox_loss", "rpn_acc", "rcnn_acc")


def rpn_softmax(cls_score: Tensor) -> Tensor:
    """(N, 2A, h, w) logits -> probabilities; channel a (background) pairs with a + A (foreground).

    The reference reshapes to (N, 2, A*h, w) and soft-maxes over axis 1; doing the same keeps the
    pairing (a, a+A) instead of torchvision's (2a, 2a+1).
    """
    n, c, h, w = cls_score.shape
    return F.softmax(cls_score.reshape(n, 2, (c // 2) * h, w), dim=1).view(n, c, h, w)


class RFCN(FeatureModel):
    """Per-frame R-FCN detector. ``cfg`` is the config object of :mod:`dff.config`.

    The protocol every model shares is :class:`dff.models.base.FeatureModel`'s; a detector adds the task
    network: :meth:`head_maps`, :meth:`candidates` and :meth:`head_rois` (split where the fast path needs it),
    :meth:`detect` (both halves) and :meth:`task_losses`. DFF adds the flow network (``estimate_flow``, ``warp``,
    ``propagate``).
    """

    kind = "rfcn"  # the checkpoint's ``model_kind`` (dff.models.builder.MODEL_KINDS)
    task = "det"
    task_loss_names = TASK_LOSSES
    new_layers = ("feat_conv_3x3", "rpn_head.rpn_cls_score", "rpn_head.rpn_bbox_pred", "rfcn_head.rfcn_cls",
                  "rfcn_head.rfcn_bbox")
    class_layers = ("rfcn_head.rfcn_cls.",)

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg)
        net = cfg.network
        self.num_reg_classes = 2 if cfg.CLASS_AGNOSTIC else self.num_classes
        self.num_anchors = len(net.ANCHOR_SCALES) * len(net.ANCHOR_RATIOS)
        if self.feat_dim % 2:
            raise ValueError(f"network.DFF_FEAT_DIM must be even (split RPN/R-FCN), got {self.feat_dim}")
        self.rpn_head = RPNHead(self.feat_dim // 2, self.num_anchors)
        self.rfcn_head = build_head(net, self.feat_dim // 2, self.num_classes, self.num_reg_classes)
        if self.num_reg_classes != 2:
            self.class_layers = (*self.class_layers, "rfcn_head.rfcn_bbox.")

    # task network ---------------------------------------------------------------------------------
    def rpn(self, feat: Tensor) -> tuple[Tensor, Tensor]:
        """feature -> (rpn_cls_prob (N, 2A, h, w), rpn_bbox_pred (N, 4A, h, w) normalised deltas)."""
        cls_score, bbox_pred = self.rpn_head(feat[:, : self.feat_dim // 2])
        return rpn_softmax(cls_score), bbox_pred

    def propose(self, rpn_cls_prob: Tensor, rpn_bbox_pred: Tensor, im_info: Tensor,
                train: bool = False) -> tuple[Tensor, Tensor]:
        """RPN outputs -> (rois (N*post, 5) [batch, x1, y1, x2, y2], deltas after inverse normalisation)."""
        cand = self.candidates({"rpn_cls_prob": rpn_cls_prob, "rpn_bbox_pred": rpn_bbox_pred}, im_info, train)
        return self._select(cand, train), cand["rpn_bbox_pred_inv"]

    def head_maps(self, feat: Tensor) -> dict[str, Tensor]:
        """The convolutional part of the task network: fixed shapes, no host synchronisation.

        feat (N, DFF_FEAT_DIM, h, w) -> ``rpn_cls_prob`` (N, 2A, h, w), ``rpn_bbox_pred`` (N, 4A, h, w),
        ``cls_maps`` (N, 49*C, h, w), ``bbox_maps`` (N, 49*4*num_reg_classes, h, w). Split from
        :meth:`head_rois` so the fast path can capture it in a CUDA graph.
        """
        half = self.feat_dim // 2
        rpn_cls_prob, rpn_bbox_pred = self.rpn(feat)
        return {"rpn_cls_prob": rpn_cls_prob, "rpn_bbox_pred": rpn_bbox_pred,
                **self.rfcn_head.score_maps(feat[:, half:])}

    def candidates(self, maps: dict[str, Tensor], im_info: Tensor, train: bool = False) -> dict[str, Tensor]:
        """The fixed-shape half of the proposals (no host synchronisation): ``rpn_bbox_pred_inv``,
        ``cand_boxes`` (N, pre, 4) and ``cand_scores`` (N, pre), sorted (:func:`dff.models.rpn.proposal.proposal_candidates`);
        ``TRAIN`` or ``TEST`` settings."""
        net = self.cfg.network
        p = self.cfg.TRAIN if train else self.cfg.TEST
        deltas = maps["rpn_bbox_pred"].detach()
        if net.NORMALIZE_RPN:
            deltas = rpn_inv_normalize(deltas, net.ANCHOR_MEANS, net.ANCHOR_STDS)
        boxes, scores = proposal_candidates(
            maps["rpn_cls_prob"].detach(), deltas, im_info, feature_stride=int(net.RPN_FEAT_STRIDE),
            scales=tuple(net.ANCHOR_SCALES), ratios=tuple(net.ANCHOR_RATIOS),
            pre_nms_top_n=int(p.RPN_PRE_NMS_TOP_N), min_size=float(p.RPN_MIN_SIZE))
        return {"rpn_bbox_pred_inv": deltas, "cand_boxes": boxes, "cand_scores": scores}

    def _select(self, cand: dict[str, Tensor], train: bool) -> Tensor:
        """The candidates' greedy NMS -> rois (N*post, 5) (:func:`dff.models.rpn.proposal.proposal_select`)."""
        p = self.cfg.TRAIN if train else self.cfg.TEST
        return proposal_select(cand["cand_boxes"], cand["cand_scores"], post_nms_top_n=int(p.RPN_POST_NMS_TOP_N),
                               nms_threshold=float(p.RPN_NMS_THRESH))

    def head_rois(self, maps: dict[str, Tensor], im_info: Tensor, rois: Tensor | None = None) -> dict[str, Tensor]:
        """The data-dependent part of the task network: proposal NMS, PSROI pooling, softmax.

        ``maps`` from :meth:`head_maps`, with or without the :meth:`candidates` entries (the fast path
        computes them in its CUDA graph); returns the outputs of :meth:`detect`. ``rois`` (R, 5), if
        given, replace the proposals (to compare two runs on the same rois).
        """
        if "cand_boxes" not in maps:
            maps = {**maps, **self.candidates(maps, im_info)}
        if rois is None:
            rois = self._select(maps, train=False)
        cls_score, bbox_pred = self.rfcn_head.pool(maps, rois)
        n = maps["rpn_cls_prob"].shape[0]
        return {
            "rois": rois,
            "cls_score": cls_score,
            "cls_prob": F.softmax(cls_score, dim=1).view(n, -1, self.num_classes),
            "bbox_pred": bbox_pred.view(n, -1, bbox_pred.shape[1]),
            "rpn_cls_prob": maps["rpn_cls_prob"],
            "rpn_bbox_pred": maps["rpn_bbox_pred"],
            "rpn_bbox_pred_inv": maps["rpn_bbox_pred_inv"],
        }

    def detect(self, feat: Tensor, im_info: Tensor) -> dict[str, Tensor]:
        """The test-time task network on a feature map (the frame's own or a warped key feature).

        Returns (MXNet output names in brackets):
          ``rois`` (R, 5) [rois_output], ``cls_prob`` (1, R, C) [cls_prob_reshape_output],
          ``bbox_pred`` (1, R, 4*num_reg_classes) [bbox_pred_reshape_output], ``cls_score`` (R, C),
          ``rpn_cls_prob`` (N, 2A, h, w), ``rpn_bbox_pred`` (N, 4A, h, w) and ``rpn_bbox_pred_inv``.
        """
        return self.head_rois(self.head_maps(feat), im_info)

    def forward(self, data: Tensor, im_info: Tensor) -> dict[str, Tensor]:
        """Per-frame test forward: data (N, 3, H, W), im_info (N, 3) -> :meth:`detect` outputs + ``feat``."""
        feat = self.extract_feature(data)
        out = self.detect(feat, im_info)
        out["feat"] = feat
        return out

    # training -------------------------------------------------------------------------------------
    def task_losses(self, feat: Tensor, im_info: Tensor, gt_boxes: Tensor,
                    generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Training task network on one image's feature: targets, proposals, OHEM and the four losses.

        Args:
            feat: (1, DFF_FEAT_DIM, h, w) the frame's feature (or, for DFF, the warped key feature).
            im_info: (1, 3) or (3,) ``[height, width, scale]`` of the frame that carries the loss.
            gt_boxes: (1, G, 5) or (G, 5) ``[x1, y1, x2, y2, class]`` in scaled-image pixels.
            generator: randomness of the anchor / roi subsampling (reproducible training).
        Returns:
            ``loss`` (0-d, the sum of the four, differentiable), ``rpn_cls_loss``, ``rpn_bbox_loss``,
            ``rcnn_cls_loss``, ``rcnn_bbox_loss`` (0-d, differentiable) and ``rpn_acc``, ``rcnn_acc``
            (0-d, detached; accuracies over the non-ignored anchors / OHEM rois).

        As the reference: the RPN anchor targets come from the feature size and the gt; proposals use
        the ``TRAIN.RPN_*`` settings on the inverse-normalised deltas without gradient; the R-FCN rois
        are the 300 proposals plus the gt boxes (:func:`dff.models.targets.proposal_target`); with
        ``TRAIN.ENABLE_OHEM`` the 128 hardest rois carry the R-FCN losses. Without OHEM the box loss is
        divided by ``TRAIN.BATCH_ROIS``; for ``BATCH_ROIS = -1`` the reference would divide by -1 (its
        ``grad_scale = 1/BATCH_ROIS``, i.e. gradient *ascent* on the box loss, a configuration no
        shipped YAML uses), so the number of sampled rois is used instead.
        """
        if feat.dim() != 4 or feat.shape[0] != 1:
            raise ValueError(f"task_losses: one image per call (the reference asserts it); feat is {tuple(feat.shape)}")
        info = im_info.reshape(-1)
        if info.numel() != 3:
            raise ValueError(f"task_losses: im_info must be (1, 3) [height, width, scale], got {tuple(im_info.shape)}")
        gt = gt_boxes[0] if gt_boxes.dim() == 3 and gt_boxes.shape[0] == 1 else gt_boxes
        if gt.dim() != 2 or gt.shape[1] != 5:
            raise ValueError(f"task_losses: gt_boxes must be (1, G, 5) or (G, 5) [x1, y1, x2, y2, class], "
                             f"got {tuple(gt_boxes.shape)}")
        cfg, tr, net = self.cfg, self.cfg.TRAIN, self.cfg.network
        gt = gt.to(device=feat.device, dtype=torch.float32)
        half = self.feat_dim // 2

        # RPN
        rpn_cls_score, rpn_bbox_pred = self.rpn_head(feat[:, :half])
        rpn_label, rpn_target, rpn_weight = anchor_target(rpn_cls_score.shape[-2:], gt, info, cfg, generator)
        rpn_cls, rpn_box, rpn_acc = rpn_losses(
            rpn_cls_score, rpn_bbox_pred, rpn_label, rpn_target, rpn_weight,
            sigma=1.0 if net.NORMALIZE_RPN else 3.0, batch_size=int(tr.RPN_BATCH_SIZE))

        # proposals (no gradient) -> sampled rois with targets
        rois, _ = self.propose(rpn_softmax(rpn_cls_score.detach()), rpn_bbox_pred, info.view(1, 3), train=True)
        rois, labels, bbox_target, bbox_weight = proposal_target(rois, gt, cfg, generator)

        # R-FCN heads on the sampled rois
        cls_score, bbox_pred = self.rfcn_head(feat[:, half:], rois)
        if tr.ENABLE_OHEM:
            labels, bbox_weight = ohem_select(cls_score, bbox_pred, labels, bbox_target, bbox_weight,
                                              int(tr.BATCH_ROIS_OHEM))
            normalizer = float(tr.BATCH_ROIS_OHEM)
        else:
            normalizer = float(tr.BATCH_ROIS) if int(tr.BATCH_ROIS) > 0 else float(max(rois.shape[0], 1))
        rcnn_cls, rcnn_box, rcnn_acc = rcnn_losses(cls_score, bbox_pred, labels, bbox_target, bbox_weight,
                                                   normalizer=normalizer)
        return {
            "loss": rpn_cls + rpn_box + rcnn_cls + rcnn_box,
            "rpn_cls_loss": rpn_cls,
            "rpn_bbox_loss": rpn_box,
            "rcnn_cls_loss": rcnn_cls,
            "rcnn_bbox_loss": rcnn_box,
            "rpn_acc": rpn_acc,
            "rcnn_acc": rcnn_acc,
        }

    def task_loss(self, feat: Tensor, batch: dict[str, Tensor],
                  generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """:meth:`task_losses` on a training batch (``im_info``, ``gt_boxes``): the base class's hook."""
        return self.task_losses(feat, batch["im_info"], batch["gt_boxes"], generator)

    def extra_repr(self) -> str:
        return f"backbone={self.backbone.arch}, feat_dim={self.feat_dim}, classes={self.num_classes}"
