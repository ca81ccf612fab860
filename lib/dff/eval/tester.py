"""Testing on ImageNet VID val (docs/design.md §6), or any test set in a format of ``dataset.format``: run a detector
over every video, write the results file, evaluate (VID mAP, FGFA motion breakdown, COCO AP).

Both models go through the same engine, :class:`dff.engine.video.VideoDetector`: DFF with key frames every
``TEST.KEY_FRAME_INTERVAL`` frames of each video (counted from the video's start), R-FCN on every frame.
Frames are read from the dataset's frame folders (``Data/VID/<video>/%06d.JPEG``), decoded and
preprocessed ahead in worker threads.

The test set's videos come from the dataset reader (:func:`dff.dataset.factory.open_dataset`: a VID list, see
:meth:`~dff.dataset.imagenet_vid.ImageNetVID.test_videos`, or a COCO-video file); the model must have the data's
class list (an error shows both lists otherwise).

Sharded testing: under ``torchrun --nproc_per_node N`` each process runs every N-th video (each keeps its own
key-frame state) and caches it as below; after a barrier, rank 0 reads every video from the cache in test-list
order, writes the results file and evaluates once: the same files and numbers as one process.

Output folder (``<output_path>/<cfg stem>/<test_image_set>/``):

* ``detections/<video>.npz``: per-video detections, written atomically when the video is done. A rerun
  reuses them (skips finished videos) if they were made with the same weights and test settings (a
  hash of the state_dict, the threshold, key interval, scales, NMS ...); otherwise, or with
  ``ignore_cache``, the video is run again. (The reference reused its pickles whatever the model: a
  silent stale-result trap, see docs/design.md §6.3.)
* ``<test_image_set>_eval.txt``: the evaluated frames ``<video>/<frame:06d> <frame_id>``;
* ``results/det_<test_image_set>_all.txt``: the reference's results file (docs/design.md §6.5);
* ``results/eval_<test_image_set>.json``: mAP, per-class APs, FGFA motion breakdown, COCO AP (``coco``), timing.

Frames that cannot be read are reported (path), counted and get no detections; the test goes on.

:func:`run_test_set` = :func:`detect_videos` (the engine over the videos, with the per-video cache) then
:func:`evaluate_detections` (results file, evaluation, JSON). The test scripts' options are in
:mod:`dff.apps.cli`; :func:`run_test_from_args` runs a test from them.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import os
import sys
import zipfile
from typing import Any, Sequence

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from dff.api import auto_device
from dff.config import Config, config_stem
from dff.dataset.classlist import ClassList
from dff.dataset.cocovid import CocoVideo, CocoVideoError
from dff.dataset.factory import (
    ClassListMismatch,
    adopt_class_list,
    check_class_list,
    data_class_list,
    image_set_name,
    open_dataset,
)
from dff.dataset.imagenet_vid import ImageNetVID, missing_dataset_message
from dff.dataset.videos import TestVideo
from dff.deploy import DeployUnavailable, make_detector
from dff.engine.fastpath import FastPath
from dff.engine.frames import FrameSource
from dff.engine.video import STAGES, VideoDetector, schedule_overrides
from dff.eval.coco_eval import coco_eval, format_coco_table
from dff.eval.seg_eval import format_seg_result, run_seg_test_set
from dff.eval.vid_eval import format_table, load_vid_annotations, save_json, vid_eval, write_vid_results
from dff.models.builder import load_model
from dff.utils.checkpoint import CheckpointError
from dff.utils.io import atomic_open, atomic_write_text
from dff.utils.logging import progress_logging, setup_logging

__all__ = ["Detections", "TesterError", "DEFAULT_THRESH", "eval_output_dir", "model_digest",
           "load_test_set", "detect_videos", "evaluate_detections", "run_test_set", "default_model_path", "build_test_model",
           "resolve_device", "run_test_from_args"]

# the reference test scripts' default score thresholds (docs/design.md §6.2/6.3)
DEFAULT_THRESH = {"dff": 1e-4, "rfcn": 1e-3}
CACHE_VERSION = 2

log = logging.getLogger("dff.test")


class TesterError(RuntimeError):
    """A test cannot run (missing data/model); the message names the path and what to do."""
    __test__ = False  # not a pytest test class


def eval_output_dir(cfg: Config, cfg_path: str | None) -> str:
    """``<output_path>/<cfg stem>/<test image sets joined by _>`` (the reference's layout)."""
    return os.path.join(cfg.output_path or "./output", config_stem(cfg_path),
                        image_set_name(cfg.dataset.test_image_set))


def model_digest(model: torch.nn.Module) -> str:
    """SHA-256 of the model's state_dict (names, shapes, dtypes, bytes): identifies the tested weights."""
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        t = v.detach().to("cpu")
        h.update(f"{k}:{tuple(t.shape)}:{t.dtype}\0".encode())
        # reshape(-1): NCHW byte order also for channels_last weights (the fast path converts them)
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _safe_name(video: str) -> str:
    return video.replace("/", "__").replace("\\", "__")


def _save_video(path: str, frame_ids: Sequence[int], dets: list[list[np.ndarray]], signature: str,
                bad: Sequence[str], times: np.ndarray) -> None:
    """Atomically write one video's detections: rows (M, 5) frame-major, class order, and counts (n, C)."""
    n = len(dets)
    num_classes = len(dets[0]) if n else 0
    counts = np.zeros((n, num_classes), dtype=np.int64)
    rows = []
    for i, per_class in enumerate(dets):
        for c in range(1, num_classes):
            a = np.asarray(per_class[c], dtype=np.float32).reshape(-1, 5)
            counts[i, c] = len(a)
            rows.append(a)
    with atomic_open(path, "wb") as f:
        np.savez(f, version=np.array(CACHE_VERSION), signature=np.array(signature),
                 frame_ids=np.asarray(frame_ids, dtype=np.int64), counts=counts,
                 rows=np.concatenate(rows) if rows else np.zeros((0, 5), np.float32),
                 bad=np.array(list(bad), dtype=str), times=np.asarray(times, dtype=np.float64))


def _load_video(path: str, signature: str, frame_ids: Sequence[int]) -> tuple[list[list[np.ndarray]], list[str], np.ndarray] | None:
    """A cached video's (detections, bad frames, times) or None when absent, stale or unreadable."""
    if not os.path.isfile(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            if int(z["version"]) != CACHE_VERSION or str(z["signature"]) != signature:
                log.info("%s: made with other weights or settings; running the video again", path)
                return None
            if not np.array_equal(z["frame_ids"], np.asarray(frame_ids, dtype=np.int64)):
                log.info("%s: frame list changed; running the video again", path)
                return None
            counts, rows = z["counts"], z["rows"]
            bad, times = z["bad"].tolist(), z["times"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        log.warning("%s: unreadable cache (%s); running the video again", path, e)
        return None
    dets: list[list[np.ndarray]] = []
    pos = 0
    for i in range(counts.shape[0]):
        per_class: list[np.ndarray] = [np.zeros((0, 5), np.float32)]
        for c in range(1, counts.shape[1]):
            k = int(counts[i, c])
            per_class.append(rows[pos:pos + k])
            pos += k
        dets.append(per_class)
    return dets, bad, times


@dataclasses.dataclass
class Detections:
    """What :func:`detect_videos` found: every test frame's detections, in test-list order."""
    dataset: ImageNetVID | CocoVideo  # the test set's reader: class list and annotations
    videos: list[TestVideo]
    boxes: list[list[np.ndarray]]      # per frame, per class (class 0 empty): (n, 5) x1 y1 x2 y2 score
    bad_frames: list[str]              # unreadable frames (no detections)
    videos_cached: int                 # videos reused from the output folder
    timing: dict[str, Any]             # mean seconds per frame and stage over the frames run now, frames_timed, key_frames
    thresh: float
    key_interval: int
    schedule: dict[str, Any] = dataclasses.field(default_factory=dict)  # schedule_stats over every frame

    @property
    def frame_ids(self) -> list[int]:
        return [fid for v in self.videos for fid in v.frame_ids]


class _Timing:
    """Per-stage seconds summed over the frames run (not those reused from the cache)."""

    def __init__(self) -> None:
        self.sums = dict.fromkeys((*STAGES, "total"), 0.0)
        self.frames = 0
        self.keys = 0

    def add(self, times: dict[str, float], is_key: bool) -> None:
        self.frames += 1
        self.keys += int(is_key)
        for s in self.sums:
            self.sums[s] += times[s]

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {s: (t / self.frames if self.frames else None) for s, t in self.sums.items()}
        out["frames_timed"] = self.frames
        out["key_frames"] = self.keys
        return out


# the per-frame columns a video's cache keeps: stage seconds, total, 1 for a key frame, the updated area
TIME_COLUMNS = (*STAGES, "total", "is_key", "updated_fraction")


def schedule_stats(times: Sequence[np.ndarray]) -> dict[str, Any]:
    """Key frames and feature-network work over the frames of ``times`` (each video's (n, TIME_COLUMNS) array;
    unreadable frames, total 0, left out): ``key_fraction`` (key frames / frames), ``updated_area_fraction``
    (mean fraction of feature cells recomputed on the non-key frames) and ``feature_cost_fraction`` =
    key_fraction + (1 - key_fraction) x updated_area_fraction, the feature network's work relative to per-frame."""
    col = {c: i for i, c in enumerate(TIME_COLUMNS)}
    rows = np.concatenate([t for t in times if len(t)]) if any(len(t) for t in times) else np.zeros((0, len(col)))
    rows = rows[rows[:, col["total"]] > 0]
    frames = len(rows)
    keys = int(rows[:, col["is_key"]].sum()) if frames else 0
    key_fraction = keys / frames if frames else float("nan")
    non_key = rows[rows[:, col["is_key"]] == 0]
    updated = float(non_key[:, col["updated_fraction"]].mean()) if len(non_key) else 0.0
    return {"frames": frames, "key_frames": keys, "key_fraction": key_fraction, "updated_area_fraction": updated,
            "feature_cost_fraction": key_fraction + (1 - key_fraction) * updated}


def load_test_set(cfg: Config, verbose: bool = False, max_videos: int | None = None) -> tuple[ImageNetVID | CocoVideo, list[TestVideo]]:
    """The reader and the videos of ``dataset.test_image_set`` (the first ``max_videos``)."""
    try:
        imdb = open_dataset(cfg, str(cfg.dataset.test_image_set), verbose=verbose)
        videos = imdb.test_videos()
    except (FileNotFoundError, CocoVideoError, ValueError) as e:
        raise TesterError(str(e)) from None
    if max_videos is not None:
        videos = videos[:max_videos]
    if not videos:
        raise TesterError(f"{cfg.dataset.test_image_set}: the test list has no usable video")
    return imdb, videos


def _shard() -> tuple[int, int]:
    """(rank, world size) of the process group torchrun set up, (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _cache_signature(model: torch.nn.Module, cfg: Config, detector: VideoDetector, thresh: float) -> str:
    """What a cached video's detections depend on: the weights and every test setting."""
    return json.dumps({"model": model_digest(model), "thresh": thresh, "key_interval": detector.key_interval,
                       "thp": detector.describe_schedule(),
                       "scales": [list(s) for s in cfg.SCALES], "means": list(cfg.network.PIXEL_MEANS),
                       "nms": float(cfg.TEST.NMS), "max_per_image": int(cfg.TEST.max_per_image),
                       "fast_path": detector.runner.fast.describe(),
                       "test": {k: cfg.TEST[k] for k in ("RPN_NMS_THRESH", "RPN_PRE_NMS_TOP_N",
                                                         "RPN_POST_NMS_TOP_N", "RPN_MIN_SIZE")}},
                      sort_keys=True)


def _run_video(detector: VideoDetector, video: TestVideo, num_classes: int, num_workers: int, timing: _Timing,
               bar: tqdm | None) -> tuple[list[list[np.ndarray]], list[str], np.ndarray]:
    """One video through the engine: per-frame detections (empty for unreadable frames), the unreadable
    frames, per-frame stage times."""
    bad: list[str] = []
    empty = [np.zeros((0, 5), np.float32) for _ in range(num_classes)]
    dets = [list(empty) for _ in video.paths]
    times = np.zeros((len(video.paths), len(TIME_COLUMNS)))
    frames = FrameSource(video.paths, prepare=detector.prepare, prefetch=2 * num_workers + 2, workers=num_workers,
                         on_error="skip")
    for r in detector.run(frames):
        dets[r.index] = [np.asarray(d, dtype=np.float32).reshape(-1, 5) for d in r.detections]
        times[r.index] = [*(r.times[s] for s in (*STAGES, "total")), float(r.is_key), r.updated_fraction]
        timing.add(r.times, r.is_key)
        if bar is not None:
            bar.update(1)
            if timing.frames % 20 == 0:
                bar.set_postfix(ms_per_frame=f"{1000 * timing.sums['total'] / timing.frames:.0f}")
    bad.extend(frames.skipped)
    if bad and bar is not None:
        bar.update(len(bad))
    return dets, bad, times


def detect_videos(model: torch.nn.Module, cfg: Config, *, kind: str, output_dir: str, thresh: float | None = None,
                  key_interval: int | None = None, device: str | torch.device = "cpu", ignore_cache: bool = False,
                  num_workers: int = 2, progress: bool = True, max_videos: int | None = None,
                  fast: FastPath | None = None, backend: str = "torch",
                  onnx_dir: str | None = None) -> Detections | None:
    """Run the engine over every test video, reusing the videos cached in ``output_dir/detections``
    (arguments as :func:`run_test_set`); each video run now is cached when done. In a process group (the
    module docstring) each rank runs its share; rank 0 returns every video's detections, the others None."""
    if kind not in DEFAULT_THRESH:
        raise ValueError(f"kind must be one of {sorted(DEFAULT_THRESH)}, got {kind!r}")
    thresh = DEFAULT_THRESH[kind] if thresh is None else float(thresh)
    rank, world = _shard()
    imdb, videos = load_test_set(cfg, progress and rank == 0, max_videos)
    try:
        check_class_list(tuple(model.class_names), imdb.class_list, "the model", f"the test set ({imdb!r})")
    except ClassListMismatch as e:
        raise TesterError(str(e)) from None
    device = torch.device(device)
    model = model.to(device).eval()
    try:  # the onnxruntime backend's description (in the cache signature) keeps its results apart
        detector = make_detector(model, cfg, backend=backend, onnx_dir=onnx_dir, key_interval=key_interval,
                                 device=device, thresh=thresh, sync=False, fast=fast, log=log.info)
    except (DeployUnavailable, ValueError) as e:
        raise TesterError(str(e)) from None
    sig = _cache_signature(model, cfg, detector, thresh)
    set_name = image_set_name(cfg.dataset.test_image_set)
    os.makedirs(output_dir, exist_ok=True)
    det_dir = os.path.join(output_dir, "detections")
    mine = [i for i in range(len(videos)) if i % world == rank]
    bar = None
    if progress:
        bar = tqdm(total=sum(len(videos[i].paths) for i in mine), desc=f"test {set_name}"
                   + (f" [rank {rank}/{world}]" if world > 1 else ""), unit="frame", file=sys.stderr,
                   dynamic_ncols=True, position=rank)
    found: dict[int, tuple[list[list[np.ndarray]], list[str]]] = {}
    timing = _Timing()
    cached = 0
    try:
        with progress_logging(bar is not None):
            for i in mine:
                v = videos[i]
                cache_path = os.path.join(det_dir, _safe_name(v.name) + ".npz")
                hit = None if ignore_cache else _load_video(cache_path, sig, v.frame_ids)
                if hit is not None:
                    found[i] = hit
                    cached += 1
                    if bar is not None:
                        bar.update(len(v.paths))
                else:
                    dets, bad, times = _run_video(detector, v, imdb.num_classes, num_workers, timing, bar)
                    _save_video(cache_path, v.frame_ids, dets, sig, bad, times)
                    found[i] = (dets, bad, times)
    finally:
        if bar is not None:
            bar.close()
    if world > 1:
        count = torch.tensor([cached], dtype=torch.int64)
        dist.all_reduce(count)  # also a barrier: every rank has cached its videos
        cached = int(count.item())
        if rank != 0:
            return None
        for i in range(len(videos)):
            if i not in found:
                hit = _load_video(os.path.join(det_dir, _safe_name(videos[i].name) + ".npz"), sig, videos[i].frame_ids)
                if hit is None:
                    raise TesterError(f"{videos[i].name}: rank {i % world} left no detections in {det_dir}")
                found[i] = hit
    boxes = [d for i in range(len(videos)) for d in found[i][0]]
    bad_all = [b for i in range(len(videos)) for b in found[i][1]]
    return Detections(imdb, videos, boxes, bad_all, cached, timing.summary(), thresh, detector.key_interval,
                      schedule_stats([found[i][2] for i in range(len(videos))]))


def _eval_annotations(dets: Detections, cfg: Config) -> dict[str, dict[str, Any]]:
    """The test frames' annotations in :func:`dff.eval.vid_eval.parse_vid_xml`'s structure."""
    if isinstance(dets.dataset, CocoVideo):
        return dets.dataset.eval_annotations()
    return load_vid_annotations(os.path.join(str(cfg.dataset.dataset_path), "Annotations", "VID"),
                                [ix for v in dets.videos for ix in v.indices])


def evaluate_detections(dets: Detections, cfg: Config, output_dir: str) -> dict[str, Any]:
    """Write the results file and the evaluated-frames list, evaluate against the annotations (the VID protocol
    with FGFA's motion breakdown and, with ``TEST.COCO_AP``, COCO AP), save the JSON
    (``results/eval_<test_image_set>.json``); returns the evaluation dict (see :func:`run_test_set`)."""
    set_name = image_set_name(cfg.dataset.test_image_set)
    classes: ClassList = dets.dataset.class_list
    videos = dets.videos
    # all_boxes[class][image], the reference's layout for the results file
    all_boxes = [[d[c] for d in dets.boxes] for c in range(len(classes.ids))]
    results_file = os.path.join(output_dir, "results", f"det_{set_name}_all.txt")
    write_vid_results(results_file, all_boxes, dets.frame_ids)
    eval_lines = [f"{ix} {fid}" for v in videos for ix, fid in zip(v.indices, v.frame_ids)]
    eval_set = os.path.join(output_dir, f"{set_name}_eval.txt")
    atomic_write_text(eval_set, "\n".join(eval_lines) + "\n")
    annotations = _eval_annotations(dets, cfg)
    result = vid_eval(results_file, eval_lines, annotations, classes.ids, class_names=classes.names, motion=True)
    # the reference's mAP averages all the classes of the list (NaN when a class without objects has detections);
    # on a subset such as the synthetic mini-VID the mean over the classes present is the useful number
    present = [a for n, a in zip(result["classes"], result["ap"]) if result["num_gt_per_class"][n] > 0]
    result["mAP_present_classes"] = float(np.mean(present)) if present else float("nan")
    if cfg.TEST.COCO_AP:
        result["coco"] = coco_eval(results_file, eval_lines, annotations, classes.ids, classes.names)
    result["timing"] = dict(dets.timing)
    result.update(videos=len(videos), frames=sum(len(v.paths) for v in videos), videos_cached=dets.videos_cached,
                  bad_frames=dets.bad_frames, results_file=results_file, thresh=dets.thresh,
                  key_interval=dets.key_interval, schedule=dets.schedule)
    save_json(result, os.path.join(output_dir, "results", f"eval_{set_name}.json"))
    if dets.bad_frames:
        log.warning("%d unreadable frames had no detections (listed in the JSON under bad_frames)",
                    len(dets.bad_frames))
    return result


def run_test_set(model: torch.nn.Module, cfg: Config, *, kind: str, output_dir: str, thresh: float | None = None,
                 key_interval: int | None = None, device: str | torch.device = "cpu", ignore_cache: bool = False,
                 num_workers: int = 2, progress: bool = True, max_videos: int | None = None,
                 fast: FastPath | None = None, backend: str = "torch", onnx_dir: str | None = None
                 ) -> dict[str, Any] | None:
    """Detect on every test video, write the results file, evaluate; returns the evaluation dict (None on
    the ranks other than 0 of a sharded test).

    Args:
        model: ``RFCN`` or ``DFF`` with *test* weights (bbox de-normalisation folded in), any device.
        cfg: the config (``dataset.*``, ``SCALES``, ``TEST.*``).
        kind: ``"dff"`` or ``"rfcn"`` (default threshold).
        output_dir: the test folder (see the module docstring).
        thresh: score threshold (default 1e-4 DFF / 1e-3 R-FCN).
        key_interval: DFF key-frame interval (default ``TEST.KEY_FRAME_INTERVAL``; R-FCN: always 1).
        ignore_cache: run every video again even when its cached detections match.
        max_videos: only the first N videos (smoke tests); the evaluation covers those.
        fast: the engine's GPU fast path (:class:`dff.engine.fastpath.FastPath`), None for plain float32.
        backend: ``"torch"`` or ``"onnxruntime"`` (:func:`dff.deploy.make_detector`; the model's ONNX export,
            from ``onnx_dir`` or exported to a cache first).

    The returned dict is :func:`dff.eval.vid_eval.vid_eval`'s (with the motion breakdown) plus
    ``coco`` (:func:`dff.eval.coco_eval.coco_eval`, with ``TEST.COCO_AP``), ``timing`` (mean seconds per frame
    and stage over the frames run now, by rank 0 in a sharded test), ``videos``, ``frames``, ``videos_cached``,
    ``bad_frames`` and ``results_file``.
    """
    dets = detect_videos(model, cfg, kind=kind, output_dir=output_dir, thresh=thresh, key_interval=key_interval,
                         device=device, ignore_cache=ignore_cache, num_workers=num_workers, progress=progress,
                         max_videos=max_videos, fast=fast, backend=backend, onnx_dir=onnx_dir)
    return None if dets is None else evaluate_detections(dets, cfg, output_dir)


# --------------------------------------------------------------------------------------------------
# the test scripts (their options: dff.apps.cli)
# --------------------------------------------------------------------------------------------------
def default_model_path(cfg: Config, cfg_path: str | None) -> str:
    """The checkpoint the test script loads: ``<train dir>/<prefix>-<test_epoch>.pth`` (else ``.params``)."""
    train_dir = os.path.join(cfg.output_path or "./output", config_stem(cfg_path),
                             image_set_name(cfg.dataset.image_set))
    base = os.path.join(train_dir, f"{cfg.TRAIN.model_prefix}-{int(cfg.TEST.test_epoch):04d}")
    for ext in (".pth", ".params"):
        if os.path.isfile(base + ext):
            return base + ext
    raise TesterError(f"{base}.pth (or .params): no model for TEST.test_epoch {cfg.TEST.test_epoch}; train first "
                    f"(the *_end2end_train_test.py script) or pass --model PATH")


def build_test_model(cfg: Config, model_path: str, kind: str, overrides: Sequence[str] = ()) -> torch.nn.Module:
    """The model of ``kind`` with the test weights of ``model_path`` (:func:`dff.models.builder.load_model`).
    ``overrides`` (``--set``, already in ``cfg``) also go on the config a native checkpoint brings, which the model
    reads its test settings from (the proposals' ``TEST.RPN_*``)."""
    try:
        model, _ = load_model(model_path, cfg, kind=kind, overrides=overrides)
    except CheckpointError as e:
        raise TesterError(str(e)) from None
    return model


def test_overrides(args: argparse.Namespace) -> list[str]:
    """The ``--set`` items of a test run (with ``--schedule``'s), as :func:`dff.config.load_config` applied them."""
    return [*getattr(args, "set", ()), *schedule_overrides(getattr(args, "schedule", None))]


def resolve_device(device: str | None) -> torch.device:
    if device:
        d = torch.device(device)
        if d.type == "cuda" and not torch.cuda.is_available():
            raise TesterError(f"--device {device}: CUDA is not available on this machine")
        return d
    return auto_device(None)


def _log_summary(result: dict[str, Any]) -> None:
    log.info("%s", format_table(result))
    if "coco" in result:
        log.info("%s", format_coco_table(result["coco"]))
    t = result["timing"]
    if t.get("total") is not None:
        log.info("mean time per frame: %.1f ms (%s); %d key frames of %d run",
                 1000 * t["total"], ", ".join(f"{s} {1000 * t[s]:.1f}" for s in STAGES),
                 t["key_frames"], t["frames_timed"])
    log.info("results: %s (mAP %.4f; over the %d classes with objects: %.4f)", result["results_file"],
             result["mAP"], sum(1 for n in result["num_gt_per_class"].values() if n > 0),
             result["mAP_present_classes"])


def _init_test_group(device: torch.device) -> bool:
    """Join the process group torchrun describes (``WORLD_SIZE`` > 1); True when this call made it."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return False
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda" and device.index is None:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return True


def _run_seg_test(args: argparse.Namespace, model: torch.nn.Module, cfg: Config, path: str, out_dir: str,
                  device: torch.device, shard: bool) -> dict[str, Any] | None:
    """:func:`run_test_from_args` for a segmentation model: mIoU by the DFF paper's key-distance protocol
    (:func:`dff.eval.seg_eval.run_seg_test_set`) at ``--key-interval`` (default ``TEST.KEY_FRAME_INTERVAL``), its
    JSON at ``<out_dir>/results/eval_<test_image_set>.json``. Not sharded (the labelled frames are few): under
    torchrun (and ``shard``) rank 0 evaluates, the other ranks return None."""
    if shard and int(os.environ.get("RANK", "0")) != 0:
        return None
    for option, value, default in (("TEST.KEY_FRAME_SCHEDULE", str(cfg.TEST.KEY_FRAME_SCHEDULE), ("fixed",)),
                                   ("--fast", getattr(args, "fast", "none"), ("none",)),
                                   ("--backend", getattr(args, "backend", "torch"), ("torch",))):
        if value not in default:  # the detection engine's options: say so rather than ignore them
            raise TesterError(f"{option} {value}: segmentation is evaluated at fixed key intervals, in plain "
                              "float32, with the torch backend")
    with setup_logging(os.path.join(out_dir, "test.log"), console=False):
        log.info("testing %s on %s (%s)", path, cfg.dataset.test_image_set, out_dir)
        try:
            result = run_seg_test_set(model, cfg, output_dir=out_dir, key_interval=getattr(args, "key_interval", None),
                                      scale_map=not getattr(args, "no_scale_map", False), device=device,
                                      progress=not args.no_progress, max_snippets=getattr(args, "max_videos", None))
        except (OSError, ValueError) as e:  # missing data, an unreadable frame or label, another class list
            raise TesterError(str(e)) from None
        log.info("%s", format_seg_result(result))
        log.info("IoU per class: %s", ", ".join(f"{n} {'n/a' if v is None else f'{v:.2f}'}"
                                                for n, v in result["per_class_IoU"].items()))
        log.info("results: %s", result["results_file"])
    return result


def run_test_from_args(args: argparse.Namespace, kind: str, cfg: Config, cfg_path: str,
                       model_path: str | None, *, shard: bool = True) -> dict[str, Any] | None:
    """Test the model at ``model_path`` (default :func:`default_model_path`) with the test options of
    ``args`` (:func:`dff.apps.cli.add_test_options`), log the table (also to ``test.log``). Under torchrun (and
    ``shard``) the videos are sharded over the processes; rank 0 evaluates and returns the result, the
    others None. A segmentation kind (``model.task == "seg"``) is evaluated by :func:`_run_seg_test` instead."""
    if not os.path.isdir(str(cfg.dataset.dataset_path)):  # before any folder is made
        raise TesterError(missing_dataset_message(str(cfg.dataset.dataset_path)))
    path = model_path or default_model_path(cfg, cfg_path)
    try:  # a model file without a class list (MXNet, fixture) is built with the test data's
        adopt_class_list(cfg, data_class_list(cfg, str(cfg.dataset.test_image_set)), "the test set")
    except (ClassListMismatch, CocoVideoError, ValueError) as e:
        raise TesterError(str(e)) from None
    model = build_test_model(cfg, path, kind, test_overrides(args))
    out_dir = eval_output_dir(cfg, cfg_path)
    os.makedirs(out_dir, exist_ok=True)
    device = resolve_device(args.device)
    if model.task == "seg":
        return _run_seg_test(args, model, cfg, path, out_dir, device, shard)
    made_group = _init_test_group(device) if shard else False
    rank, world = _shard()
    if device.type == "cuda" and device.index is None and world > 1:
        device = torch.device("cuda", torch.cuda.current_device())
    try:
        with setup_logging(os.path.join(out_dir, "test.log") if rank == 0 else None, console=False):
            log.info("testing %s on %s (%s)%s", path, cfg.dataset.test_image_set, out_dir,
                     f", {world} processes" if world > 1 else "")
            result = run_test_set(model, cfg, kind=kind, output_dir=out_dir, thresh=args.thresh,
                                  key_interval=getattr(args, "key_interval", None), device=device,
                                  ignore_cache=args.ignore_cache, num_workers=args.num_workers,
                                  progress=not args.no_progress, max_videos=args.max_videos,
                                  fast=FastPath.from_name(getattr(args, "fast", "none"), device),
                                  backend=getattr(args, "backend", "torch"), onnx_dir=getattr(args, "onnx", None))
            if result is not None:
                _log_summary(result)
    finally:
        if made_group:
            dist.destroy_process_group()
    return result
