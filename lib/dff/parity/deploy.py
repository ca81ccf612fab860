"""The ONNX export keeps the detections: onnxruntime against PyTorch on the fixture inputs.

``tools/check_fastpath.py --backend onnxruntime`` (and ``tests/test_onnx_export.py``): the R-FCN and
DFF fixture models (``model/``, deterministic weights) on the fixture frames (DFF: frame 0 a key frame,
the others warped from it), and the embedded trained models (``data/models``) on a generated synthetic
clip, each exported (:func:`dff.deploy.export_onnx`) and run by :class:`dff.deploy.onnx_detector`
and by the PyTorch engine in plain float32. Every detection above ``SCORE_THRESH`` of either run must
have a partner in the other (same class, boxes within ``BOX_TOL`` px, score within ``SCORE_TOL``):
:func:`dff.parity.fastpath.match_rows`, as the fast-path check counts.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
from typing import Iterator

import numpy as np
import torch

from dff.apps.demo import synthetic_clip
from dff.deploy import DeployUnavailable, cached_export, onnx_detector
from dff.engine.fastpath import tf32_mode
from dff.engine.frames import FrameSource
from dff.engine.postprocess import dets_to_rows
from dff.engine.video import VideoDetector
from dff.models.builder import load_model
from dff.parity import Result
from dff.parity.fastpath import _match_results
from dff.parity.model import FIXTURE_THRESH, REPO, _build, _frame_inputs

__all__ = ["detector_rows", "fixture_cases", "embedded_cases", "cases", "run_check_onnx", "EMBEDDED"]

EMBEDDED = {"rfcn": os.path.join(REPO, "data", "models", "rfcn_synthetic_tiny.pth"),
            "dff": os.path.join(REPO, "data", "models", "dff_rfcn_synthetic_tiny.pth")}


def detector_rows(det: VideoDetector, frames: list) -> list[np.ndarray]:
    """Rows ``[class, x1, y1, x2, y2, score]`` of each prepared frame ``(data, im_info)`` through ``det``
    (one video: the detector is reset first)."""
    det.reset()
    rows = []
    with torch.inference_mode():
        for data, im_info in frames:
            out, _, _ = det.step(data, im_info)
            dets = det.postprocess(out, im_info)
            rows.append(dets_to_rows([torch.from_numpy(np.asarray(d)) for d in dets]).numpy())
    return rows


def _compare(case: str, model, frames: list, interval: int, cache_dir: str, thresh: float) -> Iterator[Result]:
    with tf32_mode(False):
        plain = detector_rows(VideoDetector(model, model.cfg, key_interval=interval, thresh=thresh), frames)
    onnx_dir = cached_export(model, cache_dir)
    got = detector_rows(onnx_detector(onnx_dir, model.cfg, key_interval=interval, thresh=thresh), frames)
    yield from _match_results(case, plain, got)


def fixture_cases(fixture_dir: str, cache_dir: str) -> Iterator[Result]:
    """The R-FCN and DFF fixture models on the fixture frames, onnxruntime against PyTorch (CPU); the
    exports go to (or come from) ``cache_dir`` (:func:`dff.deploy.cached_export`)."""
    mdir = os.path.join(fixture_dir, "model")
    files = sorted(os.listdir(mdir)) if os.path.isdir(mdir) else []
    n_frames = len([f for f in files if re.fullmatch(r"inputs_frame\d+\.npz", f)])
    frames = [_frame_inputs(fixture_dir, k) for k in range(n_frames)]
    for kind in ("dff", "rfcn"):  # DFF first: the R-FCN's feature network and head are its stages (same weights)
        with torch.inference_mode():
            model = _build(kind, fixture_dir)
        interval = max(n_frames, 1) if kind == "dff" else 1
        yield from _compare(f"onnx/fixture-{kind}", model, frames, interval, cache_dir, FIXTURE_THRESH)


def embedded_cases(cache_dir: str, frames: int = 12) -> Iterator[Result]:
    """The embedded trained models on a generated synthetic clip (DFF at key interval 10), onnxruntime
    against PyTorch (CPU), at the demos' thresholds; exports in ``cache_dir`` as :func:`fixture_cases`."""
    with tempfile.TemporaryDirectory() as tmp:
        clip = synthetic_clip(tmp, frames=frames)
        images = [f.image for f in FrameSource(clip)]
    for kind, path in EMBEDDED.items():
        model = load_model(path)[0]
        prep = VideoDetector(model, model.cfg)
        inputs = [prep.prepare(im) for im in images]
        interval = 10 if kind == "dff" else 1
        thresh = 1e-4 if kind == "dff" else 1e-3
        yield from _compare(f"onnx/embedded-{kind}", model, inputs, interval, cache_dir, thresh)


def cases(fixture_dir: str, cache_dir: str | None = None) -> Iterator[Result]:
    """:func:`fixture_cases` then :func:`embedded_cases`; exports in ``cache_dir`` (default a temporary
    folder, removed after)."""
    with tempfile.TemporaryDirectory() as tmp:
        yield from fixture_cases(fixture_dir, cache_dir or tmp)
        yield from embedded_cases(cache_dir or tmp)


def run_check_onnx(args: argparse.Namespace) -> int:
    """``tools/check_fastpath.py --backend onnxruntime``: :func:`cases` of ``args.fixture_dir`` on the CPU (any
    ``--device`` is ignored),
    one line per row, then the counts. 0 when everything passed, 1 otherwise, 2 after one ``error:`` line."""
    if not os.path.isdir(os.path.join(args.fixture_dir, "model")):
        print(f"error: {args.fixture_dir}: no model/ fixture folder there", file=sys.stderr)
        return 2
    passed = failed = 0
    try:
        for r in cases(args.fixture_dir, getattr(args, "onnx_cache", None)):
            print(r.line(), flush=True)
            passed, failed = passed + r.passed, failed + (not r.passed)
    except DeployUnavailable as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 and passed > 0 else 1
