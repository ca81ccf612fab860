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
from torch.nn import functional as F

from dff.config import Config
from dff.models.aggregation import FlowGuidedGRU, KeyFrameAggregation
from dff.models.flownet import FlowNet
from dff.models.light_flow import LightFlow
from dff.models.rfcn import RFCN
from dff.ops import warp_scale

# Q's initial bias: sigmoid(3) = 0.95, "the warped feature is as good" everywhere, so an untrained Q head
# neither triggers key frames nor updates (the model starts as the DFF it is fine-tuned from).
Q_INIT_BIAS = 3.0


def feature_consistency(warped: Tensor, own: Tensor, sigma: float) -> Tensor:
    """Q's training target, (N, C, h, w) x 2 -> (N, 1, h, w) in (0, 1]: ``exp(-(r / sigma)^2)`` with ``r`` the
    distance of the warped key feature from the frame's own feature at a position, relative to the own
    feature's mean norm over the frame (1 = identical; docs/design.md §9.1 says why not the cosine)."""
    dist = (warped - own).norm(dim=1, keepdim=True)
    ref = own.norm(dim=1, keepdim=True).mean(dim=(2, 3), keepdim=True).clamp_min(1e-6)
    return torch.exp(-(dist / (ref * sigma)) ** 2)


def build_flow_network(cfg: Config, q_output: bool = False) -> FlowNet | LightFlow:
    """``network.FLOW_NETWORK``: ``flownet`` (DFF's FlowNetS, optionally with THP's Q output) or
    ``light_flow`` (:class:`~dff.models.light_flow.LightFlow`); ``FLOWNET_WIDTH`` multiplies either's channels."""
    net = cfg.network
    kind, feat_dim, width = str(net.FLOW_NETWORK), int(net.DFF_FEAT_DIM), float(net.FLOWNET_WIDTH)
    if kind == "flownet":
        return FlowNet(feat_dim=feat_dim, avg_pool=net.FLOW_AVG_POOL, width=width, q_output=q_output)
    if kind == "light_flow":
        if q_output:
            raise ValueError("network.THP needs FlowNet's Q output: set network.FLOW_NETWORK to flownet")
        return LightFlow(feat_dim=feat_dim, width=width)
    raise ValueError(f"network.FLOW_NETWORK must be flownet or light_flow, got {kind!r}")


