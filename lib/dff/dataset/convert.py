"""Dataset conversion between the ILSVRC2015 VID layout and the COCO-video format, and from MOT-challenge folders.

    python tools/convert_dataset.py SRC DST --to {cocovid,vid} [--image-sets A,B] [--split NAME]
                                    [--class-name NAME | --mot-classes 1=pedestrian,3=car] [--no-progress]

SRC is recognised by what it is: a ``.json`` file is a COCO-video file; a folder with ``Data/``,
``Annotations/`` or ``ImageSets/`` is an ILSVRC2015-style root; any other folder is a MOT-style folder.

**VID -> COCO-video** (:func:`vid_to_cocovid`). One JSON per list of ``SRC/ImageSets`` (``image_sets``; default
all), ``DST/<list>.json``, or DST itself when it ends in ``.json`` and one list is chosen. Classes: the root's
class list (``classes.txt``, else the 30 VID classes; :mod:`dff.dataset.classlist`) as categories ``1..K`` in
class order, ``name`` = display name, ``encode_name`` = the XML ``<name>`` where it differs; objects of other
classes are dropped (DET's 170 other classes). ``file_name`` = the image's path in SRC relative to the JSON's
folder (nothing is copied).

* A 4-column list (``<video> <frame id> <frame_seg_id> <frame_seg_len>``) gives every frame ``0..len-1`` of each
  listed video (annotated or not). Image ids: when every line starts its video (column 3 = 0) and names a new
  video, as in ``VID_val_videos``, frame k gets ``column 2 + k``, the id the VID test loop gives it
  (:meth:`ImageNetVID.test_videos`), so results files of the two formats agree; otherwise (sampled frames, e.g.
  ``VID_train_15frames``, whose column 2 is 1 on every line) images are numbered ``1..N`` in list order.
* A 2-column ``DET_`` list gives still images (no ``video_id``; an image listed several times, as in
  ``DET_train_30classes``, once); a 2-column ``VID_`` list (``VID_val_frames``) gives the listed frames of their
  videos (video = the index's folder, frame = its number). Image ids = column 2 when unique, else ``1..N``.
* Video names are the list's video paths (``val/ILSVRC2015_val_00000000``), as in mmtracking's ILSVRC converter.

**COCO-video -> VID** (:func:`cocovid_to_vid`). DST is a new root. The split is the JSON's file stem (or
``split``). Video frames go to ``Data/VID/<split>/<video name>/%06d.JPEG`` (hard link, copy where linking
fails) with ``Annotations/VID/<split>/<video>/%06d.xml`` in the ILSVRC2015 VID XML format, frames numbered
0..n-1 by ``frame_id``; a video name that already starts with ``<split>/`` is not prefixed again
(``val/ILSVRC2015_val_00000000`` with ``--split val`` goes to ``Data/VID/val/ILSVRC2015_val_00000000/``);
still images to ``Data/DET/<split>/<file stem>.JPEG`` with DET XML. Lists:
``ImageSets/VID_<split>_videos.txt`` (``<split>/<video> <first id> 0 <n>``; first id = the video's image ids
when they are consecutive in every video, else all videos renumbered from 1 as ``VID_val_videos`` is) and
``ImageSets/DET_<split>.txt`` (``<split>/<stem> <image id>``). ``classes.txt`` unless the categories are the 30
VID classes in order (then the XML names are the wnids). The image is linked under a ``.JPEG`` name whatever
its encoding (the readers decode by content).

**MOT -> COCO-video** (:func:`mot_to_cocovid`). SRC holds per video a video file ``<name>.{mp4,avi,mov,mkv}``
or a frame folder ``<name>/`` (or ``<name>/img1/``), and its annotations ``<name>.txt`` beside it or
``<name>/gt/gt.txt``: rows ``frame, id, x, y, w, h[, conf[, class[, visibility, ...]]]``, frames from 1. Rows
with conf = 0 (MOT's "do not consider") are left out. One class (``class_name``) or ``mot_classes``
(MOT class -> name; rows of other classes are left out). Video files are decoded with OpenCV to
``<DST folder>/frames/<name>/%06d.jpg`` (numbered from 1, as MOT's ``img1``). DST is a ``.json`` path or a
folder (then ``DST/<SRC folder name>.json``). Video ids, image ids and annotation ids count from 1 in
video-name order; ``instance_id`` = the MOT id; ``frame_id`` = MOT frame - 1.

**Boxes.** A VID box ``(xmin, ymin, xmax, ymax)`` is the COCO ``bbox [xmin, ymin, xmax - xmin, ymax - ymin]``
(mmtracking's ILSVRC converter, and :mod:`dff.dataset.cocovid`) and back ``xmax = x + w``; integers stay
integers, so integer boxes survive both ways exactly. MOT boxes are taken as written (1-based pixel
coordinates, mmtracking's MOT converter does the same).

**Checks.** Bad data is reported with its path and record, counted and skipped (:class:`DataProblems`):
a missing image, a missing or unreadable annotation file (a video frame is kept without objects, so its video
stays whole; a still image is skipped), a malformed record, a box with no area (``w <= 0`` or ``h <= 0``,
i.e. VID ``xmax <= xmin``) or entirely outside its image. A summary follows. A missing SRC, an unknown
list, an unusable JSON or a DST that already holds a dataset is a :class:`ConvertError` (one line; the
tool exits with 2). Every file is written atomically (:mod:`dff.utils.io`).

**Lossless** for what both formats carry: image ids of ``VID_val_videos``-like lists, video names, frame
numbers, sizes, boxes, classes (ids and names), track ids, ``occluded``. **Lossy:** the XML ``<generated>``
flag (written 0), ``<folder>``/``<filename>``/``<source>`` (rewritten); the frame sampling of a list such as
``VID_train_15frames`` (all frames of its videos are converted); the original lists' names and paths (the
VID root made from ``<split>.json`` nests the videos under ``<split>/`` unless their names start with it);
category ids other than ``1..K`` (renumbered in id order); ``frame_id`` gaps (frames renumbered ``0..n-1``);
crowd/ignore annotations and extra COCO keys (dropped); float boxes round-trip as Python floats (``x + w`` may
differ from the original ``xmax`` in the last bit).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import shutil
import sys
import xml.etree.ElementTree as ET
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, Iterable, NamedTuple, Sequence, TypeVar, Union
from xml.sax.saxutils import escape

import cv2
from tqdm import tqdm

from dff.dataset.classlist import ClassList, class_list_of_root, write_class_file
from dff.dataset.cocovid import (
    CocoVideoError,
    bbox_to_vid_box,
    box_problem,
    categories_class_list,
    is_number,
    read_cocovid_json,
    vid_box_to_bbox,
)
from dff.dataset.imagenet_vid import DataProblems, read_image_set_file
from dff.dataset.imagesets import vid_val_videos_lines, write_lines
from dff.utils.io import atomic_open, atomic_write_bytes, atomic_write_text

__all__ = [
    "ConvertError", "ConvertResult", "XmlObject", "vid_box_to_bbox", "bbox_to_vid_box", "read_ilsvrc_xml",
    "vid_frame_xml", "det_image_xml", "ListFrame", "plan_video_list", "plan_frame_list", "vid_to_cocovid",
    "classes_of_categories", "cocovid_to_vid", "MotSequence", "MotRow", "parse_mot_classes", "find_mot_sequences",
    "read_mot_rows", "decode_video", "mot_to_cocovid", "source_kind", "convert", "run_conversion",
]

Number = Union[int, float]
T = TypeVar("T")

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
_PROGRESS_MIN = 2000  # conversions of fewer images run without a progress bar
_JPEG_QUALITY = 95    # decoded video frames


class ConvertError(RuntimeError):
    """The conversion cannot run (missing SRC, bad option, unusable file); the message is one line."""


@dataclass
class ConvertResult:
    """What a conversion wrote: ``outputs`` (path, counts), ``notes`` (deliberate changes) and ``problems``."""
    outputs: list[tuple[str, dict[str, int]]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    problems: DataProblems = field(default_factory=DataProblems)

    def lines(self) -> list[str]:
        """The summary printed at the end: one line per output, then the notes."""
        out = [f"{path}: " + ", ".join(f"{n} {k}" for k, n in counts.items()) for path, counts in self.outputs]
        return out + [f"note: {n}" for n in self.notes]


# ------------------------------------------------------------------------------------------------
# numbers and boxes
# ------------------------------------------------------------------------------------------------
def _number(text: str) -> Number:
    """An XML/MOT number: an int when written as one (so integer boxes stay integers), else a finite float."""
    t = text.strip()
    try:
        return int(t)
    except ValueError:
        v = float(t)
    if not math.isfinite(v):
        raise ValueError(f"{t!r} is not finite")
    return v


def _fmt(v: Number) -> str:
    return str(v) if isinstance(v, int) else repr(float(v))


# ------------------------------------------------------------------------------------------------
# ILSVRC XML
# ------------------------------------------------------------------------------------------------
class XmlObject(NamedTuple):
    """One ``<object>`` as written: the XML ``<name>``, ``(xmin, ymin, xmax, ymax)``, and the VID-only fields."""
    name: str
    box: tuple[Number, Number, Number, Number]
    trackid: int | None = None
    occluded: int | None = None


def _opt_int(elem: ET.Element, tag: str) -> int | None:
    child = elem.find(tag)
    if child is None or child.text is None:
        return None
    try:
        return int(child.text.strip())
    except ValueError:
        return None


def read_ilsvrc_xml(path: str, problems: DataProblems) -> tuple[int | None, int | None, list[XmlObject]] | None:
    """``(width, height, objects)`` of a VID or DET XML, boxes as written (no clamping, no class filter).

    ``None`` when the file is missing or unreadable (reported). An object without a name or a numeric
    ``bndbox`` is reported and left out. ``width``/``height`` are ``None`` when ``<size>`` is missing.
    """
    try:
        tree = ET.parse(path)
    except FileNotFoundError:
        problems.add("missing annotation", path, "annotation XML not found")
        return None
    except (ET.ParseError, OSError) as e:
        problems.add("bad annotation", path, f"cannot parse XML ({e})")
        return None
    size = tree.find("size")
    width = height = None
    if size is not None:
        try:
            width, height = (int(float(size.find(t).text)) for t in ("width", "height"))  # type: ignore[union-attr,arg-type]
        except (AttributeError, TypeError, ValueError):
            width = height = None
    objects = []
    for k, obj in enumerate(tree.findall("object")):
        name_el = obj.find("name")
        name = name_el.text.strip() if name_el is not None and name_el.text else ""
        if not name:
            problems.add("bad annotation", path, f"object {k}: no <name>")
            continue
        try:
            bb = obj.find("bndbox")
            x1, y1, x2, y2 = (_number(bb.find(t).text) for t in ("xmin", "ymin", "xmax", "ymax"))  # type: ignore[union-attr,arg-type]
        except (AttributeError, TypeError, ValueError):
            problems.add("bad box", path, f"object {k} ({name}): bndbox missing or not numeric")
            continue
        objects.append(XmlObject(name, (x1, y1, x2, y2), _opt_int(obj, "trackid"), _opt_int(obj, "occluded")))
    return width, height, objects


def _xml_head(folder: str, filename: str, database: str, width: int, height: int) -> str:
    return (f"<annotation>\n\t<folder>{escape(folder)}</folder>\n\t<filename>{escape(filename)}</filename>\n"
            f"\t<source>\n\t\t<database>{database}</database>\n\t</source>\n"
            f"\t<size>\n\t\t<width>{width}</width>\n\t\t<height>{height}</height>\n\t</size>\n")


def vid_frame_xml(folder: str, filename: str, width: int, height: int, objects: Iterable[XmlObject]) -> str:
    """An ILSVRC2015 VID frame annotation, elements in the real files' order (xmax before xmin).

    ``<trackid>`` is left out when unknown; ``<occluded>`` is 0 when unknown and ``<generated>`` always 0
    (the COCO-video format carries neither)."""
    parts = [_xml_head(folder, filename, "ILSVRC_2015", width, height)]
    for ob in objects:
        x1, y1, x2, y2 = (_fmt(v) for v in ob.box)
        track = f"\t\t<trackid>{ob.trackid}</trackid>\n" if ob.trackid is not None else ""
        parts.append(f"\t<object>\n{track}\t\t<name>{escape(ob.name)}</name>\n"
                     f"\t\t<bndbox>\n\t\t\t<xmax>{x2}</xmax>\n\t\t\t<xmin>{x1}</xmin>\n\t\t\t<ymax>{y2}</ymax>\n"
                     f"\t\t\t<ymin>{y1}</ymin>\n\t\t</bndbox>\n\t\t<occluded>{ob.occluded or 0}</occluded>\n"
                     f"\t\t<generated>0</generated>\n\t</object>\n")
    parts.append("</annotation>\n")
    return "".join(parts)


def det_image_xml(folder: str, filename: str, width: int, height: int, objects: Iterable[XmlObject]) -> str:
    """An ILSVRC DET annotation (name and bndbox xmin, xmax, ymin, ymax per object)."""
    parts = [_xml_head(folder, filename, "ILSVRC_2014", width, height)]
    for ob in objects:
        x1, y1, x2, y2 = (_fmt(v) for v in ob.box)
        parts.append(f"\t<object>\n\t\t<name>{escape(ob.name)}</name>\n\t\t<bndbox>\n\t\t\t<xmin>{x1}</xmin>\n"
                     f"\t\t\t<xmax>{x2}</xmax>\n\t\t\t<ymin>{y1}</ymin>\n\t\t\t<ymax>{y2}</ymax>\n"
                     f"\t\t</bndbox>\n\t</object>\n")
    parts.append("</annotation>\n")
    return "".join(parts)


# ------------------------------------------------------------------------------------------------
# small helpers
# ------------------------------------------------------------------------------------------------
def _progress(items: Sequence[T], desc: str, enabled: bool) -> Iterable[T]:
    """``items`` behind a progress bar when there are many of them."""
    if enabled and len(items) >= _PROGRESS_MIN:
        return tqdm(items, desc=desc, unit="img", mininterval=1.0, file=sys.stderr)
    return items


def _image_size(path: str) -> tuple[int, int] | None:
    """``(width, height)`` of an image file by decoding it; ``None`` when it cannot be read."""
    img = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    return None if img is None else (int(img.shape[1]), int(img.shape[0]))


def _rel_posix(path: str, start: str) -> str:
    return os.path.relpath(os.path.abspath(path), os.path.abspath(start)).replace(os.sep, "/")


def _safe_relpath(name: str) -> str:
    """A video name usable as a folder path under ``Data/VID/<split>``: no ``..``, no absolute part and no
    whitespace (list files split on it)."""
    parts = [re.sub(r"\s+", "_", p) for p in name.replace("\\", "/").split("/")]
    return "/".join(p for p in parts if p not in ("", ".", ".."))


def _natural_key(name: str) -> list[Any]:
    """Sort key putting ``frame2`` before ``frame10``."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _place_image(src: str, dst: str) -> bool:
    """Hard-link ``src`` at ``dst`` (copy where linking fails), atomically; True when linked."""
    directory = os.path.dirname(dst)
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(dst)}.{os.getpid()}.link")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    try:
        os.link(src, tmp)
    except OSError:  # another file system, or links not allowed: copy
        with open(src, "rb") as fin, atomic_open(dst, "wb") as fout:
            shutil.copyfileobj(fin, fout)
        return False
    os.replace(tmp, dst)
    with contextlib.suppress(FileNotFoundError):  # rename() does nothing when both name the same file
        os.unlink(tmp)
    return True


