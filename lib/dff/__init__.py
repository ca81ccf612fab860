"""Deep Feature Flow for video object detection (Zhu et al., CVPR 2017), in PyTorch.

The public API (:mod:`dff.api`, docs/api.md)::

    import dff
    det = dff.load_detector()                 # the embedded mobile DFF model, the demo's settings
    for frame in det.detect("clip.mp4"):      # a file, a frame folder, "cam:0", a URL, or HxWx3 BGR arrays
        for box in frame.boxes:               # x1, y1, x2, y2, score, label, class_id
            ...
"""
import importlib

__all__ = ["Box", "CheckpointError", "DetectionFrame", "DetectionRun", "Detector", "SourceLost", "SourceOpenError",
           "VideoReadError", "load_detector"]


def __getattr__(name: str):
    # The public API's names load on first use (PEP 562): importing any dff module (dff.config for a data tool)
    # must not load torch, the models, the engine and the ONNX packages through this package's __init__.
    if name in __all__:
        return getattr(importlib.import_module("dff.api"), name)
    raise AttributeError(f"module 'dff' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
