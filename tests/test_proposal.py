"""Anchors, rpn_inv_normalize, box transforms and the Proposal op: MXNet fixtures plus constructed cases."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from dff.models.rpn import generate_anchors, proposal, rpn_inv_normalize, shifted_anchors
from dff.ops.boxes import bbox_overlaps, bbox_pred, clip_boxes, nms_sorted, nonlinear_transform
from dff.parity import ops_proposal

PROPOSAL_FILES = ["proposal_A_15x25", "proposal_B_38x63", "proposal_C_6x8", "proposal_D_minsize16",
                  "proposal_E_multi_batch2"]
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _t(a) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a, dtype=np.float32))


# ------------------------------------------------------------------------------------------------ anchors
def test_generate_anchors_matches_spec_table():
    # docs/design.md §1.5, written out by hand there: ratio-major, scale-minor
    expected = [(-84, -40, 99, 55), (-176, -88, 191, 103), (-360, -184, 375, 199),
                (-56, -56, 71, 71), (-120, -120, 135, 135), (-248, -248, 263, 263),
                (-36, -80, 51, 95), (-80, -168, 95, 183), (-168, -344, 183, 359)]
    a = generate_anchors(16, (0.5, 1, 2), (8, 16, 32))
    assert a.dtype == np.float32 and a.shape == (9, 4)
    np.testing.assert_array_equal(a, np.array(expected, dtype=np.float32))


def test_generate_anchors_rounds_half_up():
    # ratio 0.5, scale 1: sqrt(512)=22.6 -> 23, then h = floor(23*0.5 + 0.5) = 12 (11.5 rounds up)
    a = generate_anchors(16, (0.5,), (1,))
    np.testing.assert_array_equal(a, np.array([[7.5 - 11, 7.5 - 5.5, 7.5 + 11, 7.5 + 5.5]], np.float32))


def test_shifted_anchors_order_y_x_a():
    base = generate_anchors()
    h, w, stride = 3, 4, 16
    anc = shifted_anchors(h, w, stride, base)
    assert anc.shape == (h * w * 9, 4)
    for y in range(h):
        for x in range(w):
            for a in range(9):
                row = anc[y * w * 9 + x * 9 + a].numpy()
                np.testing.assert_array_equal(row, base[a] + stride * np.array([x, y, x, y], np.float32))


# ------------------------------------------------------------------------------------------ inv normalise
def test_rpn_inv_normalize_fixture(reference_dir):
    d = np.load(reference_dir / "ops" / "rpn_inv_normalize.npz")
    out = rpn_inv_normalize(torch.from_numpy(d["bbox_pred"]), d["bbox_mean"].tolist(), d["bbox_std"].tolist())
    np.testing.assert_allclose(out.numpy(), d["out"], rtol=0, atol=1e-6)


def test_rpn_inv_normalize_channel_layout():
    x = torch.ones(1, 8, 2, 3)
    out = rpn_inv_normalize(x, (1, 2, 3, 4), (10, 20, 30, 40))
    # channel 4a+k -> 1*std[k] + mean[k], for both anchors a = 0, 1
    for a in range(2):
        for k in range(4):
            assert torch.all(out[0, 4 * a + k] == (10 * (k + 1) + (k + 1)))
    with pytest.raises(ValueError, match="bbox_pred"):
        rpn_inv_normalize(torch.ones(1, 6, 2, 2), (0,) * 4, (1,) * 4)


# ------------------------------------------------------------------------------------------- box algebra
def test_bbox_overlaps_plus_one():
    a = _t([[0, 0, 9, 9]])
    q = _t([[0, 0, 9, 9], [10, 0, 19, 9], [9, 0, 18, 9], [0, 0, 9, 4]])
    iou = bbox_overlaps(a, q)[0].tolist()
    # touching at x=9/10 shares no pixel; overlapping one column shares 10 pixels of 100 + 100 - 10
    assert iou == pytest.approx([1.0, 0.0, 10 / 190, 0.5], abs=1e-7)
    # zero-area (+1) boxes give 0, not NaN
    z = _t([[5, 5, 4, 4]])
    assert bbox_overlaps(z, z).item() == 0.0


def test_bbox_pred_plus_one_and_roundtrip():
    boxes = torch.tensor([[0.0, 0.0, 9.0, 9.0]], dtype=torch.float64)
    deltas = torch.tensor([[0.0, 0.0, math.log(2.0), math.log(2.0)]], dtype=torch.float64)
    # w = 10, ctr = 4.5, pred_w = 20 -> x1 = 4.5 - 9.5, x2 = 4.5 + 9.5 (the +1 convention)
    assert bbox_pred(boxes, deltas)[0].tolist() == pytest.approx([-5.0, -5.0, 14.0, 14.0])
    rng = np.random.RandomState(0)
    ex = rng.uniform(0, 100, (50, 2))
    ex = torch.from_numpy(np.hstack([ex, ex + rng.uniform(1, 80, (50, 2))]))
    gt = rng.uniform(0, 100, (50, 2))
    gt = torch.from_numpy(np.hstack([gt, gt + rng.uniform(1, 80, (50, 2))]))
    back = bbox_pred(ex, nonlinear_transform(ex, gt))
    np.testing.assert_allclose(back.numpy(), gt.numpy(), atol=1e-9)


def test_clip_boxes():
    b = torch.tensor([[-3.0, -1.0, 500.0, 300.0, 5.0, 6.0, 7.0, 8.0]])
    np.testing.assert_array_equal(clip_boxes(b, (225, 400)).numpy(), [[0, 0, 399, 224, 5, 6, 7, 8]])


# ---------------------------------------------------------------------------------------------------- NMS
def _mxnet_nms(boxes: np.ndarray, thresh: float, post: int) -> list[int]:
    """Literal transcription of MXNet's CPU ``NonMaximumSuppression`` (float32, stops at ``post`` keeps)."""
    f = np.float32
    b = boxes.astype(f)
    area = (b[:, 2] - b[:, 0] + f(1)) * (b[:, 3] - b[:, 1] + f(1))
    suppressed = np.zeros(len(b), bool)
    keep: list[int] = []
    for i in range(len(b)):
        if len(keep) >= post:
            break
        if suppressed[i]:
            continue
        keep.append(i)
        for j in range(i + 1, len(b)):
            if suppressed[j]:
                continue
            w = max(f(0), min(b[i, 2], b[j, 2]) - max(b[i, 0], b[j, 0]) + f(1))
            h = max(f(0), min(b[i, 3], b[j, 3]) - max(b[i, 1], b[j, 1]) + f(1))
            inter = f(w * h)
            if inter / (area[i] + area[j] - inter) > f(thresh):
                suppressed[j] = True
    return keep


