"""Deep Feature Flow on R-FCN (the reference's ``resnet_v1_101_flownet_rfcn`` symbols, docs/design.md §2.5).

* key frame: the feature network runs on the frame; its feature is returned for the cache;
* non-key frame: the flow network estimates the flow from the current frame to the key frame and a scale
  map; the key feature is bilinearly warped by the flow and multiplied by the scale map (one fused op);
* both then run the same task network, :meth:`dff.models.rfcn.RFCN.detect`; ``model(data, im_info)``
  is the key-frame network (the per-frame R-FCN's forward);
* which frames are key frames, whether key frames aggregate, and the training feature are the temporal
  scheme's (``network.TEMPORAL``, :mod:`dff.temporal`); its own layers are submodules of this model.
"""
from __future__ import annotations

from typing import Sequence

from torch import Tensor

from dff.config import Config
from dff.models.registry import build_flow_network
from dff.models.rfcn import RFCN
from dff.ops import warp_scale


class FlowModel:
    """The flow half of any DFF model, mixed in before its per-frame model (``class DFF(FlowModel, RFCN)``): a flow
    network held as ``flownet`` and the temporal scheme's own layers. Parameter names: the per-frame model's plus
    ``flownet.<layer>`` (FlowNet's are the MXNet layer names) and the scheme's (e.g. ``aggregation.<layer>``)."""

    uses_flow = True

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg)
        self.flownet = build_flow_network(cfg, q_output=self.scheme.has_q)
        # the scheme's own layers; none for plain DFF (the reference's state dict)
        for name, module in self.scheme.build_modules(self.feat_dim).items():
            self.add_module(name, module)

    def frozen_parameters(self, fixed_prefixes: Sequence[str] | None = None) -> set[str]:
        """:meth:`RFCN.frozen_parameters` plus the flow network's own (the scale map's bias stays 1)."""
        return super().frozen_parameters(fixed_prefixes) | {f"flownet.{n}" for n in self.flownet.frozen_parameter_names()}

    def estimate_flow(self, data: Tensor, key_data: Tensor) -> tuple[Tensor, Tensor]:
        """(flow (N, 2, h, w) from the current frame to the key frame, scale map (N, C, h, w))."""
        return self.flownet(data, key_data)

    def estimate_flow_q(self, data: Tensor, key_data: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """THP: (flow, scale map, Q (N, 1, h, w) in (0, 1)) from the current frame to the key (reference) frame."""
        return self.flownet.forward_q(data, key_data)

    def aggregate(self, key_feat: Tensor, prev_warped: Tensor) -> Tensor:
        """A key frame's feature combined with the previous aggregated key feature warped to it, by the
        scheme's aggregation network (held as ``aggregation`` by the schemes that aggregate)."""
        return self.get_submodule("aggregation")(key_feat, prev_warped)

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


class DFF(FlowModel, RFCN):
    """R-FCN + a flow network (the reference's ``resnet_v1_101_flownet_rfcn``)."""

    kind = "dff"
