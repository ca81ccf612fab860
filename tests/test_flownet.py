"""FlowNet (dff.models.flownet): parity with the MXNet fixtures, sizes, pooling option, scale init, gradients."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from dff.models.flownet import FlowNet
from dff.parity import flownet as flownet_parity

FLOWNET_PARAMS = 38_876_194  # docs/design.md §2.1 / 4.5, scale conv included
PROBE_SLICES = {f"{n}__slice" for n in ("resize_data_output", "flow_conv1_output", "ReLU2_output", "ReLU10_output",
                                        "Concat2_output", "Concat3_output", "Concat4_output", "Concat5_output",
                                        "resize_concat5_output")}


@pytest.fixture(scope="module")
def random_net() -> FlowNet:
    torch.manual_seed(0)
    return FlowNet().eval()


@pytest.fixture(scope="module")
def random_net_full(random_net) -> FlowNet:
    """``random_net`` with ``avg_pool='full'``."""
    net = FlowNet(avg_pool="full").eval()
    net.load_state_dict(random_net.state_dict())
    return net


def _frames(h: int, w: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    # preprocessed pixels: mean-subtracted, roughly +-128
    return (torch.randn(1, 3, h, w, generator=g) * 60, torch.randn(1, 3, h, w, generator=g) * 60)


# ---------------------------------------------------------------------------------------------- fixtures
def test_parity_with_mxnet_cur_frames(reference_dir):
    rows = list(flownet_parity.cases(str(reference_dir), "fallback"))
    failed = [r.line() for r in rows if not r.passed]
    assert not failed, "\n".join(failed)
    by_case: dict[str, set[str]] = {}
    for r in rows:
        by_case.setdefault(r.case, set()).add(r.tensor)
    frames = sorted(p.name for p in (reference_dir / "model").glob("dff_cur_frame*.npz") if "probes" not in p.name)
    assert len(frames) == 2 and set(by_case) == {f"model/{f[:-4]}/flownet" for f in frames}
    for case, tensors in by_case.items():
        assert tensors == set(flownet_parity.OUTPUTS) | PROBE_SLICES, case


def test_param_names_and_shapes_match_mxnet(reference_dir):
    entries = {e["key"]: tuple(e["shape"])
               for e in json.loads((reference_dir / "model" / "dff_cur_params.json").read_text())}
    net = FlowNet()
    ours = {"arg:" + FlowNet.mxnet_name(k): tuple(v.shape) for k, v in net.state_dict().items()}
    assert all(entries.get(k) == s for k, s in ours.items()), {k: (s, entries.get(k)) for k, s in ours.items()
                                                              if entries.get(k) != s}
    # everything else in the non-key net belongs to the RPN / R-FCN heads: no FlowNet layer is missing
    assert all(k.startswith(("arg:rpn_", "arg:rfcn_")) for k in set(entries) - set(ours))
    assert sum(p.numel() for p in net.parameters()) == FLOWNET_PARAMS


def test_fixtures_used_valid_count_average_pooling(reference_dir, random_net, random_net_full):
    """225 rows -> 113: the last resize_data row averages 2 pixels; the fixture divides it by 2, not 4."""
    model = reference_dir / "model"
    cur = torch.from_numpy(np.load(model / "inputs_frame1.npz")["data"])
    key = torch.from_numpy(np.load(model / "inputs_frame0.npz")["data"])
    expected = np.load(model / "dff_cur_frame1_probes.npz")["resize_data_output__slice"]
    assert cur.shape[2] % 2 == 1 and expected.shape[1] == math.ceil(cur.shape[2] / 2)
    got = {}
    for net in (random_net, random_net_full):  # resize_data comes before any weight
        with torch.no_grad():
            got[net.avg_pool] = net.forward_probes(cur, key)["resize_data_output"][0, 0:4].numpy()
    np.testing.assert_allclose(got["valid"], expected, rtol=0, atol=1e-6)
    # "full" agrees except in the partial last row, where it is half the fixture
    np.testing.assert_allclose(got["full"][:, :-1], expected[:, :-1], rtol=0, atol=1e-6)
    np.testing.assert_allclose(got["full"][:, -1], expected[:, -1] / 2, rtol=1e-6, atol=1e-7)
    assert np.abs(got["full"][:, -1] - expected[:, -1]).max() > 1e-2


def test_whole_probe_statistics_match_mxnet(reference_dir):
    """The probe files hold only channels 0-3; dff_summary.json has statistics of the whole tensors."""
    model = reference_dir / "model"
    net, problems = flownet_parity.fixture_flownet(model)
    assert not problems, problems
    summary = json.loads((model / "dff_summary.json").read_text())
    key = torch.from_numpy(np.load(model / "inputs_frame0.npz")["data"])
    checked = 0
    cases = sorted(c for c in summary if c.startswith("dff_cur_frame"))
    for case in cases:
        cur = torch.from_numpy(np.load(model / f"inputs_{case.removeprefix('dff_cur_')}.npz")["data"])
        with torch.no_grad():
            got = net.forward_probes(cur, key)
        stats = {**summary[case]["probes"], **summary[case]["outputs"]}
        for name, s in stats.items():
            if name not in got:
                continue
            t = got[name].double()
            assert list(t.shape) == s["shape"], name
            for stat, value in (("mean", t.mean()), ("std", t.std(unbiased=False)), ("min", t.min()), ("max", t.max())):
                assert abs(float(value) - s[stat]) <= 1e-4 + 1e-4 * abs(s[stat]), (case, name, stat, float(value), s[stat])
            checked += 1
    # 9 probes + Convolution5 / flow / scale per frame, both non-key frames
    assert len(cases) == 2 and checked == len(cases) * 12


# ---------------------------------------------------------------------------------------------- sizes
@pytest.mark.parametrize("hw", [(225, 400), (600, 1000), (601, 999), (375, 500), (562, 1000), (600, 901),
                                (600, 1067), (17, 33), (16, 16), (1, 1)])
def test_output_is_feature_map_size(hw):
    h, w = hw
    with torch.device("meta"):  # shapes only
        net = FlowNet(feat_dim=1024)
        x = torch.empty(2, 3, h, w)
        flow, scale = net(x, x)
    assert tuple(flow.shape) == (2, 2, math.ceil(h / 16), math.ceil(w / 16))
    assert tuple(scale.shape) == (2, 1024, math.ceil(h / 16), math.ceil(w / 16))


def test_stage_sizes_at_600x1000():
    """The size column of docs/design.md §2.1."""
    with torch.device("meta"):
        x = torch.empty(1, 3, 600, 1000)
        probes = FlowNet().forward_probes(x, x)
    sizes = {k: tuple(v.shape[1:]) for k, v in probes.items()}
    assert sizes["resize_data_output"] == (6, 300, 500)
    assert sizes["ReLU1_output"] == (64, 150, 250)
    assert sizes["ReLU2_output"] == (128, 75, 125)
    assert sizes["ReLU4_output"] == (256, 38, 63)
    assert sizes["ReLU6_output"] == (512, 19, 32)
    assert sizes["ReLU8_output"] == (512, 10, 16)
    assert sizes["ReLU10_output"] == (1024, 5, 8)
    assert sizes["Concat2_output"] == (1026, 10, 16)
    assert sizes["Concat3_output"] == (770, 19, 32)
    assert sizes["Concat4_output"] == (386, 38, 63)
    assert sizes["Concat5_output"] == (194, 75, 125)
    assert sizes["resize_concat5_output"] == (194, 38, 63)
    assert sizes["_mulscalar0_output"] == (2, 38, 63)


@pytest.mark.parametrize("hw", [(37, 53), (64, 96)])
def test_deconv_equals_mxnet_deconv_p0_then_crop(random_net, hw):
    """ConvTranspose(p=1)+truncate == Deconvolution(k4,s2,p0) + Crop(offset (1,1)) for odd and even skips."""
    with torch.no_grad():
        p = random_net.forward_probes(*_frames(*hw))
        stages = [(2, "ReLU10_output", random_net.deconv5, random_net.upsample_flow6to5),
                  (3, "Concat2_output", random_net.deconv4, random_net.upsample_flow5to4),
                  (4, "Concat3_output", random_net.deconv3, random_net.upsample_flow4to3),
                  (5, "Concat4_output", random_net.deconv2, random_net.upsample_flow3to2)]
        for i, src, deconv, upflow in stages:
            concat = p[f"Concat{i}_output"]
            t, u = concat.shape[-2:]

            def mxnet(x: torch.Tensor, layer: torch.nn.ConvTranspose2d) -> torch.Tensor:
                full = F.conv_transpose2d(x, layer.weight, layer.bias, stride=2, padding=0)
                assert full.shape[-2:] == (2 * x.shape[-2] + 2, 2 * x.shape[-1] + 2)
                return full[:, :, 1:1 + t, 1:1 + u]

            feat = F.leaky_relu(mxnet(p[src], deconv), 0.1)
            flow = mxnet(p[f"Convolution{i - 1}_output"], upflow)
            n_skip = concat.shape[1] - feat.shape[1] - 2
            torch.testing.assert_close(concat[:, n_skip:n_skip + feat.shape[1]], feat, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(concat[:, -2:], flow, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------- avg-pool option
@pytest.fixture(scope="module")
def both_modes(random_net, random_net_full):
    """``(h, w) -> (probes with avg_pool='valid', probes with avg_pool='full')``, same weights and frames."""
    full = random_net_full

    def run(h: int, w: int) -> tuple[dict, dict]:
        frames = _frames(h, w)
        with torch.no_grad():
            return random_net.forward_probes(*frames), full.forward_probes(*frames)
    return run


def _differs_only_in_last_row(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.equal(a[..., :-1, :], b[..., :-1, :]) and not torch.equal(a[..., -1, :], b[..., -1, :])


def test_avg_pool_modes_identical_for_even_sizes(both_modes):
    v, f = both_modes(64, 128)  # Concat5 8x16: both poolings see even sizes
    for name in ("resize_data_output", "resize_concat5_output", "_mulscalar0_output", "Convolution5_scale_output"):
        assert torch.equal(v[name], f[name]), name


def test_avg_pool_modes_differ_only_in_last_row_of_odd_sizes(both_modes):
    # 40 rows: resize_data 20 (even), Concat5 5 rows (odd) -> only resize_concat5's last row is partial
    v, f = both_modes(40, 64)
    assert torch.equal(v["resize_data_output"], f["resize_data_output"])
    assert torch.equal(v["Concat5_output"], f["Concat5_output"])
    assert _differs_only_in_last_row(v["resize_concat5_output"], f["resize_concat5_output"])
    torch.testing.assert_close(f["resize_concat5_output"][..., -1, :], v["resize_concat5_output"][..., -1, :] / 2)
    assert _differs_only_in_last_row(v["Convolution5_scale_output"], f["Convolution5_scale_output"])  # 1x1 conv
    # 33 rows: the partial window is resize_data's last row; the width (64) is even, so columns agree
    v, f = both_modes(33, 64)
    assert _differs_only_in_last_row(v["resize_data_output"], f["resize_data_output"])
    # odd width, even height: the last column
    v, f = both_modes(64, 33)
    a, b = v["resize_data_output"], f["resize_data_output"]
    assert torch.equal(a[..., :-1], b[..., :-1]) and not torch.equal(a[..., -1], b[..., -1])


# ---------------------------------------------------------------------------------------------- scale init, grads
def test_identity_scale_init_gives_scale_one():
    torch.manual_seed(0)
    net = FlowNet(feat_dim=32)
    net.init_scale_identity()
    flow, scale = net(*_frames(48, 80))
    assert scale.shape == (1, 32, 3, 5)
    assert torch.all(scale == 1.0)
    assert flow.abs().sum() > 0
    assert not net.Convolution5_scale.bias.requires_grad
    assert FlowNet.frozen_parameter_names() == ["Convolution5_scale.bias"]


def test_gradients_reach_all_params_but_the_frozen_bias():
    torch.manual_seed(0)
    net = FlowNet(feat_dim=16)
    net.init_scale_identity()
    cur, key = _frames(32, 48)
    cur.requires_grad_(True)
    flow, scale = net(cur, key)
    (flow * torch.randn_like(flow)).sum().add((scale * torch.randn_like(scale)).sum()).backward()
    frozen = set(FlowNet.frozen_parameter_names())
    for name, p in net.named_parameters():
        if name in frozen:
            assert p.grad is None, name
        else:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert cur.grad is not None and cur.grad.abs().sum() > 0


def test_flow_is_2p5_times_convolution5(random_net):
    with torch.no_grad():
        p = random_net.forward_probes(*_frames(32, 48))
        flow, scale = random_net(*_frames(32, 48))
    assert torch.equal(p["_mulscalar0_output"], p["Convolution5_output"] * 2.5)
    assert torch.equal(flow, p["_mulscalar0_output"]) and torch.equal(scale, p["Convolution5_scale_output"])
    # MXNet's flow_conv1_output is the conv, before LeakyReLU ReLU1 (the whole-tensor statistics test
    # above pins this: its fixture min is -1.25)
    assert torch.equal(p["ReLU1_output"], F.leaky_relu(p["flow_conv1_output"], 0.1))
    assert p["flow_conv1_output"].min() < p["ReLU1_output"].min()


def test_bad_input_is_rejected():
    net = FlowNet(feat_dim=8)
    with pytest.raises(ValueError, match="avg_pool"):
        FlowNet(avg_pool="same")
    with pytest.raises(ValueError, match="cur must be"):
        net(torch.zeros(1, 4, 16, 16), torch.zeros(1, 4, 16, 16))
    with pytest.raises(ValueError, match="key"):
        net(torch.zeros(1, 3, 16, 16), torch.zeros(1, 3, 16, 32))
