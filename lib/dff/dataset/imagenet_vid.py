"""ImageNet VID / DET image sets and their roidb, as built by the reference's ``lib/dataset/imagenet_vid.py``.

Layout (docs/design.md §5.1) under ``dataset_path`` (``./data/ILSVRC2015``)::

    Data/<DET|VID>/<index>.JPEG         Annotations/<DET|VID>/<index>.xml         ImageSets/<name>.txt

``DET`` vs ``VID`` comes from the image-set name prefix (``DET_train_30classes`` -> DET).
List files have two or four space-separated columns:

* 2 columns ``<index> <frame_id>``: one plain image per line (DET lists, ``VID_val_frames``).
* 4 columns ``<video dir> <frame_id> <frame_seg_id> <frame_seg_len>``: one frame of a video per line
  (``VID_train_15frames``, ``VID_val_videos``); the entry's image is ``<dir>/<frame_seg_id:06d>`` and it
  also carries ``pattern`` (``.../<dir>/%06d.JPEG``), ``frame_seg_id`` and ``frame_seg_len``.

A roidb entry is a plain dict, with the reference's keys and dtypes:

=================  =======================================================================================
``image``          absolute path of the JPEG
``index``          the list's image index (``train/.../000010``), port addition used for eval files
``height/width``   float (the reference stores ``float(size.text)``)
``boxes``          (G, 4) uint16 ``x1 y1 x2 y2``: XML box clamped to [0, w-1] / [0, h-1], then truncated
``gt_classes``     (G,) int32 in 1..K (K = 30 for VID)
``gt_overlaps``    (G, K+1) float32 one-hot; ``max_classes`` (G,) int64; ``max_overlaps`` (G,) float32
``flipped``        bool
``frame_id``       int (column 2)
``pattern``, ``frame_seg_id``, ``frame_seg_len``   4-column lists only
=================  =======================================================================================

Objects whose ``name`` is not in the root's class list are skipped (DET has 200 classes). The class list is
the 30 VID wnids, or the root's ``classes.txt`` (:mod:`dff.dataset.classlist`, docs/custom_data.md).

Training roidb (reference ``train_end2end.py``): each list of ``image_set.split('+')`` is loaded, gets its
flipped copies appended (x1' = W - x2 - 1, x2' = W - x1 - 1), the lists are concatenated in order
(DET first for the default set) and entries without a gt box are dropped (:func:`filter_roidb`).

Parsed annotations are cached under ``cache_dir`` in a ``.npz`` (read with ``allow_pickle=False``; the
reference's cache is a pickle, which this port never reads), named after the list, keyed by a hash of
the list file's bytes, the dataset path and :data:`CACHE_VERSION`: editing the list rebuilds it.

Bad data is reported (path and problem, on stderr) and skipped, with per-kind counts at the end: a list
line naming a missing image or XML, an unreadable XML, a box outside the image or degenerate after
clamping (the reference asserts and stops), a video with no frames. A missing list file is an error.
"""
from __future__ import annotations

import hashlib
import os
import sys
import xml.etree.ElementTree as ET
import zipfile
from collections import Counter
from typing import Any, Iterator, NamedTuple, Sequence

import numpy as np
from tqdm import tqdm

from dff.dataset.classes import VID_CLASSES, VID_WNIDS
from dff.dataset.classlist import ClassList, class_list_of_root
from dff.dataset.imagesets import write_lines
from dff.dataset.videos import TestVideo
from dff.utils.io import atomic_open

__all__ = [
    "CLASSES", "WNIDS", "WNID_TO_CLASS", "CACHE_VERSION", "ImageNetVID", "ValVideo", "DataProblems",
    "read_image_set_file", "parse_annotation", "append_flipped_images", "merge_roidb", "filter_roidb",
    "sample_key_frame", "ref_image_path",
]

# docs/design.md §5.1 class table (index 0 = background). dff.eval.vid_eval / classes define the same table.
# the class table (index 0 = background); names kept for the reference's ImageNetVID attributes
CLASSES, WNIDS = VID_CLASSES, VID_WNIDS
WNID_TO_CLASS: dict[str, int] = {w: i for i, w in enumerate(WNIDS) if i > 0}
NUM_CLASSES = len(CLASSES)

# Bump when the parsing rules or the cache layout change: old caches are then rebuilt.
CACHE_VERSION = "imagenet_vid-3"

