"""Export a model to ONNX: ``key.onnx``, ``nonkey.onnx`` (DFF only), ``keyagg.onnx`` (key-frame aggregation
only) and ``model.json``.

:func:`export_onnx` exports each stage of :mod:`dff.deploy.graphs` with ``torch.onnx.export`` (the
``torch.export``-based exporter: dynamic sizes come out as symbolic dimensions, not as the traced
example's), then joins the stages into the two graphs the engine needs, keeping the stage boundaries
as named tensors (``feat``, ``flow``, ``scale``) so a host can time or split the stages:

* ``key.onnx``: ``data``, ``im_info`` -> ``feat`` (the key feature: the state to keep), ``rois``,
  ``cls_prob``, ``bbox_pred``;
* ``nonkey.onnx``: ``data``, ``im_info``, ``key_data``, ``key_feat`` -> ``feat`` (the warped feature),
  ``rois``, ``cls_prob``, ``bbox_pred``, ``flow``, ``scale``;
* ``keyagg.onnx``, a detector that aggregates its key frames (the mobile variant's ConvGRU): a key frame after
  the first, ``data``, ``prev_key_data``, ``prev_feat``, ``im_info`` -> ``feat`` (the key frame's own feature
  aggregated with the previous aggregated key feature warped to it: the new state), ``rois``, ``cls_prob``,
  ``bbox_pred``, ``flow``, ``scale`` (the flow to the previous key frame).

Format version 2 added ``keyagg.onnx`` and each graph's ``stage_io`` (its stages' tensor names, which
``keyagg.onnx`` renames); a version 1 manifest (no aggregation, every stage named as :data:`STAGE_IO`) still
loads.

A segmentation model (``model.task == "seg"``, :mod:`dff.models.deeplab`) exports the same way with its task
network, the 1x1 score convolution, in place of the detection head (:data:`TASKS`, the one table of what
differs by task): ``key.onnx`` ``data`` -> ``feat``, ``seg_score``; ``nonkey.onnx`` ``data``, ``key_data``,
``key_feat`` -> ``feat``, ``seg_score``, ``flow``, ``scale``; ``model.json`` records ``"task": "seg"`` (a
manifest without ``task`` is a detector's).

Only standard ONNX operators (opset :data:`OPSET`, float32 and int64 tensors); see docs/onnx.md for
what runs in the graphs and what on the host. :func:`cached_export` keeps exports in a folder keyed
by the weights and the settings the graphs bake in, so a second run reuses them.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import json
import os
import shutil
import sys
import tempfile
import warnings
from typing import Any, Callable, Mapping, Sequence

import torch

from dff.config import Config, ConfigError, mobile_parts
from dff.deploy.graphs import (
    GRAPH_NAMES,
    STAGE_IO,
    STAGE_PARAMS,
    STAGE_SETTINGS,
    TASK_GRAPHS,
    aggregates,
    build_stage,
    graph_inputs,
    stage_io,
    task_graphs,
    task_stages,
)
from dff.deploy.ops import TRANSLATIONS, psroi_pool_std
from dff.models.base import FeatureModel
from dff.models.builder import FIXTURE, load_run_model
from dff.models.deeplab import DeepLab
from dff.models.dff import FlowModel
from dff.models.flownet import FlowNet
from dff.models.heads import LightHead
from dff.models.light_flow import LightFlow
from dff.models.mobilenet import MobileNetV2Backbone
from dff.models.resnet import ResNetV1
from dff.models.rfcn import RFCN
from dff.models.rpn import generate_anchors, rpn_inv_normalize
from dff.ops.layers import SeparableConv2d
from dff.ops.prepack import conv_leaky_relu
from dff.temporal.gru import FlowGuidedGRU
from dff.utils.checkpoint import CheckpointError, detect_format
from dff.utils.io import atomic_write_text

try:  # optional: pip install -e .[deploy]
    import onnx
    import onnxscript
except ImportError:
    onnx = onnxscript = None

__all__ = ["OPSET", "FORMAT", "FORMAT_VERSION", "MANIFEST", "DEPLOY_HINT", "DeployUnavailable", "export_onnx",
           "cached_export", "default_cache_dir", "export_signature", "stage_signature", "read_manifest", "graph_files",
           "run_export_onnx", "BAKED_KEYS", "TASKS", "TaskExport", "baked_keys", "manifest_task", "model_task",
           "model_graphs", "manifest_stage_io"]

OPSET = 18
FORMAT = "dff-onnx"
FORMAT_VERSION = 2  # 2: keyagg.onnx and the graphs' stage_io (read_manifest reads 1 too)
MANIFEST = "model.json"
DEPLOY_HINT = "pip install -e .[deploy]  (onnx, onnxscript, onnxruntime)"
_EXAMPLE_HW = (96, 160)  # the traced example's input size; every size works after export


class DeployUnavailable(RuntimeError):
    """The optional deployment packages are not installed; the message says what to install."""


def require(*modules: object) -> None:
    """Raise :class:`DeployUnavailable` unless every optional module imported."""
    if any(m is None for m in modules):
        raise DeployUnavailable(f"ONNX export and the onnxruntime backend need the optional packages: {DEPLOY_HINT}")


def _det_manifest(model: FeatureModel, cfg: Config) -> dict[str, Any]:
    """A detector's entries of ``model.json``: its task network's outputs, what runs in the graphs, on the host."""
    test = cfg.TEST
    post = int(test.RPN_POST_NMS_TOP_N)
    num_classes, reg = model.num_classes, model.num_reg_classes
    return {
        "outputs": {
            "rois": {"shape": [post, 5], "what": "[0, x1, y1, x2, y2] proposals in data pixels"},
            "cls_prob": {"shape": [1, post, num_classes], "what": "class probabilities, column 0 background"},
            "bbox_pred": {"shape": [1, post, 4 * reg],
                          "what": "box deltas (class-agnostic: background slot then foreground)" if reg == 2
                          else "box deltas per class"},
        },
        "in_graph": {"proposal_nms": "ONNX NonMaxSuppression on [x1, y1, x2 + 1, y2 + 1] with rank scores: the same "
                                     "keeps as dff.ops.nms_fixed (docs/onnx.md)",
                     "psroi_pooling": "standard operators, the reference's rounding (float32 sums)",
                     "head": "R-FCN: position-sensitive score maps, PSROI pooling, mean of the bins"
                             if str(cfg.network.HEAD) == "rfcn" else
                             "light head: thin maps, PSROI pooling, fc + ReLU, the class and box layers",
                     "warp": "standard operators (Gather): the values of dff.ops.warp_scale",
                     **({"key_frame_aggregation": "keyagg.onnx: the flow to the previous key frame, the warp x scale "
                                                  "of its aggregated feature and the model's aggregation network "
                                                  "(the ConvGRU: separable convolutions, Sigmoid, Relu)"}
                        if aggregates(model) else {})},
        "host": {"detection_post_processing": "box decoding (float64), per-class NMS and max_per_image: "
                                              "dff.engine.postprocess.pred_eval_fixed, as the PyTorch engine",
                 "why": "the reference decodes and suppresses in float64 and ONNX NonMaxSuppression takes float32 "
                        "boxes and orders tied scores arbitrarily",
                 "settings": {"TEST.NMS": float(test.NMS), "TEST.max_per_image": int(test.max_per_image),
                              "CLASS_AGNOSTIC": bool(cfg.CLASS_AGNOSTIC)}},
    }


def _seg_manifest(model: FeatureModel, cfg: Config) -> dict[str, Any]:
    """A segmentation model's entries of ``model.json`` (:func:`_det_manifest`'s)."""
    return {
        "outputs": {
            "seg_score": {"shape": [1, model.num_classes, "feat_height", "feat_width"],
                          "what": "class scores (logits, not soft-maxed) at the feature's resolution, channel 0 "
                                  "background / void"},
        },
        "in_graph": {"task_network": "the 1x1 score convolution (dff.models.deeplab.DeepLab.head_maps)",
                     "warp": "standard operators (Gather): the values of dff.ops.warp_scale"},
        "host": {"segmentation_post_processing": "seg_score bilinearly upsampled to the original frame "
                                                 "(align_corners False) and the arg-max class of each pixel: "
                                                 "dff.engine.segment.label_map, as the PyTorch engine",
                 "why": "the output size is the original frame's, which the graphs do not take; an (H, W, K) "
                        "float map is the largest tensor of a frame and only its arg-max is wanted"},
    }


@dataclasses.dataclass(frozen=True)
class TaskExport:
    """What the export of a model of one task (``model.task``) needs besides its stages' graphs
    (:data:`dff.deploy.graphs.TASK_GRAPHS`).

    outputs: graph -> its outputs, in order (a stage boundary that is an output can be cut there).
    exportable: the :func:`dff.config.mobile_parts` (by prefix) that have a stage graph; a model with
        another is refused, ``refusal`` saying what the export covers.
    traced: objects whose modules' source the graphs are traced from: a change to one of these files is a
        new graph (the stages' signatures).
    manifest: (model, cfg) -> the task's entries of ``model.json``: ``outputs`` (the task network's),
        ``in_graph``, ``host``.
    """

    outputs: dict[str, tuple[str, ...]]
    exportable: tuple[str, ...]
    refusal: str
    traced: tuple
    manifest: Callable[[FeatureModel, Config], dict[str, Any]]


# the code of every task's graphs: the stages, the export forms of the operators, the networks of the reference
# and the mobile variant's feature and flow networks (docs/design.md §10)
_TRACED_COMMON = (build_stage, psroi_pool_std, FlowNet, ResNetV1, FeatureModel, FlowModel, LightFlow,
                  MobileNetV2Backbone, conv_leaky_relu, SeparableConv2d)
TASKS: dict[str, TaskExport] = {
    "det": TaskExport(
        outputs={"key": ("feat", "rois", "cls_prob", "bbox_pred"),
                 "nonkey": ("feat", "rois", "cls_prob", "bbox_pred", "flow", "scale"),
                 "keyagg": ("feat", "rois", "cls_prob", "bbox_pred", "flow", "scale")},
        exportable=("network.BACKBONE", "network.HEAD", "network.FLOW_NETWORK", "network.GRU_AGGREGATION"),
        refusal="ONNX export of a detector covers its backbone (ResNet or MobileNetV2), its flow network (FlowNet or "
                "Light Flow), its head (R-FCN or light) and the ConvGRU key-frame aggregation",
        traced=_TRACED_COMMON + (RFCN, LightHead, FlowGuidedGRU, generate_anchors, rpn_inv_normalize),
        manifest=_det_manifest),
    "seg": TaskExport(
        outputs={"key": ("feat", "seg_score"), "nonkey": ("feat", "seg_score", "flow", "scale")},
        exportable=("network.BACKBONE", "network.FLOW_NETWORK", "network.HEAD"),  # a DeepLab has no network.HEAD
        refusal="ONNX export of a segmentation model covers its backbone (ResNet or MobileNetV2), its flow network "
                "(FlowNet or Light Flow) and the score convolution, no key-frame aggregation",
        traced=_TRACED_COMMON + (DeepLab,),
        manifest=_seg_manifest),
}
assert set(TASKS) == set(TASK_GRAPHS)


def model_task(model: FeatureModel) -> str:
    """``model.task`` when it has an export (:data:`TASKS`); a ``ValueError`` naming the tasks otherwise."""
    task = getattr(model, "task", "det")
    task_graphs(task)
    return task


def manifest_task(manifest: dict[str, Any]) -> str:
    """The task of an export (``model.json``'s ``task``; a detector's manifest has none)."""
    return str(manifest.get("task", "det"))


def baked_keys(task: str = "det") -> tuple[str, ...]:
    """The config keys whose values are part of ``task``'s graphs (its stages' :data:`STAGE_SETTINGS`): a config
    that differs in one needs a new export."""
    stages = task_stages(task)
    return tuple(dict.fromkeys(k for s, keys in STAGE_SETTINGS.items() if s in stages for k in keys))


# a detector's (every key an export of either task bakes in is one of these)
BAKED_KEYS = baked_keys("det")
# a detector's graphs' outputs, in order
GRAPH_OUTPUTS = TASKS["det"].outputs


def _lookup(cfg: Config, key: str) -> Any:
    v: Any = cfg
    for part in key.split("."):
        v = v[part]
    return v


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, (bool, int, float, str)) or v is None:
        return v
    return str(v)


def baked_settings(cfg: Config, task: str = "det") -> dict[str, Any]:
    """The values of :func:`baked_keys` of ``task`` in ``cfg`` (JSON types)."""
    return {k: _jsonable(_lookup(cfg, k)) for k in baked_keys(task)}


@functools.lru_cache(maxsize=None)
def _code_digest(task: str = "det") -> str:
    """The exporter's versions and the source of the modules ``task``'s graphs are traced from
    (:attr:`TaskExport.traced`)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{torch.__version__} {getattr(onnxscript, '__version__', None)}".encode())
    for obj in TASKS[task].traced:
        module = sys.modules[obj.__module__]
        with open(module.__file__, "rb") as f:
            h.update(f.read())
    return h.hexdigest()