class _CocoFile:
    """One COCO-video file being built: categories from a class list, ids handed out in order."""

    def __init__(self, path: str, classes: ClassList) -> None:
        self.path = path
        self.folder = os.path.dirname(os.path.abspath(path))
        self.categories = [{"id": k, "name": n, **({"encode_name": i} if i != n else {})}
                           for k, (i, n) in enumerate(zip(classes.ids[1:], classes.names[1:]), 1)]
        self.videos: list[dict[str, Any]] = []
        self.images: list[dict[str, Any]] = []
        self.annotations: list[dict[str, Any]] = []
        self._video_ids: dict[str, int] = {}

    def video_id(self, name: str) -> int:
        if name not in self._video_ids:
            self._video_ids[name] = len(self.videos) + 1
            self.videos.append({"id": self._video_ids[name], "name": name})
        return self._video_ids[name]

    def add_image(self, image_id: int, path: str, width: int, height: int, video_id: int | None = None,
                  frame_id: int | None = None) -> None:
        rec: dict[str, Any] = {"id": image_id, "file_name": _rel_posix(path, self.folder), "height": height,
                               "width": width}
        if video_id is not None:
            rec.update(video_id=video_id, frame_id=frame_id)
        self.images.append(rec)

    def add_object(self, image_id: int, category_id: int, bbox: list[Number], video_id: int | None = None,
                   instance_id: int | None = None, occluded: int | None = None) -> None:
        rec: dict[str, Any] = {"id": len(self.annotations) + 1, "image_id": image_id}
        if video_id is not None:
            rec["video_id"] = video_id
        rec.update(category_id=category_id, bbox=bbox, area=bbox[2] * bbox[3], iscrowd=0)
        if instance_id is not None:
            rec["instance_id"] = instance_id
        if occluded is not None:
            rec["occluded"] = occluded
        self.annotations.append(rec)

    def counts(self) -> dict[str, int]:
        return {"categories": len(self.categories), "videos": len(self.videos), "images": len(self.images),
                "annotations": len(self.annotations)}

    def write(self) -> None:
        data = {"categories": self.categories, "videos": self.videos, "images": self.images,
                "annotations": self.annotations}
        atomic_write_text(self.path, json.dumps(data, separators=(",", ":")))


