"""Light Flow ("Towards High Performance Video Object Detection for Mobiles", §3.3; docs/design.md §10.2).

An encoder-decoder flow network built from depthwise-separable convolutions, many times cheaper than
DFF's FlowNetS. As the paper: the two frames are taken at half the detector's input resolution; the encoder
halves the resolution at each stage; the decoder replaces deconvolution by nearest-neighbour upsampling
followed by a depthwise-separable convolution on the upsampled map concatenated with the encoder map of the
same size; flow is predicted at several resolutions down to ``output_stride`` of the half-resolution input (4, as
the paper: 1/8 of the detector's input) and the predictions, brought to that resolution, are averaged (one
output, trained end to end through it); the average is then brought to the feature's grid (stride 16).
Choices of this port (the paper gives no number for them at this input size): the encoder stops at 1/64 of the
image, every convolution is followed by LeakyReLU(0.1) without BatchNorm (as FlowNet; no batch statistics with
one image pair per step), the half-resolution frames are the mean of each 2x2 cell (strided slices: a fraction
of ``avg_pool2d``'s time on a CPU, where Light Flow's input was a third of its cost), and DFF's scale map is kept
(a 1x1 convolution on the stride-16 decoder map, initialised to the identity) so the warp is DFF's warp x scale.
``forward(cur, key) -> (flow, scale)`` is FlowNet's, so the engine, the trainer and the flow pre-training take
either. ``output_stride`` 8 is the network of the models made before 2026-12-08 (no stride-8 stage).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from dff.ops.layers import SeparableConv2d
from dff.ops.prepack import conv_leaky_relu

_INPUT_SCALE = 1.0 / 128.0  # the mean-subtracted 0..255 input brought to about +-1 (no BatchNorm follows)


class SeparableConv(SeparableConv2d):
    """:class:`~dff.models.layers.SeparableConv2d` with LeakyReLU(0.1) after each of its two convolutions."""

    def forward(self, x: Tensor) -> Tensor:
        # conv_leaky_relu: one oneDNN call with the activation fused inside the CPU fast path, the same values
        return conv_leaky_relu(self.pointwise, conv_leaky_relu(self.depthwise, x, 0.1), 0.1)


class LightFlow(nn.Module):
    """``forward(cur, key) -> (flow (N, 2, ceil(H/16), ceil(W/16)) in feature pixels, channel 0 = x,
    scale map (N, feat_dim, ceil(H/16), ceil(W/16)))``, as :class:`dff.models.flownet.FlowNet`.

    ``width`` multiplies every layer's channels (``network.FLOWNET_WIDTH``). Layer names: ``conv1``
    (full 3x3, stride 2), ``conv2``..``conv5b`` (separable), ``dec4``, ``dec3`` (separable, after
    upsampling; with ``output_stride`` 4 also ``dec2``), ``predict5``..``predict3`` (and ``predict2``; 3x3 to 2
    channels) and ``Convolution5_scale`` (FlowNet's name, so the scale map's identity initialisation and frozen
    bias are shared code).
    """

    def __init__(self, feat_dim: int, width: float = 1.0, output_stride: int = 8) -> None:
        super().__init__()
        if feat_dim < 1:
            raise ValueError(f"LightFlow: feat_dim must be positive, got {feat_dim}")
        if output_stride not in (4, 8):
            raise ValueError(f"network.LIGHT_FLOW_OUTPUT_STRIDE must be 4 or 8, got {output_stride}")
        c1, c2, c3, c4, c5 = (max(8, round(c * width)) for c in (32, 64, 128, 256, 512))
        self.feat_dim = feat_dim
        self.conv1 = nn.Conv2d(6, c1, 3, stride=2, padding=1)   # 1/4 of the image
        self.conv2 = SeparableConv(c1, c2, 2)                    # 1/8
        self.conv3 = SeparableConv(c2, c3, 2)                    # 1/16
        self.conv4a = SeparableConv(c3, c4, 2)                   # 1/32
        self.conv4b = SeparableConv(c4, c4)
        self.conv5a = SeparableConv(c4, c5, 2)                   # 1/64
        self.conv5b = SeparableConv(c5, c5)
        self.dec4 = SeparableConv(c5 + c4, c4)                   # 1/32
        self.dec3 = SeparableConv(c4 + c3, c3)                   # 1/16
        self.predict5 = nn.Conv2d(c5, 2, 3, padding=1)
        self.predict4 = nn.Conv2d(c4, 2, 3, padding=1)
        self.predict3 = nn.Conv2d(c3, 2, 3, padding=1)
        self.output_stride = output_stride
        if output_stride == 4:
            self.dec2 = SeparableConv(c3 + c2, c2)               # 1/8 (stride 4 of the half-resolution input)
            self.predict2 = nn.Conv2d(c2, 2, 3, padding=1)
        self.Convolution5_scale = nn.Conv2d(c3, feat_dim, 1)

    def forward(self, cur: Tensor, key: Tensor) -> tuple[Tensor, Tensor]:
        # scaled after the halving (the same numbers): a quarter of the multiplications
        x = half_resolution(torch.cat([cur, key], dim=1)) * _INPUT_SCALE
        e1 = conv_leaky_relu(self.conv1, x, 0.1)
        e2 = self.conv2(e1)
        e3 = self.conv3(e2)
        e4 = self.conv4b(self.conv4a(e3))
        e5 = self.conv5b(self.conv5a(e4))
        d4 = self.dec4(torch.cat([_up(e5, e4), e4], dim=1))
        d3 = self.dec3(torch.cat([_up(d4, e3), e3], dim=1))
        grid = d3.shape[-2:]  # the feature's: ceil(H/16) x ceil(W/16)
        if self.output_stride == 8:
            flow = (self.predict3(d3) + _bilinear(self.predict4(d4), grid) + _bilinear(self.predict5(e5), grid)) / 3.0
            return flow, self.Convolution5_scale(d3)
        d2 = self.dec2(torch.cat([_up(d3, e2), e2], dim=1))
        fine = d2.shape[-2:]
        # every prediction is in feature pixels, so the average and its resizing to the grid need no rescaling
        flow = (self.predict2(d2) + _bilinear(self.predict3(d3), fine) + _bilinear(self.predict4(d4), fine)
                + _bilinear(self.predict5(e5), fine)) / 4.0
        return _bilinear(flow, grid), self.Convolution5_scale(d3)

    def init_scale_identity(self, freeze_bias: bool = True) -> None:
        """The scale map starts as 1 (weight 0, bias 1; the bias is never trained), as FlowNet's."""
        self.Convolution5_scale.weight.data.zero_()
        self.Convolution5_scale.bias.data.fill_(1.0)
        if freeze_bias:
            self.Convolution5_scale.bias.requires_grad_(False)

    @torch.no_grad()
    def zero_flow_output(self) -> None:
        """The flow predictors to 0: the flow starts at 0 (training from scratch)."""
        for conv in (self.predict3, self.predict4, self.predict5, *((self.predict2,) if self.output_stride == 4 else ())):
            conv.weight.zero_()
            conv.bias.zero_()

    @staticmethod
    def frozen_parameter_names() -> list[str]:
        return ["Convolution5_scale.bias"]


def half_resolution(x: Tensor) -> Tensor:
    """(N, C, H, W) -> (N, C, ceil(H/2), ceil(W/2)): the mean of each 2x2 cell, an odd last row or column averaged
    with itself (``avg_pool2d(x, 2, 2, ceil_mode=True)``'s values, from four strided slices)."""
    # the odd edge repeated by a concatenation: F.pad's replicate mode takes several times as long on a CPU
    if x.shape[-2] % 2:
        x = torch.cat([x, x[..., -1:, :]], dim=-2)
    if x.shape[-1] % 2:
        x = torch.cat([x, x[..., -1:]], dim=-1)
    return (x[..., 0::2, 0::2] + x[..., 1::2, 0::2] + x[..., 0::2, 1::2] + x[..., 1::2, 1::2]) * 0.25


def _up(x: Tensor, like: Tensor) -> Tensor:
    """Nearest-neighbour upsampling to ``like``'s size (the paper's replacement of deconvolution)."""
    return F.interpolate(x, size=like.shape[-2:], mode="nearest")


def _bilinear(x: Tensor, size) -> Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)
