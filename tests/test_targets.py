"""RPN anchor targets and Fast R-CNN roi sampling (docs/design.md §1.9) against a NumPy transcription of the spec."""
import math

import numpy as np
import pytest
import torch

from dff.config import default_config, update_config
from dff.models.targets import anchor_target, proposal_target, random_subset

# docs/design.md §1.5: the 9 base anchors (ratio-major, scale-minor), written out independently of dff.models.rpn.anchors
BASE_ANCHORS = np.array([
    [-84, -40, 99, 55], [-176, -88, 191, 103], [-360, -184, 375, 199],
    [-56, -56, 71, 71], [-120, -120, 135, 135], [-248, -248, 263, 263],
    [-36, -80, 51, 95], [-80, -168, 95, 183], [-168, -344, 183, 359]], dtype=np.float64)
NO_SUBSAMPLING = {"RPN_BATCH_SIZE": 10 ** 7}


def _cfg(**train):
    """The shipped training settings (experiments/*_end2end_ohem.yaml) over the defaults."""
    cfg = default_config()
    update_config(cfg, {"TRAIN": {"ENABLE_OHEM": True, "BATCH_IMAGES": 1, "END2END": True, "BATCH_ROIS": -1,
                                  "BATCH_ROIS_OHEM": 128, "RPN_PRE_NMS_TOP_N": 6000, "RPN_POST_NMS_TOP_N": 300,
                                  "RPN_MIN_SIZE": 0, "BBOX_NORMALIZATION_PRECOMPUTED": True, **train}})
    return cfg


# --- NumPy transcription of docs/design.md §1.9 "RPN anchor labels" (no subsampling) ---------------------------
def _np_iou(a, b):
    """+1-convention IoU matrix (N, K), float64, 0 where the boxes do not intersect."""
    iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]) + 1
    ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]) + 1
    area_a = (a[:, 2] - a[:, 0] + 1) * (a[:, 3] - a[:, 1] + 1)
    area_b = (b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1)
    inter = iw * ih
    ok = (iw > 0) & (ih > 0)
    return np.where(ok, inter / np.where(ok, area_a[:, None] + area_b[None, :] - inter, 1), 0.0)


def _np_encode(ex, gt):
    ew, eh = ex[:, 2] - ex[:, 0] + 1, ex[:, 3] - ex[:, 1] + 1
    gw, gh = gt[:, 2] - gt[:, 0] + 1, gt[:, 3] - gt[:, 1] + 1
    ecx, ecy = ex[:, 0] + 0.5 * (ew - 1), ex[:, 1] + 0.5 * (eh - 1)
    gcx, gcy = gt[:, 0] + 0.5 * (gw - 1), gt[:, 1] + 0.5 * (gh - 1)
    return np.stack([(gcx - ecx) / ew, (gcy - ecy) / eh, np.log(gw / ew), np.log(gh / eh)], axis=1)


def np_assign_anchor(h, w, gt, im_h, im_w, stds=(0.1, 0.1, 0.4, 0.4)):
    """Labels (A*h*w,) in (a, y, x) order and targets/weights (4A, h, w), before subsampling."""
    A = len(BASE_ANCHORS)
    anchors = np.zeros((h, w, A, 4))
    for y in range(h):
        for x in range(w):
            anchors[y, x] = BASE_ANCHORS + 16 * np.array([x, y, x, y])
    anchors = anchors.reshape(-1, 4)
    inside = (anchors[:, 0] >= 0) & (anchors[:, 1] >= 0) & (anchors[:, 2] < im_w) & (anchors[:, 3] < im_h)
    labels = np.full(len(anchors), -1)
    targets = np.zeros((len(anchors), 4))
    ins = np.where(inside)[0]
    if len(gt) and len(ins):
        iou = _np_iou(anchors[ins], gt[:, :4].astype(np.float64))
        best = iou.max(axis=1)
        lab = np.full(len(ins), -1)
        lab[best < 0.3] = 0
        for g in range(iou.shape[1]):  # every anchor equal to the gt's max (ties; max 0 -> all zeros)
            lab[iou[:, g] == iou[:, g].max()] = 1
        lab[best >= 0.7] = 1
        labels[ins] = lab
        targets[ins] = _np_encode(anchors[ins], gt[iou.argmax(axis=1), :4].astype(np.float64)) / np.array(stds)
    elif len(ins):
        labels[ins] = 0
    weights = np.repeat((labels == 1)[:, None], 4, axis=1).astype(np.float64)
    labels = labels.reshape(h, w, A).transpose(2, 0, 1).reshape(-1)
    targets = targets.reshape(h, w, 4 * A).transpose(2, 0, 1)
    weights = weights.reshape(h, w, 4 * A).transpose(2, 0, 1)
    return labels, targets, weights