@pytest.mark.parametrize("max_keep,chunk", [(None, 0), (40, 0), (40, 7), (500, 0), (1, 0)])
def test_nms_sorted_matches_mxnet_loop(max_keep, chunk):
    rng = np.random.RandomState(7)
    # clusters of jittered boxes so that many suppressions happen, in a fixed priority order
    centres = rng.uniform(0, 300, (25, 2)).repeat(12, axis=0) + rng.normal(0, 4, (300, 2))
    size = rng.uniform(10, 60, (300, 2))
    boxes = np.hstack([centres, centres + size]).astype(np.float32)
    got = nms_sorted(torch.from_numpy(boxes), 0.5, max_keep=max_keep, chunk=chunk).tolist()
    exp = _mxnet_nms(boxes, 0.5, max_keep if max_keep is not None else len(boxes))
    assert got == exp
    assert 25 <= len(_mxnet_nms(boxes, 0.5, 10 ** 6)) < 300  # the data really suppresses


def test_nms_strict_at_threshold():
    # IoU (+1 areas) of these two is exactly 50 / 100 = 0.5
    boxes = _t([[0, 0, 9, 9], [0, 0, 9, 4]])
    assert nms_sorted(boxes, 0.5).tolist() == [0, 1]  # equal to the threshold: kept
    assert nms_sorted(boxes, 0.4999).tolist() == [0]
    # without the +1 the IoU would be 36/81 < 0.45: must still be suppressed at 0.45
    assert nms_sorted(boxes, 0.45).tolist() == [0]


