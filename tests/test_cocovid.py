"""The COCO-video reader (dff.dataset.cocovid): the roidb and test videos it gives, and every kind of bad data
it rejects or skips, each named with its file and record."""
from __future__ import annotations

import json
import os

import cv2
import numpy as np
import pytest

from dff.dataset.cocovid import CocoVideo, CocoVideoError
from dff.dataset.imagenet_vid import ref_image_path, sample_key_frame

W, H = 40, 30


def _write_images(root, names):
    for n in names:
        p = os.path.join(root, n)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        cv2.imwrite(p, np.full((H, W, 3), 128, np.uint8))


def _dataset(root, **changes):
    """Two videos of three frames (frame 1 of video 'b' missing from the JSON's frame order on purpose: frame ids
    0, 2, 4), one still image, three classes with ids not starting at 1."""
    images = []
    for k in range(3):
        images.append({"id": 10 + k, "file_name": f"frames/a/{k:06d}.jpg", "width": W, "height": H,
                       "video_id": 1, "frame_id": k})
    for k in range(3):
        images.append({"id": 20 + k, "file_name": f"frames/b/{2 * k:06d}.jpg", "width": W, "height": H,
                       "video_id": 2, "frame_id": 2 * k})
    images.append({"id": 30, "file_name": "stills/s0.jpg", "width": W, "height": H})
    anns = [
        {"id": 1, "image_id": 10, "category_id": 7, "bbox": [2, 3, 10, 8], "instance_id": 0},
        {"id": 2, "image_id": 11, "category_id": 7, "bbox": [3, 3, 10, 8], "instance_id": 0},
        {"id": 3, "image_id": 11, "category_id": 9, "bbox": [20, 10, 5, 5], "instance_id": 1},
        {"id": 4, "image_id": 22, "category_id": 5, "bbox": [0, 0, 39, 29], "instance_id": 3},
        {"id": 5, "image_id": 30, "category_id": 9, "bbox": [5, 5, 10, 10]},
        {"id": 6, "image_id": 12, "category_id": 5, "bbox": [4, 4, 0, 5], "instance_id": 2},
    ]
    data = {"categories": [{"id": 9, "name": "star"}, {"id": 5, "name": "box"}, {"id": 7, "name": "ring"}],
            "videos": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}], "images": images, "annotations": anns}
    data.update(changes)
    _write_images(root, [im["file_name"] for im in images])
    with open(os.path.join(root, "set.json"), "w") as f:
        json.dump(data, f)
    return data


def _open(root, **kw):
    return CocoVideo("set.json", str(root), verbose=False, **kw)


def test_reads_roidb_videos_and_annotations(tmp_path):
    _dataset(tmp_path)
    ds = _open(tmp_path)
    # classes in category-id order: 5 box, 7 ring, 9 star
    assert ds.classes == ("__background__", "box", "ring", "star") and ds.num_classes == 4
    roidb = ds.set_roidb("set.json")
    assert [r["frame_id"] for r in roidb] == [10, 11, 12, 20, 21, 22, 30]
    r = roidb[1]
    assert r["index"] == "a/000001" and r["gt_classes"].tolist() == [2, 3]
    # [x, y, w, h] -> x2 = x + w, clamped to the image as the VID reader
    assert r["boxes"].tolist() == [[3, 3, 13, 11], [20, 10, 25, 15]] and r["boxes"].dtype == np.uint16
    assert roidb[5]["boxes"].tolist() == [[0, 0, 39, 29]]
    assert roidb[2]["boxes"].tolist() == [[4, 4, 4, 9]]  # w = 0: one pixel wide (x2 = x1), as a VID box may be
    assert r["gt_overlaps"].shape == (2, 4)
    # video frames know their video's frames (key frames follow no file-name pattern); frame ids need not be dense
    b = roidb[4]
    assert b["frame_seg_id"] == 1 and b["frame_seg_len"] == 3 and b["index"] == "b/000002"
    assert ref_image_path(b, 2) == os.path.join(str(tmp_path), "frames/b/000004.jpg")
    still = roidb[6]
    assert "frame_seg_len" not in still and sample_key_frame(still, np.random.default_rng(0)) == (None, 1)
    assert still["index"] == "stills/s0"
    train = ds.train_roidb(flip=True)
    assert len(train) == 2 * 5  # the 5 images with a box, and their flipped copies
    videos = ds.test_videos()
    assert [v.name for v in videos] == ["a", "b", "stills/s0"]
    assert videos[1].frame_ids == [20, 21, 22] and videos[1].indices == ["b/000000", "b/000002", "b/000004"]
    ann = ds.eval_annotations()
    assert ann["a/000001"]["objects"][1] == {"wnid": "star", "bbox": (20.0, 10.0, 25.0, 15.0), "trackid": 1,
                                            "occluded": None}
    assert ann["a/000000"]["width"] == W


