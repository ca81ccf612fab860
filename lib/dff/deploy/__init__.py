"""Deployment: ONNX export of a model (a detector or a segmentation model) and the onnxruntime backend of the
video engine (docs/onnx.md).

* :func:`export_onnx` (``tools/export_onnx.py``): ``key.onnx`` (frame -> key feature and the task
  network's outputs), ``nonkey.onnx`` (frame, key frame, key feature -> the same through the flow network,
  warp x scale and the task network; DFF only), ``keyagg.onnx`` (a key frame after the first, with the previous
  key frame and its aggregated feature -> the new aggregated feature and the task network's outputs; a detector
  with the ConvGRU key-frame aggregation) and ``model.json``; standard ONNX operators only. What differs by the
  model's task is :data:`dff.deploy.export.TASKS`.
* :func:`make_detector`: the engine of a backend and of the model's task, ``"torch"``
  (:func:`dff.engine.engines.video_engine`) or ``"onnxruntime"`` (:func:`onnx_detector`, exporting to a cache
  first when no folder is given).

onnx, onnxscript and onnxruntime are optional (``pip install -e .[deploy]``): this package imports
without them, and what needs them raises :class:`DeployUnavailable` naming the install command.
"""
from dff.deploy.export import (
    DEPLOY_HINT,
    MANIFEST,
    OPSET,
    DeployUnavailable,
    cached_export,
    default_cache_dir,
    export_onnx,
    read_manifest,
)
from dff.deploy.runtime import BACKENDS, make_detector, onnx_detector

__all__ = ["BACKENDS", "DEPLOY_HINT", "MANIFEST", "OPSET", "DeployUnavailable", "onnx_detector", "cached_export",
           "default_cache_dir", "export_onnx", "make_detector", "read_manifest"]
