"""Test-time post-processing (im_detect box decoding, pred_eval NMS / cap): fixtures and constructed cases."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dff.engine.postprocess import (
    dets_to_rows,
    im_detect,
    im_detect_boxes,
    im_detect_pred_boxes,
    pred_eval_fixed,
    pred_eval_frame,
)
from dff.ops import _ext, ops_backend
from dff.parity import ops_proposal

BACKENDS = ["fallback", pytest.param("compiled", marks=pytest.mark.skipif(
    not _ext.compiled_available(), reason="compiled operators not built"))]


def _fixed_rows(*args, **kwargs) -> torch.Tensor:
    """:func:`pred_eval_fixed`'s rows without the filler."""
    rows, count = pred_eval_fixed(*args, **kwargs)
    return rows[:int(count)]


# ------------------------------------------------------------------------------------------------ fixtures
@pytest.mark.parametrize("run", sorted(ops_proposal.MODEL_RUNS))
def test_postprocess_on_stored_head_outputs(reference_dir, run):
    rows = [r for r in ops_proposal._model_cases(str(reference_dir), run, ops_proposal.MODEL_RUNS[run])
            if r.case.endswith("postprocess_isolated")]
    assert [r.tensor for r in rows] == ["im_detect_scores", "im_detect_pred_boxes", "dets_cls_x1y1x2y2_score"]
    bad = [r.line() for r in rows if not r.passed]
    assert not bad, bad


def test_fixture_dets_hit_the_cap(reference_dir):
    """rfcn_frame0 has more than 300 candidates after NMS, so its fixture exercises max_per_image."""
    d = np.load(reference_dir / "model" / "rfcn_frame0.npz")
    info = torch.tensor([[225.0, 400.0, 0.3125]])
    scores, boxes = im_detect(torch.from_numpy(d["rois_output"]), torch.from_numpy(d["cls_prob_reshape_output"]),
                              torch.from_numpy(d["bbox_pred_reshape_output"]), info)
    uncapped = dets_to_rows(pred_eval_frame(scores, boxes, 1e-4, max_per_image=0))
    capped = dets_to_rows(pred_eval_frame(scores, boxes, 1e-4))
    assert uncapped.shape[0] > 300 and capped.shape == d["dets_cls_x1y1x2y2_score"].shape


# ---------------------------------------------------------------------- independent NumPy transcription
def _np_bbox_pred(boxes, deltas):
    boxes = boxes.astype(np.float64)
    w = boxes[:, 2] - boxes[:, 0] + 1.0
    h = boxes[:, 3] - boxes[:, 1] + 1.0
    cx = boxes[:, 0] + 0.5 * (w - 1.0)
    cy = boxes[:, 1] + 0.5 * (h - 1.0)
    pcx = deltas[:, 0::4] * w[:, None] + cx[:, None]
    pcy = deltas[:, 1::4] * h[:, None] + cy[:, None]
    pw = np.exp(deltas[:, 2::4]) * w[:, None]
    ph = np.exp(deltas[:, 3::4]) * h[:, None]
    out = np.zeros(deltas.shape)
    out[:, 0::4], out[:, 1::4] = pcx - 0.5 * (pw - 1.0), pcy - 0.5 * (ph - 1.0)
    out[:, 2::4], out[:, 3::4] = pcx + 0.5 * (pw - 1.0), pcy + 0.5 * (ph - 1.0)
    return out


def _np_py_nms(dets, thresh):
    x1, y1, x2, y2, scores = dets.T
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size > 0:
        i = order[0]
        keep.append(i)
        w = np.maximum(0.0, np.minimum(x2[i], x2[order[1:]]) - np.maximum(x1[i], x1[order[1:]]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[order[1:]]) - np.maximum(y1[i], y1[order[1:]]) + 1)
        inter = w * h
        ovr = inter / (areas[i] + areas[order[1:]] - inter)
        order = order[np.where(ovr <= thresh)[0] + 1]
    return keep


