"""FlowNet ("FlowNet Simple", DFF-modified) as Deep Feature Flow uses it (docs/design.md §2.1-2.3, 4.5).

Given the current frame and the key frame (both the preprocessed network input: RGB, mean-subtracted,
*not* divided by 255), the network predicts

* the **flow** ``(N, 2, h, w)`` in feature-map pixels (channel 0 = x, channel 1 = y) that maps a
  location p of the current frame to p + flow(p) in the key frame, and
* the **scale map** ``(N, feat_dim, h, w)`` that multiplies the warped key feature,

where ``h, w = ceil(H/16), ceil(W/16)`` is exactly the size of the ResNet feature map, for any H, W.

Submodules carry the MXNet layer names, so the MXNet parameter ``<layer>_weight`` is the state_dict
key ``<layer>.weight`` (``flownet.<layer>.weight`` inside the DFF model). The intermediate flows
``Convolution1..4`` (flow6..flow3) only feed the upsampling path; only ``Convolution5`` is returned.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from dff.ops.prepack import conv_leaky_relu

# FlowNetS predicts flow/20 in pixels of its own input, which is the half-resolution image, and the
# features have stride 16: 20 * 2 / 16 (docs/design.md §2.2).
FLOW_SCALE = 2.5
LEAKY_SLOPE = 0.1
Q_HIDDEN = 32  # channels of the Q head's hidden layer (THP)
AVG_POOL_MODES = ("valid", "full")


def _conv(cin: int, cout: int, k: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride=stride, padding=(k - 1) // 2, bias=True)


def _deconv(cin: int, cout: int) -> nn.ConvTranspose2d:
    # MXNet: Deconvolution(k4, s2, p0) -> (2n+2) rows, then Crop(offset=(1,1)) to the skip size T.
    # padding=1 drops exactly the first and last of those 2n+2 rows (2n remain) and every kept element
    # is the same sum of the same products, so cutting it to T <= 2n rows (T is 2n or 2n-1, as the
    # encoder halves with ceil) is the crop, minus the border nobody uses. PyTorch's kernels may sum
    # in another order for the two paddings (relative ~1e-6 apart); both are equally close to the fixtures.
    return nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1, bias=True)


def _crop_to(x: Tensor, like: Tensor) -> Tensor:
    """``x[:, :, :H, :W]`` with (H, W) the size of ``like``: the MXNet Crop at offset (1,1) (see _deconv).
    Unconditional (a full slice is a view of the same tensor), so that an ONNX export traces one graph for
    every input size."""
    h, w = like.shape[-2:]
    return x[:, :, :h, :w]


def _lrelu(x: Tensor) -> Tensor:
    # in place: every input of this is a fresh conv output nobody else holds
    return F.leaky_relu(x, LEAKY_SLOPE, inplace=True)


def _conv_lrelu(conv: nn.Module, x: Tensor) -> Tensor:
    """``_lrelu(conv(x))``, fused into one oneDNN call on the CPU fast path (dff.ops.prepack)."""
    return conv_leaky_relu(conv, x, LEAKY_SLOPE)


class FlowNet(nn.Module):
    """DFF's FlowNetS: ``forward(cur, key) -> (flow, scale)``; the one forward that the engine runs and the ONNX
    export traces (``dff.deploy.graphs.FlowStage``).

    Args:
        feat_dim: channels of the scale map (``DFF_FEAT_DIM``, 1024 in every reference config).
        avg_pool: divisor of the partial last window of the two 2x2/2 ceil-mode average poolings
            (``resize_data``, ``resize_concat5``) when the pooled size is odd (docs/design.md §3.4, AMBIGUOUS).
            ``"valid"`` divides by the number of valid elements, as MXNet's own (CPU) kernel does and as
            the MXNet fixtures were made (tests/test_flownet.py proves it from ``resize_data_output``);
            ``"full"`` divides by 4, as cuDNN's count-include-padding average does on the GPU path.
            Even sizes give identical results with both.
        width: channel multiplier of every layer (1.0 = the reference; smaller for the tiny CPU
            models, whose embedded checkpoints must stay small). Layer names do not change.
        q_output: also predict the feature temporal consistency map Q (:meth:`forward_q`), a third
            1x1 head on the last concatenation beside the flow and the scale map (THP, docs/design.md §9).
    """

    def __init__(self, feat_dim: int = 1024, avg_pool: str = "valid", width: float = 1.0,
                 q_output: bool = False) -> None:
        super().__init__()
        if avg_pool not in AVG_POOL_MODES:
            raise ValueError(f"FlowNet: avg_pool must be one of {AVG_POOL_MODES}, got {avg_pool!r}")
        if feat_dim < 1:
            raise ValueError(f"FlowNet: feat_dim must be positive, got {feat_dim}")
        self.feat_dim = feat_dim
        self.avg_pool = avg_pool
        self.width = width
        c1, c2, c3, c4, c6 = (max(1, round(c * width)) for c in (64, 128, 256, 512, 1024))
        d5, d4, d3, d2 = (max(1, round(c * width)) for c in (512, 256, 128, 64))
        # encoder; input channels 0-2 = current frame, 3-5 = key frame (docs/design.md §4.2)
        self.flow_conv1 = _conv(6, c1, 7, 2)
        self.conv2 = _conv(c1, c2, 5, 2)
        self.conv3 = _conv(c2, c3, 5, 2)
        self.conv3_1 = _conv(c3, c3, 3)
        self.conv4 = _conv(c3, c4, 3, 2)
        self.conv4_1 = _conv(c4, c4, 3)
        self.conv5 = _conv(c4, c4, 3, 2)
        self.conv5_1 = _conv(c4, c4, 3)
        self.conv6 = _conv(c4, c6, 3, 2)
        self.conv6_1 = _conv(c6, c6, 3)
        # decoder: each level concatenates [skip, deconv, upsampled coarser flow]
        self.Convolution1 = _conv(c6, 2, 3)
        self.deconv5 = _deconv(c6, d5)
        self.upsample_flow6to5 = _deconv(2, 2)
        self.Convolution2 = _conv(c4 + d5 + 2, 2, 3)
        self.deconv4 = _deconv(c4 + d5 + 2, d4)
        self.upsample_flow5to4 = _deconv(2, 2)
        self.Convolution3 = _conv(c4 + d4 + 2, 2, 3)
        self.deconv3 = _deconv(c4 + d4 + 2, d3)
        self.upsample_flow4to3 = _deconv(2, 2)
        self.Convolution4 = _conv(c3 + d3 + 2, 2, 3)
        self.deconv2 = _deconv(c3 + d3 + 2, d2)
        self.upsample_flow3to2 = _deconv(2, 2)
        self.Convolution5 = _conv(c2 + d2 + 2, 2, 3)
        self.Convolution5_scale = nn.Conv2d(c2 + d2 + 2, feat_dim, 1, bias=True)
        # Q: a 3x3 layer (feature error depends on the neighbourhood: occlusions, object edges), then 1x1
        self.Convolution5_q_hidden = _conv(c2 + d2 + 2, Q_HIDDEN, 3) if q_output else None
        self.Convolution5_q = nn.Conv2d(Q_HIDDEN, 1, 1, bias=True) if q_output else None

    # ------------------------------------------------------------------------------------------
    def forward(self, cur: Tensor, key: Tensor) -> tuple[Tensor, Tensor]:
        """Flow and scale map from the current frame to the key frame.

        Args:
            cur: (N, 3, H, W) current frame, preprocessed network input (RGB, mean-subtracted, 0..255 range).
            key: (N, 3, H, W) key frame, same preprocessing and size.
        Returns:
            flow: (N, 2, h, w) ``2.5 * Convolution5``, in feature-map pixels, channel 0 = x, 1 = y.
            scale: (N, feat_dim, h, w) ``Convolution5_scale``.
            with h, w = ceil(H/16), ceil(W/16).
        """
        flow, scale, _ = self._run(cur, key, None)
        return flow, scale

    def forward_q(self, cur: Tensor, key: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """:meth:`forward` plus Q (N, 1, h, w) in (0, 1): how well the key feature warped by the flow
        stands in for the current frame's own feature at each position (1 = as good)."""
        if self.Convolution5_q is None:
            raise RuntimeError("FlowNet: built without the Q output (network.THP is false)")
        flow, scale, x = self._run(cur, key, None)
        return flow, scale, torch.sigmoid(self.Convolution5_q(_conv_lrelu(self.Convolution5_q_hidden, x)))

    def forward_probes(self, cur: Tensor, key: Tensor) -> dict[str, Tensor]:
        """Run :meth:`forward` and return the intermediate activations under their MXNet output names.

        Keys: ``resize_data_output``, ``flow_conv1_output`` (the conv, *before* its LeakyReLU ``ReLU1``),
        ``ReLU1_output`` .. ``ReLU14_output`` (``ReLU11..14`` = cropped deconv5..2 after LeakyReLU),
        ``Convolution1..5_output``, ``Concat2..5_output``, ``resize_concat5_output``,
        ``_mulscalar0_output`` (the flow) and ``Convolution5_scale_output`` (the scale map).
        For localising a parity failure; shapes as in docs/design.md §2.1.
        """
        probes: dict[str, Tensor] = {}
        self._run(cur, key, probes)
        return probes

    # ------------------------------------------------------------------------------------------
    def _half(self, x: Tensor) -> Tensor:
        """2x2/2 average pool with MXNet ``pooling_convention='full'``: (N,C,n,m) -> (N,C,ceil(n/2),ceil(m/2))."""
        if self.avg_pool == "full":
            # a partial window divided by 4, i.e. the missing elements counted as zeros: zero padding to even
            # sizes, then a plain pool (the same sums and divisor; divisor_override has no ONNX form)
            x = F.pad(x, (0, x.shape[-1] % 2, 0, x.shape[-2] % 2))
            return F.avg_pool2d(x, 2, 2)
        # padding 0 + ceil_mode: a partial window divided by its valid count (ONNX AveragePool, count_include_pad 0)
        return F.avg_pool2d(x, 2, 2, ceil_mode=True)

    def _run(self, cur: Tensor, key: Tensor, probes: Optional[dict[str, Tensor]]) -> tuple[Tensor, Tensor, Tensor]:
        """(flow, scale map, the last concatenation at stride 16, which every 1x1 head reads)."""
        if cur.dim() != 4 or cur.shape[1] != 3:
            raise ValueError(f"FlowNet: cur must be (N, 3, H, W), got {tuple(cur.shape)}")
        if key.shape != cur.shape:
            raise ValueError(f"FlowNet: key {tuple(key.shape)} must have the shape of cur {tuple(cur.shape)}")

        def keep(name: str, t: Tensor) -> None:
            if probes is not None:
                probes[name] = t

        # the reference divides each frame by 255 and concatenates [cur, key]; cat first, then divide
        # (elementwise, so the values are the same)
        x = self._half(torch.cat((cur, key), dim=1) / 255.0)
        keep("resize_data_output", x)
        if probes is not None:
            x = self.flow_conv1(x)
            probes["flow_conv1_output"] = x.clone()  # the in-place LeakyReLU below would overwrite it
            relu1 = _lrelu(x)
        else:
            relu1 = _conv_lrelu(self.flow_conv1, x)
        keep("ReLU1_output", relu1)
        relu2 = _conv_lrelu(self.conv2, relu1)
        keep("ReLU2_output", relu2)
        relu3 = _conv_lrelu(self.conv3, relu2)
        keep("ReLU3_output", relu3)
        relu4 = _conv_lrelu(self.conv3_1, relu3)
        keep("ReLU4_output", relu4)
        relu5 = _conv_lrelu(self.conv4, relu4)
        keep("ReLU5_output", relu5)
        relu6 = _conv_lrelu(self.conv4_1, relu5)
        keep("ReLU6_output", relu6)
        relu7 = _conv_lrelu(self.conv5, relu6)
        keep("ReLU7_output", relu7)
        relu8 = _conv_lrelu(self.conv5_1, relu7)
        keep("ReLU8_output", relu8)
        relu9 = _conv_lrelu(self.conv6, relu8)
        keep("ReLU9_output", relu9)
        x = _conv_lrelu(self.conv6_1, relu9)
        keep("ReLU10_output", x)

        # refinement: at each scale predict a flow, upsample features and flow to the next skip tensor
        stages = (
            (self.Convolution1, self.deconv5, self.upsample_flow6to5, relu8, 2),
            (self.Convolution2, self.deconv4, self.upsample_flow5to4, relu6, 3),
            (self.Convolution3, self.deconv3, self.upsample_flow4to3, relu4, 4),
            (self.Convolution4, self.deconv2, self.upsample_flow3to2, relu2, 5),
        )
        for predict_flow, deconv, upsample_flow, skip, i in stages:
            flow = predict_flow(x)
            keep(f"Convolution{i - 1}_output", flow)
            up = _crop_to(_conv_lrelu(deconv, x), skip)  # elementwise: activating before the crop is the same
            keep(f"ReLU{i + 9}_output", up)
            x = torch.cat((skip, up, _crop_to(upsample_flow(flow), skip)), dim=1)
            keep(f"Concat{i}_output", x)

        x = self._half(x)
        if x.device.type == "cpu":
            # the CPU fast path (dff.ops.prepack) runs the layers before in NHWC; from an NCHW input the
            # scale map (feat_dim channels, FlowNet's widest output) comes out NCHW, and transposing these
            # 194 channels (full width) costs less than transposing its 1024. CUDA keeps its layout.
            x = x.contiguous()
        keep("resize_concat5_output", x)
        flow = self.Convolution5(x)
        keep("Convolution5_output", flow)
        flow = flow * FLOW_SCALE
        keep("_mulscalar0_output", flow)
        scale = self.Convolution5_scale(x)
        keep("Convolution5_scale_output", scale)
        return flow, scale, x

    # ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def init_scale_identity(self, freeze_bias: bool = True) -> None:
        """Training initialisation of the scale map (docs/design.md §2.3): weight 0, bias 1, so scale == 1.

        The reference declares ``Convolution5_scale_bias`` with lr_mult 0, so it stays 1 for the whole
        training (weight decay is scaled by the lr too). ``freeze_bias`` reproduces that with
        ``requires_grad=False``; a trainer that builds its optimizer from parameter names should also
        exclude :meth:`frozen_parameter_names` (e.g. after loading a checkpoint without calling this).
        """
        self.Convolution5_scale.weight.zero_()
        self.Convolution5_scale.bias.fill_(1.0)
        if freeze_bias:
            self.Convolution5_scale.bias.requires_grad_(False)

    @torch.no_grad()
    def zero_flow_output(self) -> None:
        """The flow predictor ``Convolution5`` to 0: the flow starts at 0 (training from scratch)."""
        self.Convolution5.weight.zero_()
        self.Convolution5.bias.zero_()

    @staticmethod
    def frozen_parameter_names() -> list[str]:
        """state_dict names (relative to this module) that are never trained: ``['Convolution5_scale.bias']``."""
        return ["Convolution5_scale.bias"]

    @staticmethod
    def mxnet_name(state_key: str) -> str:
        """MXNet parameter name of a state_dict key: ``'conv3_1.weight'`` -> ``'conv3_1_weight'``."""
        layer, _, kind = state_key.rpartition(".")
        if not layer or kind not in ("weight", "bias"):
            raise ValueError(f"FlowNet: {state_key!r} is not a '<layer>.weight|bias' key")
        return f"{layer}_{kind}"

    def extra_repr(self) -> str:
        return f"feat_dim={self.feat_dim}, avg_pool={self.avg_pool!r}"
