"""DFF against the per-frame R-FCN, in one process, through the same video engine (``tools/benchmark.py``).

The measurements, each a function: network-only time per frame (:func:`time_network`), end-to-end time from
the file (:func:`time_end_to_end`), the two post-processing methods (:func:`time_post`), a torch.profiler op
table (:func:`profile`), all of these per key interval (:func:`measure_intervals`), mAP per key interval
(:func:`measure_maps`) and time and peak memory against the stream's length (:func:`measure_lengths`). The
outputs: the table (:func:`format_table`), the JSON report (:func:`build_report`) and the plot
(:func:`write_plot`). :func:`run_benchmark` composes them for the command line.

THP (docs/design.md §9): with the adaptive key-frame schedule the per-frame R-FCN is measured against one
``"adaptive"`` row (:func:`measure_adaptive`) instead of rows per key interval; :func:`time_partial_update`
times the partial feature update forced to cover given fractions of the feature map against the full key-frame
feature network (any DFF model: the mask is forced, no Q needed).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import sys
import tempfile
import time
from typing import Any, Iterable, Iterator, Sequence

import cv2
import numpy as np
import torch
from torch.profiler import ProfilerActivity
from torch.profiler import profile as torch_profile

from dff.apps.evaluate import evaluate_intervals, evaluate_schedules
from dff.config import Config, ConfigError, update_config
from dff.deploy import DeployUnavailable, cached_export, make_detector
from dff.deploy.graphs import aggregates
from dff.engine.fastpath import FastPath
from dff.engine.frames import Frame, FrameSource, VideoReadError, frames_from_arrays
from dff.engine.partial import forced_mask
from dff.engine.postprocess import im_detect_boxes, pred_eval_frame
from dff.engine.video import VideoDetector, per_frame_config, schedule_overrides
from dff.models.builder import FIXTURE, load_run_model
from dff.ops import compiled_available
from dff.temporal import LoopOptions
from dff.utils.checkpoint import CheckpointError, detect_format
from dff.utils.hardware import describe_hardware
from dff.utils.io import atomic_write_text

__all__ = ["NET_STAGES", "median_ms", "THP_STAGES", "Bench", "load_bench", "synthetic_clip", "stream_frames", "time_network",
           "time_end_to_end", "time_post", "time_partial_update", "parse_fractions", "profile", "measure_intervals",
           "measure_adaptive", "measure_backends", "measure_maps", "measure_lengths", "format_header", "format_post",
           "format_length", "format_table", "format_backends", "format_maps", "format_partial", "build_report",
           "plot_title", "write_plot", "PlotUnavailable", "run_benchmark"]

NET_STAGES = ("feature", "flow", "warp", "head")
# the per-stage split of THP runs only: the reports of plain DFF runs keep their four stages
THP_STAGES = ("feature", "flow", "warp", "update", "aggregate", "head")
# the THP options off: the per-frame baseline of a THP run is the plain per-frame R-FCN (with them on, interval 1
# would still aggregate every frame, and the adaptive schedule ignores the interval)

Prepared = list[tuple[torch.Tensor, torch.Tensor]]


class PlotUnavailable(RuntimeError):
    """``--plot`` without matplotlib."""


# peak memory ----------------------------------------------------------------------------------------------
def _reset_peak_rss() -> None:
    try:  # Linux: "5" resets the peak resident set size of this process
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _peak_rss_mb() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _reset_peaks(device: torch.device) -> None:
    """Start a new peak: the resident set size and, on CUDA, the allocated device memory."""
    _reset_peak_rss()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_memory_mb(device: torch.device) -> dict[str, float]:
    """Peak memory since :func:`_reset_peaks` in MB: ``rss`` and, on CUDA, ``gpu`` (allocated)."""
    peak = {"rss": _peak_rss_mb()}
    if device.type == "cuda":
        peak["gpu"] = torch.cuda.max_memory_allocated(device) / 2**20
    return peak


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# the input ------------------------------------------------------------------------------------------------
def synthetic_clip(n: int, height: int = 576, width: int = 768) -> list[np.ndarray]:
    """A moving textured scene (used when no --video is given)."""
    return [f.image for f in stream_frames(n, height, width)]


def stream_frames(n: int, height: int, width: int, prepare=None) -> Iterator[Frame]:
    """``n`` frames of a panning textured scene, generated one at a time (nothing is kept)."""

    rng = np.random.RandomState(1)
    base = cv2_blur(rng.randint(0, 255, (height + 128, width + 128, 3)).astype(np.uint8))
    for i in range(n):
        t = i % 256
        dy, dx = (t if t < 128 else 255 - t), (2 * i) % 128
        im = np.ascontiguousarray(base[dy:dy + height, dx:dx + width])
        yield Frame(i, f"frame_{i:06d}", im, prepare(im) if prepare else None)


def cv2_blur(im: np.ndarray) -> np.ndarray:
    return cv2.GaussianBlur(im, (0, 0), 3)


@dataclasses.dataclass
class Bench:
    """What every measurement shares: the model and its config, the device and fast path, the clip (BGR
    frames), the clip preprocessed and already on the device, the per-frame (key interval 1) detector, the
    engine's backend (``"torch"`` or ``"onnxruntime"`` on the export in ``onnx_dir``) and the config's THP
    options where any is on (``options``; ``base`` then runs with them off)."""

    model: torch.nn.Module
    cfg: Config
    device: torch.device
    fast: FastPath
    frames: list[np.ndarray]
    prepared: Prepared
    base: VideoDetector
    backend: str = "torch"
    onnx_dir: str | None = None
    options: LoopOptions | None = None  # the loop options where any of THP's is on
    per_frame_model: str | None = None  # the per-frame twin measured as the baseline (None: the model at interval 1)

    @property
    def adaptive(self) -> bool:
        """The config's key-frame schedule is THP's adaptive one."""
        return self.options is not None and self.options.schedule == "adaptive"

    @property
    def stages(self) -> tuple[str, ...]:
        """The network stages of the per-stage split."""
        return THP_STAGES if self.options is not None else NET_STAGES

    def detector(self, key_interval: int, backend: str | None = None) -> VideoDetector:
        """A new DFF detector at ``key_interval`` with the benchmark's settings (no per-stage sync), of the
        benchmark's backend or ``backend``."""
        return _engine(self.model, self.cfg, backend or self.backend, self.onnx_dir, key_interval, self.device,
                       self.fast)

    def describe(self) -> str:
        """The engine: the fast path (PyTorch) or the onnxruntime version, provider and threads."""
        if self.backend == "torch":
            return self.fast.describe()
        return f"{self.base.runner.fast.describe()} (PyTorch baseline: {self.fast.describe()})"

    @property
    def network_input(self) -> tuple[int, int]:
        """(height, width) of the network's input."""
        h, w = self.prepared[0][0].shape[-2:]
        return int(h), int(w)


