"""The DFF demo's ``--compare`` outputs: the side-by-side video (per-frame | DFF), the one-page summary, the
closing lines of the printed summary.

The two runs go over the same frames one after the other, never interleaved (each would disturb the other's
timings). The DFF run goes first and leaves a :class:`Trace`: per frame its key-frame flag, its boxes above
the drawing threshold and its running fps. While the per-frame run goes, each of its frames is drawn beside
the DFF run's result on the same frame, so no frame is held in memory and none is decoded twice.

fps here is the network's (the engine's per-stage times without the post-processing, as the speed-up in the
printed summary): it says what DFF saves, where the end-to-end rate also counts decoding and drawing.
"""
from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Callable, Mapping, Sequence

import cv2
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from dff.apps.reporting import boxes_above
from dff.engine.video import STAGES, FrameResult
from dff.utils.image import compute_scale
from dff.utils.io import atomic_open
from dff.utils.vis import KEY_COLOR, draw_detections, draw_updated_cells, update_label

__all__ = ["Comparison", "FrameTrace", "SideBySideVideo", "Trace", "annotate", "caption_panel", "side_by_side",
           "speedup", "speedup_line", "summary_figure", "time_split_line", "write_png"]

# one colour per engine stage, the same in every chart (matplotlib's default cycle, in STAGES order)
STAGE_COLORS = {"feature": "#1f77b4", "flow": "#ff7f0e", "warp": "#2ca02c", "update": "#17becf",
                "aggregate": "#9467bd", "head": "#d62728", "post": "#7f7f7f"}
BASE_COLOR, DFF_COLOR = "#555555", "#1f77b4"
CAPTION_BG = (40, 40, 40)  # BGR: white text reads on it over any scene
KEY_LIGHT = tuple(min(255, c + 100) for c in KEY_COLOR)  # the key frames' red, light enough to read on CAPTION_BG


def annotate(image: np.ndarray, detections: Sequence[np.ndarray], class_names: Sequence[str], vis_thresh: float,
             key_frame: bool | None = None, update_mask: np.ndarray | None = None, updated_fraction: float = 0.0,
             scales: Sequence[int] | None = None, age: int | None = None,
             quality: Callable[[Sequence[float]], float | None] | None = None) -> np.ndarray:
    """A copy of the BGR frame ``image`` (H, W, 3) as the demo shows it: THP's updated cells tinted (``update_mask``
    (h, w) bool over the feature cells of the network input, mapped back with ``scales`` = (target, max)), the
    boxes above ``vis_thresh`` (``detections[c]`` (k, 5) in frame pixels, with their ``quality`` when given) and,
    with ``key_frame``, the "KEY"/"warped" marker (with ``age``: the frames since the key frame)."""
    im, notes = image, []
    if age:
        notes.append(f"age {age}")
    if update_mask is not None and scales is not None:
        scale = compute_scale(im.shape[0], im.shape[1], int(scales[0]), int(scales[1]))
        im = draw_updated_cells(im, update_mask, scale)
        notes.append(update_label(updated_fraction))
    return draw_detections(im, detections, class_names, vis_thresh, key_frame=key_frame,
                           note=", ".join(notes) or None, quality=quality)


@dataclasses.dataclass
class FrameTrace:
    """What the comparison keeps of one processed frame."""

    index: int
    seq: int  # its place in the run, from 1
    is_key: bool
    drawn: int  # boxes above the drawing threshold
    net_s: float  # network time (the engine's stages without ``post``)
    running_fps: float  # frames so far / their network time
    boxes: list[np.ndarray] | None = None  # per class (k, 5), only those drawn; kept to draw the frame later
    updated_fraction: float = 0.0
    update_mask: np.ndarray | None = None


