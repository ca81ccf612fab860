"""R-FCN on a dilated ResNet-v1, as the reference's ``resnet_v1_101_rfcn`` symbol (spec 1.2-1.7).

The network is split the way DFF needs it:

* :meth:`RFCN.extract_feature` -- the expensive *feature network* (ResNet + ``feat_conv_3x3``), run on
  key frames only by DFF; its output is the feature that DFF caches and warps.
* :meth:`RFCN.detect` -- the cheap *task network* (RPN, proposals, position-sensitive score maps),
  run on every frame on either the frame's own feature or a warped key-frame feature.

``dff_rfcn.model.DFF`` subclasses this class, so the heads are one piece of code for both models.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..config import Config
from ..ops import psroi_pool
from ..rpn import proposal, rpn_inv_normalize
from .resnet import ResNetV1

# The reference hard-codes the PSROIPooling scale (1/16) and 7x7 bins.
PSROI_SPATIAL_SCALE = 0.0625
PSROI_GROUP = 7


def rpn_softmax(cls_score: Tensor) -> Tensor:
    """(N, 2A, h, w) logits -> probabilities; channel a (background) pairs with a + A (foreground).

    The reference reshapes to (N, 2, A*h, w) and soft-maxes over axis 1; doing the same keeps the
    pairing (a, a+A) instead of torchvision's (2a, 2a+1).
    """
    n, c, h, w = cls_score.shape
    return F.softmax(cls_score.view(n, 2, (c // 2) * h, w), dim=1).view(n, c, h, w)


class RPNHead(nn.Module):
    """Two 1x1 convs on the first half of the feature (no 3x3 RPN conv in this model)."""

    def __init__(self, in_channels: int, num_anchors: int) -> None:
        super().__init__()
        self.rpn_cls_score = nn.Conv2d(in_channels, 2 * num_anchors, 1)
        self.rpn_bbox_pred = nn.Conv2d(in_channels, 4 * num_anchors, 1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x (N, C, h, w) -> (cls_score (N, 2A, h, w), bbox_pred (N, 4A, h, w), normalised deltas)."""
        return self.rpn_cls_score(x), self.rpn_bbox_pred(x)