def _random_gt(rng, im_h, im_w, n):
    x1 = rng.uniform(0, im_w - 20, n)
    y1 = rng.uniform(0, im_h - 20, n)
    x2 = np.minimum(x1 + rng.uniform(8, im_w * 0.8, n), im_w - 1)
    y2 = np.minimum(y1 + rng.uniform(8, im_h * 0.8, n), im_h - 1)
    cls = rng.integers(1, 31, n)
    return np.stack([x1, y1, x2, y2, cls], axis=1).astype(np.float32)


def _run(gt, im_h, im_w, cfg, seed=0):
    h, w = math.ceil(im_h / 16), math.ceil(im_w / 16)
    g = torch.Generator().manual_seed(seed)
    lab, tgt, wt = anchor_target((h, w), torch.from_numpy(gt), torch.tensor([im_h, im_w, 1.0]), cfg, g)
    return h, w, lab.numpy(), tgt.numpy(), wt.numpy()


# --- anchor_target ---------------------------------------------------------------------------------
@pytest.mark.parametrize("seed, im_h, im_w, n_gt", [(0, 600, 1000, 1), (1, 600, 800, 5), (2, 562, 1000, 12),
                                                     (3, 240, 400, 3), (4, 601, 999, 30)])
def test_anchor_target_matches_numpy_transcription_without_subsampling(seed, im_h, im_w, n_gt):
    rng = np.random.default_rng(seed)
    gt = _random_gt(rng, im_h, im_w, n_gt)
    h, w, lab, tgt, wt = _run(gt, im_h, im_w, _cfg(**NO_SUBSAMPLING))
    ref_lab, ref_tgt, ref_wt = np_assign_anchor(h, w, gt, im_h, im_w)
    assert lab.shape == (9 * h * w,) and tgt.shape == (1, 36, h, w) and wt.shape == (1, 36, h, w)
    assert (lab == 1).sum() > 0 and (lab == 0).sum() > 0 and (lab == -1).sum() > 0
    np.testing.assert_array_equal(lab, ref_lab)
    np.testing.assert_allclose(tgt[0], ref_tgt, rtol=1e-6, atol=1e-5)
    np.testing.assert_array_equal(wt[0], ref_wt)


def test_anchor_target_subsampling_counts_subset_and_reproducibility():
    rng = np.random.default_rng(7)
    im_h, im_w = 600, 1000
    gt = _random_gt(rng, im_h, im_w, 40)  # many gts: far more than 128 positive candidates
    _, _, full, full_t, _ = _run(gt, im_h, im_w, _cfg(**NO_SUBSAMPLING))
    assert (full == 1).sum() > 128 and (full == 0).sum() > 128
    _, _, lab, tgt, wt = _run(gt, im_h, im_w, _cfg(), seed=3)
    assert (lab == 1).sum() == 128 and (lab == 0).sum() == 128
    assert np.all(full[lab == 1] == 1) and np.all(full[lab == 0] == 0)  # subsets of the candidates
    np.testing.assert_array_equal(tgt, full_t)  # targets do not depend on the sampling
    np.testing.assert_array_equal(wt[0].reshape(9, 4, -1).max(axis=1).reshape(-1), (lab == 1).astype(np.float32))
    _, _, again, _, _ = _run(gt, im_h, im_w, _cfg(), seed=3)
    _, _, other, _, _ = _run(gt, im_h, im_w, _cfg(), seed=4)
    np.testing.assert_array_equal(lab, again)
    assert not np.array_equal(lab, other)


