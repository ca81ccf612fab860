"""The stages of a model as exportable modules: what goes into ``key.onnx``, ``nonkey.onnx`` and ``keyagg.onnx``.

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
aggregate own_feat, prev_warped (1, C, h, w)  feat (1, C, h, w)
========  ==================================  ===========================================

with ``h, w = ceil(H/16), ceil(W/16)``, ``R = TEST.RPN_POST_NMS_TOP_N``, ``K`` classes with the
background and ``k`` regression classes (2 when ``CLASS_AGNOSTIC``). The task network is the stage of
the model's ``task`` (:data:`TASK_GRAPHS`): a detector's ``head`` (the R-FCN with the proposal NMS), a
segmentation model's ``task_maps`` (its 1x1 score convolution, :meth:`dff.models.deeplab.DeepLab.head_maps`;
the engine's stage of that name). ``key.onnx`` is feature then the task network, ``nonkey.onnx`` flow,
warp, then the task network. A detector with a key-frame aggregation (the mobile variant's flow-guided ConvGRU,
:mod:`dff.temporal.gru`) also has ``keyagg.onnx``, a key frame after the first: feature, flow to the previous key
frame, warp of the previous aggregated key feature, *aggregate* (:meth:`dff.models.dff.FlowModel.aggregate`),
then the task network; its state (the previous key frame and its aggregated feature) is an input and the new
aggregated feature an output. A stage's tensors have the names of :data:`STAGE_IO` except where a graph renames
them (:data:`GRAPH_NAMES`, :func:`stage_io`: ``keyagg.onnx`` has two features and two key frames).

The detection head is the model's (``network.HEAD``): R-FCN's position-sensitive score maps or Light-Head
R-CNN's thin maps, each pooled by :func:`dff.deploy.ops.psroi_conv_std` (the 1x1 convolution that makes the maps
inside the pooling), the light head then its fully connected layers. Eagerly each stage computes what the
engine computes (``tests/test_onnx_export.py``, ``tests/test_onnx_mobile.py``, ``tests/test_seg_onnx.py``): the
feature network, the flow network, the warp and the aggregation exactly, the detection head within float32
rounding (PSROI pooling sums in float32, R-FCN's score maps come from a matrix product).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from dff.deploy.ops import proposal_pick, psroi_conv_std, warp_scale_std
from dff.models.base import FeatureModel
from dff.models.heads import PSROI_GROUP, PSROI_SPATIAL_SCALE, LightHead, RFCNHead
from dff.models.rfcn import RFCN
from dff.models.rpn import generate_anchors, rpn_inv_normalize
from dff.temporal.aggregation import AGGREGATION

__all__ = ["STAGE_IO", "GRAPHS", "TASK_GRAPHS", "GRAPH_NAMES", "STAGE_PARAMS", "STAGE_SETTINGS", "FeatureStage",
           "FlowStage", "WarpStage", "HeadStage", "TaskMapsStage", "AggregateStage", "candidates_std", "build_stage",
           "task_graphs", "task_stages", "stage_io", "graph_inputs", "aggregates", "AGGREGATING_SCHEMES", "pad_to_even",
           "takes_odd_sizes_as_even"]

# stage -> (input names, output names); the names are the graphs' tensor names
STAGE_IO: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "feature": (("data",), ("feat",)),
    "flow": (("data", "key_data"), ("flow", "scale")),
    "warp": (("key_feat", "flow", "scale"), ("feat",)),
    "head": (("feat", "im_info"), ("rois", "cls_prob", "bbox_pred")),
    "task_maps": (("feat",), ("seg_score",)),
    "aggregate": (("own_feat", "prev_warped"), ("feat",)),
}
# the model's task -> graph -> its stages in order (a stage's inputs come from the graph's inputs or an earlier
# stage): the feature and flow stages are every task's, the task network the task's own. ``keyagg`` is a model's
# only when it aggregates its key frames (:func:`aggregates`)
TASK_GRAPHS: dict[str, dict[str, tuple[str, ...]]] = {
    "det": {"key": ("feature", "head"), "nonkey": ("flow", "warp", "head"),
            "keyagg": ("feature", "flow", "warp", "aggregate", "head")},
    "seg": {"key": ("feature", "task_maps"), "nonkey": ("flow", "warp", "task_maps")},
}
GRAPHS: dict[str, tuple[str, ...]] = TASK_GRAPHS["det"]  # a detector's
# graph -> stage -> {STAGE_IO name: the name in that graph}: keyagg.onnx holds the frame's own feature and the
# aggregated one, the frame and the previous key frame, so its feature, flow and warp stages name theirs apart
GRAPH_NAMES: dict[str, dict[str, dict[str, str]]] = {
    "keyagg": {"feature": {"feat": "own_feat"}, "flow": {"key_data": "prev_key_data"},
               "warp": {"key_feat": "prev_feat", "feat": "prev_warped"}},
}
# the temporal schemes (network.TEMPORAL) whose key-frame aggregation has keyagg.onnx: the ConvGRU's
# (dff.temporal.gru). THP's aggregation would trace too, but its loop reads the flow network's Q on every
# non-key frame, which the flow stage does not export, so a THP model runs on the PyTorch engine
AGGREGATING_SCHEMES = ("gru",)
# stage -> the model's parameters it holds (state_dict prefixes) and the config keys it bakes in: together
# they decide the stage's graph (dff.deploy.export.stage_signature)
STAGE_PARAMS: dict[str, tuple[str, ...]] = {"feature": ("backbone.", "feat_conv_3x3."), "flow": ("flownet.",),
                                            "warp": (), "head": ("rpn_head.", "rfcn_head."), "task_maps": ("score.",),
                                            "aggregate": (f"{AGGREGATION}.",)}
STAGE_SETTINGS: dict[str, tuple[str, ...]] = {
    "feature": ("network.BACKBONE", "network.DFF_FEAT_DIM"),
    "flow": ("network.DFF_FEAT_DIM", "network.FLOWNET_WIDTH", "network.FLOW_AVG_POOL"),
    "warp": ("network.DFF_FEAT_DIM",),
    "head": ("CLASS_AGNOSTIC", "dataset.NUM_CLASSES", "network.DFF_FEAT_DIM", "network.ANCHOR_SCALES",
             "network.ANCHOR_RATIOS", "network.ANCHOR_MEANS", "network.ANCHOR_STDS", "network.NORMALIZE_RPN",
             "network.RPN_FEAT_STRIDE", "TEST.RPN_PRE_NMS_TOP_N", "TEST.RPN_POST_NMS_TOP_N", "TEST.RPN_NMS_THRESH",
             "TEST.RPN_MIN_SIZE"),
    "task_maps": ("dataset.NUM_CLASSES", "network.DFF_FEAT_DIM"),
    "aggregate": ("network.DFF_FEAT_DIM",),
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


def stage_io(graph: str, stage: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(inputs, outputs) of ``stage`` as named in ``graph``: :data:`STAGE_IO`'s, renamed by :data:`GRAPH_NAMES`."""
    rename = GRAPH_NAMES.get(graph, {}).get(stage, {})
    inputs, outputs = STAGE_IO[stage]
    return tuple(rename.get(n, n) for n in inputs), tuple(rename.get(n, n) for n in outputs)