def _engine(model: torch.nn.Module, cfg: Config, backend: str, onnx_dir: str | None, key_interval: int,
            device: torch.device, fast: FastPath) -> VideoDetector:
    # onnxruntime: the export was checked against the model once, in load_bench (no model to hash again)
    ort_backend = backend == "onnxruntime"
    return make_detector(None if ort_backend else model, cfg, backend=backend,
                         onnx_dir=onnx_dir if ort_backend else None, key_interval=key_interval, device=device,
                         sync=False, fast=fast)


def _file_kind(path: str | None, default: str) -> str | None:
    """The model kind to ask :func:`load_run_model` for: none for a native checkpoint (it names its own)."""
    return None if path and os.path.isfile(path) and detect_format(path) == "native" else default


def load_bench(cfg_path: str, overrides: Sequence[str], model_path: str | None, device: torch.device,
               scale: str | None, fast_name: str | None, video: str | None, frames: int, backend: str = "torch",
               onnx_dir: str | None = None, onnx_cache: str | None = None,
               per_frame_model: str | None = None) -> Bench:
    """The model (``model_path``, or the fixture weights, which keep activations O(1) like a trained net)
    with ``cfg_path`` and then ``overrides`` (``--set``) and ``scale`` (``"short,max-long"``) applied, and
    ``frames`` frames of ``video`` (default: a generated clip), preprocessed on ``device``.

    ``backend`` ``"onnxruntime"``: the engine runs the ONNX export in ``onnx_dir``, checked against the
    model, or the model's export in ``onnx_cache`` (made first if not there; :func:`dff.deploy.cached_export`).

    With THP options on in the config (``TEST.KEY_FRAME_SCHEDULE`` adaptive, ``PARTIAL_UPDATE``,
    ``AGGREGATION``) the model must be a THP one and the backend PyTorch; the per-frame detector runs with them
    off.

    ``per_frame_model``: the per-frame twin (an R-FCN checkpoint with the same backbone and head, e.g.
    ``data/models/rfcn_mobile_synthetic.pth``) is the baseline instead of the model at key interval 1; PyTorch
    engine only.

    Raises ``ConfigError``, ``CheckpointError``, ``VideoReadError``, ``OSError``, ``ValueError`` or
    :class:`~dff.deploy.DeployUnavailable`."""
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available")
    # a native checkpoint names its kind (a detector or a segmentation model); MXNet files and the fixture are DFF's
    model, cfg = load_run_model(model_path or FIXTURE, cfg_path, overrides, kind=_file_kind(model_path, "dff"),
                                device=device)
    if scale:
        short, long_ = (int(v) for v in scale.split(","))
        update_config(cfg, {"SCALES": [short, long_]}, "--scale")
    options = LoopOptions.from_config(cfg)
    # the onnxruntime engine runs the exported key-frame aggregation (keyagg.onnx) and nothing else of THP's
    exported = options.aggregate and not options.needs_q and not options.partial and aggregates(model)
    if options.active and backend != "torch" and not exported:
        raise ValueError("the THP options (TEST.KEY_FRAME_SCHEDULE adaptive, TEST.PARTIAL_UPDATE, TEST.AGGREGATION "
                         "but the ConvGRU's) run on the PyTorch engine only; leave out --backend onnxruntime or turn "
                         "them off")
    fast = FastPath.from_name(fast_name, device)
    if backend == "onnxruntime":
        if onnx_dir is None:
            onnx_dir = cached_export(model, onnx_cache, log=lambda m: print(f"onnx: {m}", flush=True))
        else:  # the export must be this model's: make_detector checks it (once)
            make_detector(model, cfg, backend=backend, onnx_dir=onnx_dir, key_interval=1, device=device)
    elif onnx_dir is not None:
        raise ValueError("--onnx is for --backend onnxruntime")
    base = _engine(model, cfg, backend, onnx_dir, 1, device, fast)  # with THP: checks that the model has Q
    if per_frame_model is not None:
        if backend != "torch":
            raise ValueError("--per-frame-model runs on the PyTorch engine only; leave out --backend onnxruntime")
        twin, twin_cfg = load_run_model(per_frame_model, cfg_path, overrides, kind=_file_kind(per_frame_model, "rfcn"),
                                        device=device)
        if scale:
            update_config(twin_cfg, {"SCALES": [int(v) for v in scale.split(",")]}, "--scale")
        if list(twin_cfg.SCALES) != list(cfg.SCALES):
            raise ValueError(f"--per-frame-model {per_frame_model}: its SCALES {list(twin_cfg.SCALES)} are not the "
                             f"model's {list(cfg.SCALES)}: the two would not run on the same input")
        base = _engine(twin, twin_cfg, backend, onnx_dir, 1, device, fast)
    elif options.active:
        base = _engine(model, per_frame_config(cfg),
                       backend, onnx_dir, 1, device, fast)
    clip = [f.image for f in FrameSource(video, max_frames=frames)] if video else synthetic_clip(frames)
    if len(clip) < frames:
        print(f"note: the video has only {len(clip)} frames", file=sys.stderr)
    prepared = [tuple(t.to(device) for t in base.prepare(im)) for im in clip]
    return Bench(model, cfg, device, fast, clip, prepared, base, backend, onnx_dir, options if options.active else None,
                 per_frame_model)