# ------------------------------------------------------------------------------------------------
# VID -> COCO-video
# ------------------------------------------------------------------------------------------------
class ListFrame(NamedTuple):
    """One image a list gives: its index (relative to ``Data/<DET|VID>``, no extension), video and frame."""
    index: str
    video: str | None
    frame: int | None
    image_id: int


def _renumbered(frames: list[ListFrame]) -> list[ListFrame]:
    return [f._replace(image_id=k) for k, f in enumerate(frames, 1)]


def plan_video_list(rows: list[list[str]], list_path: str, problems: DataProblems
                    ) -> tuple[list[ListFrame], str | None]:
    """Every frame of every video of a 4-column list, and a note when the image ids are not the list's."""
    videos: dict[str, tuple[int, int]] = {}  # video -> (column 2, frames)
    starts_only = True  # every line is a video's frame 0 and names a new video (VID_val_videos)
    for k, (video, fid, sid, slen) in enumerate(rows, 1):
        if int(slen) <= 0:
            problems.add("empty video", list_path, f"row {k}: {video} has {slen} frames")
            continue
        if video in videos:
            starts_only = False
            if videos[video][1] != int(slen):
                problems.add("bad list line", list_path, f"row {k}: {video} has {slen} frames here but "
                             f"{videos[video][1]} on an earlier row; the first is used")
            continue
        starts_only = starts_only and int(sid) == 0
        videos[video] = (int(fid), int(slen))
    frames = [ListFrame(f"{v}/{f:06d}", v, f, first + f) for v, (first, n) in videos.items() for f in range(n)]
    if starts_only and len({f.image_id for f in frames}) == len(frames):
        return frames, None
    why = "its frame ids overlap" if starts_only else "it lists sampled frames (column 3), not whole videos"
    return _renumbered(frames), (f"{list_path}: every frame of its {len(videos)} videos is converted and images "
                                 f"are numbered 1..{len(frames)}: {why}")


