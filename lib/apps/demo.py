"""The demo command shared by ``rfcn/demo.py`` (per-frame) and ``dff_rfcn/demo.py`` (DFF).

Input: a video file or a folder of frames (ordered by frame number). Output: annotated frames and an
``.mp4`` in ``--out``, a per-frame log line, and a summary with fps and the per-stage time split.
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import time
import warnings

import cv2
import numpy as np
import torch
from tqdm import tqdm

from dff.config import Config, ConfigError, load_config
from dff.dataset.classes import VID_CLASSES
from dff.dataset.synthetic import SynthConfig, generate
from dff.engine.fastpath import FAST_NAMES, FastPath
from dff.engine.frames import FrameSource, VideoReadError
from dff.engine.video import STAGES, FrameResult, VideoDetector
from dff.models.builder import load_model
from dff.utils.checkpoint import CheckpointError
from dff.utils.vis import draw_detections


class DemoError(RuntimeError):
    """A user-facing problem (missing model, bad input); printed as one line."""


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def build_parser(name: str, default_cfg: str, default_out: str, dff: bool) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=name, description=__doc__)
    ap.add_argument("input", nargs="?", default=None,
                    help="video file or folder of frames (default: a synthetic clip generated on the spot, "
                         "for the embedded model)")
    ap.add_argument("--model", default=None,
                    help="weights: an original MXNet .params file, a native checkpoint (.pth), or 'fixture' "
                         "(the parity fixtures' deterministic weights: checks the pipeline, detects nothing real); "
                         "default: the small model trained on the synthetic mini-VID that ships in data/models/")
    ap.add_argument("--cfg", default=default_cfg, help="YAML config (default: %(default)s)")
    ap.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                    help="override config keys after the YAML, and after a native checkpoint's own config, e.g. "
                         "--set TEST.KEY_FRAME_INTERVAL=5 TEST.RPN_POST_NMS_TOP_N=100 (values read as YAML; "
                         "keys that shape the network must match the checkpoint)")
    ap.add_argument("--out", default=default_out, help="output folder (default: %(default)s)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--fast", default=None, choices=FAST_NAMES,
                    help="fast path: fp16 (default on CUDA: autocast, channels_last, CUDA graphs), fp32 (default on the "
                         "CPU: oneDNN pre-packed weights), bf16, or none (plain float32); see docs/benchmarks.md")
    ap.add_argument("--max-frames", type=int, default=None, help="stop after this many frames")
    ap.add_argument("--thresh", type=float, default=1e-4 if dff else 1e-3,
                    help="detection score threshold (reference: 1e-4 DFF, 1e-3 R-FCN)")
    ap.add_argument("--vis-thresh", type=float, default=0.7, help="draw boxes above this score (reference: 0.7)")
    ap.add_argument("--no-video", action="store_true", help="do not write the .mp4")
    ap.add_argument("--no-frames", action="store_true", help="do not write annotated frames")
    ap.add_argument("--quiet", action="store_true", help="no per-frame lines")
    if dff:
        ap.add_argument("--key-interval", type=int, default=None,
                        help="key frame every N frames (default: TEST.KEY_FRAME_INTERVAL of the config)")
        ap.add_argument("--compare", action="store_true",
                        help="also run per-frame R-FCN (same weights, every frame a key frame) and report the speed-up")
    return ap


def load_demo_model(kind: str, cfg_path: str, model_path: str | None, device: str,
                    what: str, overrides: list[str] | tuple[str, ...] = ()) -> tuple[torch.nn.Module, Config]:
    """The demo's model (:func:`dff.models.builder.load_model`); ``what`` names the released file to suggest.
    ``overrides`` (``KEY=VALUE``) go on ``cfg_path``, or on the config a native checkpoint brings."""
    if model_path is None:
        raise DemoError(
            f"no model given. Pass --model with {what} (the reference's released MXNet checkpoint, "
            "see README 'Models'), a native checkpoint written by the training script (output/.../*.pth), "
            "or 'fixture' (the parity fixtures' deterministic weights: the real pipeline, meaningless detections).")
    try:
        return load_model(model_path, load_config(cfg_path, overrides), kind=kind, device=device, overrides=overrides)
    except CheckpointError as e:
        raise DemoError(str(e)) from None


def _summary(label: str, results: list[FrameResult], wall: float, drawn: int = 0) -> dict:
    stage_ms = {s: 1000 * float(np.mean([r.times[s] for r in results])) for s in STAGES}
    net = float(np.mean([r.times["total"] - r.times["post"] for r in results]))
    return {
        "label": label,
        "frames": len(results),
        "key_frames": sum(r.is_key for r in results),
        "net_ms": 1000 * net,
        "net_fps": 1.0 / net if net > 0 else float("inf"),
        "stage_ms": stage_ms,
        "end_to_end_fps": len(results) / wall if wall > 0 else float("inf"),
        "drawn": drawn,
    }


def _print_summary(s: dict) -> None:
    split = ", ".join(f"{k} {v:.1f}" for k, v in s["stage_ms"].items())
    print(f"{s['label']}: {s['frames']} frames ({s['key_frames']} key), network {s['net_ms']:.1f} ms/frame "
          f"= {s['net_fps']:.2f} fps; end-to-end {s['end_to_end_fps']:.2f} fps (decode included)")
    print(f"  per-stage mean ms: {split}")
    if s["drawn"]:
        print(f"  {s['drawn']} boxes drawn (score above --vis-thresh)")


def _run(detector: VideoDetector, source: FrameSource, label: str, out_dir: str | None, writer_path: str | None,
         vis_thresh: float, quiet: bool, mark_keys: bool) -> tuple[list[FrameResult], float, int]:
    results: list[FrameResult] = []
    writer, size = None, None
    drawn = 0
    t0 = time.perf_counter()
    total = len(source)
    with tqdm(total=total or None, desc=label, unit="frame", file=sys.stderr, disable=None) as bar:
        for r in detector.run(source):
            if out_dir is not None or writer_path is not None:
                im = draw_detections(r.image, r.detections, VID_CLASSES, vis_thresh,
                                     key_frame=r.is_key if mark_keys else None)
                if out_dir is not None:
                    name = os.path.splitext(r.name)[0] + ".jpg"
                    cv2.imwrite(os.path.join(out_dir, name), im)
                if writer_path is not None:
                    if writer is None:
                        size = (im.shape[1], im.shape[0])
                        writer = cv2.VideoWriter(writer_path + ".tmp.mp4", cv2.VideoWriter_fourcc(*"mp4v"),
                                                 25.0, size)
                    if (im.shape[1], im.shape[0]) == size:  # an .mp4 has one frame size; others go to frames only
                        writer.write(im)
            r.image = None  # drop the frame: memory must not grow with the video
            results.append(r)
            ndet = sum(int((np.asarray(d)[:, 4] > vis_thresh).sum()) for d in r.detections[1:] if len(d))
            drawn += ndet
            if not quiet:
                tqdm.write(f"{label} {r.name} {'key' if r.is_key else '   '} {1000 * r.times['total']:.1f} ms "
                           f"{ndet} boxes > {vis_thresh}", file=sys.stderr)
            bar.update(1)
    wall = time.perf_counter() - t0
    if writer is not None:
        writer.release()
        os.replace(writer_path + ".tmp.mp4", writer_path)
    return results, wall, drawn


def synthetic_clip(out_dir: str, frames: int = 60, seed: int = 2017) -> str:
    """Generate one held-out synthetic video (a seed the embedded models never saw) and return its frame folder."""

    root = os.path.join(out_dir, "synthetic_clip")
    generate(root, SynthConfig(seed=seed, train_videos=0, val_videos=1, frames=frames, det_images=0))
    videos = os.path.join(root, "Data", "VID", "val")
    return os.path.join(videos, sorted(os.listdir(videos))[0])


def run_demo(argv: list[str] | None, *, name: str, kind: str, default_cfg: str, default_out: str, what: str,
             default_model: str | None = None) -> int:
    dff = kind == "dff"
    args = build_parser(name, default_cfg, default_out, dff).parse_args(argv)
    # one line per warning (skipped frames, operator fallback), not the source line that raised it
    warnings.formatwarning = lambda message, category, *a, **k: f"warning: {message}\n"
    try:
        if args.model is None and default_model is not None and os.path.isfile(default_model):
            args.model = default_model
            print(f"model: {os.path.relpath(default_model)} (the embedded model, trained on the synthetic mini-VID)")
        if args.input is None:
            if args.model != default_model:
                raise DemoError("no input given: pass a video file or a folder of frames, "
                                "e.g. ../shared/data/ILSVRC2015_val_00007010")
            os.makedirs(args.out, exist_ok=True)
            args.input = synthetic_clip(args.out)
            print(f"input: {args.input} (a synthetic clip generated now, unseen in training)")
        model, cfg = load_demo_model(kind, args.cfg, args.model, args.device, what, args.set)
        interval = args.key_interval if dff else 1
        fast = FastPath.from_name(args.fast, args.device)
        detector = VideoDetector(model, cfg, key_interval=interval, device=args.device, thresh=args.thresh,
                                 keep_images=True, fast=fast)
        source = FrameSource(args.input, prepare=detector.prepare, max_frames=args.max_frames, on_error="skip")
        os.makedirs(args.out, exist_ok=True)
        warm = FrameSource(args.input, prepare=detector.prepare, max_frames=2, on_error="skip")
        for _ in detector.run(warm):  # warm-up (the reference runs two frames first)
            pass
        frames_dir = None if args.no_frames else args.out
        video_path = None if args.no_video else os.path.join(args.out, "demo.mp4")
        label = "dff" if dff else "rfcn"
        results, wall, drawn = _run(detector, source, label, frames_dir, video_path, args.vis_thresh, args.quiet, dff)
        summary = _summary(label + (f" (key interval {detector.key_interval})" if dff else ""), results, wall, drawn)
        if source.skipped:
            print(f"skipped {len(source.skipped)} unreadable frame(s): {', '.join(source.skipped[:5])}")
        _print_summary(summary)
        if dff and args.compare:
            base = VideoDetector(model, cfg, key_interval=1, device=args.device, thresh=args.thresh, fast=fast)
            for _ in base.run(FrameSource(args.input, prepare=base.prepare, max_frames=2, on_error="skip")):
                pass
            base_src = FrameSource(args.input, prepare=base.prepare, max_frames=args.max_frames, on_error="skip")
            base_results, base_wall, _ = _run(base, base_src, "per-frame", None, None, args.vis_thresh, True, False)
            b = _summary("per-frame R-FCN (same weights)", base_results, base_wall)
            _print_summary(b)
            print(f"speed-up of DFF over per-frame (network only): {b['net_ms'] / summary['net_ms']:.2f}x")
        print(f"peak RSS {peak_rss_mb():.0f} MB; wrote {args.out}")
        return 0
    except (DemoError, ConfigError, VideoReadError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
