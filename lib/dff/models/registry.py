"""The detector's parts by name: ``network.BACKBONE``, ``network.FLOW_NETWORK`` and ``network.HEAD`` pick
them here (the temporal scheme, ``network.TEMPORAL``, is :mod:`dff.temporal.registry`'s). A new part is a
module plus an entry in one of these tables; nothing else asks which part it is."""
from __future__ import annotations

from typing import Callable

from torch import nn

from dff.config import Config
from dff.models.flownet import FlowNet
from dff.models.heads import LightHead, RFCNHead
from dff.models.light_flow import LightFlow
from dff.models.mobilenet import MobileNetV2Backbone
from dff.models.resnet import RESNET_ARCHS, ResNetV1

# name -> builder(network config) -> a module with ``arch`` and ``out_channels`` mapping (N, 3, H, W) to stride 16
BACKBONES: dict[str, Callable[[Config], nn.Module]] = {
    **{arch: (lambda net, arch=arch: ResNetV1(arch)) for arch in RESNET_ARCHS},
    "mobilenet_v2": lambda net: MobileNetV2Backbone(float(net.MOBILENET_WIDTH)),
}
# name -> builder(network config, input channels, classes, regression classes)
HEADS: dict[str, Callable[[Config, int, int, int], nn.Module]] = {
    "rfcn": lambda net, cin, classes, reg: RFCNHead(cin, classes, reg),
    "light": lambda net, cin, classes, reg: LightHead(cin, classes, reg, int(net.LIGHT_HEAD_DIM),
                                                      int(net.LIGHT_HEAD_FC)),
}
# name -> builder(network config, Q output) -> (cur, key) (N, 3, H, W) -> flow (N, 2, h, w), scale (N, C, h, w)
FLOW_NETWORKS: dict[str, Callable[[Config, bool], nn.Module]] = {
    "flownet": lambda net, q: FlowNet(feat_dim=int(net.DFF_FEAT_DIM), avg_pool=net.FLOW_AVG_POOL,
                                      width=float(net.FLOWNET_WIDTH), q_output=q),
    "light_flow": lambda net, q: LightFlow(feat_dim=int(net.DFF_FEAT_DIM), width=float(net.FLOWNET_WIDTH),
                                            output_stride=int(net.LIGHT_FLOW_OUTPUT_STRIDE)),
}
# the flow networks that can predict THP's Q
Q_FLOW_NETWORKS = ("flownet",)


def _pick(table: dict, key: str, value: str):
    try:
        return table[value]
    except KeyError:
        raise ValueError(f"{key} must be one of {', '.join(table)}, got {value!r}") from None


def build_backbone(net: Config) -> nn.Module:
    """``network.BACKBONE``: a ResNet-v1 of :mod:`dff.models.resnet` or ``mobilenet_v2`` (``MOBILENET_WIDTH``)."""
    return _pick(BACKBONES, "network.BACKBONE", str(net.BACKBONE))(net)


def build_head(net: Config, in_channels: int, num_classes: int, num_reg_classes: int) -> nn.Module:
    """``network.HEAD``: ``rfcn`` (the reference's) or ``light`` (:class:`~dff.models.heads.LightHead`)."""
    return _pick(HEADS, "network.HEAD", str(net.HEAD))(net, in_channels, num_classes, num_reg_classes)


def build_flow_network(cfg: Config, q_output: bool = False) -> nn.Module:
    """``network.FLOW_NETWORK``: ``flownet`` (DFF's FlowNetS, optionally with THP's Q output) or ``light_flow``
    (:class:`~dff.models.light_flow.LightFlow`); ``FLOWNET_WIDTH`` multiplies either's channels."""
    name = str(cfg.network.FLOW_NETWORK)
    builder = _pick(FLOW_NETWORKS, "network.FLOW_NETWORK", name)
    if q_output and name not in Q_FLOW_NETWORKS:
        raise ValueError(f"network.TEMPORAL thp needs a flow network with a Q output ({', '.join(Q_FLOW_NETWORKS)}); "
                         f"network.FLOW_NETWORK is {name}")
    return builder(cfg.network, q_output)
