"""ImageNet VID/DET roidb (dff.dataset.imagenet_vid) and the ImageSets rules (dff.dataset.imagesets).

The list rules are checked against the reference's own ImageSets files in ../shared/data; the roidb
against hand-written ILSVRC trees (tiny JPEGs, XML in the real formats) with known content.
"""
from __future__ import annotations

import os
from collections import defaultdict
from fractions import Fraction

import cv2
import numpy as np
import pytest

from dff.dataset import imagesets
from dff.dataset.imagenet_vid import (
    CLASSES,
    WNIDS,
    ImageNetVID,
    append_flipped_images,
    filter_roidb,
    parse_annotation,
    read_image_set_file,
    ref_image_path,
    sample_key_frame,
)


def _imagesets(shared_data_dir):
    return shared_data_dir / "ILSVRC2015" / "ImageSets"


# ------------------------------------------------------------------------------------------------
# class table
# ------------------------------------------------------------------------------------------------
def test_class_table_matches_spec():
    assert len(CLASSES) == len(WNIDS) == 31 and CLASSES[0] == WNIDS[0] == "__background__"
    # a few rows of the docs/design.md §5.1 table, spread over it
    for idx, name, wnid in [(1, "airplane", "n02691156"), (9, "dog", "n02084071"), (17, "lizard", "n01674464"),
                            (23, "snake", "n01726692"), (28, "watercraft", "n04530566"), (30, "zebra", "n02391049")]:
        assert CLASSES[idx] == name and WNIDS[idx] == wnid


# ------------------------------------------------------------------------------------------------
# ImageSets rules vs the reference's files
# ------------------------------------------------------------------------------------------------
def test_vid_train_15frames_rule_against_reference(shared_data_dir):
    rows = [line.split() for line in open(_imagesets(shared_data_dir) / "VID_train_15frames.txt")]
    assert len(rows) == 57834
    videos: dict[str, list[int]] = {}
    length: dict[str, int] = {}
    for r in rows:
        assert r[1] == "1"
        videos.setdefault(r[0], []).append(int(r[2]))
        length[r[0]] = int(r[3])
    assert len(videos) == 3862
    assert list(videos) == sorted(videos), "videos are listed in sorted path order"
    # regenerate from (video, length) only
    generated = list(imagesets.vid_train_15frames_lines(sorted(length.items())))
    assert len(generated) == len(rows)
    mismatched_lines, mismatched_videos, lengths = 0, 0, set()
    for line, ref in zip(generated, rows):
        g = line.split()
        assert g[0] == ref[0] and g[1] == ref[1] and g[3] == ref[3]
    for video, ref_frames in videos.items():
        n = length[video]
        ours = imagesets.vid15_frame_ids(n)
        if n < 15:
            assert ref_frames == list(range(n)) == ours
            continue
        assert len(ref_frames) == 15
        bad = [i for i in range(15) if ours[i] != ref_frames[i]]
        for i in bad:
            # the only deviation: the reference is one lower where the segment centre is an exact integer
            centre = Fraction((2 * i + 1) * n, 30)
            assert centre.denominator == 1 and ref_frames[i] == ours[i] - 1, (video, n, i)
        mismatched_lines += len(bad)
        mismatched_videos += bool(bad)
        if bad:
            lengths.add(n)
    # the documented size of the reference's float quirk (dff.dataset.imagesets docstring)
    assert (mismatched_lines, mismatched_videos, len(lengths)) == (495, 405, 70)
    assert imagesets.vid15_frame_ids(300) == list(range(10, 300, 20))


def test_vid_val_videos_rule_reproduces_reference(shared_data_dir):
    text = (_imagesets(shared_data_dir) / "VID_val_videos.txt").read_text()
    rows = [line.split() for line in text.splitlines()]
    assert len(rows) == 555
    videos = [(r[0], int(r[3])) for r in rows]
    ours = list(imagesets.vid_val_videos_lines(videos))
    assert ours == [" ".join(r) for r in rows]
    assert sum(n for _, n in videos) == 176126


