"""The fast path changes speed, not results: detections with and without it, on the fixture inputs.

The R-FCN and DFF fixture models (``model/``, deterministic weights, see :mod:`dff.parity.model`) run
the fixture frames through the video engine (DFF: frame 0 a key frame, the others warped from it)
twice on one device: plain float32 (TF32 off) and with a :class:`~dff.engine.fastpath.FastPath`. Every
detection scoring above ``score_thresh`` in either run must have a partner in the other run: same
class, every box coordinate within ``box_tol`` original-image pixels and the score within
``score_tol``. On a CUDA device the plain float32 run is also compared with MXNet's detections.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import re
import sys
import tempfile
from typing import Iterator

import numpy as np
import torch

from dff.apps.demo import synthetic_clip
from dff.engine.fastpath import AMP_DTYPES, FastPath, tf32_mode
from dff.engine.frames import FrameSource
from dff.engine.postprocess import dets_to_rows
from dff.engine.video import VideoDetector
from dff.models.builder import load_model
from dff.parity import TOL_BOX, Result, compare
from dff.parity.model import FIXTURE_THRESH, REPO, _build, _frame_inputs

SCORE_THRESH = 0.1
BOX_TOL = 1.0  # original-image pixels
SCORE_TOL = 0.02
# In reduced precision a class's NMS can keep the other of two overlapping near-equal-score boxes, so a
# few detections per frame lose their partner even on the same rois. The fixture weights' class scores are
# nearly flat (0.1-0.37 over 31 classes), which makes such flips common (the counts measured on GPUs are
# in docs/benchmarks.md); 90 % shared is the bar TF32 and fp16 clear and bf16 does not.
AMP_MIN_SHARED = 0.9


@dataclasses.dataclass
class Match:
    """How two detection sets agree above a score threshold (rows ``[class, x1, y1, x2, y2, score]``)."""

    considered: int  # detections above the threshold, both sides
    unmatched: int
    max_box_diff: float  # over the matched pairs, pixels
    max_score_diff: float

    @property
    def passed(self) -> bool:
        return self.unmatched == 0


def match_rows(a: np.ndarray, b: np.ndarray, score_thresh: float = SCORE_THRESH, box_tol: float = BOX_TOL,
               score_tol: float = SCORE_TOL) -> Match:
    """Pair each detection above ``score_thresh`` in ``a`` with its closest same-class one in ``b`` and
    vice versa (a partner may itself be just below the threshold)."""
    considered = unmatched = 0
    box_diff = score_diff = 0.0
    for src, dst in ((a, b), (b, a)):
        for row in src[src[:, 5] > score_thresh]:
            considered += 1
            same = dst[dst[:, 0] == row[0]]
            if same.shape[0] == 0:
                unmatched += 1
                continue
            d_box = np.abs(same[:, 1:5] - row[1:5]).max(axis=1)
            d_score = np.abs(same[:, 5] - row[5])
            j = int(np.argmin(d_box + d_score))
            if d_box[j] <= box_tol and d_score[j] <= score_tol:
                box_diff, score_diff = max(box_diff, float(d_box[j])), max(score_diff, float(d_score[j]))
            else:
                unmatched += 1
    return Match(considered, unmatched, box_diff, score_diff)


def run_rows(model, frames: list, device: torch.device, fast=None, key_interval: int = 1,
             fixed_rois: list | None = None) -> tuple[list[np.ndarray], list]:
    """Detections (rows ``[class, x1, y1, x2, y2, score]``) of each frame through the video engine, and
    each frame's rois. With ``fixed_rois`` the proposals are replaced by those (one per frame)."""

    det = VideoDetector(model, model.cfg, key_interval=key_interval, device=device, thresh=FIXTURE_THRESH,
                        sync=False, fast=fast)
    rows, rois = [], []
    for k, (data, im_info) in enumerate(frames):
        out, _, _ = det.step(data, im_info, rois=None if fixed_rois is None else fixed_rois[k])
        dets = det.postprocess(out, im_info)
        rows.append(dets_to_rows([torch.from_numpy(np.asarray(d)) for d in dets]).numpy())
        rois.append(out["rois"].clone())
    return rows, rois


def _reduced(fast, device: torch.device) -> bool:
    """Does ``fast`` compute in less than float32? Autocast does; so does TF32 (10-bit mantissa) on a GPU."""
    return fast.amp is not None or (device.type == "cuda" and fast.tf32)


