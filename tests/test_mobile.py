"""The mobile variant (docs/design.md §10): MobileNetV2 at stride 16, Light Flow, the flow-guided ConvGRU, the
light head, their config switches, training from the per-frame twin and the engine's key-frame aggregation."""
from __future__ import annotations

import json
import math
import pathlib
import runpy
import subprocess
import sys

import pytest
import torch

from dff.config import ConfigError, load_config, mobile_parts, update_config
from dff.engine.video import VideoDetector
from dff.models.builder import build_model
from dff.models.flownet import FlowNet
from dff.models.heads import LightHead
from dff.models.light_flow import LightFlow
from dff.models.mobilenet import MobileNetV2Backbone
from dff.temporal.gru import FlowGuidedGRU
from dff.train.flow_pretrain import save_flownet_checkpoint
from dff.train.optim import build_param_groups
from dff.train.trainer import _load_init
from dff.utils.checkpoint import checkpoint_config, save_checkpoint

REPO = pathlib.Path(__file__).resolve().parents[1]

DFF_CFG = str(REPO / "experiments/dff_rfcn/cfgs/dff_mobile_synthetic.yaml")
RFCN_CFG = str(REPO / "experiments/rfcn/cfgs/rfcn_mobile_synthetic.yaml")
SMALL = {"network": {"MOBILENET_WIDTH": 0.35, "FLOWNET_WIDTH": 0.25, "DFF_FEAT_DIM": 32, "LIGHT_HEAD_FC": 32},
         "dataset": {"NUM_CLASSES": 6, "CLASSES": ["ellipse", "box", "triangle", "star", "ring"]},
         "TEST": {"RPN_PRE_NMS_TOP_N": 200, "RPN_POST_NMS_TOP_N": 20}}


def small_cfg(path: str, **network):
    cfg = load_config(path, [])
    update_config(cfg, {**SMALL, "network": {**SMALL["network"], **network}}, "test")
    return cfg


def test_mobilenet_backbone_is_stride_16_with_ceil_sizes():
    net = MobileNetV2Backbone(0.35).eval()
    with torch.no_grad():
        for h, w in ((64, 96), (71, 101)):
            out = net(torch.randn(1, 3, h, w))
            assert out.shape == (1, net.out_channels, math.ceil(h / 16), math.ceil(w / 16))
    assert net.out_channels == 112  # 320 x 0.35, rounded to 8: the width multiplier reaches the output
    assert MobileNetV2Backbone(0.5).out_channels == 160


def test_light_flow_output_grid_zero_flow_and_identity_scale():
    flow_net = LightFlow(feat_dim=16, width=0.25)
    cur, key = torch.randn(1, 3, 71, 101), torch.randn(1, 3, 71, 101)
    flow, scale = flow_net(cur, key)
    assert flow.shape == (1, 2, 5, 7) and scale.shape == (1, 16, 5, 7)
    assert flow.abs().sum() > 0  # a random init predicts some flow ...
    flow_net.zero_flow_output()
    flow_net.init_scale_identity()
    flow, scale = flow_net(cur, key)
    assert torch.equal(flow, torch.zeros_like(flow))  # ... and none after zero_flow_output
    assert torch.equal(scale, torch.ones_like(scale))
    assert "Convolution5_scale.bias" in flow_net.frozen_parameter_names()
    assert not flow_net.Convolution5_scale.bias.requires_grad


def test_light_flow_trains_its_predictors_end_to_end():
    flow_net = LightFlow(feat_dim=8, width=0.25)
    flow, _ = flow_net(torch.randn(1, 3, 64, 64), torch.randn(1, 3, 64, 64))
    flow.square().mean().backward()
    for name in ("predict3", "predict4", "predict5", "conv1"):
        assert getattr(flow_net, name).weight.grad.abs().sum() > 0, name


def test_light_flow_is_much_cheaper_than_flownet():
    """The point of Light Flow: counted in parameters here (the FLOP counts follow the same layers)."""
    light = sum(p.numel() for p in LightFlow(feat_dim=32, width=0.25).parameters())
    full = sum(p.numel() for p in FlowNet(feat_dim=32, width=0.25).parameters())
    assert light * 10 < full


def test_gru_starts_as_identity_on_the_key_feature():
    gru = FlowGuidedGRU(8)
    gru.init_identity()
    x = torch.rand(1, 8, 5, 6)
    h = torch.rand(1, 8, 5, 6) * 3
    with torch.no_grad():
        assert torch.allclose(gru(x, x), x, atol=1e-6)
        out = gru(x, h)
    leak = 1 - torch.sigmoid(torch.tensor(4.0))  # the update gate's initial 1 - z
    assert torch.all((out - x).abs() <= leak * (h - x).abs() + 1e-5)
    with torch.no_grad():
        gru.candidate.pointwise.weight.add_(0.5)  # a trained GRU is no longer the identity
        assert not torch.allclose(gru(x, h), x, atol=1e-2)


