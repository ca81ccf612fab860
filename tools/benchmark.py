"""Benchmark DFF against the per-frame R-FCN, in one process, through the same video engine.

    python tools/benchmark.py --cfg experiments/dff_rfcn/cfgs/resnet_v1_101_flownet_imagenet_vid_rfcn_end2end_ohem.yaml \\
        --video ../shared/data/videos/vtest.avi --frames 20 --key-intervals 10 --scale 600,1000 --device cpu

For every key interval it reports network-only fps (frames decoded, preprocessed and already on the
device; feature network, FlowNet, warp and task network, without NMS post-processing), end-to-end
fps (decoding the file and post-processing included), the per-stage split, peak memory, and the
speed-up over per-frame (network-only DFF fps / per-frame fps, both measured in this run on the same
frames). Without ``--model`` the networks get deterministic initial weights: enough to measure speed.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time

import cv2
import numpy as np
import torch
from torch.profiler import ProfilerActivity
from torch.profiler import profile as torch_profile

from dff.config import MODEL_KEYS, ConfigError, load_config, parse_overrides, update_config
from dff.engine.fastpath import FAST_NAMES, FastPath
from dff.engine.frames import Frame, FrameSource, VideoReadError, frames_from_arrays
from dff.engine.postprocess import im_detect_boxes, pred_eval_frame
from dff.engine.video import VideoDetector
from dff.eval.tester import run_test_set
from dff.models.builder import FIXTURE, load_model
from dff.utils.checkpoint import CheckpointError
from dff.utils.hardware import describe_hardware
from dff.utils.io import atomic_write_text

NET_STAGES = ("feature", "flow", "warp", "head")


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


def synthetic_clip(n: int, height: int = 576, width: int = 768) -> list[np.ndarray]:
    """A moving textured scene (used when no --video is given)."""
    return [f.image for f in stream_frames(n, height, width)]


def stream_frames(n: int, height: int, width: int, prepare=None):
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


def time_network(detector: VideoDetector, prepared: list, warmup: int = 2) -> dict:
    """Network-only time per frame over prepared inputs already on the device.

    On CUDA the fps comes from an unsynchronised pass (the true pipelined speed) and the per-stage
    split from a second pass that synchronises between stages.
    """
    cuda = detector.device.type == "cuda"

    def one_pass(sync: bool) -> tuple[float, dict, int]:
        detector.sync = sync
        detector.reset()
        per_stage = {s: [] for s in NET_STAGES}
        keys = 0
        if cuda:
            torch.cuda.synchronize(detector.device)
        t0 = time.perf_counter()
        for data, im_info in prepared:
            _, is_key, times = detector.step(data, im_info)
            keys += is_key
            for s in NET_STAGES:
                per_stage[s].append(times[s])
        if cuda:
            torch.cuda.synchronize(detector.device)
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
            "stages_ms": {s: 1000 * float(np.sum(v)) / n for s, v in per_stage.items()}}


def time_end_to_end(detector: VideoDetector, video: str | None, frames: list[np.ndarray], n: int,
                    workers: int = 2) -> dict:
    """From the file (decoding in background workers) to post-processed detections."""
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


def time_post(detector: VideoDetector, prepared: list, frames: int = 10) -> dict:
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
        if detector.device.type == "cuda":
            torch.cuda.synchronize(detector.device)
        t0 = time.perf_counter()
        for out, im_info in outs:
            fn(out, im_info)
        if detector.device.type == "cuda":
            torch.cuda.synchronize(detector.device)
        result[name] = 1000 * (time.perf_counter() - t0) / len(outs)
    return result


def profile(detector: VideoDetector, prepared: list, path: str) -> None:
    """torch.profiler over one pass of the prepared frames (network and post-processing); op tables to ``path``."""

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if detector.device.type == "cuda" else [])
    detector.reset()
    with torch_profile(activities=activities) as prof:
        for data, im_info in prepared:
            out, _, _ = detector.step(data, im_info)
            detector.postprocess(out, im_info)
        if detector.device.type == "cuda":
            torch.cuda.synchronize(detector.device)
    table = prof.key_averages()
    text = [f"# {len(prepared)} frames, key interval {detector.key_interval}, {detector.runner.fast.describe()}",
            table.table(sort_by="self_cpu_time_total", row_limit=40)]
    if detector.device.type == "cuda":
        text.append(table.table(sort_by="self_cuda_time_total", row_limit=25))
    atomic_write_text(path, "\n\n".join(text))
    print("\n".join(text[1].split("\n")[:16]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cfg", default="experiments/dff_rfcn/cfgs/resnet_v1_101_flownet_imagenet_vid_rfcn_end2end_ohem.yaml")
    ap.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                    help="override config keys after the YAML (and after a native checkpoint's own config), "
                         "e.g. --set TEST.RPN_POST_NMS_TOP_N=100 (values read as YAML)")
    ap.add_argument("--model", default=None, help="MXNet .params or native checkpoint (default: initial weights)")
    ap.add_argument("--video", default=None, help="video file or frame folder (default: a generated clip)")
    ap.add_argument("--frames", type=int, default=20)
    ap.add_argument("--key-intervals", default="1,2,5,10,20")
    ap.add_argument("--scale", default=None, help="short,max-long side (default: the config's SCALES)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--fast", default=None, choices=list(FAST_NAMES),
                    help="the fast path: none (plain float32); fp32 (CUDA: channels_last, cuDNN autotune, CUDA graphs; "
                         "CPU: oneDNN pre-packed weights); fp16 / bf16 (the same with autocast); default fp16 on CUDA, "
                         "fp32 on the CPU (applied alike to per-frame R-FCN and DFF)")
    ap.add_argument("--profile", default=None,
                    help="also profile the largest key interval (torch.profiler) and write the op table here")
    ap.add_argument("--workers", type=int, default=None,
                    help="decoding threads for a frame folder (default: min(8, CPU cores))")
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--plot", default=None, help="write a PNG of fps per key interval here")
    ap.add_argument("--no-end-to-end", action="store_true", help="skip the end-to-end runs")
    ap.add_argument("--eval", action="store_true",
                    help="also evaluate mAP per key interval on the config's test set (a trained --model; "
                         "the synthetic mini-VID for the tiny configs) and plot mAP against fps")
    ap.add_argument("--eval-dir", default=None, help="where the test outputs go (default: a temporary folder)")
    ap.add_argument("--lengths", default=None,
                    help="e.g. 100,1000,5000: stream that many generated frames end to end through DFF at the "
                         "largest key interval and report time and peak RSS per length (memory must stay flat)")
    args = ap.parse_args(argv)
    try:
        device = torch.device(args.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("--device cuda: no CUDA device is available")
        # the fixture weights keep activations O(1), like a trained net
        model, cfg = load_model(args.model or FIXTURE, load_config(args.cfg, args.set), kind="dff", device=device)
        if args.set:  # a native checkpoint's own config wins over --cfg: --set applies to it too
            update_config(cfg, parse_overrides(args.set), "--set", fixed=MODEL_KEYS)
        if args.scale:
            short, long_ = (int(v) for v in args.scale.split(","))
            update_config(cfg, {"SCALES": [short, long_]}, "--scale")
        intervals = sorted({int(k) for k in args.key_intervals.split(",")})
        fast = FastPath.from_name(args.fast, device)
        base = VideoDetector(model, cfg, key_interval=1, device=device, sync=False, fast=fast)
        if args.video:
            frames = [f.image for f in FrameSource(args.video, max_frames=args.frames)]
        else:
            frames = synthetic_clip(args.frames)
        if len(frames) < args.frames:
            print(f"note: the video has only {len(frames)} frames", file=sys.stderr)
        prepared = [tuple(t.to(device) for t in base.prepare(im)) for im in frames]
    except (ConfigError, CheckpointError, VideoReadError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    workers = args.workers or min(8, os.cpu_count() or 1)
    h, w = prepared[0][0].shape[-2:]
    print(f"{len(frames)} frames {frames[0].shape[1]}x{frames[0].shape[0]} -> network input {w}x{h}, "
          f"{cfg.network.BACKBONE}, device {describe_hardware(device)}, {fast.describe()}")
    _reset_peak_rss()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    per_frame = time_network(base, prepared)
    results = {}
    for k in intervals:
        det = base if k == 1 else VideoDetector(model, cfg, key_interval=k, device=device, sync=False, fast=fast)
        _reset_peak_rss()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        net = per_frame if k == 1 else time_network(det, prepared)
        e2e = {} if args.no_end_to_end else time_end_to_end(det, args.video, frames, args.frames, workers)
        row = {
            "per_frame_fps": per_frame["fps"],
            "dff_fps": net["fps"],
            "speedup": net["fps"] / per_frame["fps"],
            "end_to_end_fps": e2e.get("fps"),
            "key_frames": net["key_frames"],
            "stages": {**{f"{s}_ms": v for s, v in net["stages_ms"].items()}, "post_ms": e2e.get("post_ms")},
            "peak_memory_mb": {"rss": _peak_rss_mb()},
        }
        if device.type == "cuda":
            row["peak_memory_mb"]["gpu"] = torch.cuda.max_memory_allocated(device) / 2**20
        results[str(k)] = row
    post_methods = time_post(det, prepared)
    print("post-processing per frame (ms): " + ", ".join(f"{m} {v:.2f}" for m, v in post_methods.items()))
    if args.profile:
        profile(det, prepared, args.profile)
    if args.eval:

        out_dir = args.eval_dir or tempfile.mkdtemp(prefix="dff_bench_eval_")
        for k in intervals:
            ev = run_test_set(model, cfg, kind="dff", output_dir=os.path.join(out_dir, f"interval_{k}"),
                              key_interval=k, device=device, progress=False, fast=fast)
            results[str(k)]["mAP"] = ev.get("mAP_present_classes", ev["mAP"])
            results[str(k)]["mAP_all_30"] = ev["mAP"]

    if args.lengths:
        k = max(intervals)
        det = VideoDetector(model, cfg, key_interval=k, device=device, sync=False, fast=fast)
        h0, w0 = frames[0].shape[:2]
        scaling = {}
        for n in sorted(int(v) for v in args.lengths.split(",")):
            _reset_peak_rss()
            t0 = time.perf_counter()
            count = sum(1 for _ in det.run(stream_frames(n, h0, w0, det.prepare)))
            wall = time.perf_counter() - t0
            scaling[str(n)] = {"seconds": wall, "ms_per_frame": 1000 * wall / count, "peak_rss_mb": _peak_rss_mb()}
            print(f"length {n:>6}: {wall:8.1f} s, {1000 * wall / count:7.1f} ms/frame, peak RSS {_peak_rss_mb():.0f} MB")
    print(f"{'interval':>8} {'per-frame fps':>14} {'DFF fps':>9} {'speed-up':>9} {'end-to-end fps':>15} "
          f"{'feature':>8} {'flow':>7} {'warp':>7} {'head':>7} {'post':>7} {'RSS MB':>7}")
    for k, r in results.items():
        s = r["stages"]
        e2e = f"{r['end_to_end_fps']:.3f}" if r["end_to_end_fps"] is not None else "-"
        post = f"{s['post_ms']:.1f}" if s["post_ms"] is not None else "-"
        print(f"{k:>8} {r['per_frame_fps']:>14.3f} {r['dff_fps']:>9.3f} {r['speedup']:>8.2f}x {e2e:>15} "
              f"{s['feature_ms']:>8.1f} {s['flow_ms']:>7.1f} {s['warp_ms']:>7.1f} {s['head_ms']:>7.1f} {post:>7} "
              f"{r['peak_memory_mb']['rss']:>7.0f}")
    print("(stage columns: mean ms per frame over all frames; network-only fps excludes decoding and post-processing)")
    if args.eval:
        print("mAP per key interval (classes present in the test set): " +
              ", ".join(f"{k}: {r['mAP']:.4f}" for k, r in results.items()))
    report = {
        "intervals": results,
        "hardware": describe_hardware(device),
        "versions": {"torch": torch.__version__, "python": platform.python_version(),
                     "compiled_ops": __import__("dff.ops", fromlist=["x"]).compiled_available()},
        "command": " ".join(["python", "tools/benchmark.py", *(argv if argv is not None else sys.argv[1:])]),
        "input": {"frames": len(frames), "network_input": [int(h), int(w)], "backbone": cfg.network.BACKBONE},
        "fast_path": fast.describe(),
    }
    report["post_methods_ms"] = post_methods
    if args.lengths:
        report["lengths"] = scaling
    if args.json:
        atomic_write_text(args.json, json.dumps(report, indent=1))
    if args.plot:
        try:
            import matplotlib
        except ImportError:
            print("error: --plot needs matplotlib: pip install matplotlib (or pip install -e '.[plot]')",
                  file=sys.stderr)
            return 2

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        ks = [int(k) for k in results]
        plt.figure(figsize=(5, 3.5))
        if args.eval:  # the speed/accuracy curve: each interval is a point, per-frame is interval 1
            fps = [results[str(k)]["dff_fps"] for k in ks]
            maps = [100 * results[str(k)]["mAP"] for k in ks]
            plt.plot(fps, maps, "o-", label="DFF")
            for k, x, y in zip(ks, fps, maps):
                plt.annotate("per-frame" if k == 1 else f"k={k}", (x, y), textcoords="offset points", xytext=(4, 4))
            plt.xlabel("frames per second (network only)")
            plt.ylabel("mAP (%)")
        else:
            plt.plot(ks, [results[str(k)]["dff_fps"] for k in ks], "o-", label="DFF (network)")
            plt.axhline(per_frame["fps"], color="gray", ls="--", label="per-frame R-FCN")
            plt.xlabel("key frame interval")
            plt.ylabel("frames per second")
        plt.title(f"{cfg.network.BACKBONE}, {int(w)}x{int(h)}, {describe_hardware(device).split(',')[0]}", fontsize=8)
        plt.legend()
        plt.tight_layout()
        plt.savefig(args.plot, dpi=120)
    return 0


if __name__ == "__main__":
    sys.exit(main())
