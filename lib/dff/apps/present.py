"""How the demo presents one task's results: one :class:`Presentation` per ``model.task``, in :data:`PRESENTATIONS`.

A presentation says, for the frames of its task, how a :class:`~dff.engine.video.FrameResult` is drawn on its
frame, what its JSON line carries, what the per-frame line and the summary count, what ``--compare`` keeps of
a DFF result to draw it beside the per-frame one later, and which options and extra outputs the task adds.
The demo (:mod:`dff.apps.demo`) asks :func:`presentation` for the model's task and never which task it has.

* detection (``"det"``): the boxes above ``--vis-thresh`` (:func:`dff.apps.compare.annotate`), the JSON line
  of ``docs/frame_result.schema.json`` (:func:`dff.api.frame_record`), counts: boxes above ``--vis-thresh``.
* segmentation (``"seg"``): the label map as a coloured overlay, alpha-blended over the frame with a fixed
  palette (:data:`SEG_PALETTE`; the background left unpainted) and a legend of the classes shown; the JSON
  line carries ``class_fractions`` (the pixel fraction of each class present, by class name, background
  included, so they sum to 1) beside the usual frame fields (``detections`` stays, empty); counts: the
  classes present (background excluded). ``--labels-out DIR`` writes each frame's label map as a PNG.
  ``--thresh`` and ``--vis-thresh`` are accepted and ignored.
"""
from __future__ import annotations

import argparse
import os
from typing import Any, Callable, ClassVar, Mapping, Sequence

import cv2
import numpy as np
from matplotlib.figure import Figure

from dff.api import frame_record
from dff.apps.compare import (
    KEY_LIGHT,
    Comparison,
    FrameTrace,
    Trace,
    annotate,
    caption_panel,
    fps_text,
    side_by_side,
    summary_figure,
)
from dff.apps.reporting import boxes_above
from dff.engine.video import FrameResult
from dff.utils.io import atomic_write_bytes
from dff.utils.vis import class_color

__all__ = ["PRESENTATIONS", "SEG_PALETTE", "DetectionPresentation", "LabelWriter", "Presentation",
           "SegmentationPresentation", "TaskComparison", "draw_labels", "presentation",
           "seg_palette"]


