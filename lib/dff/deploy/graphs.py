"""The stages of a model as exportable modules: what goes into ``key.onnx`` and ``nonkey.onnx``.

Each stage is an ``nn.Module`` over the model's own submodules (no weights are copied) whose forward
uses only what exports to standard ONNX operators with dynamic input sizes:

========  ==================================  ===========================================
stage     inputs                              outputs
========  ==================================  ===========================================
feature   data (1, 3, H, W)                   feat (1, C, h, w)
flow      data, key_data (1, 3, H, W)         flow (1, 2, h, w), scale (1, C, h, w)
warp      key_feat, flow, scale (1, *, h, w)  feat (1, C, h, w)
head      feat (1, C, h, w), im_info (1, 3)   rois (R, 5), cls_prob (1, R, K), bbox_pred (1, R, 4k)
task_maps feat (1, C, h, w)                   seg_score (1, K, h, w)
========  ==================================  ===========================================

with ``h, w = ceil(H/16), ceil(W/16)``, ``R = TEST.RPN_POST_NMS_TOP_N``, ``K`` classes with the
background and ``k`` regression classes (2 when ``CLASS_AGNOSTIC``). The task network is the stage of
the model's ``task`` (:data:`TASK_GRAPHS`): a detector's ``head`` (the R-FCN with the proposal NMS), a
segmentation model's ``task_maps`` (its 1x1 score convolution, :meth:`dff.models.deeplab.DeepLab.head_maps`;
the engine's stage of that name). ``key.onnx`` is feature then the task network, ``nonkey.onnx`` flow,
warp, then the task network. Eagerly each stage computes what the engine computes
(``tests/test_onnx_export.py``, ``tests/test_seg_onnx.py``): the feature network, the flow network and
the warp exactly, the detection head within float32 rounding (its score maps come from a matrix
product and PSROI pooling sums in float32, :func:`dff.deploy.ops.psroi_conv_std`).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from dff.deploy.ops import proposal_pick, psroi_conv_std, warp_scale_std
from dff.models.base import FeatureModel
from dff.models.heads import PSROI_GROUP, PSROI_SPATIAL_SCALE
from dff.models.rfcn import RFCN
from dff.models.rpn import generate_anchors, rpn_inv_normalize

__all__ = ["STAGE_IO", "GRAPHS", "TASK_GRAPHS", "STAGE_PARAMS", "STAGE_SETTINGS", "FeatureStage", "FlowStage",
           "WarpStage", "HeadStage", "TaskMapsStage", "candidates_std", "build_stage", "task_graphs", "task_stages"]

# stage -> (input names, output names); the names are the graphs' tensor names
STAGE_IO: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "feature": (("data",), ("feat",)),
    "flow": (("data", "key_data"), ("flow", "scale")),
    "warp": (("key_feat", "flow", "scale"), ("feat",)),
    "head": (("feat", "im_info"), ("rois", "cls_prob", "bbox_pred")),
    "task_maps": (("feat",), ("seg_score",)),
}
# the model's task -> graph -> its stages in order (a stage's inputs come from the graph's inputs or an earlier
# stage): the feature and flow stages are every task's, the task network the task's own
TASK_GRAPHS: dict[str, dict[str, tuple[str, ...]]] = {
    "det": {"key": ("feature", "head"), "nonkey": ("flow", "warp", "head")},
    "seg": {"key": ("feature", "task_maps"), "nonkey": ("flow", "warp", "task_maps")},
}
GRAPHS: dict[str, tuple[str, ...]] = TASK_GRAPHS["det"]  # a detector's
# stage -> the model's parameters it holds (state_dict prefixes) and the config keys it bakes in: together
# they decide the stage's graph (dff.deploy.export.stage_signature)
STAGE_PARAMS: dict[str, tuple[str, ...]] = {"feature": ("backbone.", "feat_conv_3x3."), "flow": ("flownet.",),
                                            "warp": (), "head": ("rpn_head.", "rfcn_head."), "task_maps": ("score.",)}
STAGE_SETTINGS: dict[str, tuple[str, ...]] = {
    "feature": ("network.BACKBONE", "network.DFF_FEAT_DIM"),
    "flow": ("network.DFF_FEAT_DIM", "network.FLOWNET_WIDTH", "network.FLOW_AVG_POOL"),
    "warp": ("network.DFF_FEAT_DIM",),
    "head": ("CLASS_AGNOSTIC", "dataset.NUM_CLASSES", "network.DFF_FEAT_DIM", "network.ANCHOR_SCALES",
             "network.ANCHOR_RATIOS", "network.ANCHOR_MEANS", "network.ANCHOR_STDS", "network.NORMALIZE_RPN",
             "network.RPN_FEAT_STRIDE", "TEST.RPN_PRE_NMS_TOP_N", "TEST.RPN_POST_NMS_TOP_N", "TEST.RPN_NMS_THRESH",
             "TEST.RPN_MIN_SIZE"),
    "task_maps": ("dataset.NUM_CLASSES", "network.DFF_FEAT_DIM"),
}


def task_graphs(task: str) -> dict[str, tuple[str, ...]]:
    """:data:`TASK_GRAPHS` of ``task`` (a model's ``task``; a ``ValueError`` names the tasks for another)."""
    try:
        return TASK_GRAPHS[task]
    except KeyError:
        raise ValueError(f"no ONNX export for task {task!r} (one of {', '.join(TASK_GRAPHS)})") from None


def task_stages(task: str) -> tuple[str, ...]:
    """The stages of ``task``'s graphs, in :data:`STAGE_IO`'s order."""
    used = {s for stages in task_graphs(task).values() for s in stages}
    return tuple(s for s in STAGE_IO if s in used)


class FeatureStage(nn.Module):
    """The feature network: data (1, 3, H, W) -> feat (1, C, h, w) (:meth:`dff.models.base.FeatureModel.extract_feature`)."""

    def __init__(self, model: FeatureModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, data: Tensor) -> Tensor:
        return self.model.extract_feature(data)


class FlowStage(nn.Module):
    """The flow network: data, key_data (1, 3, H, W) -> flow (1, 2, h, w), scale (1, C, h, w): the model's own
    forward, traced as it is (:class:`dff.models.flownet.FlowNet` avoids what has no ONNX form;
    :class:`dff.models.light_flow.LightFlow` is convolutions, pooling and resizes)."""

    def __init__(self, model: FeatureModel) -> None:
        super().__init__()
        if not model.has_flow:
            raise ValueError("the flow stage needs a DFF model (with FlowNet), got a per-frame model")
        self.flownet = model.flownet

    def forward(self, data: Tensor, key_data: Tensor) -> tuple[Tensor, Tensor]:
        return self.flownet(data, key_data)


class WarpStage(nn.Module):
    """warp(key_feat, flow) x scale (:func:`dff.deploy.ops.warp_scale_std`: the engine's values, ``Gather`` taps)."""

    def forward(self, key_feat: Tensor, flow: Tensor, scale: Tensor) -> Tensor:
        return warp_scale_std(key_feat, flow, scale)


def candidates_std(cls_prob: Tensor, deltas: Tensor, im_info: Tensor, base_anchors: Tensor, feature_stride: int,
                   pre_nms_top_n: int, min_size: float) -> tuple[Tensor, Tensor]:
    """:func:`dff.models.rpn.proposal.proposal_candidates` of one image, exportable: (boxes (pre, 4),
    scores (pre,)) float32 in descending score order, ties in anchor order.

    The same float32 expressions, except MXNet's ``pred_ctr -/+ 0.5*(exp(dw)*w - 1.0)``, which the
    reference rounds once from double: here it is float32 throughout, which is the same value
    whenever ``exp(dw)*w >= 0.5`` (then ``exp(dw)*w - 1`` is exact in float32 and the subtraction is
    one correctly rounded operation either way). The sort is ``TopK`` in ONNX, whose ties go to the
    lower index, as the reference's stable sort.
    """
    a = base_anchors.shape[0]
    h, w = cls_prob.shape[-2:]
    score = cls_prob[0, a:].permute(1, 2, 0).reshape(-1)
    d = deltas[0].reshape(a, 4, h, w).permute(2, 3, 0, 1).reshape(-1, 4)
    # anchors of every cell, index (y*w + x)*A + a (dff.models.rpn.anchors.shifted_anchors)
    sx = torch.arange(w, dtype=torch.float32, device=cls_prob.device) * feature_stride
    sy = torch.arange(h, dtype=torch.float32, device=cls_prob.device) * feature_stride
    shifts = torch.stack([sx[None, :].expand(h, w), sy[:, None].expand(h, w)] * 2, dim=-1).reshape(-1, 1, 4)
    anchors = (shifts + base_anchors[None]).reshape(-1, 4)
    row = torch.arange(h, device=cls_prob.device)[:, None, None].expand(h, w, a).reshape(-1)
    col = torch.arange(w, device=cls_prob.device)[None, :, None].expand(h, w, a).reshape(-1)

    widths = anchors[:, 2] - anchors[:, 0] + 1.0
    heights = anchors[:, 3] - anchors[:, 1] + 1.0
    ctr_x = anchors[:, 0] + 0.5 * (widths - 1.0)
    ctr_y = anchors[:, 1] + 0.5 * (heights - 1.0)
    pred_ctr_x = d[:, 0] * widths + ctr_x
    pred_ctr_y = d[:, 1] * heights + ctr_y
    half_w = 0.5 * (torch.exp(d[:, 2]) * widths - 1.0)
    half_h = 0.5 * (torch.exp(d[:, 3]) * heights - 1.0)
    info = im_info[0].to(torch.float32)
    xmax, ymax = info[1] - 1.0, info[0] - 1.0
    x1 = torch.minimum(pred_ctr_x - half_w, xmax).clamp(min=0.0)
    y1 = torch.minimum(pred_ctr_y - half_h, ymax).clamp(min=0.0)
    x2 = torch.minimum(pred_ctr_x + half_w, xmax).clamp(min=0.0)
    y2 = torch.minimum(pred_ctr_y + half_h, ymax).clamp(min=0.0)
    boxes = torch.stack([x1, y1, x2, y2], dim=1)
    # int(im / stride): positions beyond it are padding of the image
    real_h = torch.floor(info[0] / float(feature_stride))
    real_w = torch.floor(info[1] / float(feature_stride))
    padded = (row.to(torch.float32) >= real_h) | (col.to(torch.float32) >= real_w)
    score = torch.where(padded, torch.full_like(score, -1.0), score)
    if min_size > 0:
        ms = info[2] * float(min_size)
        small = ((boxes[:, 2] - boxes[:, 0] + 1.0) < ms) | ((boxes[:, 3] - boxes[:, 1] + 1.0) < ms)
        half = ms / 2
        grow = torch.stack([-half, -half, half, half])
        boxes = torch.where(small[:, None], boxes + grow, boxes)
        score = torch.where(small, torch.full_like(score, -1.0), score)
    pre = torch.sym_min(pre_nms_top_n, score.shape[0]) if pre_nms_top_n > 0 else score.shape[0]
    order = torch.sort(score, descending=True, stable=True).indices[:pre]
    return boxes.index_select(0, order), score.index_select(0, order)  # Gather (x[i] would be GatherND)


class HeadStage(nn.Module):
    """The task network with the proposal NMS: feat (1, C, h, w), im_info (1, 3) -> rois (R, 5),
    cls_prob (1, R, K), bbox_pred (1, R, 4k) -- :meth:`dff.models.rfcn.RFCN.detect`'s outputs of those
    names. The ``TEST.RPN_*`` settings of the model's config are part of the graph."""

    def __init__(self, model: RFCN) -> None:
        super().__init__()
        self.model = model
        net, test = model.cfg.network, model.cfg.TEST
        self.stride = int(net.RPN_FEAT_STRIDE)
        base = generate_anchors(self.stride, tuple(net.ANCHOR_RATIOS), tuple(net.ANCHOR_SCALES))
        self.register_buffer("base_anchors", torch.from_numpy(base), persistent=False)
        self.normalize = bool(net.NORMALIZE_RPN)
        self.means, self.stds = tuple(net.ANCHOR_MEANS), tuple(net.ANCHOR_STDS)
        self.pre_nms_top_n = int(test.RPN_PRE_NMS_TOP_N)
        self.post_nms_top_n = int(test.RPN_POST_NMS_TOP_N)
        self.nms_thresh = float(test.RPN_NMS_THRESH)
        self.min_size = float(test.RPN_MIN_SIZE)

    def forward(self, feat: Tensor, im_info: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        m = self.model
        rpn_cls_prob, deltas = m.rpn(feat)  # head_maps' RPN half
        if self.normalize:
            deltas = rpn_inv_normalize(deltas, self.means, self.stds)
        boxes, _ = candidates_std(rpn_cls_prob, deltas, im_info, self.base_anchors, self.stride,
                                  self.pre_nms_top_n, self.min_size)
        pick = proposal_pick(boxes, self.nms_thresh, self.post_nms_top_n)
        batch = torch.zeros_like(boxes[:1, :1]).expand(self.post_nms_top_n, 1)  # one image: batch index 0
        rois = torch.cat([batch, boxes.index_select(0, pick)], dim=1)
        # head_maps' R-FCN half (the 1x1 score-map convolutions) with the pooling: psroi_conv_std
        head, x = m.rfcn_head, feat[:, m.feat_dim // 2:]
        pool = (rois, PSROI_SPATIAL_SCALE, PSROI_GROUP, PSROI_GROUP)
        cls = psroi_conv_std(x, head.rfcn_cls.weight, head.rfcn_cls.bias, *pool, head.num_classes)
        box = psroi_conv_std(x, head.rfcn_bbox.weight, head.rfcn_bbox.bias, *pool, 4 * head.num_reg_classes)
        cls_prob = F.softmax(cls.mean(dim=(2, 3)), dim=1)
        bbox_pred = box.mean(dim=(2, 3)).reshape(1, -1, 4 * head.num_reg_classes)
        return rois, cls_prob.reshape(1, -1, head.num_classes), bbox_pred


class TaskMapsStage(nn.Module):
    """A segmentation model's task network: feat (1, C, h, w) -> seg_score (1, K, h, w), the logits at the feature's
    resolution (:meth:`dff.models.deeplab.DeepLab.head_maps`, the engine's ``task_maps`` stage); the upsampling to
    the frame and the arg-max are the engine's post-processing, on the host."""

    def __init__(self, model: FeatureModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, feat: Tensor) -> Tensor:
        return self.model.head_maps(feat)["seg_score"]


def build_stage(name: str, model: FeatureModel) -> nn.Module:
    """The stage module ``name`` (a key of :data:`STAGE_IO`) of ``model``, in eval mode."""
    stages = {"feature": FeatureStage, "flow": FlowStage, "warp": lambda _m: WarpStage(), "head": HeadStage,
              "task_maps": TaskMapsStage}
    if name not in stages:
        raise ValueError(f"unknown stage {name!r}; the stages are {', '.join(STAGE_IO)}")
    return stages[name](model).eval()
