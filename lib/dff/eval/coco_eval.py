"""COCO box AP (AP@[.5:.95], AP50, AP75, by size, AR) through ``pycocotools``, beside the VID mAP.

Takes exactly the inputs of :func:`dff.eval.vid_eval.vid_eval` (results file or its lines, image-set
lines, annotations dict, class ids by index) and builds the COCO ground truth and detections in
memory, then runs the official ``COCOeval(iouType="bbox")`` unchanged (its printing is captured).

Conventions:

* Images: ``id`` = the image set's frame id, ``width``/``height`` from the annotation (required).
* Categories: ``id`` = class index 1..C-1, ``name`` = the display name.
* Ground truth: box ``(xmin, ymin, xmax, ymax)`` becomes ``[xmin, ymin, xmax - xmin, ymax - ymin]``
  (no +1: the convention of the project's COCO-video reader, which reads ``[x, y, w, h]`` as
  ``(x, y, x + w, y + h)``, so such a box gives back its own ``[x, y, w, h]``); ``area`` = w * h,
  ``iscrowd`` 0; ids 1.. (pycocotools takes id 0 for "unmatched"). Objects whose class id is not in
  ``classes`` (or is ``__background__``) are ignored and counted in ``num_gt_ignored``.
* Detections: results rows ``<frame_id> <class index> <score> <x1> <y1> <x2> <y2>`` of the listed frames,
  box converted likewise; rows of frames not in the image set are ignored (as ``vid_eval`` does).
* COCO keeps the ``maxDets[-1]`` = 100 best detections per (image, class); the rest never reach its
  matching, so they are dropped before the dicts are built (same result, less memory). Unlike the
  usual COCO submissions nothing caps the detections per image over all classes.
* pycocotools' -1 ("no ground truth in this setting") is reported as NaN.

Cost: pycocotools is pure Python per (image, class, area range); the full VID val set (176k frames,
30 classes) takes minutes and memory for one dict per kept detection.
"""
from __future__ import annotations

import contextlib
import io
import os
from typing import Any, Mapping, Sequence, Union

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

# the private reader keeps the row parsing (and its error messages) identical to vid_eval's
from dff.eval.vid_eval import VID_CLASSES, VID_WNIDS, _read_detections, read_image_set

__all__ = ["COCO_STAT_NAMES", "coco_gt_dataset", "coco_detections", "coco_eval", "format_coco_table"]

PathLike = Union[str, "os.PathLike[str]"]

# names of COCOeval.stats[0..11] for iouType "bbox", in pycocotools' order
COCO_STAT_NAMES: tuple[str, ...] = (
    "AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large",
    "AR_1", "AR_10", "AR_100", "AR_small", "AR_medium", "AR_large",
)


def _xyxy_to_xywh(box: Sequence[float]) -> list[float]:
    """``(x1, y1, x2, y2)`` -> COCO ``[x1, y1, x2 - x1, y2 - y1]`` (Python floats, JSON-able)."""
    x1, y1, x2, y2 = (float(v) for v in box)
    return [x1, y1, x2 - x1, y2 - y1]


def _check_classes(classes: Sequence[str], class_names: Sequence[str] | None) -> list[str]:
    """Validate ``classes`` as vid_eval does; return the display names by index (0 included)."""
    if len(classes) < 2 or classes[0] != "__background__":
        raise ValueError("classes: expected class ids by class index with '__background__' at index 0")
    if class_names is None:
        class_names = VID_CLASSES if tuple(classes) == VID_WNIDS else tuple(classes)
    if len(class_names) != len(classes):
        raise ValueError(f"class_names: {len(class_names)} names for {len(classes)} classes")
    return list(class_names)


