"""The COCO-video format (mmtracking's ``CocoVideoDataset`` convention), read into the roidb of
:mod:`dff.dataset.imagenet_vid`, so training and testing run the same code after reading.

One JSON file per image set (``dataset.image_set`` / ``test_image_set``: ``+``-joined paths relative to
``dataset.dataset_path``, ``.json`` optional)::

    categories   [{"id", "name"}]                  class index = rank of the id (sorted); name = the class
    videos       [{"id", "name"}]
    images       [{"id", "file_name", "width", "height", "video_id", "frame_id"}]
                 file_name relative to the JSON's folder; no video_id: a still image (the reference's DET part)
    annotations  [{"id", "image_id", "category_id", "bbox": [x, y, w, h], "instance_id", "iscrowd"}]

Boxes: ``[x, y, w, h]`` is the box ``x1 = x, y1 = y, x2 = x + w, y2 = y + h`` in the inclusive-pixel
convention of the VID XML (mmtracking's ILSVRC converter writes ``w = x2 - x1``); training clamps and
truncates it as the VID reader does, the evaluation uses it as written. ``instance_id`` is the track of an
object in its video (the VID ``trackid``): the motion breakdown's neighbours.

Checked on load. Errors (the file is unusable as it is): not JSON, a missing top-level list, an image
without ``id``/``file_name``/``width``/``height``, a repeated image id, two images of one video with the
same ``frame_id``, an unknown ``video_id``, a repeated category id or name. Counted skips (reported with the
file and the record, like the VID reader's bad data): a missing image file, an annotation of an unknown
image or category, a box with no area, a box outside its image, a malformed bbox. Crowd / ``ignore``
annotations are left out of training and evaluation (no VID counterpart).
"""
from __future__ import annotations

import json
import math
import os
import re
from collections import defaultdict
from typing import Any, Iterator, Sequence, Union

import numpy as np

from dff.classes import VID_CLASSES, VID_WNIDS
from dff.dataset.classlist import VID_CLASS_LIST, ClassList
from dff.dataset.imagenet_vid import DataProblems, append_flipped_images, filter_roidb, merge_roidb
from dff.dataset.videos import TestVideo

__all__ = ["CocoVideo", "CocoVideoError", "read_cocovid_json", "cocovid_class_list", "categories_class_list",
           "is_number", "bbox_to_vid_box", "vid_box_to_bbox", "box_problem"]

Number = Union[int, float]


class CocoVideoError(ValueError):
    """A COCO-video file that cannot be used; the message names the file and the record."""