def stage_signature(stage: str, model: FeatureModel, opset: int = OPSET) -> str:
    """A digest of what the graph of ``stage`` depends on: the format version, the opset, the exporter's
    versions and the traced code, the stage's config settings (:data:`dff.deploy.graphs.STAGE_SETTINGS`)
    and its parameters and buffers (names, shapes, values; :data:`dff.deploy.graphs.STAGE_PARAMS`)."""
    h = hashlib.blake2b(digest_size=16)
    settings = {k: _jsonable(_lookup(model.cfg, k)) for k in STAGE_SETTINGS[stage]}
    h.update(json.dumps([FORMAT, FORMAT_VERSION, opset, stage, _code_digest(model_task(model)), settings],
                        sort_keys=True).encode())
    prefixes = STAGE_PARAMS[stage]
    for name, t in sorted(model.state_dict().items()):
        if not prefixes or not name.startswith(prefixes):
            continue
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def export_signature(model: FeatureModel, opset: int = OPSET) -> str:
    """A digest of what the export of ``model`` depends on: its kind and its stages' :func:`stage_signature`."""
    graphs = task_graphs(model_task(model))
    stages = dict.fromkeys(s for g in model_graphs(model) for s in graphs[g])
    h = hashlib.blake2b(digest_size=16)
    h.update(json.dumps([model.kind, {s: stage_signature(s, model, opset) for s in stages}], sort_keys=True).encode())
    return h.hexdigest()