def coco_gt_dataset(indices: Sequence[str], frame_ids: Sequence[int],
                    annotations: Mapping[str, Mapping[str, Any]], classes: Sequence[str],
                    class_names: Sequence[str]) -> tuple[dict[str, Any], int]:
    """The COCO ground-truth dataset of the listed frames, and the number of ignored objects.

    ``indices[i]``/``frame_ids[i]``: the image set (see :func:`dff.eval.vid_eval.read_image_set`);
    ``annotations[index]`` = ``{'width', 'height', 'objects': [{'wnid', 'bbox': (x1, y1, x2, y2)}]}``.
    Returns ``({'images': [{'id', 'width', 'height'}], 'categories': [{'id', 'name'}],
    'annotations': [{'id', 'image_id', 'category_id', 'bbox': [x, y, w, h], 'area', 'iscrowd'}]},
    num_ignored)``; images in image-set order, objects in file order.
    """
    class_index = {c: i for i, c in enumerate(classes) if i > 0}
    images: list[dict[str, Any]] = []
    anns: list[dict[str, Any]] = []
    ignored = 0
    for line, (ix, fid) in enumerate(zip(indices, frame_ids), 1):
        rec = annotations.get(ix)
        if rec is None:
            raise ValueError(f"annotations: no entry for image-set index {ix!r} (image-set line {line})")
        if rec.get("width") is None or rec.get("height") is None:
            raise ValueError(f"annotations[{ix!r}]: no width/height (the COCO image entry needs both)")
        images.append({"id": int(fid), "width": int(rec["width"]), "height": int(rec["height"])})
        for obj in rec["objects"]:
            cat = class_index.get(obj["wnid"])
            if cat is None:
                ignored += 1
                continue
            bbox = _xyxy_to_xywh(obj["bbox"])
            anns.append({"id": len(anns) + 1,  # 0 would read as "unmatched" inside COCOeval
                         "image_id": int(fid), "category_id": cat, "bbox": bbox,
                         "area": bbox[2] * bbox[3], "iscrowd": 0})
    categories = [{"id": i, "name": class_names[i]} for i in range(1, len(classes))]
    return {"images": images, "categories": categories, "annotations": anns}, ignored


def _top_per_group(fid: np.ndarray, cls: np.ndarray, score: np.ndarray, k: int) -> np.ndarray:
    """Boolean mask (N,) of the ``k`` best rows of each (frame, class) group, ties to the earlier row
    (COCOeval's stable mergesort on score makes the same choice)."""
    n = len(fid)
    if n == 0:
        return np.zeros(0, dtype=bool)
    order = np.lexsort((np.arange(n), -score, cls, fid))
    f, c = fid[order], cls[order]
    new_group = np.r_[True, (f[1:] != f[:-1]) | (c[1:] != c[:-1])]
    start = np.maximum.accumulate(np.where(new_group, np.arange(n), 0))
    keep = np.zeros(n, dtype=bool)
    keep[order] = (np.arange(n) - start) < k
    return keep


def coco_detections(rows: np.ndarray, frame_ids: Sequence[int], num_classes: int,
                    max_dets: int) -> tuple[list[dict[str, Any]], int]:
    """COCO result annotations from results rows, and the number of rows on unlisted frames.

    ``rows``: (N, 7) ``[frame_id, class, score, x1, y1, x2, y2]``; class indices must lie in
    1..num_classes-1. Rows of frames not in ``frame_ids`` are dropped, and of the rest only the
    ``max_dets`` best of each (frame, class) are kept (in file order). Returns
    ``([{'id', 'image_id', 'category_id', 'score', 'bbox': [x, y, w, h], 'area', 'iscrowd'}], ignored)``
    with the fields ``COCO.loadRes`` would set for box results (ids 1..).
    """
    fid = rows[:, 0].astype(np.int64)
    cls = rows[:, 1].astype(np.int64)
    bad = (cls < 1) | (cls >= num_classes)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"detections: line {i + 1}: class index {int(cls[i])} outside 1..{num_classes - 1}")
    listed = np.isin(fid, np.asarray(frame_ids, dtype=np.int64))
    keep = listed & _top_per_group(fid, cls, rows[:, 2], max_dets)
    dets: list[dict[str, Any]] = []
    for r in rows[keep].tolist():
        bbox = _xyxy_to_xywh(r[3:7])
        dets.append({"id": len(dets) + 1, "image_id": int(r[0]), "category_id": int(r[1]), "score": r[2],
                     "bbox": bbox, "area": bbox[2] * bbox[3], "iscrowd": 0})
    return dets, int((~listed).sum())


def _coco(dataset: dict[str, Any]) -> COCO:
    """A ``COCO`` object over an in-memory dataset (call with stdout captured: createIndex prints)."""
    coco = COCO()
    coco.dataset = dataset
    coco.createIndex()
    return coco


def _nan_if_absent(x: float) -> float:
    """pycocotools' -1 (no ground truth in that setting) -> NaN."""
    return float("nan") if x < 0 else float(x)


def _per_class_ap(precision: np.ndarray, cat_ids: Sequence[int], names: Sequence[str]) -> dict[str, float]:
    """``{name: AP@[.5:.95]}`` from ``COCOeval.eval['precision']`` (T, R, K, A, M): area 'all' (A=0),
    maxDets 100 (M=-1), mean over the entries != -1 (NaN when the class has no ground truth).
    ``cat_ids[k]`` is the class index of column k, ``names`` the display names by class index."""
    out = {}
    for k, cat in enumerate(cat_ids):
        p = precision[:, :, k, 0, -1]
        p = p[p > -1]
        out[names[cat]] = float(np.mean(p)) if p.size else float("nan")
    return out