def graph_inputs(task: str, graph: str) -> tuple[str, ...]:
    """The inputs of ``task``'s ``graph``: its stages' inputs that no earlier stage of it produces, in order."""
    produced: set[str] = set()
    inputs: dict[str, None] = {}
    for stage in task_graphs(task)[graph]:
        ins, outs = stage_io(graph, stage)
        inputs.update((n, None) for n in ins if n not in produced)
        produced.update(outs)
    return tuple(inputs)


def aggregates(model: FeatureModel) -> bool:
    """The model aggregates its key frames with an aggregation that exports (:data:`AGGREGATING_SCHEMES`: the
    mobile variant's ConvGRU): its export has ``keyagg.onnx``."""
    return (model.has_flow and model.scheme.name in AGGREGATING_SCHEMES
            and isinstance(getattr(model, AGGREGATION, None), nn.Module))


class FeatureStage(nn.Module):
    """The feature network: data (1, 3, H, W) -> feat (1, C, h, w) (:meth:`dff.models.base.FeatureModel.extract_feature`)."""

    def __init__(self, model: FeatureModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, data: Tensor) -> Tensor:
        return self.model.extract_feature(data)


class FlowStage(nn.Module):
    """The flow network: data, key_data (1, 3, H, W) -> flow (1, 2, h, w), scale (1, C, h, w): the model's own
    (:meth:`dff.models.dff.FlowModel.estimate_flow`), traced as it is (:class:`dff.models.flownet.FlowNet` avoids
    what has no ONNX form; :class:`dff.models.light_flow.LightFlow` is convolutions, slices and resizes).

    A flow network that halves its input as Light Flow does (an odd last row or column taken twice) gives the same
    values on the frames padded to even sizes by repeating that row and column; the stage then pads them first
    (``pad``, :func:`takes_odd_sizes_as_even`). The padding is in the graph for every size (zero rows for an even
    one), so the network's own branch on the parity of the size, which ``torch.export`` would fix at the traced
    example's (even) size and an odd frame would then fail in the runtime, never sees an odd size."""

    def __init__(self, model: FeatureModel) -> None:
        super().__init__()
        if not model.has_flow:
            raise ValueError("the flow stage needs a DFF model (with FlowNet), got a per-frame model")
        self.model = model
        self.pad = takes_odd_sizes_as_even(model)

    def forward(self, data: Tensor, key_data: Tensor) -> tuple[Tensor, Tensor]:
        if self.pad:
            data, key_data = pad_to_even(data), pad_to_even(key_data)
        return self.model.estimate_flow(data, key_data)