_PROGRESS_MIN = 2000  # lists shorter than this parse without a progress bar


# ------------------------------------------------------------------------------------------------
# problem reporting
# ------------------------------------------------------------------------------------------------
def missing_dataset_message(path: str) -> str:
    return (f"{path}: dataset folder not found (dataset.dataset_path). Point it at an ILSVRC2015 download "
            f"(then make the lists with `python tools/make_imagesets.py --root {path}`) or generate the "
            f"synthetic mini-VID with `python tools/make_synthetic_vid.py --out {path}`")


class DataProblems:
    """Collects bad-data reports: each is printed (up to ``max_print`` per kind) and counted.

    ``items`` keeps every ``(kind, path, message)``; :meth:`summary` is the one-line count printed at
    the end of a load.
    """

    def __init__(self, max_print: int = 20, stream: Any = None, verbose: bool = True) -> None:
        self.items: list[tuple[str, str, str]] = []
        self.counts: Counter[str] = Counter()
        self.max_print = max_print
        self.stream = stream
        self.verbose = verbose

    def add(self, kind: str, path: str, message: str, *, echo: bool = True) -> None:
        self.items.append((kind, path, message))
        self.counts[kind] += 1
        if echo and self.verbose and self.counts[kind] <= self.max_print:
            print(f"warning: {path}: {message} (skipped)", file=self.stream or sys.stderr)

    def summary(self, what: str) -> str:
        if not self.counts:
            return f"{what}: no bad data"
        parts = ", ".join(f"{n} {k}" for k, n in sorted(self.counts.items()))
        return f"{what}: skipped {parts}"

    def print_summary(self, what: str) -> None:
        if self.verbose and self.counts:
            for k, n in sorted(self.counts.items()):
                if n > self.max_print:
                    print(f"warning: ... {n - self.max_print} more '{k}' not shown", file=self.stream or sys.stderr)
            print(self.summary(what), file=self.stream or sys.stderr)


# ------------------------------------------------------------------------------------------------
# list files and annotations
# ------------------------------------------------------------------------------------------------
def _missing_list_message(path: str) -> str:
    root = os.path.dirname(os.path.dirname(os.path.abspath(path)))
    return (f"{path}: image-set list not found; generate it from the ILSVRC2015 download with "
            f"`python tools/make_imagesets.py --root {root}` (or copy the reference's ImageSets file)")


