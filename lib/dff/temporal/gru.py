"""The flow-guided ConvGRU of "Towards High Performance Video Object Detection for Mobiles" (§3.2) as a
recursive key-frame aggregation (docs/design.md §10.4)."""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from dff.ops.layers import SeparableConv2d
from dff.temporal.aggregation import AGGREGATION, RecursiveAggregation
from dff.temporal.registry import register


class FlowGuidedGRU(nn.Module):
    """The key frame's own feature ``x`` is the input, the previous aggregated key feature warped to this key
    frame ``h`` is the state::

        z = sigmoid(W_z * [x, h]),  r = sigmoid(W_r * [x, h])
        h~ = ReLU(W * [x, r . h])
        out = (1 - z) . h + z . h~

    ReLU in the candidate, as the paper (the features are ReLU outputs); every ``*`` is a 3x3 depthwise-
    separable convolution (``gates`` gives z and r together, ``candidate`` gives h~), the paper's kind of
    convolution for a phone. :meth:`init_identity` makes ``out == x`` at the start of training, so a model
    fine-tuned from plain DFF begins as plain DFF.
    """

    def __init__(self, feat_dim: int) -> None:
        super().__init__()
        self.feat_dim = feat_dim
        self.gates = SeparableConv2d(2 * feat_dim, 2 * feat_dim)
        self.candidate = SeparableConv2d(2 * feat_dim, feat_dim)

    @torch.no_grad()
    def init_identity(self, update_gate_bias: float = 4.0) -> None:
        """out == x for x >= 0: z = sigmoid(bias) ~ 1 (gate weights 0), h~ = ReLU(x) (the candidate passes x
        through: depthwise centre 1, pointwise the identity on x's channels and 0 on the state's)."""
        c = self.feat_dim
        self.gates.pointwise.weight.zero_()
        self.gates.pointwise.bias.zero_()
        self.gates.pointwise.bias[:c].fill_(update_gate_bias)
        dw = self.candidate.depthwise
        dw.weight.zero_()
        dw.weight[:, 0, 1, 1] = 1.0
        dw.bias.zero_()
        pw = self.candidate.pointwise
        pw.weight.zero_()
        pw.weight[:, :c, 0, 0] = torch.eye(c)
        pw.bias.zero_()

    def forward(self, key_feat: Tensor, prev_warped: Tensor) -> Tensor:
        """key_feat (x), prev_warped (h): (N, C, h, w) -> the aggregated key feature (N, C, h, w)."""
        z, r = torch.sigmoid(self.gates(torch.cat((key_feat, prev_warped), dim=1))).chunk(2, dim=1)
        cand = F.relu(self.candidate(torch.cat((key_feat, r * prev_warped), dim=1)))
        return prev_warped + z * (cand - prev_warped)


@register("gru")
class FlowGuidedGRUAggregation(RecursiveAggregation):
    """DFF with the ConvGRU over key frames (``TEST.AGGREGATION`` on at test time)."""

    def build_modules(self, feat_dim: int) -> dict[str, nn.Module]:
        return {AGGREGATION: FlowGuidedGRU(feat_dim)}

    def init_layers(self, model: nn.Module) -> None:
        """The ConvGRU as the identity on the key frame's own feature."""
        model.get_submodule(AGGREGATION).init_identity()