class RFCNHead(nn.Module):
    """Position-sensitive score maps, PSROI pooling and voting (mean over the 7x7 bins)."""

    def __init__(self, in_channels: int, num_classes: int, num_reg_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.num_reg_classes = num_reg_classes
        g2 = PSROI_GROUP * PSROI_GROUP
        self.rfcn_cls = nn.Conv2d(in_channels, g2 * num_classes, 1)
        self.rfcn_bbox = nn.Conv2d(in_channels, g2 * 4 * num_reg_classes, 1)

    def forward(self, x: Tensor, rois: Tensor) -> tuple[Tensor, Tensor]:
        """x (N, C, h, w), rois (R, 5) -> (cls_score (R, num_classes), bbox_pred (R, 4*num_reg_classes))."""
        cls_maps = self.rfcn_cls(x)
        bbox_maps = self.rfcn_bbox(x)
        cls = psroi_pool(cls_maps, rois, PSROI_SPATIAL_SCALE, PSROI_GROUP, PSROI_GROUP, self.num_classes)
        box = psroi_pool(bbox_maps, rois, PSROI_SPATIAL_SCALE, PSROI_GROUP, PSROI_GROUP, 4 * self.num_reg_classes)
        return cls.mean(dim=(2, 3)), box.mean(dim=(2, 3))


class RFCN(nn.Module):
    """Per-frame R-FCN detector. ``cfg`` is the config object of :mod:`dff.config`."""

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        net = cfg.network
        self.cfg = cfg
        self.num_classes = int(cfg.dataset.NUM_CLASSES)
        self.num_reg_classes = 2 if cfg.CLASS_AGNOSTIC else self.num_classes
        self.num_anchors = len(net.ANCHOR_SCALES) * len(net.ANCHOR_RATIOS)
        feat_dim = int(net.DFF_FEAT_DIM)
        if feat_dim % 2:
            raise ValueError(f"network.DFF_FEAT_DIM must be even (split RPN/R-FCN), got {feat_dim}")
        self.feat_dim = feat_dim
        self.backbone = ResNetV1(net.BACKBONE)
        self.feat_conv_3x3 = nn.Conv2d(self.backbone.out_channels, feat_dim, 3, padding=6, dilation=6)
        self.rpn_head = RPNHead(feat_dim // 2, self.num_anchors)
        self.rfcn_head = RFCNHead(feat_dim // 2, self.num_classes, self.num_reg_classes)

    # feature network ------------------------------------------------------------------------------
    def extract_feature(self, data: Tensor) -> Tensor:
        """data (N, 3, H, W) -> feature (N, DFF_FEAT_DIM, ceil(H/16), ceil(W/16)) (``feat_conv_3x3_relu``)."""
        return F.relu(self.feat_conv_3x3(self.backbone(data)))

    # task network ---------------------------------------------------------------------------------
    def rpn(self, feat: Tensor) -> tuple[Tensor, Tensor]:
        """feature -> (rpn_cls_prob (N, 2A, h, w), rpn_bbox_pred (N, 4A, h, w) normalised deltas)."""
        cls_score, bbox_pred = self.rpn_head(feat[:, : self.feat_dim // 2])
        return rpn_softmax(cls_score), bbox_pred

    def propose(self, rpn_cls_prob: Tensor, rpn_bbox_pred: Tensor, im_info: Tensor,
                train: bool = False) -> tuple[Tensor, Tensor]:
        """RPN outputs -> (rois (N*post, 5) [batch, x1, y1, x2, y2], deltas after inverse normalisation)."""
        net = self.cfg.network
        p = self.cfg.TRAIN if train else self.cfg.TEST
        deltas = rpn_bbox_pred.detach()
        if net.NORMALIZE_RPN:
            deltas = rpn_inv_normalize(deltas, net.ANCHOR_MEANS, net.ANCHOR_STDS)
        rois = proposal(rpn_cls_prob.detach(), deltas, im_info,
                        feature_stride=int(net.RPN_FEAT_STRIDE), scales=tuple(net.ANCHOR_SCALES),
                        ratios=tuple(net.ANCHOR_RATIOS), pre_nms_top_n=int(p.RPN_PRE_NMS_TOP_N),
                        post_nms_top_n=int(p.RPN_POST_NMS_TOP_N), nms_threshold=float(p.RPN_NMS_THRESH),
                        min_size=float(p.RPN_MIN_SIZE))
        return rois, deltas

    def detect(self, feat: Tensor, im_info: Tensor) -> dict[str, Tensor]:
        """The test-time task network on a feature map (the frame's own or a warped key feature).

        Returns (MXNet output names in brackets):
          ``rois`` (R, 5) [rois_output], ``cls_prob`` (1, R, C) [cls_prob_reshape_output],
          ``bbox_pred`` (1, R, 4*num_reg_classes) [bbox_pred_reshape_output], ``cls_score`` (R, C),
          ``rpn_cls_prob`` (N, 2A, h, w), ``rpn_bbox_pred`` (N, 4A, h, w) and ``rpn_bbox_pred_inv``.
        """
        rpn_cls_prob, rpn_bbox_pred = self.rpn(feat)
        rois, deltas = self.propose(rpn_cls_prob, rpn_bbox_pred, im_info)
        cls_score, bbox_pred = self.rfcn_head(feat[:, self.feat_dim // 2:], rois)
        n = feat.shape[0]
        return {
            "rois": rois,
            "cls_score": cls_score,
            "cls_prob": F.softmax(cls_score, dim=1).view(n, -1, self.num_classes),
            "bbox_pred": bbox_pred.view(n, -1, bbox_pred.shape[1]),
            "rpn_cls_prob": rpn_cls_prob,
            "rpn_bbox_pred": rpn_bbox_pred,
            "rpn_bbox_pred_inv": deltas,
        }

    def forward(self, data: Tensor, im_info: Tensor) -> dict[str, Tensor]:
        """Per-frame test forward: data (N, 3, H, W), im_info (N, 3) -> :meth:`detect` outputs + ``feat``."""
        feat = self.extract_feature(data)
        out = self.detect(feat, im_info)
        out["feat"] = feat
        return out

    def frozen_parameter_prefixes(self) -> list[str]:
        """MXNet-name prefixes of ``network.FIXED_PARAMS`` (matched as name prefixes, spec 5.4)."""
        return list(self.cfg.network.FIXED_PARAMS)

    def extra_repr(self) -> str:
        return f"backbone={self.backbone.arch}, feat_dim={self.feat_dim}, classes={self.num_classes}"


def build_rfcn(cfg: Config, **overrides: Any) -> RFCN:
    """Build the per-frame detector from a config (``overrides`` are for tests)."""
    model = RFCN(cfg)
    return model.eval()
