"""The operators of the task network in standard ONNX operators, with the reference's semantics.

:mod:`dff.ops` has two implementations of each operator, a compiled kernel and a pure-PyTorch
fallback that is also the oracle. Neither exports as it is: the kernels are custom operators, and the
PSROI fallback sums in float64 (TensorRT has no float64). This module gives each operator an export
form built from standard operators only, tested against the oracle (``tests/test_onnx_export.py``):

* :func:`psroi_pool_std` -- position-sensitive RoI pooling with the reference's rounding (C ``round``,
  floor/ceil bins, 0.1 minimum roi size, empty bin = 0), in float32 (the fallback's integral image is
  float64): an integral image (``MatMul``) of the map minus its per-channel mean and ``Gather``;
  :func:`psroi_conv_std` is the same after the 1x1 convolution that makes the maps (the export's head).
* :func:`warp_scale_std` -- the fused warp x scale: four ``Gather`` taps with the compiled kernel's float
  expressions (those of :func:`dff.ops.warp.warp_scale_fallback`), the same values, so a zero flow
  returns the key feature exactly and an integer flow is an exact shift. ONNX ``GridSample`` is not
  used: its [-1, 1] grid round trip is inexact (measured with onnxruntime 1.32 at 38x63: a zero flow
  changes 31 % of the values, by up to 9e-6).
* :func:`proposal_pick` -- the proposal NMS (greedy, +1 areas, ``IoU > thresh`` suppresses, stop after
  ``post`` keeps) and the cyclic padding ``keep[i % count]`` of MXNet's Proposal. Eagerly it is
  :func:`dff.ops.nms_fixed`; exported (:data:`TRANSLATIONS`) it is ONNX ``NonMaxSuppression`` with
  the same keeps, see :func:`proposal_pick_onnx` for why they are the same.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from dff.ops.nms import nms_fixed

try:  # optional (pip install -e .[deploy]): only the export translation needs it
    from onnxscript import FLOAT
    from onnxscript import opset18 as op
except ImportError:  # the eager operators still work; dff.deploy.export says what to install
    FLOAT = op = None

__all__ = ["round_half_away_std", "psroi_pool_std", "psroi_conv_std", "warp_scale_std", "proposal_pick",
           "proposal_pick_onnx", "onnx_iou_threshold", "sort_stable_onnx", "TRANSLATIONS"]


def round_half_away_std(v: Tensor) -> Tensor:
    """C ``round()`` (halves away from zero) from ``Floor``/``Abs``/``Sign``/``Where`` (ONNX has no
    ``Trunc``). Equal to :func:`dff.ops.psroi.round_half_away`: ``|v| - floor(|v|)`` is exact in
    floating point, so the half test is too."""
    a = v.abs()
    t = torch.floor(a)
    return torch.sign(v) * torch.where(a - t >= 0.5, t + 1, t)


def _bin_edges(bin_size: Tensor, start: Tensor, pooled: int, size: int) -> tuple[Tensor, Tensor]:
    """(R,) bin size and start -> (lo, hi) (R, P) int64 bin edges clipped to [0, size]; the reference's
    float expressions (``floor(p*bin + start)``, ``ceil((p+1)*bin + start)``) in its order."""
    p = torch.arange(pooled, dtype=bin_size.dtype, device=bin_size.device)
    lo = torch.floor(p[None, :] * bin_size[:, None] + start[:, None])
    hi = torch.ceil((p[None, :] + 1) * bin_size[:, None] + start[:, None])
    # clamp against a 0-d tensor: a symbolic size as a Python bound would specialise the export
    bound = torch.full((), size, dtype=lo.dtype, device=lo.device)
    return torch.minimum(lo.clamp(min=0), bound).long(), torch.minimum(hi.clamp(min=0), bound).long()


def _integral_rows(x: Tensor) -> Tensor:
    """(H, W, K) -> (H + 1, W + 1, K) with ``out[h, w] = x[:h, :w].sum((0, 1))``, as two matrix products with
    0/1 triangular matrices (``MatMul``; in onnxruntime faster than ``CumSum`` twice and a ``Pad``, and the
    zero first row and column come with it)."""
    h, w, k = x.shape
    rows = torch.arange(h + 1, device=x.device)
    cols = torch.arange(w + 1, device=x.device)
    down = (rows[:, None] > rows[None, :h]).to(x.dtype)  # (H+1, H): row k counts into the rows below it
    right = (cols[:, None] > cols[None, :w]).to(x.dtype)  # (W+1, W)
    t = torch.matmul(down, x.reshape(h, w * k)).reshape(h + 1, w, k)
    return torch.matmul(right, t)  # (W+1, W) @ (H+1, W, K) -> (H+1, W+1, K)


def _pool_cells(cells: Tensor, rois: Tensor, height: int, width: int, spatial_scale: float, group_size: int,
                pooled_size: int, output_dim: int) -> Tensor:
    """The pooling of :func:`psroi_pool_std` on score maps laid out as ``cells`` (H*W, G*G*D): row = map
    position, columns = (position-sensitive cell gh*G + gw, class). Returns (R, D, P, P).

    The maps are centred by their per-column mean and summed into an integral table of rows of D
    classes; a bin's D sums are then four row lookups (``Gather`` of whole rows, contiguous: a
    per-element gather from a table of this size misses the cache on every element) plus mean x area.
    """
    H, W, P, G, D = height, width, int(pooled_size), int(group_size), int(output_dim)
    gg = G * G
    dev, dt = cells.device, cells.dtype
    s = float(spatial_scale)
    start_w = round_half_away_std(rois[:, 1]) * s
    start_h = round_half_away_std(rois[:, 2]) * s
    end_w = (round_half_away_std(rois[:, 3]) + 1) * s
    end_h = (round_half_away_std(rois[:, 4]) + 1) * s
    roi_w = torch.clamp(end_w - start_w, min=0.1)  # max(., 0.1): degenerate/inverted rois
    roi_h = torch.clamp(end_h - start_h, min=0.1)
    hs, he = _bin_edges(roi_h / P, start_h, P, H)  # (R, P)
    ws, we = _bin_edges(roi_w / P, start_w, P, W)

    # the cell of bin (i, j): gh*G + gw with gh = floor(i*G/P); static
    g = [min(i * G // P, G - 1) for i in range(P)]
    cell = torch.tensor([[g[i] * G + g[j] for j in range(P)] for i in range(P)], dtype=torch.long, device=dev)

    mu = cells.mean(dim=0, keepdim=True)  # (1, gg*D)
    table = _integral_rows((cells - mu).reshape(H, W, gg * D)).reshape(-1, D)  # ((H+1)*(W+1)*gg, D)
    row0 = (hs * (W + 1))[:, :, None]  # (R, P, 1)
    row1 = (he * (W + 1))[:, :, None]
    col0 = ws[:, None, :]  # (R, 1, P)
    col1 = we[:, None, :]

    def at(position: Tensor) -> Tensor:  # (R, P, P) corner positions -> (R, P, P, D)
        index = position * gg + cell
        return table.index_select(0, index.reshape(-1)).reshape(*index.shape, D)

    box = at(row1 + col1) - at(row0 + col1) - at(row1 + col0) + at(row0 + col0)  # (R, P, P, D)
    area = ((he - hs)[:, :, None] * (we - ws)[:, None, :])[..., None]  # (R, P, P, 1)
    mean = box / area.clamp(min=1).to(dt) + mu.reshape(gg, D).index_select(0, cell.reshape(-1)).reshape(P, P, D)
    return torch.where(area > 0, mean, torch.zeros_like(mean)).permute(0, 3, 1, 2)


def psroi_pool_std(data: Tensor, rois: Tensor, spatial_scale: float, group_size: int, pooled_size: int,
                   output_dim: int) -> Tensor:
    """:func:`dff.ops.psroi_pool` of one image from standard operators (float32, exportable).

    Args:
        data: (1, D*G*G, H, W) float32 score maps (channel order: class, row, col).
        rois: (R, 5) ``[0, x1, y1, x2, y2]`` in input-image pixels (batch index 0: one image).
        spatial_scale, group_size (G), pooled_size (P), output_dim (D): as :func:`dff.ops.psroi_pool`.
    Returns:
        (R, D, P, P) float32: the reference's bins (its roi rounding and bin edges, computed with its
        float32 expressions) and means, within ~1e-6 relative of the float64 oracle.

    A bin's sum is four lookups in an integral image of the map minus its per-channel mean, plus mean
    x area. Centring is what makes float32 enough: an integral image of the raw map holds sums of up to
    H*W values of the map's mean and loses ~1e-3 of a bin's value to the difference of four such sums;
    centred, the sums grow like a random walk. The head of an export uses :func:`psroi_conv_std`, which
    makes the maps in the layout the lookups want instead of transposing them.
    """
    _, _, H, W = data.shape
    G, D = int(group_size) or int(pooled_size), int(output_dim)
    cells = data.reshape(D, G * G, H * W).permute(2, 1, 0).reshape(H * W, G * G * D)
    return _pool_cells(cells, rois, H, W, spatial_scale, G, pooled_size, D)


def psroi_conv_std(x: Tensor, weight: Tensor, bias: Tensor, rois: Tensor, spatial_scale: float, group_size: int,
                   pooled_size: int, output_dim: int) -> Tensor:
    """``psroi_pool_std(conv1x1(x, weight, bias), rois, ...)`` with the 1x1 convolution as a matrix product
    whose output columns are reordered (position-sensitive cell, class): the maps come out with each
    cell's D classes side by side, the layout :func:`psroi_pool_std` otherwise transposes to.

    x (1, Cin, H, W), weight (D*G*G, Cin, 1, 1), bias (D*G*G,), rois (R, 5) -> (R, D, P, P). The matrix
    product sums in another order than a convolution kernel: the maps agree to float32 rounding.
    """
    _, cin, H, W = x.shape
    G, D = int(group_size) or int(pooled_size), int(output_dim)
    gg = G * G
    w = weight.reshape(D, gg, cin).transpose(0, 1).reshape(gg * D, cin)
    b = bias.reshape(D, gg).t().reshape(gg * D)
    cells = torch.matmul(x.reshape(cin, H * W).t(), w.t()) + b  # (H*W, gg*D)
    return _pool_cells(cells, rois, H, W, spatial_scale, G, pooled_size, D)


def warp_scale_std(feat: Tensor, flow: Tensor, scale: Tensor | None = None) -> Tensor:
    """:func:`dff.ops.warp_scale` of one image from standard operators, equal to the fallback value for value.

    :func:`dff.ops.warp.warp_scale_fallback`'s float expressions in its order (so a zero flow returns
    ``feat`` and an integer flow is an exact shift), with two changes that make it ~2.5x faster in
    onnxruntime (measured at 1024x38x50): the four taps are gathered as rows of the (h*w, C) transposed feature
    (a ``Gather`` of whole rows instead of ``GatherElements`` with a (1, C, h*w) index), and a tap outside
    the map is its (clamped) value times a zero weight instead of a zero: ``v * (w * 0)`` is ``+-0``
    for a finite ``v``, and ``x + -0 == x``, so every value equals the fallback's for a finite feature.
    feat (1, C, h, w), flow (1, 2, h, w), scale (1, C, h, w) or None -> (1, C, h, w).
    """
    n, c, h, w = feat.shape
    dt, dev = feat.dtype, feat.device
    px = torch.arange(w, dtype=dt, device=dev) + flow[:, 0]  # (1, h, w)
    py = torch.arange(h, dtype=dt, device=dev)[:, None] + flow[:, 1]
    fx = torch.floor(px)
    fy = torch.floor(py)
    wx1 = px - fx
    wx0 = 1 - wx1
    wy1 = py - fy
    wy0 = 1 - wy1
    # a 0-d tensor bound: a symbolic size as a Python bound would specialise the export
    x0 = torch.minimum(fx.clamp(min=-2), torch.full((), w + 1, dtype=dt, device=dev)).long()
    y0 = torch.minimum(fy.clamp(min=-2), torch.full((), h + 1, dtype=dt, device=dev)).long()
    rows = feat.reshape(c, h * w).t()  # (h*w, C)
    last_x = torch.full((), w - 1, dtype=torch.long, device=dev)
    last_y = torch.full((), h - 1, dtype=torch.long, device=dev)

    def tap(yy: Tensor, xx: Tensor, weight: Tensor) -> Tensor:
        inside = ((xx >= 0) & (xx < w) & (yy >= 0) & (yy < h)).reshape(h * w, 1)
        index = (torch.minimum(yy.clamp(min=0), last_y) * w + torch.minimum(xx.clamp(min=0), last_x)).reshape(-1)
        return rows.index_select(0, index) * (weight.reshape(h * w, 1) * inside.to(dt))

    out = (tap(y0, x0, wy0 * wx0) + tap(y0, x0 + 1, wy0 * wx1) + tap(y0 + 1, x0, wy1 * wx0)
           + tap(y0 + 1, x0 + 1, wy1 * wx1))  # the fallback's order of the sum
    out = out.t().reshape(n, c, h, w)
    return out if scale is None else out * scale


def onnx_iou_threshold(thresh: float) -> float:
    """The float32 threshold ``t32`` with ``iou > t32`` exactly when ``double(iou) > thresh`` for every
    float32 ``iou``: the largest float32 below or at ``thresh`` (ONNX takes a float32 threshold; the
    compiled NMS compares in double)."""
    t = np.float32(thresh)
    if float(t) > float(thresh):
        t = np.nextafter(t, np.float32(-np.inf))
    return float(t)


@torch.library.custom_op("dff_deploy::proposal_pick", mutates_args=())
def proposal_pick(boxes: Tensor, iou_threshold: float, post: int) -> Tensor:
    """Rows of ``boxes`` (n, 4) float32, in priority order, that the proposal layer outputs: the greedy
    NMS keeps (+1 areas, ``IoU > iou_threshold`` suppresses, at most ``post``), cycled to ``post`` rows
    (``keep[i % count]``). Returns (post,) int64.

    Eagerly :func:`dff.ops.nms_fixed` (what :func:`dff.models.rpn.proposal.proposal_select` runs);
    exported, :func:`proposal_pick_onnx`.
    """
    keep, count = nms_fixed(boxes, iou_threshold, min(post, boxes.shape[0]))
    return keep[torch.arange(post, device=boxes.device) % count.clamp(min=1)]


@proposal_pick.register_fake
def _proposal_pick_fake(boxes: Tensor, iou_threshold: float, post: int) -> Tensor:
    return boxes.new_empty((post,), dtype=torch.long)


def proposal_pick_onnx(boxes, iou_threshold: float, post: int):
    """:func:`proposal_pick` in ONNX: ``NonMaxSuppression`` on ``[x1, y1, x2 + 1, y2 + 1]`` with the
    scores ``-arange(n)``, then ``Gather`` of ``keep[arange(post) % max(count, 1)]``.

    Why these are our keeps: onnxruntime's ``SuppressByIOU`` computes, in float32, intersection
    ``w * h``, ``union = area1 + area2 - inter`` and ``inter / union > threshold`` -- the expressions
    of the compiled kernel (``nms_suppresses`` in ``operator_cxx/dff_ops.h``) on boxes it widens by
    ``+ 1.0f`` the same way (the [y1, x1] order ONNX names swaps the two axes, which a product and a
    sum do not see). Its queue orders by score alone (ties in any order), so the scores are the
    strictly decreasing ranks ``-i`` (exact in float32 below 2^24 boxes), which is the input order.
    It stops at ``post`` keeps like the kernel. The threshold is :func:`onnx_iou_threshold`: ONNX
    compares with a float32 threshold, the kernel with a double one.
    """
    n = op.Squeeze(op.Shape(boxes, start=0, end=1))
    widened = op.Add(boxes, op.Constant(value_floats=[0.0, 0.0, 1.0, 1.0]))
    rank = op.Neg(op.Cast(op.Range(op.Constant(value_int=0), n, op.Constant(value_int=1)), to=FLOAT.dtype))
    selected = op.NonMaxSuppression(op.Unsqueeze(widened, [0]), op.Unsqueeze(rank, [0, 1]),
                                    op.Constant(value_int=int(post)),
                                    op.Constant(value_float=onnx_iou_threshold(iou_threshold)))
    keep = op.Reshape(op.Slice(selected, [2], [3], [1]), [-1])  # (count,) box indices, in keep order
    count = op.Max(op.Shape(keep), op.Constant(value_ints=[1]))
    slot = op.Range(op.Constant(value_int=0), op.Constant(value_int=int(post)), op.Constant(value_int=1))
    return op.Gather(keep, op.Mod(slot, count))


def sort_stable_onnx(self, stable: bool | None = None, dim: int = -1, descending: bool = False):
    """``torch.sort(x, stable=True)`` (which the exporter has no translation for) as ONNX ``TopK`` over the
    whole axis: ONNX specifies that ``TopK`` puts equal values in index order, i.e. a stable sort."""
    k = op.Shape(self, start=dim, end=dim + 1 if dim != -1 else None)
    values, indices = op.TopK(self, k, axis=dim, largest=1 if descending else 0, sorted=1)
    return values, indices


# torch.onnx.export(..., custom_translation_table=TRANSLATIONS)
TRANSLATIONS = {torch.ops.dff_deploy.proposal_pick.default: proposal_pick_onnx,
                torch.ops.aten.sort.stable: sort_stable_onnx}
