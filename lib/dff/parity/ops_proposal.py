"""Parity of the proposal stage and the test-time post-processing, each in isolation.

* ``ops/proposal_*.npz``: ``Proposal`` / ``MultiProposal`` rois and scores (parameters per case from
  ``ops/ops_summary.json``).
* ``ops/rpn_inv_normalize.npz``.
* ``model/{rfcn_frame*,dff_key_frame0,dff_cur_frame*}.npz``: Proposal on the stored RPN outputs,
  ``rpn_inv_normalize`` of the stored raw deltas, and ``im_detect`` + ``pred_eval`` post-processing on
  the stored ``rois_output`` / ``cls_prob`` / ``bbox_pred`` (README section 7: test each stage on the
  stored inputs so that float drift upstream cannot flip a discrete decision).

No custom operators are involved, so ``backend`` is ignored.
"""
from __future__ import annotations

import glob
import json
import os
from typing import Callable, Iterator

import numpy as np
import torch

from dff.engine.postprocess import dets_to_rows, im_detect_boxes, pred_eval_frame
from dff.models.rpn import proposal, rpn_inv_normalize
from dff.parity import TOL_BOX, TOL_EXACT, TOL_PROB, Result, compare

# README section 3: the model fixtures' config (rfcn_vid_demo / dff_rfcn_vid_demo) and pred_eval call
MODEL_PROPOSAL = dict(feature_stride=16, scales=(8, 16, 32), ratios=(0.5, 1, 2), pre_nms_top_n=6000,
                      post_nms_top_n=300, nms_threshold=0.7, min_size=0)
MODEL_ANCHOR_MEANS = (0.0, 0.0, 0.0, 0.0)
MODEL_ANCHOR_STDS = (0.1, 0.1, 0.4, 0.4)
MODEL_THRESH, MODEL_NMS, MODEL_MAX_PER_IMAGE = 1e-4, 0.3, 300
# model run -> the input frame whose im_info it used
MODEL_RUNS = {"rfcn_frame0": 0, "rfcn_frame1": 1, "dff_key_frame0": 0, "dff_cur_frame1": 1, "dff_cur_frame2": 2}


def _guard(case: str, fn: Callable[[], Iterator[Result]]) -> Iterator[Result]:
    """Run one case; an exception becomes a FAIL row instead of ending the whole area."""
    try:
        yield from fn()
    except Exception as e:  # noqa: BLE001 - reported as a failed row
        yield Result(case, "run", note=f"error: {type(e).__name__}: {e}")


def _proposal_params(summary: dict, stem: str) -> dict:
    entry = summary.get(stem)
    if entry is None or "params" not in entry:
        raise KeyError(f"ops/ops_summary.json has no params for {stem}")
    p = entry["params"]
    return dict(feature_stride=int(p["feature_stride"]), scales=tuple(p["scales"]), ratios=tuple(p["ratios"]),
                pre_nms_top_n=int(p["rpn_pre_nms_top_n"]), post_nms_top_n=int(p["rpn_post_nms_top_n"]),
                nms_threshold=float(p["threshold"]), min_size=float(p["rpn_min_size"]))


def _ops_proposal_case(path: str, summary: dict) -> Iterator[Result]:
    stem = os.path.splitext(os.path.basename(path))[0]
    d = np.load(path)
    params = _proposal_params(summary, stem)
    ops = [op for op in summary[stem].get("ops", ["Proposal", "MultiProposal"]) if f"{op}_rois" in d.files]
    if not ops:
        yield Result(f"ops/{stem}", "rois", note="MISSING: no <Op>_rois key")
        return
    rois, scores = proposal(torch.from_numpy(d["cls_prob"]), torch.from_numpy(d["bbox_pred"]),
                            torch.from_numpy(d["im_info"]), output_score=True, **params)
    for op in ops:
        case = f"ops/{stem}/{op}"
        # Proposal (batch 1) and MultiProposal are the same algorithm; one run serves both
        yield compare(case, "rois", rois, d[f"{op}_rois"], **TOL_BOX)
        if f"{op}_scores" in d.files:
            yield compare(case, "scores", scores, d[f"{op}_scores"], **TOL_EXACT)