def _np_pred_eval(rois, cls_prob, bbox_deltas, im_hw, scale, thresh, nms, max_per_image):
    boxes = _np_bbox_pred(rois, bbox_deltas)
    boxes[:, 0::2] = np.maximum(np.minimum(boxes[:, 0::2], im_hw[1] - 1), 0)
    boxes[:, 1::2] = np.maximum(np.minimum(boxes[:, 1::2], im_hw[0] - 1), 0)
    boxes = boxes / scale
    all_boxes = [np.zeros((0, 5))]
    for j in range(1, cls_prob.shape[1]):
        idx = np.where(cls_prob[:, j] > thresh)[0]
        dets = np.hstack((boxes[idx, 4:8], cls_prob[idx, j, None]))
        all_boxes.append(dets[_np_py_nms(dets, nms), :])
    image_scores = np.hstack([b[:, -1] for b in all_boxes[1:]])
    if len(image_scores) > max_per_image:
        t = np.sort(image_scores)[-max_per_image]
        all_boxes = [all_boxes[0]] + [b[b[:, -1] >= t] for b in all_boxes[1:]]
    return boxes, all_boxes


@pytest.mark.parametrize("max_per_image", [40, 10 ** 6])
def test_matches_numpy_transcription(max_per_image):
    rng = np.random.RandomState(11)
    n, c = 120, 6
    xy = rng.uniform(0, 150, (n, 2)).astype(np.float32)
    rois = np.hstack([np.zeros((n, 1)), xy, xy + rng.uniform(5, 90, (n, 2))]).astype(np.float32)
    deltas = (rng.normal(0, 0.3, (n, 8))).astype(np.float32)
    logits = rng.normal(0, 2, (n, c))
    prob = (np.exp(logits) / np.exp(logits).sum(1, keepdims=True)).astype(np.float32)
    im_info = np.array([[200.0, 240.0, 0.5]], np.float32)
    exp_boxes, exp_dets = _np_pred_eval(rois[:, 1:], prob, deltas, (200, 240), 0.5, 0.05, 0.3, max_per_image)
    scores, boxes = im_detect(torch.from_numpy(rois), torch.from_numpy(prob[None]), torch.from_numpy(deltas[None]),
                              torch.from_numpy(im_info))
    # not bit-exact: torch's and NumPy's float32 exp differ by an ulp now and then (~1e-5 px here)
    np.testing.assert_allclose(boxes.numpy(), exp_boxes, rtol=0, atol=1e-4)
    dets = pred_eval_frame(scores, boxes, 0.05, 0.3, max_per_image)
    assert len(dets) == c and dets[0].shape == (0, 5)
    for j in range(1, c):
        assert dets[j].shape == exp_dets[j].shape
        np.testing.assert_allclose(dets[j].numpy(), exp_dets[j], rtol=0, atol=1e-4)
    total = sum(d.shape[0] for d in exp_dets)
    if max_per_image == 40:
        assert total == 40  # the cap was active (no ties in random scores)
    else:
        assert total > 40


# ----------------------------------------------------------------------------------- constructed cases
def test_im_detect_pred_boxes_decode_clip_scale():
    rois = torch.tensor([[0.0, 10.0, 20.0, 49.0, 59.0]])
    # background slot is garbage; the foreground slot (4:8) is what pred_eval uses
    deltas = torch.tensor([[[9.0, 9.0, 9.0, 9.0, 0.1, -0.1, math.log(2.0), 0.0]]])
    boxes = im_detect_pred_boxes(rois, deltas, torch.tensor([[100.0, 70.0, 0.5]]))
    assert boxes.dtype == torch.float64 and boxes.shape == (1, 8)
    # w = h = 40, centre (29.5, 39.5) -> x: centre 33.5, width 80 -> [-6, 73] -> clip [0, 69]; y: [16, 55]
    np.testing.assert_allclose(boxes[0, 4:].numpy(), np.array([0.0, 16.0, 69.0, 55.0]) / 0.5, atol=1e-5)
    # every column is clipped, the background slot as well
    assert boxes[0, 0:4].tolist() == [0.0, 0.0, 69 / 0.5, 99 / 0.5]
    # clipping uses the data shape when it differs from im_info (padded images)
    padded = im_detect_pred_boxes(rois, deltas, torch.tensor([[100.0, 70.0, 0.5]]), im_shape=(128, 128))
    assert padded[0, 6].item() == pytest.approx(73 / 0.5)


def _frame(scores, boxes4):
    """scores (R, C) float32, foreground boxes (R, 4) -> the (R, 8) class-agnostic layout."""
    b = torch.as_tensor(np.asarray(boxes4, np.float64))
    return torch.as_tensor(np.asarray(scores, np.float32)), torch.cat([torch.full_like(b, -7.0), b], dim=1)