def _example(name: str, model: FeatureModel) -> dict[str, torch.Tensor]:
    """Example inputs of a stage (distinct tensors: the exporter merges an input passed twice)."""
    g = torch.Generator().manual_seed(0)
    hh, ww = _EXAMPLE_HW
    fh, fw = -(-hh // 16), -(-ww // 16)
    c = model.feat_dim
    shapes = {"data": (1, 3, hh, ww), "key_data": (1, 3, hh, ww), "feat": (1, c, fh, fw), "key_feat": (1, c, fh, fw),
              "flow": (1, 2, fh, fw), "scale": (1, c, fh, fw), "own_feat": (1, c, fh, fw), "prev_warped": (1, c, fh, fw)}
    device = next(model.parameters()).device
    out = {}
    for arg in STAGE_IO[name][0]:
        if arg == "im_info":
            out[arg] = torch.tensor([[hh, ww, 1.0]], dtype=torch.float32)
        else:
            out[arg] = torch.randn(shapes[arg], generator=g)
    return {k: v.to(device) for k, v in out.items()}


def _dynamic_shapes(name: str) -> dict[str, Any]:
    """Height and width of every image or map input are dynamic (and the warp's channels: it has no weights)."""
    dim = torch.export.Dim
    image = {2: dim("height", min=32, max=8192), 3: dim("width", min=32, max=8192)}
    fmap = {2: dim("feat_height", min=2, max=512), 3: dim("feat_width", min=2, max=512)}
    channels = dim("channels", min=2, max=65536)
    shapes: dict[str, Any] = {}
    for arg in STAGE_IO[name][0]:
        if arg == "im_info":
            shapes[arg] = None
        elif arg in ("data", "key_data"):
            shapes[arg] = image
        elif name == "warp" and arg in ("key_feat", "scale"):
            shapes[arg] = {1: channels, **fmap}
        else:
            shapes[arg] = fmap
    return shapes


def export_stage(name: str, model: FeatureModel, opset: int = OPSET) -> "onnx.ModelProto":
    """One stage of ``model`` (:data:`dff.deploy.graphs.STAGE_IO`) as an ONNX model with dynamic sizes."""
    require(onnx, onnxscript)
    stage = build_stage(name, model)
    inputs, outputs = STAGE_IO[name]
    example = _example(name, model)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's own deprecation and tracing notes
        program = torch.onnx.export(stage, tuple(example[a] for a in inputs), dynamo=True, verbose=False,
                                    opset_version=opset, input_names=list(inputs), output_names=list(outputs),
                                    dynamic_shapes=_dynamic_shapes(name), custom_translation_table=TRANSLATIONS)
    return program.model_proto


def _prefixed(model: "onnx.ModelProto", prefix: str, io_names: Mapping[str, str] | None = None) -> "onnx.GraphProto":
    """A copy of ``model``'s graph with every name but its inputs' and outputs' prefixed (nodes, edges,
    initializers, value infos), and its inputs and outputs renamed by ``io_names`` (old -> new; the others
    keep theirs). The graphs here have no subgraphs (no control flow)."""
    g = onnx.GraphProto()
    g.CopyFrom(model.graph)
    keep = {v.name for v in g.input} | {v.name for v in g.output}
    names = {o for n in g.node for o in n.output} | {t.name for t in g.initializer} | {v.name for v in g.value_info}
    rename = {n: prefix + n for n in names if n and n not in keep}
    unknown = set(io_names or {}) - keep
    if unknown:
        raise ValueError(f"compose: {sorted(unknown)} are not inputs or outputs of the {prefix.rstrip('/')} stage")
    rename.update(io_names or {})  # the new names cannot meet a prefixed one: those contain the prefix
    for v in (*g.input, *g.output):
        v.name = rename.get(v.name, v.name)
    for n in g.node:
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in n.attribute):
            raise ValueError(f"compose: node {n.name} ({n.op_type}) has a subgraph; not supported")
        n.name = prefix + n.name
        n.input[:] = [rename.get(x, x) for x in n.input]
        n.output[:] = [rename.get(x, x) for x in n.output]
    for t in g.initializer:
        t.name = rename.get(t.name, t.name)
    for v in g.value_info:
        v.name = rename.get(v.name, v.name)
    return g