def plan_frame_list(rows: list[list[str]], kind: str, list_path: str, problems: DataProblems
                    ) -> tuple[list[ListFrame], str | None]:
    """The images of a 2-column list (DET: still images; VID: frames of their folder's video), once each."""
    first: dict[str, int] = {}
    for index, fid in rows:
        first.setdefault(index, int(fid))
    frames = []
    for index, fid in first.items():
        if kind == "DET":
            frames.append(ListFrame(index, None, None, fid))
            continue
        video, _, num = index.rpartition("/")
        if not video or not num.isdigit():
            problems.add("bad list line", list_path, f"{index}: a VID frame index must be <video>/<frame number>")
            continue
        frames.append(ListFrame(index, video, int(num), fid))
    notes = []
    if len(first) < len(rows):
        notes.append(f"{len(rows) - len(first)} repeated lines converted once")
    if len({f.image_id for f in frames}) < len(frames):
        frames = _renumbered(frames)
        notes.append(f"column 2 is not unique: images are numbered 1..{len(frames)}")
    return frames, (f"{list_path}: " + "; ".join(notes) if notes else None)


def _json_outputs(root: str, dst: str, image_sets: Sequence[str] | None) -> list[tuple[str, str]]:
    """``(list name, JSON path)`` per chosen list; errors for unknown lists or a ``.json`` DST with several."""
    set_dir = os.path.join(root, "ImageSets")
    available = sorted(f[:-4] for f in os.listdir(set_dir) if f.endswith(".txt")) if os.path.isdir(set_dir) else []
    if not available:
        raise ConvertError(f"{set_dir}: no image-set list (*.txt); make them with "
                           f"`python tools/make_imagesets.py --root {root}`")
    chosen = [s[:-4] if s.endswith(".txt") else s for s in image_sets] if image_sets else available
    unknown = [s for s in chosen if s not in available]
    if unknown:
        raise ConvertError(f"{set_dir}: no list {', '.join(unknown)} (there are {', '.join(available)})")
    if dst.lower().endswith(".json"):
        if len(chosen) != 1:
            raise ConvertError(f"{dst}: one JSON file holds one list, but {len(chosen)} are chosen "
                               f"({', '.join(chosen)}); give a folder or --image-sets with one list")
        return [(chosen[0], dst)]
    return [(name, os.path.join(dst, name + ".json")) for name in chosen]


def _add_list_frame(out: _CocoFile, root: str, kind: str, fr: ListFrame, id_to_index: dict[str, int],
                    problems: DataProblems, dropped: Counter[str]) -> None:
    """One image of a list and its objects (bad ones reported and skipped)."""
    image = os.path.join(root, "Data", kind, fr.index + ".JPEG")
    if not os.path.isfile(image):
        problems.add("missing image", image, "listed but not found")
        return
    xml = os.path.join(root, "Annotations", kind, fr.index + ".xml")
    parsed = read_ilsvrc_xml(xml, problems)
    if parsed is None and fr.video is None:
        return  # a still image without its annotation is of no use; a video frame keeps its video whole
    width, height, objects = parsed if parsed is not None else (None, None, [])
    if width is None or height is None or width < 1 or height < 1:
        size = _image_size(image)
        if size is None:
            problems.add("unreadable image", image, "no <size> in its XML and the image cannot be decoded")
            return
        width, height = size
    video_id = out.video_id(fr.video) if fr.video is not None else None
    out.add_image(fr.image_id, image, width, height, video_id, fr.frame)
    for k, ob in enumerate(objects):
        cls = id_to_index.get(ob.name)
        if cls is None:
            dropped[ob.name] += 1
            continue
        bad = box_problem(ob.box, width, height)
        if bad is not None:
            problems.add(bad[0], xml, f"object {k} ({ob.name}): {bad[1]}")
            continue
        out.add_object(fr.image_id, cls, vid_box_to_bbox(ob.box), video_id,
                       ob.trackid if video_id is not None else None, ob.occluded)


def vid_to_cocovid(root: str, dst: str, image_sets: Sequence[str] | None = None, *, progress: bool = True,
                   problems: DataProblems | None = None) -> ConvertResult:
    """Convert the lists of an ILSVRC2015-style root to COCO-video files (see the module docstring)."""
    if not os.path.isdir(root):
        raise ConvertError(f"{root}: ILSVRC2015-style root not found")
    result = ConvertResult(problems=problems if problems is not None else DataProblems())
    try:
        classes = class_list_of_root(root)
    except ValueError as e:
        raise ConvertError(str(e)) from None
    id_to_index = classes.id_to_index
    for name, json_path in _json_outputs(root, dst, image_sets):
        list_path = os.path.join(root, "ImageSets", name + ".txt")
        kind = name.split("_")[0]
        if kind not in ("DET", "VID"):
            result.problems.add("bad list", list_path, "a list name must start with DET_ or VID_ (it selects "
                                "Data/DET or Data/VID)")
            continue
        try:
            rows, ncols = read_image_set_file(list_path)
        except ValueError as e:
            result.problems.add("bad list", list_path, str(e))
            continue
        if ncols == 4:
            frames, note = plan_video_list(rows, list_path, result.problems)
        else:
            frames, note = plan_frame_list(rows, kind, list_path, result.problems)
        if note:
            result.notes.append(note)
        out = _CocoFile(json_path, classes)
        dropped: Counter[str] = Counter()
        for fr in _progress(frames, f"converting {name}", progress):
            _add_list_frame(out, root, kind, fr, id_to_index, result.problems, dropped)
        out.write()
        result.outputs.append((json_path, out.counts()))
        if dropped:
            result.notes.append(f"{list_path}: {sum(dropped.values())} objects of classes outside the class list "
                                f"dropped ({', '.join(sorted(dropped))})")
    if not result.outputs:
        raise ConvertError(f"{root}: no list could be converted ({result.problems.summary('lists')})")
    return result