def test_vid_val_frames_lines_follow_the_videos(shared_data_dir):
    rows = [line.split() for line in open(_imagesets(shared_data_dir) / "VID_val_videos.txt")]
    videos = [(r[0], int(r[3])) for r in rows]
    lines = list(imagesets.vid_val_frames_lines(videos))
    assert len(lines) == 176126
    assert lines[0] == "val/ILSVRC2015_val_00000000/000000 1"
    assert lines[464] == "val/ILSVRC2015_val_00000001/000000 465"  # = column 2 of the second video
    assert lines[-1] == f"val/ILSVRC2015_val_00177001/{145 - 1:06d} 176126"


def test_det_train_30classes_order_reproduces_reference(shared_data_dir):
    lines = (_imagesets(shared_data_dir) / "DET_train_30classes.txt").read_text().split("\n")
    lines = [x for x in lines if x]
    assert len(lines) == 53639 and all(x.endswith(" 1") for x in lines)
    index = [x.split()[0] for x in lines]
    # one block per class: a block starts where a non-2013 image follows a 2013 one
    blocks: list[list[str]] = [[]]
    for k, ix in enumerate(index):
        if k and index[k - 1].split("/")[1] == "ILSVRC2013_train" and ix.split("/")[1] != "ILSVRC2013_train":
            blocks.append([])
        blocks[-1].append(ix)
    assert len(blocks) == 30
    membership: dict[str, set[int]] = defaultdict(set)
    for c, block in enumerate(blocks, start=1):
        # the block of class c holds the 2013 folder named after c's wnid, when it has one
        folders = {ix.split("/")[2] for ix in block if ix.split("/")[1] == "ILSVRC2013_train"}
        assert all(WNIDS.index(f) == c for f in folders if f in WNIDS[1:]), c
        for ix in block:
            membership[ix].add(c)
    # no image twice in a block; 378 images are in two or more blocks (several VID classes)
    assert sum(len(v) for v in membership.values()) == 53639
    assert sum(len(v) > 1 for v in membership.values()) == 378
    assert list(imagesets.det_train_30classes_lines(membership)) == lines
    assert sum(ix.split("/")[1] == "ILSVRC2013_train" for ix in index) == 45182


def test_shared_lists_parse(shared_data_dir):
    d = _imagesets(shared_data_dir)
    for name, n, ncols in [("DET_train_30classes", 53639, 2), ("VID_train_15frames", 57834, 4),
                           ("VID_val_videos", 555, 4)]:
        rows, c = read_image_set_file(str(d / f"{name}.txt"))
        assert (len(rows), c) == (n, ncols)


# ------------------------------------------------------------------------------------------------
# hand-made ILSVRC trees
# ------------------------------------------------------------------------------------------------
def _jpeg(path, h=40, w=60):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    cv2.imwrite(str(path), np.full((h, w, 3), 128, np.uint8))


