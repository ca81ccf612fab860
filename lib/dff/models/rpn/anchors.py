"""RPN anchors, exactly as MXNet's ``contrib.Proposal`` / the repo's ``MultiProposal`` build them.

Base anchors are enumerated **ratio-major, scale-minor** (anchor index ``a = ratio_idx * len(scales) +
scale_idx``), which is also the channel order of the RPN heads (docs/design.md §1.4-1.5). Shifted anchors are
flattened in the order (y, x, a), ``a`` fastest: index ``h * W * A + w * A + a``.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

__all__ = ["generate_anchors", "shifted_anchors"]


def generate_anchors(base_size: int = 16, ratios: Sequence[float] = (0.5, 1, 2),
                     scales: Sequence[float] = (8, 16, 32)) -> np.ndarray:
    """Base anchors (A, 4) float32 ``[x1, y1, x2, y2]`` around the cell at (0, 0), A = len(ratios)*len(scales).

    Follows MXNet's ``GenerateAnchors`` in float32: base box ``(0, 0, base_size-1, base_size-1)``,
    ``size_ratio = floor(w*h / r)``, ``new_w = floor(sqrt(size_ratio) + 0.5) * s``,
    ``new_h = floor(new_w / s * r + 0.5) * s``, centred on the base box centre. MXNet rounds half up
    (``floor(v + 0.5)``) where py-faster-rcnn's ``generate_anchors`` uses ``np.round`` (half to even);
    the two agree for the default ratios/scales (all anchors of docs/design.md §1.5), not for every choice.
    """
    if base_size <= 0:
        raise ValueError(f"generate_anchors: base_size must be positive, got {base_size}")
    if len(ratios) == 0 or len(scales) == 0:
        raise ValueError("generate_anchors: ratios and scales must be non-empty")
    f = np.float32
    base = np.array([0, 0, base_size - 1, base_size - 1], dtype=f)
    # MXNet computes the width as base[2] - base[1] + 1 (x2 - y1): harmless because base is square
    w = base[2] - base[1] + f(1)
    h = base[3] - base[1] + f(1)
    x_ctr = base[0] + f(0.5) * (w - f(1))
    y_ctr = base[1] + f(0.5) * (h - f(1))
    size = w * h
    out = []
    for r in ratios:
        r = f(r)
        if not r > 0:
            raise ValueError(f"generate_anchors: ratios must be positive, got {float(r)}")
        size_ratio = np.floor(size / r)
        for s in scales:
            s = f(s)
            if not s > 0:
                raise ValueError(f"generate_anchors: scales must be positive, got {float(s)}")
            new_w = np.floor(np.sqrt(size_ratio) + f(0.5)) * s
            new_h = np.floor(new_w / s * r + f(0.5)) * s
            out.append([x_ctr - f(0.5) * (new_w - f(1)), y_ctr - f(0.5) * (new_h - f(1)),
                        x_ctr + f(0.5) * (new_w - f(1)), y_ctr + f(0.5) * (new_h - f(1))])
    return np.asarray(out, dtype=f)


def shifted_anchors(feat_h: int, feat_w: int, stride: int, base: np.ndarray | torch.Tensor, *,
                    device: torch.device | str | None = None,
                    dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """All anchors of a ``feat_h x feat_w`` map: (feat_h*feat_w*A, 4), row ``(y*feat_w + x)*A + a``.

    ``base`` is (A, 4) from :func:`generate_anchors`; cell (y, x) shifts it by
    ``(stride*x, stride*y, stride*x, stride*y)``. Integer-valued base anchors stay exact in float32.
    """
    if feat_h < 0 or feat_w < 0:
        raise ValueError(f"shifted_anchors: feature size must be non-negative, got {feat_h}x{feat_w}")
    base_t = torch.as_tensor(np.asarray(base) if not isinstance(base, torch.Tensor) else base,
                             dtype=dtype, device=device)
    if base_t.dim() != 2 or base_t.shape[1] != 4:
        raise ValueError(f"shifted_anchors: base must be (A, 4), got {tuple(base_t.shape)}")
    sy = torch.arange(feat_h, device=base_t.device, dtype=dtype) * stride
    sx = torch.arange(feat_w, device=base_t.device, dtype=dtype) * stride
    yy, xx = torch.meshgrid(sy, sx, indexing="ij")
    shifts = torch.stack([xx, yy, xx, yy], dim=-1).reshape(-1, 1, 4)  # (h*w, 1, 4)
    return (shifts + base_t.unsqueeze(0)).reshape(-1, 4)
