"""Deep Feature Flow on R-FCN (the reference's ``resnet_v1_101_flownet_rfcn`` symbols, spec 2.5).

* key frame: the feature network runs on the frame; its feature is returned for the cache;
* non-key frame: FlowNet estimates the flow from the current frame to the key frame and a scale map;
  the key feature is bilinearly warped by the flow and multiplied by the scale map (one fused op);
* both then run the same task network, :meth:`dff.models.rfcn.RFCN.detect`;
* training (:meth:`DFF.forward_train`): the feature of the key frame, warped to the current frame
  (or used as is when both are the same frame), carries the current frame's losses.
"""
from __future__ import annotations

import torch
from torch import Tensor

from dff.config import Config
from dff.models.rfcn import RFCN
from dff.ops import warp_scale

from .flownet import FlowNet


class DFF(RFCN):
    """R-FCN + FlowNet. Parameter names: those of :class:`RFCN` plus ``flownet.<MXNet layer>``."""

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg)
        self.flownet = FlowNet(feat_dim=self.feat_dim, avg_pool=cfg.network.FLOW_AVG_POOL,
                               width=float(cfg.network.FLOWNET_WIDTH))

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


    def forward_train(self, data: Tensor, im_info: Tensor, gt_boxes: Tensor, data_ref: Tensor,
                      eq_flag: Tensor | int | bool, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Training forward of DFF on one (current, key) pair (the reference's ``get_train_symbol``).

        Args:
            data: (1, 3, H, W) current frame -- the frame that carries the loss.
            im_info: (1, 3) the current frame's ``[height, width, scale]``.
            gt_boxes: (1, G, 5) or (G, 5) the current frame's gt ``[x1, y1, x2, y2, class]`` (scaled pixels).
            data_ref: (1, 3, H, W) key (reference) frame, same size as ``data``.
            eq_flag: 1 when the key frame is the current frame (offset 0, clamped, or a DET image), else 0;
                a bool, int or 1-element tensor (the reference's ``eq_flag`` (1,) input).
            generator: randomness of the anchor / roi subsampling.
        Returns:
            the dict of :meth:`dff.models.rfcn.RFCN.task_losses`.

        The feature network runs on ``data_ref`` only. With ``eq_flag`` 0 the key feature is warped by
        FlowNet(data, data_ref) and multiplied by the scale map; gradients reach the ResNet through the
        bilinear warp and FlowNet through flow and scale. With ``eq_flag`` 1 the unwarped key feature is
        used and FlowNet is **not run**: the reference computes FlowNet and the warp anyway and then
        discards them (``take`` on the stacked [warped, unwarped] features), so FlowNet gets no
        gradient in that case either and skipping it changes nothing but the time. (A trainer that
        wants MXNet's weight decay / momentum on FlowNet for such a batch must give FlowNet zero
        gradients instead of ``None``.)
        """
        if data.dim() != 4 or data.shape[0] != 1:
            raise ValueError(f"forward_train: data must be one image (1, 3, H, W), got {tuple(data.shape)}")
        if data_ref.shape != data.shape:
            raise ValueError(f"forward_train: data_ref {tuple(data_ref.shape)} must have the shape of data "
                             f"{tuple(data.shape)}")
        flag = torch.as_tensor(eq_flag).reshape(-1)
        if flag.numel() != 1 or float(flag[0]) not in (0.0, 1.0):
            raise ValueError(f"forward_train: eq_flag must be a single 0 or 1, got {eq_flag!r}")
        key_feat = self.extract_feature(data_ref)
        if float(flag[0]) == 1.0:
            feat = key_feat
        else:
            flow, scale = self.estimate_flow(data, data_ref)
            feat = self.warp(key_feat, flow, scale)
        return self.task_losses(feat, im_info, gt_boxes, generator)