def test_light_head_maps_do_not_grow_with_the_classes():
    few, many = LightHead(16, 6, 2, dim=10, fc_dim=32), LightHead(16, 31, 2, dim=10, fc_dim=32)
    x = torch.randn(1, 16, 6, 8)
    assert few.score_maps(x)["thin_maps"].shape == many.score_maps(x)["thin_maps"].shape == (1, 490, 6, 8)
    rois = torch.tensor([[0, 8.0, 8.0, 60.0, 50.0], [0, 0.0, 0.0, 100.0, 80.0]])
    cls, box = many(x, rois)
    assert cls.shape == (2, 31) and box.shape == (2, 8)


def test_config_switches_build_the_mobile_parts_and_refuse_bad_combinations():
    model = build_model("dff", small_cfg(DFF_CFG))
    assert isinstance(model.backbone, MobileNetV2Backbone)
    assert isinstance(model.flownet, LightFlow)
    assert isinstance(model.rfcn_head, LightHead)
    assert isinstance(model.aggregation, FlowGuidedGRU)
    assert "aggregation" not in dict(build_model("dff", small_cfg(DFF_CFG, GRU_AGGREGATION=False)).named_children())
    with pytest.raises(ValueError, match="choose one"):
        build_model("dff", small_cfg(DFF_CFG, THP=True))
    with pytest.raises(ValueError, match="FLOW_NETWORK"):
        build_model("dff", small_cfg(DFF_CFG, FLOW_NETWORK="pwc"))
    with pytest.raises(ValueError, match="network.HEAD"):
        build_model("rfcn", small_cfg(RFCN_CFG, HEAD="heavy"))
    assert mobile_parts(small_cfg(DFF_CFG)) == ["network.BACKBONE mobilenet_v2", "network.HEAD light",
                                                "network.FLOW_NETWORK light_flow", "network.GRU_AGGREGATION"]
    assert mobile_parts(load_config("experiments/dff_rfcn/cfgs/dff_rfcn_synthetic_tiny.yaml", [])) == []


def test_mobile_keys_are_model_keys():
    """A checkpoint's mobile parts cannot be switched by --set (the weights would not fit)."""
    cfg = small_cfg(DFF_CFG)
    for key in ("network.HEAD", "network.FLOW_NETWORK", "network.GRU_AGGREGATION", "network.MOBILENET_WIDTH"):
        section, name = key.split(".")
        with pytest.raises(ConfigError):
            update_config(cfg, {section: {name: "x"}}, "--set", fixed=(key,))


def _batch(prev_flag: int, eq_flag: int = 0) -> dict:
    g = torch.Generator().manual_seed(0)
    im = lambda: torch.randn(1, 3, 96, 128, generator=g)  # noqa: E731
    return {"data": im(), "data_ref": im(), "data_prev": im(), "im_info": torch.tensor([[96.0, 128.0, 1.0]]),
            "gt_boxes": torch.tensor([[[10.0, 12.0, 70.0, 80.0, 1.0]]]), "eq_flag": eq_flag, "prev_flag": prev_flag}


@pytest.mark.parametrize("prev_flag", [0, 1])
def test_training_aggregates_the_previous_key_frame_only_when_there_is_one(prev_flag):
    model = build_model("dff", small_cfg(DFF_CFG))
    model.init_video_layers()
    out = model.forward_train(_batch(prev_flag), torch.Generator().manual_seed(1))
    assert torch.isfinite(out["loss"])
    out["loss"].backward()
    gru_grad = sum(float(p.grad.abs().sum()) for p in model.aggregation.parameters() if p.grad is not None)
    flow_grad = float(model.flownet.conv1.weight.grad.abs().sum())
    assert (gru_grad > 0) == (prev_flag == 0)
    assert flow_grad > 0  # the current frame is warped from the key frame either way


def test_mobile_parameters_get_weight_decay_by_their_pytorch_names():
    model = build_model("dff", small_cfg(DFF_CFG))
    groups = build_param_groups(model, freeze=False)
    decay, no_decay = set(groups.decay), set(groups.no_decay)
    assert "backbone.features.0.0.weight" in decay  # a convolution
    assert "backbone.features.0.1.weight" in decay  # a BatchNorm scale (the reference decays gamma too)
    assert "backbone.features.0.1.bias" in no_decay
    assert "aggregation.gates.pointwise.bias" in no_decay
    assert "flownet.Convolution5_scale.bias" in set(groups.frozen)


def test_engine_aggregates_key_frames_only_with_the_switch_on():
    cfg = small_cfg(DFF_CFG)
    model = build_model("dff", cfg).eval()
    frames = [torch.randn(1, 3, 96, 128) for _ in range(5)]
    info = torch.tensor([[96.0, 128.0, 1.0]])
    for on in (True, False):
        update_config(cfg, {"TEST": {"AGGREGATION": on}}, "test")
        det = VideoDetector(model, cfg, key_interval=2)
        calls = []
        det.runner._stages["aggregate"] = lambda f, p, calls=calls: calls.append(1) or f
        keys = [det.step(x, info)[1] for x in frames]
        assert keys == [True, False, True, False, True]
        assert len(calls) == (2 if on else 0)  # every key frame after the first, when on