class Trace:
    """One run of the comparison, frame by frame (a few numbers per frame, plus the drawn boxes with
    ``keep_boxes``: the comparison runs on files, whose length is known, never on a stream)."""

    def __init__(self, label: str, vis_thresh: float, keep_boxes: bool = False) -> None:
        self.label = label
        self.vis_thresh = vis_thresh
        self.keep_boxes = keep_boxes
        self.frames: dict[int, FrameTrace] = {}
        self._net_s = 0.0

    def add(self, r: FrameResult) -> FrameTrace:
        """Record one result (``r.detections[c]`` (k, 5), ``r.times`` in seconds per stage); returns its record."""
        net = r.times["total"] - r.times["post"]
        self._net_s += net
        n = len(self.frames) + 1
        boxes = None
        if self.keep_boxes:
            boxes = [np.asarray(d)[np.asarray(d)[:, 4] > self.vis_thresh] if len(d) else np.asarray(d)
                     for d in r.detections]
        t = FrameTrace(r.index, n, bool(r.is_key), boxes_above(r.detections, self.vis_thresh), net,
                       n / self._net_s if self._net_s > 0 else math.inf, boxes, float(r.updated_fraction),
                       r.update_mask if self.keep_boxes else None)
        self.frames[r.index] = t
        return t

    def series(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(frame index (N,), boxes drawn (N,), is key (N,) bool), in processing order."""
        f = list(self.frames.values())
        return (np.array([t.index for t in f], dtype=np.int64), np.array([t.drawn for t in f], dtype=np.int64),
                np.array([t.is_key for t in f], dtype=bool))


def _font_scale(width: int) -> float:
    # readable on a 200 px panel and not oversized on a 1280 px one
    return float(np.clip(width / 800.0, 0.35, 0.7))


def _line_height(width: int) -> int:
    (_, th), base = cv2.getTextSize("Ag", cv2.FONT_HERSHEY_SIMPLEX, _font_scale(width), 1)
    return th + base + 6


def caption_height(width: int) -> int:
    """The caption bar's height for a panel ``width`` px wide: two lines, even (so a frame of even height stays
    even: some encoders need it)."""
    h = 2 * _line_height(width) + 4
    return h + h % 2


def _put_fitted(im: np.ndarray, text: str, y: int, color: tuple[int, int, int]) -> None:
    """``text`` on ``im`` at baseline ``y``, shrunk until it fits the width (a narrow panel keeps whole words)."""
    scale = _font_scale(im.shape[1])
    while scale > 0.25:
        (tw, _), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        if tw <= im.shape[1] - 8:
            break
        scale *= 0.9
    cv2.putText(im, text, (4, y), cv2.FONT_HERSHEY_SIMPLEX, scale, color, 1, cv2.LINE_AA)


def caption_panel(frame: np.ndarray, title: str, detail: str,
                  detail_color: tuple[int, int, int] = (255, 255, 255)) -> np.ndarray:
    """The (H, W, 3) frame under a caption bar: (H + :func:`caption_height` (W), W, 3), ``title`` on the bar's
    first line and ``detail`` on its second."""
    w = frame.shape[1]
    bar = np.empty((caption_height(w), w, 3), dtype=np.uint8)
    bar[:] = CAPTION_BG
    lh = _line_height(w)
    _put_fitted(bar, title, lh - 2, (255, 255, 255))
    _put_fitted(bar, detail, 2 * lh - 2, detail_color)
    return np.concatenate([bar, frame], axis=0)


def side_by_side(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Two (H, W, 3) panels as one (H, 2 W, 3) frame; ``right`` is resized to ``left``'s size if it differs."""
    if right.shape[:2] != left.shape[:2]:
        right = cv2.resize(right, (left.shape[1], left.shape[0]), interpolation=cv2.INTER_AREA)
    return np.concatenate([left, right], axis=1)


def fps_text(fps: float, frames: int) -> str:
    """A panel's second caption line: the running network fps."""
    return f"net fps {fps:.1f} (running, {frames} frames)" if math.isfinite(fps) else f"net fps - ({frames} frames)"


