"""ImageNet VID detection evaluation, identical to the reference's ``lib/dataset/imagenet_vid_eval.py``.

Protocol (docs/design.md §7, fixtures README section 6):

* Ground truth: every ``object`` of every listed frame's XML, box as written (floats, no clamping).
  Each object gets its own IoU threshold ``thr = min(0.5, w*h / ((w+10)*(h+10)))`` with
  ``w = xmax - xmin + 1``, ``h = ymax - ymin + 1``: small objects are matched more loosely.
* Per frame, detections sorted by confidence (descending, all classes together) are matched greedily:
  a detection of class c takes the *unmatched* class-c object with the largest IoU among those whose
  IoU (+1 pixel convention) reaches that object's own threshold; otherwise it is a false positive, so
  duplicates of an already-matched object are false positives.
* AP per class: all detections of the listed frames sorted by confidence, cumulative TP/FP,
  ``recall = TP / npos``, ``precision = TP / max(TP+FP, eps)``, area under the precision envelope
  ("all-point", VOC2010 style). mAP = plain mean over the class list's classes (the reference's: the 30 VID classes).
* Detections on frames that are not in the image set are ignored.
* A class with no ground truth and no detections gets AP 0 (and still counts in the mean); a class
  with no ground truth but with detections gets AP NaN (0/0 in the reference), which makes the mAP NaN
  as in the reference; here a warning names such classes.
* Sorting: the reference uses ``np.argsort`` (quicksort, not stable) for the per-frame and the global
  confidence order. This port sorts stably (ties keep image-set order, then results-file order). The two
  can only differ when two detections have exactly the same (4-decimal) confidence.

Beyond the reference, :func:`vid_eval` can break the result down by object speed as FGFA does
(``lib/dataset/imagenet_vid_eval_motion.py`` of msracver/Flow-Guided-Feature-Aggregation):

* Motion IoU of an object in frame t = mean IoU (+1 convention, 0 without overlap) of its box with the
  boxes of the same track (``trackid``) in every frame k with ``0 < |k - t| <= 10`` where that track is
  annotated. (FGFA ships it as a precomputed .mat; an FGFA author describes it as
  ``mean(iou(t, k) for k in (t-10, t+10))``, averaged over fewer frames near the track's ends,
  msracver/Flow-Guided-Feature-Aggregation issue 4.) An object with no such neighbour has motion IoU NaN.
* Ranges are closed intervals as in FGFA: fast [0, 0.7], medium [0.7, 0.9], slow [0.9, 1.0] (a value of
  exactly 0.7 or 0.9 belongs to two groups); "all" is [0, 1]. Objects outside the range are *ignored*.
  A NaN motion IoU compares false both ways, so FGFA's test never ignores it: such objects count in
  every group.
* Matching is the standard one (over all objects). A detection matched to an ignored object is neither
  TP nor FP. An unmatched detection is a full FP if its best IoU with any non-ignored object of the frame
  (any class) exceeds that with any ignored object, not counted if the ignored one is larger; on a tie it
  counts ``#ignored / #objects`` of the frame, or, on a frame without objects, the share of motion-IoU
  entries inside the range over the whole set (FGFA's ``empty_weight``; as in FGFA's table every frame
  without objects contributes one placeholder entry 0).
* npos per class counts only the non-ignored objects; classes with npos 0 are left out of that group's
  mean (FGFA prints the mean over APs >= 0).

Everything is vectorised with numpy (frames are grouped by sorting, never scanned per detection); the
greedy matching iterates only over the rank of a detection inside its (frame, class) group.
"""
from __future__ import annotations

import json
import math
import os
import warnings
import xml.etree.ElementTree as ET
from typing import Any, Iterable, Mapping, Sequence, Union

import numpy as np

from dff.utils.io import atomic_open

__all__ = [
    "VID_CLASSES", "VID_WNIDS", "MOTION_RANGES", "MOTION_WINDOW",
    "parse_vid_xml", "load_vid_annotations", "write_vid_results", "read_image_set",
    "compute_motion_iou", "vid_eval", "format_table", "format_info_str", "save_json",
]

from dff.dataset.classes import VID_CLASSES, VID_WNIDS  # index 0 is the background; 1..30 = results-file class ids

# FGFA's motion groups, closed intervals, in FGFA's order
MOTION_RANGES: dict[str, tuple[float, float]] = {
    "all": (0.0, 1.0), "fast": (0.0, 0.7), "medium": (0.7, 0.9), "slow": (0.9, 1.0),
}
MOTION_WINDOW = 10  # frames on each side used for the motion IoU

_DEFAULT_IOU_THR = 0.5
_PIXEL_TOLERANCE = 10
# candidate (detection, object) pairs processed at once; bounds memory on the full val set
_PAIR_BUDGET = 4_000_000

PathLike = Union[str, "os.PathLike[str]"]


# ------------------------------------------------------------------------------------------------
# annotations
# ------------------------------------------------------------------------------------------------
def _child_text(elem: ET.Element, tag: str, src: str, what: str) -> str:
    child = elem.find(tag)
    if child is None or child.text is None or not child.text.strip():
        raise ValueError(f"{src}: {what} has no <{tag}>")
    return child.text.strip()