# the measurements -----------------------------------------------------------------------------------------
def time_network(detector: VideoDetector, prepared: Prepared, warmup: int = 2,
                 stages: Sequence[str] = NET_STAGES) -> dict[str, Any]:
    """Network-only time per frame over prepared inputs already on the device.

    Feature network, FlowNet, warp and task network; no decoding, no post-processing. Returns ``fps``,
    ``ms_per_frame``, ``key_frames``, ``stages_ms`` (mean ms per frame of each of ``stages``) and
    ``updated_area_fraction`` (THP's partial update: the mean fraction of feature cells recomputed on the
    non-key frames). On CUDA the fps comes from an unsynchronised pass (the true pipelined speed) and the
    per-stage split from a second pass that synchronises between stages.
    """
    cuda = detector.device.type == "cuda"
    updated: list[float] = []

    def one_pass(sync: bool) -> tuple[float, dict, int]:
        detector.sync = sync
        detector.reset()
        per_stage = {s: [] for s in stages}
        keys = 0
        updated.clear()
        _sync(detector.device)
        t0 = time.perf_counter()
        for data, im_info in prepared:
            _, is_key, times = detector.step(data, im_info)
            keys += is_key
            for s in stages:
                per_stage[s].append(times[s])
            if not is_key:  # step() keeps it for run()'s FrameResult; the onnxruntime engine has none
                updated.append(detector.last_update_fraction)
        _sync(detector.device)
        return time.perf_counter() - t0, per_stage, keys

    detector.reset()
    for data, im_info in prepared[:warmup]:  # a key and a non-key frame: graphs, cuDNN autotuning
        out, _, _ = detector.step(data, im_info)
        detector.postprocess(out, im_info)  # its graph too, so the end-to-end pass captures nothing
    wall, per_stage, keys = one_pass(sync=not cuda)
    if cuda:
        _, per_stage, _ = one_pass(sync=True)
    detector.sync = False
    n = len(prepared)
    return {"fps": n / wall, "ms_per_frame": 1000 * wall / n, "key_frames": keys,
            "stages_ms": {s: 1000 * float(np.sum(v)) / n for s, v in per_stage.items()},
            "updated_area_fraction": float(np.mean(updated)) if updated else 0.0}


def time_end_to_end(detector: VideoDetector, video: str | None, frames: list[np.ndarray], n: int,
                    workers: int = 2) -> dict[str, float]:
    """From the file (decoding in background workers) to post-processed detections: ``fps`` and
    ``post_ms`` (mean ms per frame of post-processing). Without ``video``, from the decoded ``frames``."""
    if video is not None:
        source = FrameSource(video, prepare=detector.prepare, max_frames=n, workers=workers,
                             prefetch=max(8, 2 * workers))
    else:
        source = frames_from_arrays(frames, detector.prepare)
    t0 = time.perf_counter()
    count = 0
    post = 0.0
    for r in detector.run(source):
        count += 1
        post += r.times["post"]
    wall = time.perf_counter() - t0
    return {"fps": count / wall, "post_ms": 1000 * post / max(count, 1)}