def read_image_set_file(path: str) -> tuple[list[list[str]], int]:
    """Read an ImageSets list: every non-empty line split on whitespace, all with the same width.

    Returns ``(rows, ncols)`` with ``ncols`` in {2, 4}. Raises ``FileNotFoundError`` (one line: the path
    and how to generate the list) or ``ValueError`` (path, line number, problem).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(_missing_list_message(path))
    rows: list[list[str]] = []
    ncols = 0
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) not in (2, 4):
                raise ValueError(f"{path}:{lineno}: expected 2 or 4 columns, got {len(parts)}: {line.strip()!r}")
            if ncols and len(parts) != ncols:
                raise ValueError(f"{path}:{lineno}: {len(parts)} columns, but the first line has {ncols}")
            ncols = len(parts)
            try:
                [int(x) for x in parts[1:]]
            except ValueError:
                raise ValueError(f"{path}:{lineno}: columns 2.. must be integers: {line.strip()!r}") from None
            rows.append(parts)
    if not rows:
        raise ValueError(f"{path}: image-set list is empty")
    return rows, ncols


def parse_annotation(xml_path: str, problems: DataProblems | None = None,
                     id_to_class: dict[str, int] | None = None) -> tuple[int, int, np.ndarray, np.ndarray] | None:
    """Parse one ILSVRC XML the way the reference does.

    Returns ``(width, height, boxes (G,4) uint16, gt_classes (G,) int32)`` with only the classes of
    ``id_to_class`` (XML ``<name>`` -> class index; default the 30 VID wnids),
    boxes clamped to the image and truncated to integers; ``None`` when the file cannot be used (the
    problem is reported to ``problems``). A box entirely outside the image or degenerate after clamping
    is reported and dropped (the reference would assert).
    """
    problems = problems if problems is not None else DataProblems(verbose=False)
    id_to_class = WNID_TO_CLASS if id_to_class is None else id_to_class
    try:
        tree = ET.parse(xml_path)
    except FileNotFoundError:
        problems.add("missing annotation", xml_path, "annotation XML not found")
        return None
    except (ET.ParseError, OSError) as e:
        problems.add("bad annotation", xml_path, f"cannot parse XML ({e})")
        return None
    try:
        size = tree.find("size")
        width = float(size.find("width").text)  # type: ignore[union-attr]
        height = float(size.find("height").text)  # type: ignore[union-attr]
    except (AttributeError, TypeError, ValueError):
        problems.add("bad annotation", xml_path, "no valid size/width, size/height")
        return None
    if not (width >= 1 and height >= 1):
        problems.add("bad annotation", xml_path, f"image size {width}x{height} is not positive")
        return None
    boxes: list[list[float]] = []
    classes: list[int] = []
    for k, obj in enumerate(tree.findall("object")):
        name_el = obj.find("name")
        cls = id_to_class.get(name_el.text.strip() if name_el is not None and name_el.text else "")
        if cls is None:
            continue  # one of the other DET classes: not a VID class
        try:
            bb = obj.find("bndbox")
            xmin, ymin, xmax, ymax = (float(bb.find(t).text)  # type: ignore[union-attr]
                                      for t in ("xmin", "ymin", "xmax", "ymax"))
        except (AttributeError, TypeError, ValueError):
            problems.add("bad box", xml_path, f"object {k}: bndbox missing or not numeric")
            continue
        if xmax < 0 or ymax < 0 or xmin > width - 1 or ymin > height - 1:
            problems.add("box outside image", xml_path, f"object {k}: box ({xmin:g},{ymin:g},{xmax:g},{ymax:g}) "
                         f"outside the {width:g}x{height:g} image")
            continue
        # the reference: max(x, 0) / min(x, size - 1), then stored in a uint16 array (C cast truncates)
        b = np.array([max(xmin, 0.0), max(ymin, 0.0), min(xmax, width - 1), min(ymax, height - 1)]).astype(np.uint16)
        if b[2] < b[0] or b[3] < b[1]:
            problems.add("degenerate box", xml_path,
                         f"object {k}: box ({xmin:g},{ymin:g},{xmax:g},{ymax:g}) has x2<x1 or y2<y1 after clamping")
            continue
        boxes.append(b.tolist())
        classes.append(cls)
    return (int(width), int(height), np.asarray(boxes, dtype=np.uint16).reshape(-1, 4),
            np.asarray(classes, dtype=np.int32))


# ------------------------------------------------------------------------------------------------
# roidb operations (reference: lib/dataset/imdb.py, lib/utils/load_data.py)
# ------------------------------------------------------------------------------------------------
def _with_overlaps(rec: dict[str, Any], num_classes: int) -> dict[str, Any]:
    g = rec["gt_classes"]
    ov = np.zeros((len(g), num_classes), dtype=np.float32)
    ov[np.arange(len(g)), g] = 1.0
    rec["gt_overlaps"] = ov
    rec["max_classes"] = ov.argmax(axis=1) if len(g) else np.zeros(0, dtype=np.int64)
    rec["max_overlaps"] = ov.max(axis=1) if len(g) else np.zeros(0, dtype=np.float32)
    return rec


def append_flipped_images(roidb: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Return ``roidb`` followed by a horizontally flipped copy of every entry (reference order).

    Boxes: x1' = W - x2 - 1, x2' = W - x1 - 1 (still uint16); every other key is copied.
    """
    flipped = []
    for rec in roidb:
        boxes = rec["boxes"].copy()
        x1 = boxes[:, 0].astype(np.float64)
        x2 = boxes[:, 2].astype(np.float64)
        boxes[:, 0] = rec["width"] - x2 - 1
        boxes[:, 2] = rec["width"] - x1 - 1
        assert (boxes[:, 2] >= boxes[:, 0]).all(), rec["image"]
        new = dict(rec)
        new["boxes"] = boxes
        new["flipped"] = True
        flipped.append(new)
    return list(roidb) + flipped


