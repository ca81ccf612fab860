"""Flow warping of the key-frame feature, fused with DFF's scale map.

``out[n,c,y,x] = bilinear(feat[n,c], x + flow[n,0,y,x], y + flow[n,1,y,x]) * scale[n,c,y,x]``

This is the DFF non-key symbol's ``GridGenerator(warp)`` + ``BilinearSampler`` + ``* scale`` (fixtures
README section 4, docs/design.md §2.4): the key feature is sampled at ``p + flow(p)`` in feature pixels
(channel 0 = x), bilinearly over the 4 neighbours ``floor``/``floor+1``, and a neighbour outside
``[0, W-1] x [0, H-1]`` contributes zero. That equals
``grid_sample(feat, grid, align_corners=True, padding_mode='zeros')`` with
``grid = 2*(p + flow)/(size-1) - 1``, up to float rounding of the grid.

The position is formed as ``x + u`` in pixels, never normalised to [-1, 1] and back. That round trip
(MXNet's and grid_sample's) is not exact in float32: measured with grid_sample, a zero flow moves
~1/3 of the positions by an ulp, giving errors up to 8e-6 on a 38x63 N(0,1) map (4e-5 at 100x171),
and an integer flow then lands just left of the pixel, so the flow gradient there is taken from the
wrong cell. Both backends here form ``x + u`` directly, so a zero flow returns ``feat`` exactly and
an integer flow is an exact shift. At exactly integer positions the top-left neighbour is
``floor(x)`` with weight 1, which fixes the (one-sided) flow gradient as MXNet's does.

``scale``: None (plain warp), or any tensor broadcastable to feat's (N, C, H, W) (e.g. (N, C, H, W),
(N, 1, H, W), (1, C, 1, 1)); it is expanded as a view, never copied, and its gradient is reduced back
to its own shape.
"""
from __future__ import annotations

import torch

from dff.ops.backend import describe as _shape
from dff.ops.backend import resolve

_OP = "dff::warp_scale_forward"


def _check(feat: torch.Tensor, flow: torch.Tensor, scale: torch.Tensor | None) -> None:
    if not isinstance(feat, torch.Tensor) or feat.dim() != 4:
        raise ValueError(f"warp_scale: feat must be a (N, C, H, W) tensor, got {_shape(feat)}")
    if not feat.is_floating_point():
        raise ValueError(f"warp_scale: feat must be floating point, got {feat.dtype}")
    n, _c, h, w = feat.shape
    if not isinstance(flow, torch.Tensor) or tuple(flow.shape) != (n, 2, h, w):
        raise ValueError(f"warp_scale: flow must be (N, 2, H, W) = {(n, 2, h, w)}, got {_shape(flow)}")
    if flow.dtype != feat.dtype or flow.device != feat.device:
        raise ValueError(
            f"warp_scale: flow ({flow.dtype}, {flow.device}) must match feat ({feat.dtype}, {feat.device})"
        )
    if scale is not None:
        if not isinstance(scale, torch.Tensor):
            raise ValueError(f"warp_scale: scale must be a tensor or None, got {type(scale).__name__}")
        try:
            ok = torch.broadcast_shapes(scale.shape, feat.shape) == feat.shape
        except RuntimeError:
            ok = False
        if not ok:
            raise ValueError(
                f"warp_scale: scale of shape {tuple(scale.shape)} does not broadcast to feat's {tuple(feat.shape)}"
            )
        if scale.dtype != feat.dtype or scale.device != feat.device:
            raise ValueError(
                f"warp_scale: scale ({scale.dtype}, {scale.device}) must match feat ({feat.dtype}, {feat.device})"
            )


def warp_scale(
    feat: torch.Tensor,
    flow: torch.Tensor,
    scale: torch.Tensor | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """Warp ``feat`` by ``flow`` (bilinear, zero outside) and multiply by ``scale``.

    Args:
        feat: (N, C, H, W) key-frame feature.
        flow: (N, 2, H, W) displacement in feature pixels; channel 0 = x, 1 = y. Output pixel p samples
            feat at p + flow(p) (backward warping: current frame -> key frame).
        scale: None, or broadcastable to (N, C, H, W) (DFF: the (N, C, H, W) scale map).
        backend: None (default, see :mod:`dff.ops.backend`), "auto", "compiled" or "fallback".

    Returns:
        (N, C, H, W) tensor of feat's dtype (float16/bfloat16 inputs are warped in float32);
        differentiable w.r.t. feat, flow and scale.
    """
    _check(feat, flow, scale)
    if feat.dtype not in (torch.float32, torch.float64):
        # sampling positions in float16 would be off by up to 1/32 px at W = 63: warp in float32
        out = warp_scale(feat.float(), flow.float(), None if scale is None else scale.float(), backend)
        return out.to(feat.dtype)
    if scale is not None and tuple(scale.shape) != tuple(feat.shape):
        scale = scale.expand(feat.shape)
    if resolve(backend, _OP, feat) == "compiled":
        return torch.ops.dff.warp_scale_forward(feat, flow, scale)
    return warp_scale_fallback(feat, flow, scale)


def warp_scale_fallback(feat: torch.Tensor, flow: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
    """Pure-PyTorch :func:`warp_scale` (same arguments and semantics).

    A gather over the 4 neighbours with the compiled kernel's float expressions in the same order,
    so the forward equals the compiled one bit for bit (zero flow: exactly ``feat``). Autograd gives
    the gradients; w.r.t. flow it differentiates ``x + u - floor(x + u)``, which is MXNet's floor
    convention at integer positions. (``grid_sample`` is not used: its [-1, 1] round trip is inexact,
    see the module docstring.)
    """
    n, c, h, w = feat.shape
    dt, dev = feat.dtype, feat.device
    px = torch.arange(w, dtype=dt, device=dev) + flow[:, 0]  # (N, H, W)
    py = torch.arange(h, dtype=dt, device=dev)[:, None] + flow[:, 1]
    fx = torch.floor(px)
    fy = torch.floor(py)
    wx1 = px - fx
    wx0 = 1 - wx1
    wy1 = py - fy
    wy0 = 1 - wy1
    # clamp before the integer conversion (far-away or non-finite positions): still "outside"
    x0 = fx.clamp(-2, w + 1).long()
    y0 = fy.clamp(-2, h + 1).long()
    flat = feat.reshape(n, c, h * w)

    def tap(yy: torch.Tensor, xx: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        inside = (xx >= 0) & (xx < w) & (yy >= 0) & (yy < h)
        index = (yy.clamp(0, h - 1) * w + xx.clamp(0, w - 1)).reshape(n, 1, h * w).expand(n, c, h * w)
        v = torch.where(inside.reshape(n, 1, h * w), flat.gather(2, index), torch.zeros((), dtype=dt, device=dev))
        return weight.reshape(n, 1, h * w) * v

    out = tap(y0, x0, wy0 * wx0) + tap(y0, x0 + 1, wy0 * wx1) + tap(y0 + 1, x0, wy1 * wx0) + tap(y0 + 1, x0 + 1, wy1 * wx1)
    out = out.reshape(n, c, h, w)
    return out if scale is None else out * scale
