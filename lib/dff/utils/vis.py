"""Drawing detections, the key-frame marker and THP's updated feature cells on frames."""
from __future__ import annotations

from typing import Callable, Sequence

import cv2
import numpy as np

KEY_COLOR = (0, 0, 255)  # BGR red
UPDATE_COLOR = (255, 255, 0)  # BGR cyan


def class_color(cls: int) -> tuple[int, int, int]:
    """A fixed, distinct BGR colour per class (the reference drew random colours each frame)."""
    rng = np.random.RandomState(cls * 7919 + 17)
    return tuple(int(v) for v in rng.randint(64, 256, size=3))


def _thickness(im: np.ndarray) -> int:
    return max(1, round(min(im.shape[:2]) / 240))


def draw_detections(image_bgr: np.ndarray, detections: Sequence[np.ndarray], class_names: Sequence[str],
                    thresh: float = 0.7, key_frame: bool | None = None, note: str | None = None,
                    quality: Callable[[Sequence[float]], float | None] | None = None) -> np.ndarray:
    """Return a copy of ``image_bgr`` with boxes scoring above ``thresh`` drawn, labelled ``class score``.

    ``detections[c]`` is (k, 5) ``[x1, y1, x2, y2, score]`` in image pixels; index 0 is ignored.
    ``key_frame`` adds the frame marker (:func:`draw_frame_marker`, DFF demo), ``note`` more text in it;
    ``quality(box)`` (a model with THP's Q) adds ``q`` and the box's quality to its label.
    """
    im = image_bgr.copy()
    thickness = _thickness(im)
    for cls in range(1, len(detections)):
        dets = np.asarray(detections[cls])
        if dets.size == 0:
            continue
        color = class_color(cls)
        name = class_names[cls] if cls < len(class_names) else str(cls)
        for x1, y1, x2, y2, score in dets[dets[:, 4] > thresh]:
            p1, p2 = (int(round(x1)), int(round(y1))), (int(round(x2)), int(round(y2)))
            cv2.rectangle(im, p1, p2, color, thickness)
            q = quality((x1, y1, x2, y2)) if quality is not None else None
            label = f"{name} {score:.3f}" + (f" q{q:.2f}" if q is not None else "")
            (tw, th), _ = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, 0.5, 1)
            y = max(p1[1], th + 4)
            cv2.rectangle(im, (p1[0], y - th - 4), (p1[0] + tw + 2, y), color, -1)
            cv2.putText(im, label, (p1[0] + 1, y - 3), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    if key_frame is not None:
        draw_frame_marker(im, key_frame, note)
    return im


def draw_frame_marker(im: np.ndarray, key_frame: bool, note: str | None = None) -> np.ndarray:
    """Mark ``im`` in place: "KEY" (red, and a red border) or "warped", plus ``note``, on a dark box so the
    text reads on any scene. Returns ``im``."""
    text = "KEY" if key_frame else "warped"
    if note:
        text = f"{text}, {note}"
    t = _thickness(im)
    if key_frame:
        cv2.rectangle(im, (0, 0), (im.shape[1] - 1, im.shape[0] - 1), KEY_COLOR, 2 * t)
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.6, 2)
    x, y = 2 * t + 4, 2 * t + 4 + th
    cv2.rectangle(im, (x - 3, y - th - 3), (x + tw + 3, y + base + 1), (0, 0, 0), -1)
    color = KEY_COLOR if key_frame else UPDATE_COLOR if note else (255, 255, 255)
    cv2.putText(im, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, 0.6, color, 2, cv2.LINE_AA)
    return im


def cell_pixels(mask: np.ndarray, scale: float, size: tuple[int, int], stride: int = 16) -> np.ndarray:
    """The (H, W) = ``size`` pixel mask of an original frame covered by the True cells of ``mask`` (h, w).

    A cell (r, c) covers the network input's pixels [stride r, stride (r + 1)) x [stride c, stride (c + 1)),
    the input being the frame resized by ``scale``; a frame pixel belongs to the cell its centre falls in.
    """
    mask = np.asarray(mask, dtype=bool)
    h, w = mask.shape
    rows = np.floor((np.arange(size[0]) + 0.5) * scale / stride).astype(np.int64)
    cols = np.floor((np.arange(size[1]) + 0.5) * scale / stride).astype(np.int64)
    # cells past the mask (rounding, an input padded to the stride) cover nothing
    out = np.zeros(size, dtype=bool)
    ry, cx = rows < h, cols < w
    out[np.ix_(ry, cx)] = mask[np.ix_(rows[ry], cols[cx])]
    return out


def draw_updated_cells(image_bgr: np.ndarray, mask: np.ndarray, scale: float, stride: int = 16,
                       color: tuple[int, int, int] = UPDATE_COLOR, alpha: float = 0.35,
                       outline: int | None = None) -> np.ndarray:
    """Return a copy of ``image_bgr`` with the True cells of ``mask`` (THP's partially updated feature cells,
    see :func:`cell_pixels`) tinted ``color`` at ``alpha`` and their region outlined ``outline`` px wide
    (default: the boxes' width), inside the cells: no pixel outside them changes."""
    im = image_bgr.copy()
    covered = cell_pixels(mask, scale, im.shape[:2], stride)
    if not covered.any():
        return im
    tint = np.asarray(color, dtype=np.float32)
    im[covered] = np.round(im[covered].astype(np.float32) * (1.0 - alpha) + tint * alpha).astype(im.dtype)
    width = _thickness(im) if outline is None else outline
    if width > 0:
        # the region's own edge pixels (a frame border counts as an edge): erosion keeps the outline inside
        inner = cv2.erode(covered.astype(np.uint8), np.ones((3, 3), np.uint8), iterations=width,
                          borderType=cv2.BORDER_CONSTANT, borderValue=0).astype(bool)
        im[covered & ~inner] = color
    return im


def update_label(fraction: float) -> str:
    """``updated 7%`` for a fraction of cells (``<1%`` rather than a misleading 0% when some were)."""
    pct = 100.0 * fraction
    return f"updated {'<1' if 0.0 < pct < 1.0 else f'{pct:.0f}'}%"