# --------------------------------------------------------------------------------- Proposal: fixtures
@pytest.mark.parametrize("stem", PROPOSAL_FILES)
def test_proposal_fixture(reference_dir, stem):
    summary = json.loads((reference_dir / "ops" / "ops_summary.json").read_text())
    rows = list(ops_proposal._ops_proposal_case(str(reference_dir / "ops" / f"{stem}.npz"), summary))
    assert len(rows) == 2 * len(summary[stem]["ops"])
    bad = [r.line() for r in rows if not r.passed]
    assert not bad, bad


@pytest.mark.parametrize("run", sorted(ops_proposal.MODEL_RUNS))
def test_proposal_on_model_rpn_outputs(reference_dir, run):
    rows = [r for r in ops_proposal._model_cases(str(reference_dir), run, ops_proposal.MODEL_RUNS[run])
            if "postprocess" not in r.case]
    assert {r.case.rsplit("/", 1)[1] for r in rows} == {"proposal_isolated", "rpn_inv_normalize_isolated"}
    bad = [r.line() for r in rows if not r.passed]
    assert not bad, bad


@pytest.mark.parametrize("run", ["rfcn_frame0", "dff_cur_frame1"])
def test_model_ties_need_the_stable_sort(reference_dir, run, monkeypatch):
    """The model fixtures have tied RPN scores (README section 7: flow pointing outside the map, and the
    masked last row at -1, some of which NMS keeps). Ordering the ties the other way round must break
    the match, so the fixture comparison really checks the stable tie order."""
    d = np.load(reference_dir / "model" / f"{run}.npz")
    args = (torch.from_numpy(d["rpn_cls_prob_reshape_output"]), torch.from_numpy(d["rpn_bbox_pred_inv_normalized"]),
            torch.tensor([[225.0, 400.0, 0.3125]]))
    assert np.abs(proposal(*args).numpy() - d["rois_output"]).max() < 1e-3
    stable_sort = torch.sort

    def reversed_ties(x, dim=-1, descending=False, stable=False):
        # descending order with ties in *decreasing* index order: what an unstable sort may produce
        r = stable_sort(x.flip(0), descending=descending, stable=True)
        return torch.return_types.sort((r.values, x.shape[0] - 1 - r.indices))

    monkeypatch.setattr(torch, "sort", reversed_ties)
    assert np.abs(proposal(*args).numpy() - d["rois_output"]).max() > 1.0


# --------------------------------------------------------------------------- Proposal: constructed cases
def _maps(feat_h: int, feat_w: int, fg: np.ndarray, deltas: np.ndarray | None = None):
    """cls_prob (1, 18, h, w) with foreground ``fg`` given in flattened (y, x, a) order."""
    fg = np.asarray(fg, np.float32).reshape(feat_h, feat_w, 9).transpose(2, 0, 1)
    cls = np.concatenate([1 - fg, fg])[None]
    if deltas is None:
        deltas = np.zeros((feat_h, feat_w, 9, 4), np.float32)
    bbox = np.asarray(deltas, np.float32).reshape(feat_h, feat_w, 9, 4).transpose(2, 3, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(cls)), torch.from_numpy(
        np.ascontiguousarray(bbox.reshape(1, 36, feat_h, feat_w)))


def test_stable_tie_order():
    # all scores tied, nothing suppressed (IoU > 1 never happens): output = anchors in flattened order
    h, w = 4, 5
    cls, bbox = _maps(h, w, np.full(h * w * 9, 0.5))
    info = torch.tensor([[1000.0, 1000.0, 1.0]])
    rois, scores = proposal(cls, bbox, info, nms_threshold=1.0, post_nms_top_n=60, output_score=True)
    anchors = shifted_anchors(h, w, 16, generate_anchors())
    expected = clip_boxes(anchors[:60], (1000, 1000))
    np.testing.assert_array_equal(rois[:, 1:].numpy(), expected.numpy())
    assert torch.all(scores == 0.5)