@pytest.mark.parametrize("change, match", [
    (lambda d: d["images"].append(dict(d["images"][0])), "image id 10 is used twice"),
    (lambda d: d["images"].append({**d["images"][0], "id": 99}), "frame_id 0 of video 'a' is also images\\[0\\]"),
    (lambda d: d["images"][0].update(video_id=8), "video_id 8 is not in 'videos'"),
    (lambda d: d["images"][2].pop("width"), "images\\[2\\]: 'width' missing"),
    (lambda d: d["categories"].append({"id": 5, "name": "dup"}), "category id 5 is used twice"),
    (lambda d: d["categories"].append({"id": 6, "name": "box"}), "class id 'box' is listed twice"),
    (lambda d: d.pop("annotations"), "no 'annotations' list"),
])
def test_structural_errors_name_file_and_record(tmp_path, change, match):
    data = _dataset(tmp_path)
    change(data)
    with open(tmp_path / "set.json", "w") as f:
        json.dump(data, f)
    with pytest.raises(CocoVideoError, match=match) as e:
        _open(tmp_path)
    assert "set.json" in str(e.value)


def test_not_json_and_missing_file(tmp_path):
    (tmp_path / "set.json").write_text("{not json")
    with pytest.raises(CocoVideoError, match="set.json: not valid JSON"):
        _open(tmp_path)
    with pytest.raises(FileNotFoundError, match="other.json: COCO-video annotation file not found"):
        CocoVideo("other", str(tmp_path), verbose=False)


def test_bad_records_are_counted_skips(tmp_path, capsys):
    data = _dataset(tmp_path)
    data["annotations"] += [
        {"id": 10, "image_id": 10, "category_id": 42, "bbox": [1, 1, 5, 5]},      # unknown category
        {"id": 11, "image_id": 10, "category_id": 7, "bbox": [1, 1, -2, 5]},      # no area
        {"id": 12, "image_id": 10, "category_id": 7, "bbox": [50, 1, 5, 5]},      # outside the 40x30 image
        {"id": 13, "image_id": 10, "category_id": 7, "bbox": [1, 1, 5]},          # malformed
        {"id": 14, "image_id": 777, "category_id": 7, "bbox": [1, 1, 5, 5]},      # unknown image
        {"id": 15, "image_id": 10, "category_id": 7, "bbox": [1, 1, 5, 5], "iscrowd": 1},  # crowd: left out
    ]
    with open(tmp_path / "set.json", "w") as f:
        json.dump(data, f)
    os.remove(tmp_path / "frames/b/000002.jpg")  # a missing image file
    ds = CocoVideo("set.json", str(tmp_path), verbose=True)
    err = capsys.readouterr().err
    kinds = dict(ds.problems.counts)
    assert kinds == {"unknown category": 1, "box with no area": 1, "box outside image": 1, "bad box": 1,
                     "unknown image": 1, "missing image": 1}
    assert "annotations[6]" in err and "category_id 42" in err and "frames/b/000002.jpg" in err
    roidb = ds.set_roidb("set.json")
    assert roidb[0]["boxes"].tolist() == [[2, 3, 12, 11]]  # only the good box of image 10 is left
    b = [r for r in roidb if r["index"].startswith("b/")]
    assert [r["frame_seg_len"] for r in b] == [2, 2]  # the video goes on without its missing frame


def test_several_files_must_share_categories(tmp_path):
    data = _dataset(tmp_path)
    data["categories"] = data["categories"][:2]
    data["annotations"] = [a for a in data["annotations"] if a["category_id"] != 7]
    with open(tmp_path / "other.json", "w") as f:
        json.dump(data, f)
    with pytest.raises(CocoVideoError, match="differ from those of"):
        CocoVideo("set.json+other.json", str(tmp_path), verbose=False)
