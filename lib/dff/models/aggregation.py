"""Sparse recursive feature aggregation on key frames ("Towards High Performance Video Object Detection", §3.1).

A new key frame's feature is blended, position by position, with the previous key frame's aggregated
feature warped to it. The weights come from FGFA's embedding network: each source is embedded, and the
weight of a source is ``exp(cos(e_source, e_key))`` normalised over the two sources (the key frame's
own feature has cosine 1 with itself). Only the last aggregated feature is ever kept, so the memory does
not grow with the video.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from dff.models.layers import SeparableConv2d


class KeyFrameAggregation(nn.Module):
    """Embedding ``em_conv1`` (1x1) -> ReLU -> ``em_conv2`` (3x3) -> ReLU -> ``em_conv3`` (1x1), as FGFA.

    Args:
        feat_dim: channels of the feature (``DFF_FEAT_DIM``).
        embed_dim: channels of the embedding (``network.THP_EMBED_DIM``); the hidden layers have half.
    """

    def __init__(self, feat_dim: int, embed_dim: int) -> None:
        super().__init__()
        if embed_dim < 2:
            raise ValueError(f"network.THP_EMBED_DIM must be at least 2, got {embed_dim}")
        hidden = embed_dim // 2
        self.em_conv1 = nn.Conv2d(feat_dim, hidden, 1)
        self.em_conv2 = nn.Conv2d(hidden, hidden, 3, padding=1)
        self.em_conv3 = nn.Conv2d(hidden, embed_dim, 1)

    def embed(self, feat: Tensor) -> Tensor:
        """feat (N, C, h, w) -> unit-length embedding (N, embed_dim, h, w)."""
        x = F.relu(self.em_conv1(feat))
        x = F.relu(self.em_conv2(x))
        return F.normalize(self.em_conv3(x), dim=1)

    def weights(self, key_feat: Tensor, prev_warped: Tensor) -> tuple[Tensor, Tensor]:
        """(weight of the key frame's own feature, weight of the warped previous one), each (N, 1, h, w),
        summing to 1 at every position."""
        cos = (self.embed(key_feat) * self.embed(prev_warped)).sum(dim=1, keepdim=True)
        w = torch.softmax(torch.cat((torch.ones_like(cos), cos), dim=1), dim=1)
        return w[:, :1], w[:, 1:]

    def forward(self, key_feat: Tensor, prev_warped: Tensor) -> Tensor:
        """key_feat, prev_warped (N, C, h, w) -> the aggregated key feature (N, C, h, w)."""
        w_key, w_prev = self.weights(key_feat, prev_warped)
        return w_key * key_feat + w_prev * prev_warped


class FlowGuidedGRU(nn.Module):
    """The flow-guided ConvGRU of "Towards High Performance Video Object Detection for Mobiles" (§3.2):
    the key frame's own feature ``x`` is the input, the previous aggregated key feature warped to this key
    frame ``h`` is the state::

        z = sigmoid(W_z * [x, h]),  r = sigmoid(W_r * [x, h])
        h~ = ReLU(W * [x, r . h])
        out = (1 - z) . h + z . h~

    ReLU in the candidate, as the paper (the features are ReLU outputs); every ``*`` is a 3x3 depthwise-
    separable convolution (``gates`` gives z and r together, ``candidate`` gives h~), the paper's kind of
    convolution for a phone. :meth:`init_identity` makes ``out == x`` at the start of training, so a model
    fine-tuned from plain DFF begins as plain DFF (docs/design.md §10.4).
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
