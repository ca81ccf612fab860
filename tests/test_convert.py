"""Dataset conversion (dff.dataset.convert, tools/convert_dataset.py): VID -> COCO-video -> VID keeps the
annotations, the COCO-video files follow the format the readers expect, MOT folders import, bad data is
reported and skipped, bad input is a one-line error with exit code 2."""
from __future__ import annotations

import json
import os
import pathlib
import re
import runpy
import shutil

import cv2
import numpy as np
import pytest

from dff.classes import VID_CLASSES, VID_WNIDS
from dff.dataset.classlist import CLASSES_FILE, class_list_of_root
from dff.dataset.cocovid import CocoVideo
from dff.dataset.convert import (
    ConvertError,
    bbox_to_vid_box,
    cocovid_to_vid,
    mot_to_cocovid,
    parse_mot_classes,
    vid_box_to_bbox,
    vid_to_cocovid,
)
from dff.dataset.imagenet_vid import ImageNetVID, read_image_set_file
from dff.dataset.synthetic import SynthConfig, generate
from dff.eval.vid_eval import parse_vid_xml

REPO = pathlib.Path(__file__).resolve().parents[1]
# 2 train + 2 val videos of 6 frames, 5 DET images (with seed 0, the 5th has an object outside the class list)
CFG = dict(seed=0, train_videos=2, val_videos=2, frames=6, det_images=5, height=48, width=64)


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory) -> pathlib.Path:
    root = tmp_path_factory.mktemp("convert") / "ILSVRC2015"
    generate(str(root), SynthConfig(**CFG))
    return root


@pytest.fixture
def root_copy(synth_root, tmp_path) -> pathlib.Path:
    dst = tmp_path / "ILSVRC2015"
    shutil.copytree(synth_root, dst)
    return dst


def _cli(*args: str) -> int:
    return runpy.run_path(str(REPO / "tools" / "convert_dataset.py"))["main"]([*map(str, args), "--no-progress"])


def _as_vid_wnids(root: pathlib.Path) -> None:
    """Make ``root`` a plain VID root: XML names become the VID wnids of the same class index, no classes.txt."""
    path = root / CLASSES_FILE
    if not path.exists():
        return
    to_wnid = {c: VID_WNIDS[k] for c, k in class_list_of_root(str(root)).id_to_index.items()}
    for xml in root.joinpath("Annotations").rglob("*.xml"):
        text = xml.read_text()
        xml.write_text(re.sub(r"<name>([^<]+)</name>", lambda m: f"<name>{to_wnid.get(m[1], m[1])}</name>", text))
    path.unlink()


def _ensure_class_file(root: pathlib.Path) -> None:
    """Give ``root`` a classes.txt with display names unlike its XML ids (when it has none)."""
    if (root / CLASSES_FILE).exists():
        return
    present = {m for xml in root.joinpath("Annotations").rglob("*.xml") for m in re.findall(r"<name>([^<]+)</name>",
                                                                                           xml.read_text())}
    ids = [w for w in VID_WNIDS[1:] if w in present]
    (root / CLASSES_FILE).write_text("".join(f"{w} shape {k}\n" for k, w in enumerate(ids)) + "unused_class\n")


def _list_indices(root: pathlib.Path, name: str) -> list[str]:
    """The images a list gives: every frame of a 4-column list's videos, the lines of a 2-column list."""
    rows, ncols = read_image_set_file(str(root / "ImageSets" / f"{name}.txt"))
    if ncols == 2:
        return list(dict.fromkeys(r[0] for r in rows))
    videos = dict((r[0], int(r[3])) for r in rows)
    return [f"{v}/{k:06d}" for v, n in videos.items() for k in range(n)]


def _objects(xml: pathlib.Path, ids: set[str]) -> tuple[tuple[int | None, int | None], list[tuple]]:
    """Size and the class-list objects of an XML, as parse_vid_xml reads them (boxes with area only: the
    converter reports and skips the others)."""
    a = parse_vid_xml(xml)
    objs = [(o["wnid"], o["bbox"], o["trackid"], o["occluded"]) for o in a["objects"]
            if o["wnid"] in ids and o["bbox"][2] > o["bbox"][0] and o["bbox"][3] > o["bbox"][1]]
    return (a["width"], a["height"]), objs