def test_aggregation_switch_needs_a_model_with_an_aggregation():
    cfg = small_cfg(DFF_CFG, GRU_AGGREGATION=False)
    update_config(cfg, {"TEST": {"AGGREGATION": True}}, "test")
    with pytest.raises(ValueError, match="TEST.AGGREGATION needs a model with a key-frame aggregation"):
        VideoDetector(build_model("dff", cfg).eval(), cfg)


def test_dff_starts_from_its_per_frame_twin_and_the_pretrained_flow(tmp_path):
    twin = build_model("rfcn", small_cfg(RFCN_CFG))
    twin_path = tmp_path / "twin.pth"
    save_checkpoint(twin_path, model_state=twin, config=twin.cfg, extra={"weights": "train", "model_kind": "rfcn"})
    cfg = small_cfg(DFF_CFG)
    flow = LightFlow(feat_dim=32, width=0.25, output_stride=int(cfg.network.LIGHT_FLOW_OUTPUT_STRIDE))
    flow_path = tmp_path / "flow.pth"
    save_flownet_checkpoint(str(flow_path), flow)
    cfg = small_cfg(DFF_CFG, pretrained_flow=str(flow_path))
    model = build_model("dff", cfg)
    line = _load_init(model, str(twin_path), cfg, torch.Generator().manual_seed(0))
    assert "per-frame twin" in line and str(flow_path) in line
    assert torch.equal(model.backbone.features[3].conv[0][0].weight, twin.backbone.features[3].conv[0][0].weight)
    assert torch.equal(model.rfcn_head.thin.weight, twin.rfcn_head.thin.weight)
    assert torch.equal(model.flownet.conv1.weight, flow.conv1.weight)
    x = torch.rand(1, 32, 4, 5)
    with torch.no_grad():  # the GRU starts as the identity: the model begins as plain DFF
        assert torch.allclose(model.aggregate(x, x), x, atol=1e-6)


@pytest.mark.slow
def test_export_changes_test_settings_and_refuses_network_keys(tmp_path):
    twin = build_model("rfcn", small_cfg(RFCN_CFG))
    src = tmp_path / "twin.pth"
    save_checkpoint(src, model_state=twin, config=twin.cfg, extra={"weights": "test", "model_kind": "rfcn"})
    dst = tmp_path / "out.pth"
    cmd = [sys.executable, "tools/export_model.py", str(src), str(dst), "--half"]
    p = subprocess.run([*cmd, "--set", "TEST.RPN_PRE_NMS_TOP_N=300"], cwd=REPO, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert checkpoint_config(dst)["TEST"]["RPN_PRE_NMS_TOP_N"] == 300
    assert checkpoint_config(src)["TEST"]["RPN_PRE_NMS_TOP_N"] == 200
    p = subprocess.run([*cmd, "--set", "network.HEAD=rfcn"], cwd=REPO, capture_output=True, text=True)
    assert p.returncode == 2 and "network.HEAD" in p.stderr


@pytest.fixture(scope="module")
def benchmark_main():
    return runpy.run_path(str(REPO / "tools" / "benchmark.py"))["main"]


def test_benchmark_defaults_to_the_embedded_mobile_dff_against_its_twin(benchmark_main, tmp_path):
    out = tmp_path / "bench.json"
    rc = benchmark_main(["--frames", "3", "--key-intervals", "2", "--device", "cpu", "--no-end-to-end",
                         "--json", str(out)])
    assert rc == 0
    report = json.loads(out.read_text())
    assert report["input"]["backbone"] == "mobilenet_v2" and report["input"]["network_input"][0] == 320
    assert report["per_frame_model"].endswith("rfcn_mobile_synthetic.pth")
    row = report["intervals"]["2"]
    assert row["key_frames"] == 2 and row["stages"]["aggregate_ms"] > 0  # the ConvGRU ran on the second key frame


def test_benchmark_per_frame_model_must_see_the_same_input(benchmark_main, tmp_path, capsys):
    cfg = small_cfg(RFCN_CFG)
    update_config(cfg, {"SCALES": [160, 256]}, "test")
    twin = build_model("rfcn", cfg)
    path = tmp_path / "twin.pth"
    save_checkpoint(path, model_state=twin, config=cfg, extra={"weights": "test", "model_kind": "rfcn"})
    rc = benchmark_main(["--model", str(REPO / "data/models/dff_mobile_synthetic.pth"), "--per-frame-model", str(path),
                         "--frames", "2", "--key-intervals", "2", "--device", "cpu", "--no-end-to-end"])
    assert rc == 2
    assert "would not run on the same input" in capsys.readouterr().err
