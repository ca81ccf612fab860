"""Semantic segmentation accuracy (mIoU) of a per-frame or DFF segmentation model, as the DFF paper's Cityscapes
experiments measure it (docs/segmentation.md).

The paper's protocol. Cityscapes labels one frame ``i`` of each snippet; a DFF model with key interval ``l`` sees
that frame at any of the ``l`` distances ``d = i - k`` (``k`` the latest key frame, ``0 <= d < l``), depending on
where the key frames fall. So each labelled frame is predicted once per key position ``k = i - l + 1 .. i`` (the
key frame's feature, warped by the flow from frame ``i`` to frame ``k`` and multiplied by the scale map), one
confusion matrix is accumulated per distance, and the reported accuracy is the mean over the distances of each
distance's mIoU: the expected accuracy over a video with key frames every ``l`` frames. Key positions before a
snippet's first frame are skipped (and counted); real Cityscapes labels the 20th of 30 frames, so with
``l <= 20`` none is.

* :func:`confusion_matrix`, :func:`iou_from_confusion`: the counting (rows ground truth, columns prediction).
* :func:`predict_labels`: one frame's label map, from its own feature or a key frame's.
* :func:`accumulate_key_distances`: the protocol's confusion matrices (:class:`KeyDistanceConfusions`);
  :func:`summarize_key_distances` turns them into the JSON dict; :func:`evaluate_key_distances` does both.
* :func:`run_seg_test_set`: that on the config's test set, with the JSON written beside the detection test's
  (the test scripts, ``tools/evaluate_intervals.py``); :func:`format_seg_result`: its printed line.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
from typing import Any, Sequence

import numpy as np
import torch
from tqdm import tqdm

from dff.config import Config
from dff.dataset.cityscapes import CityscapesVideo, Snippet
from dff.dataset.factory import check_class_list, image_set_name, open_dataset
from dff.engine.segment import label_map
from dff.models.deeplab import IGNORE_LABEL
from dff.utils.image import preprocess, read_image
from dff.utils.io import atomic_write_text

__all__ = ["confusion_matrix", "iou_from_confusion", "predict_labels", "KeyDistanceConfusions",
           "accumulate_key_distances", "summarize_key_distances", "evaluate_key_distances", "run_seg_test_set",
           "format_seg_result"]


def confusion_matrix(pred: np.ndarray, gt: np.ndarray, num_classes: int, ignore: int = IGNORE_LABEL) -> np.ndarray:
    """Pixel counts (num_classes, num_classes) int64: entry ``[g, p]`` counts the pixels of ground-truth class ``g``
    predicted as ``p``. ``pred`` and ``gt``: class indices of the same shape; pixels with ``gt == ignore`` are
    skipped. A class index outside ``0 .. num_classes - 1`` (other than the ignored one in ``gt``) is a
    ``ValueError``: it would silently land in another cell of the flattened count."""
    pred = np.asarray(pred)
    gt = np.asarray(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"confusion_matrix: prediction {pred.shape} and ground truth {gt.shape} differ in shape")
    valid = gt != ignore
    g = gt[valid].astype(np.int64)
    p = pred[valid].astype(np.int64)
    for what, v in (("ground truth", g), ("prediction", p)):
        if v.size and (v.min() < 0 or v.max() >= num_classes):
            bad = v[(v < 0) | (v >= num_classes)][0]
            raise ValueError(f"confusion_matrix: {what} has class {bad}, outside 0..{num_classes - 1}")
    return np.bincount(g * num_classes + p, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def iou_from_confusion(conf: np.ndarray, eval_classes: Sequence[int]) -> tuple[dict[int, float], float]:
    """Per-class IoU = TP / (TP + FP + FN) and their mean, over ``eval_classes`` only.

    The confusion is restricted to the rows (ground truth) of the evaluated classes: a pixel whose ground truth is
    an evaluated class but predicted as a non-evaluated one (e.g. the background, class 0, on real Cityscapes) is
    a false negative of its ground-truth class; a pixel whose ground truth is a non-evaluated class counts for
    nothing (on Cityscapes there is none: class 0 is labelled 255, ignored).

    A class with no ground-truth pixel and no predicted pixel (in those rows) has IoU NaN and is left out of the
    mean; a class predicted but absent from the ground truth has IoU 0. The mean is NaN when every class is NaN.
    Returns ``({class index: IoU in [0, 1] or NaN}, mean IoU)``.
    """
    conf = np.asarray(conf, dtype=np.int64)
    rows = conf[list(eval_classes)]  # (E, K): the evaluated classes' ground-truth pixels
    per_class: dict[int, float] = {}
    for r, c in enumerate(eval_classes):
        tp = int(rows[r, c])
        fn = int(rows[r].sum()) - tp
        fp = int(rows[:, c].sum()) - tp
        union = tp + fp + fn
        per_class[int(c)] = tp / union if union else float("nan")
    present = [v for v in per_class.values() if not math.isnan(v)]
    return per_class, float(np.mean(present)) if present else float("nan")


def _model_device(model: torch.nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def predict_labels(model: torch.nn.Module, key_data: torch.Tensor | None, data: torch.Tensor, size: tuple[int, int],
                   scale_map: bool = True) -> np.ndarray:
    """The label map (H, W) int64 (``size`` = (H, W)) of the preprocessed frame ``data`` (1, 3, h, w).

    With ``key_data`` None or the very tensor ``data``, per frame: the frame's own feature. Otherwise (a DFF model:
    ``model.has_flow``) the key frame's feature warped by the flow from ``data`` to ``key_data``, multiplied by the
    scale map unless ``scale_map`` is False (the paper's ablation). Then the engine's labels
    (:func:`dff.engine.segment.label_map`: the scores upsampled to ``size``, the label's resolution, and arg-maxed).
    """
    device = _model_device(model)
    per_frame = key_data is None or key_data is data
    data = data.to(device)
    with torch.inference_mode():
        if per_frame:
            feat = model.extract_feature(data)
        else:
            if not getattr(model, "has_flow", False):
                raise ValueError(f"predict_labels: {type(model).__name__} has no flow network; a per-frame model "
                                 "cannot predict a frame from another (key) frame")
            key_data = key_data.to(device)
            flow, scale = model.estimate_flow(data, key_data)
            feat = model.warp(model.extract_feature(key_data), flow, scale if scale_map else None)
        labels = label_map(model.head_maps(feat)["seg_score"], (int(size[0]), int(size[1])))
    return labels.astype(np.int64)


@dataclasses.dataclass
class KeyDistanceConfusions:
    """What :func:`accumulate_key_distances` counted: ``confusion`` (l, K, K) per key distance ``d = i - k``,
    ``frames`` (l,) predictions per distance, ``skipped`` (l,) key positions before a snippet's start (not
    evaluated), and the snippets and annotated frames evaluated."""
    confusion: np.ndarray
    frames: np.ndarray
    skipped: np.ndarray
    key_interval: int
    scale_map: bool
    snippets: int = 0
    frames_evaluated: int = 0


class _FrameCache:
    """The preprocessed frames of the current snippet's frame list, each read once; emptied for another list."""

    def __init__(self, cfg: Config, device: torch.device) -> None:
        self.scales = cfg.SCALES[0]
        self.means = cfg.network.PIXEL_MEANS
        self.stride = int(cfg.network.IMAGE_STRIDE)
        self.device = device
        self.frames: tuple[str, ...] = ()
        self.items: dict[int, tuple[torch.Tensor, tuple[int, int], tuple[int, int]]] = {}

    def get(self, snippet: Snippet, index: int) -> tuple[torch.Tensor, tuple[int, int], tuple[int, int]]:
        """(data (1, 3, h', w') on the device, the frame's (H, W), the size to segment at) of frame ``index``."""
        if snippet.frames != self.frames:
            self.frames, self.items = snippet.frames, {}
        if index not in self.items:
            im = read_image(snippet.frames[index])
            data, im_info = preprocess(im, self.scales, self.means, self.stride)
            hw = (int(im.shape[0]), int(im.shape[1]))
            # with IMAGE_STRIDE padding the feature also covers the pad (bottom/right): segment at the padded
            # extent in original pixels, then crop to the frame, so the prediction stays aligned with the label
            seg = hw
            if self.stride > 0:
                s = float(im_info[0, 2])
                seg = (max(hw[0], round(data.shape[-2] / s)), max(hw[1], round(data.shape[-1] / s)))
            self.items[index] = (data.to(self.device), hw, seg)
        return self.items[index]


def accumulate_key_distances(model: torch.nn.Module, cfg: Config, dataset: CityscapesVideo, key_interval: int, *,
                             scale_map: bool = True, max_snippets: int | None = None,
                             progress: bool = True) -> KeyDistanceConfusions:
    """The protocol of the module docstring: each annotated frame ``i`` of each snippet (the first
    ``max_snippets``) predicted with every key frame ``k = i - l + 1 .. i`` (``l = key_interval``; positions
    before the snippet's first frame skipped and counted), one confusion matrix per distance ``d = i - k``. A
    per-frame model (not ``model.has_flow``) or ``l == 1`` evaluates ``d = 0`` only (``l`` taken as 1)."""
    if int(key_interval) < 1:
        raise ValueError(f"key_interval must be >= 1, got {key_interval}")
    interval = int(key_interval) if getattr(model, "has_flow", False) else 1
    k_cls = dataset.num_classes
    if len(model.class_names) != k_cls:
        raise ValueError(f"the model has {len(model.class_names)} classes ({', '.join(model.class_names)}), the "
                         f"data {k_cls} ({', '.join(dataset.class_list.names)})")
    snippets = dataset.snippets[:max_snippets] if max_snippets is not None else dataset.snippets
    acc = KeyDistanceConfusions(np.zeros((interval, k_cls, k_cls), np.int64),
                                np.zeros(interval, np.int64), np.zeros(interval, np.int64), interval,
                                bool(scale_map))
    model.eval()
    cache = _FrameCache(cfg, _model_device(model))
    bar = tqdm(total=len(snippets), desc=f"seg eval l={interval}", unit="snippet", file=sys.stderr, dynamic_ncols=True,
               disable=not progress)
    try:
        for snippet in snippets:
            gt = dataset.read_label(snippet)
            i = snippet.annotated
            data, hw, seg = cache.get(snippet, i)
            if gt.shape != hw:
                raise ValueError(f"{snippet.label}: label {gt.shape[1]}x{gt.shape[0]} but frame "
                                 f"{snippet.frames[i]} {hw[1]}x{hw[0]}")
            for d in range(interval):
                k = i - d
                if k < 0:  # before the snippet's first frame: no such key frame
                    acc.skipped[d] += 1
                    continue
                key_data = data if d == 0 else cache.get(snippet, k)[0]
                pred = predict_labels(model, key_data, data, seg, scale_map)[:hw[0], :hw[1]]
                acc.confusion[d] += confusion_matrix(pred, gt, k_cls)
                acc.frames[d] += 1
            acc.snippets += 1
            acc.frames_evaluated += 1
            bar.update(1)
    finally:
        bar.close()
    return acc


def _pct(v: float) -> float | None:
    """IoU in [0, 1] -> percent rounded to 4 decimals; NaN -> None (JSON has no NaN)."""
    return None if math.isnan(v) else round(100.0 * v, 4)


def summarize_key_distances(acc: KeyDistanceConfusions, dataset: CityscapesVideo) -> dict[str, Any]:
    """The JSON dict of :func:`evaluate_key_distances` from :func:`accumulate_key_distances`' counts."""
    eval_classes = tuple(dataset.eval_classes)
    names = dataset.class_list.names
    # a distance with no prediction (every key position before the snippets' start) has no mIoU
    by_distance = [iou_from_confusion(c, eval_classes)[1] if n else float("nan")
                   for c, n in zip(acc.confusion, acc.frames)]
    valid = [v for v in by_distance if not math.isnan(v)]
    per_class, pooled = iou_from_confusion(acc.confusion.sum(0), eval_classes)
    return {
        "mIoU": _pct(float(np.mean(valid)) if valid else float("nan")),
        "mIoU_by_distance": [_pct(v) for v in by_distance],
        "per_class_IoU": {names[c]: _pct(v) for c, v in per_class.items()},
        "pooled_mIoU": _pct(pooled),
        "key_interval": acc.key_interval,
        "scale_map": acc.scale_map,
        "snippets": acc.snippets,
        "frames_evaluated": acc.frames_evaluated,
        "frames_by_distance": acc.frames.tolist(),
        "key_positions_skipped": int(acc.skipped.sum()),
        "classes_evaluated": [names[c] for c in eval_classes],
    }


def evaluate_key_distances(model: torch.nn.Module, cfg: Config, dataset: CityscapesVideo, key_interval: int, *,
                           scale_map: bool = True, max_snippets: int | None = None,
                           progress: bool = True) -> dict[str, Any]:
    """mIoU of ``model`` on ``dataset`` at key interval ``key_interval`` by the DFF paper's protocol (module
    docstring; :func:`accumulate_key_distances`). Returns a JSON-serialisable dict, IoUs in percent (4 decimals,
    None where undefined):

    * ``mIoU``: the mean over the key distances (those with predictions) of each distance's mIoU;
    * ``mIoU_by_distance``: distance 0 .. l-1 (one entry for a per-frame model or ``l == 1``);
    * ``per_class_IoU`` (class name -> IoU) and ``pooled_mIoU``: from the confusion summed over the distances;
    * ``key_interval`` (the one evaluated: 1 for a per-frame model), ``scale_map``, ``snippets``,
      ``frames_evaluated`` (annotated frames), ``frames_by_distance`` (predictions per distance),
      ``key_positions_skipped`` (before a snippet's first frame) and ``classes_evaluated`` (names).
    """
    acc = accumulate_key_distances(model, cfg, dataset, key_interval, scale_map=scale_map,
                                   max_snippets=max_snippets, progress=progress)
    return summarize_key_distances(acc, dataset)


def run_seg_test_set(model: torch.nn.Module, cfg: Config, *, output_dir: str | None, key_interval: int | None = None,
                     scale_map: bool = True, device: str | torch.device | None = None, progress: bool = True,
                     max_snippets: int | None = None) -> dict[str, Any]:
    """:func:`evaluate_key_distances` on ``dataset.test_image_set`` (:func:`dff.dataset.factory.open_dataset`) at
    ``key_interval`` (default ``TEST.KEY_FRAME_INTERVAL``), the model moved to ``device`` (default: where it is).
    With ``output_dir`` the dict (plus ``image_set``) is also written atomically to
    ``output_dir/results/eval_<test_image_set>.json``, where the detection test writes its evaluation.
    Raises ``OSError`` (missing data, an unreadable frame) or ``ValueError`` (a bad label, another class list)
    naming what to fix."""
    set_name = image_set_name(cfg.dataset.test_image_set)
    dataset = open_dataset(cfg, str(cfg.dataset.test_image_set), verbose=False)
    if not isinstance(dataset, CityscapesVideo):
        raise ValueError(f"dataset.format {cfg.dataset.format!r}: a segmentation model is evaluated on label maps "
                         "(dataset.format: cityscapes)")
    check_class_list(tuple(model.class_names), dataset.class_list, "the model", f"the test set ({dataset!r})")
    if device is not None:
        model = model.to(device)
    interval = int(cfg.TEST.KEY_FRAME_INTERVAL if key_interval is None else key_interval)
    result = evaluate_key_distances(model, cfg, dataset, interval, scale_map=scale_map, max_snippets=max_snippets,
                                    progress=progress)
    result["image_set"] = str(cfg.dataset.test_image_set)
    if output_dir is not None:
        result["results_file"] = os.path.join(output_dir, "results", f"eval_{set_name}.json")
        atomic_write_text(result["results_file"], json.dumps(result, indent=1, allow_nan=False) + "\n")
    return result


def format_seg_result(result: dict[str, Any]) -> str:
    """One line: the mIoU (mean over the key distances), the mIoU per distance and the pooled mIoU."""
    def pct(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.2f}"
    return (f"mIoU {pct(result['mIoU'])} at key interval {result['key_interval']}"
            f"{'' if result['scale_map'] else ' (no scale map)'}; by key distance "
            f"[{', '.join(pct(v) for v in result['mIoU_by_distance'])}], pooled {pct(result['pooled_mIoU'])}; "
            f"{result['frames_evaluated']} annotated frames")