def compose(stages: Sequence[tuple[str, "onnx.ModelProto"]], outputs: Sequence[str], name: str,
            io_names: Mapping[str, Mapping[str, str]] | None = None) -> "onnx.ModelProto":
    """Join stage models into one graph: a stage input named like an earlier stage's output is that
    output; every other name inside a stage gets the prefix ``<stage>/`` (so stages never collide and a
    stage's nodes and weights can be found again). ``outputs``: the joined graph's outputs, in order.
    ``io_names``: stage -> {its input or output name: the name in this graph} (:data:`dff.deploy.graphs.GRAPH_NAMES`)."""
    graph = onnx.GraphProto(name=name)
    produced: dict[str, onnx.ValueInfoProto] = {}
    opsets: dict[str, int] = {}
    for stage, model in stages:
        if model.functions:
            raise ValueError(f"compose: the {stage} stage has local functions; not supported")
        g = _prefixed(model, f"{stage}/", (io_names or {}).get(stage))
        known = {i.name for i in graph.input}
        graph.input.extend(i for i in g.input if i.name not in produced and i.name not in known)
        graph.node.extend(g.node)
        graph.initializer.extend(g.initializer)
        graph.value_info.extend(v for v in g.value_info if v.name not in produced)
        for o in g.output:
            produced[o.name] = o
        for imp in model.opset_import:
            opsets[imp.domain] = max(opsets.get(imp.domain, 0), imp.version)
    missing = [o for o in outputs if o not in produced]
    if missing:
        raise ValueError(f"compose: no stage produces {missing}")
    graph.output.extend(produced[o] for o in outputs)
    # a stage boundary inside the graph keeps its type and shape: a host cuts the graph there (onnx.utils.Extractor)
    graph.value_info.extend(v for name, v in produced.items() if name not in outputs)
    out = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid(d, v) for d, v in opsets.items()],
                                 producer_name="dff.deploy", producer_version=str(FORMAT_VERSION))
    out.ir_version = stages[0][1].ir_version
    return out


