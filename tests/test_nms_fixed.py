"""dff.ops.nms_fixed: the compiled kernels against the pure-PyTorch fallback (built on torchvision's NMS).

``check_nms_fixed(device, dtype, case)`` compares the compiled kernel on ``device`` with the fallback
on the CPU; ``tests/test_ops_cuda.py`` runs the same cases on CUDA. Inputs are made on the CPU from
seeded generators, with clusters of overlapping boxes so that NMS has work to do.
"""
from __future__ import annotations

import pytest
import torch

from dff.ops import _ext, nms_fixed
from dff.ops.nms import nms_fixed_fallback

needs_compiled = pytest.mark.skipif(not _ext.compiled_available(), reason="compiled operators not built")


def _boxes(g: torch.Generator, n: int, clusters: int, dtype: torch.dtype) -> torch.Tensor:
    """n boxes around `clusters` centres in a 1000x600 image, sizes 8-200 px."""
    centre = torch.rand(clusters, 2, generator=g, dtype=torch.float64) * torch.tensor([1000.0, 600.0], dtype=torch.float64)
    pick = torch.randint(0, clusters, (n,), generator=g)
    ctr = centre[pick] + torch.randn(n, 2, generator=g, dtype=torch.float64) * 12
    wh = 8 + torch.rand(n, 2, generator=g, dtype=torch.float64) * 192
    boxes = torch.cat([ctr - wh / 2, ctr + wh / 2], dim=1)
    return boxes.round().to(dtype) if n % 2 else boxes.to(dtype)  # integer corners too: exact IoU ties


def make_case(case: str, dtype: torch.dtype) -> dict:
    """Keyword arguments of nms_fixed for one named case (CPU tensors)."""
    g = torch.Generator().manual_seed(sum(map(ord, case)))
    if case == "proposals":  # Proposal: 6000 sorted candidates, stop at 300
        return dict(boxes=_boxes(g, 6000, 400, dtype), iou_threshold=0.7, max_keep=300)
    if case == "all_keeps":  # no early stop; an odd count over several 64-box blocks
        return dict(boxes=_boxes(g, 777, 60, dtype), iou_threshold=0.5, max_keep=777)
    if case in ("detections", "detections_nocap"):  # 300 rois x 30 classes, valid = above threshold
        rois, classes = 300, 30
        roi_boxes = _boxes(g, rois, 40, dtype)
        scores = torch.rand(rois, classes, generator=g, dtype=torch.float64) ** 6
        scores[::7] = scores[::7].round(decimals=2)  # tied scores
        flat = scores.reshape(-1).to(dtype)
        order = torch.sort(flat, descending=True, stable=True).indices
        labels = order % classes + 1
        return dict(boxes=roi_boxes[order // classes], iou_threshold=0.3, max_keep=rois * classes,
                    valid=flat[order] > 1e-4, labels=labels, scores=flat[order],
                    cap=300 if case == "detections" else 0)
    if case == "small":  # fewer boxes than one block, some invalid, stop at 5
        boxes = _boxes(g, 37, 5, dtype)
        return dict(boxes=boxes, iou_threshold=0.4, max_keep=5, valid=torch.rand(37, generator=g) > 0.3)
    if case == "block_edges":  # exactly two blocks, labels 0/1
        boxes = _boxes(g, 128, 10, dtype)
        return dict(boxes=boxes, iou_threshold=0.6, max_keep=200, labels=torch.randint(0, 2, (128,), generator=g))
    if case == "all_invalid":
        return dict(boxes=_boxes(g, 70, 3, dtype), iou_threshold=0.5, max_keep=10, valid=torch.zeros(70, dtype=torch.bool))
    if case == "empty":
        return dict(boxes=torch.zeros(0, 4, dtype=dtype), iou_threshold=0.5, max_keep=4)
    raise KeyError(case)


CASES = ("proposals", "all_keeps", "detections", "detections_nocap", "small", "block_edges", "all_invalid", "empty")


def check_nms_fixed(device: str, dtype: torch.dtype, case: str) -> None:
    """The compiled kernel on ``device`` gives the fallback's keeps and count, exactly."""
    kw = make_case(case, dtype)
    ref_keep, ref_count = nms_fixed_fallback(**kw)
    dev_kw = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in kw.items()}
    keep, count = nms_fixed(**dev_kw, backend="compiled")
    assert keep.device.type == torch.device(device).type and keep.dtype == torch.long
    assert tuple(keep.shape) == (kw["max_keep"],) and tuple(count.shape) == (1,)
    n = int(ref_count)
    assert int(count) == n, f"{case}: {int(count)} keeps, the fallback {n}"
    assert torch.equal(keep.cpu(), ref_keep), f"{case}: first difference at {int((keep.cpu() != ref_keep).nonzero()[0])}"
    if case not in ("all_invalid", "empty"):
        assert n > 0


