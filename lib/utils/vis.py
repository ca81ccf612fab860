"""Drawing detections on frames."""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np


def class_color(cls: int) -> tuple[int, int, int]:
    """A fixed, distinct BGR colour per class (the reference drew random colours each frame)."""
    rng = np.random.RandomState(cls * 7919 + 17)
    return tuple(int(v) for v in rng.randint(64, 256, size=3))


def draw_detections(image_bgr: np.ndarray, detections: Sequence[np.ndarray], class_names: Sequence[str],
                    thresh: float = 0.7, key_frame: bool | None = None) -> np.ndarray:
    """Return a copy of ``image_bgr`` with boxes scoring above ``thresh`` drawn, labelled ``class score``.

    ``detections[c]`` is (k, 5) ``[x1, y1, x2, y2, score]`` in image pixels; index 0 is ignored.
    ``key_frame`` adds a KEY / non-key marker in the corner (DFF demo).
    """
    im = image_bgr.copy()
    thickness = max(1, round(min(im.shape[:2]) / 240))
    for cls in range(1, len(detections)):
        dets = np.asarray(detections[cls])
        if dets.size == 0:
            continue
        color = class_color(cls)
        name = class_names[cls] if cls < len(class_names) else str(cls)
        for x1, y1, x2, y2, score in dets[dets[:, 4] > thresh]:
            p1, p2 = (int(round(x1)), int(round(y1))), (int(round(x2)), int(round(y2)))
            cv2.rectangle(im, p1, p2, color, thickness)
            label = f"{name} {score:.3f}"
            (tw, th), _ = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, 0.5, 1)
            y = max(p1[1], th + 4)
            cv2.rectangle(im, (p1[0], y - th - 4), (p1[0] + tw + 2, y), color, -1)
            cv2.putText(im, label, (p1[0] + 1, y - 3), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    if key_frame is not None:
        text = "KEY" if key_frame else "warped"
        cv2.putText(im, text, (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.7,
                    (0, 0, 255) if key_frame else (255, 255, 255), 2, cv2.LINE_AA)
    return im