class SideBySideVideo:
    """An ``.mp4`` written under a temporary name and renamed by :meth:`close`, so an interrupted run leaves a
    playable file and never a truncated one under the final name. The first frame fixes the size; a later
    frame of another size (a folder of mixed frames) is resized to it, so every processed frame is in it."""

    def __init__(self, path: str, fps: float = 25.0) -> None:
        self.path = path
        self.fps = fps
        self.frames = 0
        self._tmp = path + ".tmp.mp4"
        self._writer: cv2.VideoWriter | None = None
        self._size: tuple[int, int] | None = None  # (width, height)

    def write(self, frame: np.ndarray) -> None:
        """Append one (H, W, 3) uint8 BGR frame."""
        if self._writer is None:
            self._size = (frame.shape[1], frame.shape[0])
            self._writer = cv2.VideoWriter(self._tmp, cv2.VideoWriter_fourcc(*"mp4v"), self.fps, self._size)
            if not self._writer.isOpened():
                raise OSError(f"{self.path}: OpenCV cannot write an mp4v video here")
        if (frame.shape[1], frame.shape[0]) != self._size:
            frame = cv2.resize(frame, self._size, interpolation=cv2.INTER_AREA)
        self._writer.write(frame)
        self.frames += 1

    def close(self) -> None:
        """Finalise the file (idempotent)."""
        if self._writer is not None:
            self._writer.release()
            self._writer = None
            os.replace(self._tmp, self.path)


class Comparison:
    """Both runs' traces and the side-by-side video: :meth:`add_dff` takes the DFF run's results, then
    :meth:`add_base` the per-frame run's, each drawn beside the DFF result of the same frame.

    ``scales``: the DFF model's (target, max) input size (maps THP's updated cells back to the frame)."""

    def __init__(self, class_names: Sequence[str], vis_thresh: float, base_label: str, dff_label: str,
                 video_path: str | None = None, scales: Sequence[int] | None = None) -> None:
        self.class_names = class_names
        self.vis_thresh = vis_thresh
        self.scales = scales
        self.dff = Trace(dff_label, vis_thresh, keep_boxes=video_path is not None)
        self.base = Trace(base_label, vis_thresh)
        self.video = SideBySideVideo(video_path) if video_path is not None else None

    def add_dff(self, r: FrameResult) -> None:
        self.dff.add(r)

    def add_base(self, r: FrameResult) -> None:
        b = self.base.add(r)
        d = self.dff.frames.get(r.index)
        # a frame only one run read (skipped as unreadable in the other) has no pair to show
        if self.video is None or r.image is None or d is None:
            return
        left = caption_panel(annotate(r.image, r.detections, self.class_names, self.vis_thresh),
                             self.base.label, fps_text(b.running_fps, b.seq))
        right = caption_panel(annotate(r.image, d.boxes or [], self.class_names, self.vis_thresh, key_frame=d.is_key,
                                       update_mask=d.update_mask, updated_fraction=d.updated_fraction,
                                       scales=self.scales),
                              self.dff.label, fps_text(d.running_fps, d.seq) + (", KEY frame" if d.is_key else ""),
                              KEY_LIGHT if d.is_key else (255, 255, 255))
        self.video.write(side_by_side(left, right))

    def close(self) -> None:
        if self.video is not None:
            self.video.close()


def speedup(base_summary: Mapping[str, Any], dff_summary: Mapping[str, Any]) -> float:
    """Per-frame network time over DFF's (both :meth:`dff.apps.reporting.RunStats.summary`)."""
    return base_summary["net_ms"] / dff_summary["net_ms"] if dff_summary["net_ms"] > 0 else math.inf


def speedup_line(base_summary: Mapping[str, Any], dff_summary: Mapping[str, Any]) -> str:
    return f"speed-up of DFF over per-frame (network only): {speedup(base_summary, dff_summary):.2f}x"


def _shown_stages(*summaries: Mapping[str, Any]) -> list[str]:
    """The stages either run spent time in, in the engine's order (a plain DFF run never updates or aggregates)."""
    return [s for s in STAGES if any(m["stage_ms"].get(s, 0.0) > 0.0 for m in summaries)]


def time_split_line(base_summary: Mapping[str, Any], dff_summary: Mapping[str, Any],
                    names: tuple[str, str] = ("per-frame", "DFF")) -> str:
    """``where the time goes (mean ms per frame): per-frame feature 7.3 + head 1.7 + post 0.7 = 9.7; DFF ...``"""
    parts = []
    for name, s in zip(names, (base_summary, dff_summary)):
        stages = _shown_stages(s)
        split = " + ".join(f"{k} {s['stage_ms'][k]:.1f}" for k in stages)
        parts.append(f"{name} {split} = {sum(s['stage_ms'][k] for k in stages):.1f}")
    return "where the time goes (mean ms per frame): " + "; ".join(parts)