def _tag(fast) -> str:
    return fast.describe().replace(", ", "+").replace(" ", "_")


def _match_results(case: str, plain: list, got: list, min_shared: float = 1.0) -> Iterator[Result]:
    """One row per frame; it passes when at least ``min_shared`` of the detections have partners."""
    for k, (a, b) in enumerate(zip(plain, got)):
        m = match_rows(a, b)
        shared = (m.considered - m.unmatched) / max(m.considered, 1)
        yield Result(f"{case}/frame{k}", f"dets>{SCORE_THRESH}", m.max_box_diff, m.max_score_diff,
                     m.considered > 0 and shared >= min_shared,
                     f"{m.considered} detections, {m.unmatched} unmatched; max_abs = box px, max_rel = score")


def fixture_cases(fixture_dir: str, device: torch.device, fasts: list, notes: list | None = None,
                  kinds: tuple[str, ...] = ("rfcn", "dff")) -> Iterator[Result]:
    """The R-FCN and DFF fixture models on the fixture frames.

    Without autocast the fast path must give the same detections. With autocast, the fixture weights'
    RPN is saturated (its 300 best anchors score 0.993-0.9997), so a 1e-3 change of the feature
    reorders them and other proposals survive: the detections are compared on the float32 run's rois
    (the numerics of the whole network under autocast), and how many detections the whole autocast
    pipeline shares with float32 goes to ``notes`` (not run without ``notes``).
    """
    mdir = os.path.join(fixture_dir, "model")
    files = sorted(os.listdir(mdir)) if os.path.isdir(mdir) else []
    n_frames = len([f for f in files if re.fullmatch(r"inputs_frame\d+\.npz", f)])
    frames = [tuple(t.to(device) for t in _frame_inputs(fixture_dir, k)) for k in range(n_frames)]
    for kind in kinds:
        case = f"fastpath/fixture-{kind}"
        interval = max(n_frames, 1) if kind == "dff" else 1  # DFF: frame 0 key, the others warped from it
        with tf32_mode(False), torch.inference_mode():
            model = _build(kind, fixture_dir).to(device).eval()
            plain, plain_rois = run_rows(model, frames, device, None, interval)
        if device.type == "cuda":  # the plain float32 engine on the GPU against MXNet's detections
            expected = {"rfcn": [f"rfcn_frame{k}.npz" for k in range(n_frames)],
                        "dff": ["dff_key_frame0.npz"] + [f"dff_cur_frame{k}.npz" for k in range(1, n_frames)]}[kind]
            for k, name in enumerate(expected):
                path = os.path.join(mdir, name)
                if os.path.isfile(path):
                    exp = np.load(path)["dets_cls_x1y1x2y2_score"]
                    # the DFF frames warp our key feature, not MXNet's stored one: 1e-2 px
                    yield compare(f"{case}/{device.type}-float32/frame{k}", "dets_cls_x1y1x2y2_score", plain[k], exp,
                                  **dict(TOL_BOX, atol=1e-2))
        for fast in fasts:
            with torch.inference_mode():
                model = _build(kind, fixture_dir).to(device).eval()  # fresh: channels_last converts in place
                if not _reduced(fast, device):
                    got, _ = run_rows(model, frames, device, fast, interval)
                    yield from _match_results(f"{case}/{device.type}/{_tag(fast)}", plain, got)
                    continue
                got, _ = run_rows(model, frames, device, fast, interval, fixed_rois=plain_rois)
                yield from _match_results(f"{case}/{device.type}/{_tag(fast)}/float32-rois", plain, got,
                                          AMP_MIN_SHARED)
                if notes is None:
                    continue
                model = _build(kind, fixture_dir).to(device).eval()
                whole, _ = run_rows(model, frames, device, fast, interval)
            if notes is not None:
                for k, (a, b) in enumerate(zip(plain, whole)):
                    m = match_rows(a, b)
                    notes.append(f"{case}/{device.type}/{_tag(fast)}/frame{k}: whole pipeline (own proposals): "
                                 f"{m.considered - m.unmatched} of {m.considered} detections above {SCORE_THRESH} "
                                 f"shared with float32 (max box diff {m.max_box_diff:.3g} px, score "
                                 f"{m.max_score_diff:.3g})")