class Presentation:
    """What the demo needs to know about one task. Subclasses set the class attributes and implement the
    methods; an instance holds no state (a run's outputs are made by :meth:`sinks` and :meth:`comparison`)."""

    task: ClassVar[str] = ""
    per_frame_kind: ClassVar[str] = ""  # the model kind of --compare's per-frame baseline
    per_frame_name: ClassVar[str] = ""  # its name in labels and messages ("R-FCN", "DeepLab")
    verb: ClassVar[str] = ""  # what the model does with its classes, in messages ("detects", "segments")
    trained_on: ClassVar[str] = ""  # what the embedded models were trained on

    # command line ---------------------------------------------------------------------------------
    def thresh_help(self, dff: bool) -> tuple[str, str]:
        """The help of ``--thresh`` and ``--vis-thresh``."""
        raise NotImplementedError

    def add_arguments(self, ap: argparse.ArgumentParser) -> None:
        """The task's own options (none by default)."""

    def sinks(self, args: argparse.Namespace) -> list[Callable[[FrameResult], None]]:
        """The task's extra per-frame outputs chosen by ``args`` (each called with every result while it still
        has its frame); none by default."""
        return []

    # one frame ------------------------------------------------------------------------------------
    def content(self, r: FrameResult) -> Any:
        """What :meth:`draw` draws of ``r``."""
        raise NotImplementedError

    def keep(self, r: FrameResult, vis_thresh: float) -> Any:
        """What ``--compare`` keeps of a DFF result to draw it later (small: a run has hundreds of frames);
        :meth:`draw` takes it as ``content``."""
        raise NotImplementedError

    def draw(self, image: np.ndarray, content: Any, class_names: Sequence[str], vis_thresh: float, *,
             key_frame: bool | None = None, update_mask: np.ndarray | None = None, updated_fraction: float = 0.0,
             scales: Sequence[int] | None = None, age: int | None = None,
             quality: Callable[[Sequence[float]], float | None] | None = None) -> np.ndarray:
        """A copy of the BGR frame with ``content`` (:meth:`content` or :meth:`keep`) drawn, and the key-frame
        marker and THP's updated cells as :func:`dff.apps.compare.annotate` draws them."""
        raise NotImplementedError

    def draw_result(self, r: FrameResult, class_names: Sequence[str], vis_thresh: float, mark_keys: bool,
                    scales: Sequence[int] | None = None) -> np.ndarray:
        """``r`` drawn on its frame as the demo shows it (``mark_keys``: a DFF run's key-frame marker)."""
        return self.draw(r.image, self.content(r), class_names, vis_thresh,
                         key_frame=r.is_key if mark_keys else None, update_mask=r.update_mask,
                         updated_fraction=r.updated_fraction, scales=scales, age=r.age if mark_keys else None,
                         quality=r.quality if r.has_q else None)

    def count(self, r: FrameResult, vis_thresh: float) -> int:
        """The per-frame count of the log line, the summary and ``--compare``'s chart."""
        raise NotImplementedError

    def count_text(self, n: int, vis_thresh: float) -> str:
        """:meth:`count` in the per-frame line."""
        raise NotImplementedError

    def record(self, r: FrameResult, seq: int, timestamp: float, latency: float, dropped: int,
               class_names: Sequence[str], vis_thresh: float) -> dict:
        """The frame's JSON line."""
        raise NotImplementedError

    # a run ----------------------------------------------------------------------------------------
    def summary_line(self, s: Mapping[str, Any]) -> str | None:
        """The summary's line about the counts (``s``: :meth:`dff.apps.reporting.RunStats.summary`), or None."""
        raise NotImplementedError

    def comparison(self, class_names: Sequence[str], vis_thresh: float, base_label: str, dff_label: str,
                   video_path: str | None = None, scales: Sequence[int] | None = None) -> Comparison:
        """``--compare``'s traces and side-by-side video."""
        return TaskComparison(self, class_names, vis_thresh, base_label, dff_label, video_path=video_path,
                              scales=scales)

    def summary_figure(self, comparison: Comparison, base_summary: Mapping[str, Any],
                       dff_summary: Mapping[str, Any], source: str = "") -> Figure:
        """``--compare``'s one-page summary (:func:`dff.apps.compare.summary_figure`)."""
        return summary_figure(comparison, base_summary, dff_summary, source=source)


class DetectionPresentation(Presentation):
    """Boxes: what the detection demo has always shown and written (byte for byte)."""

    task = "det"
    per_frame_kind = "rfcn"
    per_frame_name = "R-FCN"
    verb = "detects"
    trained_on = "the synthetic mini-VID"

    def thresh_help(self, dff: bool) -> tuple[str, str]:
        return ("detection score threshold (reference: 1e-4 DFF, 1e-3 R-FCN)",
                "draw boxes above this score (reference: 0.7)")

    def content(self, r: FrameResult) -> list:
        return r.detections

    def keep(self, r: FrameResult, vis_thresh: float) -> list:
        return [np.asarray(d)[np.asarray(d)[:, 4] > vis_thresh] if len(d) else np.asarray(d) for d in r.detections]

    def draw(self, image, content, class_names, vis_thresh, *, key_frame=None, update_mask=None,
             updated_fraction=0.0, scales=None, age=None, quality=None) -> np.ndarray:
        return annotate(image, content, class_names, vis_thresh, key_frame=key_frame, update_mask=update_mask,
                        updated_fraction=updated_fraction, scales=scales, age=age, quality=quality)

    def count(self, r: FrameResult, vis_thresh: float) -> int:
        return boxes_above(r.detections, vis_thresh)

    def count_text(self, n: int, vis_thresh: float) -> str:
        return f"{n} boxes > {vis_thresh}"

    def record(self, r, seq, timestamp, latency, dropped, class_names, vis_thresh) -> dict:
        return frame_record(r, seq, timestamp, latency, dropped, class_names, vis_thresh)

    def summary_line(self, s: Mapping[str, Any]) -> str | None:
        return f"  {s['drawn']} boxes drawn (score above --vis-thresh)" if s["drawn"] else None

    def comparison(self, class_names, vis_thresh, base_label, dff_label, video_path=None, scales=None) -> Comparison:
        return Comparison(class_names, vis_thresh, base_label, dff_label, video_path=video_path, scales=scales)