def test_cyclic_padding_and_pre_larger_than_count():
    # 1x1 map: 9 anchors < pre_nms_top_n=6000 and < post=300 -> the 9 keeps repeat keep[i % 9]
    fg = np.linspace(0.9, 0.1, 9)[[3, 0, 8, 1, 7, 2, 6, 4, 5]]
    cls, bbox = _maps(1, 1, fg)
    info = torch.tensor([[1000.0, 1000.0, 1.0]])
    rois, scores = proposal(cls, bbox, info, nms_threshold=1.0, output_score=True)
    assert rois.shape == (300, 5) and scores.shape == (300, 1)
    order = np.argsort(-fg, kind="stable")
    anchors = clip_boxes(torch.from_numpy(generate_anchors()), (1000, 1000)).numpy()
    for i in range(300):
        np.testing.assert_array_equal(rois[i, 1:].numpy(), anchors[order[i % 9]])
        assert scores[i, 0].item() == pytest.approx(fg[order[i % 9]])
    assert torch.all(rois[:, 0] == 0)
    # pre < post: at most `pre` distinct boxes, still post rows (MXNet's declared output shape)
    rois5 = proposal(cls, bbox, info, nms_threshold=1.0, pre_nms_top_n=4)
    assert rois5.shape == (300, 5)
    for i in range(300):
        np.testing.assert_array_equal(rois5[i, 1:].numpy(), anchors[order[i % 4]])


def test_nms_inside_proposal_is_strict_and_stops_at_post():
    # 1x1 map, deltas 0: anchor 3 (128x128) and anchor 4 (256x256) share the centre; IoU = 128^2/256^2
    fg = np.array([0.1, 0.2, 0.3, 0.9, 0.8, 0.05, 0.04, 0.03, 0.02])
    info = torch.tensor([[2000.0, 2000.0, 1.0]])
    anchors = generate_anchors()
    # move the boxes well inside the image so that clipping does not change them; 600/128 and 600/256
    # are exact, so anchors 3 and 4 stay exactly concentric
    off = np.array([600, 600, 600, 600], np.float32)
    deltas = np.zeros((9, 4), np.float32)
    deltas[:, 0] = off[0] / (anchors[:, 2] - anchors[:, 0] + 1)
    deltas[:, 1] = off[1] / (anchors[:, 3] - anchors[:, 1] + 1)
    cls, bbox = _maps(1, 1, fg, deltas)
    rois = proposal(cls, bbox, info, nms_threshold=0.25, post_nms_top_n=2)
    # IoU(3, 4) = 16384/65536 = 0.25 exactly: equal to the threshold, so 4 is kept
    assert rois.shape == (2, 5)
    np.testing.assert_allclose(rois[:, 1:].numpy(), anchors[[3, 4]] + off, atol=1e-3)
    rois = proposal(cls, bbox, info, nms_threshold=0.2499, post_nms_top_n=2)
    np.testing.assert_allclose(rois[:, 1:].numpy(), anchors[[3, 2]] + off, atol=1e-3)


def test_last_row_and_column_masked():
    # 2x2 map over a 20x20 image: int(20/16) = 1, so row 1 and column 1 are padding
    fg = np.full((2, 2, 9), 0.9, np.float32)
    fg[0, 0] = np.linspace(0.5, 0.1, 9)
    cls, bbox = _maps(2, 2, fg.reshape(-1))
    info = torch.tensor([[20.0, 20.0, 1.0]])
    rois, scores = proposal(cls, bbox, info, nms_threshold=1.0, post_nms_top_n=36, output_score=True)
    np.testing.assert_allclose(scores[:9, 0].numpy(), np.linspace(0.5, 0.1, 9), rtol=1e-6)
    assert torch.all(scores[9:] == -1)
    # the -1 boxes follow in flattened order (stable): cells (0,1), (1,0), (1,1)
    anchors = clip_boxes(shifted_anchors(2, 2, 16, generate_anchors()), (20, 20))
    np.testing.assert_array_equal(rois[9:, 1:].numpy(), anchors[9:].numpy())
    # a 32x32 image fills the 2x2 map exactly: nothing is masked
    _, s32 = proposal(cls, bbox, torch.tensor([[32.0, 32.0, 1.0]]), nms_threshold=1.0, post_nms_top_n=36,
                      output_score=True)
    assert torch.all(s32 > 0)