def _opt_int(elem: ET.Element, tag: str, src: str, what: str) -> int | None:
    child = elem.find(tag)
    if child is None or child.text is None or not child.text.strip():
        return None
    try:
        return int(child.text.strip())
    except ValueError:
        raise ValueError(f"{src}: {what} <{tag}> is not an integer: {child.text.strip()!r}") from None


def parse_vid_xml(path_or_text: PathLike, name: str | None = None) -> dict[str, Any]:
    """Parse one ImageNet VID annotation XML (a path, or the XML text itself if it starts with ``<``).

    Returns ``{'filename', 'width', 'height', 'objects'}``; ``width``/``height`` are ints (None when
    the file has no ``<size>``); ``objects`` is a list, in file order, of
    ``{'wnid': str, 'bbox': (xmin, ymin, xmax, ymax) floats as written, 'trackid': int | None,
    'occluded': int | None}``. No clamping and no class filtering: the evaluation uses the boxes as
    written. ``name`` labels the source in error messages (default: the path, or ``<xml text>``).
    """
    is_text = isinstance(path_or_text, str) and path_or_text.lstrip().startswith("<")
    src = name or ("<xml text>" if is_text else os.fspath(path_or_text))
    try:
        root = ET.fromstring(path_or_text) if is_text else ET.parse(os.fspath(path_or_text)).getroot()
    except ET.ParseError as e:
        raise ValueError(f"{src}: malformed XML: {e}") from None
    except OSError as e:
        raise ValueError(f"{src}: cannot read annotation: {e.strerror or e}") from None
    width = height = None
    size = root.find("size")
    if size is not None:
        width = _opt_int(size, "width", src, "<size>")
        height = _opt_int(size, "height", src, "<size>")
    objects = []
    for i, obj in enumerate(root.findall("object")):
        what = f"object {i}"
        wnid = _child_text(obj, "name", src, what)
        bnd = obj.find("bndbox")
        if bnd is None:
            raise ValueError(f"{src}: {what} has no <bndbox>")
        box = []
        for tag in ("xmin", "ymin", "xmax", "ymax"):
            text = _child_text(bnd, tag, src, f"{what} <bndbox>")
            try:
                box.append(float(text))
            except ValueError:
                raise ValueError(f"{src}: {what} <{tag}> is not a number: {text!r}") from None
        objects.append({
            "wnid": wnid, "bbox": tuple(box),
            "trackid": _opt_int(obj, "trackid", src, what),
            "occluded": _opt_int(obj, "occluded", src, what),
        })
    return {"filename": src, "width": width, "height": height, "objects": objects}


def load_vid_annotations(annotation_dir: PathLike, indices: Iterable[str]) -> dict[str, dict[str, Any]]:
    """``{index: parse_vid_xml(annotation_dir/index.xml)}``, e.g. ``annotation_dir`` =
    ``data/ILSVRC2015/Annotations/VID`` and ``index`` = ``val/ILSVRC2015_val_00000000/000000``."""
    root = os.fspath(annotation_dir)
    return {ix: parse_vid_xml(os.path.join(root, ix + ".xml")) for ix in indices}


def read_image_set(image_set_lines: Sequence[str] | PathLike) -> tuple[list[str], np.ndarray]:
    """``(indices, frame_ids)`` from image-set lines ``"<index> <frame_id>"`` (or a path to such a file).

    Frame ids must be integers and unique (they key the results file).
    """
    if isinstance(image_set_lines, (str, os.PathLike)):
        src = os.fspath(image_set_lines)
        try:
            with open(src) as f:
                lines = f.read().splitlines()
        except OSError as e:
            raise ValueError(f"{src}: cannot read image set: {e.strerror or e}") from None
    else:
        src, lines = "image_set_lines", list(image_set_lines)
    indices: list[str] = []
    ids: list[int] = []
    for n, line in enumerate(lines, 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) < 2:
            raise ValueError(f"{src}: line {n}: expected '<index> <frame_id>', got {line!r}")
        try:
            ids.append(int(parts[1]))
        except ValueError:
            raise ValueError(f"{src}: line {n}: frame id {parts[1]!r} is not an integer") from None
        indices.append(parts[0])
    frame_ids = np.asarray(ids, dtype=np.int64)
    uniq, counts = np.unique(frame_ids, return_counts=True)
    if np.any(counts > 1):
        raise ValueError(f"{src}: frame id {int(uniq[counts > 1][0])} is listed more than once")
    return indices, frame_ids


# ------------------------------------------------------------------------------------------------
# results file
# ------------------------------------------------------------------------------------------------
def _atomic_write_text(path: PathLike, chunks: Iterable[str]) -> None:
    """Write the text chunks to ``path`` atomically (readers never see a partial file)."""
    with atomic_open(path, "w", encoding="utf-8") as f:
        for c in chunks:
            f.write(c)