def test_threshold_is_strict():
    scores, boxes = _frame([[0.5, 0.25], [0.5, 0.2500001], [0.5, 0.1]],
                           [[0, 0, 9, 9], [100, 100, 109, 109], [200, 200, 209, 209]])
    dets = pred_eval_frame(scores, boxes, 0.25)
    assert dets[1][:, 0].tolist() == [100.0]


def test_nms_keeps_iou_equal_to_threshold():
    # +1 areas: inner box 10x3 = 30 pixels inside the 10x10 one -> IoU 30/100 = 0.3 exactly
    scores, boxes = _frame([[0.1, 0.9], [0.1, 0.8]], [[0, 0, 9, 9], [0, 0, 9, 2]])
    assert pred_eval_frame(scores, boxes, 1e-4, nms_thresh=0.3)[1].shape[0] == 2
    assert pred_eval_frame(scores, boxes, 1e-4, nms_thresh=0.29)[1].shape[0] == 1
    # class-agnostic boxes come from columns 4:8, never from the background slot
    assert pred_eval_frame(scores, boxes, 1e-4)[1][:, :4].min().item() >= 0


def test_max_per_image_keeps_ties():
    # 3 classes x 2 well separated boxes; scores 0.9, 0.8, 0.5, 0.5, 0.4, 0.3; cap 3: the 3rd best is 0.5
    scores, boxes = _frame([[0.0, 0.9, 0.0, 0.0], [0.0, 0.5, 0.0, 0.0], [0.0, 0.0, 0.8, 0.0],
                            [0.0, 0.0, 0.0, 0.5], [0.0, 0.0, 0.0, 0.4], [0.0, 0.0, 0.3, 0.0]],
                           [[100 * i, 0, 100 * i + 9, 9] for i in range(6)])
    dets = pred_eval_frame(scores, boxes, 0.01, max_per_image=3)
    rows = dets_to_rows(dets)
    assert rows[:, 0].tolist() == [1, 1, 2, 3]
    assert rows[:, 5].tolist() == pytest.approx([0.9, 0.5, 0.8, 0.5])


@pytest.mark.parametrize("backend", BACKENDS)
def test_fixed_on_constructed_frames(backend):
    """pred_eval_fixed on the cases above: strict threshold, IoU == threshold kept, the cap's ties."""
    with ops_backend(backend):
        scores, boxes = _frame([[0.5, 0.25], [0.5, 0.2500001], [0.5, 0.1]],
                               [[0, 0, 9, 9], [100, 100, 109, 109], [200, 200, 209, 209]])
        assert _fixed_rows(scores, boxes, 0.25)[:, 1].tolist() == [100.0]
        scores, boxes = _frame([[0.1, 0.9], [0.1, 0.8]], [[0, 0, 9, 9], [0, 0, 9, 2]])
        assert _fixed_rows(scores, boxes, 1e-4, nms_thresh=0.3).shape[0] == 2
        assert _fixed_rows(scores, boxes, 1e-4, nms_thresh=0.29).shape[0] == 1
        scores, boxes = _frame([[0.0, 0.9, 0.0, 0.0], [0.0, 0.5, 0.0, 0.0], [0.0, 0.0, 0.8, 0.0],
                                [0.0, 0.0, 0.0, 0.5], [0.0, 0.0, 0.0, 0.4], [0.0, 0.0, 0.3, 0.0]],
                               [[100 * i, 0, 100 * i + 9, 9] for i in range(6)])
        rows, count = pred_eval_fixed(scores, boxes, 0.01, max_per_image=3)
        none, zero = pred_eval_fixed(torch.full((6, 4), 1e-5), boxes, 1e-4)  # nothing above the threshold
    assert none.shape == (6 * 3, 6) and zero.tolist() == [0]
    assert rows.shape == (6 * 3, 6) and count.tolist() == [4]  # fixed size, the count on the side
    assert rows[:4, 0].tolist() == [1, 1, 2, 3]
    assert rows[:4, 5].tolist() == pytest.approx([0.9, 0.5, 0.8, 0.5])


def test_dets_to_rows_layout():
    dets = [torch.zeros(0, 5, dtype=torch.float64),
            torch.tensor([[1.0, 2, 3, 4, 0.9], [5, 6, 7, 8, 0.2]], dtype=torch.float64),
            torch.zeros(0, 5, dtype=torch.float64),
            torch.tensor([[9.0, 9, 9, 9, 0.5]], dtype=torch.float64)]
    rows = dets_to_rows(dets)
    assert rows.tolist() == [[1, 1, 2, 3, 4, 0.9], [1, 5, 6, 7, 8, 0.2], [3, 9, 9, 9, 9, 0.5]]
    assert dets_to_rows([torch.zeros(0, 5)]).shape == (0, 6)