def _xml(path, w, h, objects):
    """objects: (wnid, xmin, ymin, xmax, ymax) with any numeric text."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    body = "".join(f"<object><trackid>{k}</trackid><name>{n}</name><bndbox><xmax>{x2}</xmax><xmin>{x1}</xmin>"
                   f"<ymax>{y2}</ymax><ymin>{y1}</ymin></bndbox><occluded>0</occluded></object>"
                   for k, (n, x1, y1, x2, y2) in enumerate(objects))
    with open(path, "w") as f:
        f.write(f"<annotation><folder>x</folder><size><width>{w}</width><height>{h}</height></size>{body}</annotation>")


def _list(root, name, lines):
    os.makedirs(root / "ImageSets", exist_ok=True)
    (root / "ImageSets" / f"{name}.txt").write_text("".join(x + "\n" for x in lines))


AIR, DOG, ZEBRA, PERSON = WNIDS[1], WNIDS[9], WNIDS[30], "n00007846"


@pytest.fixture()
def tree(tmp_path):
    """A DET list of 3 images and a VID 4-column list of 2 videos, all clean."""
    root = tmp_path / "ILSVRC2015"
    det = [
        ("train/ILSVRC2014_train_0000/ILSVRC2014_train_00000001", 60, 40,
         [(AIR, 5, 6, 20, 30), (PERSON, 1, 1, 10, 10)]),
        # clamping and truncation: negative xmin, xmax beyond the image, fractional coordinates
        ("train/ILSVRC2013_train/n02084071/n02084071_7", 60, 40,
         [(DOG, -3.5, 2.7, 75, 39.9), (ZEBRA, 10.9, 11.2, 12.5, 30)]),
        ("train/ILSVRC2014_train_0000/ILSVRC2014_train_00000002", 60, 40, [(PERSON, 3, 3, 9, 9)]),  # no VID class
    ]
    for ix, w, h, objs in det:
        _jpeg(root / "Data" / "DET" / f"{ix}.JPEG", h, w)
        _xml(root / "Annotations" / "DET" / f"{ix}.xml", w, h, objs)
    _list(root, "DET_train_30classes", [f"{ix} 1" for ix, *_ in det])
    vids = [("train/ILSVRC2015_VID_train_0000/ILSVRC2015_train_00000000", 12),
            ("train/ILSVRC2015_VID_train_0000/ILSVRC2015_train_00000001", 3)]
    lines = []
    for v, n in vids:
        for t in range(n):
            _jpeg(root / "Data" / "VID" / v / f"{t:06d}.JPEG", 30, 50)
            objs = [(ZEBRA, t, 2, t + 10, 20)] if t != 1 else []  # frame 1: no object
            _xml(root / "Annotations" / "VID" / v / f"{t:06d}.xml", 50, 30, objs)
        lines += [f"{v} 1 {f} {n}" for f in imagesets.vid15_frame_ids(n)]
    _list(root, "VID_train_15frames", lines)
    return root


def test_roidb_parsing_and_fields(tree, tmp_path):
    ds = ImageNetVID("DET_train_30classes+VID_train_15frames", str(tree), str(tmp_path / "cache"), verbose=False)
    det = ds.set_roidb("DET_train_30classes")
    assert [r["image"] for r in det] == [str(tree / "Data" / "DET" / f"{ix}.JPEG") for ix in [
        "train/ILSVRC2014_train_0000/ILSVRC2014_train_00000001", "train/ILSVRC2013_train/n02084071/n02084071_7",
        "train/ILSVRC2014_train_0000/ILSVRC2014_train_00000002"]]
    r0, r1, r2 = det
    assert r0["boxes"].dtype == np.uint16 and r0["gt_classes"].dtype == np.int32
    np.testing.assert_array_equal(r0["boxes"], [[5, 6, 20, 30]])  # the person (non-VID) object is skipped
    np.testing.assert_array_equal(r0["gt_classes"], [1])
    # x1 = max(-3.5, 0) = 0; y1 = 2.7 -> 2; x2 = min(75, 59) = 59; y2 = 39.9 -> min(39.9, 39) = 39
    np.testing.assert_array_equal(r1["boxes"], [[0, 2, 59, 39], [10, 11, 12, 30]])
    np.testing.assert_array_equal(r1["gt_classes"], [9, 30])
    assert r1["width"] == 60.0 and r1["height"] == 40.0 and r1["flipped"] is False and r1["frame_id"] == 1
    np.testing.assert_array_equal(r1["gt_overlaps"].argmax(1), [9, 30])
    assert len(r2["boxes"]) == 0 and r2["boxes"].shape == (0, 4)
    assert "pattern" not in r0

    vid = ds.set_roidb("VID_train_15frames")
    assert len(vid) == 12 + 3  # both videos are shorter than 15 frames: every frame is listed
    e = vid[4]
    v0 = "train/ILSVRC2015_VID_train_0000/ILSVRC2015_train_00000000"
    assert e["image"] == str(tree / "Data" / "VID" / v0 / "000004.JPEG")
    assert e["pattern"] == str(tree / "Data" / "VID" / v0 / "%06d.JPEG")
    assert (e["frame_seg_id"], e["frame_seg_len"], e["frame_id"]) == (4, 12, 1)
    np.testing.assert_array_equal(e["boxes"], [[4, 2, 14, 20]])
    assert e["pattern"] % 4 == e["image"]
    assert ds.problems.counts == {}


def test_flip_merge_and_filter(tree, tmp_path):
    ds = ImageNetVID("DET_train_30classes+VID_train_15frames", str(tree), None, verbose=False)
    det, vid = ds.set_roidb("DET_train_30classes"), ds.set_roidb("VID_train_15frames")
    full = ds.gt_roidb(flip=True)
    # each list followed by its flipped copies, DET first
    assert len(full) == 2 * len(det) + 2 * len(vid)
    assert [r["image"] for r in full[:2 * len(det)]] == [r["image"] for r in det] * 2
    assert [r["flipped"] for r in full[:2 * len(det)]] == [False] * len(det) + [True] * len(det)
    f1 = full[len(det) + 1]  # flipped copy of the dog/zebra image, W = 60
    np.testing.assert_array_equal(f1["boxes"], [[60 - 59 - 1, 2, 60 - 0 - 1, 39], [60 - 12 - 1, 11, 60 - 10 - 1, 30]])
    assert f1["boxes"].dtype == np.uint16
    fv = full[2 * len(det) + len(vid) + 4]
    assert fv["flipped"] and fv["pattern"] == vid[4]["pattern"] and fv["frame_seg_id"] == 4
    np.testing.assert_array_equal(fv["boxes"], [[50 - 14 - 1, 2, 50 - 4 - 1, 20]])
    np.testing.assert_array_equal(det[1]["boxes"], [[0, 2, 59, 39], [10, 11, 12, 30]])  # original untouched
    train = ds.train_roidb()
    # dropped: the person-only DET image and VID frames 1 of both videos, each with its flipped copy
    assert len(train) == len(full) - 2 * 3
    assert all(len(r["boxes"]) for r in train)
    assert filter_roidb([det[2]], verbose=False) == []
    assert len(append_flipped_images([])) == 0


def test_cache_reuse_rebuild_and_no_pickle(tree, tmp_path):
    cache = tmp_path / "cache"
    ds = ImageNetVID("VID_train_15frames", str(tree), str(cache), verbose=False)
    first = ds.gt_roidb()
    files = sorted(os.listdir(cache))
    assert len(files) == 1 and files[0].startswith("ImageNetVID_VID_train_15frames_") and files[0].endswith(".npz")
    with np.load(cache / files[0], allow_pickle=False) as z:  # no object arrays anywhere
        assert all(z[k].dtype != object for k in z.files)
    # a second instance reads the cache: the XML is not looked at any more
    v0 = "train/ILSVRC2015_VID_train_0000/ILSVRC2015_train_00000000"
    os.unlink(tree / "Annotations" / "VID" / v0 / "000004.xml")
    again = ImageNetVID("VID_train_15frames", str(tree), str(cache), verbose=False).gt_roidb()
    assert len(again) == len(first)
    for a, b in zip(first, again):
        assert a["image"] == b["image"] and a["frame_seg_len"] == b["frame_seg_len"]
        np.testing.assert_array_equal(a["boxes"], b["boxes"])
        assert a["boxes"].dtype == b["boxes"].dtype and a["gt_classes"].dtype == b["gt_classes"].dtype
    # editing the list rebuilds (and now sees the missing XML); the stale cache is removed
    lst = tree / "ImageSets" / "VID_train_15frames.txt"
    lst.write_text(lst.read_text() + f"{v0} 1 4 12\n")
    ds3 = ImageNetVID("VID_train_15frames", str(tree), str(cache), verbose=False)
    rebuilt = ds3.gt_roidb()
    assert len(rebuilt) == len(first) + 1 - 2  # one line added, both lines of frame 4 now lack their XML
    assert ds3.problems.counts["missing annotation"] == 2
    assert len(os.listdir(cache)) == 1 and sorted(os.listdir(cache)) != files
    # problems found while building are reported again on a cached load
    ds4 = ImageNetVID("VID_train_15frames", str(tree), str(cache), verbose=False)
    ds4.gt_roidb()
    assert ds4.problems.counts["missing annotation"] == 2
    # a damaged cache file is rebuilt, not trusted
    (cache / os.listdir(cache)[0]).write_bytes(b"PK\x03\x04 truncated")
    ds5 = ImageNetVID("VID_train_15frames", str(tree), str(cache), verbose=False)
    assert len(ds5.gt_roidb()) == len(rebuilt)
    with np.load(cache / os.listdir(cache)[0], allow_pickle=False) as z:
        assert "boxes" in z.files
    assert not [f for f in os.listdir(cache) if f.startswith(".tmp_")]


def test_bad_data_reported_and_skipped(tree, tmp_path, capsys):
    v0 = "train/ILSVRC2015_VID_train_0000/ILSVRC2015_train_00000000"
    det_root = tree / "Annotations" / "DET" / "train" / "ILSVRC2014_train_0000"
    # degenerate after clamping (xmin beyond xmax), fully outside, and a good box in the same XML
    _xml(det_root / "ILSVRC2014_train_00000001.xml", 60, 40,
         [(AIR, 30, 5, 20, 10), (DOG, 70, 5, 90, 10), (ZEBRA, 1, 2, 3, 4), (AIR, -9, -9, -1, 5)])
    _xml(tree / "Annotations" / "DET" / "train" / "ILSVRC2014_train_0000" / "broken.xml", 1, 1, [])
    (tree / "Annotations" / "DET" / "train" / "ILSVRC2014_train_0000" / "broken.xml").write_text("<annotation><size>")
    _jpeg(tree / "Data" / "DET" / "train" / "ILSVRC2014_train_0000" / "broken.JPEG")
    _jpeg(tree / "Data" / "DET" / "train" / "ILSVRC2014_train_0000" / "noxml.JPEG")
    lst = tree / "ImageSets" / "DET_train_30classes.txt"
    lst.write_text(lst.read_text() + "train/ILSVRC2014_train_0000/missing 1\n"
                   "train/ILSVRC2014_train_0000/broken 1\ntrain/ILSVRC2014_train_0000/noxml 1\n")
    os.makedirs(tree / "Data" / "VID" / "train" / "ILSVRC2015_VID_train_0000" / "empty_video")
    vl = tree / "ImageSets" / "VID_train_15frames.txt"
    vl.write_text(vl.read_text() + "train/ILSVRC2015_VID_train_0000/empty_video 1 0 5\n"
                  f"train/ILSVRC2015_VID_train_0000/zero_len 1 0 0\n{v0} 1 12 12\n{v0} 1 5 20\n")
    ds = ImageNetVID("DET_train_30classes+VID_train_15frames", str(tree), str(tmp_path / "c"))
    roidb = ds.gt_roidb()
    err = capsys.readouterr().err
    c = ds.problems.counts
    assert c["degenerate box"] == 1 and c["box outside image"] == 2
    assert c["missing image"] == 1 and c["missing annotation"] == 1 and c["bad annotation"] == 1
    assert c["empty video"] == 2 and c["bad list line"] == 1 and c["short video"] == 1
    # every problem is printed with its path, and a count summary per list
    for kind, path, _ in ds.problems.items:
        assert path in err, kind
    assert str(tree / "Data" / "DET" / "train" / "ILSVRC2014_train_0000" / "missing.JPEG") in err
    assert "DET_train_30classes: skipped" in err and "VID_train_15frames: skipped" in err
    det = ds.set_roidb("DET_train_30classes")
    assert len(det) == 3  # the three good images; the bad lines are skipped
    np.testing.assert_array_equal(det[0]["boxes"], [[1, 2, 3, 4]])
    assert len(roidb) == 3 + 15


def test_missing_list_is_a_one_line_error(tmp_path):
    ds = ImageNetVID("VID_val_videos", str(tmp_path / "nowhere"), None, verbose=False)
    with pytest.raises(FileNotFoundError) as e:
        ds.gt_roidb()
    msg = str(e.value)
    assert "\n" not in msg and str(tmp_path / "nowhere" / "ImageSets" / "VID_val_videos.txt") in msg
    assert "tools/make_imagesets.py" in msg
    with pytest.raises(ValueError, match="DET_ or VID_"):
        ImageNetVID("COCO_train", str(tmp_path))


def test_list_format_errors(tmp_path):
    p = tmp_path / "x.txt"
    p.write_text("a 1\nb 1 2 3\n")
    with pytest.raises(ValueError, match=r"x.txt:2: 4 columns"):
        read_image_set_file(str(p))
    p.write_text("a 1 2\n")
    with pytest.raises(ValueError, match=r"x.txt:1: expected 2 or 4 columns"):
        read_image_set_file(str(p))
    p.write_text("a one\n")
    with pytest.raises(ValueError, match="integers"):
        read_image_set_file(str(p))


def test_parse_annotation_without_size(tmp_path):
    p = tmp_path / "a.xml"
    p.write_text("<annotation><object><name>n02691156</name></object></annotation>")
    assert parse_annotation(str(p)) is None


def test_val_videos_and_eval_image_set(tmp_path):
    root = tmp_path / "ILSVRC2015"
    vids = [("val/ILSVRC2015_val_00000000", 4), ("val/ILSVRC2015_val_00000007", 3)]
    for v, n in vids:
        for t in range(n):
            _jpeg(root / "Data" / "VID" / v / f"{t:06d}.JPEG")
            _xml(root / "Annotations" / "VID" / v / f"{t:06d}.xml", 60, 40, [(AIR, 1, 1, 5, 5)])
    _list(root, "VID_val_videos", list(imagesets.vid_val_videos_lines(vids)))
    ds = ImageNetVID("VID_val_videos", str(root), None, verbose=False)
    vv = list(ds.val_videos())
    assert [(v.video, v.first_frame_id, v.start, v.n_frames) for v in vv] == [
        ("val/ILSVRC2015_val_00000000", 1, 0, 4), ("val/ILSVRC2015_val_00000007", 5, 0, 3)]
    assert vv[1].frame_path(2) == str(root / "Data" / "VID" / "val" / "ILSVRC2015_val_00000007" / "000002.JPEG")
    out = tmp_path / "out" / "VID_val_videos_eval.txt"
    assert ds.write_eval_image_set(str(out)) == 7
    expected = list(imagesets.vid_val_frames_lines(vids))
    assert out.read_text().splitlines() == expected
    assert expected[4] == "val/ILSVRC2015_val_00000007/000000 5"
    # the 2-column frame list gives one entry per frame with those ids
    _list(root, "VID_val_frames", expected)
    frames = ImageNetVID("VID_val_frames", str(root), None, verbose=False).gt_roidb()
    assert [r["frame_id"] for r in frames] == list(range(1, 8)) and "pattern" not in frames[0]
    with pytest.raises(ValueError, match="4-column"):
        list(ImageNetVID("VID_val_frames", str(root), None, verbose=False).val_videos())


def test_sample_key_frame():
    rng = np.random.default_rng(0)
    e = {"pattern": "/v/%06d.JPEG", "frame_seg_id": 20, "frame_seg_len": 30, "image": "/v/000020.JPEG"}
    draws = [sample_key_frame(e, rng) for _ in range(2000)]
    refs = {r for r, _ in draws}
    assert refs == set(range(11, 21))  # offsets -9..0, both ends reached
    assert all(f == int(r == 20) for r, f in draws)
    assert ref_image_path(e, 13) == "/v/000013.JPEG"
    # clamped at the video start: frame 3 can only pair with 0..3; offsets < -3 give frame 0
    e0 = dict(e, frame_seg_id=3)
    d0 = [sample_key_frame(e0, rng)[0] for _ in range(2000)]
    assert set(d0) == {0, 1, 2, 3} and 0.55 < d0.count(0) / 2000 < 0.75  # P(r=0) = 7/10
    # DET: no video, the key image is the image itself
    det = {"image": "/d/a.JPEG"}
    assert sample_key_frame(det, rng) == (None, 1) and ref_image_path(det, None) == "/d/a.JPEG"
    # a legacy RandomState works too
    r, flag = sample_key_frame(e, np.random.RandomState(1), min_offset=0, max_offset=0)
    assert (r, flag) == (20, 1)
