"""Streaming evaluation (``tools/evaluate_streaming.py``): accuracy as a live stream's user gets it.

The protocol of "Towards Streaming Perception" (Li, Wang and Ramanan, ECCV 2020; docs/benchmarks.md): each
validation video is played as a stream at ``fps``; frame ``i`` arrives at ``i / fps``. Whenever the detector
is free it takes the newest frame that has arrived (the frames in between are dropped, as a live source's
one-slot buffer does) and its output is stamped with the time it finished. The ground truth of frame ``i`` is
then scored against the latest output that finished at or before ``i / fps``; none yet: no detections. So
latency counts as error, even an output that is one frame old is scored against the frame at hand, and only a
detector with zero latency reaches its offline accuracy.

Two clocks:

* real time (default): the stream runs on this machine's clock; key frames of ``--async-keys`` run on a
  :class:`~dff.temporal.async_keys.ThreadKeys` worker with its own share of the cores;
* ``--replay``: each kind of step's runtime (a key frame in the engine, a non-key frame, the key worker's
  key) is measured once (a real-time run; ``--timings`` reads one saved with ``--save-timings``), and the
  schedule is simulated on a virtual clock with draws from those samples (a seeded generator): the same
  numbers on a noisy machine, as the streaming-perception toolkit's simulation mode. The detections are still
  computed, exactly, for the frames and key frames the simulated schedule picks.

The scores are the VID mAP over the classes present (the same code as the offline tester), COCO AP by
pycocotools, and the latency from a frame's arrival to its output, over the frames processed.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import sys
import tempfile
import time
from typing import Any, Callable, Sequence

import numpy as np
import torch
from tqdm import tqdm

from dff.apps.evaluate import load_for_dataset
from dff.config import update_config
from dff.engine.fastpath import FastPath
from dff.engine.frames import frames_from_arrays
from dff.engine.video import VideoDetector, schedule_overrides
from dff.eval.tester import DEFAULT_THRESH, Detections, TesterError, evaluate_detections, load_test_set, run_test_set
from dff.temporal.async_keys import SimulatedKeys, ThreadKeys, split_threads
from dff.utils.checkpoint import CheckpointError
from dff.utils.image import read_image
from dff.utils.io import atomic_write_text

__all__ = ["Output", "StreamTimings", "stream_video", "associate", "latency_summary", "run_evaluate_streaming"]

STEP_KINDS = ("key", "non_key", "key_worker")


@dataclasses.dataclass
class Output:
    """One processed frame of a stream: its index, when it arrived, started and finished (seconds from the
    stream's start), the detections (per class), and the key frame it came from."""

    index: int
    arrival: float
    start: float
    finish: float
    detections: list
    is_key: bool
    key_index: int

    @property
    def latency(self) -> float:
        return self.finish - self.arrival


class StreamTimings:
    """Seconds per kind of step (:data:`STEP_KINDS`): measured in real time, drawn from in replay."""

    def __init__(self, samples: dict[str, list[float]] | None = None, seed: int = 0) -> None:
        self.samples = {k: list((samples or {}).get(k, [])) for k in STEP_KINDS}
        self.rng = np.random.default_rng(seed)

    def add(self, kind: str, seconds: float) -> None:
        self.samples[kind].append(float(seconds))

    def draw(self, kind: str) -> float:
        values = self.samples[kind]
        if not values:
            raise ValueError(f"no measured runtime of a {kind.replace('_', ' ')} step to replay: measure them with "
                             f"the same configuration (a real-time run, --save-timings)")
        return float(values[self.rng.integers(len(values))])

    def summary(self) -> dict[str, Any]:
        return {k: {"n": len(v), "median_ms": round(1000 * float(np.median(v)), 3) if v else None,
                    "p95_ms": round(1000 * float(np.percentile(v, 95)), 3) if v else None}
                for k, v in self.samples.items()}


def stream_video(detector: VideoDetector, frames: Sequence[np.ndarray], fps: float, *,
                 clock: Callable[[], float] | None = None, sleep: Callable[[float], None] = time.sleep,
                 timings: StreamTimings | None = None, replay: StreamTimings | None = None,
                 sim_clock: list[float] | None = None) -> list[Output]:
    """Play ``frames`` (BGR) as a stream at ``fps`` through ``detector`` (reset first); returns the outputs in the
    order they finished.

    Real time (``replay`` None): frame ``i`` arrives at ``i / fps`` of ``clock``; each step's seconds are added to
    ``timings`` (kinds ``key`` / ``non_key``). Replay: the step durations are drawn from ``replay`` on the
    virtual clock ``sim_clock[0]`` (which a :class:`SimulatedKeys` worker of the detector reads too)."""
    detector.reset()
    n = len(frames)
    outputs: list[Output] = []
    last = -1
    if replay is None:
        clock = clock or time.perf_counter
        t0 = clock()

        def now() -> float:
            return clock() - t0
    else:
        sim_clock = sim_clock if sim_clock is not None else [0.0]
        sim_clock[0] = 0.0

        def now() -> float:
            return sim_clock[0]
    while last < n - 1:
        t = now()
        newest = min(int(np.floor(t * fps + 1e-9)), n - 1)
        if newest <= last:  # idle: wait for the next frame
            wait = (last + 1) / fps - t
            if replay is None:
                sleep(max(wait, 0.0))
            else:
                sim_clock[0] = (last + 1) / fps
            continue
        start = t
        data, im_info = detector.prepare(frames[newest])
        out, is_key, _ = detector.step(data, im_info, index=newest)
        dets = detector.postprocess(out, im_info)
        info = detector.last_step
        if replay is None:
            finish = now()
            if timings is not None:
                timings.add("key" if is_key else "non_key", finish - start)
        else:
            finish = start + replay.draw("key" if is_key else "non_key")
            sim_clock[0] = finish
        outputs.append(Output(newest, newest / fps, start, finish, dets, is_key, info.key_index))
        last = newest
    return outputs


def associate(outputs: Sequence[Output], num_frames: int, fps: float, num_classes: int) -> tuple[list[list], list[int]]:
    """The streaming protocol's pairing: for each ground-truth frame ``i``, the detections of the latest output
    finished at or before ``i / fps`` (none: empty), and that output's frame index (-1: none)."""
    empty = [np.zeros((0, 5), np.float32) for _ in range(num_classes)]
    done = sorted(outputs, key=lambda o: o.finish)
    boxes, used = [], []
    j = -1
    for i in range(num_frames):
        t = i / fps
        while j + 1 < len(done) and done[j + 1].finish <= t:
            j += 1
        if j < 0:
            boxes.append(list(empty))
            used.append(-1)
        else:
            boxes.append([np.asarray(d, np.float32).reshape(-1, 5) for d in done[j].detections])
            used.append(done[j].index)
    return boxes, used


def latency_summary(outputs: Sequence[Output]) -> dict[str, float]:
    lat = np.array([1000 * o.latency for o in outputs]) if outputs else np.zeros(1)
    return {"p50": round(float(np.percentile(lat, 50)), 2), "p95": round(float(np.percentile(lat, 95)), 2),
            "p99": round(float(np.percentile(lat, 99)), 2), "max": round(float(lat.max()), 2),
            "mean": round(float(lat.mean()), 2)}


def _run_streams(detector: VideoDetector, videos: list, fps: float, num_classes: int, *, replay: StreamTimings | None,
                 timings: StreamTimings, sim_clock: list[float], progress: bool,
                 records: list[dict] | None) -> tuple[list[list], list[Output], list[Output], dict[str, float]]:
    boxes: list[list] = []
    all_outputs: list[Output] = []
    steady: list[Output] = []  # after each stream's first output (which waits for the stream's first key frame)
    lag = {"in_time": 0, "matched": 0, "lag_sum": 0}
    for v in tqdm(videos, desc="streams", unit="video", disable=not progress, file=sys.stderr):
        frames = [read_image(p) for p in v.paths]  # decoded ahead: a camera delivers decoded frames
        outputs = stream_video(detector, frames, fps, timings=timings, replay=replay, sim_clock=sim_clock)
        video_boxes, used = associate(outputs, len(frames), fps, num_classes)
        boxes.extend(video_boxes)
        all_outputs.extend(outputs)
        steady.extend(outputs[1:])
        for i, u in enumerate(used):
            if u >= 0:
                lag["matched"] += 1
                lag["in_time"] += int(u == i)
                lag["lag_sum"] += i - u
        if records is not None:
            records.extend({"video": v.name, "index": o.index, "arrival": round(o.arrival, 6),
                            "start": round(o.start, 6), "finish": round(o.finish, 6), "is_key": o.is_key,
                            "key_index": o.key_index} for o in outputs)
    return boxes, all_outputs, steady, lag


def run_evaluate_streaming(args: argparse.Namespace) -> int:
    """``tools/evaluate_streaming.py``: one configuration, one JSON object; 0, or 2 after one ``error:`` line."""
    try:
        return _evaluate(args)
    except (CheckpointError, TesterError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _evaluate(args: argparse.Namespace) -> int:
    if args.fps <= 0:
        raise ValueError(f"--fps must be > 0, got {args.fps}")
    model, cfg = load_for_dataset(args.model, [*args.set, *schedule_overrides(args.schedule)], args.dataset_path)
    kind = model.kind
    if args.async_keys and not model.has_flow:
        raise ValueError(f"{args.model}: --async-keys needs a model with a flow network (a DFF); this one is per-frame")
    total = args.threads or torch.get_num_threads()
    main_threads, key_threads = split_threads(total, args.key_threads) if args.async_keys else (total, 0)
    torch.set_num_threads(main_threads)
    imdb, videos = load_test_set(cfg, max_videos=args.max_videos)
    num_classes = imdb.num_classes
    fast = FastPath.from_name(args.fast, "cpu")
    sim_clock = [0.0]
    timings = StreamTimings()
    replay = None
    if args.replay:
        if args.timings:
            with open(args.timings) as f:
                saved = json.load(f)
            replay = StreamTimings(saved["samples"], seed=args.seed)
        if args.key_latency_ms is not None:
            replay = replay or StreamTimings(seed=args.seed)
            replay.samples["key_worker"] = [args.key_latency_ms / 1000.0]

    def detector(real: bool, source: StreamTimings | None = None) -> VideoDetector:
        keys = None
        if args.async_keys:
            keys = (ThreadKeys(key_threads) if real else
                    SimulatedKeys(lambda: sim_clock[0], lambda: source.draw("key_worker")))
        return VideoDetector(model, cfg, args.key_interval, thresh=DEFAULT_THRESH[kind], sync=False, fast=fast,
                             keys=keys)

    out_dir = args.out or tempfile.mkdtemp(prefix="dff_streaming_")
    progress = not args.quiet
    calibration = None
    if args.replay and (replay is None or not any(replay.samples[k] for k in ("key", "non_key"))):
        # measure the steps' runtimes once: real time over the first videos
        calib = detector(True)
        _warm_up(calib, videos[0])
        stream_timings = StreamTimings()
        _run_streams(calib, videos[:args.calibrate_videos], args.fps, num_classes, replay=None, timings=stream_timings,
                     sim_clock=sim_clock, progress=progress, records=None)
        if calib.keys is not None:
            stream_timings.samples["key_worker"] = list(calib.keys.durations)
            calib.close()
        if replay is not None:  # a forced key latency wins over the measured one
            stream_timings.samples["key_worker"] = replay.samples["key_worker"] or stream_timings.samples["key_worker"]
        replay = StreamTimings(stream_timings.samples, seed=args.seed)
        calibration = {"videos": min(args.calibrate_videos, len(videos))}
    det = detector(replay is None, replay)
    if replay is None:
        _warm_up(det, videos[0])
    records: list[dict] | None = [] if args.records else None
    boxes, outputs, steady, lag = _run_streams(det, videos, args.fps, num_classes, replay=replay, timings=timings,
                                       sim_clock=sim_clock, progress=progress, records=records)
    if isinstance(det.keys, ThreadKeys):
        timings.samples["key_worker"] = list(det.keys.durations)
    det.close()
    eval_cfg = copy.deepcopy(cfg)
    update_config(eval_cfg, {"TEST": {"COCO_AP": True}}, source="the streaming evaluation")
    dets = Detections(imdb, videos, boxes, [], 0, {}, DEFAULT_THRESH[kind], det.key_interval)
    streaming = evaluate_detections(dets, eval_cfg, os.path.join(out_dir, "streaming"))
    offline = run_test_set(model, cfg, kind=kind, output_dir=os.path.join(out_dir, "offline"),
                           key_interval=args.key_interval, progress=False, fast=fast)
    n_gt = sum(len(v.paths) for v in videos)
    result = {
        "streaming_mAP": streaming["mAP_present_classes"],
        "offline_mAP": offline["mAP_present_classes"],
        "streaming_coco_AP": streaming["coco"]["AP"],
        "latency_ms": latency_summary(outputs),
        "latency_ms_after_first": latency_summary(steady),
        "streaming_motion": {m: (v.get("mAP") if isinstance(v, dict) else v) for m, v in streaming["motion"].items()},
        "frames": n_gt,
        "frames_processed": len(outputs),
        "key_frames_in_engine": sum(o.is_key for o in outputs),
        "in_time": lag["in_time"] / max(lag["matched"], 1),
        "mean_lag_frames": lag["lag_sum"] / max(lag["matched"], 1),
        "no_output_frames": n_gt - lag["matched"],
        "timings": (replay or timings).summary(),
        "config": {"model": args.model, "kind": kind, "dataset": str(cfg.dataset.dataset_path), "fps": args.fps,
                   "mode": "replay" if args.replay else "real-time", "async_keys": bool(args.async_keys),
                   "key_interval": det.key_interval, "schedule": det.describe_schedule(),
                   "threads": main_threads, "key_threads": key_threads if args.async_keys else 0,
                   "seed": args.seed if args.replay else None, "calibration": calibration,
                   "key_latency_ms": args.key_latency_ms, "videos": len(videos), "set": list(args.set)},
    }
    print(f"{kind} {'async' if args.async_keys else 'sync'} {result['config']['mode']} at {args.fps:g} fps: streaming mAP "
          f"{result['streaming_mAP']:.4f} (offline {result['offline_mAP']:.4f}), COCO AP {result['streaming_coco_AP']:.4f}, "
          f"latency p50/p95/p99 {result['latency_ms']['p50']}/{result['latency_ms']['p95']}/{result['latency_ms']['p99']} ms, "
          f"(after each stream's first frame {result['latency_ms_after_first']['p50']}/"
          f"{result['latency_ms_after_first']['p99']} p50/p99), "
          f"processed {len(outputs)}/{n_gt} frames, mean lag {result['mean_lag_frames']:.2f} frames", flush=True)
    if args.save_timings and not args.replay:
        atomic_write_text(args.save_timings, json.dumps({"samples": timings.samples, "config": result["config"]}))
    if records is not None:
        atomic_write_text(args.records, "".join(json.dumps(r) + "\n" for r in records))
    if args.json:
        atomic_write_text(args.json, json.dumps(result, indent=1))
    return 0


def _warm_up(detector: VideoDetector, video: Any, frames: int = 4) -> None:
    """A few frames before the clock starts: one-time costs (weight packing, allocations) are not latency."""
    for _ in detector.run(frames_from_arrays([read_image(p) for p in video.paths[:frames]])):
        pass
