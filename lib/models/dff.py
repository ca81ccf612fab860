"""Deep Feature Flow on R-FCN (the reference's ``resnet_v1_101_flownet_rfcn`` symbols, docs/design.md §2.5).

* key frame: the feature network runs on the frame; its feature is returned for the cache;
* non-key frame: FlowNet estimates the flow from the current frame to the key frame and a scale map;
  the key feature is bilinearly warped by the flow and multiplied by the scale map (one fused op);
* both then run the same task network, :meth:`dff.models.rfcn.RFCN.detect`; ``model(data, im_info)``
  is the key-frame network (the per-frame R-FCN's forward);
* training (:meth:`dff.models.rfcn.RFCN.forward_train` with :meth:`DFF.train_feature`): the feature of the key frame, warped to the current frame
  (or used as is when both are the same frame), carries the current frame's losses.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from dff.config import Config
from dff.models.flownet import FlowNet
from dff.models.rfcn import RFCN
from dff.ops import warp_scale


class DFF(RFCN):
    """R-FCN + FlowNet. Parameter names: those of :class:`RFCN` plus ``flownet.<MXNet layer>``."""

    kind = "dff"

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg)
        self.flownet = FlowNet(feat_dim=self.feat_dim, avg_pool=cfg.network.FLOW_AVG_POOL,
                               width=float(cfg.network.FLOWNET_WIDTH))

    def frozen_parameters(self, fixed_prefixes: Sequence[str] | None = None) -> set[str]:
        """:meth:`RFCN.frozen_parameters` plus FlowNet's own (the scale map's bias stays 1)."""
        return super().frozen_parameters(fixed_prefixes) | {f"flownet.{n}" for n in self.flownet.frozen_parameter_names()}

    def estimate_flow(self, data: Tensor, key_data: Tensor) -> tuple[Tensor, Tensor]:
        """(flow (N, 2, h, w) from the current frame to the key frame, scale map (N, C, h, w))."""
        return self.flownet(data, key_data)

    @staticmethod
    def warp(key_feat: Tensor, flow: Tensor, scale: Tensor | None) -> Tensor:
        """Sample the key feature at p + flow(p), bilinearly (zero outside), times the scale map."""
        return warp_scale(key_feat, flow, scale)

    def propagate(self, data: Tensor, key_data: Tensor, key_feat: Tensor, parts: bool = False) -> dict[str, Tensor]:
        """Warp the key feature to the current frame.

        data, key_data (N, 3, H, W) preprocessed frames; key_feat (N, C, h, w).
        Returns ``feat`` = warp(key_feat, flow) * scale (N, C, h, w), ``flow`` (N, 2, h, w) in feature
        pixels (channel 0 = x) and ``scale`` (N, C, h, w); with ``parts`` also the unscaled ``warped``.
        """
        flow, scale = self.estimate_flow(data, key_data)
        out = {"flow": flow, "scale": scale, "feat": self.warp(key_feat, flow, scale)}
        if parts:
            out["warped"] = self.warp(key_feat, flow, None)
        return out

    def train_feature(self, batch: dict[str, Tensor]) -> Tensor:
        """The feature that carries the current frame's losses: the key frame's, warped to it.

        ``batch`` as :meth:`RFCN.forward_train` plus ``data_ref`` (1, 3, H, W), the key (reference)
        frame, same size as ``data``, and ``eq_flag``: 1 when the key frame is the current frame
        (offset 0, clamped, or a DET image), else 0; a bool, int or 1-element tensor (the reference's
        ``eq_flag`` (1,) input).

        The feature network runs on ``data_ref`` only. With ``eq_flag`` 0 the key feature is warped by
        FlowNet(data, data_ref) and multiplied by the scale map; gradients reach the ResNet through the
        bilinear warp and FlowNet through flow and scale. With ``eq_flag`` 1 the unwarped key feature is
        used and FlowNet is **not run**: the reference computes FlowNet and the warp anyway and then
        discards them (``take`` on the stacked [warped, unwarped] features), so FlowNet gets no
        gradient in that case either and skipping it changes nothing but the time. (A trainer that
        wants MXNet's weight decay / momentum on FlowNet for such a batch must give FlowNet zero
        gradients instead of ``None``.)
        """
        data, data_ref = batch["data"], batch["data_ref"]
        if data_ref.shape != data.shape:
            raise ValueError(f"forward_train: data_ref {tuple(data_ref.shape)} must have the shape of data "
                             f"{tuple(data.shape)}")
        eq_flag = batch["eq_flag"]
        flag = torch.as_tensor(eq_flag).reshape(-1)
        if flag.numel() != 1 or float(flag[0]) not in (0.0, 1.0):
            raise ValueError(f"forward_train: eq_flag must be a single 0 or 1, got {eq_flag!r}")
        key_feat = self.extract_feature(data_ref)
        if float(flag[0]) == 1.0:
            return key_feat
        flow, scale = self.estimate_flow(data, data_ref)
        return self.warp(key_feat, flow, scale)