def _save(model: "onnx.ModelProto", path: str) -> None:
    # weights inside the file (one file per graph) unless protobuf's 2 GB limit forbids it
    large = model.ByteSize() > 1_800_000_000
    onnx.save_model(model, path, save_as_external_data=large, location=os.path.basename(path) + ".data")


def _manifest(model: FeatureModel, cfg: Config, graphs: dict[str, str], signature: str) -> dict[str, Any]:
    net, test = cfg.network, cfg.TEST
    task = model_task(model)
    spec, stages_of = TASKS[task], task_graphs(task)
    own = spec.manifest(model, cfg)
    names = model.class_names
    used = {a for g in graphs for a in graph_inputs(task, g)}
    feat_shape = [1, model.feat_dim, "feat_height", "feat_width"]
    inputs = {
        "data": {"shape": [1, 3, "height", "width"], "dtype": "float32",
                 "what": "the frame resized by input_size, RGB, minus pixel_means (RGB order), not divided"},
        "im_info": {"shape": [1, 3], "dtype": "float32", "what": "[height, width, scale] of data"},
        "key_data": {"shape": [1, 3, "height", "width"], "dtype": "float32", "what": "data of the key frame"},
        "key_feat": {"shape": feat_shape, "dtype": "float32",
                     "what": "feat of the key frame (feat_height, feat_width = ceil(height/16), ceil(width/16))"},
        "prev_key_data": {"shape": [1, 3, "height", "width"], "dtype": "float32",
                          "what": "data of the previous key frame (keyagg.onnx)"},
        "prev_feat": {"shape": feat_shape, "dtype": "float32",
                      "what": "feat of the previous key frame: its aggregated feature (keyagg.onnx)"},
    }
    flow_net = "FlowNet" if str(net.FLOW_NETWORK) == "flownet" else "the flow network"
    first: dict[str, str] = {}  # stage -> the first graph that has it: the stage's entry
    for g in graphs:
        for s in stages_of[g]:
            first.setdefault(s, g)
    state = {
        "key_feat": "output 'feat' of key.onnx on the latest key frame",
        "key_data": "input 'data' of key.onnx on the latest key frame",
        "note": "keep both from the last key frame and pass them to nonkey.onnx for the frames until the next "
                "one; a key frame is frame i % key_frame_interval == 0 of a video, and any frame whose size "
                "differs from the key frame's",
    }
    if "keyagg" in graphs:
        state = {
            "key_feat": "output 'feat' of the latest key frame's graph (key.onnx or keyagg.onnx): with aggregation "
                        "the aggregated key feature",
            "key_data": "input 'data' of the latest key frame",
            "note": "keep both from the last key frame and pass them to nonkey.onnx for the frames until the next one "
                    "(a key frame is frame i % key_frame_interval == 0 of a video, and any frame whose size differs "
                    "from the key frame's). With TEST.AGGREGATION true (config), a key frame that has a previous key "
                    "frame of the same size runs keyagg.onnx with them as prev_key_data and prev_feat, and its "
                    "output feat is the new key_feat; the first key frame of a video (or after a size change) runs "
                    "key.onnx. With TEST.AGGREGATION false every key frame runs key.onnx",
            "aggregation": bool(test.AGGREGATION),
        }
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        **({} if task == "det" else {"task": task}),  # a detector's manifest is as before tasks: no task is "det"
        "kind": model.kind,
        "opset": OPSET,
        "signature": signature,
        "graphs": {g: {"file": f, "stages": list(stages_of[g]), "inputs": list(graph_inputs(task, g)),
                       "outputs": list(spec.outputs[g]),
                       "stage_io": {s: dict(zip(("inputs", "outputs"), map(list, stage_io(g, s))))
                                    for s in stages_of[g]}} for g, f in graphs.items()},
        "stages": {s: {"graph": g, "prefix": f"{s}/", **dict(zip(("inputs", "outputs"), map(list, stage_io(g, s))))}
                   for s, g in first.items()},
        "state": state,
        "inputs": {k: v for k, v in inputs.items() if k in used},
        "outputs": {
            "feat": {"shape": feat_shape},
            **own["outputs"],
            "flow": {"shape": [1, 2, "feat_height", "feat_width"],
                     "what": "flow to the key frame (keyagg.onnx: to the previous key frame), feature pixels"},
            "scale": {"shape": feat_shape, "what": f"{flow_net}'s scale map"},
        },
        "input_size": {"scales": _jsonable(cfg.SCALES), "image_stride": int(net.IMAGE_STRIDE),
                       "pixel_means_bgr": _jsonable(net.PIXEL_MEANS), "feature_stride": int(net.RPN_FEAT_STRIDE),
                       "dynamic": ["height", "width"], "traced_example": list(_EXAMPLE_HW)},
        "key_frame_interval": int(test.KEY_FRAME_INTERVAL) if model.has_flow else 1,
        "class_names": list(names) if names is not None else None,
        "in_graph": own["in_graph"],
        "host": own["host"],
        "baked": baked_settings(cfg, task),
        "config": _jsonable(cfg.to_dict()),
        "exporter": {"torch": torch.__version__, "onnx": getattr(onnx, "__version__", None),
                     "onnxscript": getattr(onnxscript, "__version__", None)},
    }