def summary_figure(comparison: Comparison, base_summary: Mapping[str, Any], dff_summary: Mapping[str, Any],
                   source: str = "") -> Figure:
    """The one-page summary: (a) mean ms per frame per stage, stacked, for both runs; (b) their network fps and
    the speed-up; (c) boxes drawn per frame against the frame index for both, DFF's key frames marked."""
    fig = Figure(figsize=(11.0, 8.5), layout="constrained")
    gs = fig.add_gridspec(2, 3, height_ratios=(1.0, 1.2))
    runs = ((comparison.base.label, base_summary, BASE_COLOR), (comparison.dff.label, dff_summary, DFF_COLOR))
    up = speedup(base_summary, dff_summary)
    fig.suptitle(f"DFF vs per-frame R-FCN: speed-up {up:.2f}x (network only)\n"
                 f"{dff_summary['frames']} frames, {dff_summary['key_frames']} of them DFF key frames"
                 + (f"; input: {source}" if source else ""), fontsize=13)

    ax = fig.add_subplot(gs[0, :2])
    ys = np.arange(len(runs))[::-1]  # the per-frame run on top
    stages = _shown_stages(base_summary, dff_summary)
    for stage in stages:
        left = [sum(s["stage_ms"][k] for k in stages[:stages.index(stage)]) for _, s, _ in runs]
        ax.barh(ys, [s["stage_ms"][stage] for _, s, _ in runs], left=left, color=STAGE_COLORS.get(stage),
                label=stage, height=0.55)
    for y, (_, s, _) in zip(ys, runs):
        total = sum(s["stage_ms"][k] for k in stages)
        ax.text(total, y, f"  {total:.1f} ms", va="center", fontsize=9)
    ax.set_yticks(ys, [label for label, _, _ in runs])
    ax.set_xlabel("mean ms per frame (post: post-processing, outside the network fps)")
    ax.set_title("(a) where the time goes, per stage")
    ax.margins(x=0.15)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5), title="stage", title_fontsize=8)

    ax = fig.add_subplot(gs[0, 2])
    fps = [s["net_fps"] for _, s, _ in runs]
    bars = ax.bar([0, 1], fps, color=[c for _, _, c in runs], width=0.6)
    ax.bar_label(bars, [f"{v:.1f}" for v in fps], fontsize=9)
    ax.set_xticks([0, 1], ["per-frame", "DFF"])
    ax.set_ylabel("network fps")
    finite = [v for v in fps if math.isfinite(v)]
    ax.set_ylim(0, 1.5 * max(finite) if finite and max(finite) > 0 else 1.0)  # room for the speed-up box
    ax.set_title("(b) network fps")
    ax.text(0.5, 0.95, f"speed-up {up:.2f}x", transform=ax.transAxes, ha="center", va="top", fontsize=12,
            bbox={"boxstyle": "round", "facecolor": "white", "edgecolor": "0.6"})

    ax = fig.add_subplot(gs[1, :])
    for trace, color, style in ((comparison.base, BASE_COLOR, "-"), (comparison.dff, DFF_COLOR, "--")):
        idx, drawn, _ = trace.series()
        ax.step(idx, drawn, where="mid", color=color, linestyle=style, label=trace.label)
    idx, drawn, key = comparison.dff.series()
    if key.any():
        # one collection for every key frame: a long video has hundreds
        ax.vlines(idx[key], 0, 1, transform=ax.get_xaxis_transform(), colors="#d62728", alpha=0.25, linewidth=1)
        ax.plot(idx[key], drawn[key], "v", color="#d62728", label="DFF key frame")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("frame index")
    ax.set_ylabel(f"boxes above {comparison.vis_thresh:g}")
    ax.set_title("(c) detections per frame")
    top = max([int(trace.series()[1].max(initial=0)) for trace in (comparison.base, comparison.dff)])
    ax.set_ylim(0, 1.4 * top + 1)  # headroom: the legend sits above the curves, not on them
    ax.legend(fontsize=9, loc="upper right")
    return fig


def write_png(fig: Figure, path: str) -> None:
    """Render ``fig`` to ``path`` atomically (a reader never sees half a PNG)."""
    canvas = FigureCanvasAgg(fig)
    with atomic_open(path, "wb") as f:
        canvas.print_png(f)