def pad_to_even(x: Tensor) -> Tensor:
    """(N, C, H, W) -> (N, C, H + H % 2, W + W % 2): an odd last row and column repeated (ONNX ``Pad`` edge mode;
    the amounts are computed from the size, no branch)."""
    h, w = x.shape[-2:]
    return F.pad(x, (0, w % 2, 0, h % 2), mode="replicate")


@torch.no_grad()
def takes_odd_sizes_as_even(model: FeatureModel, size: tuple[int, int] = (65, 97)) -> bool:
    """The model's flow network gives, on frames of an odd ``size``, exactly its values on the frames padded by
    :func:`pad_to_even` (checked on random frames: what a network that halves its input with the odd edge taken
    twice does, e.g. Light Flow; FlowNet does not)."""
    g = torch.Generator().manual_seed(0)
    device = next(model.parameters()).device
    cur, key = (torch.randn(1, 3, *size, generator=g).mul_(40).to(device) for _ in range(2))
    plain = model.estimate_flow(cur, key)
    padded = model.estimate_flow(pad_to_even(cur), pad_to_even(key))
    return all(a.shape == b.shape and torch.equal(a, b) for a, b in zip(plain, padded))


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
    names, for either detection head (:data:`HEAD_SCORES`). The ``TEST.RPN_*`` settings of the model's config
    are part of the graph."""

    def __init__(self, model: RFCN) -> None:
        super().__init__()
        self.model = model
        head = model.rfcn_head
        kind = next((k for k in HEAD_SCORES if isinstance(head, k)), None)
        if kind is None:
            raise ValueError(f"no ONNX export of the detection head {type(head).__name__} (network.HEAD); the heads "
                             f"with one are {', '.join(k.__name__ for k in HEAD_SCORES)}")
        self.scores = HEAD_SCORES[kind]
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
        head = m.rfcn_head
        cls_score, bbox_pred = self.scores(head, feat[:, m.feat_dim // 2:], rois)
        cls_prob = F.softmax(cls_score, dim=1)
        return rois, cls_prob.reshape(1, -1, head.num_classes), bbox_pred.reshape(1, -1, 4 * head.num_reg_classes)


def rfcn_scores_std(head: RFCNHead, x: Tensor, rois: Tensor) -> tuple[Tensor, Tensor]:
    """:meth:`dff.models.heads.RFCNHead.forward` in standard operators: x (1, C/2, h, w), rois (R, 5) ->
    (cls_score (R, K), bbox_pred (R, 4k)). The 1x1 score-map convolutions are inside the pooling
    (:func:`dff.deploy.ops.psroi_conv_std`: the maps come out in the layout its lookups read)."""
    pool = (rois, PSROI_SPATIAL_SCALE, PSROI_GROUP, PSROI_GROUP)
    cls = psroi_conv_std(x, head.rfcn_cls.weight, head.rfcn_cls.bias, *pool, head.num_classes)
    box = psroi_conv_std(x, head.rfcn_bbox.weight, head.rfcn_bbox.bias, *pool, 4 * head.num_reg_classes)
    return cls.mean(dim=(2, 3)), box.mean(dim=(2, 3))


def light_scores_std(head: LightHead, x: Tensor, rois: Tensor) -> tuple[Tensor, Tensor]:
    """:meth:`dff.models.heads.LightHead.forward` in standard operators: x (1, C/2, h, w), rois (R, 5) ->
    (cls_score (R, K), bbox_pred (R, 4k)). The thin maps (the head's 1x1 convolution ``thin``, ``dim`` x 7 x 7
    channels) pooled to (R, dim, 7, 7) as R-FCN's score maps are (:func:`dff.deploy.ops.psroi_conv_std`, the
    convolution inside the pooling: onnxruntime's head took 5.9 ms a frame at 320 x 512 with the maps transposed
    for :func:`~dff.deploy.ops.psroi_pool_std`, 4.3 ms so), then the head's fully connected layers as its ``pool``
    runs them (fc, ReLU, the two sibling outputs)."""
    pooled = psroi_conv_std(x, head.thin.weight, head.thin.bias, rois, PSROI_SPATIAL_SCALE, PSROI_GROUP, PSROI_GROUP,
                            head.dim)
    hidden = F.relu(head.fc(pooled.flatten(1)))
    return head.rfcn_cls(hidden), head.rfcn_bbox(hidden)


# the detection head's class (network.HEAD) -> its scores in standard operators: (head, the feature's R-FCN half,
# rois) -> (cls_score (R, K), bbox_pred (R, 4k)); the operator dff.ops.psroi_pool has no ONNX form
HEAD_SCORES = {RFCNHead: rfcn_scores_std, LightHead: light_scores_std}


class AggregateStage(nn.Module):
    """The key-frame aggregation: own_feat (the key frame's own feature), prev_warped (the previous aggregated key
    feature warped to this key frame), (1, C, h, w) each -> feat (1, C, h, w), the aggregated feature: the
    model's own (:meth:`dff.models.dff.FlowModel.aggregate`, e.g. the ConvGRU of :mod:`dff.temporal.gru`)."""

    def __init__(self, model: FeatureModel) -> None:
        super().__init__()
        if not aggregates(model):
            raise ValueError(f"the aggregate stage needs a model with the key-frame aggregation of a scheme of "
                             f"{', '.join(AGGREGATING_SCHEMES)} (network.GRU_AGGREGATION), got "
                             f"{model.scheme.name!r}")
        self.model = model

    def forward(self, own_feat: Tensor, prev_warped: Tensor) -> Tensor:
        return self.model.aggregate(own_feat, prev_warped)


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
              "task_maps": TaskMapsStage, "aggregate": AggregateStage}
    if name not in stages:
        raise ValueError(f"unknown stage {name!r}; the stages are {', '.join(STAGE_IO)}")
    return stages[name](model).eval()