# ------------------------------------------------------------------------------------------------
# COCO-video -> VID
# ------------------------------------------------------------------------------------------------
class _CocoImage:
    """A checked image record of the source JSON and the objects to write for it."""
    __slots__ = ("id", "path", "width", "height", "video", "frame", "objects")

    def __init__(self, image_id: int, path: str, width: int, height: int, video: int | None, frame: int | None):
        self.id, self.path, self.width, self.height = image_id, path, width, height
        self.video, self.frame = video, frame
        self.objects: list[XmlObject] = []


def classes_of_categories(path: str, categories: Sequence[Any]) -> tuple[ClassList, dict[int, int]]:
    """:func:`dff.dataset.cocovid.categories_class_list`, its error as a :class:`ConvertError`."""
    try:
        return categories_class_list(path, categories)
    except CocoVideoError as e:
        raise ConvertError(str(e)) from None


def _video_names(path: str, videos: Sequence[Any], problems: DataProblems, notes: list[str]) -> dict[int, str]:
    """``video id -> folder name`` (made safe and unique) for the valid video records."""
    out: dict[int, str] = {}
    used: set[str] = set()
    changed = 0
    for k, v in enumerate(videos):
        if not isinstance(v, dict) or not isinstance(v.get("id"), int) or isinstance(v.get("id"), bool):
            problems.add("bad record", path, f"videos[{k}]: needs an integer 'id'")
            continue
        if v["id"] in out:
            problems.add("bad record", path, f"videos[{k}]: video id {v['id']} is used twice")
            continue
        raw = str(v.get("name") or "")
        name = _safe_relpath(raw) or f"video_{v['id']}"
        if name in used:
            name = f"{name}_{v['id']}"
        changed += name != raw
        used.add(name)
        out[v["id"]] = name
    if changed:
        notes.append(f"{path}: {changed} video names changed to be folder names (no '..', no spaces, unique)")
    return out


def _cocovid_images(path: str, data: dict[str, Any], videos: dict[int, str], problems: DataProblems
                    ) -> dict[int, _CocoImage]:
    """Checked image records by id (bad ones reported and left out)."""
    folder = os.path.dirname(os.path.abspath(path))
    out: dict[int, _CocoImage] = {}
    for k, rec in enumerate(data["images"]):
        what = f"images[{k}]"
        if not isinstance(rec, dict) or not isinstance(rec.get("id"), int) or isinstance(rec.get("id"), bool) \
                or not isinstance(rec.get("file_name"), str):
            problems.add("bad record", path, f"{what}: needs an integer 'id' and a string 'file_name'")
            continue
        if rec["id"] in out:
            problems.add("bad record", path, f"{what}: image id {rec['id']} is used twice")
            continue
        image = os.path.normpath(os.path.join(folder, rec["file_name"]))
        if not os.path.isfile(image):
            problems.add("missing image", image, f"{path}: {what} (id {rec['id']}): file not found")
            continue
        video, frame = rec.get("video_id"), rec.get("frame_id")
        if video is not None and not (isinstance(video, int) and video < 0):  # mmtracking marks stills with -1
            if video not in videos or not isinstance(frame, int) or frame < 0:
                problems.add("bad record", path, f"{what} (id {rec['id']}): video_id {video!r} is not a video "
                             f"or frame_id {frame!r} is not a frame number")
                continue
        else:
            video = frame = None
        width, height = rec.get("width"), rec.get("height")
        if not (isinstance(width, int) and isinstance(height, int) and width >= 1 and height >= 1):
            size = _image_size(image)
            if size is None:
                problems.add("unreadable image", image, f"{path}: {what}: no width/height and cannot be decoded")
                continue
            width, height = size
        out[rec["id"]] = _CocoImage(rec["id"], image, width, height, video, frame)
    return out


def _cocovid_objects(path: str, annotations: Sequence[Any], images: dict[int, _CocoImage],
                     cat_index: dict[int, int], classes: ClassList, problems: DataProblems) -> int:
    """Attach the valid annotations to their images as XML objects, in file order; returns the crowd/ignore
    annotations left out."""
    crowd = 0
    for k, a in enumerate(annotations):
        what = f"annotations[{k}]"
        if not isinstance(a, dict):
            problems.add("bad record", path, f"{what}: not an object")
            continue
        im = images.get(a.get("image_id"))  # type: ignore[arg-type]
        if im is None:
            problems.add("unknown image", path, f"{what} (id {a.get('id')}): image_id {a.get('image_id')!r} is not "
                         "a usable image")
            continue
        if a.get("iscrowd") or a.get("ignore"):
            crowd += 1  # no VID counterpart
            continue
        cls = cat_index.get(a.get("category_id"))  # type: ignore[arg-type]
        if cls is None:
            problems.add("unknown category", path, f"{what} (id {a.get('id')}): category_id "
                         f"{a.get('category_id')!r} is not in 'categories'")
            continue
        bbox = a.get("bbox")
        if not isinstance(bbox, list) or len(bbox) != 4 or not all(is_number(v) for v in bbox):
            problems.add("bad box", path, f"{what} (id {a.get('id')}): bbox {bbox!r} is not [x, y, w, h]")
            continue
        box = bbox_to_vid_box(bbox)
        bad = box_problem(box, im.width, im.height)
        if bad is not None:
            problems.add(bad[0], path, f"{what} (id {a.get('id')}, image {im.path}): bbox {bbox}: {bad[1]}")
            continue
        track, occ = a.get("instance_id"), a.get("occluded")
        track = track if isinstance(track, int) and not isinstance(track, bool) and track >= 0 else None
        occ = int(occ) if isinstance(occ, (int, bool)) else None
        im.objects.append(XmlObject(classes.ids[cls], box, track if im.video is not None else None, occ))
    return crowd


