"""The mobile DFF as its paper builds it (issue #24): Light Flow at half resolution with output stride 4 and its
flow on the feature's grid, and the ConvGRU's training over a chain of key frames with DET images as static
clips."""
import math

import cv2
import numpy as np
import pytest
import torch
from torch.nn import functional as F

from dff.config import ConfigError, default_config, load_config, update_config
from dff.dataset.loader import TrainDataset
from dff.models.dff import DFF
from dff.models.light_flow import LightFlow, half_resolution
from dff.utils.fixture_weights import fixture_state_dict


@pytest.mark.parametrize("size", [(64, 96), (71, 101), (17, 33)])
def test_half_resolution_is_the_2x2_mean_with_ceil_sizes(size):
    x = torch.randn(2, 6, *size)
    assert torch.allclose(half_resolution(x), F.avg_pool2d(x, 2, 2, ceil_mode=True), atol=1e-6)


def test_light_flow_stride_4_predicts_at_1_8_and_returns_the_feature_grid():
    net = LightFlow(feat_dim=8, width=0.25, output_stride=4)
    seen = {}
    net.predict2.register_forward_hook(lambda m, i, o: seen.update(predict2=o.shape))
    for h, w in ((64, 96), (71, 101), (81, 129)):
        flow, scale = net(torch.randn(1, 3, h, w), torch.randn(1, 3, h, w))
        grid = (math.ceil(h / 16), math.ceil(w / 16))
        assert flow.shape == (1, 2, *grid) and scale.shape == (1, 8, *grid)
    # the finest prediction is at stride 4 of the half-resolution input (1/8 of the frame)
    net(torch.randn(1, 3, 64, 96), torch.randn(1, 3, 64, 96))
    assert seen["predict2"][-2:] == (math.ceil(64 / 8), math.ceil(96 / 8))
    flow.square().mean().backward()
    for name in ("predict2", "dec2", "predict5"):
        layer = getattr(net, name)
        weight = layer.weight if hasattr(layer, "weight") else layer.pointwise.weight
        assert weight.grad.abs().sum() > 0, name  # the averaged prediction trains every resolution
    net.zero_flow_output()
    assert torch.equal(net(torch.randn(1, 3, 64, 96), torch.randn(1, 3, 64, 96))[0], torch.zeros(1, 2, 4, 6))


def test_light_flow_stride_8_is_the_earlier_network_and_others_are_refused():
    assert not hasattr(LightFlow(feat_dim=8, width=0.25), "predict2")  # the embedded models' layers
    with pytest.raises(ValueError, match="LIGHT_FLOW_OUTPUT_STRIDE"):
        LightFlow(feat_dim=8, output_stride=2)


def _cfg(**train):
    c = default_config()
    update_config(c, {"network": {"BACKBONE": "resnet_v1_tiny", "DFF_FEAT_DIM": 32, "GRU_AGGREGATION": True,
                                  "PIXEL_MEANS": [103.06, 115.90, 123.15]},
                      "SCALES": [64, 96], "TRAIN": {"RPN_MIN_SIZE": 0, **train}})
    return c


def test_a_static_clip_is_the_chain_of_copies_computed_once():
    torch.manual_seed(0)
    m = DFF(_cfg())
    m.get_submodule("aggregation").init_identity(update_gate_bias=0.0)  # z = 0.5: every step of the chain counts
    img = torch.randn(1, 3, 64, 96) * 40
    calls = []
    extract = m.extract_feature
    m.extract_feature = lambda x: calls.append(x.shape[0]) or extract(x)
    static = {"data_ref": img, "data_prev": img, "prev_flag": 0, "static_keys": 3}
    chain = {"data_ref": img, "data_prev": img.repeat(3, 1, 1, 1), "prev_flag": 0}
    feat_static = m.scheme.key_frame_feature(m, static)
    assert calls == [1]  # one feature pass for the whole clip
    grad_static = torch.autograd.grad(feat_static.square().sum(), list(m.aggregation.parameters()))
    feat_chain = m.scheme.key_frame_feature(m, chain)
    grad_chain = torch.autograd.grad(feat_chain.square().sum(), list(m.aggregation.parameters()))
    assert torch.allclose(feat_static, feat_chain, atol=1e-4)
    for a, b in zip(grad_static, grad_chain):
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-5)
    one = m.scheme.key_frame_feature(m, {**static, "static_keys": 1})
    assert not torch.allclose(one, feat_static, atol=1e-4)  # the clip's length reaches the result


def test_the_loader_makes_det_images_static_clips_only_when_asked(tmp_path):
    path = str(tmp_path / "det.jpg")
    cv2.imwrite(path, np.full((48, 64, 3), 128, np.uint8))
    det = {"image": path, "flipped": False, "boxes": np.array([[4, 4, 30, 30]], np.float32),
           "gt_classes": np.array([1])}
    clip = TrainDataset([det], _cfg(THP_PREV_KEYS=7, STATIC_CLIPS=True), pairs=True)[(0, 0)]
    assert clip["prev_flag"] == 0 and clip["static_keys"] == 7
    assert torch.equal(clip["data_prev"], clip["data_ref"]) and clip["eq_flag"] == 1
    plain = TrainDataset([det], _cfg(THP_PREV_KEYS=7), pairs=True)[(0, 0)]
    assert plain["prev_flag"] == 1 and "static_keys" not in plain


def test_the_paper_config_trains_the_published_recipe():
    cfg = load_config("experiments/dff_rfcn/ablations/dff_mobile_synthetic_paper.yaml", [])
    assert int(cfg.network.LIGHT_FLOW_OUTPUT_STRIDE) == 4
    assert int(cfg.TRAIN.THP_PREV_KEYS) + 1 == 8  # n = 8 key frames
    assert cfg.TRAIN.THP_PREV_KEY_MIN_OFFSET == cfg.TRAIN.THP_PREV_KEY_MAX_OFFSET == -10  # l = 10
    assert cfg.TRAIN.STATIC_CLIPS is True
    with pytest.raises(ConfigError):
        update_config(cfg, {"network": {"LIGHT_FLOW_OUTPUT_STRIDE": 8}}, "test", fixed=("network.LIGHT_FLOW_OUTPUT_STRIDE",))


def test_fixture_weights_fill_the_mobile_parts_deterministically():
    """`tools/benchmark.py --cfg <a mobile config>` times deterministic weights: the port's layers (no MXNet names)
    get them too."""

    cfg = load_config("experiments/dff_rfcn/cfgs/dff_mobile_synthetic.yaml", [])
    update_config(cfg, {"network": {"MOBILENET_WIDTH": 0.35, "FLOWNET_WIDTH": 0.25, "DFF_FEAT_DIM": 32,
                                    "LIGHT_HEAD_FC": 32}}, "test")
    model = DFF(cfg)
    a, b = fixture_state_dict(model), fixture_state_dict(DFF(cfg))
    model.load_state_dict(a)  # strict: every key filled, with its shape
    assert all(torch.equal(a[k], b[k]) for k in a)
    bn = "backbone.features.1.conv.0.1"
    assert a[f"{bn}.running_var"].min() >= 0.5 and torch.allclose(a[f"{bn}.weight"].mean(), torch.tensor(1.0), atol=0.1)
    assert a["flownet.conv1.weight"].std() > 0
