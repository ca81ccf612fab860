"""Light Flow ("Towards High Performance Video Object Detection for Mobiles", §3.3; docs/design.md §10.2).

An encoder-decoder flow network built from depthwise-separable convolutions, many times cheaper than
DFF's FlowNetS. As the paper: the two frames are concatenated and taken at half resolution; the encoder
halves the resolution at each stage; the decoder replaces deconvolution by nearest-neighbour upsampling
followed by a depthwise-separable convolution on the upsampled map concatenated with the encoder map of the
same size; flow is predicted at several resolutions and the predictions, brought to one resolution, are
averaged (one output, trained end to end through it). Choices of this port (the paper gives no
number for them at this input size): the encoder stops at 1/64 of the image and the decoder at the feature
stride (1/16), the predictions are the three of 1/64, 1/32 and 1/16, every convolution is followed by
LeakyReLU(0.1) without BatchNorm (as FlowNet; no batch statistics with one image pair per step), and DFF's
scale map is kept (a 1x1 convolution on the last decoder map, initialised to the identity) so the warp is
DFF's warp x scale. ``forward(cur, key) -> (flow, scale)`` is FlowNet's, so the engine, the trainer and the
flow pre-training take either.
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
    upsampling), ``predict5``, ``predict4``, ``predict3`` (3x3 to 2 channels) and ``Convolution5_scale``
    (FlowNet's name, so the scale map's identity initialisation and frozen bias are shared code).
    """

    def __init__(self, feat_dim: int, width: float = 1.0) -> None:
        super().__init__()
        if feat_dim < 1:
            raise ValueError(f"LightFlow: feat_dim must be positive, got {feat_dim}")
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
        self.Convolution5_scale = nn.Conv2d(c3, feat_dim, 1)

    def forward(self, cur: Tensor, key: Tensor) -> tuple[Tensor, Tensor]:
        # scaled after the pooling (the same numbers): a quarter of the multiplications
        x = F.avg_pool2d(torch.cat([cur, key], dim=1), 2, 2, ceil_mode=True) * _INPUT_SCALE
        e1 = conv_leaky_relu(self.conv1, x, 0.1)
        e3 = self.conv3(self.conv2(e1))
        e4 = self.conv4b(self.conv4a(e3))
        e5 = self.conv5b(self.conv5a(e4))
        d4 = self.dec4(torch.cat([_up(e5, e4), e4], dim=1))
        d3 = self.dec3(torch.cat([_up(d4, e3), e3], dim=1))
        size = d3.shape[-2:]
        flow = (self.predict3(d3) + _bilinear(self.predict4(d4), size) + _bilinear(self.predict5(e5), size)) / 3.0
        return flow, self.Convolution5_scale(d3)

    def init_scale_identity(self, freeze_bias: bool = True) -> None:
        """The scale map starts as 1 (weight 0, bias 1; the bias is never trained), as FlowNet's."""
        self.Convolution5_scale.weight.data.zero_()
        self.Convolution5_scale.bias.data.fill_(1.0)
        if freeze_bias:
            self.Convolution5_scale.bias.requires_grad_(False)

    @torch.no_grad()
    def zero_flow_output(self) -> None:
        """The three flow predictors to 0: the flow starts at 0 (training from scratch)."""
        for conv in (self.predict3, self.predict4, self.predict5):
            conv.weight.zero_()
            conv.bias.zero_()

    @staticmethod
    def frozen_parameter_names() -> list[str]:
        return ["Convolution5_scale.bias"]


def _up(x: Tensor, like: Tensor) -> Tensor:
    """Nearest-neighbour upsampling to ``like``'s size (the paper's replacement of deconvolution)."""
    return F.interpolate(x, size=like.shape[-2:], mode="nearest")


def _bilinear(x: Tensor, size) -> Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)