def merge_roidb(roidbs: Sequence[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Concatenate roidbs in the given order (the reference's ``merge_roidb``)."""
    out: list[dict[str, Any]] = []
    for r in roidbs:
        out.extend(r)
    return out


def filter_roidb(roidb: list[dict[str, Any]], verbose: bool = True) -> list[dict[str, Any]]:
    """Drop entries without any gt box (reference ``filter_roidb``: with gt-only overlaps an entry is
    valid iff it has a foreground, i.e. at least one box)."""
    out = [r for r in roidb if len(r["boxes"]) > 0]
    if verbose:
        print(f"filtered {len(roidb) - len(out)} roidb entries without gt: {len(roidb)} -> {len(out)}", file=sys.stderr)
    return out


def sample_key_frame(entry: dict[str, Any], rng: np.random.Generator | np.random.RandomState,
                     min_offset: int = -9, max_offset: int = 0) -> tuple[int | None, int]:
    """DFF training pair (docs/design.md §5.2): pick the key (reference) frame for the loss-carrying frame t.

    r = clamp(t + o, 0, L - 1) with o uniform in the integers [min_offset, max_offset];
    ``eq_flag`` = 1 when r == t (features come from t itself, FlowNet unused), else 0.
    DET entries (no ``frame_seg_len``) have no video: returns ``(None, 1)``; the key image is the image itself.
    """
    if "frame_seg_len" not in entry:
        return None, 1
    if max_offset < min_offset:
        raise ValueError(f"sample_key_frame: max_offset {max_offset} < min_offset {min_offset}")
    n = max_offset - min_offset + 1
    draw = rng.integers(n) if hasattr(rng, "integers") else rng.randint(n)
    t = int(entry["frame_seg_id"])
    r = min(max(t + int(draw) + min_offset, 0), int(entry["frame_seg_len"]) - 1)
    return r, int(r == t)


def sample_previous_key(entry: dict[str, Any], key_frame: int | None, rng: np.random.Generator,
                        min_offset: int = -10, max_offset: int = -1) -> int | None:
    """THP's previous key frame for a training pair (docs/design.md §9.4): clamp(key + o, 0, L - 1) with o
    uniform in [min_offset, max_offset]; None (no video) for DET entries."""
    if key_frame is None or "frame_seg_len" not in entry:
        return None
    if max_offset < min_offset:
        raise ValueError(f"sample_previous_key: max_offset {max_offset} < min_offset {min_offset}")
    o = int(rng.integers(max_offset - min_offset + 1)) + min_offset
    return min(max(key_frame + o, 0), int(entry["frame_seg_len"]) - 1)


def ref_image_path(entry: dict[str, Any], ref_frame: int | None) -> str:
    """Path of the key frame chosen by :func:`sample_key_frame` (the image itself for DET): a VID entry's
    ``pattern``, or the ``frames`` list of a COCO-video entry (whose file names follow no pattern)."""
    if ref_frame is None:
        return entry["image"]
    return entry["frames"][ref_frame] if "frames" in entry else entry["pattern"] % ref_frame


class ValVideo(NamedTuple):
    """One line of a 4-column test list (``VID_val_videos``).

    The test loop visits frames ``0 .. n_frames-1`` (``pattern % k``) and gives frame k the id
    ``first_frame_id + k``; like the reference it ignores column 3 (``start``, always 0 in its list)
    for the iteration.
    """
    video: str           # e.g. "val/ILSVRC2015_val_00000000"
    first_frame_id: int  # global 1-based id of frame 0 (column 2)
    start: int           # column 3
    n_frames: int        # column 4
    pattern: str         # absolute path with %06d for the frame index

    def frame_path(self, k: int) -> str:
        return self.pattern % k


# ------------------------------------------------------------------------------------------------
# the dataset
# ------------------------------------------------------------------------------------------------
def _atomic_savez(path: str, arrays: dict[str, np.ndarray]) -> None:
    with atomic_open(path, "wb") as f:
        np.savez(f, **arrays)


class ImageNetVID:
    """ILSVRC2015 DET/VID image sets (one or several joined by ``+``) and their roidb.

    Args:
        image_set: e.g. ``"DET_train_30classes+VID_train_15frames"`` or ``"VID_val_videos"``.
        dataset_path: the ``ILSVRC2015`` directory.
        cache_dir: where parsed annotations are cached (``None``: no cache).
        check_images: check that every listed image exists (a stat per entry).
        verbose: print problems, summaries and a progress bar for long lists.
    """

    def __init__(self, image_set: str, dataset_path: str, cache_dir: str | None = None, *,
                 check_images: bool = True, verbose: bool = True) -> None:
        self.image_set = image_set
        self.image_sets = [s for s in image_set.split("+") if s]
        if not self.image_sets:
            raise ValueError(f"image_set {image_set!r}: no list name")
        for s in self.image_sets:
            self._det_vid(s)
        self.dataset_path = os.path.abspath(dataset_path)
        self.cache_dir = cache_dir
        self.check_images = check_images
        self.verbose = verbose
        self.class_list: ClassList = class_list_of_root(self.dataset_path)
        self.classes = self.class_list.names
        self.classes_map = self.class_list.ids
        self.num_classes = len(self.classes)
        self.problems = DataProblems(verbose=verbose)
        self._set_cache: dict[str, list[dict[str, Any]]] = {}

    # paths ------------------------------------------------------------------------------------
    @staticmethod
    def _det_vid(name: str) -> str:
        kind = name.split("_")[0]
        if kind not in ("DET", "VID"):
            raise ValueError(f"image set {name!r}: name must start with DET_ or VID_ (it selects Data/DET or Data/VID)")
        return kind

    def list_path(self, name: str) -> str:
        return os.path.join(self.dataset_path, "ImageSets", name + ".txt")

    def image_path(self, name: str, index: str) -> str:
        return os.path.join(self.dataset_path, "Data", self._det_vid(name), index + ".JPEG")

    def annotation_path(self, name: str, index: str) -> str:
        return os.path.join(self.dataset_path, "Annotations", self._det_vid(name), index + ".xml")

    # loading ----------------------------------------------------------------------------------
    def _cache_file(self, name: str, digest: str) -> str:
        assert self.cache_dir is not None
        return os.path.join(self.cache_dir, f"ImageNetVID_{name}_{digest[:16]}.npz")

    def _digest(self, name: str) -> str:
        h = hashlib.sha256()
        h.update(CACHE_VERSION.encode())
        h.update(b"\0" + self.dataset_path.encode() + b"\0" + str(self.check_images).encode() + b"\0")
        h.update("\n".join(self.classes_map).encode() + b"\0")  # the class indices depend on the class list
        path = self.list_path(name)
        if not os.path.isfile(path):
            raise FileNotFoundError(_missing_list_message(path))
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()

    def set_roidb(self, name: str) -> list[dict[str, Any]]:
        """Unflipped roidb of one list (cached in memory and, with ``cache_dir``, on disk)."""
        if name in self._set_cache:
            return self._set_cache[name]
        arrays = None
        cache_file = None
        if self.cache_dir is not None:
            cache_file = self._cache_file(name, self._digest(name))
            if os.path.isfile(cache_file):
                try:
                    with np.load(cache_file, allow_pickle=False) as z:
                        arrays = {k: z[k] for k in z.files}
                    if str(arrays["version"]) != CACHE_VERSION:
                        arrays = None
                except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:  # truncated/foreign: rebuild
                    print(f"warning: {cache_file}: unreadable cache ({e}); rebuilding", file=sys.stderr)
                    arrays = None
                if arrays is not None and self.verbose:
                    print(f"{name}: annotations loaded from {cache_file}", file=sys.stderr)
        if arrays is None:
            arrays = self._parse_list(name)
            if cache_file is not None:
                prefix = f"ImageNetVID_{name}_"
                for old in os.listdir(self.cache_dir) if os.path.isdir(self.cache_dir) else []:
                    if old.startswith(prefix) and old.endswith(".npz") and len(old) == len(prefix) + 20:
                        os.unlink(os.path.join(self.cache_dir, old))  # stale: its list has changed
                _atomic_savez(cache_file, arrays)
        else:
            # replay the problems found when the cache was built, so every load reports them
            problems = DataProblems(verbose=self.verbose)
            for kind, path, msg in zip(arrays["problem_kind"].tolist(), arrays["problem_path"].tolist(),
                                       arrays["problem_msg"].tolist()):
                problems.add(kind, path, msg)
            problems.print_summary(name)
            for item in problems.items:
                self.problems.add(*item, echo=False)
        roidb = self._to_roidb(name, arrays)
        self._set_cache[name] = roidb
        return roidb

    def _parse_list(self, name: str) -> dict[str, np.ndarray]:
        rows, ncols = read_image_set_file(self.list_path(name))
        problems = DataProblems(verbose=self.verbose)
        idx: list[str] = []
        frame_id: list[int] = []
        seg_id: list[int] = []
        seg_len: list[int] = []
        width: list[int] = []
        height: list[int] = []
        offsets = [0]
        boxes: list[np.ndarray] = []
        classes: list[np.ndarray] = []
        it: Any = rows
        if self.verbose and len(rows) >= _PROGRESS_MIN:
            it = tqdm(rows, desc=f"parsing {name}", unit="img", mininterval=1.0, file=sys.stderr)
        lpath = self.list_path(name)
        for lineno, parts in enumerate(it, 1):
            if ncols == 2:
                index, fid, sid, slen = parts[0], int(parts[1]), -1, -1
            else:
                sid, slen = int(parts[2]), int(parts[3])
                index, fid = f"{parts[0]}/{sid:06d}", int(parts[1])
                if slen <= 0:
                    problems.add("empty video", os.path.join(self.dataset_path, "Data", self._det_vid(name), parts[0]),
                                 f"{lpath}:{lineno} gives the video {slen} frames")
                    continue
                if not 0 <= sid < slen:
                    problems.add("bad list line", lpath,
                                 f"line {lineno}: frame {sid} outside the video's {slen} frames")
                    continue
            img = self.image_path(name, index)
            if self.check_images and not os.path.isfile(img):
                vdir = os.path.dirname(img)
                no_frames = ncols == 4 and (not os.path.isdir(vdir) or
                                            not any(e.name.endswith(".JPEG") for e in os.scandir(vdir)))
                if no_frames:
                    problems.add("empty video", vdir, f"listed in {lpath}:{lineno} but has no frames")
                else:
                    problems.add("missing image", img, f"listed in {lpath}:{lineno} but not found")
                continue
            if self.check_images and ncols == 4 and sid != slen - 1:
                last = os.path.join(os.path.dirname(img), f"{slen - 1:06d}.JPEG")
                if not os.path.isfile(last):
                    problems.add("short video", last, f"{lpath}:{lineno} says {slen} frames, the last one is missing")
                    continue
            ann = parse_annotation(self.annotation_path(name, index), problems, self.class_list.id_to_index)
            if ann is None:
                continue
            w, h, b, c = ann
            idx.append(index)
            frame_id.append(fid)
            seg_id.append(sid)
            seg_len.append(slen)
            width.append(w)
            height.append(h)
            boxes.append(b)
            classes.append(c)
            offsets.append(offsets[-1] + len(b))
        problems.print_summary(name)
        for item in problems.items:
            self.problems.add(*item, echo=False)
        kinds, paths, msgs = (zip(*problems.items) if problems.items else ((), (), ()))
        return {
            "version": np.array(CACHE_VERSION),
            "ncols": np.array(ncols),
            # one UTF-8 blob: a fixed-width unicode array would take 4 bytes per character of the longest path
            "index": np.frombuffer("\n".join(idx).encode("utf-8"), dtype=np.uint8),
            "frame_id": np.array(frame_id, dtype=np.int64),
            "frame_seg_id": np.array(seg_id, dtype=np.int64),
            "frame_seg_len": np.array(seg_len, dtype=np.int64),
            "width": np.array(width, dtype=np.int64),
            "height": np.array(height, dtype=np.int64),
            "offsets": np.array(offsets, dtype=np.int64),
            "boxes": (np.concatenate(boxes) if boxes else np.zeros((0, 4))).astype(np.uint16).reshape(-1, 4),
            "gt_classes": (np.concatenate(classes) if classes else np.zeros(0)).astype(np.int32),
            "problem_kind": np.array(list(kinds), dtype=str),
            "problem_path": np.array(list(paths), dtype=str),
            "problem_msg": np.array(list(msgs), dtype=str),
        }

    def _to_roidb(self, name: str, a: dict[str, np.ndarray]) -> list[dict[str, Any]]:
        four = int(a["ncols"]) == 4
        kind = self._det_vid(name)
        data_dir = os.path.join(self.dataset_path, "Data", kind)
        off = a["offsets"]
        out = []
        n = len(a["frame_id"])
        indices = a["index"].tobytes().decode("utf-8").split("\n") if n else []
        for k, index in enumerate(indices):
            rec: dict[str, Any] = {
                "image": os.path.join(data_dir, index + ".JPEG"),
                "index": index,
                "frame_id": int(a["frame_id"][k]),
                "height": float(a["height"][k]),
                "width": float(a["width"][k]),
                "boxes": a["boxes"][off[k]:off[k + 1]].copy(),
                "gt_classes": a["gt_classes"][off[k]:off[k + 1]].copy(),
                "flipped": False,
            }
            if four:
                rec["pattern"] = os.path.join(data_dir, index.rsplit("/", 1)[0] + "/%06d.JPEG")
                rec["frame_seg_id"] = int(a["frame_seg_id"][k])
                rec["frame_seg_len"] = int(a["frame_seg_len"][k])
            out.append(_with_overlaps(rec, self.num_classes))
        return out

    # public roidbs ----------------------------------------------------------------------------
    def gt_roidb(self, flip: bool = False) -> list[dict[str, Any]]:
        """All lists of ``image_set`` in order, each followed by its flipped copies when ``flip``."""
        parts = []
        for name in self.image_sets:
            r = self.set_roidb(name)
            parts.append(append_flipped_images(r) if flip else list(r))
        return merge_roidb(parts)

    def train_roidb(self, flip: bool = True) -> list[dict[str, Any]]:
        """The training roidb of the reference: per-list flipped copies, merged, then filtered."""
        return filter_roidb(self.gt_roidb(flip=flip), verbose=self.verbose)

    # test-time helpers ------------------------------------------------------------------------
    def val_videos(self) -> Iterator[ValVideo]:
        """The videos of the 4-column test list(s) in file order (``VID_val_videos``).

        Entries dropped as bad data (missing first frame, empty video) are not yielded.
        """
        for name in self.image_sets:
            r = self.set_roidb(name)
            if r and "pattern" not in r[0]:
                raise ValueError(f"{self.list_path(name)}: val_videos needs a 4-column video list, "
                                 "this one has 2 columns")
            for rec in r:
                yield ValVideo(rec["index"].rsplit("/", 1)[0], rec["frame_id"], rec["frame_seg_id"],
                               rec["frame_seg_len"], rec["pattern"])

    def test_videos(self) -> list[TestVideo]:
        """The videos of the test list(s), in file order: a 4-column video list (``VID_val_videos``, DFF's)
        gives the videos directly; a 2-column frame list (``VID_val_frames``, the baseline's) is grouped into
        videos by the frame's folder, consecutive lines of one folder forming one video (the per-frame model
        does not care; the grouping only gives the per-video cache and progress)."""
        kinds = {name: "pattern" in (self.set_roidb(name) or [{}])[0] for name in self.image_sets}
        if all(kinds.values()):
            return [TestVideo(v.video, [v.frame_path(k) for k in range(v.n_frames)],
                              [v.first_frame_id + k for k in range(v.n_frames)],
                              [f"{v.video}/{k:06d}" for k in range(v.n_frames)]) for v in self.val_videos()]
        if any(kinds.values()):
            raise ValueError(f"{self.image_set}: mixes 4-column video lists and 2-column frame lists; "
                             "test them separately")
        out: list[TestVideo] = []
        for name in self.image_sets:
            cur: TestVideo | None = None
            for rec in self.set_roidb(name):
                video = rec["index"].rsplit("/", 1)[0]
                if cur is None or cur.name != video:
                    cur = TestVideo(video, [], [], [])
                    out.append(cur)
                cur.paths.append(rec["image"])
                cur.frame_ids.append(int(rec["frame_id"]))
                cur.indices.append(rec["index"])
        return out

    def eval_image_set_lines(self) -> Iterator[str]:
        """``<video>/<frame:06d> <frame_id>`` for every frame of every video (``VID_val_videos_eval.txt``).

        Frame k of a video has the id ``first_frame_id + k`` (docs/design.md §6.1): the ids the results file uses
        (docs/design.md §6.5) and the evaluation looks up (docs/design.md §7); same format as ``VID_val_frames.txt``.
        """
        for v in self.val_videos():
            for k in range(v.n_frames):
                yield f"{v.video}/{k:06d} {v.first_frame_id + k}"

    def write_eval_image_set(self, path: str) -> int:
        """Write :meth:`eval_image_set_lines` to ``path`` atomically; returns the number of frames."""

        return write_lines(path, self.eval_image_set_lines())

    def __repr__(self) -> str:
        return f"ImageNetVID({self.image_set!r}, {self.dataset_path!r})"