def write_vid_results(path: PathLike, all_boxes: Sequence[Sequence[Any]], frame_ids: Sequence[int]) -> None:
    """Write the reference's results file ``det_<image_set>_all.txt``.

    ``all_boxes[cls][img]``: array (N, 5) of ``[x1, y1, x2, y2, score]`` in original-image pixels
    (``cls`` 0 = background, skipped; empty cells may be empty arrays/lists or None); ``frame_ids[img]``:
    the image's global frame id. One line per detection,
    ``'{frame_id:d} {cls:d} {score:.4f} {x1:.2f} {y1:.2f} {x2:.2f} {y2:.2f}'``, image-major (every
    class of image 0, then image 1, ...), rows in their stored order, as ``write_vid_results`` of the
    reference writes them. float32 values are formatted exactly (widened to float64, as numpy does).
    """
    num_images = len(frame_ids)
    for c in range(1, len(all_boxes)):
        if len(all_boxes[c]) < num_images:
            raise ValueError(f"write_vid_results: all_boxes[{c}] has {len(all_boxes[c])} images, "
                             f"frame_ids has {num_images}")
    fmt = "{:d} {:d} {:.4f} {:.2f} {:.2f} {:.2f} {:.2f}\n".format

    def lines() -> Iterable[str]:
        for im in range(num_images):
            fid = int(frame_ids[im])
            out = []
            for c in range(1, len(all_boxes)):
                dets = all_boxes[c][im]
                if dets is None or len(dets) == 0:
                    continue
                a = np.asarray(dets)
                if a.ndim != 2 or a.shape[1] < 5:
                    raise ValueError(f"write_vid_results: all_boxes[{c}][{im}] has shape {a.shape}, "
                                     "expected (N, 5) [x1, y1, x2, y2, score]")
                for r in a.astype(np.float64).tolist():
                    out.append(fmt(fid, c, r[-1], r[0], r[1], r[2], r[3]))
            if out:
                yield "".join(out)

    _atomic_write_text(path, lines())


def _read_detections(det_lines_or_path: Sequence[str] | PathLike) -> np.ndarray:
    """(N, 7) float64 ``[frame_id, class, score, x1, y1, x2, y2]`` from a results file or its lines."""
    if isinstance(det_lines_or_path, (str, os.PathLike)):
        src = os.fspath(det_lines_or_path)
        if not os.path.isfile(src):
            raise ValueError(f"{src}: results file not found")
        source: Any = src
    else:
        src, source = "detection lines", [ln for ln in det_lines_or_path if ln.strip()]
        if not source:
            return np.zeros((0, 7))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "input contained no data"
            # numpy's C parser rounds correctly, i.e. exactly like the reference's float(str)
            arr = np.loadtxt(source, dtype=np.float64, comments=None, ndmin=2)
    except ValueError as e:
        raise ValueError(f"{src}: malformed results file ({e}); expected "
                         "'frame_id class score x1 y1 x2 y2' per line") from None
    if arr.size == 0:
        return np.zeros((0, 7))
    if arr.shape[1] != 7:
        raise ValueError(f"{src}: {arr.shape[1]} columns per line, expected 7 "
                         "(frame_id class score x1 y1 x2 y2)")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{src}: non-finite number in results file")
    if np.any(arr[:, :2] != np.floor(arr[:, :2])):
        bad = int(np.nonzero(np.any(arr[:, :2] != np.floor(arr[:, :2]), axis=1))[0][0])
        raise ValueError(f"{src}: line {bad + 1}: frame id and class must be integers")
    return arr


# ------------------------------------------------------------------------------------------------
# ground truth arrays
# ------------------------------------------------------------------------------------------------
class _GT:
    """Ground-truth objects of the image set, ordered by image-set position then file order."""

    def __init__(self, indices: Sequence[str], annotations: Mapping[str, Mapping[str, Any]],
                 classes: Sequence[str]) -> None:
        classhash = {c: i for i, c in enumerate(classes)}
        counts = np.zeros(len(indices), dtype=np.int64)
        labels: list[int] = []
        boxes: list[Sequence[float]] = []
        tracks: list[int] = []
        for pos, ix in enumerate(indices):
            rec = annotations.get(ix)
            if rec is None:
                raise ValueError(f"annotations: no entry for image-set index {ix!r} "
                                 f"(image-set line {pos + 1})")
            objs = rec["objects"]
            counts[pos] = len(objs)
            for o in objs:
                lab = classhash.get(o["wnid"])
                if lab is None or lab == 0:
                    raise ValueError(f"{rec.get('filename', ix)}: object class {o['wnid']!r} is not one "
                                     f"of the {len(classes) - 1} evaluated classes")
                labels.append(lab)
                boxes.append(o["bbox"])
                t = o.get("trackid")
                tracks.append(-1 if t is None else int(t))
        self.count = counts  # objects per image-set frame
        self.start = np.concatenate([[0], np.cumsum(counts)])
        self.pos = np.repeat(np.arange(len(indices), dtype=np.int64), counts)
        self.label = np.asarray(labels, dtype=np.int64)
        self.box = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        self.track = np.asarray(tracks, dtype=np.int64)
        # per-object threshold, operation for operation as parse_vid_rec
        w = self.box[:, 2] - self.box[:, 0] + 1
        h = self.box[:, 3] - self.box[:, 1] + 1
        thr = (w * h) / ((w + _PIXEL_TOLERANCE) * (h + _PIXEL_TOLERANCE))
        self.thr = np.minimum(thr, _DEFAULT_IOU_THR)


