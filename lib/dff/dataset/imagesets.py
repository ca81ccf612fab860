"""Generate the reference's ImageSets lists from a raw ILSVRC2015 download (``Data/``, ``Annotations/``).

Formats and rules (docs/design.md §5.1; checked against the reference's files, see ``tests/test_imagenet_vid.py``):

``VID_train_15frames.txt``  ``train/<shard>/<video> 1 <frame_seg_id> <frame_seg_len>``, videos in sorted
    path order. A video of L >= 15 frames lists frame ``floor((2i+1) L / 30)`` for i = 0..14 (the
    centre of the i-th of 15 equal segments: 10, 30, ..., 290 for L = 300); a shorter video lists
    every frame. **Known deviation**: in the reference's file, some frames whose segment centre is an
    exact integer c are listed as c - 1 (e.g. L = 54 lists 26 instead of 27). It depends only on L
    (every video of a given length has the same list), is invariant when L doubles (18, 36, 72, 144
    and 288 all drop at i = 2) and happens only at exact-integer centres, i.e. a floating-point
    rounding artefact of the original script, whose exact expression could not be identified (no
    arrangement of L/15, L/30, (i+0.5), float64/float32, linspace/arange/accumulation tried matches).
    This rule reproduces 57,339 of the reference's 57,834 lines; the other 495 (in 405 videos of 70
    distinct lengths, 96 (length, segment) pairs) are one frame later than the reference's.
``VID_val_videos.txt``  ``val/<video> <first frame id> 0 <n frames>``: sorted videos, first frame id
    = 1 + the frames of all previous videos (1, 465, 929, ...). Reproduces the reference's file exactly.
``VID_val_frames.txt``  ``val/<video>/<frame:06d> <frame id>``: every frame, ids consecutive over all
    videos in the same order (= :meth:`ImageNetVID.eval_image_set_lines` of ``VID_val_videos``).
``DET_train_30classes.txt``  ``train/<...>/<image> 1``: for each of the 30 VID classes in class-table
    order, the DET train images whose XML has an object of that class: first the ILSVRC2014 shard
    images, then the ILSVRC2013 class-folder images, each block sorted by path. An image with several
    VID classes appears in each of their blocks (378 images, 402 extra lines in the reference's file).
    This ordering reproduces the reference's file given its membership. What cannot be verified without
    the real DET annotations: every class of the reference has at most 2,000 images except snake
    (8,591), and 12 classes have exactly 2,000, so the reference subsampled large classes by a rule
    that the list does not reveal. ``max_per_class`` caps a class by taking evenly spaced images of its
    sorted block (not the reference's unknown choice); the default keeps every image.
"""
from __future__ import annotations

import os
import re
import sys
from collections import defaultdict
from typing import Iterable, Iterator, Sequence

from tqdm import tqdm

from dff.dataset.classlist import class_list_of_root
from dff.utils.io import atomic_open

__all__ = [
    "vid15_frame_ids", "scan_vid_videos", "vid_train_15frames_lines", "vid_val_videos_lines",
    "vid_val_frames_lines", "scan_det_train", "det_train_30classes_lines", "write_lines", "make_imagesets",
]

N_SEGMENTS = 15


