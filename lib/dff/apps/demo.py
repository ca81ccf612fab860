"""The demo command shared by ``rfcn/demo.py`` (per-frame) and ``dff_rfcn/demo.py`` (DFF), and by the segmentation
demos ``deeplab/demo.py`` (per-frame) and ``dff_deeplab/demo.py`` (DFF).

Model: ``--model`` (an MXNet ``.params`` file, a native ``.pth`` that brings its own config and kind, or
``fixture``); without it the embedded mobile models (``data/models/dff_mobile_synthetic.pth`` and its per-frame
twin ``data/models/rfcn_mobile_synthetic.pth``: MobileNetV2, Light Flow, ConvGRU key-frame aggregation, a light
head, trained on the synthetic mini-VID). Input: a video file, a folder of frames (ordered by frame number), a
camera (``--camera N`` or ``cam:N``) or a stream URL (RTSP, HTTP(S) MJPEG, anything OpenCV's FFmpeg backend
opens; read newest-frame-first, see ``docs/live.md``); with the embedded model and no input, a held-out
synthetic clip generated at the model's input size (320 x 512 for the mobile models). Output: annotated frames
(files and folders) and an ``.mp4`` in ``--out``, a per-frame log line, optionally one JSON line per frame
(``--json-out``) and the annotated stream over HTTP (``--serve``), and a summary with fps, the per-stage time
split and, for a live source, dropped frames, latency and reconnects. SIGINT / SIGTERM stop the run cleanly:
every output is finalised. A DFF model trained with ``network.THP`` runs THP's options (``--schedule adaptive``,
``--set TEST.PARTIAL_UPDATE=true``): the frames drawn mark the key frames and tint the feature cells recomputed
on the others.

``--compare`` (DFF, a file or a folder) then runs a per-frame R-FCN over the same frames: ``--compare-model``,
by default the embedded twin for the embedded DFF model, else the DFF model's own weights with every frame a
key frame. It writes ``compare.mp4`` (per-frame | DFF side by side, each panel with its running network fps,
DFF's key frames marked) and ``summary.png`` (ms per frame per stage, the fps of both and the speed-up, the
detections per frame of both), and the printed summary ends with the speed-up and where the time goes
(:mod:`dff.apps.compare`).

Exit status: 0 when the run ends (the input ends, ``--max-frames``, a stop by signal); 1 when a live
source dropped and did not come back (the outputs hold what came before); 2 when the run cannot start
(bad input, a source that does not open, a missing model, a ``--compare-model`` that is not a per-frame
R-FCN of the DFF model's classes).

Segmentation (a DeepLab / DFF DeepLab model, ``model.task == "seg"``): everything above works the same; what is
drawn, written and counted per frame is the task's (:mod:`dff.apps.present`): the label map as a coloured overlay
with a legend, ``class_fractions`` in the JSON lines, the classes present in the per-frame line, ``--labels-out DIR``
for each frame's label map as a PNG; ``--compare``'s per-frame baseline is a DeepLab, ``--thresh`` and
``--vis-thresh`` are ignored.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import os
import signal
import sys
import threading
import time
import types
import warnings
from typing import Callable, Iterable, Iterator, Sequence

import cv2
import torch
from tqdm import tqdm

from dff.apps.cli import (
    add_backend_options,
    add_device_option,
    add_fast_option,
    add_schedule_option,
    add_set_option,
)
from dff.apps.compare import Comparison, speedup_line, time_split_line, write_png
from dff.apps.present import DetectionPresentation, Presentation, presentation
from dff.apps.reporting import JsonLines, RunStats, current_rss_mb, peak_rss_mb
from dff.apps.serve import StreamServer
from dff.config import Config, ConfigError, mobile_parts
from dff.dataset.synthetic import SynthConfig, generate
from dff.deploy import DeployUnavailable, make_detector
from dff.engine.fastpath import FastPath
from dff.engine.frames import Frame, FrameSource, VideoReadError
from dff.engine.live import Backoff, LiveSource, SourceLost, is_live
from dff.engine.video import FrameResult, VideoDetector, per_frame_config, schedule_overrides
from dff.models.builder import MODEL_KINDS, load_run_model
from dff.temporal.async_keys import key_worker
from dff.utils.checkpoint import CheckpointError
from dff.utils.vis import update_label

__all__ = ["DemoError", "build_parser", "clip_size", "demo_class_names", "load_demo_model", "peak_rss_mb", "run_demo",
           "synthetic_clip"]

EXIT_OK, EXIT_SOURCE_LOST, EXIT_ERROR = 0, 1, 2
DETECTION = DetectionPresentation()


class DemoError(RuntimeError):
    """A user-facing problem (missing model, bad input); printed as one line."""


def demo_class_names(model: torch.nn.Module) -> Sequence[str]:
    """The names drawn and written for each class index (background first): the model's own list (its
    checkpoint's config, the 30 ImageNet VID classes for an MXNet file)."""
    return tuple(model.class_names)