def test_anchor_target_few_positives_fill_with_negatives():
    gt = np.array([[100, 120, 300, 330, 5]], dtype=np.float32)
    _, _, full, _, _ = _run(gt, 600, 1000, _cfg(**NO_SUBSAMPLING))
    n_pos = int((full == 1).sum())
    assert 0 < n_pos < 128
    _, _, lab, _, _ = _run(gt, 600, 1000, _cfg())
    assert (lab == 1).sum() == n_pos and (lab == 0).sum() == 256 - n_pos


def _inside_anchors(h, w, im_h, im_w):
    an = np.array([BASE_ANCHORS[a] + 16 * np.array([x, y, x, y]) for a in range(9) for y in range(h) for x in range(w)])
    ok = (an[:, 0] >= 0) & (an[:, 1] >= 0) & (an[:, 2] < im_w) & (an[:, 3] < im_h)
    return an, ok  # rows in (a, y, x) order, the label order


@pytest.mark.parametrize("box, n_tied, iou", [
    ((40, 8, 119, 135), 3, 0.625),          # 80x128 box: three 128x128 anchors 16 px apart overlap it equally
    ((60, 20, 99, 123), 8, 65 / 242),       # below the 0.3 negative threshold: positive anyway
])
def test_anchor_target_tie_quirk_all_tied_anchors_are_positive(box, n_tied, iou):
    """Every anchor reaching the gt's maximum IoU is positive (ties included), even below 0.7 (or 0.3)."""
    gt = np.array([[*box, 1]], dtype=np.float32)
    h, w, lab, _, _ = _run(gt, 240, 400, _cfg(**NO_SUBSAMPLING))
    an, ok = _inside_anchors(h, w, 240, 400)
    ious = np.where(ok, _np_iou(an, gt[:, :4].astype(np.float64))[:, 0], -1)
    tied = np.flatnonzero(ious == ious.max())
    assert len(tied) == n_tied and ious.max() == pytest.approx(iou)
    assert np.all(lab[tied] == 1)
    assert (lab == 1).sum() == n_tied  # nothing reaches 0.7
    np.testing.assert_array_equal(lab, np_assign_anchor(h, w, gt, 240, 400)[0])


def test_anchor_target_gt_overlapping_no_anchor_makes_every_zero_iou_anchor_positive():
    """QUIRK: a gt that overlaps no eligible anchor has max IoU 0, so all IoU-0 eligible anchors become 1."""
    im_h, im_w = 200, 300
    corner = np.array([[0, 0, 5, 5, 2]], dtype=np.float32)  # every inside anchor starts at x, y >= 8
    h, w, lab, _, wt = _run(corner, im_h, im_w, _cfg(**NO_SUBSAMPLING))
    ref_lab, _, _ = np_assign_anchor(h, w, corner, im_h, im_w)
    np.testing.assert_array_equal(lab, ref_lab)
    assert (lab == 1).sum() == (ref_lab != -1).sum() > 0 and (lab == 0).sum() == 0
    # with a real gt too: anchors overlapping only the real gt below 0.3 are still positive
    both = np.concatenate([corner, np.array([[40, 40, 170, 160, 3]], dtype=np.float32)])
    _, _, lab2, _, _ = _run(both, im_h, im_w, _cfg(**NO_SUBSAMPLING))
    ref2, _, _ = np_assign_anchor(h, w, both, im_h, im_w)
    np.testing.assert_array_equal(lab2, ref2)
    assert (lab2 == 0).sum() == 0
    # subsampled: cut to 128 positives, no negatives left to fill
    _, _, lab3, _, _ = _run(corner, 600, 1000, _cfg())
    assert (lab3 == 1).sum() == 128 and (lab3 == 0).sum() == 0


def test_anchor_target_layout_is_a_y_x_and_channel_4a_plus_k():
    """A gt equal to anchor a=4 at cell (y=9, x=10): label index (a*h + y)*w + x, target channels 16..19 = 0."""
    im_h, im_w = 600, 800
    a, y, x = 4, 9, 10
    box = BASE_ANCHORS[a] + 16 * np.array([x, y, x, y])
    gt = np.array([[*box, 1]], dtype=np.float32)
    h, w, lab, tgt, wt = _run(gt, im_h, im_w, _cfg(**NO_SUBSAMPLING))
    assert lab[(a * h + y) * w + x] == 1
    np.testing.assert_array_equal(tgt[0, 4 * a:4 * a + 4, y, x], 0)
    np.testing.assert_array_equal(wt[0, 4 * a:4 * a + 4, y, x], 1)
    # the neighbour one cell right is encoded relative to itself: dx = -16 / 256 / 0.1
    np.testing.assert_allclose(tgt[0, 4 * a:4 * a + 4, y, x + 1], [-16 / 256 / 0.1, 0, 0, 0], atol=1e-6)