def time_post(detector: VideoDetector, prepared: Prepared, frames: int = 10) -> dict[str, float]:
    """Mean ms per frame of the engine's post-processing (``fixed``: one fixed-size NMS) and of the
    reference's per-class loop (``reference``) on the same network outputs."""
    detector.reset()
    outs = [(detector.step(data, im_info)[0], im_info) for data, im_info in prepared[:frames]]
    cfg = detector.cfg

    def reference(out: dict, im_info: torch.Tensor) -> list:
        scores, boxes = im_detect_boxes(out["rois"], out["cls_prob"], out["bbox_pred"], im_info.to(out["rois"].device))
        return pred_eval_frame(scores, boxes, detector.thresh, float(cfg.TEST.NMS), int(cfg.TEST.max_per_image),
                               class_agnostic=bool(cfg.CLASS_AGNOSTIC))

    result = {}
    for name, fn in (("fixed", detector.postprocess), ("reference", reference)):
        fn(*outs[0])  # warm-up
        _sync(detector.device)
        t0 = time.perf_counter()
        for out, im_info in outs:
            fn(out, im_info)
        _sync(detector.device)
        result[name] = 1000 * (time.perf_counter() - t0) / len(outs)
    return result


def parse_fractions(text: str) -> list[float]:
    """``--partial-area`` ``"0.1,0.25"`` -> ``[0.1, 0.25]``; each in (0, 1]. Raises ``ValueError``."""
    try:
        fractions = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"--partial-area {text}: expected fractions of the feature map, e.g. 0.1,0.25") from None
    if not fractions or any(not 0.0 < f <= 1.0 for f in fractions):
        raise ValueError(f"--partial-area {text}: each fraction must be in (0, 1]")
    return fractions


def median_ms(fn, device: torch.device, repeats: int) -> tuple[float, Any]:
    """Median ms of ``repeats`` calls of ``fn`` after one warm-up call; also the last call's result."""
    result = fn()
    _sync(device)
    times = []
    for _ in range(max(repeats, 1)):
        t0 = time.perf_counter()
        result = fn()
        _sync(device)
        times.append(1000 * (time.perf_counter() - t0))
    return float(np.median(times)), result


def time_partial_update(bench: Bench, fractions: Sequence[float], repeats: int = 3) -> dict[str, Any]:
    """THP's partial feature update on the first prepared frame, forced to cover each of ``fractions`` of the
    feature map (a centred rectangle, :func:`~dff.engine.partial.forced_mask`), against the full key-frame
    feature network, with ``TEST.PARTIAL_UPDATE_MARGIN`` cells of context. Medians of ``repeats`` runs after a
    warm-up. The update is timed as the engine's ``update`` stage: the warp of the reference's backbone map
    (``warp_backbone_ms``, the same at every fraction) and :func:`~dff.engine.partial.partial_update`.

    Returns ``full_feature_ms``, ``warp_backbone_ms``, ``margin``, ``repeats``, ``feature_map`` (h, w) and
    ``fractions``: per requested fraction (as a string) ``area_fraction`` (cells recomputed / cells),
    ``crop_cells_fraction`` (cells the backbone crops covered / cells), ``crops``, ``batched``, ``ms`` and
    ``ratio`` (ms / full_feature_ms)."""
    # the PyTorch engine's runner also under --backend onnxruntime: the crops run the PyTorch feature network
    runner = (bench.base if bench.backend == "torch" else bench.detector(1, backend="torch")).runner
    margin = int(bench.cfg.TEST.PARTIAL_UPDATE_MARGIN)
    data = bench.prepared[0][0]
    with torch.inference_mode():
        full_ms, feat = median_ms(lambda: runner.feature(data), bench.device, repeats)
        h, w = feat.shape[-2:]
        backbone = runner.backbone(data)  # stands in for the reference's backbone map (any of its shape would)
        flow, _ = runner.flow(data, data)
        warp_ms, _ = median_ms(lambda: runner.warp(backbone, flow, None), bench.device, repeats)
        rows = {}
        for f in fractions:
            mask = forced_mask(h, w, f, device=feat.device)
            ms, (_, _, info) = median_ms(lambda m=mask: runner.update(data, feat, backbone, flow, m, margin),
                                          bench.device, repeats)
            rows[str(f)] = {"area_fraction": info.area_fraction,
                            "crop_cells_fraction": info.crop_cells / info.total_cells, "crops": len(info.crops),
                            "batched": info.batched, "ms": ms, "ratio": ms / full_ms}
    return {"full_feature_ms": full_ms, "warp_backbone_ms": warp_ms, "margin": margin, "repeats": max(repeats, 1),
            "feature_map": [int(h), int(w)], "fractions": rows}