@needs_compiled
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", CASES)
def test_compiled_cpu_matches_fallback(case, dtype):
    check_nms_fixed("cpu", dtype, case)


def test_cases_exercise_the_options():
    """The cases really stop early, suppress, drop invalid boxes and cut at the cap (else the
    comparisons above would prove little)."""
    kw = make_case("proposals", torch.float32)
    _, count = nms_fixed_fallback(**kw)
    assert int(count) == 300  # stopped at max_keep
    full, full_count = nms_fixed_fallback(**{**kw, "max_keep": 6000})
    assert 300 < int(full_count) < 6000  # more keeps without the stop, and real suppression
    det = make_case("detections", torch.float64)
    _, capped = nms_fixed_fallback(**det)
    _, uncapped = nms_fixed_fallback(**{**det, "cap": 0})
    assert 300 <= int(capped) < int(uncapped) < int(det["valid"].sum())


@pytest.mark.parametrize("backend", ["fallback", pytest.param("compiled", marks=needs_compiled)])
def test_semantics_by_hand(backend):
    """IoU == threshold keeps (suppress only when >), +1 widths, labels, -1 padding, the cap's ties."""
    # A and B: +1 areas 100 and 200, intersection 100 -> IoU exactly 0.5
    boxes = torch.tensor([[0, 0, 9, 9], [0, 0, 9, 19], [100, 100, 109, 109]], dtype=torch.float64)
    keep, count = nms_fixed(boxes, 0.5, 5, backend=backend)
    assert keep.tolist() == [0, 1, 2, -1, -1] and count.tolist() == [3]
    keep, count = nms_fixed(boxes, 0.49, 5, backend=backend)
    assert keep.tolist() == [0, 2, -1, -1, -1] and count.tolist() == [2]
    # without the +1 widths IoU would be 81/171 < 0.49: a 0-based, inclusive-end box is meant
    keep, _ = nms_fixed(boxes, 0.49, 5, labels=torch.tensor([1, 2, 1]), backend=backend)
    assert keep.tolist()[:3] == [0, 1, 2]  # other label: no suppression
    # an invalid box neither is kept nor suppresses
    keep, count = nms_fixed(boxes, 0.49, 3, valid=torch.tensor([False, True, True]), backend=backend)
    assert keep.tolist() == [1, 2, -1] and count.tolist() == [2]
    # cap 3 over disjoint boxes with scores 0.9 0.8 0.7 0.7 0.6: the tie at the 3rd stays, 0.6 goes
    far = torch.tensor([[50.0 * i, 0, 50.0 * i + 9, 9] for i in range(5)])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.7, 0.6])
    keep, count = nms_fixed(far, 0.3, 5, scores=scores, cap=3, backend=backend)
    assert keep.tolist() == [0, 1, 2, 3, -1] and count.tolist() == [4]


def test_bad_arguments_are_named():
    boxes = torch.zeros(3, 4)
    with pytest.raises(ValueError, match="boxes must be an"):
        nms_fixed(torch.zeros(3, 5), 0.5, 2)
    with pytest.raises(ValueError, match="labels must be"):
        nms_fixed(boxes, 0.5, 2, labels=torch.zeros(3, dtype=torch.int32))
    with pytest.raises(ValueError, match="valid must be"):
        nms_fixed(boxes, 0.5, 2, valid=torch.ones(4, dtype=torch.bool))
    with pytest.raises(ValueError, match="cap > 0 needs scores"):
        nms_fixed(boxes, 0.5, 2, cap=1)