def test_anchor_target_no_gt_and_unnormalised_targets():
    none = np.zeros((0, 5), dtype=np.float32)
    _, _, lab, tgt, wt = _run(none, 600, 1000, _cfg())
    assert (lab == 1).sum() == 0 and (lab == 0).sum() == 256 and tgt.max() == 0 and wt.max() == 0
    gt = np.array([[100, 120, 300, 330, 5]], dtype=np.float32)
    cfg_raw = _cfg(**NO_SUBSAMPLING)
    update_config(cfg_raw, {"network": {"NORMALIZE_RPN": False}})
    _, _, _, raw, _ = _run(gt, 600, 1000, cfg_raw)
    _, _, _, norm, _ = _run(gt, 600, 1000, _cfg(**NO_SUBSAMPLING))
    std = np.tile([0.1, 0.1, 0.4, 0.4], 9)[None, :, None, None]
    np.testing.assert_allclose(norm, raw / std, rtol=1e-6, atol=1e-6)


def test_anchor_target_bad_input_names_the_parameter():
    with pytest.raises(ValueError, match="gt_boxes"):
        anchor_target((10, 10), torch.zeros(3), torch.tensor([160.0, 160.0, 1.0]), _cfg())
    with pytest.raises(ValueError, match="feat_shape"):
        anchor_target((10,), torch.zeros(0, 5), torch.tensor([160.0, 160.0, 1.0]), _cfg())


def test_random_subset_is_uniform_and_exact_size():
    mask = torch.zeros(20, dtype=torch.bool)
    mask[[1, 4, 5, 9, 12, 13, 17, 19]] = True
    g = torch.Generator().manual_seed(0)
    counts = torch.zeros(20)
    for _ in range(2000):
        keep = random_subset(mask, 3, g)
        assert int(keep.sum()) == 3 and not bool((keep & ~mask).any())
        counts += keep
    freq = counts[mask] / 2000
    assert torch.all((freq - 3 / 8).abs() < 0.05), freq
    assert torch.equal(random_subset(mask, 100, g), mask)


# --- proposal_target -------------------------------------------------------------------------------
def _pt_case():
    gt = torch.tensor([[50, 60, 149, 159, 3], [300, 100, 399, 259, 7]], dtype=torch.float32)
    rois = torch.tensor([
        [0, 300, 100, 399, 259],  # = gt 1 (IoU 1)                 fg, class 7
        [0, 10, 10, 40, 40],      # IoU 0                          bg
        [0, 50, 60, 149, 119],    # IoU 0.6 with gt 0              fg, class 3
        [0, 100, 60, 199, 159],   # IoU 50*100/(2*100*100-5000) = 1/3 with gt 0   bg
        [0, 320, 120, 409, 269],  # high IoU with gt 1             fg, class 7
    ], dtype=torch.float32)
    return rois, gt


def _np_targets(ex, gt, stds=(0.1, 0.1, 0.2, 0.2)):
    return _np_encode(np.asarray(ex, np.float64), np.asarray(gt, np.float64)) / np.array(stds)