def profile(detector: VideoDetector, prepared: Prepared, path: str) -> str:
    """torch.profiler over one pass of the prepared frames (network and post-processing); op tables to
    ``path`` (by self CPU time, and on CUDA by self CUDA time). Returns the top of the CPU table."""

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if detector.device.type == "cuda" else [])
    detector.reset()
    with torch_profile(activities=activities) as prof:
        for data, im_info in prepared:
            out, _, _ = detector.step(data, im_info)
            detector.postprocess(out, im_info)
        _sync(detector.device)
    table = prof.key_averages()
    keys = "adaptive key frames" if detector.loop.options.schedule == "adaptive" else \
        f"key interval {detector.key_interval}"
    text = [f"# {len(prepared)} frames, {keys}, {detector.runner.fast.describe()}",
            table.table(sort_by="self_cpu_time_total", row_limit=40)]
    if detector.device.type == "cuda":
        text.append(table.table(sort_by="self_cuda_time_total", row_limit=25))
    atomic_write_text(path, "\n\n".join(text))
    return "\n".join(text[1].split("\n")[:16])


def measure_intervals(bench: Bench, intervals: Sequence[int], video: str | None, n_frames: int, workers: int,
                      end_to_end: bool = True) -> tuple[dict[str, dict[str, Any]], VideoDetector]:
    """Per key interval (sorted ascending): network-only fps of DFF and of the per-frame R-FCN on the same
    frames (measured once, before the intervals) and the speed-up, end-to-end fps (unless not
    ``end_to_end``), key frames, the per-stage split and peak memory since the interval began.

    THP runs (``bench.options``) add ``update`` and ``aggregate`` to the split and ``updated_area_fraction`` to
    the rows; their interval 1 is the per-frame R-FCN with the THP options off.

    Returns the rows by interval (as a string) and the detector of the last interval (for
    :func:`time_post` and :func:`profile`)."""
    _reset_peaks(bench.device)
    per_frame = time_network(bench.base, bench.prepared, stages=bench.stages)
    results = {}
    det = bench.base
    for k in intervals:
        det = bench.base if k == 1 else bench.detector(k)
        _reset_peaks(bench.device)
        net = per_frame if k == 1 else time_network(det, bench.prepared, stages=bench.stages)
        results[str(k)] = _row(bench, det, net, per_frame["fps"], video, n_frames, workers, end_to_end)
    return results, det


def _row(bench: Bench, det: VideoDetector, net: dict[str, Any], per_frame_fps: float, video: str | None,
         n_frames: int, workers: int, end_to_end: bool) -> dict[str, Any]:
    """One row of the table: ``net`` (:func:`time_network` of ``det``) against the per-frame fps, end to end
    unless not ``end_to_end``, peak memory since the last :func:`_reset_peaks`."""
    e2e = time_end_to_end(det, video, bench.frames, n_frames, workers) if end_to_end else {}
    row = {
        "per_frame_fps": per_frame_fps,
        "dff_fps": net["fps"],
        "speedup": net["fps"] / per_frame_fps,
        "end_to_end_fps": e2e.get("fps"),
        "key_frames": net["key_frames"],
        "stages": {**{f"{s}_ms": v for s, v in net["stages_ms"].items()}, "post_ms": e2e.get("post_ms")},
        "peak_memory_mb": _peak_memory_mb(bench.device),
    }
    if bench.options is not None:
        row["updated_area_fraction"] = net["updated_area_fraction"]
    return row


def measure_adaptive(bench: Bench, video: str | None, n_frames: int, workers: int,
                     end_to_end: bool = True) -> tuple[dict[str, dict[str, Any]], VideoDetector]:
    """THP's adaptive schedule: the rows of :func:`measure_intervals` for the per-frame R-FCN (``"1"``) and for
    the engine with the config's THP options (``"adaptive"``), which adds ``mean_key_interval`` (frames / key
    frames). Returns the rows and the adaptive detector."""
    results, _ = measure_intervals(bench, [1], video, n_frames, workers, end_to_end)
    det = bench.detector(1)  # the adaptive schedule ignores the key interval (its cap: KEY_FRAME_MAX_INTERVAL)
    _reset_peaks(bench.device)
    net = time_network(det, bench.prepared, stages=bench.stages)
    row = _row(bench, det, net, results["1"]["per_frame_fps"], video, n_frames, workers, end_to_end)
    row["mean_key_interval"] = len(bench.prepared) / max(net["key_frames"], 1)
    results["adaptive"] = row
    return results, det


def measure_backends(bench: Bench, intervals: Sequence[int], repeats: int = 2) -> dict[str, dict[str, Any]]:
    """The PyTorch engine against the onnxruntime engine on the same frames: per key interval, network-only
    fps and per-stage ms of each (interval 1: the per-frame R-FCN), and ``ratio`` = onnxruntime fps /
    PyTorch fps. The two engines run alternately ``repeats`` times each and the best pass of each counts,
    so that a change of the machine's load during the run does not fall on one engine only."""
    rows = {}
    for k in intervals:
        engines = {b: bench.detector(k, backend=b) for b in ("torch", "onnxruntime")}
        best: dict[str, dict[str, Any]] = {}
        for _ in range(max(repeats, 1)):
            for name, det in engines.items():
                net = time_network(det, bench.prepared)
                if name not in best or net["fps"] > best[name]["fps"]:
                    best[name] = net
        t, o = best["torch"], best["onnxruntime"]
        rows[str(k)] = {"torch_fps": t["fps"], "onnxruntime_fps": o["fps"], "ratio": o["fps"] / t["fps"],
                        "torch_stages_ms": t["stages_ms"], "onnxruntime_stages_ms": o["stages_ms"],
                        "repeats": max(repeats, 1)}
    return rows