# ------------------------------------------------------------------------------------------------ round trip
@pytest.mark.parametrize("classes_txt", [True, False], ids=["classes.txt", "vid-wnids"])
def test_vid_cocovid_vid_round_trip(root_copy, tmp_path, classes_txt):
    root = root_copy
    (_ensure_class_file if classes_txt else _as_vid_wnids)(root)
    classes = class_list_of_root(str(root))
    assert classes.is_vid is not classes_txt
    coco = tmp_path / "coco"
    res = vid_to_cocovid(str(root), str(coco), progress=False)
    lists = sorted(p.stem for p in (root / "ImageSets").glob("*.txt"))
    assert [pathlib.Path(p).name for p, _ in res.outputs] == [f"{n}.json" for n in lists]
    ids = set(classes.ids[1:])
    names = {n for name in lists for index in _list_indices(root, name)
             for n in re.findall(r"<name>([^<]+)</name>", (root / "Annotations" / name.split("_")[0] /
                                                          f"{index}.xml").read_text())}
    assert any("outside the class list dropped" in n for n in res.notes) == bool(names - ids)
    compared = objects = 0
    for name in lists:
        rt = tmp_path / "rt" / name
        cocovid_to_vid(str(coco / f"{name}.json"), str(rt), progress=False)
        assert class_list_of_root(str(rt)) == classes  # ids, names and order
        assert (rt / CLASSES_FILE).exists() is classes_txt
        kind = name.split("_")[0]
        for index in _list_indices(root, name):
            new = f"{name}/{index}" if kind == "VID" else f"{name}/{index.rsplit('/', 1)[1]}"
            a = _objects(root / "Annotations" / kind / f"{index}.xml", ids)
            b = _objects(rt / "Annotations" / kind / f"{new}.xml", ids)
            assert a == b, f"{name}: {index}"
            assert (rt / "Data" / kind / f"{new}.JPEG").read_bytes() == (root / "Data" / kind / f"{index}.JPEG").read_bytes()
            compared += 1
            objects += len(a[1])
    assert compared == sum(len(_list_indices(root, n)) for n in lists) >= 12 * 3 and objects > 40
    # the test ids survive both ways: VID list, COCO-video reader and the round-tripped VID list agree
    want = [v.frame_ids for v in ImageNetVID("VID_val_videos", str(root), verbose=False).test_videos()]
    assert [v.frame_ids for v in CocoVideo("VID_val_videos.json", str(coco), verbose=False).test_videos()] == want
    rt = ImageNetVID("VID_VID_val_videos_videos", str(tmp_path / "rt" / "VID_val_videos"), verbose=False)
    assert [v.frame_ids for v in rt.test_videos()] == want


