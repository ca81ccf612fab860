"""The Cityscapes video layout for semantic segmentation (``dataset.format: cityscapes``, docs/segmentation.md).

Read under ``dataset.dataset_path``::

    leftImg8bit_sequence/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png     every frame of each snippet
    gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelTrainIds.png           the annotated frames
    classes.txt                                                                   optional (a synthetic set)

``<seq>`` and ``<frame>`` are six digits. A snippet is the frames of one ``<city>_<seq>``, in frame order;
Cityscapes annotates the 20th of each 30-frame snippet (frame ``<first> + 19``), and a snippet is used
when one of its frames has a ``gtFine`` label. ``image_set`` is the split (``train``, ``val``; ``+`` joins
several).

Labels. Without ``classes.txt`` the root is Cityscapes: the 19 evaluation classes by their train ids
0..18 (:data:`CITYSCAPES_CLASSES`), 255 ignored; they become the model's class indices 1..19 (index 0 is
the background of every class list here, which Cityscapes labels as void, 255, so it is never a target and
never evaluated). With ``classes.txt`` (the synthetic generator, ``tools/make_synthetic_vid.py --format
cityscapes``) a label is the class index itself: 0 the background, which is a class and is evaluated.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from dff.dataset.classlist import CLASSES_FILE, ClassList, read_class_file

__all__ = ["CITYSCAPES_CLASSES", "IGNORE_LABEL", "CityscapesError", "Snippet", "CityscapesVideo", "read_label",
           "frame_name", "label_name", "ANNOTATED_FRAME"]

CITYSCAPES_CLASSES = ("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
                      "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
                      "motorcycle", "bicycle")
IGNORE_LABEL = 255
ANNOTATED_FRAME = 19  # Cityscapes labels the 20th frame of each 30-frame snippet
IMAGES = "leftImg8bit_sequence"
LABELS = "gtFine"
_FRAME = re.compile(r"^(?P<city>.+)_(?P<seq>\d{6})_(?P<frame>\d{6})_leftImg8bit\.png$")


class CityscapesError(ValueError):
    """Missing or inconsistent Cityscapes files; the message names the file and the fix."""


def frame_name(city: str, seq: int, frame: int) -> str:
    return f"{city}_{seq:06d}_{frame:06d}_leftImg8bit.png"


def label_name(city: str, seq: int, frame: int) -> str:
    return f"{city}_{seq:06d}_{frame:06d}_gtFine_labelTrainIds.png"


@dataclass(frozen=True)
class Snippet:
    """One annotated frame and the snippet around it: ``frames`` (paths in frame order), ``annotated`` (the
    labelled frame's position in ``frames``), ``label`` (its ``*_labelTrainIds.png``)."""
    name: str  # <split>/<city>/<city>_<seq>_<frame> of the annotated frame
    frames: tuple[str, ...]
    annotated: int
    label: str


def read_label(path: str, *, offset: int = 0, num_classes: int | None = None) -> np.ndarray:
    """A ``*_labelTrainIds.png`` as (H, W) int64 class indices: the stored value plus ``offset`` (255 stays 255).
    A missing or unreadable file, a colour image, or a value that is neither a class (< ``num_classes``) nor
    255 raises :class:`CityscapesError` naming the file."""
    if not os.path.isfile(path):
        raise CityscapesError(f"{path}: label file not found")
    lab = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if lab is None or lab.size == 0:
        raise CityscapesError(f"{path}: cannot decode the label image (corrupt or not a PNG)")
    if lab.ndim != 2:
        raise CityscapesError(f"{path}: a label image has one channel of train ids, this one has {lab.shape[2]} "
                              "(is it the *_color.png? use *_gtFine_labelTrainIds.png)")
    lab = lab.astype(np.int64)
    ignore = lab == IGNORE_LABEL
    lab = lab + offset
    lab[ignore] = IGNORE_LABEL
    if num_classes is not None:
        bad = (~ignore) & ((lab < 0) | (lab >= num_classes))
        if bad.any():
            v = int(lab[bad][0]) - offset
            raise CityscapesError(f"{path}: label value {v} is not a train id of the {num_classes - offset} "
                                  f"classes nor {IGNORE_LABEL} (ignore); was it made with labelIds instead of "
                                  "trainIds (cityscapesscripts' createTrainIdLabelImgs)?")
    return lab


class CityscapesVideo:
    """The snippets of ``image_set`` (splits, ``+``-joined) under ``root``; see the module docstring.

    ``class_list`` (background first), ``eval_classes`` (the class indices mIoU averages over),
    ``label_offset`` (added to the stored values), ``snippets`` (:class:`Snippet`), :meth:`train_roidb` and
    :meth:`read_label`.
    """

    def __init__(self, image_set: str, root: str, *, verbose: bool = True) -> None:
        self.root = root
        self.image_set = image_set
        classes_path = os.path.join(root, CLASSES_FILE)
        if os.path.isfile(classes_path):
            self.class_list = read_class_file(classes_path)
            self.label_offset = 0
            self.eval_classes = tuple(range(len(self.class_list.names)))
        else:
            self.class_list = ClassList.from_lists([c.replace(" ", "_") for c in CITYSCAPES_CLASSES],
                                                   list(CITYSCAPES_CLASSES), source="Cityscapes")
            self.label_offset = 1
            self.eval_classes = tuple(range(1, len(CITYSCAPES_CLASSES) + 1))
        self.snippets: list[Snippet] = []
        for split in str(image_set).split("+"):
            self.snippets.extend(self._read_split(split))
        if verbose:
            print(f"cityscapes {image_set}: {len(self.snippets)} annotated snippets under {root}")

    @property
    def num_classes(self) -> int:
        return len(self.class_list.names)

    def __repr__(self) -> str:
        return f"CityscapesVideo({self.image_set!r}, {self.root!r})"

    def _read_split(self, split: str) -> list[Snippet]:
        img_dir = os.path.join(self.root, IMAGES, split)
        lab_dir = os.path.join(self.root, LABELS, split)
        for d, what in ((img_dir, "frames"), (lab_dir, "labels")):
            if not os.path.isdir(d):
                raise CityscapesError(f"{d}: the {what} folder of split {split!r} is missing (expected the Cityscapes "
                                      f"layout {IMAGES}/<split>/<city>/ and {LABELS}/<split>/<city>/; make a synthetic "
                                      "set with tools/make_synthetic_vid.py --format cityscapes)")
        out = []
        for city in sorted(os.listdir(lab_dir)):
            if not os.path.isdir(os.path.join(lab_dir, city)):
                continue
            seqs: dict[int, dict[int, str]] = {}
            city_dir = os.path.join(img_dir, city)
            if not os.path.isdir(city_dir):
                raise CityscapesError(f"{city_dir}: labels exist for city {city!r} but its frames are missing")
            for name in os.listdir(city_dir):
                m = _FRAME.match(name)
                if m and m["city"] == city:
                    seqs.setdefault(int(m["seq"]), {})[int(m["frame"])] = os.path.join(city_dir, name)
            for name in sorted(os.listdir(os.path.join(lab_dir, city))):
                if not name.endswith("_gtFine_labelTrainIds.png"):
                    continue
                parts = name.split("_")
                try:
                    seq, frame = int(parts[-4]), int(parts[-3])
                except (ValueError, IndexError):
                    raise CityscapesError(f"{os.path.join(lab_dir, city, name)}: not a "
                                          "<city>_<seq>_<frame>_gtFine_labelTrainIds.png name") from None
                frames = seqs.get(seq, {})
                if frame not in frames:
                    raise CityscapesError(f"{os.path.join(city_dir, frame_name(city, seq, frame))}: the frame of label "
                                          f"{name} is missing from {IMAGES}")
                # the snippet: the contiguous frames around the annotated one
                lo = frame
                while lo - 1 in frames:
                    lo -= 1
                hi = frame
                while hi + 1 in frames:
                    hi += 1
                paths = tuple(frames[f] for f in range(lo, hi + 1))
                out.append(Snippet(f"{split}/{city}/{city}_{seq:06d}_{frame:06d}", paths, frame - lo,
                                   os.path.join(lab_dir, city, name)))
        if not out:
            raise CityscapesError(f"{lab_dir}: no *_gtFine_labelTrainIds.png under it (split {split!r})")
        return out

    def read_label(self, snippet: Snippet) -> np.ndarray:
        """The snippet's label as (H, W) int64 class indices of :attr:`class_list` (255 ignored)."""
        return read_label(snippet.label, offset=self.label_offset, num_classes=self.num_classes)

    def train_roidb(self, flip: bool = False) -> list[dict[str, Any]]:
        """One entry per annotated frame (with a flipped copy when ``flip``): ``image``, ``label``, ``frames`` and
        ``frame_seg_id`` / ``frame_seg_len`` (so the detector's key-frame sampling applies), ``width``,
        ``height``, ``flipped``, ``label_offset``, ``num_classes``."""
        roidb = []
        for s in self.snippets:
            h, w = _png_size(s.frames[s.annotated])
            entry = {"image": s.frames[s.annotated], "label": s.label, "frames": list(s.frames),
                     "frame_seg_id": s.annotated, "frame_seg_len": len(s.frames), "width": w, "height": h,
                     "flipped": False, "label_offset": self.label_offset, "num_classes": self.num_classes}
            roidb.append(entry)
        if flip:
            roidb += [{**e, "flipped": True} for e in roidb]
        return roidb


def _png_size(path: str) -> tuple[int, int]:
    """(height, width) from a PNG's header, without decoding it."""
    try:
        with open(path, "rb") as f:
            head = f.read(24)
    except OSError as e:
        raise CityscapesError(f"{path}: cannot read the frame ({e.strerror})") from None
    if len(head) < 24 or head[:8] != b"\x89PNG\r\n\x1a\n":
        raise CityscapesError(f"{path}: not a PNG file (Cityscapes frames are *_leftImg8bit.png)")
    return int.from_bytes(head[20:24], "big"), int.from_bytes(head[16:20], "big")