def test_min_size_flags_and_expands():
    fg = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1], np.float32)
    anchors = generate_anchors()
    deltas = np.zeros((9, 4), np.float32)
    # anchor 0 -> a box of (+1) width/height 10: exp(d) * (184, 96) = 10, centred well inside
    deltas[0, 0] = 500 / 184
    deltas[0, 1] = 500 / 96
    deltas[0, 2] = math.log(10 / 184)
    deltas[0, 3] = math.log(10 / 96)
    cls, bbox = _maps(1, 1, fg, deltas)
    # centre 7.5 + 500 = 507.5, width 10 -> [503, 512]
    small = np.array([503.0, 503.0, 512.0, 512.0])
    for scale, flagged in [(1.0, True), (0.5, False)]:  # threshold 16 * scale = 16 or 8
        info = torch.tensor([[2000.0, 2000.0, scale]])
        rois, scores = proposal(cls, bbox, info, min_size=16, nms_threshold=1.0, post_nms_top_n=9,
                                output_score=True)
        if flagged:
            # score -1 sorts it last; grown by min_size*scale/2 = 8 per side
            assert scores[8, 0].item() == -1 and torch.all(scores[:8] > 0)
            np.testing.assert_allclose(rois[8, 1:].numpy(), small + [-8, -8, 8, 8], atol=1e-3)
        else:
            assert scores[0, 0].item() == pytest.approx(0.9)
            np.testing.assert_allclose(rois[0, 1:].numpy(), small, atol=1e-3)
    # the other anchors (all larger than 16) are untouched
    assert np.all(anchors[1:, 2] - anchors[1:, 0] + 1 >= 16)


def test_multi_image_batch_index_and_independence(reference_dir):
    d = np.load(reference_dir / "ops" / "proposal_E_multi_batch2.npz")
    cls, bbox, info = (torch.from_numpy(d[k]) for k in ("cls_prob", "bbox_pred", "im_info"))
    both = proposal(cls, bbox, info)
    assert torch.all(both[:300, 0] == 0) and torch.all(both[300:, 0] == 1)
    second = proposal(cls[1:], bbox[1:], info[1:])
    np.testing.assert_array_equal(both[300:, 1:].numpy(), second[:, 1:].numpy())


@pytest.mark.parametrize("device", DEVICES)
def test_proposal_device_agnostic(reference_dir, device):
    d = np.load(reference_dir / "ops" / "proposal_B_38x63.npz")
    cls, bbox, info = (torch.from_numpy(d[k]).to(device) for k in ("cls_prob", "bbox_pred", "im_info"))
    rois, scores = proposal(cls, bbox, info, output_score=True)
    assert rois.device.type == device and rois.dtype == torch.float32
    np.testing.assert_allclose(rois.cpu().numpy(), d["Proposal_rois"], atol=1e-3, rtol=0)
    np.testing.assert_array_equal(scores.cpu().numpy(), d["Proposal_scores"])


def test_proposal_no_grad_and_bad_input():
    cls, bbox = _maps(2, 2, np.full(36, 0.5))
    cls.requires_grad_(True)
    rois = proposal(cls, bbox, torch.tensor([[32.0, 32.0, 1.0]]))
    assert not rois.requires_grad
    with pytest.raises(ValueError, match="bbox_pred"):
        proposal(cls.detach(), bbox[:, :32], torch.tensor([[32.0, 32.0, 1.0]]))
    with pytest.raises(ValueError, match="im_info"):
        proposal(cls.detach(), bbox, torch.tensor([32.0, 32.0, 1.0]))