def test_cocovid_json_structure(synth_root, tmp_path):
    res = vid_to_cocovid(str(synth_root), str(tmp_path / "coco"), progress=False)
    assert not res.problems.counts
    classes = class_list_of_root(str(synth_root))
    for path, counts in res.outputs:
        data = json.loads(pathlib.Path(path).read_text())
        assert set(data) == {"categories", "videos", "images", "annotations"}
        for table in data.values():
            assert len({r["id"] for r in table}) == len(table)  # unique ids
        assert counts == {k: len(data[k]) for k in ("categories", "videos", "images", "annotations")}
        cats = data["categories"]
        assert [c["id"] for c in cats] == list(range(1, len(classes.ids)))
        assert [c["name"] for c in cats] == list(classes.names[1:])
        for c, xml_id in zip(cats, classes.ids[1:]):
            assert c.get("encode_name", c["name"]) == xml_id and ("encode_name" in c) == (xml_id != c["name"])
        images = {im["id"]: im for im in data["images"]}
        videos = {v["id"] for v in data["videos"]}
        for im in images.values():
            assert not os.path.isabs(im["file_name"])
            assert os.path.isfile(os.path.join(os.path.dirname(path), im["file_name"]))
            assert ("video_id" in im) == ("frame_id" in im) == (not path.endswith("DET_train_30classes.json"))
            assert im.get("video_id") in videos if "video_id" in im else not videos
        per_image: dict[int, list] = {}
        for a in data["annotations"]:
            im = images[a["image_id"]]
            assert a.get("video_id") == im.get("video_id")
            assert ("instance_id" in a) == ("occluded" in a) == ("video_id" in im)  # DET XML has neither
            x, y, w, h = a["bbox"]
            assert all(type(v) is int for v in a["bbox"]) and w > 0 and h > 0 and a["area"] == w * h
            assert a["iscrowd"] == 0 and a.get("occluded", 0) in (0, 1)
            per_image.setdefault(im["id"], []).append(a)
        # the boxes are the XML's: [xmin, ymin, xmax - xmin, ymax - ymin], objects in file order
        for im in images.values():
            xml = os.path.join(os.path.dirname(path), im["file_name"]).replace("/Data/", "/Annotations/")
            objs = [o for o in parse_vid_xml(xml[:-len(".JPEG")] + ".xml")["objects"] if o["wnid"] in classes.ids]
            got = per_image.get(im["id"], [])
            assert [list(bbox_to_vid_box(a["bbox"])) for a in got] == [list(o["bbox"]) for o in objs]
            assert [classes.ids[a["category_id"]] for a in got] == [o["wnid"] for o in objs]
            if "video_id" in im:
                assert [a["instance_id"] for a in got] == [o["trackid"] for o in objs]
    # VID_val_videos: image id = column 2 + frame number (the test loop's results-file id)
    data = json.loads((tmp_path / "coco" / "VID_val_videos.json").read_text())
    firsts = {r[0]: int(r[1]) for r in read_image_set_file(str(synth_root / "ImageSets" / "VID_val_videos.txt"))[0]}
    names = {v["id"]: v["name"] for v in data["videos"]}
    assert sorted(names.values()) == sorted(firsts)
    assert all(im["id"] == firsts[names[im["video_id"]]] + im["frame_id"] for im in data["images"])


def test_box_convention_helpers():
    assert vid_box_to_bbox((3, 4, 10, 20)) == [3, 4, 7, 16]
    assert bbox_to_vid_box([3, 4, 7, 16]) == (3, 4, 10, 20)
    assert all(type(v) is int for v in vid_box_to_bbox((3, 4, 10, 20)))
    assert bbox_to_vid_box([1.5, 2, 3.25, 4]) == (1.5, 2, 4.75, 6)


def test_single_list_to_json_path_and_cli(synth_root, tmp_path, capsys):
    out = tmp_path / "val.json"
    assert _cli(synth_root, out, "--to", "cocovid", "--image-sets", "VID_val_videos") == 0
    assert len(json.loads(out.read_text())["images"]) == 12
    assert _cli(out, tmp_path / "rt", "--to", "vid", "--split", "val") == 0
    assert (tmp_path / "rt" / "ImageSets" / "VID_val_videos.txt").read_text().splitlines() == [
        "val/ILSVRC2015_val_00000000 1 0 6", "val/ILSVRC2015_val_00000001 7 0 6"]
    assert "no bad data" in capsys.readouterr().out


