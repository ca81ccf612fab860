"""Recursive aggregation on key frames, the part THP and the mobile paper's flow-guided GRU share.

A new key frame's feature is combined with the previous key frame's aggregated feature, warped to it by the
flow network; only the last aggregated feature is kept, so memory does not grow with the video. The two
schemes differ in the combining network (held by the model as ``aggregation``): :mod:`dff.temporal.thp`
(FGFA's embedding weights) and :mod:`dff.temporal.gru` (a ConvGRU).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from dff.config import Config
from dff.temporal.base import LoopOptions, batch_flag, check_same_shape
from dff.temporal.propagation import SparsePropagation

AGGREGATION = "aggregation"  # the model's name of the combining network (state-dict prefix)


class RecursiveAggregation(SparsePropagation):
    """DFF whose key frames aggregate recursively. Training samples carry ``data_prev``, a key frame before the
    key frame, and ``prev_flag`` (1 when there is none: a DET image or the video's start); a static clip (a DET
    image, ``TRAIN.STATIC_CLIPS``) carries ``static_keys``, the number of earlier key frames that are copies of
    the key frame."""

    new_layer_patterns = (f"{AGGREGATION}.*",)
    trains_on_previous_key = True

    def key_frame_feature(self, model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
        """The feature network on ``data_ref``; unless ``prev_flag``, aggregated recursively over ``data_prev``
        (P, 3, H, W), the earlier key frames newest first, as the loop does at test time: the oldest's feature is
        warped to the next, aggregated with that one's, and so on up to the key frame. The P feature passes and
        the P flows run as one batch each."""
        data_ref = batch["data_ref"]
        key_feat = model.extract_feature(data_ref)
        if batch_flag(batch.get("prev_flag", 1), "prev_flag"):
            return key_feat
        static_keys = int(batch.get("static_keys", 0))
        if static_keys:
            # every frame of the clip is this one: its feature and its flow to itself are computed once; the
            # recursion (and so the gradient, summed over the shared tensors) is the unshared chain's
            flow, scale = model.estimate_flow(data_ref, data_ref)
            agg = key_feat
            for _ in range(static_keys):
                agg = model.aggregate(key_feat, model.warp(agg, flow, scale))
            return agg
        data_prev = batch["data_prev"]
        check_same_shape(data_ref, data_prev[:1], "data_prev", "data_ref")
        prev_feats = model.extract_feature(data_prev)
        # flow of each frame of the chain (the key frame, then the earlier keys) to the one before it
        flow, scale = model.estimate_flow(torch.cat((data_ref, data_prev[:-1])), data_prev)
        agg = prev_feats[-1:]
        for j in range(data_prev.shape[0] - 2, -1, -1):
            agg = model.aggregate(prev_feats[j:j + 1], model.warp(agg, flow[j + 1:j + 2], scale[j + 1:j + 2]))
        return model.aggregate(key_feat, model.warp(agg, flow[:1], scale[:1]))

    def options(self, cfg: Config) -> LoopOptions:
        """``TEST.AGGREGATION`` is allowed; THP's Q-based options are not (no Q)."""
        opts = LoopOptions.from_config(cfg)
        if opts.needs_q:
            super().options(cfg)  # raises, naming what is missing
        return opts