def _check_new_root(dst: str) -> None:
    present = [d for d in ("Data", "Annotations", "ImageSets", "classes.txt") if os.path.exists(os.path.join(dst, d))]
    if present:
        raise ConvertError(f"{dst}: already holds {', '.join(present)}; choose a new directory")


def _video_frames(frames: list[_CocoImage], name: str, problems: DataProblems) -> list[_CocoImage]:
    """A video's frames in ``frame_id`` order, a repeated frame number reported and dropped."""
    frames = sorted(frames, key=lambda im: im.frame)  # type: ignore[arg-type,return-value]
    out: list[_CocoImage] = []
    for im in frames:
        if out and out[-1].frame == im.frame:
            problems.add("duplicate frame", im.path, f"video {name!r}: frame_id {im.frame} is also image "
                         f"{out[-1].id}'s")
            continue
        out.append(im)
    return out


def _split_index(split: str, video: str) -> str:
    """A video's path under ``Data/VID``: ``<split>/<video>``, or the video name itself when it already starts
    with ``<split>/`` (the names of a JSON made from a VID root's lists, ``val/ILSVRC2015_val_00000000``,
    converted back with ``--split val``), so the split is not doubled."""
    return video if video.startswith(f"{split}/") else f"{split}/{video}"


def _write_vid_part(dst: str, split: str, video_frames: dict[str, list[_CocoImage]], progress: bool,
                    notes: list[str], stats: Counter[str]) -> None:
    """Frames, XMLs and ``VID_<split>_videos.txt`` of the video frames."""
    renumbered = [v for v, fr in video_frames.items() if [im.frame for im in fr] != list(range(len(fr)))]
    if renumbered:
        notes.append(f"{len(renumbered)} videos have frame_id gaps (e.g. {renumbered[0]!r}): their frames are "
                     "renumbered 0..n-1 in frame_id order")
    jobs = [(_split_index(split, v), pos, im) for v, fr in video_frames.items() for pos, im in enumerate(fr)]
    for index, pos, im in _progress(jobs, "writing VID frames", progress):
        stats["linked" if _place_image(im.path, os.path.join(dst, "Data", "VID", index, f"{pos:06d}.JPEG"))
              else "copied"] += 1
        xml = vid_frame_xml(index, f"{pos:06d}", im.width, im.height, im.objects)
        atomic_write_text(os.path.join(dst, "Annotations", "VID", index, f"{pos:06d}.xml"), xml)
        stats["objects"] += len(im.objects)
    items = [(_split_index(split, v), fr) for v, fr in video_frames.items()]
    consecutive = all([im.id for im in fr] == list(range(fr[0].id, fr[0].id + len(fr))) for _, fr in items)
    if consecutive:
        lines: Iterable[str] = (f"{index} {fr[0].id} 0 {len(fr)}" for index, fr in items)
    else:
        notes.append(f"image ids are not consecutive within every video: VID_{split}_videos.txt numbers the "
                     "frames from 1 over all videos (results files use these ids, not the JSON's)")
        lines = vid_val_videos_lines((index, len(fr)) for index, fr in items)
    write_lines(os.path.join(dst, "ImageSets", f"VID_{split}_videos.txt"), lines)
    stats["videos"] = len(items)
    stats["frames"] = len(jobs)


def _write_det_part(dst: str, split: str, stills: list[_CocoImage], progress: bool, notes: list[str],
                    stats: Counter[str]) -> None:
    """Still images, DET XMLs and ``DET_<split>.txt``."""
    used: set[str] = set()
    lines = []
    clashes = 0
    for im in _progress(stills, "writing DET images", progress):
        stem = _safe_relpath(os.path.splitext(os.path.basename(im.path))[0]) or f"image_{im.id}"
        if stem in used:
            stem, clashes = f"{stem}_{im.id}", clashes + 1
        used.add(stem)
        stats["linked" if _place_image(im.path, os.path.join(dst, "Data", "DET", split, stem + ".JPEG"))
              else "copied"] += 1
        atomic_write_text(os.path.join(dst, "Annotations", "DET", split, stem + ".xml"),
                          det_image_xml(split, stem, im.width, im.height, im.objects))
        stats["objects"] += len(im.objects)
        lines.append(f"{split}/{stem} {im.id}")
    if clashes:
        notes.append(f"{clashes} still images share a file name with another: named <stem>_<image id>")
    write_lines(os.path.join(dst, "ImageSets", f"DET_{split}.txt"), lines)
    stats["still images"] = len(stills)


def cocovid_to_vid(src: str, dst: str, split: str | None = None, *, progress: bool = True,
                   problems: DataProblems | None = None) -> ConvertResult:
    """Write a new ILSVRC2015-style root from a COCO-video file (see the module docstring)."""
    result = ConvertResult(problems=problems if problems is not None else DataProblems())
    try:
        data = read_cocovid_json(src)
    except (FileNotFoundError, CocoVideoError) as e:
        raise ConvertError(str(e).splitlines()[0]) from None
    split = _safe_relpath(split or os.path.splitext(os.path.basename(src))[0]).replace("/", "_")
    if not split:
        raise ConvertError(f"{src}: no split name; give --split")
    _check_new_root(dst)
    classes, cat_index = classes_of_categories(src, data["categories"])
    if sorted(cat_index) != list(range(1, len(cat_index) + 1)):
        result.notes.append(f"{src}: category ids {sorted(cat_index)} become class indices 1..{len(cat_index)}")
    names = _video_names(src, data.get("videos", []), result.problems, result.notes)
    images = _cocovid_images(src, data, names, result.problems)
    crowd = _cocovid_objects(src, data["annotations"], images, cat_index, classes, result.problems)
    if crowd:
        result.notes.append(f"{src}: {crowd} crowd/ignore annotations left out (VID has no such objects)")
    if not images:
        raise ConvertError(f"{src}: no usable image ({result.problems.summary('images')})")
    by_video: dict[int, list[_CocoImage]] = defaultdict(list)
    stills = []
    for im in images.values():
        (by_video[im.video] if im.video is not None else stills).append(im)
    video_frames = {names[v]: _video_frames(by_video[v], names[v], result.problems) for v in names if by_video[v]}
    stats: Counter[str] = Counter()
    if video_frames:
        _write_vid_part(dst, split, video_frames, progress, result.notes, stats)
    if stills:
        _write_det_part(dst, split, stills, progress, result.notes, stats)
    if not classes.is_vid:
        write_class_file(dst, classes)
    order = ("videos", "frames", "still images", "objects", "linked", "copied")
    result.outputs.append((dst, {"classes": len(classes.ids) - 1, **{k: stats[k] for k in order if k in stats}}))
    return result