def build_parser(name: str, default_cfg: str, default_out: str, dff: bool,
                 present: Presentation = DETECTION) -> argparse.ArgumentParser:
    """The demo's options; ``present`` (the model's task) adds its own and words the task's help."""
    ap = argparse.ArgumentParser(prog=name, description=__doc__)
    thresh_help, vis_thresh_help = present.thresh_help(dff)
    base = f"per-frame {present.per_frame_name}"
    ap.add_argument("input", nargs="?", default=None,
                    help="video file, folder of frames, camera (cam:N) or stream URL (rtsp://, http(s)://, anything "
                         "OpenCV's FFmpeg backend opens); default: a synthetic clip generated on the spot, "
                         "for the embedded model")
    ap.add_argument("--model", default=None,
                    help="weights: an original MXNet .params file, a native checkpoint (.pth), or 'fixture' "
                         "(the parity fixtures' deterministic weights: checks the pipeline, detects nothing real); "
                         "default: the small model trained on the synthetic mini-VID that ships in data/models/")
    ap.add_argument("--cfg", default=default_cfg, help="YAML config (default: %(default)s)")
    add_set_option(ap)
    ap.add_argument("--out", default=default_out, help="output folder (default: %(default)s)")
    add_device_option(ap)
    add_fast_option(ap)
    add_backend_options(ap)
    ap.add_argument("--max-frames", type=int, default=None, help="stop after this many frames")
    ap.add_argument("--thresh", type=float, default=1e-4 if dff else 1e-3,
                    help=thresh_help)
    ap.add_argument("--vis-thresh", type=float, default=0.7, help=vis_thresh_help)
    ap.add_argument("--no-video", action="store_true", help="do not write the .mp4")
    ap.add_argument("--no-frames", action="store_true", help="do not write annotated frames")
    ap.add_argument("--quiet", action="store_true", help="no per-frame lines")
    if dff:
        ap.add_argument("--key-interval", type=int, default=None,
                        help="key frame every N frames (default: TEST.KEY_FRAME_INTERVAL of the config)")
        add_schedule_option(ap)
        ap.add_argument("--async-keys", action="store_true",
                        help="compute each key frame on a worker while the frames meanwhile are served from the "
                             "previous key frame: no frame waits for a whole key frame (docs/live.md); on the CPU "
                             "the cores are split between the two")
        ap.add_argument("--compare", action="store_true",
                        help=f"also run {base} on the same frames: writes compare.mp4 (per-frame | DFF side "
                             "by side, running fps, key frames marked) and summary.png, and reports the speed-up")
        ap.add_argument("--compare-model", default=None, metavar="PATH",
                        help=f"--compare's {base} (implies --compare): an {present.per_frame_name} checkpoint "
                             "with the DFF model's classes; default: the embedded per-frame twin "
                             f"(data/models/{present.per_frame_kind}_mobile_synthetic.pth) for the embedded DFF "
                             "model, else the DFF model's own weights with every frame a key frame")
    present.add_arguments(ap)
    add_live_arguments(ap)
    return ap


