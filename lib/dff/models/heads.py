"""The task heads of the detectors (docs/design.md §1.4-1.7, §10.3): the RPN and the position-sensitive
heads that :class:`~dff.models.rfcn.RFCN` runs on a frame's feature (its own or a warped key feature).

``network.HEAD`` picks the R-FCN head by name (:data:`dff.models.registry.HEADS`): ``rfcn``, the reference's
position-sensitive score maps, or ``light``, Light-Head R-CNN's thin maps."""
from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F

from dff.ops import psroi_pool

# The reference hard-codes the PSROIPooling scale (1/16) and 7x7 bins.
PSROI_SPATIAL_SCALE = 0.0625
PSROI_GROUP = 7


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

    def score_maps(self, x: Tensor) -> dict[str, Tensor]:
        """x (N, C, h, w) -> ``cls_maps`` (N, 49*num_classes, h, w), ``bbox_maps`` (N, 49*4*num_reg_classes, h, w)."""
        return {"cls_maps": self.rfcn_cls(x), "bbox_maps": self.rfcn_bbox(x)}

    def pool(self, maps: dict[str, Tensor], rois: Tensor) -> tuple[Tensor, Tensor]:
        """Score maps + rois (R, 5) -> (cls_score (R, num_classes), bbox_pred (R, 4*num_reg_classes))."""
        cls = psroi_pool(maps["cls_maps"], rois, PSROI_SPATIAL_SCALE, PSROI_GROUP, PSROI_GROUP, self.num_classes)
        box = psroi_pool(maps["bbox_maps"], rois, PSROI_SPATIAL_SCALE, PSROI_GROUP, PSROI_GROUP,
                         4 * self.num_reg_classes)
        return cls.mean(dim=(2, 3)), box.mean(dim=(2, 3))

    def forward(self, x: Tensor, rois: Tensor) -> tuple[Tensor, Tensor]:
        """x (N, C, h, w), rois (R, 5) -> (cls_score (R, num_classes), bbox_pred (R, 4*num_reg_classes))."""
        return self.pool(self.score_maps(x), rois)


class LightHead(nn.Module):
    """Light-Head R-CNN's head, the detection head of the mobile variant (docs/design.md §10.3).

    A 1x1 convolution makes a *thin* position-sensitive map of ``dim`` x 7 x 7 channels (its cost does not
    depend on the classes), PSROI pooling gives each roi a (dim, 7, 7) feature, and one fully connected
    layer (``fc_dim``, ReLU) feeds the two sibling outputs ``rfcn_cls`` and ``rfcn_bbox`` (named as R-FCN's,
    so the class-dependent layers, the box de-normalisation and the new-layer initialisation are shared).
    """

    def __init__(self, in_channels: int, num_classes: int, num_reg_classes: int, dim: int = 10,
                 fc_dim: int = 256) -> None:
        super().__init__()
        if dim < 1 or fc_dim < 1:
            raise ValueError(f"network.LIGHT_HEAD_DIM and LIGHT_HEAD_FC must be >= 1, got {dim}, {fc_dim}")
        self.num_classes = num_classes
        self.num_reg_classes = num_reg_classes
        self.dim = dim
        self.thin = nn.Conv2d(in_channels, dim * PSROI_GROUP * PSROI_GROUP, 1)
        self.fc = nn.Linear(dim * PSROI_GROUP * PSROI_GROUP, fc_dim)
        self.rfcn_cls = nn.Linear(fc_dim, num_classes)
        self.rfcn_bbox = nn.Linear(fc_dim, 4 * num_reg_classes)

    def score_maps(self, x: Tensor) -> dict[str, Tensor]:
        """x (N, C, h, w) -> ``thin_maps`` (N, dim*49, h, w)."""
        return {"thin_maps": self.thin(x)}

    def pool(self, maps: dict[str, Tensor], rois: Tensor) -> tuple[Tensor, Tensor]:
        """Thin maps + rois (R, 5) -> (cls_score (R, num_classes), bbox_pred (R, 4*num_reg_classes))."""
        x = psroi_pool(maps["thin_maps"], rois, PSROI_SPATIAL_SCALE, PSROI_GROUP, PSROI_GROUP, self.dim)
        x = F.relu(self.fc(x.flatten(1)))
        return self.rfcn_cls(x), self.rfcn_bbox(x)

    def forward(self, x: Tensor, rois: Tensor) -> tuple[Tensor, Tensor]:
        """x (N, C, h, w), rois (R, 5) -> (cls_score (R, num_classes), bbox_pred (R, 4*num_reg_classes))."""
        return self.pool(self.score_maps(x), rois)