def graph_files(has_flow: bool, aggregates: bool = False) -> dict[str, str]:
    """The graphs of a model: ``key``, ``nonkey`` where it has a flow network (DFF), ``keyagg`` where it also
    aggregates its key frames."""
    files = {"key": "key.onnx"}
    if has_flow:
        files["nonkey"] = "nonkey.onnx"
        if aggregates:
            files["keyagg"] = "keyagg.onnx"
    return files


def model_graphs(model: FeatureModel) -> dict[str, str]:
    """:func:`graph_files` of ``model`` (``keyagg`` only where its task has that graph)."""
    return graph_files(model.has_flow, aggregates(model) and "keyagg" in task_graphs(model_task(model)))


def manifest_stage_io(manifest: dict[str, Any], graph: str, stage: str) -> tuple[list[str], list[str]]:
    """(inputs, outputs) of ``stage`` as named in ``graph`` of an export: the graph's ``stage_io`` (format
    version 2), else the stage's entry (version 1: every graph names a stage's tensors alike)."""
    io = manifest["graphs"][graph].get("stage_io", {}).get(stage) or manifest["stages"][stage]
    return list(io["inputs"]), list(io["outputs"])


def _stage_model(stage: str, model: FeatureModel, opset: int, stage_cache: str | None, say) -> "onnx.ModelProto":
    """The stage's ONNX model: from ``stage_cache`` when it holds one of the same :func:`stage_signature`,
    else exported (and stored there)."""
    path = None
    if stage_cache is not None:
        path = os.path.join(stage_cache, f"{stage}-{stage_signature(stage, model, opset)}.onnx")
        if os.path.isfile(path):
            say(f"the {stage} stage: reusing {path}")
            return onnx.load(path)
    say(f"exporting the {stage} stage")
    proto = export_stage(stage, model, opset)
    if path is not None:
        os.makedirs(stage_cache, exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        _save(proto, tmp)
        os.replace(tmp, path)
    return proto


def export_onnx(model: FeatureModel, out_dir: str | os.PathLike, cfg: Config | None = None, opset: int = OPSET,
                log=None, stage_cache: str | os.PathLike | None = None) -> dict[str, Any]:
    """Export ``model`` (an :class:`~dff.models.rfcn.RFCN` or :class:`~dff.models.dff.DFF`; a
    :class:`~dff.models.deeplab.DeepLab` or :class:`~dff.models.deeplab.DFFDeepLab`: :data:`TASKS`) to
    ``out_dir``: ``key.onnx``, for DFF ``nonkey.onnx``, for a detector with the ConvGRU key-frame aggregation
    ``keyagg.onnx`` (:func:`model_graphs`), and ``model.json`` (:data:`MANIFEST`).

    ``cfg`` is the model's config (default ``model.cfg``); it goes into ``model.json``. ``stage_cache``:
    a folder of exported stages to reuse and add to (a stage is reused when its weights and baked
    settings are the same: e.g. a DFF model and the R-FCN with its weights share the feature network
    and the head, and a new ``TEST.RPN_*`` value re-exports the head only). ``log``: a callable for
    progress lines. Returns the manifest. The folder is written atomically: a partial export is never
    left under ``out_dir``.
    """
    require(onnx, onnxscript)
    cfg = cfg if cfg is not None else model.cfg
    task = model_task(model)
    spec, stages_of = TASKS[task], task_graphs(task)
    unsupported = [p for p in mobile_parts(cfg) if not p.startswith(spec.exportable)]
    if unsupported:
        raise ValueError(f"{spec.refusal}; this model has {', '.join(unsupported)} (the mobile variant runs on the "
                         f"PyTorch engine)")
    say = log or (lambda _msg: None)
    files = model_graphs(model)
    cache = os.fspath(stage_cache) if stage_cache is not None else None
    was_training = model.training
    model.eval()
    try:
        names = dict.fromkeys(s for g in files for s in stages_of[g])
        stages = {s: _stage_model(s, model, opset, cache, say) for s in names}
    finally:
        model.train(was_training)
    out_dir = os.fspath(out_dir)
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".onnx-", dir=parent)
    try:
        for g, f in files.items():
            joined = compose([(s, stages[s]) for s in stages_of[g]], spec.outputs[g], name=g,
                             io_names=GRAPH_NAMES.get(g))
            onnx.checker.check_model(joined)
            _save(joined, os.path.join(tmp, f))
        manifest = _manifest(model, cfg, files, export_signature(model, opset))
        atomic_write_text(os.path.join(tmp, MANIFEST), json.dumps(manifest, indent=1))
        if os.path.isdir(out_dir):
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    say(f"wrote {', '.join(files.values())} and {MANIFEST} to {out_dir}")
    return manifest


