"""ImageNet VID evaluation: parity with the MXNet reference, hand-made protocol cases, FGFA motion groups."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from dff.eval.vid_eval import (
    VID_CLASSES,
    VID_WNIDS,
    compute_motion_iou,
    format_table,
    parse_vid_xml,
    save_json,
    vid_eval,
    write_vid_results,
)
from dff.parity.eval import cases

W1, W2 = VID_WNIDS[1], VID_WNIDS[2]  # airplane, antelope


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------
def _xml(objects, width=1280, height=720) -> str:
    """objects: (wnid, (x1, y1, x2, y2), trackid)."""
    body = "".join(
        f"<object><trackid>{t}</trackid><name>{w}</name><bndbox><xmax>{b[2]}</xmax><xmin>{b[0]}</xmin>"
        f"<ymax>{b[3]}</ymax><ymin>{b[1]}</ymin></bndbox><occluded>0</occluded></object>"
        for w, b, t in objects)
    return (f"<annotation><folder>x</folder><size><width>{width}</width><height>{height}</height></size>"
            f"{body}</annotation>")


def _dataset(frames):
    """frames: list of (index, frame_id, objects) -> (image-set lines, annotations)."""
    lines = [f"{ix} {fid}" for ix, fid, _ in frames]
    ann = {ix: parse_vid_xml(_xml(objs), name=ix) for ix, _, objs in frames}
    return lines, ann


def _det(fid, cls, score, box):
    return f"{fid} {cls} {score:.4f} {box[0]:.2f} {box[1]:.2f} {box[2]:.2f} {box[3]:.2f}"


def _iou(a, b):  # +1 convention, written out independently of the module
    iw = min(a[2], b[2]) - max(a[0], b[0]) + 1
    ih = min(a[3], b[3]) - max(a[1], b[1]) + 1
    if iw <= 0 or ih <= 0:
        return 0.0
    ua = (a[2] - a[0] + 1) * (a[3] - a[1] + 1) + (b[2] - b[0] + 1) * (b[3] - b[1] + 1) - iw * ih
    return iw * ih / ua


# ------------------------------------------------------------------------------------------------
# parity
# ------------------------------------------------------------------------------------------------
def test_parity_reference(reference_dir):
    rows = list(cases(str(reference_dir), "fallback"))
    assert {r.tensor for r in rows} >= {"det_file_lines", "ap_per_class", "mAP", "counts", "info_str"}
    bad = [r.line() for r in rows if not r.passed]
    assert not bad, "\n".join(bad)


def test_parity_small_object_rule_matters(reference_dir):
    # README: the fixture's mAP is 0.6099...; 0.4839 with a fixed 0.5 threshold. Our own small-rule TP
    # count must equal the fixture's count of detections made to be TPs only through the rule.
    inp = json.loads((reference_dir / "eval" / "vid_eval_inputs.json").read_text())
    kinds = [d["kind"] for d in inp["detections"]]
    ann = {k[len("Annotations/VID/"):-4]: parse_vid_xml(v, name=k) for k, v in inp["annotation_xml"].items()}
    res = vid_eval(inp["det_file_lines"], inp["image_set_file_lines"], ann, inp["classes_map"])
    assert sum(res["num_tp_per_class"].values()) == kinds.count("tp_jitter") + kinds.count("small_rule_tp")


# ------------------------------------------------------------------------------------------------
# protocol, hand-made
# ------------------------------------------------------------------------------------------------
def test_small_object_rule_makes_tp():
    # 20x20 object (+1 widths): thr = 400 / (30*30) = 0.444; a 20x9 box inside it has IoU 180/400 = 0.45
    small, big = (0, 0, 19, 19), (200, 200, 299, 299)  # big: thr = min(0.5, 10000/12100) = 0.5
    assert _iou(small, (0, 0, 19, 8)) == pytest.approx(0.45)
    lines, ann = _dataset([("v/000000", 1, [(W1, small, 0), (W2, big, 1)])])
    # same IoU 0.45 on the big object (a 100x45 box) is NOT enough there
    assert _iou(big, (200, 200, 299, 244)) == pytest.approx(0.45)
    dets = [_det(1, 1, 0.9, (0, 0, 19, 8)), _det(1, 2, 0.8, (200, 200, 299, 244))]
    res = vid_eval(dets, lines, ann)
    assert res["ap_per_class"]["airplane"] == 1.0
    assert res["ap_per_class"]["antelope"] == 0.0
    assert res["num_tp_per_class"]["airplane"] == 1 and res["num_tp_per_class"]["antelope"] == 0
    # just below the small object's own threshold: 20x8 -> IoU 0.40 < 0.444
    res = vid_eval([_det(1, 1, 0.9, (0, 0, 19, 7))], lines, ann)
    assert res["ap_per_class"]["airplane"] == 0.0


def test_duplicates_are_false_positives():
    a, b = (0, 0, 99, 99), (500, 0, 599, 99)
    lines, ann = _dataset([("v/000000", 1, [(W1, a, 0), (W1, b, 1)])])
    dets = [_det(1, 1, 0.9, a), _det(1, 1, 0.8, (1, 1, 99, 99)), _det(1, 1, 0.7, b)]
    res = vid_eval(dets, lines, ann)
    # TP, FP, TP: recall .5 at precision 1, recall 1 at precision 2/3
    assert res["ap_per_class"]["airplane"] == pytest.approx(0.5 * 1.0 + 0.5 * (2 / 3), abs=1e-12)
    assert res["num_tp_per_class"]["airplane"] == 2


def test_match_takes_best_unmatched_object():
    # det1 passes both objects' threshold and must take A (larger IoU); det2 then takes B. Taking B for
    # det1 would leave det2 with A at IoU .43 < .5, a false positive.
    a, b = (0, 0, 99, 99), (30, 0, 129, 99)
    d1, d2 = (10, 0, 109, 99), (40, 0, 139, 99)
    assert _iou(d1, a) > _iou(d1, b) >= 0.5 and _iou(d2, b) >= 0.5 > _iou(d2, a)
    lines, ann = _dataset([("v/000000", 1, [(W1, a, 0), (W1, b, 1)])])
    res = vid_eval([_det(1, 1, 0.9, d1), _det(1, 1, 0.8, d2)], lines, ann)
    assert res["num_tp_per_class"]["airplane"] == 2
    assert res["ap_per_class"]["airplane"] == 1.0
    # a taken object is not available any more: with A gone, a third box on A is a false positive
    res = vid_eval([_det(1, 1, 0.9, d1), _det(1, 1, 0.8, d2), _det(1, 1, 0.7, a)], lines, ann)
    assert res["num_tp_per_class"]["airplane"] == 2


def test_detection_on_unlisted_frame_is_ignored():
    a = (0, 0, 99, 99)
    lines, ann = _dataset([("v/000000", 1, [(W1, a, 0)]), ("v/000001", 2, [(W1, a, 0)])])
    dets = [_det(1, 1, 0.5, a), _det(2, 1, 0.4, a)]
    base = vid_eval(dets, lines, ann)
    # frame 3 is not in the image set: a high-scoring false positive there must change nothing
    res = vid_eval(dets + [_det(3, 1, 0.99, (700, 0, 799, 99))], lines, ann)
    assert res["ap"] == base["ap"] == pytest.approx([1.0] + [0.0] * 29)
    assert res["num_detections"] == 2 and res["num_detections_ignored"] == 1


def test_perfect_detector_and_class_without_gt():
    frames, dets = [], []
    rng = np.random.RandomState(0)
    for f in range(5):
        objs = []
        for c in (1, 5, 30):
            x, y = rng.randint(0, 1000), rng.randint(0, 600)
            objs.append((VID_WNIDS[c], (x, y, x + 50 + f, y + 40), f))
            dets.append(_det(f + 1, c, 0.5 + 0.01 * len(dets), objs[-1][1]))
        frames.append((f"v/{f:06d}", f + 1, objs))
    lines, ann = _dataset(frames)
    res = vid_eval(dets, lines, ann)
    assert [res["ap_per_class"][VID_CLASSES[c]] for c in (1, 5, 30)] == [1.0, 1.0, 1.0]
    # the 27 classes without ground truth and without detections count as 0 in the mean
    assert res["mAP"] == pytest.approx(3 / 30, abs=1e-15)
    assert res["nan_classes"] == []


def test_class_with_detections_but_no_gt_is_nan_and_named():
    lines, ann = _dataset([("v/000000", 1, [(W1, (0, 0, 99, 99), 0)])])
    with pytest.warns(RuntimeWarning, match="zebra"):
        res = vid_eval([_det(1, 1, 0.9, (0, 0, 99, 99)), _det(1, 30, 0.3, (0, 0, 9, 9))], lines, ann)
    assert np.isnan(res["ap_per_class"]["zebra"]) and np.isnan(res["mAP"])
    assert res["nan_classes"] == ["zebra"]


def test_bad_inputs_have_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="broken.xml.*malformed XML"):
        parse_vid_xml("<annotation><object></annotation>", name="broken.xml")
    p = tmp_path / "a.xml"
    p.write_text("<annotation><object><name>n02691156</name></object></annotation>")
    with pytest.raises(ValueError, match=r"a\.xml: object 0 has no <bndbox>"):
        parse_vid_xml(p)
    lines, ann = _dataset([("v/000000", 1, [(W1, (0, 0, 9, 9), 0)])])
    with pytest.raises(ValueError, match="class index 31"):
        vid_eval([_det(1, 31, 0.5, (0, 0, 9, 9))], lines, ann)
    with pytest.raises(ValueError, match="7"):
        vid_eval(["1 1 0.5 0 0 9"], lines, ann)
    with pytest.raises(ValueError, match="no entry.*v/000001"):
        vid_eval([], lines + ["v/000001 2"], ann)
    with pytest.raises(ValueError, match="more than once"):
        vid_eval([], lines + ["v/000001 1"], ann)


def test_parse_vid_xml_fields():
    rec = parse_vid_xml(_xml([(W1, (1.5, 2, 30, 40), 7)], width=500, height=375))
    assert rec["width"] == 500 and rec["height"] == 375
    assert rec["objects"] == [{"wnid": W1, "bbox": (1.5, 2.0, 30.0, 40.0), "trackid": 7, "occluded": 0}]


def test_write_vid_results_image_major(tmp_path):
    f32 = np.float32
    all_boxes = [[[], []],
                 [np.array([[1, 2, 3, 4, 0.5]], f32), np.zeros((0, 5), f32)],
                 [np.array([[10.125, 20, 30, 40, 0.25], [5, 6, 7, 8, 0.125]], f32),
                  np.array([[0.333, 1, 2, 3, 0.99999]], f32)]]
    path = tmp_path / "results" / "det_all.txt"
    write_vid_results(path, all_boxes, [11, 12])
    assert path.read_text().splitlines() == [
        "11 1 0.5000 1.00 2.00 3.00 4.00",
        "11 2 0.2500 10.12 20.00 30.00 40.00",  # 10.125 is exact: round-half-even at 2 decimals
        "11 2 0.1250 5.00 6.00 7.00 8.00",
        "12 2 1.0000 0.33 1.00 2.00 3.00",
    ]
    assert os.listdir(path.parent) == ["det_all.txt"]  # no temp file left behind


def test_save_json_and_table(tmp_path):
    lines, ann = _dataset([("v/000000", 1, [(W1, (0, 0, 99, 99), 0)])])
    with pytest.warns(RuntimeWarning):
        res = vid_eval([_det(1, 30, 0.3, (0, 0, 9, 9))], lines, ann)
    save_json(res, tmp_path / "r.json")
    back = json.loads((tmp_path / "r.json").read_text())  # strict JSON: NaN written as null
    assert back["ap_per_class"]["zebra"] is None and back["ap_per_class"]["airplane"] == 0.0
    table = format_table(res)
    assert "airplane" in table and table.count("\n") == 32


# ------------------------------------------------------------------------------------------------
# FGFA motion groups
# ------------------------------------------------------------------------------------------------
def _moving(t, speed):
    return (300 + speed * t, 0, 399 + speed * t, 99)


def test_motion_iou_of_constructed_tracks():
    n = 15
    frames = [(f"v/{t:06d}", t + 1, [(W1, (0, 0, 99, 99), 0), (W1, _moving(t, 10), 1)]) for t in range(n)]
    frames.append(("w/000000", n + 1, [(W1, (0, 0, 9, 9), 3)]))  # track without neighbours
    # same track id at the same frame numbers in another video: must not be taken as a neighbour
    frames += [(f"u/{t:06d}", n + 2 + t, [(W1, (900, 500, 950, 550), 0)]) for t in range(4)]
    lines, ann = _dataset(frames)
    mi = compute_motion_iou([ln.split()[0] for ln in lines], ann)

    def fast_expected(t):  # a 100-px box moving 10 px/frame: IoU at distance d = (100-10d)/(100+10d)
        ks = [k for k in range(max(0, t - 10), min(n, t + 11)) if k != t]
        return float(np.mean([max(100 - 10 * abs(k - t), 0) / (100 + 10 * abs(k - t)) for k in ks]))

    for t in (0, 5, 7, 14):
        assert mi[t][0] == 1.0  # static track
        assert mi[t][1] == pytest.approx(fast_expected(t), abs=1e-12)
        assert mi[t][1] < 0.7
    assert np.isnan(mi[n][0])


def test_motion_groups_ignore_other_groups():
    # One class, two tracks in 12 frames: a static one (motion IoU 1 -> slow) scored high and a fast
    # one (motion IoU < 0.55 -> fast) scored low, all detected perfectly. Plus a stray box on the static
    # object (IoU .41, an FP) and a box on a frame without objects.
    n = 12
    frames = [(f"v/{t:06d}", t + 1, [(W1, (0, 0, 99, 99), 0), (W1, _moving(t, 10), 1)]) for t in range(n)]
    frames.append(("w/000000", n + 1, []))
    lines, ann = _dataset(frames)
    dets = [_det(t + 1, 1, 0.90 - 0.01 * t, (0, 0, 99, 99)) for t in range(n)]
    dets += [_det(t + 1, 1, 0.50 - 0.01 * t, _moving(t, 10)) for t in range(n)]
    stray, empty = _det(3, 1, 0.95, (0, 0, 99, 40)), _det(n + 1, 1, 0.99, (0, 0, 50, 50))
    assert _iou((0, 0, 99, 99), (0, 0, 99, 40)) == pytest.approx(0.41)

    res = vid_eval(dets, lines, ann, motion=True)
    m = res["motion"]
    assert m["slow"]["num_gt"] == n and m["fast"]["num_gt"] == n and m["medium"]["num_gt"] == 0
    # detections of the other group's objects are neither TP nor FP
    assert m["fast"]["ap_per_class"]["airplane"] == 1.0
    assert m["slow"]["ap_per_class"]["airplane"] == 1.0
    assert np.isnan(m["medium"]["mAP"]) and m["medium"]["classes_evaluated"] == 0
    assert m["fast"]["mAP"] == 1.0  # mean over the classes with objects in the group only
    assert m["all"]["mAP"] == pytest.approx(1.0, abs=1e-12)  # (24 recall steps of 1/24 in float)

    res = vid_eval(dets + [stray, empty], lines, ann, motion=True)
    m = res["motion"]

    def ap_after_fps(npos, fp):
        # `fp` (weighted) false positives ranked above npos true positives: precision k/(k+fp) rises
        # with k, so the envelope is npos/(npos+fp) at every recall step
        return npos / (npos + fp)

    # frame without objects: FP weight = share of motion entries in range, one placeholder 0 included:
    # fast: 12 objects + the placeholder of 25 entries; slow: 12 of 25
    # stray: nearest to a slow object -> FP for "slow", not counted for "fast"
    assert m["fast"]["ap_per_class"]["airplane"] == pytest.approx(ap_after_fps(n, 13 / 25), abs=1e-12)
    assert m["slow"]["ap_per_class"]["airplane"] == pytest.approx(ap_after_fps(n, 12 / 25 + 1), abs=1e-12)
    assert res["ap_per_class"]["airplane"] == pytest.approx(ap_after_fps(2 * n, 2), abs=1e-12)
    assert m["all"]["ap_per_class"]["airplane"] == res["ap_per_class"]["airplane"]


# ------------------------------------------------------------------------------------------------
# cross-check against a literal loop transcription of both reference evaluators on random data
# ------------------------------------------------------------------------------------------------
def _loop_eval(recs, dets, motion_iou=None, motion_range=None):
    """Straight transcription of imagenet_vid_eval.vid_eval (motion_iou None) and of FGFA's
    vid_eval_motion for one motion range (single area range [0, 1e10]). recs: per frame (img_id,
    labels, boxes, thr); dets: (img_id, label, conf, box). Stable sorts (the data has no ties)."""
    cells = {}
    for d in sorted(dets, key=lambda d: d[0]):
        cells.setdefault(d[0], []).append(d)
    for k in cells:
        cells[k] = sorted(cells[k], key=lambda d: -d[2])
    npos = np.zeros(31)
    if motion_iou is not None:
        allm = [v for m in motion_iou for v in (m if len(m) else [0.0])]
        empty_weight = sum(motion_range[0] <= v <= motion_range[1] for v in allm) / float(len(allm))
    tps, fps, labs, confs = [], [], [], []
    for fi, (iid, gl, gb, gth) in enumerate(recs):
        ig = [False] * len(gl) if motion_iou is None else \
            [(v < motion_range[0]) | (v > motion_range[1]) for v in motion_iou[fi]]
        for k, x in enumerate(gl):
            npos[x] += 0 if ig[k] else 1
        det = [False] * len(gl)
        for d in cells.get(iid, []):
            ovmax, kmax, ov_ig, ov_nig = -1, -1, -1, -1
            for k in range(len(gl)):
                ov = _iou(d[3], gb[k])
                if ov >= gth[k] and ov > ovmax and not det[k] and d[1] == gl[k]:
                    ovmax, kmax = ov, k
                if ig[k] and ov > ov_ig:
                    ov_ig = ov
                if not ig[k] and ov > ov_nig:
                    ov_nig = ov
            tp = fp = 0.0
            if kmax >= 0:
                det[kmax] = True
                tp = 0.0 if ig[kmax] else 1.0
            elif motion_iou is None:
                fp = 1.0
            elif not 0 <= (d[3][3] - d[3][1] + 1) * (d[3][2] - d[3][0] + 1) <= 1e10:
                fp = 0.0  # FGFA's area range
            elif ov_nig > ov_ig:
                fp = 1.0
            elif ov_ig > ov_nig:
                fp = 0.0
            elif len(gl) == 0:
                fp = empty_weight
            else:
                fp = sum(ig) / float(len(gl))
            tps.append(tp), fps.append(fp), labs.append(d[1]), confs.append(d[2])
    o = np.argsort(-np.asarray(confs), kind="stable")
    tps, fps, labs = np.asarray(tps)[o], np.asarray(fps)[o], np.asarray(labs)[o]
    ap = []
    for c in range(1, 31):
        tp, fp = np.cumsum(tps[labs == c]), np.cumsum(fps[labs == c])
        if motion_iou is not None and npos[c] <= 0:
            ap.append(np.nan)
            continue
        with np.errstate(divide="ignore", invalid="ignore"):
            rec = tp / npos[c]
        prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
        mrec, mpre = np.r_[0, rec, 1], np.r_[0, prec, 0]
        for i in range(len(mpre) - 1, 0, -1):
            mpre[i - 1] = max(mpre[i - 1], mpre[i])
        i = np.where(mrec[1:] != mrec[:-1])[0]
        ap.append(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))
    return np.asarray(ap)


def _random_case(seed):
    """Two classes' worth of moving tracks (slow, medium and fast), duplicates, misses, wrong classes,
    background boxes, an empty frame; unique scores. Returns (image-set lines, annotations, results
    lines, loop-version records, loop-version detections)."""
    rng = np.random.RandomState(seed)
    frames, recs, dets = [], [], []
    classes = [1, 2, 3]
    speeds = [0.0, 1.5, 6.0, -12.0, 0.5, -3.0]  # px/frame: slow, medium and fast tracks
    tracks = [(classes[i % 3], rng.uniform(0, 600), rng.uniform(0, 300), rng.uniform(8, 200),
               rng.uniform(8, 150), v) for i, v in enumerate(speeds)]
    n = 24
    for t in range(n):
        objs = []
        for ti, (c, x, y, w, h, v) in enumerate(tracks):
            if (t + ti) % 7 == 0:
                continue  # tracks drop out now and then
            objs.append((VID_WNIDS[c], tuple(float(round(z)) for z in (x + v * t, y, x + v * t + w, y + h)), ti))
        if t == 10:
            objs = []  # a frame without objects
        frames.append((f"v/{t:06d}", t + 1, objs))
    lines, ann = _dataset(frames)
    si = iter(rng.permutation(5000)[:1000] / 5000.0 + 1e-4)  # unique at 4 decimals
    for _, fid, objs in frames:
        for wnid, b, _ in objs:
            c = VID_WNIDS.index(wnid)
            for _ in range(rng.randint(0, 3)):  # 0 = missed, 2 = duplicate
                j = rng.normal(0, 0.15 * (b[2] - b[0] + 1), 4)
                dets.append((fid, c if rng.rand() > 0.15 else int(rng.choice(classes)), next(si),
                             (b[0] + j[0], b[1] + j[1], b[2] + j[2], b[3] + j[3])))
        for _ in range(rng.randint(0, 3)):
            x, y = rng.uniform(0, 1000, 2)
            dets.append((fid, int(rng.choice(classes)), next(si),
                         (x, y, x + rng.uniform(5, 150), y + rng.uniform(5, 150))))
    det_lines = [_det(*d[:3], d[3]) for d in dets]
    # the loop version reads the same rounded numbers as the file
    parsed = [(int(s.split()[0]), int(s.split()[1]), float(s.split()[2]), tuple(map(float, s.split()[3:])))
              for s in det_lines]
    for _, fid, objs in frames:
        gb = [b for _, b, _ in objs]
        gth = [min(0.5, (b[2] - b[0] + 1) * (b[3] - b[1] + 1) / ((b[2] - b[0] + 11) * (b[3] - b[1] + 11)))
               for b in gb]
        recs.append((fid, [VID_WNIDS.index(w) for w, _, _ in objs], gb, gth))
    return lines, ann, det_lines, recs, parsed


@pytest.mark.parametrize("seed,pair_budget", [(7, None), (8, None), (7, 5)])
def test_matches_loop_transcription_on_random_data(monkeypatch, seed, pair_budget):
    if pair_budget is not None:  # many small frame-aligned chunks instead of one
        monkeypatch.setattr("dff.eval.vid_eval._PAIR_BUDGET", pair_budget)
    lines, ann, det_lines, recs, parsed = _random_case(seed)
    res = vid_eval(det_lines, lines, ann, motion=True)
    assert sum(res["num_tp_per_class"].values()) > 50  # the data exercises matching
    np.testing.assert_array_equal(np.asarray(res["ap"]), _loop_eval(recs, parsed))

    mi = compute_motion_iou([ln.split()[0] for ln in lines], ann)
    for group in ("all", "fast", "medium", "slow"):
        exp = _loop_eval(recs, parsed, [list(m) for m in mi], res["motion"][group]["range"])
        np.testing.assert_array_equal(np.asarray(res["motion"][group]["ap"]), exp, err_msg=group)
    assert min(res["motion"][g]["num_gt"] for g in ("fast", "medium", "slow")) > 0
