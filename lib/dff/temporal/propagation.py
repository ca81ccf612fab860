"""Sparse feature propagation (Deep Feature Flow): the feature network on key frames, every
``TEST.KEY_FRAME_INTERVAL`` frames; other frames warp the key frame's feature by the flow network's flow and
multiply it by its scale map (docs/design.md §2.5)."""
from __future__ import annotations

from torch import Tensor, nn

from dff.temporal.base import TemporalScheme, batch_flag, check_same_shape
from dff.temporal.registry import register


@register("dff")
class SparsePropagation(TemporalScheme):
    """DFF. Training (the reference's ``get_train_symbol``): the key frame ``data_ref``'s feature, warped to the
    current frame ``data`` (the flow network on (data, data_ref)), carries the current frame's losses."""

    def key_frame_feature(self, model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
        """The key frame's feature in training: the feature network on ``data_ref``."""
        return model.extract_feature(batch["data_ref"])

    def train_feature(self, model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """``batch``: ``data``, ``data_ref`` (1, 3, H, W), the same size, and ``eq_flag``: 1 when the key frame is
        the current frame (offset 0, clamped, or a DET image), else 0 (a bool, int or 1-element tensor).

        With ``eq_flag`` 0 the key feature is warped by FlowNet(data, data_ref) and multiplied by the scale map;
        gradients reach the feature network through the bilinear warp and the flow network through flow and
        scale. With ``eq_flag`` 1 the unwarped key feature is used and the flow network is **not run**: the
        reference computes it and the warp anyway and then discards them (``take`` on the stacked [warped,
        unwarped] features), so it gets no gradient in that case either and skipping it changes nothing but
        the time. (A trainer that wants MXNet's weight decay / momentum on the flow network for such a batch
        must give it zero gradients instead of ``None``.)"""
        data, data_ref = batch["data"], batch["data_ref"]
        check_same_shape(data, data_ref)
        key_feat = self.key_frame_feature(model, batch)
        if batch_flag(batch["eq_flag"], "eq_flag"):
            return key_feat, {}
        flow, scale = model.estimate_flow(data, data_ref)
        return model.warp(key_feat, flow, scale), {}