def read_manifest(onnx_dir: str | os.PathLike) -> dict[str, Any]:
    """``model.json`` of an export folder; ``FileNotFoundError`` / ``ValueError`` naming the folder."""
    path = os.path.join(os.fspath(onnx_dir), MANIFEST)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{onnx_dir}: no {MANIFEST} there (not a folder written by tools/export_onnx.py)")
    with open(path, encoding="utf-8") as f:
        manifest = json.load(f)
    if manifest.get("format") != FORMAT or int(manifest.get("format_version", 0)) > FORMAT_VERSION:
        raise ValueError(f"{path}: not a {FORMAT} manifest of version <= {FORMAT_VERSION}")
    for g in manifest["graphs"].values():
        if not os.path.isfile(os.path.join(os.fspath(onnx_dir), g["file"])):
            raise FileNotFoundError(f"{onnx_dir}: {g['file']} is missing")
    return manifest


def default_cache_dir() -> str:
    """``$DFF_ONNX_CACHE``, else ``$XDG_CACHE_HOME/dff/onnx`` (``~/.cache/dff/onnx``)."""
    env = os.environ.get("DFF_ONNX_CACHE")
    if env:
        return env
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "dff", "onnx")


def cached_export(model: FeatureModel, cache_dir: str | os.PathLike | None = None, log=None) -> str:
    """The export folder of ``model`` under ``cache_dir`` (default :func:`default_cache_dir`), exported
    first when no folder there has its :func:`export_signature` (the stages in ``cache_dir/stages`` are
    reused). Returns the folder."""
    cache_dir = os.fspath(cache_dir or default_cache_dir())
    signature = export_signature(model)
    out = os.path.join(cache_dir, f"{model.kind}-{signature}")
    try:
        if read_manifest(out).get("signature") == signature:
            return out
    except (FileNotFoundError, ValueError):
        pass
    export_onnx(model, out, log=log, stage_cache=os.path.join(cache_dir, "stages"))
    return out


def run_export_onnx(args: argparse.Namespace) -> int:
    """``tools/export_onnx.py``: load ``args.model`` (a checkpoint or ``fixture``) of ``args.kind`` with
    ``args.cfg`` and ``args.set``, export to ``args.out``. 0, or 2 after one ``error:`` line.

    ``args.kind`` None: a native checkpoint's own kind, else ``"dff"``."""
    try:
        require(onnx, onnxscript)
        kind = args.kind
        if kind is None and (args.model == FIXTURE or detect_format(args.model) != "native"):
            kind = "dff"
        model, cfg = load_run_model(args.model, args.cfg, args.set, kind=kind)
        manifest = export_onnx(model, args.out, cfg, log=lambda m: print(m, flush=True),
                               stage_cache=getattr(args, "cache", None))
    except (DeployUnavailable, ConfigError, CheckpointError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    graphs = ", ".join(f"{g}: {v['file']}" for g, v in manifest["graphs"].items())
    print(f"{manifest['kind']} model -> {args.out} ({graphs}; host post-processing, see {MANIFEST})")
    return 0