def measure_maps(bench: Bench, intervals: Sequence[int], output_dir: str) -> dict[str, dict[str, float]]:
    """mAP per key interval on the config's test set: ``mAP`` over the classes present in it (the mAP over
    all the model's classes where it has no such entry) and ``mAP_all_30`` (the mAP over all the model's classes;
    the key keeps its old name); the test outputs go to ``output_dir``. Interval 1
    runs the per-frame detector's config (THP options off, as its timed row); with the adaptive schedule a
    row ``"adaptive"`` follows."""
    def row(ev: dict[str, Any]) -> dict[str, float]:
        return {"mAP": ev.get("mAP_present_classes", ev["mAP"]), "mAP_all_30": ev["mAP"]}

    maps = {}
    for k in intervals:
        cfg = bench.base.cfg if k == 1 else bench.cfg
        for _, ev in evaluate_intervals(bench.model, cfg, [k], output_dir, kind="dff", device=bench.device,
                                        fast=bench.fast):
            maps[str(k)] = row(ev)
    if bench.adaptive:
        for name, ev in evaluate_schedules(bench.model, bench.cfg, ["adaptive"], [], output_dir, kind="dff",
                                           device=bench.device, fast=bench.fast):
            maps[name] = row(ev)
    return maps


def measure_lengths(bench: Bench, key_interval: int, lengths: Iterable[int]) -> Iterator[tuple[int, dict[str, float]]]:
    """Streams of generated frames of each length (ascending), end to end through DFF at ``key_interval``:
    yields ``(n, {"seconds", "ms_per_frame", "peak_rss_mb"})`` as each finishes (memory must stay flat)."""
    det = bench.detector(key_interval)
    h0, w0 = bench.frames[0].shape[:2]
    for n in sorted(lengths):
        _reset_peak_rss()
        t0 = time.perf_counter()
        count = sum(1 for _ in det.run(stream_frames(n, h0, w0, det.prepare)))
        wall = time.perf_counter() - t0
        yield n, {"seconds": wall, "ms_per_frame": 1000 * wall / count, "peak_rss_mb": _peak_rss_mb()}


# the outputs ----------------------------------------------------------------------------------------------
def format_header(bench: Bench) -> str:
    """The first line: the clip, the network input, the backbone, the device and the engine."""
    h, w = bench.network_input
    im = bench.frames[0]
    return (f"{len(bench.frames)} frames {im.shape[1]}x{im.shape[0]} -> network input {w}x{h}, "
            f"{bench.cfg.network.BACKBONE}, device {describe_hardware(bench.device)}, {bench.describe()}"
            + (f"; per-frame baseline: the twin {bench.per_frame_model}" if bench.per_frame_model else ""))


def format_post(post_methods: dict[str, float]) -> str:
    """The line of :func:`time_post`'s times."""
    return "post-processing per frame (ms): " + ", ".join(f"{m} {v:.2f}" for m, v in post_methods.items())


def format_length(n: int, row: dict[str, float]) -> str:
    """The line of one of :func:`measure_lengths`' streams."""
    return (f"length {n:>6}: {row['seconds']:8.1f} s, {row['ms_per_frame']:7.1f} ms/frame, "
            f"peak RSS {row['peak_rss_mb']:.0f} MB")


def format_table(results: dict[str, dict[str, Any]]) -> str:
    """The table of :func:`measure_intervals`' (or :func:`measure_adaptive`'s) rows: header, a line per interval
    and the footnote; THP rows add the update and aggregate stages, the key frames and the updated area."""
    with_updates = any("updated_area_fraction" in r for r in results.values())
    header = (f"{'interval':>8} {'per-frame fps':>14} {'DFF fps':>9} {'speed-up':>9} {'end-to-end fps':>15} "
              f"{'feature':>8} {'flow':>7} {'warp':>7} ")
    if with_updates:
        header += f"{'update':>7} {'aggregate':>9} "
    header += f"{'head':>7} {'post':>7} {'RSS MB':>7}"
    lines = [header + (f" {'keys':>5} {'updated':>8}" if with_updates else "")]
    for k, r in results.items():
        s = r["stages"]
        e2e = f"{r['end_to_end_fps']:.3f}" if r["end_to_end_fps"] is not None else "-"
        post = f"{s['post_ms']:.1f}" if s["post_ms"] is not None else "-"
        line = (f"{k:>8} {r['per_frame_fps']:>14.3f} {r['dff_fps']:>9.3f} {r['speedup']:>8.2f}x {e2e:>15} "
                f"{s['feature_ms']:>8.1f} {s['flow_ms']:>7.1f} {s['warp_ms']:>7.1f} ")
        if with_updates:
            line += f"{s.get('update_ms', 0.0):>7.1f} {s.get('aggregate_ms', 0.0):>9.1f} "
        line += f"{s['head_ms']:>7.1f} {post:>7} {r['peak_memory_mb']['rss']:>7.0f}"
        if with_updates:
            line += f" {r['key_frames']:>5} {r.get('updated_area_fraction', 0.0):>8.3f}"
        lines.append(line)
    lines.append("(stage columns: mean ms per frame over all frames; network-only fps excludes decoding and "
                 "post-processing)")
    if with_updates:
        lines.append("(THP options / key-frame aggregation: the per-frame baseline runs with them off; keys: key frames; "
                     "updated: mean fraction of the feature map recomputed on the non-key frames)")
    return "\n".join(lines)