def add_live_arguments(ap: argparse.ArgumentParser) -> None:
    """Cameras, streams and the outputs for integration (docs/live.md)."""
    g = ap.add_argument_group("live sources and outputs (docs/live.md)")
    g.add_argument("--camera", type=int, default=None, metavar="N", help="read camera N (the same as the input cam:N)")
    g.add_argument("--reconnect", type=int, default=Backoff.tries, metavar="TRIES",
                   help="a live source that drops is reopened up to TRIES times with exponential back-off, then the "
                        "run ends with exit status 1; 0: the end of the stream ends the run cleanly (default: %(default)s)")
    g.add_argument("--reconnect-delay", type=float, default=Backoff.first, metavar="SECONDS",
                   help=f"wait before the first reconnect try, doubled after each failed one up to {Backoff.cap:g} s "
                        "(default: %(default)s)")
    g.add_argument("--stream-timeout", type=float, default=10.0, metavar="SECONDS",
                   help="a stream that does not open, or sends no frame, for this long counts as dropped "
                        "(default: %(default)s)")
    g.add_argument("--json-out", default=None, metavar="FILE",
                   help="one JSON line per processed frame (docs/frame_result.schema.json) to FILE, or to stdout "
                        "with '-' (the other messages then go to stderr)")
    g.add_argument("--serve", type=int, default=None, metavar="PORT",
                   help="serve the annotated stream as MJPEG with a status page at http://HOST:PORT/ (0: any free port)")
    g.add_argument("--host", default="127.0.0.1",
                   help="address --serve listens on (default: %(default)s, this machine only; 0.0.0.0 for every "
                        "interface)")


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
        return load_run_model(model_path, cfg_path, overrides, kind=kind, device=device)
    except CheckpointError as e:
        raise DemoError(str(e)) from None


def _warm_up(detector: VideoDetector, source: FrameSource | LiveSource) -> None:
    """Run two frames first, as the reference does: a file's or folder's first two (read again), a live
    source's first frame twice (it is not taken from the source: a camera cannot be opened twice)."""
    if isinstance(source, LiveSource):
        first = source.first_frame()
        warm: Iterable[Frame] = [first, first] if first is not None else []
    else:
        warm = FrameSource(source.path, prepare=detector.prepare, max_frames=2, on_error="skip")
    for _ in detector.run(warm):
        pass


def _print_summary(s: dict, say: Callable[[str], None] = print, present: Presentation = DETECTION) -> None:
    if s["frames"] == 0:
        say(f"{s['label']}: no frames processed")
        return
    split = ", ".join(f"{k} {v:.1f}" for k, v in s["stage_ms"].items())
    say(f"{s['label']}: {s['frames']} frames ({s['key_frames']} key), network {s['net_ms']:.1f} ms/frame "
        f"= {s['net_fps']:.2f} fps; end-to-end {s['end_to_end_fps']:.2f} fps (decode included)")
    say(f"  per-stage mean ms: {split}")
    line = present.summary_line(s)
    if line:
        say(line)


def _print_live_summary(s: dict, source: LiveSource, say: Callable[[str], None]) -> None:
    ls = source.stats()
    share = 100.0 * ls.dropped / ls.received if ls.received else 0.0
    latency = (f"latency capture to result p50 {s['latency_p50_ms']:.0f} ms, p95 {s['latency_p95_ms']:.0f} ms"
               if s["frames"] else "no latency")
    say(f"live: {ls.received} frames received, {s['frames']} processed, {ls.dropped} dropped ({share:.0f} %); "
        f"{latency}; reconnects: {ls.reconnects}")
    if source.end == "ended":
        say(f"stream ended after {ls.received} frames")


