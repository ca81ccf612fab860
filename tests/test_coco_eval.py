"""COCO box AP through pycocotools on VID-style inputs: expected values worked out by hand from COCO's
protocol (IoU thresholds .50:.05:.95, 101 recall points, precision envelope, 100 detections per image
and class, -1 -> NaN for settings without ground truth)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from dff.eval.coco_eval import coco_eval, coco_gt_dataset, format_coco_table
from dff.eval.vid_eval import save_json, write_vid_results

CLASSES = ("__background__", "n_cat", "n_dog")
NAMES = ("__background__", "cat", "dog")
CAT, DOG = 1, 2


def _frame(*objects, width=640, height=480):
    """objects: (wnid, (x1, y1, x2, y2)) -> one annotation record as parse_vid_xml gives it."""
    return {"width": width, "height": height,
            "objects": [{"wnid": w, "bbox": tuple(float(v) for v in b), "trackid": 0} for w, b in objects]}


def _det(fid, cls, score, box):
    return f"{fid} {cls} {score:.4f} {box[0]:.2f} {box[1]:.2f} {box[2]:.2f} {box[3]:.2f}"


def _eval(dets, frames, classes=CLASSES, names=NAMES):
    """frames: {index: (frame_id, record)}."""
    lines = [f"{ix} {fid}" for ix, (fid, _) in frames.items()]
    ann = {ix: rec for ix, (_, rec) in frames.items()}
    return coco_eval(dets, lines, ann, classes, names)


BOX_A = (0, 0, 10, 10)       # area 100: "small"
BOX_B = (20, 20, 40, 40)     # area 400: "small"
BOX_C = (50, 50, 60, 60)
BOX_FAR = (100, 100, 110, 110)


# ------------------------------------------------------------------------------------------------
# basic protocol
# ------------------------------------------------------------------------------------------------
def test_perfect_detections_give_ap_one(capsys):
    frames = {"v/0": (1, _frame(("n_cat", BOX_A), ("n_dog", BOX_B))), "v/1": (2, _frame(("n_cat", BOX_C)))}
    dets = [_det(1, CAT, 0.9, BOX_A), _det(1, DOG, 0.8, BOX_B), _det(2, CAT, 0.7, BOX_C)]
    r = _eval(dets, frames)
    # precision is tp / (tp + fp + eps) in pycocotools, hence approx
    assert r["AP"] == pytest.approx(1.0)
    assert r["AP50"] == pytest.approx(1.0)
    assert r["AP75"] == pytest.approx(1.0)
    assert r["AR_100"] == pytest.approx(1.0)
    assert r["per_class"] == pytest.approx({"cat": 1.0, "dog": 1.0})
    assert math.isnan(r["AP_medium"]) and math.isnan(r["AP_large"])  # all objects are small
    assert (r["num_images"], r["num_gt"], r["num_dets"], r["note"]) == (2, 3, 3, None)
    # pycocotools' printout is kept in the result, not printed
    assert "Average Precision" in r["summary_text"]
    assert capsys.readouterr().out == ""


def test_shifted_detection_between_iou_050_and_075():
    # 100x100 box shifted 20 px: IoU = 80*100 / (2*100*100 - 80*100) = 2/3, matched at .50 .55 .60 .65
    gt, det = (0, 0, 100, 100), (20, 0, 120, 100)
    r = _eval([_det(1, CAT, 0.9, det)], {"v/0": (1, _frame(("n_cat", gt)))})
    assert r["AP50"] == pytest.approx(1.0)
    assert r["AP75"] == 0.0
    assert r["AP"] == pytest.approx(0.4)  # 4 of the 10 thresholds
    assert r["AP_large"] == pytest.approx(0.4)  # area 10000 > 96**2
    assert math.isnan(r["AP_small"])
    assert r["per_class"]["cat"] == pytest.approx(0.4)
    assert math.isnan(r["per_class"]["dog"])


def test_wrong_class_detection_is_a_false_positive():
    r = _eval([_det(1, DOG, 0.9, BOX_A)], {"v/0": (1, _frame(("n_cat", BOX_A)))})
    assert r["per_class"]["cat"] == 0.0
    assert math.isnan(r["per_class"]["dog"])  # no dog in the ground truth: left out of the mean
    assert r["AP"] == 0.0 and r["AP50"] == 0.0


def test_per_class_names_and_table():
    r = _eval([_det(1, CAT, 0.9, BOX_A)], {"v/0": (1, _frame(("n_cat", BOX_A)))})
    assert list(r["per_class"]) == ["cat", "dog"]
    table = format_coco_table(r)
    assert "cat" in table and "dog" in table and "AP50" in table
    assert "1.0000" in table and "nan" in table
    # without display names the class ids name the classes
    frames = {"v/0": (1, _frame(("n_cat", BOX_A)))}
    r2 = coco_eval([_det(1, CAT, 0.9, BOX_A)], ["v/0 1"], {"v/0": frames["v/0"][1]}, CLASSES)
    assert list(r2["per_class"]) == ["n_cat", "n_dog"]


def test_no_detections():
    frames = {"v/0": (1, _frame(("n_cat", BOX_A)))}
    r = _eval([], frames)
    assert r["AP"] == 0.0 and r["AP50"] == 0.0 and r["AP75"] == 0.0 and r["AR_100"] == 0.0
    assert r["per_class"]["cat"] == 0.0 and math.isnan(r["per_class"]["dog"])
    assert r["num_dets"] == 0 and "no detections" in r["note"]
    assert "no detections" in format_coco_table(r)
    # detections only on a frame outside the image set: the same
    r = _eval([_det(7, CAT, 0.9, BOX_A)], frames)
    assert r["AP"] == 0.0 and r["num_dets"] == 0 and r["num_dets_ignored"] == 1
    # nothing at all: every number undefined
    r = _eval([], {"v/0": (1, _frame())})
    assert math.isnan(r["AP"]) and math.isnan(r["per_class"]["cat"]) and r["num_gt"] == 0


# ------------------------------------------------------------------------------------------------
# a case worked out by hand
# ------------------------------------------------------------------------------------------------
def test_hand_computed_two_images_two_classes():
    frames = {
        "v/0": (1, _frame(("n_cat", BOX_A), ("n_dog", BOX_B), ("n_other", BOX_C))),  # n_other: ignored
        "v/1": (2, _frame(("n_cat", BOX_A), ("n_cat", BOX_C))),
    }
    dets = [
        _det(1, CAT, 0.9, BOX_A),    # TP
        _det(2, CAT, 0.8, BOX_FAR),  # FP
        _det(2, CAT, 0.7, BOX_A),    # TP; the cat at BOX_C of frame 2 is never found
        _det(2, DOG, 0.95, BOX_B),   # FP (no dog on frame 2)
        _det(1, DOG, 0.5, BOX_B),    # TP
        _det(3, CAT, 0.99, BOX_C),   # frame 3 is not in the image set: ignored
    ]
    r = _eval(dets, frames)
    # cat, 3 objects, by score: TP FP TP -> recall 1/3 1/3 2/3, precision 1 1/2 2/3; envelope 1 2/3 2/3.
    # 101 recall points k/100: k = 0..33 (<= 1/3) -> 1, k = 34..66 (<= 2/3) -> 2/3, k = 67..100 -> 0
    ap_cat = (34 * 1.0 + 33 * 2 / 3) / 101  # = 56/101
    # dog, 1 object: FP TP -> precision 0 then 1/2 at recall 1; envelope 1/2 everywhere
    ap_dog = 0.5
    ap = (ap_cat + ap_dog) / 2
    assert ap_cat == pytest.approx(56 / 101)
    assert r["per_class"] == pytest.approx({"cat": ap_cat, "dog": ap_dog})
    # every match is exact, so all IoU thresholds agree
    assert r["AP"] == pytest.approx(ap)
    assert r["AP50"] == pytest.approx(ap)
    assert r["AP75"] == pytest.approx(ap)
    assert r["AP_small"] == pytest.approx(ap)
    assert math.isnan(r["AP_medium"]) and math.isnan(r["AP_large"])
    # recall: cat 2/3, dog 1; with one detection per image and class frame 2 keeps only the cat FP
    # (0.8) and the dog FP -> cat 1/3, dog 1
    assert r["AR_100"] == pytest.approx((2 / 3 + 1) / 2)
    assert r["AR_10"] == pytest.approx((2 / 3 + 1) / 2)
    assert r["AR_1"] == pytest.approx((1 / 3 + 1) / 2)
    assert (r["num_images"], r["num_gt"], r["num_gt_ignored"]) == (2, 4, 1)
    assert (r["num_dets"], r["num_dets_ignored"]) == (5, 1)


def test_only_100_detections_per_image_and_class_count():
    frames = {"v/0": (1, _frame(("n_cat", BOX_A)))}
    fps = [_det(1, CAT, 0.9, (200 + i, 200, 210 + i, 210)) for i in range(100)]
    tp = _det(1, CAT, 0.5, BOX_A)
    # 99 FPs ahead of the TP: recall 1 reached at rank 100 with precision 1/100; envelope 1/100 everywhere
    r = _eval(fps[:99] + [tp], frames)
    assert r["AP50"] == pytest.approx(0.01)
    # 100 FPs ahead: the TP is the 101st and COCO never sees it
    r = _eval(fps + [tp], frames)
    assert r["AP50"] == 0.0 and r["num_dets"] == 100
    # on equal scores the earlier rows win (COCOeval's stable sort): TP first -> kept and ranked first
    r = _eval([_det(1, CAT, 0.9, BOX_A)] + fps, frames)
    assert r["AP50"] == pytest.approx(1.0)
    r = _eval(fps + [_det(1, CAT, 0.9, BOX_A)], frames)
    assert r["AP50"] == 0.0
    # another class on the same frame has its own 100
    r = _eval(fps + [_det(1, DOG, 0.1, BOX_B), tp], {"v/0": (1, _frame(("n_cat", BOX_A), ("n_dog", BOX_B)))})
    assert r["per_class"]["dog"] == pytest.approx(1.0) and r["per_class"]["cat"] == 0.0


# ------------------------------------------------------------------------------------------------
# conversion, inputs, errors
# ------------------------------------------------------------------------------------------------
def test_ground_truth_boxes_give_back_coco_xywh():
    # a COCO-video box [10, 20, 30, 40] is read as (10, 20, 40, 60)
    ann = {"v/0": _frame(("n_dog", (10, 20, 40, 60)), ("n_other", BOX_A), width=320, height=200)}
    ds, ignored = coco_gt_dataset(["v/0"], [5], ann, CLASSES, NAMES)
    assert ds["images"] == [{"id": 5, "width": 320, "height": 200}]
    assert ds["categories"] == [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]
    assert ds["annotations"] == [{"id": 1, "image_id": 5, "category_id": DOG, "bbox": [10.0, 20.0, 30.0, 40.0],
                                  "area": 1200.0, "iscrowd": 0}]
    assert ignored == 1


def test_results_file_written_by_write_vid_results(tmp_path):
    path = tmp_path / "det_all.txt"
    empty = np.zeros((0, 5), np.float32)
    all_boxes = [[empty, empty], [np.array([[0, 0, 10, 10, 0.9]], np.float32), empty],
                 [empty, np.array([[20, 20, 40, 40, 0.8]], np.float32)]]
    write_vid_results(path, all_boxes, [11, 12])
    frames = {"v/0": (11, _frame(("n_cat", BOX_A))), "v/1": (12, _frame(("n_dog", BOX_B)))}
    r = _eval(str(path), frames)
    assert r["AP"] == pytest.approx(1.0) and r["num_dets"] == 2
    out = tmp_path / "coco.json"
    save_json(r, out)
    assert json.loads(out.read_text())["AP_medium"] is None  # NaN -> null


def test_errors():
    with pytest.raises(ValueError, match="v/0.*width/height"):
        _eval([], {"v/0": (1, _frame(("n_cat", BOX_A), width=None))})
    with pytest.raises(ValueError, match="no entry for image-set index 'v/1'"):
        coco_eval([], ["v/0 1", "v/1 2"], {"v/0": _frame()}, CLASSES, NAMES)
    with pytest.raises(ValueError, match="class index 3 outside 1..2"):
        _eval([_det(1, 3, 0.9, BOX_A)], {"v/0": (1, _frame())})
    with pytest.raises(ValueError, match="class_names"):
        coco_eval([], ["v/0 1"], {"v/0": _frame()}, CLASSES, NAMES[:2])