def test_split_carried_by_the_video_names_is_not_doubled(synth_root, tmp_path):
    """``--to vid --split val`` on a JSON whose video names already start with ``val/`` (made from a VID root's
    val list) writes ``Data/VID/val/<video>``, not ``Data/VID/val/val/<video>``; names without it still get it."""
    out = tmp_path / "VID_val_videos.json"
    assert _cli(synth_root, out, "--to", "cocovid", "--image-sets", "VID_val_videos") == 0
    names = [v["name"] for v in json.loads(out.read_text())["videos"]]
    assert names == ["val/ILSVRC2015_val_00000000", "val/ILSVRC2015_val_00000001"]
    rt = tmp_path / "rt"
    assert _cli(out, rt, "--to", "vid", "--split", "val") == 0
    assert not (rt / "Data" / "VID" / "val" / "val").exists()
    assert not (rt / "Annotations" / "VID" / "val" / "val").exists()
    for kind, ext in (("Data", "JPEG"), ("Annotations", "xml")):
        for k in range(6):
            assert (rt / kind / "VID" / "val" / "ILSVRC2015_val_00000000" / f"{k:06d}.{ext}").is_file()
    assert (rt / "Data" / "VID" / "val" / "ILSVRC2015_val_00000000" / "000003.JPEG").read_bytes() == (
        synth_root / "Data" / "VID" / "val" / "ILSVRC2015_val_00000000" / "000003.JPEG").read_bytes()
    # the same layout as the original root: its list reads back with the same videos and test ids
    want = ImageNetVID("VID_val_videos", str(synth_root), verbose=False).test_videos()
    got = ImageNetVID("VID_val_videos", str(rt), verbose=False).test_videos()
    assert [(v.name, v.frame_ids, v.indices) for v in got] == [(v.name, v.frame_ids, v.indices) for v in want]
    assert (rt / "ImageSets" / "VID_val_videos.txt").read_text() == (
        synth_root / "ImageSets" / "VID_val_videos.txt").read_text()
    # another split name: the names do not carry it, so it is still added
    other = tmp_path / "other"
    assert _cli(out, other, "--to", "vid", "--split", "test") == 0
    assert (other / "Data" / "VID" / "test" / "val" / "ILSVRC2015_val_00000000" / "000000.JPEG").is_file()
    assert (other / "ImageSets" / "VID_test_videos.txt").read_text().splitlines()[0] == (
        "test/val/ILSVRC2015_val_00000000 1 0 6")


# ------------------------------------------------------------------------------------------------ bad data
def test_bad_vid_data_reported_and_skipped(root_copy, tmp_path):
    root = root_copy
    val = root / "Annotations" / "VID" / "val" / "ILSVRC2015_val_00000000"
    (root / "Data" / "VID" / "val" / "ILSVRC2015_val_00000000" / "000005.JPEG").unlink()
    (val / "000004.xml").write_text("<annotation><size>")  # unreadable: the frame stays, without objects
    text = (val / "000003.xml").read_text()
    first = re.search(r"<name>([^<]+)</name>", text)[1]
    extra = (f"\t<object>\n\t\t<trackid>7</trackid>\n\t\t<name>{first}</name>\n\t\t<bndbox>\n\t\t\t<xmax>{{}}</xmax>\n"
             "\t\t\t<xmin>{}</xmin>\n\t\t\t<ymax>10</ymax>\n\t\t\t<ymin>2</ymin>\n\t\t</bndbox>\n\t</object>\n")
    bad = extra.format(500, 400) + extra.format(4, 5)  # outside the 64x48 frame; no area (xmax < xmin)
    (val / "000003.xml").write_text(text.replace("</annotation>", bad + "</annotation>"))
    res = vid_to_cocovid(str(root), str(tmp_path / "c"), ["VID_val_videos"], progress=False)
    assert res.problems.counts == {"missing image": 1, "bad annotation": 1, "box outside image": 1,
                                   "box with no area": 1}
    assert any("000003.xml" in p for _, p, _ in res.problems.items)
    data = json.loads((tmp_path / "c" / "VID_val_videos.json").read_text())
    frames = {(im["video_id"], im["frame_id"]): im["id"] for im in data["images"]}
    assert len(frames) == 11 and (1, 5) not in frames and (1, 4) in frames
    assert not [a for a in data["annotations"] if a["image_id"] == frames[(1, 4)]]
    assert not [a for a in data["annotations"] if a.get("instance_id") == 7]
    # the video with a missing last frame comes back whole up to it; ids stay consecutive
    rt = tmp_path / "rt"
    back = cocovid_to_vid(str(tmp_path / "c" / "VID_val_videos.json"), str(rt), split="val", progress=False)
    assert not back.problems.counts
    assert (rt / "ImageSets" / "VID_val_videos.txt").read_text().splitlines()[0] == "val/ILSVRC2015_val_00000000 1 0 5"


def _write_image(path: pathlib.Path, w: int = 64, h: int = 48, value: int = 100) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.full((h, w, 3), value, np.uint8))