class Outputs:
    """Where a run's results go: annotated frames, the ``.mp4``, JSON lines, the MJPEG server.

    The ``.mp4`` is written under a temporary name and renamed when :meth:`close` finalises it, so an
    interrupted run leaves a playable file and never a truncated one under the final name. :meth:`close`
    runs however the run ends (the input ends, a signal, a lost source, an error)."""

    def __init__(self, class_names: Sequence[str], vis_thresh: float, mark_keys: bool, frames_dir: str | None = None,
                 video_path: str | None = None, json_out: JsonLines | None = None,
                 server: StreamServer | None = None, scales: Sequence[int] | None = None,
                 sinks: Sequence[Callable[[FrameResult], None]] = (), present: Presentation = DETECTION) -> None:
        self.class_names = class_names
        self.present = present  # how the task's results are drawn, written and counted
        self.scales = scales  # the config's (target, max) size: maps THP's update mask back to the frame
        self.vis_thresh = vis_thresh
        self.mark_keys = mark_keys
        self.frames_dir = frames_dir
        self.video_path = video_path
        self.json_out = json_out
        self.server = server
        self.sinks = tuple(sinks)  # more consumers of each result while it still has its frame (--compare)
        self._writer: cv2.VideoWriter | None = None
        self._size: tuple[int, int] | None = None

    @property
    def draws(self) -> bool:
        return self.frames_dir is not None or self.video_path is not None or self.server is not None

    def add(self, r: FrameResult, record: dict | None, status: dict | None) -> None:
        """One processed frame: drawn (when an output shows it), written, served; ``record`` its JSON line."""
        if self.draws:
            im = self.present.draw_result(r, self.class_names, self.vis_thresh, self.mark_keys, self.scales)
            if self.frames_dir is not None:
                cv2.imwrite(os.path.join(self.frames_dir, os.path.splitext(r.name)[0] + ".jpg"), im)
            if self.video_path is not None:
                if self._writer is None:
                    self._size = (im.shape[1], im.shape[0])
                    self._writer = cv2.VideoWriter(self.video_path + ".tmp.mp4", cv2.VideoWriter_fourcc(*"mp4v"),
                                                   25.0, self._size)
                if (im.shape[1], im.shape[0]) == self._size:  # an .mp4 has one frame size; others go to frames only
                    self._writer.write(im)
            if self.server is not None:
                self.server.publish(im, status or {})
        for sink in self.sinks:
            sink(r)
        if self.json_out is not None and record is not None:
            self.json_out.write(record)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None
            os.replace(self.video_path + ".tmp.mp4", self.video_path)
        if self.json_out is not None:
            self.json_out.close()
        if self.server is not None:
            self.server.close()


def _stamped(frames: Iterable[Frame], stamps: dict[int, float], stop: threading.Event | None) -> Iterator[Frame]:
    """The frames, noting each one's capture time for the latency of its result (a file's or folder's frame:
    the time the engine takes it); ends as soon as ``stop`` is set."""
    for f in frames:
        if stop is not None and stop.is_set():
            return
        stamps[f.index] = f.timestamp if f.timestamp is not None else time.time()
        yield f


def _status(stats: RunStats, source: FrameSource | LiveSource, key_interval: int, latency: float) -> dict:
    """What the ``--serve`` page shows (``/status.json``)."""
    s = stats.summary()
    status = {"source": source.name if isinstance(source, LiveSource) else source.path, "state": "running",
              "fps": round(stats.recent_fps(), 2), "latency_ms": round(1000 * latency, 1),
              "latency_p50_ms": round(s["latency_p50_ms"], 1), "latency_p95_ms": round(s["latency_p95_ms"], 1),
              "frames": stats.frames, "received": stats.frames, "dropped": 0, "reconnects": 0,
              "key_interval": key_interval, "rss_mb": round(current_rss_mb(), 1), "last_event": ""}
    if isinstance(source, LiveSource):
        ls = source.stats()
        status.update(state=ls.state, received=ls.received, dropped=ls.dropped, reconnects=ls.reconnects,
                      last_event=ls.last_event)
    return status