def format_partial(partial: dict[str, Any]) -> str:
    """The table of :func:`time_partial_update`: a line per forced fraction and the full feature network's."""
    h, w = partial["feature_map"]
    lines = [f"partial feature update, forced area (feature map {w}x{h}, margin {partial['margin']} cells, "
             f"median of {partial['repeats']}; ms include the backbone map's warp, "
             f"{partial['warp_backbone_ms']:.1f} ms):",
             f"{'requested':>9} {'area':>7} {'crop area':>9} {'crops':>5} {'ms':>9} {'ratio':>7}"]
    for f, r in partial["fractions"].items():
        lines.append(f"{f:>9} {r['area_fraction']:>7.3f} {r['crop_cells_fraction']:>9.3f} {r['crops']:>5} "
                     f"{r['ms']:>9.1f} {r['ratio']:>6.2f}x")
    lines.append(f"{'full':>9} {1.0:>7.3f} {1.0:>9.3f} {'-':>5} {partial['full_feature_ms']:>9.1f} {1.0:>6.2f}x"
                 "   (the key frame's feature network)")
    return "\n".join(lines)


def format_backends(rows: dict[str, dict[str, Any]]) -> str:
    """The table of :func:`measure_backends`: network-only fps of both engines and their ratio per interval."""
    lines = [f"{'interval':>8} {'PyTorch fps':>12} {'onnxruntime fps':>16} {'ratio':>7}   "
             "per-stage ms (PyTorch / onnxruntime)"]
    for k, r in rows.items():
        split = ", ".join(f"{s} {r['torch_stages_ms'][s]:.1f}/{r['onnxruntime_stages_ms'][s]:.1f}" for s in NET_STAGES)
        lines.append(f"{k:>8} {r['torch_fps']:>12.3f} {r['onnxruntime_fps']:>16.3f} {r['ratio']:>6.2f}x   {split}")
    lines.append("(network only, same frames, best of alternating passes; ratio = onnxruntime fps / PyTorch fps; "
                 "interval 1 = per-frame R-FCN)")
    return "\n".join(lines)


def format_maps(results: dict[str, dict[str, Any]]) -> str:
    """The line of the mAP per key interval (rows with ``mAP``, see :func:`measure_maps`)."""
    return ("mAP per key interval (classes present in the test set): " +
            ", ".join(f"{k}: {r['mAP']:.4f}" for k, r in results.items()))


