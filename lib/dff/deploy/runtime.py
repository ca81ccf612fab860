"""The onnxruntime backend of the video engine, and :func:`make_detector`, which picks a backend.

:class:`OnnxVideoDetector` is a :class:`~dff.engine.video.VideoDetector` whose network is the exported
``key.onnx`` / ``nonkey.onnx`` (:mod:`dff.deploy.export`) run by onnxruntime. The host does what the
PyTorch engine does around the network: it decides key frames (the video's start, every
``key_interval`` frames, any size change), keeps the current key frame's ``data`` and ``feat`` (the
state ``model.json`` names) and post-processes the head's outputs with the same code
(:func:`dff.engine.postprocess.pred_eval_fixed`), so the results are the same ``FrameResult`` objects.

Each graph runs as one onnxruntime session per stage, cut at its named stage boundaries (``feat``;
``flow`` and ``scale``): the nodes are those of the graph, nothing is recomputed, and the host can time
the stages, so ``times`` has the engine's keys with the same meaning (feature, flow, warp, head, post).
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
    baked_settings,
    cached_export,
    export_signature,
    read_manifest,
    require,
)
from dff.engine.fastpath import FastPath
from dff.engine.video import STAGES, VideoDetector, key_frame_interval
from dff.models.rfcn import RFCN

try:  # optional: pip install -e .[deploy]
    import onnx
    import onnx.utils
    import onnxruntime as ort
except ImportError:
    onnx = ort = None

__all__ = ["BACKENDS", "OnnxEngine", "OnnxVideoDetector", "make_detector", "backend_description"]

BACKENDS = ("torch", "onnxruntime")


@dataclasses.dataclass(frozen=True)
class OnnxEngine(FastPath):
    """The ``fast`` of an :class:`OnnxVideoDetector`'s runner: no PyTorch speed-up is on, and ``describe()``
    names the engine instead (what benchmarks print and the tester's result cache keys on)."""

    engine: str = "onnxruntime"

    def describe(self) -> str:
        return self.engine


class _HostStages:
    """What the inherited :meth:`VideoDetector.run` / :meth:`~VideoDetector.postprocess` use of a stage
    runner: the post-processing on the host, synchronous."""

    sync_free = False

    def __init__(self, post, description: str) -> None:
        self.post = post
        self.fast = OnnxEngine(engine=description)


def backend_description(session: "ort.InferenceSession", threads: int) -> str:
    """``onnxruntime 1.x (CPUExecutionProvider, 2 threads)``."""
    return f"onnxruntime {ort.__version__} ({', '.join(session.get_providers()[:1])}, {threads} threads)"


class OnnxVideoDetector(VideoDetector):
    """The video engine on an ONNX export (``onnx_dir``: the folder ``tools/export_onnx.py`` writes).

    Args:
        onnx_dir: the export folder (``model.json``, ``key.onnx``, DFF: ``nonkey.onnx``).
        cfg: the config (scales, pixel means, the detection NMS, ``TEST.KEY_FRAME_INTERVAL``); default the
            one in ``model.json``. Its settings that the graphs bake in (``dff.deploy.export.BAKED_KEYS``,
            e.g. ``TEST.RPN_POST_NMS_TOP_N``) must be the export's: a ``ValueError`` names any that differ.
        key_interval, thresh, sync, keep_images: as :class:`~dff.engine.video.VideoDetector`.
        device: ``"cpu"`` (CPUExecutionProvider) or ``"cuda"`` (CUDAExecutionProvider); inputs, outputs
            and the post-processing stay on the host.
        fast: ignored (the PyTorch fast path); accepted so callers can pass the same arguments.
        threads: onnxruntime's intra-op threads (default ``torch.get_num_threads()``, as PyTorch uses).
    """

    def __init__(self, onnx_dir: str | os.PathLike, cfg: Config | None = None, key_interval: int | None = None,
                 device: str | torch.device = "cpu", thresh: float = 1e-4, sync: bool = True,
                 keep_images: bool = False, fast: FastPath | None = None, threads: int | None = None) -> None:
        require(onnx, ort)
        self.onnx_dir = os.fspath(onnx_dir)
        self.manifest = manifest = read_manifest(self.onnx_dir)
        if cfg is None:
            cfg = config_from_dict(manifest["config"], os.path.join(self.onnx_dir, "model.json"))
        differ = {k: (v, manifest["baked"].get(k)) for k, v in baked_settings(cfg).items()
                  if v != manifest["baked"].get(k)}
        if differ:
            what = "; ".join(f"{k} = {b!r} in the export, {a!r} in the config" for k, (a, b) in differ.items())
            raise ValueError(f"{self.onnx_dir}: the export has other values of settings it bakes in than the config: "
                             f"{what} (export again with this config)")
        self.model = None
        self.cfg = cfg
        self.thresh = thresh
        self.device = torch.device("cpu")  # where inputs, outputs and the post-processing live
        self.has_flow = manifest["kind"] == "dff"
        self.class_names = tuple(manifest["class_names"]) if manifest.get("class_names") else None
        self.key_interval = key_frame_interval(cfg, key_interval, self.has_flow)
        self.sync = sync
        self.keep_images = keep_images
        self.threads = int(threads or torch.get_num_threads())
        self.sessions = self._load_sessions(torch.device(device))
        first = next(iter(self.sessions.values()))
        self.runner = _HostStages(self._post_fixed, backend_description(first, self.threads))
        self.reset()

    # sessions ---------------------------------------------------------------------------------------
    def _load_sessions(self, device: torch.device) -> dict[tuple[str, str], "ort.InferenceSession"]:
        """One session per (graph, stage), cut out of the graph at the stage's named inputs and outputs."""
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
        graphs = [g for g in ("key", "nonkey") if g in self.manifest["graphs"]]
        if not self.has_flow or self.key_interval == 1:
            graphs = ["key"]
        for g in graphs:
            spec = self.manifest["graphs"][g]
            model = onnx.load(os.path.join(self.onnx_dir, spec["file"]))
            extractor = onnx.utils.Extractor(model)
            for stage in spec["stages"]:
                io = self.manifest["stages"][stage]
                part = extractor.extract_model(list(io["inputs"]), list(io["outputs"]))
                sessions[g, stage] = ort.InferenceSession(part.SerializeToString(), options, providers=providers)
            del model, extractor
        return sessions

    def _run(self, graph: str, stage: str, **inputs: np.ndarray) -> list[np.ndarray]:
        return self.sessions[graph, stage].run(None, inputs)

    # the engine's step ------------------------------------------------------------------------------
    def reset(self) -> None:
        super().reset()
        self._key_data: np.ndarray | None = None
        self._key_feat: np.ndarray | None = None

    def step(self, data: Tensor, im_info: Tensor, rois: Tensor | None = None) -> tuple[dict, bool, dict]:
        """One frame through the graphs. Returns (``rois``, ``cls_prob``, ``bbox_pred``, ``im_info`` as
        CPU tensors, is_key, stage times), as :meth:`VideoDetector.step`."""
        if rois is not None:
            raise ValueError("the onnxruntime backend computes its own proposals; rois= is a PyTorch-engine option")
        x = np.ascontiguousarray(data.detach().cpu().numpy(), dtype=np.float32)
        info = np.ascontiguousarray(im_info.detach().cpu().numpy(), dtype=np.float32).reshape(1, 3)
        times: dict[str, float] = dict.fromkeys(STAGES, 0.0)
        t0 = self._tick()
        is_key = self._key_feat is None or self._since_key >= self.key_interval or self._key_data.shape != x.shape
        if is_key:
            (feat,) = self._run("key", "feature", data=x)
            t1 = self._tick()
            times["feature"] = t1 - t0
            keep = self.has_flow and self.key_interval > 1
            self._key_data = x
            self._key_feat = feat if keep else np.empty(0, np.float32)  # nothing to warp from: no cache
            self._since_key = 1
            graph = "key"
        else:
            flow, scale = self._run("nonkey", "flow", data=x, key_data=self._key_data)
            tf = self._tick()
            (feat,) = self._run("nonkey", "warp", key_feat=self._key_feat, flow=flow, scale=scale)
            t1 = self._tick()
            times["flow"], times["warp"] = tf - t0, t1 - tf
            self._since_key += 1
            graph = "nonkey"
        rois_out, cls_prob, bbox_pred = self._run(graph, "head", feat=feat, im_info=info)
        out = {"rois": torch.from_numpy(rois_out), "cls_prob": torch.from_numpy(cls_prob),
               "bbox_pred": torch.from_numpy(bbox_pred), "im_info": torch.from_numpy(info)}
        times["head"] = self._tick() - t1
        return out, is_key, times


def make_detector(model: RFCN | None, cfg: Config | None, *, backend: str = "torch",
                  onnx_dir: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None,
                  threads: int | None = None, log=None, **kwargs: Any) -> VideoDetector:
    """The video engine of ``backend`` for ``model``.

    * ``"torch"``: :class:`~dff.engine.video.VideoDetector` (``model``, ``cfg``, ``**kwargs``).
    * ``"onnxruntime"``: :class:`OnnxVideoDetector` on ``onnx_dir``, or without it on the export of
      ``model`` in ``cache_dir`` (:func:`dff.deploy.export.cached_export`: exported once, then reused).
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
        return VideoDetector(model, cfg if cfg is not None else model.cfg, **kwargs)
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
    return OnnxVideoDetector(onnx_dir, cfg, threads=threads, **kwargs)

