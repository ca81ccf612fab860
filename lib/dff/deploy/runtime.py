"""The onnxruntime backend of the video engine (:class:`OnnxStages`), and :func:`make_detector`, which picks a backend.

:class:`OnnxStages` is a stage runner for the video engine of the export's task (a detector's
:class:`~dff.engine.video.VideoDetector`, a segmentation model's :class:`~dff.engine.segment.VideoSegmenter`:
:data:`dff.engine.engines.ENGINES`), like PyTorch's :class:`~dff.engine.fastpath.StageRunner`: its ``feature``,
``flow``, ``warp``, ``aggregate`` and the task network (a detector's ``head``, a segmentation model's
``task_maps``) run the exported ``key.onnx`` / ``nonkey.onnx`` / ``keyagg.onnx`` (:mod:`dff.deploy.export`) with
onnxruntime, and its ``post`` is the
engine's own post-processing (a detector's :func:`dff.engine.postprocess.pred_eval_fixed`; a segmenter's
upsampling and arg-max run in the engine itself). The engine, its key-frame loop (the temporal scheme of the
export's config) and its results are the PyTorch backend's: one key-frame rule.

Each graph runs as one onnxruntime session per stage, cut at its named stage boundaries (``feat``;
``flow`` and ``scale``): the nodes are those of the graph, nothing is recomputed, and the engine times
the stages as it does PyTorch's (feature, flow, warp, aggregate, head, post). So a key frame with key-frame
aggregation (``TEST.AGGREGATION``) runs ``keyagg.onnx``'s stages in the engine's own loop
(:meth:`dff.temporal.base.KeyFrameLoop.key_frame`: its own feature, the flow to the previous key frame of the same
size, the warp of that one's aggregated feature, the aggregation), and the first key frame ``key.onnx``'s.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np
import torch
from torch import Tensor

from dff.config import Config, config_from_dict
from dff.deploy.export import (
    MANIFEST,
    baked_settings,
    cached_export,
    export_signature,
    manifest_stage_io,
    manifest_task,
    model_task,
    read_manifest,
    require,
)
from dff.engine.engines import ENGINES, video_engine
from dff.engine.fastpath import FastPath
from dff.engine.video import VideoEngine
from dff.models.base import FeatureModel
from dff.temporal import LoopOptions, build_scheme, key_frame_interval
from dff.temporal.async_keys import KeyWorker

try:  # optional: pip install -e .[deploy]
    import onnx
    import onnx.utils
    import onnxruntime as ort
except ImportError:
    onnx = ort = None

__all__ = ["BACKENDS", "OnnxEngine", "OnnxStages", "onnx_detector", "make_detector", "backend_description",
           "needed_stages", "stage_graphs"]

BACKENDS = ("torch", "onnxruntime")


@dataclasses.dataclass(frozen=True)
class OnnxEngine(FastPath):
    """The ``fast`` of an :class:`OnnxVideoDetector`'s runner: no PyTorch speed-up is on, and ``describe()``
    names the engine instead (what benchmarks print and the tester's result cache keys on)."""

    engine: str = "onnxruntime"

    def describe(self) -> str:
        return self.engine


def backend_description(session: "ort.InferenceSession", threads: int) -> str:
    """``onnxruntime 1.x (CPUExecutionProvider, 2 threads)``."""
    return f"onnxruntime {ort.__version__} ({', '.join(session.get_providers()[:1])}, {threads} threads)"


class OnnxStages:
    """The stages of an ONNX export (``onnx_dir``: the folder ``tools/export_onnx.py`` writes) on onnxruntime.

    Args:
        onnx_dir: the export folder (``model.json``, ``key.onnx``, DFF: ``nonkey.onnx``).
        cfg: the config; its settings that the graphs bake in (``dff.deploy.export.baked_keys`` of the export's
            task, e.g. a detector's ``TEST.RPN_POST_NMS_TOP_N``) must be the export's: a ``ValueError`` names any
            that differ.
        post: the engine's post-processing (``VideoDetector.post_function``; None for a segmenter), run on the host.
        graphs: the graphs to load (``key``; ``nonkey`` where non-key frames are warped; ``keyagg`` for the
            key-frame aggregation): each stage from the first of them that has it (:func:`stage_graphs`).
        device: ``"cpu"`` (CPUExecutionProvider) or ``"cuda"`` (CUDAExecutionProvider); inputs, outputs and
            the post-processing stay on the host.
        threads: onnxruntime's intra-op threads (default ``torch.get_num_threads()``, as PyTorch uses).
    """

    sync_free = False  # the post-processing runs on the host, synchronously

    def __init__(self, onnx_dir: str | os.PathLike, manifest: dict, cfg: Config, post, graphs: tuple[str, ...],
                 device: str | torch.device = "cpu", threads: int | None = None) -> None:
        require(onnx, ort)
        self.onnx_dir = os.fspath(onnx_dir)
        self.manifest = manifest
        self.task = manifest_task(manifest)
        differ = {k: (v, manifest["baked"].get(k)) for k, v in baked_settings(cfg, self.task).items()
                  if v != manifest["baked"].get(k)}
        if differ:
            what = "; ".join(f"{k} = {b!r} in the export, {a!r} in the config" for k, (a, b) in differ.items())
            raise ValueError(f"{self.onnx_dir}: the export has other values of settings it bakes in than the config: "
                             f"{what} (export again with this config)")
        self.post = post
        self.class_names = tuple(manifest["class_names"]) if manifest.get("class_names") else None
        self.threads = int(threads or torch.get_num_threads())
        self.sessions = self._load_sessions(torch.device(device), graphs)
        self.fast = OnnxEngine(engine=backend_description(next(iter(self.sessions.values())), self.threads))

    def _load_sessions(self, device: torch.device, graphs: tuple[str, ...]) -> dict[str, "ort.InferenceSession"]:
        """One session per stage, cut out of the first graph that has it at the stage's named inputs and outputs
        (the graphs share the task network: it is loaded once)."""
        if device.type == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise ValueError("--device cuda: this onnxruntime has no CUDAExecutionProvider "
                                 "(pip install onnxruntime-gpu)")
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        elif device.type == "cpu":
            providers = ["CPUExecutionProvider"]
        else:
            raise ValueError(f"the onnxruntime backend runs on cpu or cuda, not {device}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # errors only: the exporter's unused shape nodes are not worth a warning
        # no busy-waiting between runs: idle onnxruntime threads would take the cores from the host's own work
        # (decoding, post-processing) and from PyTorch in the same process
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        sessions = {}
        self.inputs: dict[str, list[str]] = {}  # stage -> its session's input names (the graph's), in stage order
        for g in graphs:
            spec = self.manifest["graphs"][g]
            todo = [stage for stage in spec["stages"] if stage not in sessions]
            if not todo:
                continue
            model = onnx.load(os.path.join(self.onnx_dir, spec["file"]))
            extractor = onnx.utils.Extractor(model)
            for stage in todo:
                inputs, outputs = manifest_stage_io(self.manifest, g, stage)
                part = extractor.extract_model(inputs, outputs)
                sessions[stage] = ort.InferenceSession(part.SerializeToString(), options, providers=providers)
                self.inputs[stage] = inputs
            del model, extractor
        return sessions

    def _run(self, stage: str, *inputs: Tensor) -> list[Tensor]:
        """The stage's session on ``inputs`` in its :data:`dff.deploy.graphs.STAGE_IO` order (the graph that the
        stage was cut from may name them otherwise: ``keyagg.onnx``)."""
        if stage not in self.sessions:
            raise RuntimeError(f"{self.onnx_dir}: the {stage} stage was not loaded (graphs "
                               f"{', '.join(self.manifest['graphs'])}; see {MANIFEST})")
        arrays = {k: np.ascontiguousarray(v.detach().cpu().numpy(), dtype=np.float32)
                  for k, v in zip(self.inputs[stage], inputs, strict=True)}
        return [torch.from_numpy(out) for out in self.sessions[stage].run(None, arrays)]

    def feature(self, data: Tensor) -> Tensor:
        (feat,) = self._run("feature", data)
        return feat

    def flow(self, data: Tensor, key_data: Tensor) -> tuple[Tensor, Tensor]:
        flow, scale = self._run("flow", data, key_data)
        return flow, scale

    def warp(self, key_feat: Tensor, flow: Tensor, scale: Tensor) -> Tensor:
        (feat,) = self._run("warp", key_feat, flow, scale)
        return feat

    def aggregate(self, key_feat: Tensor, prev_warped: Tensor) -> Tensor:
        """The key-frame aggregation: the key frame's own feature and the previous aggregated key feature warped
        to it (1, C, h, w) -> the aggregated feature (1, C, h, w) (``keyagg.onnx``'s aggregate stage)."""
        (feat,) = self._run("aggregate", key_feat, prev_warped)
        return feat

    def head(self, feat: Tensor, im_info: Tensor) -> dict[str, Tensor]:
        """feat, im_info -> ``rois``, ``cls_prob``, ``bbox_pred`` (CPU tensors)."""
        rois, cls_prob, bbox_pred = self._run("head", feat, im_info.reshape(1, 3))
        return {"rois": rois, "cls_prob": cls_prob, "bbox_pred": bbox_pred}

    def task_maps(self, feat: Tensor) -> dict[str, Tensor]:
        """A segmentation model's task network: feat -> ``seg_score`` (1, K, h, w) (a CPU tensor)."""
        (seg_score,) = self._run("task_maps", feat)
        return {"seg_score": seg_score}


def needed_stages(manifest: dict, options: LoopOptions, interval: int) -> tuple[str, ...]:
    """The stages the engine's key-frame loop runs on an export with ``options`` at key ``interval``: those of
    ``key.onnx`` (the feature network and the task network); the flow and the warp where frames are warped or
    key frames aggregated; the aggregation."""
    stages = list(manifest["graphs"]["key"]["stages"])
    if interval > 1 or options.aggregate:
        stages += ["flow", "warp"]
    if options.aggregate:
        stages.append("aggregate")
    return tuple(stages)


def stage_graphs(onnx_dir: str | os.PathLike, manifest: dict, stages: tuple[str, ...]) -> tuple[str, ...]:
    """The graphs of an export to load for ``stages``: for each, the first graph (in ``model.json``'s order) that
    has it. A stage no graph has is a ``ValueError`` naming the fix."""
    graphs: dict[str, None] = {}
    for stage in stages:
        g = next((g for g, spec in manifest["graphs"].items() if stage in spec["stages"]), None)
        if g is None:
            if stage == "aggregate":
                raise ValueError(f"{onnx_dir}: TEST.AGGREGATION is true but this export has no key-frame aggregation "
                                 f"graph (keyagg.onnx: format version 2, a model with network.GRU_AGGREGATION): export "
                                 f"the model again (tools/export_onnx.py) or set TEST.AGGREGATION=false")
            raise ValueError(f"{onnx_dir}: no graph of this export has the {stage} stage (graphs: "
                             f"{', '.join(manifest['graphs'])}); export the model again (tools/export_onnx.py)")
        graphs[g] = None
    return tuple(g for g in manifest["graphs"] if g in graphs)


def onnx_detector(onnx_dir: str | os.PathLike, cfg: Config | None = None, key_interval: int | None = None,
                  device: str | torch.device = "cpu", thresh: float = 1e-4, sync: bool = True,
                  keep_images: bool = False, fast: FastPath | None = None, threads: int | None = None,
                  keys: KeyWorker | None = None) -> VideoEngine:
    """The video engine on an ONNX export, with :class:`OnnxStages`: the engine of the export's task
    (``model.json``'s ``task``: a :class:`~dff.engine.video.VideoDetector`, or a
    :class:`~dff.engine.segment.VideoSegmenter` for a segmentation model; ``thresh`` is the detector's).

    ``cfg``: default the one in ``model.json``; with ``TEST.AGGREGATION`` (an export with ``keyagg.onnx``: the
    ConvGRU) the key frames aggregate as on the PyTorch engine, the loop being the same; only the graphs whose
    stages the loop runs are loaded (:func:`needed_stages`). ``key_interval``, ``thresh``, ``sync``,
    ``keep_images``: as the engine's; ``fast`` is ignored (PyTorch's fast path; accepted so callers can pass the
    same arguments); ``device``: where onnxruntime runs (inputs, outputs and the post-processing stay on the
    host); ``keys``: a key worker for asynchronous key frames (``dff.temporal.async_keys``). A ``ValueError``
    names what the export lacks for ``cfg`` (``keyagg.onnx``; THP's Q)."""
    require(onnx, ort)
    manifest = read_manifest(onnx_dir)
    if cfg is None:
        cfg = config_from_dict(manifest["config"], os.path.join(os.fspath(onnx_dir), "model.json"))
    scheme = build_scheme(cfg, uses_flow=len(manifest["graphs"]) > 1)
    interval = key_frame_interval(cfg, key_interval, scheme.uses_flow)
    task = manifest_task(manifest)
    if task not in ENGINES:
        raise ValueError(f"{onnx_dir}: an export of task {task!r}; the engines are for {', '.join(ENGINES)}")
    stages = needed_stages(manifest, scheme.options(cfg), interval)
    if scheme.has_q and "flow" in stages:
        raise ValueError(f"{onnx_dir}: a THP model's flow network also gives Q, which the export has no graph for: "
                         "run it on the PyTorch engine (--backend torch), or at key interval 1 without THP's options")
    graphs = stage_graphs(onnx_dir, manifest, stages)
    return ENGINES[task](None, cfg, key_interval, device="cpu", thresh=thresh, sync=sync, keep_images=keep_images,
                         stages=lambda post: OnnxStages(onnx_dir, manifest, cfg, post, graphs, device, threads),
                         scheme=scheme, keys=keys)


def make_detector(model: FeatureModel | None, cfg: Config | None, *, backend: str = "torch",
                  onnx_dir: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None,
                  threads: int | None = None, log=None, **kwargs: Any) -> VideoEngine:
    """The video engine of ``backend`` for ``model``.

    * ``"torch"``: the engine of the model's task (:func:`dff.engine.engines.video_engine`: a
      :class:`~dff.engine.video.VideoDetector` or a :class:`~dff.engine.segment.VideoSegmenter`; ``model``,
      ``cfg``, ``**kwargs``).
    * ``"onnxruntime"``: :func:`onnx_detector` on ``onnx_dir``, or without it on the export of
      ``model`` in ``cache_dir`` (:func:`dff.deploy.export.cached_export`: exported once, then reused);
      the engine is the export's task's, as the torch backend's (detection or segmentation).
      With both ``model`` and ``onnx_dir`` the export must be of that model (its weights and baked
      settings): a ``ValueError`` says so otherwise. ``model`` may be None with ``onnx_dir``.

    ``kwargs``: ``key_interval``, ``device``, ``thresh``, ``sync``, ``keep_images``, ``fast`` (the last
    applies to PyTorch only). ``threads``: onnxruntime's threads. ``log``: a callable for progress lines
    (the export). Raises :class:`~dff.deploy.export.DeployUnavailable` without the optional packages.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "torch":
        if onnx_dir is not None:
            raise ValueError("an ONNX folder (--onnx) is for --backend onnxruntime")
        if model is None:
            raise ValueError("the torch backend needs a model")
        return video_engine(model, cfg, **kwargs)
    if model is not None:
        model_task(model)  # a task without an export: a ValueError naming those with one
    require(onnx, ort)
    if onnx_dir is None:
        if model is None:
            raise ValueError("the onnxruntime backend needs a model to export or an ONNX folder (--onnx)")
        onnx_dir = cached_export(model, cache_dir, log=log)
    elif model is not None:
        signature = read_manifest(onnx_dir).get("signature")
        if signature != export_signature(model):
            raise ValueError(f"{onnx_dir}: this export was made from other weights or settings than the model "
                             "given (--model, --set); export it again (tools/export_onnx.py) or leave out --onnx")
    if cfg is None and model is not None:
        cfg = model.cfg
    return onnx_detector(onnx_dir, cfg, threads=threads, **kwargs)