def test_cocovid_to_vid_checks_and_renumbers(tmp_path):
    for k in range(4):
        _write_image(tmp_path / "img" / f"a{k}.jpg")
    _write_image(tmp_path / "img" / "still.png", 30, 20)
    cats = [{"id": k, "name": n} for k, n in enumerate(VID_CLASSES[1:], 1)]  # the 30 VID classes: no classes.txt
    data = {
        "categories": cats,
        "videos": [{"id": 5, "name": "clip one"}],
        "images": [
            {"id": 10, "file_name": "img/a0.jpg", "height": 48, "width": 64, "video_id": 5, "frame_id": 0},
            {"id": 11, "file_name": "img/a1.jpg", "height": 48, "width": 64, "video_id": 5, "frame_id": 2},  # gap
            {"id": 20, "file_name": "img/a2.jpg", "height": 48, "width": 64, "video_id": 5, "frame_id": 3},  # id jump
            {"id": 12, "file_name": "img/missing.jpg", "height": 48, "width": 64, "video_id": 5, "frame_id": 4},
            {"id": 13, "file_name": "img/a3.jpg", "height": 48, "width": 64, "video_id": 9, "frame_id": 5},
            {"id": 30, "file_name": "img/still.png"},  # no size: read from the image; no video: a still image
        ],
        "annotations": [
            {"id": 1, "image_id": 10, "video_id": 5, "category_id": 7, "bbox": [1, 2, 10, 20], "instance_id": 3,
             "occluded": 1},
            {"id": 2, "image_id": 11, "category_id": 7, "bbox": [1.5, 2, 10, 20], "instance_id": 3},
            {"id": 3, "image_id": 11, "category_id": 99, "bbox": [1, 2, 10, 20]},      # unknown category
            {"id": 4, "image_id": 11, "category_id": 7, "bbox": [1, 2, -3, 20]},       # no area
            {"id": 5, "image_id": 11, "category_id": 7, "bbox": [100, 2, 3, 20]},      # outside
            {"id": 6, "image_id": 99, "category_id": 7, "bbox": [1, 2, 3, 4]},         # unknown image
            {"id": 7, "image_id": 20, "category_id": 7, "bbox": [1, 2, 3]},            # malformed
            {"id": 8, "image_id": 20, "category_id": 7, "bbox": [1, 2, 3, 4], "iscrowd": 1},
            {"id": 9, "image_id": 30, "category_id": 1, "bbox": [0, 0, 29, 19]},
        ],
    }
    src = tmp_path / "mine.json"
    src.write_text(json.dumps(data))
    rt = tmp_path / "rt"
    res = cocovid_to_vid(str(src), str(rt), progress=False)
    assert res.problems.counts == {"missing image": 1, "bad record": 1, "unknown category": 1, "box with no area": 1,
                                   "box outside image": 1, "unknown image": 1, "bad box": 1}
    notes = " ".join(res.notes)
    assert "video names changed" in notes and "frame_id gaps" in notes and "not consecutive" in notes
    assert "1 crowd" in notes
    assert not (rt / CLASSES_FILE).exists()
    assert (rt / "ImageSets" / "VID_mine_videos.txt").read_text() == "mine/clip_one 1 0 3\n"
    assert (rt / "ImageSets" / "DET_mine.txt").read_text() == "mine/still 30\n"
    v = rt / "Annotations" / "VID" / "mine" / "clip_one"
    a0, a1 = parse_vid_xml(v / "000000.xml"), parse_vid_xml(v / "000001.xml")
    assert a0["objects"] == [{"wnid": VID_WNIDS[7], "bbox": (1.0, 2.0, 11.0, 22.0), "trackid": 3, "occluded": 1}]
    assert a1["objects"] == [{"wnid": VID_WNIDS[7], "bbox": (1.5, 2.0, 11.5, 22.0), "trackid": 3, "occluded": 0}]
    assert "<xmin>1</xmin>" in (v / "000000.xml").read_text()  # integers written as integers
    det = parse_vid_xml(rt / "Annotations" / "DET" / "mine" / "still.xml")
    assert (det["width"], det["height"]) == (30, 20) and det["objects"][0]["trackid"] is None
    assert os.path.samefile(rt / "Data" / "VID" / "mine" / "clip_one" / "000002.JPEG", tmp_path / "img" / "a2.jpg")
    # the new root reads back: three frames, ids renumbered from 1
    vids = ImageNetVID("VID_mine_videos", str(rt), verbose=False).test_videos()
    assert [v.frame_ids for v in vids] == [[1, 2, 3]]