def build_report(bench: Bench, results: dict[str, dict[str, Any]], post_methods: dict[str, float],
                 lengths: dict[str, dict[str, float]] | None, argv: Sequence[str],
                 backends: dict[str, dict[str, Any]] | None = None,
                 partial: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON report: the rows by interval (and ``"adaptive"``), hardware, versions, the command line
    (``argv``: its arguments), the input, the engine (backend, fast path), the post-processing times, the THP
    options where any is on (``thp``) and, if measured, the lengths, the PyTorch / onnxruntime comparison and
    the partial update (``partial_update``, :func:`time_partial_update`)."""
    report = {
        "intervals": results,
        "hardware": describe_hardware(bench.device),
        "versions": {"torch": torch.__version__, "python": platform.python_version(),
                     "compiled_ops": compiled_available()},
        "command": " ".join(["python", "tools/benchmark.py", *argv]),
        "input": {"frames": len(bench.frames), "network_input": list(bench.network_input),
                  "backbone": bench.cfg.network.BACKBONE},
        "fast_path": bench.fast.describe(),
        "backend": bench.backend,
        "engine": bench.describe(),
        "post_methods_ms": post_methods,
        "per_frame_model": bench.per_frame_model,
    }
    if bench.onnx_dir:
        report["onnx_dir"] = bench.onnx_dir
    if lengths:
        report["lengths"] = lengths
    if backends:
        report["backend_comparison"] = backends
    if bench.options is not None:
        report["thp"] = bench.options.describe()
    if partial:
        report["partial_update"] = partial
    return report


def plot_title(bench: Bench) -> str:
    """The plot's title: backbone, network input, the device's first words."""
    h, w = bench.network_input
    return f"{bench.cfg.network.BACKBONE}, {w}x{h}, {describe_hardware(bench.device).split(',')[0]}"


def write_plot(results: dict[str, dict[str, Any]], path: str, with_map: bool, title: str) -> None:
    """A PNG at ``path``: with ``with_map`` the speed/accuracy curve (mAP against network-only fps, a point per
    interval), else network-only DFF fps per key interval against the per-frame R-FCN's (the adaptive row at
    its mean key interval).

    Raises :class:`PlotUnavailable` without matplotlib."""
    try:
        import matplotlib
    except ImportError:
        raise PlotUnavailable("--plot needs matplotlib, a dependency of the project: pip install -e . "
                              "(or pip install matplotlib)") from None

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = list(results)

    def label(k: str) -> str:
        return "per-frame" if k == "1" else f"k={k}" if k.isdigit() else k

    plt.figure(figsize=(5, 3.5))
    if with_map:  # the speed/accuracy curve: each interval is a point, per-frame is interval 1
        fps = [results[k]["dff_fps"] for k in ks]
        maps = [100 * results[k]["mAP"] for k in ks]
        plt.plot(fps, maps, "o-", label="DFF")
        for k, x, y in zip(ks, fps, maps):
            plt.annotate(label(k), (x, y), textcoords="offset points", xytext=(4, 4))
        plt.xlabel("frames per second (network only)")
        plt.ylabel("mAP (%)")
    else:
        xs = [int(k) if k.isdigit() else results[k]["mean_key_interval"] for k in ks]
        plt.plot(xs, [results[k]["dff_fps"] for k in ks], "o-", label="DFF (network)")
        for k, x in zip(ks, xs):
            if not k.isdigit():
                plt.annotate(label(k), (x, results[k]["dff_fps"]), textcoords="offset points", xytext=(4, 4))
        plt.axhline(results[ks[0]]["per_frame_fps"], color="gray", ls="--", label="per-frame R-FCN")
        plt.xlabel("key frame interval")
        plt.ylabel("frames per second")
    plt.title(title, fontsize=8)
    plt.legend()
    plt.tight_layout()
    plt.savefig(path, dpi=120)


def run_benchmark(args: argparse.Namespace, argv: Sequence[str] | None = None) -> int:
    """``tools/benchmark.py``: load, measure per interval (or per-frame and the adaptive schedule),
    post-processing, the optional partial update, profile, mAP and lengths, print the tables, write the JSON
    report and the plot. ``argv``: the command's arguments, for the report (default ``sys.argv[1:]``). Returns
    0, or 2 after one ``error:`` line."""
    backend = getattr(args, "backend", "torch")
    try:
        if args.eval and backend != "torch":
            raise ValueError("--eval measures the PyTorch engine; run it without --backend onnxruntime")
        partial_area = getattr(args, "partial_area", None)
        fractions = parse_fractions(partial_area) if partial_area else None
        device = torch.device(args.device)
        overrides = [*args.set, *schedule_overrides(getattr(args, "schedule", None))]
        bench = load_bench(args.cfg, overrides, args.model, device, args.scale, args.fast, args.video, args.frames,
                           backend=backend, onnx_dir=getattr(args, "onnx", None),
                           onnx_cache=getattr(args, "onnx_cache", None),
                           per_frame_model=getattr(args, "per_frame_model", None))
        # the adaptive schedule has no key interval: per-frame and one adaptive row
        intervals = [1] if bench.adaptive else sorted({int(k) for k in args.key_intervals.split(",")})
    except (ConfigError, CheckpointError, VideoReadError, OSError, ValueError, DeployUnavailable) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    workers = args.workers or min(8, os.cpu_count() or 1)
    print(format_header(bench))
    if bench.adaptive:
        results, det = measure_adaptive(bench, args.video, args.frames, workers, end_to_end=not args.no_end_to_end)
    else:
        results, det = measure_intervals(bench, intervals, args.video, args.frames, workers,
                                         end_to_end=not args.no_end_to_end)
    # the two detection post-processing methods; a segmentation engine has one (upsampling and arg-max)
    post_methods = time_post(det, bench.prepared) if isinstance(det, VideoDetector) else {}
    if post_methods:
        print(format_post(post_methods))
    backends = measure_backends(bench, intervals) if bench.backend != "torch" else None
    partial = time_partial_update(bench, fractions) if fractions else None
    if args.profile:
        print(profile(det, bench.prepared, args.profile))
    if args.eval:
        out_dir = args.eval_dir or tempfile.mkdtemp(prefix="dff_bench_eval_")
        for k, maps in measure_maps(bench, intervals, out_dir).items():
            results[k].update(maps)
    lengths = None
    if args.lengths:
        lengths = {}
        for n, row in measure_lengths(bench, max(intervals), (int(v) for v in args.lengths.split(","))):
            lengths[str(n)] = row
            print(format_length(n, row))
    print(format_table(results))
    if backends:
        print(format_backends(backends))
    if args.eval:
        print(format_maps(results))
    if partial:
        print(format_partial(partial))
    report = build_report(bench, results, post_methods, lengths, sys.argv[1:] if argv is None else argv, backends,
                          partial)
    if args.json:
        atomic_write_text(args.json, json.dumps(report, indent=1))
    if args.plot:
        try:
            write_plot(results, args.plot, args.eval, plot_title(bench))
        except PlotUnavailable as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    return 0