class DFF(RFCN):
    """R-FCN + a flow network. Parameter names: those of :class:`RFCN` plus ``flownet.<layer>`` (FlowNet's are
    the MXNet layer names) and, with a key-frame aggregation, ``aggregation.<layer>``."""

    kind = "dff"

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg)
        self.thp = bool(cfg.network.THP)
        if self.thp and cfg.network.GRU_AGGREGATION:
            raise ValueError("network.THP and network.GRU_AGGREGATION are two key-frame aggregations: choose one")
        self.flownet = build_flow_network(cfg, q_output=self.thp)
        # the key frames' aggregation: THP's (FGFA weights) or the mobile variant's flow-guided ConvGRU; None
        # for plain DFF (no parameters, the reference's state dict)
        self.aggregation: KeyFrameAggregation | FlowGuidedGRU | None = None
        if self.thp:
            self.aggregation = KeyFrameAggregation(self.feat_dim, int(cfg.network.THP_EMBED_DIM))
        elif cfg.network.GRU_AGGREGATION:
            self.aggregation = FlowGuidedGRU(self.feat_dim)

    def frozen_parameters(self, fixed_prefixes: Sequence[str] | None = None) -> set[str]:
        """:meth:`RFCN.frozen_parameters` plus FlowNet's own (the scale map's bias stays 1)."""
        return super().frozen_parameters(fixed_prefixes) | {f"flownet.{n}" for n in self.flownet.frozen_parameter_names()}

    def estimate_flow(self, data: Tensor, key_data: Tensor) -> tuple[Tensor, Tensor]:
        """(flow (N, 2, h, w) from the current frame to the key frame, scale map (N, C, h, w))."""
        return self.flownet(data, key_data)

    def estimate_flow_q(self, data: Tensor, key_data: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """THP: (flow, scale map, Q (N, 1, h, w) in (0, 1)) from the current frame to the key (reference) frame."""
        return self.flownet.forward_q(data, key_data)

    def aggregate(self, key_feat: Tensor, prev_warped: Tensor) -> Tensor:
        """THP: the new key frame's feature blended with the previous aggregated key feature warped to it."""
        if self.aggregation is None:
            raise RuntimeError("aggregate: the model has no aggregation network (network.THP and "
                               "network.GRU_AGGREGATION are false)")
        return self.aggregation(key_feat, prev_warped)

    @torch.no_grad()
    def init_thp_layers(self) -> None:
        """The video layers a DFF checkpoint lacks, initialised so the model starts as that DFF: Q's head
        weight 0 and bias :data:`Q_INIT_BIAS` (Q starts high everywhere; THP's embedding keeps PyTorch's
        default initialisation); the ConvGRU as the identity on the key frame's own feature."""
        if self.thp:  # Q exists with network.THP only (FlowNet's q_output)
            self.flownet.Convolution5_q.weight.zero_()
            self.flownet.Convolution5_q.bias.fill_(Q_INIT_BIAS)
        if isinstance(self.aggregation, FlowGuidedGRU):
            self.aggregation.init_identity()

    def forward_train(self, batch: dict[str, Tensor], generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """DFF: :meth:`RFCN.forward_train`. THP: the same losses on the partially updated, aggregated feature,
        plus ``q_loss`` (in ``loss``); see :meth:`thp_train_feature`."""
        if not self.thp:
            return super().forward_train(batch, generator)  # with the GRU: train_feature aggregates
        feat, q_loss = self.thp_train_feature(batch)
        out = self.task_losses(feat, batch["im_info"], batch["gt_boxes"], generator)
        out["q_loss"] = q_loss
        out["loss"] = out["loss"] + q_loss
        return out

    def thp_train_feature(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """THP's training feature and Q's loss (docs/design.md §9.4).

        ``batch`` as :meth:`train_feature` plus ``data_prev`` (1, 3, H, W), a key frame before the key
        frame, and ``prev_flag`` (1 when there is none: a DET image or the video's start).

        1. key feature: the feature network on ``data_ref``; unless ``prev_flag``, aggregated with the
           previous key frame's feature warped to it (flow and scale map from FlowNet(data_ref, data_prev));
        2. with ``eq_flag`` 1 that is the feature (Q is not trained on the pair); else FlowNet(data, data_ref)
           gives flow, scale and Q, the key feature is warped, the frame's own feature is computed, Q
           regresses their per-position cosine similarity (:func:`feature_consistency`, binary cross-entropy,
           ``TRAIN.THP_Q_LOSS_WEIGHT``), and the positions with Q <= ``TRAIN.THP_TAU`` take the own feature
           (the partial update; the mask carries no gradient, Q learns from its target alone).
        """
        data, data_ref = batch["data"], batch["data_ref"]
        _check_same_shape(data, data_ref)
        key_feat = self.key_frame_feature(batch)
        zero = key_feat.new_zeros(())
        if _flag(batch["eq_flag"], "eq_flag"):
            return key_feat, zero
        flow, scale, q = self.estimate_flow_q(data, data_ref)
        warped = self.warp(key_feat, flow, scale)
        own = self.extract_feature(data)
        target = feature_consistency(warped.detach(), own.detach(), float(self.cfg.TRAIN.THP_Q_SIGMA))
        q_loss = F.binary_cross_entropy(q.float(), target.float()) * float(self.cfg.TRAIN.THP_Q_LOSS_WEIGHT)
        update = q.detach() <= float(self.cfg.TRAIN.THP_TAU)
        return torch.where(update, own, warped), q_loss

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

        The feature network runs on ``data_ref`` only (and ``data_prev`` with a key-frame aggregation:
        :meth:`key_frame_feature`). With ``eq_flag`` 0 the key feature is warped by
        FlowNet(data, data_ref) and multiplied by the scale map; gradients reach the ResNet through the
        bilinear warp and FlowNet through flow and scale. With ``eq_flag`` 1 the unwarped key feature is
        used and FlowNet is **not run**: the reference computes FlowNet and the warp anyway and then
        discards them (``take`` on the stacked [warped, unwarped] features), so FlowNet gets no
        gradient in that case either and skipping it changes nothing but the time. (A trainer that
        wants MXNet's weight decay / momentum on FlowNet for such a batch must give FlowNet zero
        gradients instead of ``None``.)
        """
        data, data_ref = batch["data"], batch["data_ref"]
        _check_same_shape(data, data_ref)
        key_feat = self.key_frame_feature(batch)
        if _flag(batch["eq_flag"], "eq_flag"):
            return key_feat
        flow, scale = self.estimate_flow(data, data_ref)
        return self.warp(key_feat, flow, scale)

    def key_frame_feature(self, batch: dict[str, Tensor]) -> Tensor:
        """The key frame's feature in training: the feature network on ``data_ref``; with a key-frame
        aggregation and ``prev_flag`` 0, aggregated with the feature of ``data_prev`` (the key frame before,
        (1, 3, H, W)) warped to it by the flow network (data_ref -> data_prev), as the engine does at test time."""
        key_feat = self.extract_feature(batch["data_ref"])
        if self.aggregation is None or _flag(batch.get("prev_flag", 1), "prev_flag"):
            return key_feat
        data_prev = batch["data_prev"]
        _check_same_shape(batch["data_ref"], data_prev, "data_prev", "data_ref")
        flow, scale = self.estimate_flow(batch["data_ref"], data_prev)
        return self.aggregate(key_feat, self.warp(self.extract_feature(data_prev), flow, scale))


def _flag(value: object, name: str) -> bool:
    """A 0/1 batch flag (bool, int or 1-element tensor) -> bool; anything else is an error."""
    flag = torch.as_tensor(value).reshape(-1)
    if flag.numel() != 1 or float(flag[0]) not in (0.0, 1.0):
        raise ValueError(f"forward_train: {name} must be a single 0 or 1, got {value!r}")
    return float(flag[0]) == 1.0


def _check_same_shape(data: Tensor, other: Tensor, other_name: str = "data_ref", name: str = "data") -> None:
    if other.shape != data.shape:
        raise ValueError(f"forward_train: {other_name} {tuple(other.shape)} must have the shape of {name} "
                         f"{tuple(data.shape)}")