# segmentation ---------------------------------------------------------------------------------------
# BGR, one per class index (0, the background, is never painted): distinct hues that read over a scene at
# alpha 0.5; indices past the table take dff.utils.vis.class_color
SEG_PALETTE: tuple[tuple[int, int, int], ...] = (
    (0, 0, 0), (40, 40, 230), (230, 140, 30), (40, 200, 40), (30, 210, 240), (220, 60, 200), (230, 230, 40),
    (30, 130, 250), (150, 80, 20), (170, 150, 255), (20, 120, 120), (120, 20, 120), (255, 200, 160),
    (90, 90, 255), (60, 160, 110), (200, 200, 200), (0, 80, 160), (160, 0, 60), (120, 255, 180), (60, 0, 200),
)
SEG_ALPHA = 0.5  # the overlay's weight over the frame


def seg_palette(n: int) -> np.ndarray:
    """(n, 3) uint8 BGR colours of class indices 0..n-1 (:data:`SEG_PALETTE`, then :func:`class_color`)."""
    return np.array([SEG_PALETTE[i] if i < len(SEG_PALETTE) else class_color(i) for i in range(max(n, 1))],
                    dtype=np.uint8)


def _fit_labels(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``labels`` at ``size`` (H, W) (nearest neighbour: class indices are not blended)."""
    if labels.shape[:2] == tuple(size):
        return labels
    return cv2.resize(labels, (size[1], size[0]), interpolation=cv2.INTER_NEAREST)


def _draw_legend(im: np.ndarray, classes: Sequence[int], class_names: Sequence[str], palette: np.ndarray) -> None:
    """A legend in ``im``'s bottom-left corner, in place: one swatch and name per class of ``classes``, on a
    dark box; rows that do not fit are left out."""
    if not classes:
        return
    scale = float(np.clip(min(im.shape[:2]) / 600.0, 0.35, 0.6))
    (_, th), base = cv2.getTextSize("Ag", cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    row = th + base + 4
    rows = min(len(classes), max(0, (im.shape[0] - 8) // row))
    if rows == 0:
        return
    names = [class_names[c] if c < len(class_names) else str(c) for c in classes[:rows]]
    width = max(cv2.getTextSize(n, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0] for n in names) + th + 12
    x0, y0 = 2, im.shape[0] - 2 - rows * row - 4
    x1 = min(im.shape[1] - 1, x0 + width)
    cv2.rectangle(im, (x0, y0), (x1, im.shape[0] - 2), (30, 30, 30), -1)
    for i, (c, name) in enumerate(zip(classes, names)):
        top = y0 + 4 + i * row
        color = tuple(int(v) for v in palette[c]) if c < len(palette) else class_color(c)
        cv2.rectangle(im, (x0 + 4, top), (x0 + 4 + th, top + th), color, -1)
        cv2.putText(im, name, (x0 + th + 8, top + th), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1,
                    cv2.LINE_AA)


def draw_labels(image: np.ndarray, labels: np.ndarray, class_names: Sequence[str], alpha: float = SEG_ALPHA,
                legend: bool = True) -> np.ndarray:
    """A copy of the BGR frame ``image`` (H, W, 3) with the label map ``labels`` ((H, W) class indices; another
    size is resized to the frame's, nearest) painted over it: each pixel of a class other than the background
    (0) blended with the class's :func:`seg_palette` colour at ``alpha``; with ``legend``, the classes shown
    named in the bottom-left corner."""
    im = image.copy()
    labels = _fit_labels(np.asarray(labels), im.shape[:2])
    present = np.flatnonzero(np.bincount(labels.ravel(), minlength=1))
    palette = seg_palette(max(len(class_names), int(present.max(initial=0)) + 1))
    fg = labels > 0
    if fg.any():
        tint = palette[labels[fg]].astype(np.float32)
        im[fg] = np.clip(im[fg].astype(np.float32) * (1.0 - alpha) + tint * alpha + 0.5, 0, 255).astype(np.uint8)
    if legend:
        _draw_legend(im, [int(c) for c in present if c > 0], class_names, palette)
    return im


class LabelWriter:
    """``--labels-out DIR``: each frame's label map as a PNG of uint8 class indices, named after the frame
    (``0007.JPEG`` -> ``0007.png``), written atomically (a reader never sees half a file)."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.written = 0
        os.makedirs(directory, exist_ok=True)

    def __call__(self, r: FrameResult) -> None:
        if r.labels is None:
            return
        ok, png = cv2.imencode(".png", np.ascontiguousarray(r.labels, dtype=np.uint8))
        if not ok:
            raise OSError(f"{self.directory}: cannot encode the label map of {r.name} as PNG")
        atomic_write_bytes(os.path.join(self.directory, os.path.splitext(os.path.basename(r.name))[0] + ".png"),
                           png.tobytes())
        self.written += 1


class SegmentationPresentation(Presentation):
    """Label maps: a coloured overlay, class fractions, classes present."""

    task = "seg"
    per_frame_kind = "deeplab"
    per_frame_name = "DeepLab"
    verb = "segments"
    trained_on = "the synthetic segmentation set"

    def thresh_help(self, dff: bool) -> tuple[str, str]:
        return ("detectors only: a segmentation model ignores it", "detectors only: a segmentation model ignores it")

    def add_arguments(self, ap: argparse.ArgumentParser) -> None:
        ap.add_argument("--labels-out", default=None, metavar="DIR",
                        help="write each frame's label map to DIR as a PNG of uint8 class indices (0: background), "
                             "named after the frame")

    def sinks(self, args: argparse.Namespace) -> list[Callable[[FrameResult], None]]:
        return [LabelWriter(args.labels_out)] if getattr(args, "labels_out", None) else []

    def content(self, r: FrameResult) -> np.ndarray | None:
        return r.labels

    def keep(self, r: FrameResult, vis_thresh: float) -> bytes | None:
        # PNG-compressed: a label map of flat regions is a few KB, the raw one H x W bytes
        if r.labels is None:
            return None
        ok, png = cv2.imencode(".png", np.ascontiguousarray(r.labels, dtype=np.uint8))
        return png.tobytes() if ok else None

    def draw(self, image, content, class_names, vis_thresh, *, key_frame=None, update_mask=None,
             updated_fraction=0.0, scales=None, age=None, quality=None) -> np.ndarray:
        if isinstance(content, (bytes, bytearray)):
            content = cv2.imdecode(np.frombuffer(content, np.uint8), cv2.IMREAD_UNCHANGED)
        im = draw_labels(image, content, class_names) if content is not None else image
        # THP's updated cells and the key-frame marker, as on a detector's frame (no boxes)
        return annotate(im, [], class_names, vis_thresh, key_frame=key_frame, update_mask=update_mask,
                        updated_fraction=updated_fraction, scales=scales, age=age)

    def count(self, r: FrameResult, vis_thresh: float) -> int:
        if r.labels is None:
            return 0
        return int((np.bincount(np.asarray(r.labels).ravel(), minlength=1)[1:] > 0).sum())

    def count_text(self, n: int, vis_thresh: float) -> str:
        return f"{n} {'class' if n == 1 else 'classes'} present"

    def record(self, r, seq, timestamp, latency, dropped, class_names, vis_thresh) -> dict:
        return frame_record(r, seq, timestamp, latency, dropped, class_names, vis_thresh)

    def summary_line(self, s: Mapping[str, Any]) -> str | None:
        if not s["frames"]:
            return None
        return f"  {s['drawn'] / s['frames']:.2f} classes present per frame on average (background excluded)"

    def summary_figure(self, comparison, base_summary, dff_summary, source="") -> Figure:
        fig = super().summary_figure(comparison, base_summary, dff_summary, source=source)
        # the detection page's words, for label maps
        if fig._suptitle is not None:
            fig._suptitle.set_text(fig._suptitle.get_text().replace("per-frame R-FCN",
                                                                    f"per-frame {self.per_frame_name}"))
        for ax in fig.axes:
            if ax.get_title().startswith("(c)"):
                ax.set_title("(c) classes present per frame")
                ax.set_ylabel("classes present (background excluded)")
        return fig


class TaskTrace(Trace):
    """A :class:`~dff.apps.compare.Trace` whose per-frame count is the presentation's and which keeps, with
    ``keep_boxes``, what the presentation keeps of each frame (:meth:`Presentation.keep`) in :attr:`kept`."""

    def __init__(self, present: Presentation, label: str, vis_thresh: float, keep_boxes: bool = False) -> None:
        super().__init__(label, vis_thresh, keep_boxes)
        self.present = present
        self.kept: dict[int, Any] = {}

    def add(self, r: FrameResult) -> FrameTrace:
        t = super().add(r)
        t.drawn = self.present.count(r, self.vis_thresh)
        if self.keep_boxes:
            self.kept[r.index] = self.present.keep(r, self.vis_thresh)
        return t


class TaskComparison(Comparison):
    """:class:`~dff.apps.compare.Comparison` for any task: its traces count and keep, and its panels draw, as
    the presentation ``present`` does."""

    def __init__(self, present: Presentation, class_names: Sequence[str], vis_thresh: float, base_label: str,
                 dff_label: str, video_path: str | None = None, scales: Sequence[int] | None = None) -> None:
        super().__init__(class_names, vis_thresh, base_label, dff_label, video_path=video_path, scales=scales)
        self.present = present
        self.dff = TaskTrace(present, dff_label, vis_thresh, keep_boxes=video_path is not None)
        self.base = TaskTrace(present, base_label, vis_thresh)

    def add_base(self, r: FrameResult) -> None:
        b = self.base.add(r)
        d = self.dff.frames.get(r.index)
        if self.video is None or r.image is None or d is None:
            return
        p = self.present
        left = caption_panel(p.draw(r.image, p.content(r), self.class_names, self.vis_thresh),
                             self.base.label, fps_text(b.running_fps, b.seq))
        right = caption_panel(p.draw(r.image, self.dff.kept.pop(r.index, None), self.class_names, self.vis_thresh,
                                     key_frame=d.is_key, update_mask=d.update_mask,
                                     updated_fraction=d.updated_fraction, scales=self.scales),
                              self.dff.label, fps_text(d.running_fps, d.seq) + (", KEY frame" if d.is_key else ""),
                              KEY_LIGHT if d.is_key else (255, 255, 255))
        self.video.write(side_by_side(left, right))


PRESENTATIONS: dict[str, Presentation] = {"det": DetectionPresentation(), "seg": SegmentationPresentation()}


def presentation(task: str) -> Presentation:
    """The presentation of ``task`` (a model's ``task``)."""
    try:
        return PRESENTATIONS[task]
    except KeyError:
        raise ValueError(f"the demo cannot show a {task!r} model (tasks: {', '.join(PRESENTATIONS)})") from None