def embedded_cases(device: torch.device, fasts: list, frames: int = 20, work_dir: str | None = None) -> Iterator[Result]:
    """The embedded trained models (``data/models``) on a generated synthetic clip, whole pipeline.

    Under autocast, proposals (NMS over near-equal boxes) may differ, and a detection from another
    roi has another score: the rows pass at :data:`AMP_MIN_SHARED` of the detections shared; the
    effect on accuracy is measured by ``tools/benchmark.py --eval --fast`` (mAP with and without)."""

    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        clip = synthetic_clip(tmp, frames=frames)
        images = [f.image for f in FrameSource(clip)]
    for kind in ("rfcn", "dff"):
        path = os.path.join(REPO, "data", "models", f"{'dff_rfcn' if kind == 'dff' else 'rfcn'}_synthetic_tiny.pth")
        case = f"fastpath/embedded-{kind}"

        def build():
            return load_model(path, device=device)[0]

        model = build()

        prep = VideoDetector(model, model.cfg, device=device)
        inputs = [tuple(t.to(device) for t in prep.prepare(im)) for im in images]
        interval = 10 if kind == "dff" else 1
        with tf32_mode(False), torch.inference_mode():
            plain, _ = run_rows(model, inputs, device, None, interval)
        for fast in fasts:
            with torch.inference_mode():
                got, _ = run_rows(build(), inputs, device, fast, interval)
            if not _reduced(fast, device):
                yield from _match_results(f"{case}/{device.type}/{_tag(fast)}", plain, got)
                continue
            ms = [match_rows(a, b) for a, b in zip(plain, got)]
            considered, unmatched = sum(m.considered for m in ms), sum(m.unmatched for m in ms)
            yield Result(f"{case}/{device.type}/{_tag(fast)}/{len(ms)}-frames", f"dets>{SCORE_THRESH}",
                         max(m.max_box_diff for m in ms), max(m.max_score_diff for m in ms),
                         considered > 0 and considered - unmatched >= AMP_MIN_SHARED * considered,
                         f"{considered} detections, {unmatched} unmatched; max_abs = box px, max_rel = score")


def cases(fixture_dir: str, device: str | torch.device = "cpu", fasts: list | None = None,
          notes: list | None = None) -> Iterator[Result]:
    """Fixture and embedded-model checks of each fast path (default: everything for ``device``)."""

    device = torch.device(device)
    fasts = fasts if fasts is not None else [FastPath.full(device)]
    yield from fixture_cases(fixture_dir, device, fasts, notes)
    yield from embedded_cases(device, fasts)


def fast_paths(amps: str, device: torch.device, cuda_graphs: bool = True) -> list[FastPath]:
    """The fast paths of ``--amp`` (comma-separated fp16, bf16, none = float32), as ``--fast`` of the benchmark
    builds them; ``ValueError`` naming an unknown value."""
    fasts = []
    for amp in (a.strip() for a in amps.split(",") if a.strip()):
        if amp != "none" and amp not in AMP_DTYPES:
            raise ValueError(f"--amp {amp}: expected {', '.join(AMP_DTYPES)} or none")
        fast = FastPath.from_name("fp32" if amp == "none" else amp, device)
        fasts.append(fast if cuda_graphs else dataclasses.replace(fast, cuda_graphs=False))
    return fasts


def run_check_fastpath(args: argparse.Namespace) -> int:
    """``tools/check_fastpath.py``: :func:`cases` of ``args.fixture_dir`` on ``args.device`` for each fast path of
    ``args.amp`` (without CUDA graphs with ``args.no_graphs``); one line per row, the notes, then the counts.
    0 when everything passed (and something ran), 1 otherwise, 2 after one ``error:`` line."""
    if not os.path.isdir(os.path.join(args.fixture_dir, "model")):
        print(f"error: {args.fixture_dir}: no model/ fixture folder there", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda: no CUDA device is available", file=sys.stderr)
        return 2
    try:
        fasts = fast_paths(args.amp, device, cuda_graphs=not args.no_graphs)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    passed = failed = 0
    notes: list[str] = []
    for r in cases(args.fixture_dir, device, fasts, notes):
        print(r.line(), flush=True)
        passed, failed = passed + r.passed, failed + (not r.passed)
    for n in notes:
        print(f"# {n}")
    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 and passed > 0 else 1
