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