def _pair_iou(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """IoU of row-aligned boxes ``a``, ``b`` (P, 4) with the reference's +1 convention and operation
    order (so thresholds compare bit-identically). Returns ``(ov, overlaps)``; ``ov`` is 0 where the
    boxes do not intersect (``iw <= 0`` or ``ih <= 0``)."""
    iw = np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]) + 1
    ih = np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]) + 1
    inter = (iw > 0) & (ih > 0)
    ua = (a[:, 2] - a[:, 0] + 1.0) * (a[:, 3] - a[:, 1] + 1.0) + \
         (b[:, 2] - b[:, 0] + 1.0) * (b[:, 3] - b[:, 1] + 1.0) - iw * ih
    with np.errstate(divide="ignore", invalid="ignore"):
        ov = np.where(inter, iw * ih / np.where(inter, ua, 1.0), 0.0)
    return ov, inter


def _pairs(det_key: np.ndarray, gt_key_sorted: np.ndarray, gt_order: np.ndarray,
           lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
    """All (detection, object) pairs with equal key for detections ``lo:hi``: detection indices and
    object indices (objects in ``gt_order``, i.e. key order then file order)."""
    k = det_key[lo:hi]
    s = np.searchsorted(gt_key_sorted, k, "left")
    n = np.searchsorted(gt_key_sorted, k, "right") - s
    total = int(n.sum())
    d = np.repeat(np.arange(lo, hi, dtype=np.int64), n)
    first = np.repeat(np.cumsum(n) - n, n)
    g = gt_order[np.repeat(s, n) + (np.arange(total, dtype=np.int64) - first)]
    return d, g


def _chunks(det_pos: np.ndarray, pairs_per_det: np.ndarray) -> list[tuple[int, int]]:
    """Split detections (sorted by frame) into frame-aligned slices ``(lo, hi)`` of about
    ``_PAIR_BUDGET`` pairs each (a single frame is never split)."""
    n = len(det_pos)
    if n == 0:
        return []
    starts = np.flatnonzero(np.r_[True, det_pos[1:] != det_pos[:-1]])
    bounds = np.r_[starts, n]  # frame f spans bounds[f]:bounds[f+1]
    cum = np.r_[0, np.cumsum(pairs_per_det)][bounds]  # pairs before each frame boundary
    out, f = [], 0
    while f < len(starts):
        g = int(np.searchsorted(cum, cum[f] + _PAIR_BUDGET, "right")) - 1
        g = min(max(g, f + 1), len(starts))
        out.append((int(bounds[f]), int(bounds[g])))
        f = g
    return out


def _greedy_match(det_pos: np.ndarray, det_lab: np.ndarray, det_box: np.ndarray, gt: _GT,
                  num_classes: int) -> np.ndarray:
    """Index of the object each detection is matched to (-1: none), reference rules.

    Detections must be sorted by (image-set position, confidence descending). Matching decomposes into
    independent (frame, class) groups; inside a group detections are processed in confidence order.
    Only pairs that pass the object's threshold can ever match, so the loop runs over the rank of a
    detection among the group's detections that have such a pair.
    """
    nd = len(det_pos)
    matched = np.full(nd, -1, dtype=np.int64)
    if nd == 0 or len(gt.label) == 0:
        return matched
    det_key = det_pos * num_classes + det_lab
    gt_key = gt.pos * num_classes + gt.label
    gt_order = np.argsort(gt_key, kind="stable")  # file order kept inside a (frame, class) group
    gt_key_sorted = gt_key[gt_order]
    per_det = np.searchsorted(gt_key_sorted, det_key, "right") - np.searchsorted(gt_key_sorted, det_key, "left")
    gt_taken = np.zeros(len(gt.label), dtype=bool)
    for lo, hi in _chunks(det_pos, per_det):
        d, g = _pairs(det_key, gt_key_sorted, gt_order, lo, hi)
        if len(d) == 0:
            continue
        ov, _ = _pair_iou(det_box[d], gt.box[g])
        ok = ov >= gt.thr[g]  # ov > 0 here, so the reference's "ov > ovmax (= -1)" holds too
        d, g, ov = d[ok], g[ok], ov[ok]
        if len(d) == 0:
            continue
        # rank of each candidate detection inside its (frame, class) group; detection index order is
        # confidence order within a group
        cand = np.unique(d)
        ck = det_key[cand]
        o = np.lexsort((cand, ck))
        ck_sorted = ck[o]
        grp_start = np.flatnonzero(np.r_[True, ck_sorted[1:] != ck_sorted[:-1]])
        rank_sorted = np.arange(len(cand)) - np.repeat(grp_start, np.diff(np.r_[grp_start, len(cand)]))
        rank = np.empty(len(cand), dtype=np.int64)
        rank[o] = rank_sorted
        pr = rank[np.searchsorted(cand, d)]
        # per detection: largest IoU first; equal IoU -> first object in file order ("ov > ovmax")
        o = np.lexsort((g, -ov, d, pr))
        d, g, pr = d[o], g[o], pr[o]
        bounds = np.searchsorted(pr, np.arange(int(pr[-1]) + 2), "left")
        for r in range(int(pr[-1]) + 1):
            sd, sg = d[bounds[r]:bounds[r + 1]], g[bounds[r]:bounds[r + 1]]
            free = ~gt_taken[sg]
            sd, sg = sd[free], sg[free]
            if len(sd) == 0:
                continue
            first = np.r_[True, sd[1:] != sd[:-1]]
            matched[sd[first]] = sg[first]
            gt_taken[sg[first]] = True
    return matched


def _vid_ap(rec: np.ndarray, prec: np.ndarray) -> float:
    """All-point AP: area under the precision envelope (the reference's ``vid_ap``)."""
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # same values as the reference's backward loop
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def _class_aps(tp: np.ndarray, fp: np.ndarray, lab: np.ndarray, npos: np.ndarray,
               num_classes: int) -> np.ndarray:
    """AP of classes 1..C-1 from detections already in global confidence order (float64, length C-1)."""
    ap = np.zeros(num_classes - 1)
    eps = np.finfo(np.float64).eps
    for c in range(1, num_classes):
        m = lab == c
        fpc = np.cumsum(fp[m]).astype(float)
        tpc = np.cumsum(tp[m]).astype(float)
        with np.errstate(divide="ignore", invalid="ignore"):
            rec = tpc / float(npos[c])
        prec = tpc / np.maximum(tpc + fpc, eps)
        ap[c - 1] = _vid_ap(rec, prec)
    return ap


# ------------------------------------------------------------------------------------------------
# motion IoU (FGFA)
# ------------------------------------------------------------------------------------------------
def _split_index(ix: str) -> tuple[str, int]:
    video, _, frame = ix.rpartition("/")
    try:
        return video, int(frame)
    except ValueError:
        raise ValueError(f"annotations: index {ix!r} does not end in a frame number "
                         "('<video>/<frame:06d>'), so its track neighbours cannot be found") from None


def compute_motion_iou(indices: Sequence[str], annotations: Mapping[str, Mapping[str, Any]],
                       window: int = MOTION_WINDOW) -> list[np.ndarray]:
    """FGFA motion IoU of every object of the listed frames.

    Returns one float64 array per index (one value per object, file order): the mean IoU (+1
    convention, 0 without overlap) of the object's box with the same ``trackid`` in every frame
    ``k`` with ``0 < |k - t| <= window`` of the same video that is annotated in ``annotations``
    (pass the annotations of *all* frames of the videos, not only the evaluated ones). NaN where the
    object has no trackid or the track has no annotated neighbour in the window. Neighbours are summed
    in frame order (numpy's ``mean`` sums 8 or more values pairwise, so a reimplementation with it may
    differ in the last bit).
    """
    videos: dict[str, int] = {}
    vid, frm, trk, box = [], [], [], []
    for ix, rec in annotations.items():
        objs = rec["objects"]
        if not objs:
            continue
        v, f = _split_index(ix)
        vi = videos.setdefault(v, len(videos))
        for o in objs:
            if o.get("trackid") is None:
                continue
            vid.append(vi)
            frm.append(f)
            trk.append(int(o["trackid"]))
            box.append(o["bbox"])
    vid_a = np.asarray(vid, dtype=np.int64)
    frm_a = np.asarray(frm, dtype=np.int64)
    trk_a = np.asarray(trk, dtype=np.int64)
    box_a = np.asarray(box, dtype=np.float64).reshape(-1, 4)
    if len(trk_a) and (trk_a.min() < 0 or frm_a.min() < 0):
        raise ValueError("annotations: negative trackid or frame number")
    nt = int(trk_a.max()) + 1 if len(trk_a) else 1
    nf = int(frm_a.max()) + 1 if len(frm_a) else 1
    if (len(videos) + 1) * nt * nf >= 2 ** 62:
        raise ValueError("annotations: trackid/frame numbers too large to index")

    def key(v: np.ndarray, t: np.ndarray, f: np.ndarray) -> np.ndarray:
        return (v * nt + t) * nf + f

    k_all = key(vid_a, trk_a, frm_a)
    # neighbour table: first box of each (video, track, frame) in file order
    o = np.argsort(k_all, kind="stable")
    ks = k_all[o]
    first = np.r_[True, ks[1:] != ks[:-1]] if len(ks) else np.zeros(0, bool)
    tab_key, tab_box = ks[first], box_a[o][first]
    tab_track = tab_key // nf
    tab_frame = tab_key % nf

    # query objects: the listed frames', in order
    q_box, q_key, q_valid, counts = [], [], [], []
    for ix in indices:
        rec = annotations.get(ix)
        if rec is None:
            raise ValueError(f"annotations: no entry for image-set index {ix!r}")
        objs = rec["objects"]
        counts.append(len(objs))
        if not objs:
            continue
        v, f = _split_index(ix)
        vi = videos.get(v, -1)
        for o_ in objs:
            t = o_.get("trackid")
            q_box.append(o_["bbox"])
            q_valid.append(t is not None and vi >= 0)
            q_key.append(key(np.int64(max(vi, 0)), np.int64(t if t is not None else 0), np.int64(f)))
    qb = np.asarray(q_box, dtype=np.float64).reshape(-1, 4)
    qk = np.asarray(q_key, dtype=np.int64)
    qv = np.asarray(q_valid, dtype=bool)
    s = np.zeros(len(qk))
    n = np.zeros(len(qk), dtype=np.int64)
    if len(tab_key):
        p = np.searchsorted(tab_key, qk)  # own entry (exists for every valid query)
        q_track, q_frame = qk // nf, qk % nf
        for dlt in [*range(-window, 0), *range(1, window + 1)]:
            j = p + dlt
            inb = (j >= 0) & (j < len(tab_key))
            jj = np.clip(j, 0, len(tab_key) - 1)
            ok = qv & inb & (tab_track[jj] == q_track) & (np.abs(tab_frame[jj] - q_frame) <= window) \
                & (tab_frame[jj] != q_frame)
            if not ok.any():
                continue
            ov, _ = _pair_iou(qb[ok], tab_box[jj[ok]])
            s[ok] += ov
            n[ok] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(n > 0, s / np.maximum(n, 1), np.nan)
    return np.split(mean, np.cumsum(counts)[:-1]) if counts else []


# ------------------------------------------------------------------------------------------------
# evaluation
# ------------------------------------------------------------------------------------------------
def vid_eval(det_lines_or_path: Sequence[str] | PathLike,
             image_set_lines: Sequence[str] | PathLike,
             annotations: Mapping[str, Mapping[str, Any]],
             classes: Sequence[str] = VID_WNIDS,
             *,
             class_names: Sequence[str] | None = None,
             motion: bool = False,
             motion_iou: Sequence[Sequence[float]] | None = None,
             motion_ranges: Mapping[str, tuple[float, float]] = MOTION_RANGES) -> dict[str, Any]:
    """ImageNet VID mAP exactly as the reference's ``vid_eval`` (see the module docstring).

    Args:
        det_lines_or_path: the results file (a path) or its lines (see :func:`write_vid_results`).
        image_set_lines: ``"<index> <frame_id>"`` lines (or a path to the file) listing the evaluated
            frames; detections whose frame id is not listed are ignored.
        annotations: ``{index: parse_vid_xml(...)}`` for every listed index (for the motion
            breakdown also the unlisted frames of the same videos, if any).
        classes: wnids by class index, index 0 = background (the reference's ``classes_map``).
        class_names: display names by class index (default: :data:`VID_CLASSES` when ``classes`` is
            :data:`VID_WNIDS`, else the wnids).
        motion: also compute FGFA's breakdown by motion IoU.
        motion_iou: per listed frame, the motion IoU of each object (e.g. read from FGFA's .mat);
            default: :func:`compute_motion_iou` from ``annotations``. Implies ``motion``.
        motion_ranges: ``{group: (lo, hi)}`` closed intervals (default :data:`MOTION_RANGES`).

    Returns a dict: ``classes`` (names 1..C-1), ``ap`` (list, float64), ``ap_per_class``
    (``{name: ap}``), ``mAP``, ``num_images``, ``num_gt_objects``, ``num_gt_per_class``,
    ``num_detections`` (evaluated), ``num_detections_ignored`` (frame not listed),
    ``num_tp_per_class``, ``nan_classes``; with motion also ``motion`` =
    ``{group: {'range', 'mAP', 'ap', 'num_gt', 'num_gt_per_class', 'classes_evaluated'}}``
    (``ap`` NaN for classes without objects in the group) and ``num_gt_no_motion``.
    """
    num_classes = len(classes)
    if num_classes < 2 or classes[0] != "__background__":
        raise ValueError("classes: expected wnids by class index with '__background__' at index 0")
    if class_names is None:
        class_names = VID_CLASSES if tuple(classes) == VID_WNIDS else tuple(classes)
    if len(class_names) != num_classes:
        raise ValueError(f"class_names: {len(class_names)} names for {num_classes} classes")
    names = list(class_names[1:])

    indices, frame_ids = read_image_set(image_set_lines)
    gt = _GT(indices, annotations, classes)
    npos = np.bincount(gt.label, minlength=num_classes).astype(np.float64)

    raw = _read_detections(det_lines_or_path)
    fid = raw[:, 0].astype(np.int64)
    lab = raw[:, 1].astype(np.int64)
    bad = (lab < 1) | (lab >= num_classes)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"detections: line {i + 1}: class index {int(lab[i])} outside 1..{num_classes - 1}")
    # frame id -> image-set position; unlisted frames are dropped like the reference does
    id_order = np.argsort(frame_ids, kind="stable")
    ids_sorted = frame_ids[id_order]
    loc = np.searchsorted(ids_sorted, fid)
    listed = (loc < len(ids_sorted)) & (ids_sorted[np.minimum(loc, len(ids_sorted) - 1)] == fid) \
        if len(ids_sorted) else np.zeros(len(fid), bool)
    num_ignored = int((~listed).sum())
    pos = id_order[loc[listed]]
    conf = raw[listed, 2]
    lab = lab[listed]
    box = raw[listed, 3:7]
    # per-frame confidence order, frames in image-set order; ties keep file order (stable)
    o = np.lexsort((np.arange(len(pos)), -conf, pos))
    pos, conf, lab, box = pos[o], conf[o], lab[o], box[o]

    matched = _greedy_match(pos, lab, box, gt, num_classes)
    # the reference's global order: concatenation in image-set order, then sorted by confidence
    g_order = np.argsort(-conf, kind="stable")
    tp = (matched >= 0).astype(np.float64)
    fp = 1.0 - tp
    ap = _class_aps(tp[g_order], fp[g_order], lab[g_order], npos, num_classes)

    nan_classes = [names[i] for i in range(num_classes - 1) if np.isnan(ap[i])]
    if nan_classes:
        warnings.warn("vid_eval: AP is NaN (detections but no ground truth, as in the reference) for: "
                      + ", ".join(nan_classes), RuntimeWarning, stacklevel=2)
    result: dict[str, Any] = {
        "classes": names,
        "ap": ap.tolist(),
        "ap_per_class": dict(zip(names, ap.tolist())),
        "mAP": float(np.mean(ap)),
        "num_images": len(indices),
        "num_gt_objects": int(len(gt.label)),
        "num_gt_per_class": dict(zip(names, npos[1:].astype(int).tolist())),
        "num_detections": int(len(pos)),
        "num_detections_ignored": num_ignored,
        "num_tp_per_class": dict(zip(names, np.bincount(lab[matched >= 0], minlength=num_classes)[1:].tolist())),
        "nan_classes": nan_classes,
    }

    if motion or motion_iou is not None:
        if motion_iou is None:
            per_frame = compute_motion_iou(indices, annotations)
        else:
            if len(motion_iou) != len(indices):
                raise ValueError(f"motion_iou: {len(motion_iou)} frames, image set has {len(indices)}")
            per_frame = []
            for i, m in enumerate(motion_iou):
                m = np.asarray(m, dtype=np.float64).reshape(-1)
                if gt.count[i] == 0 and len(m) <= 1:
                    m = m[:0]  # FGFA's table holds one placeholder for a frame without objects
                if len(m) != gt.count[i]:
                    raise ValueError(f"motion_iou: frame {indices[i]!r} has {len(m)} values for "
                                     f"{gt.count[i]} objects")
                per_frame.append(m)
        mi = np.concatenate(per_frame) if per_frame else np.zeros(0)
        mi = mi.reshape(-1)
        result["motion"] = _motion_breakdown(pos, lab, box, matched, g_order, gt, mi, names,
                                             num_classes, motion_ranges)
        result["num_gt_no_motion"] = int(np.isnan(mi).sum())
    return result