def vid15_frame_ids(n_frames: int, n_segments: int = N_SEGMENTS) -> list[int]:
    """0-based frames sampled from a video of ``n_frames`` frames: the centres of ``n_segments`` equal
    segments, ``floor((2i+1) * n / (2 * n_segments))`` (exact integer arithmetic); every frame when the
    video is shorter than ``n_segments``. See the module docstring for the reference's float quirk."""
    if n_frames <= 0:
        raise ValueError(f"n_frames must be positive, got {n_frames}")
    if n_frames < n_segments:
        return list(range(n_frames))
    return [(2 * i + 1) * n_frames // (2 * n_segments) for i in range(n_segments)]


_FRAME_RE = re.compile(r"^(\d{6})\.JPEG$")


def scan_vid_videos(root: str, split: str) -> list[tuple[str, int]]:
    """Videos under ``<root>/Data/VID/<split>`` as ``(index, n_frames)``, sorted by index.

    ``index`` is relative to ``Data/VID`` (``train/ILSVRC2015_VID_train_0000/ILSVRC2015_train_00000000``,
    ``val/ILSVRC2015_val_00000000``): a video is a directory holding ``%06d.JPEG`` frames; the train
    split has one more level of shard directories. Frames must be 000000..n-1 without gaps; a video
    with no frames or with gaps is reported on stderr and left out.
    """
    base = os.path.join(root, "Data", "VID", split)
    if not os.path.isdir(base):
        raise FileNotFoundError(f"{base}: VID {split} frames not found "
                                f"(expected the ILSVRC2015 layout Data/VID/{split}/...)")
    videos: list[tuple[str, int]] = []

    def visit(rel: str) -> None:
        d = os.path.join(base, rel) if rel else base
        entries = sorted(os.scandir(d), key=lambda e: e.name)
        frames = [int(m.group(1)) for e in entries if e.is_file() and (m := _FRAME_RE.match(e.name))]
        subdirs = [e.name for e in entries if e.is_dir()]
        if frames:
            n = len(frames)
            if frames != list(range(n)):
                missing = sorted(set(range(max(frames) + 1)) - set(frames))[:5]
                print(f"warning: {d}: frames are not 000000..{n - 1:06d} (missing e.g. {missing}); video skipped",
                      file=sys.stderr)
                return
            videos.append((f"{split}/{rel}", n))
        elif not subdirs and rel:
            print(f"warning: {d}: empty video directory; skipped", file=sys.stderr)
        for s in subdirs:
            visit(f"{rel}/{s}" if rel else s)

    visit("")
    return sorted(videos)


def vid_train_15frames_lines(videos: Iterable[tuple[str, int]]) -> Iterator[str]:
    """``<video> 1 <frame_seg_id> <frame_seg_len>`` lines of ``VID_train_15frames.txt``."""
    for index, n in videos:
        for f in vid15_frame_ids(n):
            yield f"{index} 1 {f} {n}"


def vid_val_videos_lines(videos: Iterable[tuple[str, int]]) -> Iterator[str]:
    """``<video> <first frame id> 0 <n frames>`` lines of ``VID_val_videos.txt`` (ids from 1)."""
    first = 1
    for index, n in videos:
        yield f"{index} {first} 0 {n}"
        first += n


def vid_val_frames_lines(videos: Iterable[tuple[str, int]]) -> Iterator[str]:
    """``<video>/<frame:06d> <frame id>`` lines of ``VID_val_frames.txt``."""
    fid = 1
    for index, n in videos:
        for k in range(n):
            yield f"{index}/{k:06d} {fid}"
            fid += 1


_NAME_RE = re.compile(rb"<name>\s*([^<\s]+)\s*</name>")


def scan_det_train(root: str, progress: bool = True) -> dict[str, set[int]]:
    """Classes of the root's class list (:func:`dff.dataset.classlist.class_list_of_root`, the 30 VID classes
    without a ``classes.txt``) present in each DET train image: ``{index: {class indices}}`` (only images with one).

    Reads every XML under ``Annotations/DET/train`` (ILSVRC2013_train/<wnid>/ and ILSVRC2014_train_*/)
    with a regular expression on ``<name>`` (456k files: a full XML parse would take minutes). An XML
    without its JPEG under ``Data/DET/train`` is reported and left out.
    """
    ann = os.path.join(root, "Annotations", "DET", "train")
    if not os.path.isdir(ann):
        raise FileNotFoundError(f"{ann}: DET train annotations not found (expected the ILSVRC2015 layout)")
    wnid_to_cls = class_list_of_root(root).id_to_index
    paths: list[str] = []
    for dirpath, dirnames, filenames in os.walk(ann):
        dirnames.sort()
        paths.extend(os.path.join(dirpath, f) for f in sorted(filenames) if f.endswith(".xml"))
    it: Iterable[str] = paths
    if progress and len(paths) > 2000:
        it = tqdm(paths, desc="scanning DET train XML", unit="xml", mininterval=1.0, file=sys.stderr)
    out: dict[str, set[int]] = {}
    missing = 0
    for p in it:
        with open(p, "rb") as f:
            names = _NAME_RE.findall(f.read())
        cls = {wnid_to_cls[n.decode()] for n in names if n.decode() in wnid_to_cls}
        if not cls:
            continue
        index = "train/" + os.path.relpath(p, ann)[:-4].replace(os.sep, "/")
        if not os.path.isfile(os.path.join(root, "Data", "DET", index + ".JPEG")):
            missing += 1
            if missing <= 20:
                img = os.path.join(root, "Data", "DET", index + ".JPEG")
                print(f"warning: {img}: image of {p} not found; skipped", file=sys.stderr)
            continue
        out[index] = cls
    if missing:
        print(f"DET train: skipped {missing} annotations without an image", file=sys.stderr)
    return out


def det_train_30classes_lines(image_classes: dict[str, set[int]], max_per_class: int | None = None,
                              classes: Sequence[int] | None = None) -> Iterator[str]:
    """``<index> 1`` lines of ``DET_train_30classes.txt`` from :func:`scan_det_train`'s mapping.

    Per class (class-table order): 2014-shard images then 2013 class-folder images, each sorted.
    """
    by_class: dict[int, list[str]] = defaultdict(list)
    for index, cls in image_classes.items():
        for c in cls:
            by_class[c].append(index)
    for c in classes if classes is not None else sorted(by_class):
        items = by_class.get(c, [])
        y2013 = sorted(i for i in items if i.split("/")[1] == "ILSVRC2013_train")
        other = sorted(i for i in items if i.split("/")[1] != "ILSVRC2013_train")
        block = other + y2013
        if max_per_class is not None and len(block) > max_per_class:
            n = len(block)
            block = [block[k * n // max_per_class] for k in range(max_per_class)]
        for index in block:
            yield f"{index} 1"


def write_lines(path: str, lines: Iterable[str]) -> int:
    """Write lines (each followed by a newline) atomically; returns the count."""
    n = 0
    with atomic_open(path, "w", encoding="utf-8") as f:
        for line in lines:
            f.write(line + "\n")
            n += 1
    return n


ALL_LISTS = ("VID_train_15frames", "VID_val_videos", "VID_val_frames", "DET_train_30classes")


def make_imagesets(root: str, lists: Sequence[str] = ALL_LISTS, out_dir: str | None = None,
                   max_per_class: int | None = None, progress: bool = True) -> dict[str, int]:
    """Write the requested lists to ``out_dir`` (default ``<root>/ImageSets``); returns lines per list."""
    out_dir = out_dir or os.path.join(root, "ImageSets")
    unknown = [x for x in lists if x not in ALL_LISTS]
    if unknown:
        raise ValueError(f"unknown list(s) {unknown}; choose from {list(ALL_LISTS)}")
    counts: dict[str, int] = {}
    if "VID_train_15frames" in lists:
        counts["VID_train_15frames"] = write_lines(os.path.join(out_dir, "VID_train_15frames.txt"),
                                                   vid_train_15frames_lines(scan_vid_videos(root, "train")))
    if "VID_val_videos" in lists or "VID_val_frames" in lists:
        val = scan_vid_videos(root, "val")
        if "VID_val_videos" in lists:
            counts["VID_val_videos"] = write_lines(os.path.join(out_dir, "VID_val_videos.txt"),
                                                   vid_val_videos_lines(val))
        if "VID_val_frames" in lists:
            counts["VID_val_frames"] = write_lines(os.path.join(out_dir, "VID_val_frames.txt"),
                                                   vid_val_frames_lines(val))
    if "DET_train_30classes" in lists:
        counts["DET_train_30classes"] = write_lines(
            os.path.join(out_dir, "DET_train_30classes.txt"),
            det_train_30classes_lines(scan_det_train(root, progress), max_per_class))
    return counts