def test_custom_categories_write_classes_txt(tmp_path):
    _write_image(tmp_path / "f.jpg")
    data = {"categories": [{"id": 4, "name": "red car"}, {"id": 2, "name": "person", "encode_name": "n00007846"}],
            "videos": [{"id": 1, "name": "v"}],
            "images": [{"id": 1, "file_name": "f.jpg", "height": 48, "width": 64, "video_id": 1, "frame_id": 0}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 4, "bbox": [0, 0, 5, 5], "instance_id": 0}]}
    (tmp_path / "s.json").write_text(json.dumps(data))
    res = cocovid_to_vid(str(tmp_path / "s.json"), str(tmp_path / "rt"), progress=False)
    assert any("category ids" in n for n in res.notes)
    assert (tmp_path / "rt" / CLASSES_FILE).read_text() == "n00007846 person\nred_car red car\n"
    objs = parse_vid_xml(tmp_path / "rt" / "Annotations" / "VID" / "s" / "v" / "000000.xml")["objects"]
    assert [o["wnid"] for o in objs] == ["red_car"]
    # and forth again: the same categories (ids now 1..K in the old id order)
    vid_to_cocovid(str(tmp_path / "rt"), str(tmp_path / "again.json"), progress=False)
    cats = json.loads((tmp_path / "again.json").read_text())["categories"]
    assert cats == [{"id": 1, "name": "person", "encode_name": "n00007846"},
                    {"id": 2, "name": "red car", "encode_name": "red_car"}]