def _motion_breakdown(pos: np.ndarray, lab: np.ndarray, box: np.ndarray, matched: np.ndarray,
                      g_order: np.ndarray, gt: _GT, mi: np.ndarray, names: list[str], num_classes: int,
                      motion_ranges: Mapping[str, tuple[float, float]]) -> dict[str, Any]:
    """FGFA's per-motion-group APs from the standard matching (see the module docstring)."""
    nd = len(pos)
    unmatched = matched < 0
    # best IoU of each unmatched detection with the ignored / non-ignored objects of its frame (any
    # class); computed over all (detection, object) pairs of a frame, in frame-aligned chunks
    ud = np.flatnonzero(unmatched)
    gt_order = np.arange(len(gt.label), dtype=np.int64)  # gt.pos is already sorted
    per_det = gt.count[pos[ud]] if len(ud) else np.zeros(0, np.int64)
    pair_d, pair_g, pair_ov = [], [], []
    for lo, hi in _chunks(pos[ud], per_det):
        d, g = _pairs(pos[ud], gt.pos, gt_order, lo, hi)
        ov, _ = _pair_iou(box[ud[d]], gt.box[g])
        pair_d.append(d)
        pair_g.append(g)
        pair_ov.append(ov)
    pd_ = np.concatenate(pair_d) if pair_d else np.zeros(0, np.int64)
    pg = np.concatenate(pair_g) if pair_g else np.zeros(0, np.int64)
    pov = np.concatenate(pair_ov) if pair_ov else np.zeros(0)
    seg = np.flatnonzero(np.r_[True, pd_[1:] != pd_[:-1]]) if len(pd_) else np.zeros(0, np.int64)
    seg_det = pd_[seg]  # unmatched detections (indices into ud) that have objects in their frame
    n_gt_frame = gt.count[pos]
    # FGFA's single area range [0, 1e5^2]: an unmatched box outside it (only an inverted box, whose
    # "area" is negative) is not counted
    bb_area = (box[:, 3] - box[:, 1] + 1) * (box[:, 2] - box[:, 0] + 1)
    area_out = (bb_area < 0) | (bb_area > 1e5 * 1e5)
    num_empty_frames = int((gt.count == 0).sum())

    out: dict[str, Any] = {}
    for group, (lo_r, hi_r) in motion_ranges.items():
        with np.errstate(invalid="ignore"):
            ig = (mi < lo_r) | (mi > hi_r)  # NaN compares false: never ignored, as in FGFA
            inside = int(((mi >= lo_r) & (mi <= hi_r)).sum()) + (num_empty_frames if lo_r <= 0 <= hi_r else 0)
        n_entries = len(mi) + num_empty_frames
        empty_weight = inside / float(n_entries) if n_entries else 0.0
        tp = np.zeros(nd)
        fp = np.zeros(nd)
        m = ~unmatched
        tp[m] = (~ig[matched[m]]).astype(np.float64)
        if len(ud):
            ov_ig = np.full(len(ud), -1.0)
            ov_nig = np.full(len(ud), -1.0)
            if len(pd_):
                ig_p = ig[pg]
                ov_ig[seg_det] = np.maximum.reduceat(np.where(ig_p, pov, -1.0), seg)
                ov_nig[seg_det] = np.maximum.reduceat(np.where(ig_p, -1.0, pov), seg)
            n_ig_frame = np.bincount(gt.pos[ig], minlength=len(gt.count))
            ngt = n_gt_frame[ud]
            frac = np.zeros(len(ud))
            has = ngt > 0
            if has.any():
                frac[has] = n_ig_frame[pos[ud][has]] / ngt[has].astype(float)
            fp[ud] = np.where(ov_nig > ov_ig, 1.0,
                              np.where(ov_ig > ov_nig, 0.0, np.where(ngt == 0, empty_weight, frac)))
            fp[ud[area_out[ud]]] = 0.0
        npos = np.bincount(gt.label[~ig], minlength=num_classes).astype(np.float64)
        ap = _class_aps(tp[g_order], fp[g_order], lab[g_order], npos, num_classes)
        ap[npos[1:] <= 0] = np.nan  # FGFA: AP -1, left out of the mean
        valid = npos[1:] > 0
        out[group] = {
            "range": [float(lo_r), float(hi_r)],
            "mAP": float(np.mean(ap[valid])) if valid.any() else float("nan"),
            "ap": ap.tolist(),
            "ap_per_class": dict(zip(names, ap.tolist())),
            "num_gt": int((~ig).sum()),
            "num_gt_per_class": dict(zip(names, npos[1:].astype(int).tolist())),
            "classes_evaluated": int(valid.sum()),
        }
    return out


