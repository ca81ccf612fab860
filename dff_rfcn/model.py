"""Deep Feature Flow on R-FCN (the reference's ``resnet_v1_101_flownet_rfcn`` symbols, spec 2.5).

* key frame: the feature network runs on the frame; its feature is returned for the cache;
* non-key frame: FlowNet estimates the flow from the current frame to the key frame and a scale map;
  the key feature is bilinearly warped by the flow and multiplied by the scale map (one fused op);
* both then run the same task network, :meth:`dff.models.rfcn.RFCN.detect`.
"""
from __future__ import annotations

from torch import Tensor

from dff.config import Config
from dff.models.rfcn import RFCN
from dff.ops import warp_scale

from .flownet import FlowNet


class DFF(RFCN):
    """R-FCN + FlowNet. Parameter names: those of :class:`RFCN` plus ``flownet.<MXNet layer>``."""

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg)
        self.flownet = FlowNet(feat_dim=self.feat_dim, avg_pool=cfg.network.FLOW_AVG_POOL)

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

    def forward_key(self, data: Tensor, im_info: Tensor) -> dict[str, Tensor]:
        """Key-frame test network: the per-frame R-FCN; ``feat`` is the feature to cache."""
        return RFCN.forward(self, data, im_info)

    def forward_cur(self, data: Tensor, im_info: Tensor, key_data: Tensor, key_feat: Tensor,
                    parts: bool = False) -> dict[str, Tensor]:
        """Non-key test network: FlowNet + warp x scale + task network. No feature network call.

        ``parts`` also returns the unscaled warped feature (an extra warp; for parity checks only).
        """
        prop = self.propagate(data, key_data, key_feat, parts=parts)
        out = self.detect(prop["feat"], im_info)
        out.update(prop)
        return out

    def forward(self, data: Tensor, im_info: Tensor, key_data: Tensor | None = None,
                key_feat: Tensor | None = None) -> dict[str, Tensor]:
        if key_feat is None:
            return self.forward_key(data, im_info)
        return self.forward_cur(data, im_info, key_data, key_feat)