# ------------------------------------------------------------------------------------------------
# MOT -> COCO-video
# ------------------------------------------------------------------------------------------------
@dataclass
class MotSequence:
    """One video of a MOT-style folder: its frames (a folder's images, or a video file to decode) and
    its annotation file."""
    name: str
    frames: list[str] = field(default_factory=list)
    video_file: str | None = None
    annotations: str | None = None


class MotRow(NamedTuple):
    """A kept annotation row: MOT frame (from 1), track id, ``[x, y, w, h]`` as written, class index, line."""
    frame: int
    track: int
    bbox: list[Number]
    category: int
    line: int


def parse_mot_classes(spec: str) -> dict[int, str]:
    """``"1=pedestrian,3=car"`` -> ``{1: "pedestrian", 3: "car"}`` (in the given order)."""
    out: dict[int, str] = {}
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        key, sep, name = item.partition("=")
        if not sep or not key.strip().lstrip("-").isdigit() or not name.strip():
            raise ConvertError(f"--mot-classes: {item!r} is not <MOT class number>=<name>")
        if int(key) in out:
            raise ConvertError(f"--mot-classes: MOT class {int(key)} is given twice")
        out[int(key)] = name.strip()
    if not out:
        raise ConvertError("--mot-classes: no class given")
    return out


def _image_files(folder: str) -> list[str]:
    if not os.path.isdir(folder):
        return []
    names = [e.name for e in os.scandir(folder) if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS)]
    return [os.path.join(folder, n) for n in sorted(names, key=_natural_key)]


def find_mot_sequences(src: str, problems: DataProblems) -> list[MotSequence]:
    """The videos of a MOT-style folder in name order (see the module docstring for the layouts)."""
    seqs: dict[str, MotSequence] = {}
    side_txt: dict[str, str] = {}
    for e in sorted(os.scandir(src), key=lambda e: e.name):
        stem, ext = os.path.splitext(e.name)
        if e.is_dir():
            img1 = os.path.join(e.path, "img1")
            frames = _image_files(img1 if os.path.isdir(img1) else e.path)
            gt = os.path.join(e.path, "gt", "gt.txt")
            if frames or os.path.isfile(gt):
                seq = seqs.setdefault(e.name, MotSequence(e.name))
                seq.frames = frames
                seq.annotations = gt if os.path.isfile(gt) else None
        elif ext.lower() in VIDEO_EXTENSIONS:
            seqs.setdefault(stem, MotSequence(stem)).video_file = e.path
        elif ext.lower() == ".txt":
            side_txt[stem] = e.path
    for stem, path in side_txt.items():
        if stem in seqs:
            seqs[stem].annotations = path  # beside the video wins over <name>/gt/gt.txt
        else:
            problems.add("annotation without video", path, f"no video file or frame folder named {stem!r} beside it")
    return [seqs[k] for k in sorted(seqs)]