# ------------------------------------------------------------------------------------------------
# reporting
# ------------------------------------------------------------------------------------------------
def format_info_str(result: Mapping[str, Any]) -> str:
    """The reference's printed report (``do_python_eval``'s ``info_str``), 4 decimals."""
    s = "".join(f"AP for {n} = {a:.4f}\n" for n, a in zip(result["classes"], result["ap"]))
    return s + f"Mean AP@0.5 = {result['mAP']:.4f}\n\n"


def format_table(result: Mapping[str, Any]) -> str:
    """Per-class table (class, AP, #GT, #TP) and the mean; motion-group mAPs if present."""
    w = max(len("mean"), *(len(n) for n in result["classes"]))
    rows = [f"{'class':<{w}}  {'AP':>7}  {'#GT':>7}  {'#TP':>7}"]
    for n, a in zip(result["classes"], result["ap"]):
        rows.append(f"{n:<{w}}  {a:7.4f}  {result['num_gt_per_class'][n]:7d}  "
                    f"{result['num_tp_per_class'][n]:7d}")
    rows.append(f"{'mean':<{w}}  {result['mAP']:7.4f}")
    if "motion" in result:
        rows.append("")
        rows.append(f"{'motion':<{w}}  {'mAP':>7}  {'#GT':>7}  range")
        for g, r in result["motion"].items():
            rows.append(f"{g:<{w}}  {r['mAP']:7.4f}  {r['num_gt']:7d}  "
                        f"[{r['range'][0]:.1f}, {r['range'][1]:.1f}]")
    return "\n".join(rows) + "\n"


def _json_safe(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None  # strict JSON has no NaN
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, np.generic):
        return _json_safe(x.item())
    return x


def save_json(result: Mapping[str, Any], path: PathLike) -> None:
    """Write ``result`` as strict JSON (NaN -> null) atomically (temp file + ``os.replace``)."""
    _atomic_write_text(path, [json.dumps(_json_safe(dict(result)), indent=1), "\n"])
