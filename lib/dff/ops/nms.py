"""Greedy NMS with a fixed-size result and no host synchronisation.

``keep, count = nms_fixed(boxes, iou_threshold, max_keep)`` over boxes (n, 4) ``[x1, y1, x2, y2]`` that
are **already in priority order**: box ``i`` is kept iff it is valid and no earlier kept box with the
same label overlaps it by IoU > ``iou_threshold``, with the reference's +1 widths (the decisions of
:func:`dff.ops.boxes.nms_sorted`, which MXNet's Proposal and ``py_nms`` make). ``keep`` is
(max_keep,) int64: the kept rows in order, then -1; ``count`` (1,) int64 says how many.

Why a fixed size: ``torchvision.ops.nms`` returns as many indices as it keeps, so every call ends in a
device-to-host copy of that count, and nothing after it can be captured in a CUDA graph. Here the
count stays on the device, so the proposals' NMS and the detections' per-class NMS run inside the
frame's graph (:mod:`dff.engine.fastpath`).

Options:

* ``valid`` (n,) bool: invalid boxes are never kept and suppress nothing (e.g. scores below the
  detection threshold), so the input can keep a fixed size;
* ``labels`` (n,) int64: boxes only suppress boxes of their own label (all classes' NMS in one call);
* ``max_keep``: the scan stops after that many keeps (MXNet's Proposal stops at ``post_nms_top_n``);
* ``cap`` with ``scores`` (n,): the scan also stops at the first box that would be kept after ``cap``
  keeps whose score is below the ``cap``-th kept score. With boxes in descending score order that is
  the reference's ``max_per_image`` rule (keep every detection scoring at least the ``cap``-th
  highest, ties included), and the NMS never looks at the boxes below it.

The compiled kernels (CPU and CUDA, ``operator_cxx/nms*.cpp|cu``) and the pure-PyTorch fallback
give the same keeps (``tests/test_nms_fixed.py``); the fallback synchronises.
"""
from __future__ import annotations

import torch
from torch import Tensor

from dff.ops.backend import describe as _shape
from dff.ops.backend import resolve
from dff.ops.boxes import nms_sorted

_OP = "dff::nms_fixed"


def _check(boxes: Tensor, max_keep: int, valid: Tensor | None, labels: Tensor | None, scores: Tensor | None,
           cap: int) -> None:
    if not isinstance(boxes, Tensor) or boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(f"nms_fixed: boxes must be an (n, 4) tensor, got {_shape(boxes)}")
    if not boxes.is_floating_point():
        raise ValueError(f"nms_fixed: boxes must be floating point, got {boxes.dtype}")
    if max_keep < 0:
        raise ValueError(f"nms_fixed: max_keep must be >= 0, got {max_keep}")
    n = boxes.shape[0]
    for name, t, dtype in (("valid", valid, torch.bool), ("labels", labels, torch.long),
                           ("scores", scores, boxes.dtype)):
        if t is None:
            continue
        if not isinstance(t, Tensor) or tuple(t.shape) != (n,) or t.dtype != dtype or t.device != boxes.device:
            got = f"{_shape(t)} {getattr(t, 'dtype', '')} {getattr(t, 'device', '')}".strip()
            raise ValueError(f"nms_fixed: {name} must be ({n},) {dtype} on {boxes.device}, got {got}")
    if cap > 0 and scores is None:
        raise ValueError("nms_fixed: cap > 0 needs scores")


def nms_fixed(boxes: Tensor, iou_threshold: float, max_keep: int, *, valid: Tensor | None = None,
              labels: Tensor | None = None, scores: Tensor | None = None, cap: int = 0,
              backend: str | None = None) -> tuple[Tensor, Tensor]:
    """Greedy NMS of boxes in priority order -> (keep (max_keep,) int64 padded with -1, count (1,) int64).

    See the module docstring for ``valid``, ``labels``, ``scores`` and ``cap``. ``backend``: None (the
    default of :mod:`dff.ops.backend`), ``"auto"``, ``"compiled"`` or ``"fallback"``.
    """
    _check(boxes, max_keep, valid, labels, scores, cap)
    if resolve(backend, _OP, boxes) == "compiled":
        keep, count = torch.ops.dff.nms_fixed(boxes, valid, labels, scores, float(iou_threshold), int(max_keep),
                                              int(cap))
        return keep, count
    return nms_fixed_fallback(boxes, iou_threshold, max_keep, valid=valid, labels=labels, scores=scores, cap=cap)


def nms_fixed_fallback(boxes: Tensor, iou_threshold: float, max_keep: int, *, valid: Tensor | None = None,
                       labels: Tensor | None = None, scores: Tensor | None = None,
                       cap: int = 0) -> tuple[Tensor, Tensor]:
    """Pure-PyTorch :func:`nms_fixed`, built on :func:`dff.ops.boxes.nms_sorted` (one NMS per
    label). Greedy decisions depend only on earlier keeps, so the kernels' early stops are prefixes
    of the full keep list: cut here after the fact."""

    dev = boxes.device
    idx = torch.arange(boxes.shape[0], device=dev)
    if valid is not None:
        idx = idx[valid]
    if labels is None:
        keep = idx[nms_sorted(boxes[idx], iou_threshold, max_keep=None if cap > 0 else max_keep)]
    else:
        lab = labels[idx]
        parts = [idx[lab == v] for v in torch.unique(lab)]
        parts = [p[nms_sorted(boxes[p], iou_threshold)] for p in parts]
        keep = torch.sort(torch.cat(parts)).values if parts else idx
    if 0 < cap < keep.numel():
        s = scores[keep]
        below = torch.nonzero(s[cap:] < s[cap - 1]).flatten()
        if below.numel():
            keep = keep[:cap + int(below[0])]
    keep = keep[:max_keep]
    out = torch.full((max_keep,), -1, dtype=torch.long, device=dev)
    out[:keep.numel()] = keep
    return out, torch.tensor([keep.numel()], dtype=torch.long, device=dev)