def read_mot_rows(path: str, categories: dict[int, int] | None, problems: DataProblems,
                  skipped: Counter[str]) -> list[MotRow] | None:
    """The rows of a MOT annotation file to keep (``None`` when unreadable): conf-0 rows and rows of other
    classes are counted in ``skipped``; malformed rows are reported. ``categories`` maps MOT classes to class
    indices (``None``: every row is class 1)."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        problems.add("bad annotation", path, f"cannot read ({e})")
        return None
    out = []
    for lineno, line in enumerate(lines, 1):
        parts = [p for p in re.split(r"[,\s]+", line.strip()) if p]
        if not parts:
            continue
        try:
            if len(parts) < 6:
                raise ValueError(f"{len(parts)} columns, need frame, id, x, y, w, h")
            frame, track = int(_number(parts[0])), int(_number(parts[1]))
            bbox = [_number(p) for p in parts[2:6]]
            conf = float(parts[6]) if len(parts) > 6 else 1.0
            mot_class = int(_number(parts[7])) if len(parts) > 7 else None
        except ValueError as e:
            problems.add("bad annotation row", f"{path}:{lineno}", f"{line.strip()!r}: {e}")
            continue
        if conf == 0:
            skipped["conf 0 rows"] += 1  # MOT's "do not consider" flag
            continue
        category = 1
        if categories is not None:
            if mot_class is None:
                problems.add("bad annotation row", f"{path}:{lineno}", f"{line.strip()!r}: no class column (8)")
                continue
            if mot_class not in categories:
                skipped["rows of other MOT classes"] += 1
                continue
            category = categories[mot_class]
        out.append(MotRow(frame, track, bbox, category, lineno))
    return out


def decode_video(path: str, out_dir: str, problems: DataProblems) -> list[str]:
    """Decode a video file to ``out_dir/%06d.jpg`` (from 1); the frame paths, empty when unreadable."""
    cap = cv2.VideoCapture(path)
    frames: list[str] = []
    try:
        while cap.isOpened():
            ok, img = cap.read()
            if not ok:
                break
            ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, _JPEG_QUALITY])
            if not ok:
                break
            frames.append(os.path.join(out_dir, f"{len(frames) + 1:06d}.jpg"))
            atomic_write_bytes(frames[-1], buf.tobytes())
    finally:
        cap.release()
    if not frames:
        problems.add("unreadable video", path, "OpenCV decodes no frame from it")
    return frames


def _add_mot_sequence(out: _CocoFile, seq: MotSequence, frames_root: str, categories: dict[int, int] | None,
                      problems: DataProblems, skipped: Counter[str]) -> None:
    """One video: its frames as images, its kept rows as annotations."""
    frames = seq.frames
    if not frames and seq.video_file is not None:
        frames = decode_video(seq.video_file, os.path.join(frames_root, seq.name), problems)
    if not frames:
        if seq.video_file is None:
            problems.add("missing image", seq.annotations or seq.name, f"annotations of {seq.name!r} but no frames")
        return
    size = _image_size(frames[0])
    if size is None:
        problems.add("unreadable image", frames[0], f"first frame of {seq.name!r}; video skipped")
        return
    width, height = size
    rows_by_frame: dict[int, list[MotRow]] = defaultdict(list)
    if seq.annotations is None:
        problems.add("missing annotation", seq.video_file or os.path.dirname(frames[0]),
                     f"no {seq.name}.txt or {seq.name}/gt/gt.txt; frames kept without objects")
    else:
        for row in read_mot_rows(seq.annotations, categories, problems, skipped) or []:
            if not 1 <= row.frame <= len(frames):
                problems.add("missing image", f"{seq.annotations}:{row.line}",
                             f"frame {row.frame}, but the video has frames 1..{len(frames)}")
                continue
            rows_by_frame[row.frame].append(row)
    video_id = out.video_id(seq.name)
    for k, path in enumerate(frames):
        image_id = len(out.images) + 1
        out.add_image(image_id, path, width, height, video_id, k)
        for row in rows_by_frame.get(k + 1, []):
            # MOT sizes are pixel extents: a width or height of 0 has no area (in the VID box convention
            # below, w = 0 would be a one-pixel box)
            bad = (("box with no area", f"bbox {row.bbox} has no area") if not (row.bbox[2] > 0 and row.bbox[3] > 0)
                   else box_problem(bbox_to_vid_box(row.bbox), width, height))
            if bad is not None:
                problems.add(bad[0], f"{seq.annotations}:{row.line}", f"track {row.track}: {bad[1]}")
                continue
            out.add_object(image_id, row.category, row.bbox, video_id, row.track)


def mot_to_cocovid(src: str, dst: str, class_name: str = "object", mot_classes: dict[int, str] | None = None, *,
                   progress: bool = True, problems: DataProblems | None = None) -> ConvertResult:
    """Convert a MOT-style folder to one COCO-video file (see the module docstring)."""
    if not os.path.isdir(src):
        raise ConvertError(f"{src}: MOT-style folder not found")
    result = ConvertResult(problems=problems if problems is not None else DataProblems())
    json_path = dst if dst.lower().endswith(".json") else os.path.join(
        dst, os.path.basename(os.path.normpath(os.path.abspath(src))) + ".json")
    names = list(mot_classes.values()) if mot_classes else [class_name]
    try:
        classes = ClassList.from_lists([re.sub(r"\s+", "_", n) for n in names], names, source="class names")
    except ValueError as e:
        raise ConvertError(str(e)) from None
    categories = {c: k for k, c in enumerate(mot_classes, 1)} if mot_classes else None
    seqs = find_mot_sequences(src, result.problems)
    if not seqs:
        raise ConvertError(f"{src}: no video file ({', '.join(VIDEO_EXTENSIONS)}) or frame folder found")
    out = _CocoFile(json_path, classes)
    frames_root = os.path.join(os.path.dirname(os.path.abspath(json_path)), "frames")
    skipped: Counter[str] = Counter()
    for seq in tqdm(seqs, desc="converting videos", unit="video", disable=not progress or len(seqs) < 20,
                    file=sys.stderr):
        _add_mot_sequence(out, seq, frames_root, categories, result.problems, skipped)
    if not out.images:
        raise ConvertError(f"{src}: no usable video ({result.problems.summary('videos')})")
    out.write()
    result.outputs.append((json_path, out.counts()))
    result.notes += [f"{n} {what} left out" for what, n in sorted(skipped.items())]
    return result


# ------------------------------------------------------------------------------------------------
# dispatch and the command line
# ------------------------------------------------------------------------------------------------
def source_kind(src: str) -> str:
    """``"cocovid"`` (a .json file), ``"vid"`` (a folder with Data/, Annotations/ or ImageSets/) or ``"mot"``."""
    if os.path.isfile(src):
        if src.lower().endswith(".json"):
            return "cocovid"
        raise ConvertError(f"{src}: a file SRC must be a COCO-video .json")
    if not os.path.isdir(src):
        raise ConvertError(f"{src}: SRC not found")
    if any(os.path.isdir(os.path.join(src, d)) for d in ("Data", "Annotations", "ImageSets")):
        return "vid"
    return "mot"


def convert(src: str, dst: str, to: str, *, image_sets: Sequence[str] | None = None, split: str | None = None,
            class_name: str = "object", mot_classes: dict[int, str] | None = None, progress: bool = True
            ) -> ConvertResult:
    """Convert SRC to ``to`` (``"cocovid"`` or ``"vid"``), choosing the direction from what SRC is."""
    kind = source_kind(src)
    if to == "cocovid":
        if kind == "vid":
            return vid_to_cocovid(src, dst, image_sets, progress=progress)
        if kind == "mot":
            return mot_to_cocovid(src, dst, class_name, mot_classes, progress=progress)
        raise ConvertError(f"{src}: already a COCO-video file")
    if to == "vid":
        if kind == "cocovid":
            return cocovid_to_vid(src, dst, split, progress=progress)
        raise ConvertError(f"{src}: --to vid needs a COCO-video .json SRC (convert a "
                           f"{'MOT folder with --to cocovid first' if kind == 'mot' else 'VID root with --to cocovid'})")
    raise ConvertError(f"--to {to}: choose cocovid or vid")


def run_conversion(args: argparse.Namespace) -> int:
    """The tool's body: convert, print the summary; 2 with one line on a :class:`ConvertError`."""
    try:
        mot_classes = parse_mot_classes(args.mot_classes) if args.mot_classes else None
        image_sets = [s for s in args.image_sets.split(",") if s] if args.image_sets else None
        result = convert(args.src, args.dst, args.to, image_sets=image_sets, split=args.split,
                         class_name=args.class_name, mot_classes=mot_classes, progress=not args.no_progress)
    except ConvertError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for line in result.lines():
        print(line)
    if result.problems.counts:
        result.problems.print_summary(args.src)
    else:
        print(result.problems.summary(args.src))
    return 0