def test_duplicate_padded_rois_give_one_detection():
    # Proposal's cyclic padding repeats rois: identical boxes and scores, NMS keeps exactly one
    scores, boxes = _frame([[0.2, 0.8]] * 3, [[0, 0, 9, 9]] * 3)
    assert pred_eval_frame(scores, boxes, 1e-4)[1].shape == (1, 5)


def test_bad_input_messages():
    with pytest.raises(ValueError, match="rois"):
        im_detect_pred_boxes(torch.zeros(3, 3), torch.zeros(3, 8), torch.tensor([[10.0, 10.0, 1.0]]))
    with pytest.raises(ValueError, match="bbox_pred"):
        im_detect_pred_boxes(torch.zeros(3, 5), torch.zeros(2, 8), torch.tensor([[10.0, 10.0, 1.0]]))
    with pytest.raises(ValueError, match="cls_prob"):
        im_detect_boxes(torch.zeros(3, 5), torch.zeros(1, 2, 31), torch.zeros(3, 8), torch.tensor([[10.0, 10.0, 1.0]]))
    assert im_detect is im_detect_boxes
    with pytest.raises(ValueError, match="boxes"):
        pred_eval_frame(torch.zeros(3, 4), torch.zeros(3, 4), 0.1)


@pytest.mark.parametrize("fixture", ["rfcn_frame0", "rfcn_frame1", "dff_cur_frame1", "dff_cur_frame2"])
def test_one_call_rows_equal_the_reference_rows(reference_dir, fixture):
    """The engine's one-NMS post-processing on MXNet's own head outputs gives the fixture's detections."""
    d = np.load(reference_dir / "model" / f"{fixture}.npz")
    scores = torch.from_numpy(d["im_detect_scores"])
    boxes = torch.from_numpy(d["im_detect_pred_boxes"])
    rows = _fixed_rows(scores, boxes, 1e-4, 0.3, 300).numpy()
    exp = d["dets_cls_x1y1x2y2_score"]
    assert rows.shape == exp.shape
    np.testing.assert_array_equal(rows[:, 0], exp[:, 0])
    np.testing.assert_allclose(rows[:, 1:], exp[:, 1:], atol=1e-4, rtol=0)


def _random_frame(seed: int, class_agnostic: bool, ties: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """scores (300, 31) and boxes of a made-up frame, with Proposal's cyclic padding (exact duplicates)."""
    g = torch.Generator().manual_seed(seed)
    n, c = 300, 31
    scores = torch.softmax(3 * torch.randn(n, c, generator=g), dim=1)
    if ties:
        scores[::5, 1:4] = 0.125  # across rois and classes
    xy = 500 * torch.rand(n, 2, generator=g, dtype=torch.float64)
    box = torch.cat([xy, xy + 1 + 200 * torch.rand(n, 2, generator=g, dtype=torch.float64)], dim=1)
    box[250:], scores[250:] = box[:50], scores[:50]
    boxes = torch.cat([0.9 * box, box], 1) if class_agnostic else \
        box.repeat(1, c) + 20 * torch.randn(n, 4 * c, generator=g, dtype=torch.float64)
    return scores, boxes


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("max_per_image,class_agnostic", [(300, True), (15, True), (0, True), (300, False), (15, False)])
def test_fixed_rows_equal_the_per_class_loop(seed, max_per_image, class_agnostic, backend):
    """The fixed-shape, sync-free post-processing gives the loop's rows exactly (same order)."""
    scores, boxes = _random_frame(100 + seed, class_agnostic, ties=True)
    n, c = scores.shape
    loop = dets_to_rows(pred_eval_frame(scores, boxes, 1e-3, 0.3, max_per_image, class_agnostic))
    with ops_backend(backend):
        rows, count = pred_eval_fixed(scores, boxes, 1e-3, 0.3, max_per_image, class_agnostic)
    assert rows.shape == (n * (c - 1), 6) and loop.shape[0] > 0
    assert int(count) == loop.shape[0]
    assert torch.equal(rows[:int(count)], loop)