def _run(detector: VideoDetector, source: FrameSource | LiveSource, label: str, stats: RunStats, outputs: Outputs,
         quiet: bool, stop: threading.Event | None = None) -> None:
    """Detect on the frames of ``source`` into ``stats`` and ``outputs`` until the source ends or ``stop`` is set
    (``stats.finish()`` on the way out). Raises what the source raises (:class:`~dff.engine.live.SourceLost`);
    the caller closes ``outputs``."""
    live = isinstance(source, LiveSource)
    partial = detector.loop.options.partial
    stamps: dict[int, float] = {}  # frame index -> capture time; holds the one or two frames in the engine
    vis_thresh = outputs.vis_thresh
    frames = _stamped(source, stamps, stop)
    try:
        with contextlib.closing(frames), contextlib.closing(detector.run(frames)) as results, \
                tqdm(total=None if live else len(source) or None, desc=label, unit="frame", file=sys.stderr,
                     disable=None) as bar:
            for r in results:
                now = time.time()
                stamp = stamps.pop(r.index, now)
                latency = now - stamp
                ndet = outputs.present.count(r, vis_thresh)
                stats.add(r, ndet, latency)
                record = None
                if outputs.json_out is not None:
                    dropped = source.stats().dropped if live else 0
                    record = outputs.present.record(r, stats.frames - 1, stamp, latency, dropped, outputs.class_names,
                                                    vis_thresh)
                    if partial:
                        record["updated_fraction"] = round(float(r.updated_fraction), 5)
                status = _status(stats, source, detector.key_interval, latency) if outputs.server is not None else None
                outputs.add(r, record, status)
                r.image = None  # drop the frame: memory must not grow with the video
                if not quiet:
                    tqdm.write(f"{label} {r.name} {'key' if r.is_key else '   '}"
                           + (f" age {r.age:>2}" if not r.is_key else "       ")
                           + f" {1000 * r.times['total']:.1f} ms "
                               f"{outputs.present.count_text(ndet, vis_thresh)}"
                               + (f" latency {1000 * latency:.0f} ms" if live else "")
                               + (f" {update_label(r.updated_fraction)}" if partial and not r.is_key else ""),
                               file=sys.stderr)
                bar.update(1)
    finally:
        stats.finish()
        if live:
            source.close()  # the reader stops now, not when the generators are collected


class StopRequest:
    """SIGINT (Ctrl-C) and SIGTERM ask the run to stop: it stops reading, finalises its outputs and prints its
    summary. A second signal stops at once (KeyboardInterrupt).

    The handler only sets :attr:`event`, which the run reads with ``is_set`` (no lock is taken in the main
    thread, so the handler cannot deadlock against it)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.event = threading.Event()
        self.signal: str | None = None

    def __call__(self, signum: int, frame: types.FrameType | None) -> None:
        if self.event.is_set():
            raise KeyboardInterrupt
        self.signal = signal.Signals(signum).name
        self.event.set()

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopRequest]:
        """Handle the signals while in the block (only the main thread can; elsewhere nothing changes)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {s: signal.signal(s, self) for s in self.SIGNALS}
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)


CLIP_SIZE = (160, 256)  # (height, width) of the synthetic mini-VID's frames, the embedded models' training data
CLIP_MOTION = 0.35  # the training set's motion (docs/training.md): slow, medium and fast objects, as in VID val


def clip_size(scales: Sequence[int]) -> tuple[int, int]:
    """(height, width) of the synthetic clip for a model whose input size is ``scales`` = (target short side,
    max long side): the training frames' 160:256 aspect, as large as the network's input (short side ``target``,
    long side at most ``max``), so the clip is shown at the resolution the network sees it: 320 x 512 for
    (320, 512)."""
    s = min(int(scales[0]) / CLIP_SIZE[0], int(scales[1]) / CLIP_SIZE[1])
    return round(CLIP_SIZE[0] * s), round(CLIP_SIZE[1] * s)


def synthetic_clip(out_dir: str, frames: int = 60, seed: int = 2017, scales: Sequence[int] | None = None) -> str:
    """Generate one held-out synthetic video (a seed the embedded models never saw) of ``frames`` frames at
    :func:`clip_size` of ``scales`` (default: the training frames' size), with the training set's motion, and
    return its frame folder."""
    height, width = clip_size(scales) if scales is not None else CLIP_SIZE
    root = os.path.join(out_dir, "synthetic_clip")
    generate(root, SynthConfig(seed=seed, train_videos=0, val_videos=1, frames=frames, det_images=0,
                               height=height, width=width, motion=CLIP_MOTION))
    videos = os.path.join(root, "Data", "VID", "val")
    return os.path.join(videos, sorted(os.listdir(videos))[0])


