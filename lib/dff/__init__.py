"""Deep Feature Flow for video object detection (Zhu et al., CVPR 2017), in PyTorch.

The public API (:mod:`dff.api`, docs/api.md)::

    import dff
    det = dff.load_detector()                 # the embedded mobile DFF model, the demo's settings
    for frame in det.detect("clip.mp4"):      # a file, a frame folder, "cam:0", a URL, or HxWx3 BGR arrays
        for box in frame.boxes:               # x1, y1, x2, y2, score, label, class_id
            ...
"""
from dff.api import (
    Box,
    CheckpointError,
    DetectionFrame,
    DetectionRun,
    Detector,
    SourceLost,
    SourceOpenError,
    VideoReadError,
    load_detector,
)

__all__ = ["Box", "CheckpointError", "DetectionFrame", "DetectionRun", "Detector", "SourceLost", "SourceOpenError",
           "VideoReadError", "load_detector"]
