"""Recursive aggregation on key frames, the part THP and the mobile paper's flow-guided GRU share.

A new key frame's feature is combined with the previous key frame's aggregated feature, warped to it by the
flow network; only the last aggregated feature is kept, so memory does not grow with the video. The two
schemes differ in the combining network (held by the model as ``aggregation``): :mod:`dff.temporal.thp`
(FGFA's embedding weights) and :mod:`dff.temporal.gru` (a ConvGRU).
"""
from __future__ import annotations

from torch import Tensor, nn

from dff.config import Config
from dff.temporal.base import LoopOptions, batch_flag, check_same_shape
from dff.temporal.propagation import SparsePropagation

AGGREGATION = "aggregation"  # the model's name of the combining network (state-dict prefix)


class RecursiveAggregation(SparsePropagation):
    """DFF whose key frames aggregate recursively. Training samples carry ``data_prev``, a key frame before the
    key frame, and ``prev_flag`` (1 when there is none: a DET image or the video's start)."""

    new_layer_patterns = (f"{AGGREGATION}.*",)
    trains_on_previous_key = True

    def key_frame_feature(self, model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
        """The feature network on ``data_ref``; unless ``prev_flag``, aggregated with the feature of ``data_prev``
        (1, 3, H, W) warped to it by the flow network (data_ref -> data_prev), as the loop does at test time."""
        key_feat = model.extract_feature(batch["data_ref"])
        if batch_flag(batch.get("prev_flag", 1), "prev_flag"):
            return key_feat
        data_prev = batch["data_prev"]
        check_same_shape(batch["data_ref"], data_prev, "data_prev", "data_ref")
        flow, scale = model.estimate_flow(batch["data_ref"], data_prev)
        return model.aggregate(key_feat, model.warp(model.extract_feature(data_prev), flow, scale))

    def options(self, cfg: Config) -> LoopOptions:
        """``TEST.AGGREGATION`` is allowed; THP's Q-based options are not (no Q)."""
        opts = LoopOptions.from_config(cfg)
        if opts.needs_q:
            super().options(cfg)  # raises, naming what is missing
        return opts