def _open_live(args: argparse.Namespace, stop: threading.Event) -> LiveSource:
    return LiveSource(args.input, max_frames=args.max_frames,
                      backoff=Backoff(tries=args.reconnect, first=args.reconnect_delay), timeout=args.stream_timeout,
                      stop=stop, on_event=lambda message: print(f"warning: {message}", file=sys.stderr, flush=True))


def _start_server(args: argparse.Namespace, title: str, source: str) -> StreamServer:
    try:
        return StreamServer(args.serve, host=args.host, title=title, source=source)
    except OSError as e:
        raise DemoError(f"--serve {args.serve}: cannot listen on {args.host}:{args.serve}: {e.strerror or e}") from None


def _schedule_text(detector: VideoDetector) -> str:
    options = detector.loop.options
    if options.schedule == "adaptive":
        return f"adaptive key frames, at most {options.max_interval} apart"
    return f"key interval {detector.key_interval}"


def _same_file(a: str | None, b: str | None) -> bool:
    return a is not None and b is not None and os.path.realpath(a) == os.path.realpath(b)


def _names(names: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def load_baseline(path: str, args: argparse.Namespace, dff_model: torch.nn.Module,
                  dff_cfg: Config, present: Presentation = DETECTION) -> tuple[torch.nn.Module, Config]:
    """``--compare``'s per-frame model from ``path``: one of the task's per-frame kind (``present.per_frame_kind``:
    an R-FCN, kind ``rfcn``, for a DFF detector) with the DFF model's class list, or a :class:`DemoError` that says
    which of the two it is not. A native checkpoint brings its config (``--set`` applies to it as to the DFF
    model's); an MXNet file takes ``--cfg``."""
    where = f"--compare-model (the per-frame {present.per_frame_name})"
    try:
        model, cfg = load_run_model(path, args.cfg, args.set, kind=present.per_frame_kind, device=args.device)
    except CheckpointError as e:
        raise DemoError(f"{where}: {e}") from None
    mine, theirs = demo_class_names(model)[1:], demo_class_names(dff_model)[1:]
    if tuple(mine) != tuple(theirs):
        raise DemoError(f"{where}: {path}: {present.verb} {len(mine)} classes ({_names(mine)}), the DFF model "
                        f"{len(theirs)} ({_names(theirs)}); the two must have the same class list")
    if tuple(cfg.SCALES[0]) != tuple(dff_cfg.SCALES[0]):
        print(f"warning: {where} {path}: input size {tuple(cfg.SCALES[0])}, the DFF model's "
              f"{tuple(dff_cfg.SCALES[0])}: the two do not see the same pixels", file=sys.stderr, flush=True)
    return model, cfg


def _run_baseline(args: argparse.Namespace, comparison: Comparison, model: torch.nn.Module, cfg: Config,
                  onnx_dir: str | None, fast: FastPath | None, stop: threading.Event,
                  dff_summary: dict, say: Callable[[str], None], present: Presentation = DETECTION) -> list[str]:
    """``--compare``: the per-frame run over the frames the DFF run read, drawn beside it into compare.mp4, then
    summary.png. Prints the run's summary; returns the lines that end the printed summary (the speed-up and
    where the time goes)."""
    base = make_detector(model, cfg, backend=args.backend, onnx_dir=onnx_dir, key_interval=1, device=args.device,
                         thresh=args.thresh, keep_images=comparison.video is not None, fast=fast)
    source = FrameSource(args.input, prepare=base.prepare, max_frames=args.max_frames, on_error="skip")
    _warm_up(base, source)
    stats = RunStats(comparison.base.label)
    try:
        _run(base, source, "per-frame", stats,
             Outputs((), args.vis_thresh, False, sinks=[comparison.add_base], present=present), True, stop)
    finally:
        comparison.close()  # compare.mp4 is finalised however the run ends
    base_summary = stats.summary()
    _print_summary(base_summary, say, present)
    if base_summary["frames"] == 0 or dff_summary["frames"] == 0:
        return ["no frames to compare"]
    png = os.path.join(args.out, "summary.png")
    write_png(present.summary_figure(comparison, base_summary, dff_summary, source=os.path.basename(str(args.input))),
              png)
    if comparison.video is not None:
        say(f"side by side: {comparison.video.path} ({comparison.video.frames} frames); summary page: {png}")
    else:
        say(f"summary page: {png}")
    return [speedup_line(base_summary, dff_summary), time_split_line(base_summary, dff_summary)]


def run_demo(argv: list[str] | None, *, name: str, kind: str, default_cfg: str, default_out: str, what: str,
             default_model: str | None = None, default_compare_model: str | None = None,
             missing_model_hint: str | None = None) -> int:
    """The demo's command line (see the module's docstring); returns the exit status. ``kind``: the model kind
    (:data:`dff.models.builder.MODEL_KINDS`: ``rfcn``, ``dff``, ``deeplab``, ``dff_deeplab``), which says the
    task and whether the model is a DFF one. ``default_model``: the embedded model used when no --model is given
    (and its input, with no input, a synthetic clip); ``default_compare_model``: DFF only, the per-frame twin
    --compare runs for that embedded model. ``missing_model_hint``: with it, no --model and no ``default_model``
    file is an error naming the file and saying this (how to make it)."""
    model_class = MODEL_KINDS[kind]
    dff = bool(model_class.uses_flow)
    present = presentation(model_class.task)  # the task's options and wording; the loaded model's task decides
    args = build_parser(name, default_cfg, default_out, dff, present).parse_args(argv)
    compare = dff and (args.compare or args.compare_model is not None)
    # one line per warning (skipped frames, operator fallback), not the source line that raised it
    warnings.formatwarning = lambda message, category, *a, **k: f"warning: {message}\n"
    # OpenCV's and FFmpeg's own logs would repeat, in several lines, what the one-line messages say (a refused
    # connection, a stream that ends); the environment can still turn them back on
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    # with --json-out - stdout carries the JSON lines only
    say = functools.partial(print, file=sys.stderr if args.json_out == "-" else sys.stdout, flush=True)
    source: FrameSource | LiveSource | None = None
    detector: VideoDetector | None = None
    with StopRequest().installed() as stop:
        try:
            if args.camera is not None:
                if args.input is not None:
                    raise DemoError(f"give either an input ({args.input}) or --camera {args.camera}, not both")
                args.input = f"cam:{args.camera}"
            live = args.input is not None and is_live(args.input)
            if live and compare:
                raise DemoError("--compare runs the input twice: it needs a video file or a folder of frames, "
                                "not a camera or a stream")
            if args.model is None and default_model is not None and os.path.isfile(default_model):
                args.model = default_model
                say(f"model: {os.path.relpath(default_model)} (the embedded model, trained on {present.trained_on})")
            elif args.model is None and default_model is not None and missing_model_hint is not None:
                raise DemoError(f"the embedded model {os.path.relpath(default_model)} is missing (no --model given): "
                                f"{missing_model_hint}")
            synthetic = args.input is None
            if synthetic and not _same_file(args.model, default_model):
                raise DemoError("no input given: pass a video file or a folder of frames, "
                                "e.g. ../shared/data/ILSVRC2015_val_00007010")
            if live:  # opened before the model: a source that does not open is an error at once
                source = _open_live(args, stop.event)
                say(f"input: {source.name} (live: the newest frame each time, older ones dropped)")
            overrides = [*args.set, *schedule_overrides(getattr(args, "schedule", None))]
            model, cfg = load_demo_model(kind, args.cfg, args.model, args.device, what, overrides)
            present = presentation(model.task)
            baseline: tuple[torch.nn.Module, Config] | None = None
            if compare:  # loaded before anything runs: a baseline that does not fit is an error at once
                base_path = args.compare_model
                if (base_path is None and default_compare_model is not None and _same_file(args.model, default_model)
                        and os.path.isfile(default_compare_model)):
                    base_path = default_compare_model
                if base_path is not None:
                    baseline = load_baseline(base_path, args, model, cfg, present)
                    say(f"per-frame baseline: {base_path}")
            if synthetic:  # at the model's input size, known once its config is
                os.makedirs(args.out, exist_ok=True)
                frames = 60 if args.max_frames is None else max(1, min(60, args.max_frames))
                args.input = synthetic_clip(args.out, frames=frames, scales=cfg.SCALES[0])
                height, width = clip_size(cfg.SCALES[0])
                say(f"input: {args.input} (a synthetic clip generated now at the model's input size, {width}x{height}, "
                    "unseen in training)")
            interval = args.key_interval if dff else 1
            fast = FastPath.from_name(args.fast, args.device)
            keys = key_worker(args.device) if getattr(args, "async_keys", False) else None
            detector = make_detector(model, cfg, backend=args.backend, onnx_dir=args.onnx, log=say,
                                     key_interval=interval, device=args.device, thresh=args.thresh,
                                     keep_images=True, fast=fast, keys=keys)
            if source is None:
                source = FrameSource(args.input, prepare=detector.prepare, max_frames=args.max_frames, on_error="skip")
            os.makedirs(args.out, exist_ok=True)
            _warm_up(detector, source)
            label = kind
            comparison = None
            if compare:
                mobile = baseline is not None and bool(mobile_parts(baseline[1]))
                base_name = f"per-frame {present.per_frame_name}"
                base_label = (f"{base_name} (same weights)" if baseline is None
                              else f"{base_name} ({'mobile twin' if mobile else 'twin'})")
                comparison = present.comparison(demo_class_names(model), args.vis_thresh, base_label,
                                                f"DFF, {_schedule_text(detector)}",
                                                video_path=None if args.no_video else os.path.join(args.out,
                                                                                                   "compare.mp4"),
                                                scales=detector.cfg.SCALES[0])
            outputs = Outputs(demo_class_names(model), args.vis_thresh, dff,
                              frames_dir=None if args.no_frames or live else args.out,
                              video_path=None if args.no_video else os.path.join(args.out, "demo.mp4"),
                              scales=detector.cfg.SCALES[0],
                              sinks=[*present.sinks(args), *([comparison.add_dff] if comparison else [])],
                              present=present)
            lost: SourceLost | None = None
            try:
                if args.json_out is not None:
                    outputs.json_out = JsonLines(args.json_out)
                if args.serve is not None:
                    outputs.server = _start_server(args, f"{name}: {label}", str(args.input))
                    say(f"serving {outputs.server.url} (MJPEG at /stream.mjpg, status at /status.json)")
                stats = RunStats(label + (f" ({_schedule_text(detector)})" if dff else ""))
                _run(detector, source, label, stats, outputs, args.quiet, stop.event)
            except SourceLost as e:
                lost = e
            finally:
                outputs.close()
            if isinstance(source, FrameSource) and source.skipped:
                say(f"skipped {len(source.skipped)} unreadable frame(s): {', '.join(source.skipped[:5])}")
            summary = stats.summary()
            _print_summary(summary, say, present)
            if isinstance(source, LiveSource):
                _print_live_summary(summary, source, say)
            tail: list[str] = []
            if comparison is not None and stop.signal is None:
                base_model, base_cfg = baseline if baseline is not None else (model, per_frame_config(cfg))
                tail = _run_baseline(args, comparison, base_model, base_cfg, args.onnx if baseline is None else None,
                                     fast, stop.event, summary, say, present)
            if stop.signal is not None:
                say(f"stopped by {stop.signal}; outputs finalised")
            say(f"peak RSS {peak_rss_mb():.0f} MB; wrote {args.out}")
            for line in tail:  # the printed summary ends with the speed-up and where the time goes
                say(line)
            if lost is not None:
                print(f"error: {lost}", file=sys.stderr)
                return EXIT_SOURCE_LOST
            return EXIT_OK
        except SourceLost as e:  # lost before the first frame
            print(f"error: {e}", file=sys.stderr)
            return EXIT_SOURCE_LOST
        except (DemoError, ConfigError, VideoReadError, OSError, ValueError, DeployUnavailable) as e:
            print(f"error: {e}", file=sys.stderr)
            return EXIT_ERROR
        finally:
            if isinstance(source, LiveSource):
                source.close()  # also when the run did not start (a model that does not load)
            if detector is not None:
                detector.close()  # the key worker of --async-keys
