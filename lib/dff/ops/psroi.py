"""Position-sensitive RoI pooling (R-FCN), exactly as the original ``psroi_pooling.cu``.

Why not ``torchvision.ops.ps_roi_pool``: it pools a different box. torchvision (``ps_roi_pool_kernel``)
scales the raw coordinates, ``start = x1 * spatial_scale`` and ``end = x2 * spatial_scale``, with no
rounding and no "+1", then ``size = max(end - start, 0.1)`` and a bin is
``[floor(p*bin + start), ceil((p+1)*bin + start))``. The reference first rounds the image coordinates
half away from zero and includes the last pixel: ``start = round(x1)*s``, ``end = (round(x2)+1)*s``.
With s = 1/16 a roi x1=0, x2=159 covers feature columns [0, 10) in the reference but [0, 9.94) in
torchvision, so every bin edge moves (bin 160/16/7 = 1.43 vs 1.42 px) and different pixels are averaged.
torchvision also has no float64 CPU/CUDA kernels with the reference's empty-bin and channel rules
documented, so it cannot be made to reproduce the MXNet numbers.

Semantics (fixtures README section 4, docs/design.md §3.1): for roi n = [b, x1, y1, x2, y2] in image pixels,
``start = round(x1)*s``, ``end = (round(x2)+1)*s`` (C ``round``: halves away from zero),
``size = max(end - start, 0.1)``, ``bin = size/P``, bin (i, j) covers rows
``[floor(i*bin_h + start_h), ceil((i+1)*bin_h + start_h))`` (likewise columns) clipped to the map;
output channel c of bin (i, j) averages data channel ``(c*G + gh)*G + gw`` (gh = floor(i*G/P)) of image
b over the bin; an empty bin gives 0. No gradient flows to rois.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from dff.ops.backend import describe as _shape
from dff.ops.backend import resolve

_OP = "dff::psroi_pool_forward"


def round_half_away(v: torch.Tensor) -> torch.Tensor:
    """C ``round()``: halves away from zero (``torch.round`` rounds half to even).

    ``trunc(v) + sign(v)`` when ``|v - trunc(v)| >= 0.5``; exact in floating point (``floor(v + 0.5)``
    is not: 0.49999997 + 0.5 rounds up to 1.0 in float32).
    """
    t = torch.trunc(v)
    return torch.where((v - t).abs() >= 0.5, t + torch.sign(v), t)


def _check(data: torch.Tensor, rois: torch.Tensor, group_size: int, pooled_size: int, output_dim: int) -> None:
    if not isinstance(data, torch.Tensor) or data.dim() != 4:
        raise ValueError(f"psroi_pool: data must be a (N, C, H, W) tensor, got {_shape(data)}")
    if not data.is_floating_point():
        raise ValueError(f"psroi_pool: data must be floating point, got {data.dtype}")
    if not isinstance(rois, torch.Tensor) or rois.dim() != 2 or rois.shape[1] != 5:
        raise ValueError(f"psroi_pool: rois must be (R, 5) [batch, x1, y1, x2, y2], got {_shape(rois)}")
    if rois.device != data.device:
        raise ValueError(f"psroi_pool: rois are on {rois.device} but data on {data.device}")
    if min(group_size, pooled_size, output_dim) < 1:
        raise ValueError(
            f"psroi_pool: group_size, pooled_size, output_dim must be >= 1, got {group_size}, {pooled_size}, {output_dim}"
        )
    if data.shape[1] != output_dim * group_size * group_size:
        raise ValueError(
            f"psroi_pool: data has {data.shape[1]} channels, expected output_dim*group_size^2 = "
            f"{output_dim}*{group_size}^2 = {output_dim * group_size * group_size}"
        )


def psroi_pool(
    data: torch.Tensor,
    rois: torch.Tensor,
    spatial_scale: float,
    group_size: int,
    pooled_size: int,
    output_dim: int,
    backend: str | None = None,
) -> torch.Tensor:
    """Position-sensitive RoI average pooling.

    Args:
        data: (N, C, H, W) score maps, C = output_dim * group_size**2 (channel order: class, row, col).
        rois: (R, 5) ``[batch_index, x1, y1, x2, y2]`` in input-image pixels (cast to data's dtype;
            float16/bfloat16 data are pooled in float32).
        spatial_scale: feature-map / image scale (1/16 for R-FCN).
        group_size: G, the position-sensitive grid (0 means pooled_size, as in MXNet).
        pooled_size: P, output bins per side.
        output_dim: D, output channels.
        backend: None (default, see :mod:`dff.ops.backend`), "auto", "compiled" or "fallback".

    Returns:
        (R, D, P, P) tensor; differentiable w.r.t. ``data``.
    """
    group_size = int(group_size) or int(pooled_size)
    pooled_size, output_dim = int(pooled_size), int(output_dim)
    _check(data, rois, group_size, pooled_size, output_dim)
    if data.dtype not in (torch.float32, torch.float64):
        # half precision cannot even hold the roi coordinates (float16 steps by 0.5 px above 512): pool in
        # float32 and return data's dtype
        out = psroi_pool(data.float(), rois.float(), spatial_scale, group_size, pooled_size, output_dim, backend)
        return out.to(data.dtype)
    rois = rois.to(dtype=data.dtype)  # the reference has one dtype for data and rois
    if resolve(backend, _OP, data) == "compiled":
        out, _mapping = torch.ops.dff.psroi_pool_forward(
            data, rois, float(spatial_scale), group_size, pooled_size, output_dim
        )
        return out
    return psroi_pool_fallback(data, rois, spatial_scale, group_size, pooled_size, output_dim)


def psroi_pool_fallback(
    data: torch.Tensor,
    rois: torch.Tensor,
    spatial_scale: float,
    group_size: int,
    pooled_size: int,
    output_dim: int,
) -> torch.Tensor:
    """Pure-PyTorch :func:`psroi_pool` (same arguments, shapes and semantics).

    The bin edges are computed with the reference's float expressions in data's dtype, so they are
    the same bins. Bin sums come from a float64 integral image (summed-area table): four lookups per
    bin, vectorised over rois, channels and bins. Where the reference's float32 bin sum is exact (the
    fixtures: data k/64) the float64 table sum is too, and float64 sum/area rounded once to float32
    equals the float32 division (53 >= 2*24 + 2 bits), so the forward is bit-exact there; otherwise
    it is within float32 rounding of the reference's sequential sum. Autograd gives the data gradient
    (through the table, in float64).
    """
    N, C, H, W = data.shape
    R, P, G, D = rois.shape[0], pooled_size, group_size, output_dim
    if R == 0:
        return data.new_zeros((0, D, P, P))
    batch = rois[:, 0]
    # the reference truncates the float batch index to int; it must name an image of the batch
    # (checked eagerly only: the check reads the data, which torch.compile cannot trace in one graph)
    if not torch.compiler.is_compiling():
        bad = ~torch.isfinite(batch) | (batch.trunc() < 0) | (batch.trunc() >= N)
        if bool(bad.any()):
            r = int(bad.nonzero()[0, 0])
            raise ValueError(f"psroi_pool: rois[{r}, 0] = {float(batch[r])} is not a batch index in [0, {N})")
    b = batch.long()

    # roi geometry: the reference's expressions and operation order, in data's dtype
    s = float(spatial_scale)
    start_w = round_half_away(rois[:, 1]) * s
    start_h = round_half_away(rois[:, 2]) * s
    end_w = (round_half_away(rois[:, 3]) + 1) * s
    end_h = (round_half_away(rois[:, 4]) + 1) * s
    roi_w = torch.clamp(end_w - start_w, min=0.1)  # max(., 0.1): degenerate/inverted rois
    roi_h = torch.clamp(end_h - start_h, min=0.1)
    bin_w = roi_w / P
    bin_h = roi_h / P
    p = torch.arange(P, device=data.device, dtype=data.dtype)

    def edges(bin_size: torch.Tensor, start: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        lo = torch.floor(p[None, :] * bin_size[:, None] + start[:, None])
        hi = torch.ceil((p[None, :] + 1) * bin_size[:, None] + start[:, None])
        return lo.clamp(0, size).long(), hi.clamp(0, size).long()  # (R, P) each

    hs, he = edges(bin_h, start_h, H)
    ws, we = edges(bin_w, start_w, W)

    # source channel of (output channel c, bin i, j): (c*G + gh)*G + gw, gh = floor(i*G/P)
    g = (torch.arange(P, device=data.device) * G // P).clamp(max=G - 1)
    chan = (torch.arange(D, device=data.device)[:, None, None] * G + g[None, :, None]) * G + g[None, None, :]

    # integral image: table[n, c, h, w] = sum of data[n, c, :h, :w]
    acc = torch.float64
    table = F.pad(data.to(acc).cumsum(-1).cumsum(-2), (1, 0, 1, 0)).reshape(-1)
    plane = (b[:, None, None, None] * C + chan[None]) * ((H + 1) * (W + 1))  # (R, D, P, P)
    # corner offsets inside a plane are per (roi, bin) only: (R, 1, P, P), cheap to form
    row0 = (hs * (W + 1))[:, None, :, None]
    row1 = (he * (W + 1))[:, None, :, None]
    col0 = ws[:, None, None, :]
    col1 = we[:, None, None, :]
    box = (
        table[plane + (row1 + col1)]
        - table[plane + (row0 + col1)]
        - table[plane + (row1 + col0)]
        + table[plane + (row0 + col0)]
    )

    area = ((he - hs)[:, :, None] * (we - ws)[:, None, :])[:, None]  # (R, 1, P, P)
    empty = area <= 0
    # clamp keeps the (unused) division finite, so no NaN reaches the gradient of empty bins
    mean = box / area.clamp(min=1).to(acc)
    return torch.where(empty, torch.zeros((), dtype=acc, device=data.device), mean).to(data.dtype)