def read_cocovid_json(path: str) -> dict[str, Any]:
    """The parsed file, with the top-level lists checked (``videos`` may be absent: stills only)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: COCO-video annotation file not found (dataset.image_set / "
                                "test_image_set name files relative to dataset.dataset_path)")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CocoVideoError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise CocoVideoError(f"{path}: the top level must be an object with images, annotations, categories")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise CocoVideoError(f"{path}: no '{key}' list")
    if not isinstance(data.get("videos", []), list):
        raise CocoVideoError(f"{path}: 'videos' must be a list")
    return data


def categories_class_list(path: str, categories: Sequence[Any]) -> tuple[ClassList, dict[int, int]]:
    """Categories -> (the class list, category id -> class index), classes in category-id order.

    A class's annotation id is its ``encode_name`` (the VID wnid, as mmtracking's ILSVRC files carry it), else
    its name with whitespace made ``_`` (an XML ``<name>`` is one token); the 30 VID classes in order give
    the VID class list itself."""
    by_id: dict[int, dict[str, Any]] = {}
    for k, c in enumerate(categories):
        if not isinstance(c, dict) or not isinstance(c.get("id"), int) or not isinstance(c.get("name"), str):
            raise CocoVideoError(f"{path}: categories[{k}]: needs an integer 'id' and a string 'name'")
        if c["id"] in by_id:
            raise CocoVideoError(f"{path}: categories[{k}]: category id {c['id']} is used twice")
        by_id[c["id"]] = c
    order = sorted(by_id)
    index = {cid: k + 1 for k, cid in enumerate(order)}
    names = [by_id[i]["name"] for i in order]
    codes = [by_id[i].get("encode_name") for i in order]
    if tuple(names) == VID_CLASSES[1:] and all(c in (None, w) for c, w in zip(codes, VID_WNIDS[1:])):
        return VID_CLASS_LIST, index
    ids = [re.sub(r"\s+", "_", c if isinstance(c, str) and c.strip() else n.strip()) for c, n in zip(codes, names)]
    try:
        return ClassList.from_lists(ids, names, source=f"{path}: categories"), index
    except ValueError as e:
        raise CocoVideoError(str(e)) from None


def is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def bbox_to_vid_box(bbox: Sequence[Number]) -> tuple[Number, Number, Number, Number]:
    """COCO ``[x, y, w, h]`` -> VID ``(xmin, ymin, xmax, ymax)`` with ``xmax = x + w``."""
    x, y, w, h = bbox
    return x, y, x + w, y + h


def vid_box_to_bbox(box: Sequence[Number]) -> list[Number]:
    """VID ``(xmin, ymin, xmax, ymax)`` -> COCO ``[x, y, w, h]`` with ``w = xmax - xmin`` (mmtracking's convention)."""
    x1, y1, x2, y2 = box
    return [x1, y1, x2 - x1, y2 - y1]


def _fmt(v: Number) -> str:
    return str(v) if isinstance(v, int) else repr(float(v))


def box_problem(box: Sequence[Number], width: int, height: int) -> tuple[str, str] | None:
    """``(kind, message)`` when a VID box cannot be kept: ``xmax < xmin`` or ``ymax < ymin`` (no area: in the
    VID convention of inclusive pixel indices ``xmax == xmin`` is one pixel wide, and the VID reader keeps it,
    so COCO-video ``w = 0`` is kept too and the two formats hold the same boxes), or entirely outside the
    image (the VID reader's test); ``None`` when it is fine."""
    x1, y1, x2, y2 = box
    text = f"({_fmt(x1)},{_fmt(y1)},{_fmt(x2)},{_fmt(y2)})"
    if not (x2 >= x1 and y2 >= y1):
        return "box with no area", f"box {text} has xmax < xmin or ymax < ymin"
    if x1 > width - 1 or y1 > height - 1 or x2 < 0 or y2 < 0:
        return "box outside image", f"box {text} is outside the {width}x{height} image"
    return None


def _require(path: str, what: str, rec: dict[str, Any], keys: Sequence[str], types: tuple[type, ...]) -> None:
    for key in keys:
        if not isinstance(rec.get(key), types) or isinstance(rec.get(key), bool):
            raise CocoVideoError(f"{path}: {what}: '{key}' missing or not {'/'.join(t.__name__ for t in types)}")


def cocovid_class_list(path: str) -> ClassList:
    """The class list of a COCO-video file (its categories in id order)."""
    return categories_class_list(path, read_cocovid_json(path)["categories"])[0]


class _Image:
    """One image record after checking (``frames`` set for video frames)."""
    __slots__ = ("id", "path", "width", "height", "video", "frame", "index", "boxes", "classes", "tracks",
                 "occluded", "frames", "seg_id")

    def __init__(self, rec: dict[str, Any], path: str, video: str | None) -> None:
        self.id, self.path = int(rec["id"]), path
        self.width, self.height = int(rec["width"]), int(rec["height"])
        self.video = video
        self.frame = int(rec.get("frame_id", 0)) if video is not None else 0
        stem = os.path.splitext(str(rec["file_name"]))[0]
        self.index = f"{video}/{self.frame:06d}" if video is not None else stem
        self.boxes: list[tuple[float, float, float, float]] = []
        self.classes: list[int] = []
        self.tracks: list[int | None] = []
        self.occluded: list[int | None] = []
        self.frames: list[str] | None = None
        self.seg_id = 0


class CocoVideo:
    """COCO-video image sets (one JSON or several joined by ``+``) with the roidb interface of
    :class:`~dff.dataset.imagenet_vid.ImageNetVID`.

    Args:
        image_set: ``"train.json"`` or ``"det.json+vid_train.json"`` (relative to ``dataset_path``).
        dataset_path: the folder the JSON paths are relative to.
        check_images: check that every image file exists (a stat per image).
        verbose: print problems and their summary.
    """

    def __init__(self, image_set: str, dataset_path: str, *, check_images: bool = True, verbose: bool = True) -> None:
        self.image_set = image_set
        self.image_sets = [s for s in image_set.split("+") if s]
        if not self.image_sets:
            raise ValueError(f"image_set {image_set!r}: no file name")
        self.dataset_path = os.path.abspath(dataset_path)
        self.check_images = check_images
        self.verbose = verbose
        self.problems = DataProblems(verbose=verbose)
        self._images: dict[str, list[_Image]] = {}
        self.class_list: ClassList | None = None
        for name in self.image_sets:
            self._images[name] = self._load(name)
        assert self.class_list is not None
        self.classes = self.class_list.names
        self.classes_map = self.class_list.ids
        self.num_classes = len(self.classes)

    def json_path(self, name: str) -> str:
        return os.path.join(self.dataset_path, name if name.endswith(".json") else name + ".json")

    # loading ----------------------------------------------------------------------------------------
    def _load(self, name: str) -> list[_Image]:
        path = self.json_path(name)
        data = read_cocovid_json(path)
        classes, cat_to_class = categories_class_list(path, data["categories"])
        if self.class_list is None:
            self.class_list = classes
        elif classes != self.class_list:
            raise CocoVideoError(f"{path}: its categories {list(classes.names[1:])} differ from those of "
                                 f"{self.json_path(self.image_sets[0])} {list(self.class_list.names[1:])}")
        problems = DataProblems(verbose=self.verbose)
        images = self._images_of(path, data, problems)
        self._annotate(path, data["annotations"], {im.id: im for im in images}, cat_to_class, problems)
        self._link_videos(images)
        problems.print_summary(path)
        for item in problems.items:
            self.problems.add(*item, echo=False)
        return images

    def _images_of(self, path: str, data: dict[str, Any], problems: DataProblems) -> list[_Image]:
        videos: dict[int, str] = {}
        for k, v in enumerate(data.get("videos", [])):
            _require(path, f"videos[{k}]", v if isinstance(v, dict) else {}, ("id",), (int,))
            if v["id"] in videos:
                raise CocoVideoError(f"{path}: videos[{k}]: video id {v['id']} is used twice")
            videos[v["id"]] = str(v.get("name") or f"video_{v['id']}")
        root = os.path.dirname(path)
        seen_ids: set[int] = set()
        seen_frames: dict[tuple[int, int], int] = {}
        out = []
        for k, rec in enumerate(data["images"]):
            what = f"images[{k}]"
            rec = rec if isinstance(rec, dict) else {}
            _require(path, what, rec, ("id", "width", "height"), (int,))
            _require(path, what, rec, ("file_name",), (str,))
            if rec["id"] in seen_ids:
                raise CocoVideoError(f"{path}: {what}: image id {rec['id']} is used twice")
            seen_ids.add(rec["id"])
            if rec["width"] < 1 or rec["height"] < 1:
                raise CocoVideoError(f"{path}: {what} ({rec['file_name']}): size {rec['width']}x{rec['height']}")
            video = None
            if rec.get("video_id") is not None:
                _require(path, what, rec, ("video_id", "frame_id"), (int,))
                if rec["video_id"] not in videos:
                    raise CocoVideoError(f"{path}: {what} ({rec['file_name']}): video_id {rec['video_id']} "
                                         "is not in 'videos'")
                key = (rec["video_id"], rec["frame_id"])
                if key in seen_frames:
                    raise CocoVideoError(f"{path}: {what} ({rec['file_name']}): frame_id {rec['frame_id']} of "
                                         f"video {videos[key[0]]!r} is also images[{seen_frames[key]}]'s")
                seen_frames[key] = k
                video = videos[rec["video_id"]]
            image_path = os.path.normpath(os.path.join(root, rec["file_name"]))
            if self.check_images and not os.path.isfile(image_path):
                problems.add("missing image", image_path, f"{path}: {what} (id {rec['id']}): file not found")
                continue
            out.append(_Image(rec, image_path, video))
        return out

    @staticmethod
    def _annotate(path: str, annotations: Sequence[Any], images: dict[int, _Image], cat_to_class: dict[int, int],
                  problems: DataProblems) -> None:
        for k, a in enumerate(annotations):
            what = f"{path}: annotations[{k}]"
            if not isinstance(a, dict):
                problems.add("bad annotation", path, f"annotations[{k}]: not an object")
                continue
            im = images.get(a.get("image_id"))  # type: ignore[arg-type]
            if im is None:
                problems.add("unknown image", path, f"annotations[{k}] (id {a.get('id')}): image_id "
                             f"{a.get('image_id')} is not a usable image")
                continue
            if a.get("iscrowd") or a.get("ignore"):
                continue
            cls = cat_to_class.get(a.get("category_id"))  # type: ignore[arg-type]
            if cls is None:
                problems.add("unknown category", im.path, f"{what} (id {a.get('id')}): category_id "
                             f"{a.get('category_id')} is not in 'categories'")
                continue
            bbox = a.get("bbox")
            if not isinstance(bbox, list) or len(bbox) != 4 or not all(is_number(v) for v in bbox):
                problems.add("bad box", im.path, f"{what}: bbox {bbox!r} is not [x, y, w, h]")
                continue
            box = tuple(float(v) for v in bbox_to_vid_box(bbox))
            bad = box_problem(box, im.width, im.height)
            if bad is not None:
                problems.add(bad[0], im.path, f"{what}: bbox {bbox}: {bad[1]}")
                continue
            track = a.get("instance_id")
            im.boxes.append(box)
            im.classes.append(cls)
            im.tracks.append(int(track) if isinstance(track, int) else None)
            im.occluded.append(int(a["occluded"]) if isinstance(a.get("occluded"), int) else None)

    @staticmethod
    def _link_videos(images: list[_Image]) -> None:
        """Each video frame learns its video's frames in order (the key frames DFF's training draws)."""
        by_video: dict[str, list[_Image]] = defaultdict(list)
        for im in images:
            if im.video is not None:
                by_video[im.video].append(im)
        for frames in by_video.values():
            frames.sort(key=lambda im: im.frame)
            paths = [im.path for im in frames]
            for pos, im in enumerate(frames):
                im.frames, im.seg_id = paths, pos

    # the roidb --------------------------------------------------------------------------------------
    def _entry(self, im: _Image) -> dict[str, Any]:
        """A roidb entry as the VID reader makes it: boxes clamped to the image, truncated to uint16."""
        boxes = np.zeros((0, 4), dtype=np.uint16)
        classes = np.zeros(0, dtype=np.int32)
        if im.boxes:
            b = np.asarray(im.boxes, dtype=np.float64)
            b = np.stack([np.maximum(b[:, 0], 0), np.maximum(b[:, 1], 0),
                          np.minimum(b[:, 2], im.width - 1), np.minimum(b[:, 3], im.height - 1)], axis=1)
            b = b.astype(np.uint16)
            keep = (b[:, 2] >= b[:, 0]) & (b[:, 3] >= b[:, 1])
            for j in np.flatnonzero(~keep):
                self.problems.add("degenerate box", im.path, f"box {im.boxes[j]} has x2<x1 or y2<y1 after clamping")
            boxes, classes = b[keep], np.asarray(im.classes, dtype=np.int32)[keep]
        ov = np.zeros((len(classes), self.num_classes), dtype=np.float32)
        ov[np.arange(len(classes)), classes] = 1.0
        rec: dict[str, Any] = {
            "image": im.path, "index": im.index, "frame_id": im.id, "height": float(im.height),
            "width": float(im.width), "boxes": boxes, "gt_classes": classes, "flipped": False,
            "gt_overlaps": ov, "max_classes": ov.argmax(axis=1) if len(classes) else np.zeros(0, dtype=np.int64),
            "max_overlaps": ov.max(axis=1) if len(classes) else np.zeros(0, dtype=np.float32),
        }
        if im.frames is not None:
            rec.update(frames=im.frames, frame_seg_id=im.seg_id, frame_seg_len=len(im.frames))
        return rec

    def set_roidb(self, name: str) -> list[dict[str, Any]]:
        """Unflipped roidb of one file, images in file order."""
        return [self._entry(im) for im in self._images[name]]

    def gt_roidb(self, flip: bool = False) -> list[dict[str, Any]]:
        parts = []
        for name in self.image_sets:
            r = self.set_roidb(name)
            parts.append(append_flipped_images(r) if flip else r)
        return merge_roidb(parts)

    def train_roidb(self, flip: bool = True) -> list[dict[str, Any]]:
        """Every annotated image of the files in order, with flipped copies (no 15-frame sampling: a COCO-video
        file lists the frames to train on)."""
        return filter_roidb(self.gt_roidb(flip=flip), verbose=self.verbose)

    # testing ----------------------------------------------------------------------------------------
    def _all_images(self) -> Iterator[_Image]:
        for name in self.image_sets:
            yield from self._images[name]

    def test_videos(self) -> list[TestVideo]:
        """Videos in order of first appearance, frames by ``frame_id``; a still image is a one-frame video."""
        videos: dict[str, list[_Image]] = {}
        for im in self._all_images():
            videos.setdefault(im.video if im.video is not None else f"\0{im.index}", []).append(im)
        out = []
        for key, ims in videos.items():
            ims.sort(key=lambda im: im.frame)
            name = key[1:] if key.startswith("\0") else key
            out.append(TestVideo(name, [im.path for im in ims], [im.id for im in ims], [im.index for im in ims]))
        return out

    def eval_annotations(self) -> dict[str, dict[str, Any]]:
        """``{index: {filename, width, height, objects}}`` in the structure of
        :func:`dff.eval.vid_eval.parse_vid_xml` (boxes as written, the class id as ``wnid``)."""
        ids = self.class_list.ids if self.class_list is not None else ()
        return {im.index: {
            "filename": im.path, "width": im.width, "height": im.height,
            "objects": [{"wnid": ids[c], "bbox": b, "trackid": t, "occluded": o}
                        for b, c, t, o in zip(im.boxes, im.classes, im.tracks, im.occluded)],
        } for im in self._all_images()}

    def __repr__(self) -> str:
        return f"CocoVideo({self.image_set!r}, {self.dataset_path!r})"
