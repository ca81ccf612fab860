"""Full-model parity: R-FCN (``model/rfcn_frame*``) and DFF (``model/dff_*``) test networks.

Weights are regenerated with the fixtures' recipe from the parameter lists in ``model/*_params.json``
and loaded through the same MXNet-name mapping that loads real checkpoints, so this also checks the
mapping. Inputs come from ``model/inputs_frame*.npz``.
"""
from __future__ import annotations

import json
import os
import re
from typing import Iterator

import numpy as np
import torch

from dff.config import load_config
from dff.engine.postprocess import dets_to_rows, im_detect_boxes, pred_eval_frame
from dff.models.builder import build_model
from dff.ops import ops_backend
from dff.parity import TOL_BOX, TOL_FEATURE, TOL_PROB, Result, compare, not_implemented
from dff.utils.checkpoint import load_mxnet_checkpoint
from dff.utils.fixture_weights import make_param

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.realpath(__file__)))))
RFCN_CFG = os.path.join(REPO, "experiments", "rfcn", "cfgs", "rfcn_vid_demo.yaml")
DFF_CFG = os.path.join(REPO, "experiments", "dff_rfcn", "cfgs", "dff_rfcn_vid_demo.yaml")
# the fixtures' test threshold (README section 3: tester.pred_eval with thresh 1e-4)
FIXTURE_THRESH = 1e-4


def fixture_state(fixture_dir: str, params_json: str) -> dict[str, np.ndarray]:
    """``{'arg:NAME': array}`` regenerated from a ``*_params.json`` list (README section 2)."""

    with open(os.path.join(fixture_dir, "model", params_json), "r", encoding="utf-8") as f:
        entries = json.load(f)
    return {e["key"]: make_param(e["key"].split(":", 1)[1], e["shape"]) for e in entries}


def _frame_inputs(fixture_dir: str, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    d = np.load(os.path.join(fixture_dir, "model", f"inputs_frame{k}.npz"))
    return torch.from_numpy(d["data"]), torch.from_numpy(d["im_info"])


def _compare_outputs(case: str, out: dict, exp, im_info: torch.Tensor) -> Iterator[Result]:
    pairs = [
        ("feat_conv_3x3_relu_output", "feat", TOL_FEATURE),
        ("rpn_cls_prob_reshape_output", "rpn_cls_prob", TOL_PROB),
        ("rpn_bbox_pred_output", "rpn_bbox_pred", TOL_FEATURE),
        ("rpn_bbox_pred_inv_normalized", "rpn_bbox_pred_inv", TOL_FEATURE),
        ("rois_output", "rois", TOL_BOX),
        ("cls_score_reshape_output", "cls_score", TOL_FEATURE),
        ("cls_prob_reshape_output", "cls_prob", TOL_PROB),
        ("bbox_pred_reshape_output", "bbox_pred", TOL_FEATURE),
        ("Convolution5_output", "flow_raw", TOL_FEATURE),
        ("_mulscalar0_output", "flow", TOL_FEATURE),
        ("Convolution5_scale_output", "scale", TOL_FEATURE),
        ("warping_feat_output", "warped", TOL_FEATURE),
        ("_mul0_output", "feat", TOL_FEATURE),
    ]
    for key, name, tol in pairs:
        if key in exp.files and name in out:
            yield compare(case, key, out[name], exp[key], **tol)
    scores, boxes = im_detect_boxes(out["rois"], out["cls_prob"], out["bbox_pred"], im_info)
    if "im_detect_scores" in exp.files:
        yield compare(case, "im_detect_scores", scores, exp["im_detect_scores"], **TOL_PROB)
    if "im_detect_pred_boxes" in exp.files:
        # TOL_BOX is in pixels of the network input, as the rois it is checked on; im_detect divides the boxes by
        # the image scale, which scales a difference the rois are allowed by 1 / scale as well
        scale = float(im_info.reshape(-1)[2])
        yield compare(case, "im_detect_pred_boxes", boxes, exp["im_detect_pred_boxes"],
                      **dict(TOL_BOX, atol=TOL_BOX["atol"] / scale))
    if "dets_cls_x1y1x2y2_score" in exp.files:
        dets = pred_eval_frame(scores, boxes, FIXTURE_THRESH)
        rows = dets_to_rows(dets)
        yield compare(case, "dets_cls_x1y1x2y2_score", rows, exp["dets_cls_x1y1x2y2_score"], **TOL_BOX)


def _build(kind: str, fixture_dir: str):
    """The model of ``kind`` with the fixture weights, through the one builder."""
    cfg = load_config(RFCN_CFG if kind == "rfcn" else DFF_CFG)
    model = build_model(kind, cfg).eval()
    load_mxnet_checkpoint(model, fixture_state(fixture_dir, "rfcn_params.json" if kind == "rfcn" else "dff_all_params.json"))
    return model


def cases(fixture_dir: str, backend: str) -> Iterator[Result]:
    mdir = os.path.join(fixture_dir, "model")
    files = sorted(os.listdir(mdir)) if os.path.isdir(mdir) else []
    rfcn_frames = [f for f in files if re.fullmatch(r"rfcn_frame\d+\.npz", f)]
    dff_key = [f for f in files if re.fullmatch(r"dff_key_frame\d+\.npz", f)]
    dff_cur = [f for f in files if re.fullmatch(r"dff_cur_frame\d+\.npz", f)]
    with ops_backend(backend), torch.no_grad():
        if rfcn_frames:
            try:
                model = _build("rfcn", fixture_dir)
            except Exception as e:  # a failure to build is one failed row per case, not a crash
                for f in rfcn_frames:
                    yield Result(f"model/{f[:-4]}", "build", note=f"error: {e}")
                model = None
            for f in rfcn_frames if model is not None else []:
                k = int(re.findall(r"\d+", f)[-1])
                data, im_info = _frame_inputs(fixture_dir, k)
                out = model(data, im_info)
                yield from _compare_outputs(f"model/{f[:-4]}", out, np.load(os.path.join(mdir, f)), im_info)
        if dff_key or dff_cur:
            try:
                model = _build("dff", fixture_dir)
            except ImportError:
                for f in dff_key + dff_cur:
                    yield not_implemented(f"model/{f[:-4]}")
                return
            except Exception as e:
                for f in dff_key + dff_cur:
                    yield Result(f"model/{f[:-4]}", "build", note=f"error: {e}")
                return
            key_feat = key_data = None
            for f in dff_key:
                k = int(re.findall(r"\d+", f)[-1])
                data, im_info = _frame_inputs(fixture_dir, k)
                out = model(data, im_info)
                exp = np.load(os.path.join(mdir, f))
                # the cur fixtures were run on the key feature MXNet stored, not on ours (README section 3)
                key_feat, key_data = torch.from_numpy(exp["feat_conv_3x3_relu_output"]), data
                yield from _compare_outputs(f"model/{f[:-4]}", out, exp, im_info)
            for f in dff_cur:
                k = int(re.findall(r"\d+", f)[-1])
                exp = np.load(os.path.join(mdir, f))
                data, im_info = _frame_inputs(fixture_dir, k)
                if key_feat is None:
                    yield Result(f"model/{f[:-4]}", "key_frame", note="no dff_key_frame fixture to warp from")
                    continue
                prop = model.propagate(data, key_data, key_feat, parts=True)
                out = {**model.detect(prop["feat"], im_info), **prop}
                yield from _compare_outputs(f"model/{f[:-4]}", out, exp, im_info)