def test_proposal_target_all_rois_with_gt_appended_class_agnostic():
    rois, gt = _pt_case()
    out_rois, labels, targets, weights = proposal_target(rois, gt, _cfg(), torch.Generator().manual_seed(0))
    # fg in index order (rois 0, 2, 4, gt 0, gt 1 -> candidate indexes 0, 2, 4, 5, 6), then bg (1, 3)
    all_rois = torch.cat([rois, torch.cat([torch.zeros(2, 1), gt[:, :4]], 1)])
    order = [0, 2, 4, 5, 6, 1, 3]
    torch.testing.assert_close(out_rois, all_rois[order])
    assert labels.tolist() == [7, 3, 7, 3, 7, 0, 0]
    assert targets.shape == (7, 8) and weights.shape == (7, 8)
    assigned = gt[[1, 0, 1, 0, 1], :4].numpy()
    expect = _np_targets(all_rois[order[:5], 1:].numpy(), assigned)
    np.testing.assert_allclose(targets[:5, 4:].numpy(), expect, rtol=1e-5, atol=1e-6)
    assert targets[:, :4].abs().max() == 0 and targets[5:].abs().max() == 0
    assert weights[:5, 4:].eq(1).all() and weights[:, :4].eq(0).all() and weights[5:].eq(0).all()
    np.testing.assert_allclose(targets[2, 4:].numpy(), [(349.5 - 364.5) / 90 / 0.1, (179.5 - 194.5) / 150 / 0.1,
                                                        math.log(100 / 90) / 0.2, math.log(160 / 150) / 0.2],
                               rtol=1e-5)


def test_proposal_target_per_class_slots_and_unnormalised():
    rois, gt = _pt_case()
    cfg = _cfg(BBOX_NORMALIZATION_PRECOMPUTED=False)
    update_config(cfg, {"CLASS_AGNOSTIC": False})
    _, labels, targets, weights = proposal_target(rois, gt, cfg)
    assert targets.shape == (7, 31 * 4)
    for i, c in enumerate(labels.tolist()):
        nz = weights[i].nonzero().flatten().tolist()
        assert nz == (list(range(4 * c, 4 * c + 4)) if c > 0 else [])
    expect = _np_encode(np.array([[50, 60, 149, 119]], np.float64), np.array([[50, 60, 149, 159]], np.float64))
    np.testing.assert_allclose(targets[1, 12:16].numpy(), expect[0], rtol=1e-5, atol=1e-7)


def test_proposal_target_fixed_batch_samples_fg_fraction_and_pads():
    rng = np.random.default_rng(0)
    gt = torch.tensor([[100, 100, 299, 299, 4]], dtype=torch.float32)
    jitter = torch.from_numpy(rng.uniform(-15, 15, (40, 4)).astype(np.float32))
    near = torch.tensor([100, 100, 299, 299.0]) + jitter  # IoU well above 0.5
    far = torch.from_numpy(rng.uniform(400, 500, (60, 1)).astype(np.float32)) + torch.tensor([0, 0, 50, 50.0])
    rois = torch.cat([torch.zeros(100, 1), torch.cat([near, far])], 1)
    cfg = _cfg(BATCH_ROIS=32, FG_FRACTION=0.25)
    out = proposal_target(rois, gt, cfg, torch.Generator().manual_seed(1))
    r, labels, _, weights = out
    assert r.shape == (32, 5) and (labels[:8] == 4).all() and (labels[8:] == 0).all()
    assert weights[:8, 4:].eq(1).all() and weights[8:].eq(0).all()
    again = proposal_target(rois, gt, cfg, torch.Generator().manual_seed(1))
    other = proposal_target(rois, gt, cfg, torch.Generator().manual_seed(2))
    assert torch.equal(r, again[0]) and not torch.equal(r, other[0])
    # too few candidates in [LO, HI): padded with random rois labelled background
    cfg_pad = _cfg(BATCH_ROIS=128, FG_FRACTION=0.25, BG_THRESH_LO=0.1)
    r2, l2, _, w2 = proposal_target(rois, gt, cfg_pad, torch.Generator().manual_seed(0))
    assert r2.shape == (128, 5) and (l2[:32] == 4).all() and (l2[32:] == 0).all() and w2[32:].eq(0).all()


def test_proposal_target_bad_input():
    rois, gt = _pt_case()
    two = rois.clone()
    two[0, 0] = 1
    with pytest.raises(ValueError, match="single-image"):
        proposal_target(two, gt, _cfg())
    with pytest.raises(ValueError, match="rois"):
        proposal_target(rois[:, 1:], gt, _cfg())
    with pytest.raises(ValueError, match="gt_boxes"):
        proposal_target(rois, gt[:, :4], _cfg())
    with pytest.raises(ValueError, match="BATCH_ROIS"):
        proposal_target(rois, gt, _cfg(BATCH_ROIS=0))