def _ops_inv_normalize_case(path: str) -> Iterator[Result]:
    d = np.load(path)
    out = rpn_inv_normalize(torch.from_numpy(d["bbox_pred"]), d["bbox_mean"].tolist(), d["bbox_std"].tolist())
    yield compare("ops/rpn_inv_normalize", "out", out, d["out"], **TOL_EXACT)


def _model_cases(fixture_dir: str, run: str, frame: int) -> Iterator[Result]:
    d = np.load(os.path.join(fixture_dir, "model", f"{run}.npz"))
    im_info = torch.from_numpy(np.load(os.path.join(fixture_dir, "model", f"inputs_frame{frame}.npz"))["im_info"])
    base = f"model/{run}"

    if "rpn_bbox_pred_output" in d.files and "rpn_bbox_pred_inv_normalized" in d.files:
        inv = rpn_inv_normalize(torch.from_numpy(d["rpn_bbox_pred_output"]), MODEL_ANCHOR_MEANS, MODEL_ANCHOR_STDS)
        yield compare(f"{base}/rpn_inv_normalize_isolated", "rpn_bbox_pred_inv_normalized", inv,
                      d["rpn_bbox_pred_inv_normalized"], **TOL_EXACT)

    if all(k in d.files for k in ("rpn_cls_prob_reshape_output", "rpn_bbox_pred_inv_normalized", "rois_output")):
        rois = proposal(torch.from_numpy(d["rpn_cls_prob_reshape_output"]),
                        torch.from_numpy(d["rpn_bbox_pred_inv_normalized"]), im_info, **MODEL_PROPOSAL)
        yield compare(f"{base}/proposal_isolated", "rois_output", rois, d["rois_output"], **TOL_BOX)

    if all(k in d.files for k in ("rois_output", "cls_prob_reshape_output", "bbox_pred_reshape_output")):
        case = f"{base}/postprocess_isolated"
        scores, boxes = im_detect_boxes(torch.from_numpy(d["rois_output"]),
                                        torch.from_numpy(d["cls_prob_reshape_output"]),
                                        torch.from_numpy(d["bbox_pred_reshape_output"]), im_info)
        if "im_detect_scores" in d.files:
            yield compare(case, "im_detect_scores", scores, d["im_detect_scores"], **TOL_PROB)
        if "im_detect_pred_boxes" in d.files:
            yield compare(case, "im_detect_pred_boxes", boxes, d["im_detect_pred_boxes"], **TOL_BOX)
        if "dets_cls_x1y1x2y2_score" in d.files:
            rows = dets_to_rows(pred_eval_frame(scores, boxes, MODEL_THRESH, MODEL_NMS, MODEL_MAX_PER_IMAGE))
            # a different row count (a flipped NMS / threshold decision) is a shape mismatch -> FAIL
            yield compare(case, "dets_cls_x1y1x2y2_score", rows, d["dets_cls_x1y1x2y2_score"], **TOL_BOX)


def cases(fixture_dir: str, backend: str) -> Iterator[Result]:
    """Result rows for the proposal / post-processing fixtures found under ``fixture_dir``."""
    del backend  # no custom operators here
    ops_dir = os.path.join(fixture_dir, "ops")
    if os.path.isdir(ops_dir):
        summary_path = os.path.join(ops_dir, "ops_summary.json")
        summary: dict = {}
        if os.path.isfile(summary_path):
            with open(summary_path, "r", encoding="utf-8") as f:
                summary = json.load(f)
        for path in sorted(glob.glob(os.path.join(ops_dir, "proposal_*.npz"))):
            stem = os.path.splitext(os.path.basename(path))[0]
            yield from _guard(f"ops/{stem}", lambda p=path: _ops_proposal_case(p, summary))
        inv_path = os.path.join(ops_dir, "rpn_inv_normalize.npz")
        if os.path.isfile(inv_path):
            yield from _guard("ops/rpn_inv_normalize", lambda: _ops_inv_normalize_case(inv_path))
    for run, frame in MODEL_RUNS.items():
        if os.path.isfile(os.path.join(fixture_dir, "model", f"{run}.npz")):
            yield from _guard(f"model/{run}", lambda r=run, k=frame: _model_cases(fixture_dir, r, k))