# ------------------------------------------------------------------------------------------------ MOT
def _mot_folder(tmp_path: pathlib.Path) -> pathlib.Path:
    src = tmp_path / "mot" / "train"
    for k in range(1, 6):  # MOT-challenge layout: seqA/img1/%06d.jpg + seqA/gt/gt.txt
        _write_image(src / "seqA" / "img1" / f"{k:06d}.jpg", value=20 * k)
    (src / "seqA" / "gt").mkdir()
    (src / "seqA" / "gt" / "gt.txt").write_text(
        "1,1,10,5,20,15,1,1,1.0\n"
        "2,1,12,5,20,15,1,1,0.9\n"
        "2,2,30,20,10,10,0,1,1.0\n"     # conf 0: not considered
        "3,1,14,6,0,15,1,1,1.0\n"       # no area
        "4,1,100,100,10,10,1,1,1.0\n"   # outside the 64x48 frames
        "9,1,1,1,5,5,1,1,1.0\n"         # no frame 9
        "5,3,1.5,2.5,10,10,1,3,0.5\n"   # class 3, float box
        "5,4,2,2,10,10,1,2,0.5\n"       # class 2
        "x,bad\n")
    for k in range(1, 4):  # a plain frame folder with its annotations beside it
        _write_image(src / "seqB" / f"frame{k}.png", 40, 30)
    (src / "seqB.txt").write_text("2, 7, 1, 1, 8, 8, 1\n")
    writer = cv2.VideoWriter(str(src / "clip.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    for k in range(4):
        writer.write(np.full((48, 64, 3), 50 * k, np.uint8))
    writer.release()
    (src / "clip.txt").write_text("4,1,3,3,10,10,1,1,1\n")
    (src / "orphan.txt").write_text("1,1,1,1,1,1,1\n")
    return src


def test_mot_import(tmp_path):
    src = _mot_folder(tmp_path)
    dst = tmp_path / "out"
    res = mot_to_cocovid(str(src), str(dst), progress=False)
    assert res.problems.counts == {"box with no area": 1, "box outside image": 1, "missing image": 1,
                                   "bad annotation row": 1, "annotation without video": 1}
    assert "1 conf 0 rows left out" in res.notes
    data = json.loads((dst / "train.json").read_text())
    assert data["categories"] == [{"id": 1, "name": "object"}]
    assert [v["name"] for v in data["videos"]] == ["clip", "seqA", "seqB"]
    assert len(data["images"]) == 4 + 5 + 3 and [im["id"] for im in data["images"]] == list(range(1, 13))
    for im in data["images"]:
        assert os.path.isfile(dst / im["file_name"])
    assert [im["file_name"] for im in data["images"][:4]] == [f"frames/clip/{k:06d}.jpg" for k in range(1, 5)]
    assert {(im["width"], im["height"]) for im in data["images"][9:]} == {(40, 30)}
    by_video = {v["name"]: v["id"] for v in data["videos"]}
    seq_a = [im for im in data["images"] if im["video_id"] == by_video["seqA"]]
    assert [im["frame_id"] for im in seq_a] == [0, 1, 2, 3, 4]
    frame_of = {im["id"]: im["frame_id"] for im in data["images"]}
    anns = [(frame_of[a["image_id"]], a["instance_id"], a["bbox"]) for a in data["annotations"]
            if a["video_id"] == by_video["seqA"]]
    assert anns == [(0, 1, [10, 5, 20, 15]), (1, 1, [12, 5, 20, 15]), (4, 3, [1.5, 2.5, 10, 10]), (4, 4, [2, 2, 10, 10])]
    assert [(frame_of[a["image_id"]], a["instance_id"]) for a in data["annotations"]
            if a["video_id"] != by_video["seqA"]] == [(3, 1), (1, 7)]
    # classes by MOT class number: rows of other classes dropped
    res = mot_to_cocovid(str(src), str(dst / "two.json"), mot_classes=parse_mot_classes("1=pedestrian,3=car"),
                         progress=False)
    data = json.loads((dst / "two.json").read_text())
    assert data["categories"] == [{"id": 1, "name": "pedestrian"}, {"id": 2, "name": "car"}]
    assert sorted(a["category_id"] for a in data["annotations"]) == [1, 1, 1, 2]  # seqB's row has no class: reported
    assert "1 rows of other MOT classes left out" in res.notes
    # and on to a VID root the VID reader takes
    assert _cli(dst / "train.json", tmp_path / "vid", "--to", "vid") == 0
    assert (tmp_path / "vid" / CLASSES_FILE).read_text() == "object\n"
    vids = ImageNetVID("VID_train_videos", str(tmp_path / "vid"), verbose=False)
    assert [len(v.frame_ids) for v in vids.test_videos()] == [4, 5, 3]
    assert vids.classes == ("__background__", "object")
    assert sum(len(parse_vid_xml(p)["objects"]) for p in (tmp_path / "vid" / "Annotations").rglob("*.xml")) == 6


def test_parse_mot_classes_errors():
    assert parse_mot_classes("1=pedestrian, 3=car") == {1: "pedestrian", 3: "car"}
    for bad in ("", "pedestrian", "1=", "a=b", "1=x,1=y"):
        with pytest.raises(ConvertError):
            parse_mot_classes(bad)


# ------------------------------------------------------------------------------------------------ bad input
def test_bad_input_is_one_line_exit_2(synth_root, tmp_path, capsys):
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{not json")
    taken = tmp_path / "taken"
    (taken / "Data").mkdir(parents=True)
    good = tmp_path / "good.json"
    assert _cli(synth_root, good, "--to", "cocovid", "--image-sets", "VID_val_frames") == 0
    capsys.readouterr()
    cases = [
        (tmp_path / "nope", tmp_path / "o", "cocovid", "nope: SRC not found"),
        (synth_root, tmp_path / "o", "vid", "--to vid needs a COCO-video"),
        (synth_root, tmp_path / "o.json", "cocovid", "one JSON file holds one list"),
        (bad_json, tmp_path / "o", "vid", "not valid JSON"),
        (good, taken, "vid", "already holds Data"),
        (good, tmp_path / "o", "cocovid", "already a COCO-video file"),
    ]
    for src, dst, to, msg in cases:
        assert _cli(src, dst, "--to", to) == 2, msg
        err = capsys.readouterr().err
        assert len(err.splitlines()) == 1 and msg in err, err
    assert _cli(synth_root, tmp_path / "o", "--to", "cocovid", "--image-sets", "VID_nothing") == 2
    assert "no list VID_nothing" in capsys.readouterr().err
    assert _cli(synth_root, tmp_path / "o", "--to", "cocovid", "--mot-classes", "1") == 2
    assert not (tmp_path / "o").exists()