def coco_eval(det_rows_or_results_file: Sequence[str] | PathLike,
              image_set_lines: Sequence[str] | PathLike,
              annotations: Mapping[str, Mapping[str, Any]],
              classes: Sequence[str] = VID_WNIDS,
              class_names: Sequence[str] | None = None) -> dict[str, Any]:
    """COCO box evaluation of a VID results file (see the module docstring for the conventions).

    Args: as :func:`dff.eval.vid_eval.vid_eval`: the results file (path) or its lines, the
    ``"<index> <frame_id>"`` image-set lines (or path), ``{index: {'width', 'height', 'objects'}}``,
    class ids by index (``'__background__'`` at 0) and display names by index (default: VID names
    for :data:`VID_WNIDS`, else the ids).

    Returns ``{'AP', 'AP50', 'AP75', 'AP_small', 'AP_medium', 'AP_large', 'AR_1', 'AR_10', 'AR_100',
    'AR_small', 'AR_medium', 'AR_large'`` (floats, NaN where that setting has no ground truth),
    ``'per_class': {name: AP@[.5:.95]}`` (NaN without ground truth), ``'num_images'``, ``'num_gt'``,
    ``'num_gt_ignored'`` (objects of other classes), ``'num_dets'`` (evaluated: listed frames, best 100
    per frame and class), ``'num_dets_ignored'`` (unlisted frames), ``'summary_text'`` (the 12
    lines pycocotools' ``summarize`` prints), ``'note'`` (None, or why the numbers are degenerate)}``.
    """
    names = _check_classes(classes, class_names)
    indices, frame_ids = read_image_set(image_set_lines)
    gt_dataset, num_gt_ignored = coco_gt_dataset(indices, frame_ids.tolist(), annotations, classes, names)
    rows = _read_detections(det_rows_or_results_file)

    # pycocotools reports with print(): progress and timings are dropped, the summary table is kept
    with contextlib.redirect_stdout(io.StringIO()):
        gt = _coco(gt_dataset)
        evaluator = COCOeval(gt, iouType="bbox")
        max_dets = int(evaluator.params.maxDets[-1])
        dets, num_dets_ignored = coco_detections(rows, frame_ids.tolist(), len(classes), max_dets)
        # built directly rather than with COCO.loadRes, which fails on an empty list; with no
        # detections COCOeval itself then gives 0 for settings with ground truth
        evaluator.cocoDt = _coco({"images": gt_dataset["images"], "categories": gt_dataset["categories"],
                                  "annotations": dets})
        evaluator.evaluate()
        evaluator.accumulate()
    summary = io.StringIO()
    with contextlib.redirect_stdout(summary):
        evaluator.summarize()

    notes = []
    if not dets:
        notes.append("no detections on the listed frames: AP/AR are 0 where there is ground truth")
    if not gt_dataset["annotations"]:
        notes.append("no ground-truth objects of the evaluated classes: every AP/AR is NaN")
    result: dict[str, Any] = {name: _nan_if_absent(v) for name, v in zip(COCO_STAT_NAMES, evaluator.stats)}
    result.update({
        "per_class": _per_class_ap(evaluator.eval["precision"], evaluator.params.catIds, names),
        "num_images": len(indices),
        "num_gt": len(gt_dataset["annotations"]),
        "num_gt_ignored": num_gt_ignored,
        "num_dets": len(dets),
        "num_dets_ignored": num_dets_ignored,
        "summary_text": summary.getvalue(),
        "note": "; ".join(notes) or None,
    })
    return result


def format_coco_table(result: Mapping[str, Any]) -> str:
    """AP, AP50, AP75 and the per-class AP@[.5:.95] (4 decimals, ``nan`` without ground truth)."""
    per_class = result["per_class"]
    w = max(len("all classes"), *(len(n) for n in per_class))
    rows = [f"{'COCO bbox':<{w}}  {'AP':>7}  {'AP50':>7}  {'AP75':>7}",
            f"{'all classes':<{w}}  {result['AP']:7.4f}  {result['AP50']:7.4f}  {result['AP75']:7.4f}",
            f"{'class':<{w}}  {'AP':>7}"]
    rows += [f"{n:<{w}}  {a:7.4f}" for n, a in per_class.items()]
    if result.get("note"):
        rows.append(f"note: {result['note']}")
    return "\n".join(rows) + "\n"
