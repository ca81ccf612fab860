"""Semantic segmentation, as the DFF paper's Cityscapes experiments (docs/design.md §12).

* :class:`DeepLab` -- the per-frame network, DeepLab-LargeFOV-like: the feature network of
  :class:`~dff.models.base.FeatureModel` (a stride-16 backbone with its last stage dilated, then ``feat_conv_3x3``,
  3x3 with dilation 6, to ``network.DFF_FEAT_DIM`` channels) and a task network of one 1x1 convolution
  (``score``) to one score map per class (background / void first), soft-maxed and bilinearly upsampled to
  the image. The paper's N_task is exactly that 1x1 convolution, which is why a non-key frame costs so little.
* :class:`DFFDeepLab` -- the same with a flow network: a non-key frame's feature is the key frame's, warped
  by the flow and multiplied by the scale map (:class:`dff.models.dff.FlowModel`), trained end to end on
  (key, current) pairs as the detector is.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from dff.config import Config
from dff.models.base import FeatureModel
from dff.models.dff import FlowModel

IGNORE_LABEL = 255  # Cityscapes' ignore label in the *_labelTrainIds.png maps
SEG_LOSSES = ("loss", "seg_loss", "pixel_acc")


class DeepLab(FeatureModel):
    """Per-frame segmentation. ``segment(feat, size)`` is the task network: feature (N, C, h, w) -> class
    probabilities (N, K, H, W) at ``size``."""

    kind = "deeplab"
    task = "seg"
    task_loss_names = SEG_LOSSES
    new_layers = ("feat_conv_3x3", "score")
    class_layers = ("score.",)

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg)
        per_frame_normalisation(self.backbone)
        self.score = nn.Conv2d(self.feat_dim, self.num_classes, 1)

    # task network ---------------------------------------------------------------------------------
    def head_maps(self, feat: Tensor) -> dict[str, Tensor]:
        """feature (N, DFF_FEAT_DIM, h, w) -> ``seg_score`` (N, K, h, w) logits at the feature's resolution."""
        return {"seg_score": self.score(feat)}

    def segment(self, feat: Tensor, size: tuple[int, int]) -> Tensor:
        """feature (N, DFF_FEAT_DIM, h, w) -> class probabilities (N, K, size[0], size[1]): the 1x1 scores,
        bilinearly upsampled (the reference's fixed bilinear deconvolution), then soft-maxed."""
        return F.softmax(upsample(self.head_maps(feat)["seg_score"], size), dim=1)

    def forward(self, data: Tensor) -> Tensor:
        """Per-frame test forward: data (N, 3, H, W) -> class probabilities (N, K, H, W)."""
        return self.segment(self.extract_feature(data), tuple(data.shape[-2:]))

    # training -------------------------------------------------------------------------------------
    def task_loss(self, feat: Tensor, batch: dict[str, Tensor],
                  generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Pixel-wise cross-entropy over the labelled pixels (``label`` (1, H, W) int64, 255 ignored), the scores
        upsampled to the label's size; ``pixel_acc`` (detached) over the same pixels."""
        label = batch["label"]
        if label.dim() == 2:
            label = label[None]
        if label.dim() != 3 or label.shape[0] != feat.shape[0]:
            raise ValueError(f"task_loss: label must be (N, H, W) class ids, got {tuple(batch['label'].shape)}")
        label = label.to(device=feat.device, dtype=torch.long)
        logits = upsample(self.head_maps(feat)["seg_score"], tuple(label.shape[-2:]))
        valid = label != IGNORE_LABEL
        if not bool(valid.any()):
            zero = logits.sum() * 0.0  # keeps the graph (every parameter gets a zero gradient)
            return {"loss": zero, "seg_loss": zero, "pixel_acc": zero.detach()}
        loss = F.cross_entropy(logits.float(), label, ignore_index=IGNORE_LABEL)
        with torch.no_grad():
            acc = (logits.argmax(1) == label)[valid].float().mean()
        return {"loss": loss, "seg_loss": loss, "pixel_acc": acc}

    def extra_repr(self) -> str:
        return f"backbone={self.backbone.arch}, feat_dim={self.feat_dim}, classes={self.num_classes}"


class DFFDeepLab(FlowModel, DeepLab):
    """DeepLab + a flow network: DFF for segmentation."""

    kind = "dff_deeplab"


def per_frame_normalisation(module: nn.Module) -> None:
    """Replace every trainable ``nn.BatchNorm2d`` in ``module`` by an affine ``nn.InstanceNorm2d`` (same ``weight``
    and ``bias`` names, no running statistics): each frame is normalised by its own statistics in training and at
    test alike. Segmentation trains on one frame per batch, where BatchNorm's batch statistics are exactly these
    and the test's running averages are not: a MobileNetV2 so trained segments the synthetic validation frames
    far better with its batch statistics than with its running ones, and freezing the statistics instead learns
    far slower (the measurements: docs/design.md §12). The reference's ResNet has frozen BatchNorm and is left as it is."""
    for name, child in list(module.named_children()):
        if type(child) is nn.BatchNorm2d:
            norm = nn.InstanceNorm2d(child.num_features, eps=child.eps, affine=True)
            with torch.no_grad():
                norm.weight.copy_(child.weight)
                norm.bias.copy_(child.bias)
            setattr(module, name, norm)
        else:
            per_frame_normalisation(child)


def upsample(scores: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize of (N, K, h, w) score maps to ``size`` (H, W); pixel centres aligned (align_corners False)."""
    if tuple(scores.shape[-2:]) == tuple(size):
        return scores
    return F.interpolate(scores, size=tuple(int(v) for v in size), mode="bilinear", align_corners=False)
