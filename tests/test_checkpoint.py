"""MXNet <-> PyTorch name mapping, loading ``.params`` into a model, MXNet and native checkpoint writing."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from torch import nn

from dff.config import default_config
from dff.utils.checkpoint import (
    CheckpointError,
    bbox_test_params,
    detect_format,
    load_checkpoint,
    load_model_weights,
    load_mxnet_checkpoint,
    mxnet_to_torch_name,
    save_checkpoint,
    save_mxnet_checkpoint,
    torch_to_mxnet_name,
)
from dff.utils.fixture_weights import make_params
from dff.utils.mxnet_params import process_test_params, read_params, write_params

V2_FILE = "params/dff_tiny-0001.params"
LEGACY_FILE = "params/dff_tiny_legacy-0001.params"
# do_checkpoint's de-normalisation for the 2 class-agnostic classes (README section 5)
STDS = (0.1, 0.1, 0.2, 0.2) * 2


# ---------------------------------------------------------------- helpers
class _Node(nn.Module):
    pass


def _model_from(tensors: dict[str, np.ndarray], dtype: torch.dtype = torch.float32) -> nn.Module:
    """A module tree whose state_dict has exactly ``tensors``' keys (BN statistics as buffers), in that order."""
    root = _Node()
    for key, value in tensors.items():
        *path, attr = key.split(".")
        node = root
        for part in path:
            if not hasattr(node, part):
                node.add_module(part, _Node())
            node = getattr(node, part)
        t = torch.tensor(np.asarray(value), dtype=dtype)
        if attr.startswith("running_"):
            node.register_buffer(attr, t)
        else:
            node.register_parameter(attr, nn.Parameter(t))
    return root


def _torch_state(mx_params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {mxnet_to_torch_name(k): v for k, v in mx_params.items()}


class _Stem(nn.Module):
    """Real torch layers named like the reference's ResNet stem and one residual branch."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Module()
        self.backbone.conv1 = nn.Conv2d(3, 8, 7, bias=False)
        self.backbone.bn_conv1 = nn.BatchNorm2d(8)
        self.backbone.res2a = nn.Module()
        self.backbone.res2a.branch2b = nn.Conv2d(8, 8, 3, bias=False)
        self.rpn_head = nn.Module()
        self.rpn_head.rpn_cls_score = nn.Conv2d(8, 18, 1)


_STEM_SHAPES = {
    "arg:conv1_weight": (8, 3, 7, 7), "arg:bn_conv1_gamma": (8,), "arg:bn_conv1_beta": (8,),
    "arg:res2a_branch2b_weight": (8, 8, 3, 3), "arg:rpn_cls_score_weight": (18, 8, 1, 1),
    "arg:rpn_cls_score_bias": (18,), "aux:bn_conv1_moving_mean": (8,), "aux:bn_conv1_moving_var": (8,),
}


@pytest.fixture()
def stem_file(tmp_path):
    params = make_params(_STEM_SHAPES)
    params["arg:fc1000_weight"] = np.ones((4, 8), np.float32)  # an ImageNet classifier the model lacks
    path = tmp_path / "stem-0000.params"
    write_params(path, params)
    return path, params


# ---------------------------------------------------------------- name mapping
def test_all_dff_names_map_injectively_and_back(reference_dir):
    entries = json.loads((reference_dir / "model/dff_all_params.json").read_text())
    names = [e["key"] for e in entries]
    assert len(names) == 578
    torch_names = [mxnet_to_torch_name(n) for n in names]
    assert [n for n, t in zip(names, torch_names) if t is None] == []
    assert len(set(torch_names)) == len(names)
    assert [torch_to_mxnet_name(t) for t in torch_names] == names
    tops = {t.split(".")[0] for t in torch_names}
    assert tops == {"backbone", "feat_conv_3x3", "rpn_head", "rfcn_head", "flownet"}
    assert sum(t.startswith("flownet.") for t in torch_names) == 48  # docs/design.md §4.1: the 48 FlowNet parameters


@pytest.mark.parametrize("mx,pt", [
    ("arg:conv1_weight", "backbone.conv1.weight"),
    ("arg:bn_conv1_gamma", "backbone.bn_conv1.weight"),
    ("arg:bn_conv1_beta", "backbone.bn_conv1.bias"),
    ("aux:bn_conv1_moving_mean", "backbone.bn_conv1.running_mean"),
    ("aux:bn_conv1_moving_var", "backbone.bn_conv1.running_var"),
    ("arg:res2a_branch1_weight", "backbone.res2a.branch1.weight"),
    ("arg:res3b1_branch2a_weight", "backbone.res3b1.branch2a.weight"),
    ("arg:bn4b22_branch2c_beta", "backbone.res4b22.bn_branch2c.bias"),
    ("aux:bn5c_branch2b_moving_var", "backbone.res5c.bn_branch2b.running_var"),
    ("arg:feat_conv_3x3_bias", "feat_conv_3x3.bias"),
    ("arg:rpn_cls_score_weight", "rpn_head.rpn_cls_score.weight"),
    ("arg:rpn_bbox_pred_bias", "rpn_head.rpn_bbox_pred.bias"),
    ("arg:rfcn_cls_weight", "rfcn_head.rfcn_cls.weight"),
    ("arg:rfcn_bbox_bias", "rfcn_head.rfcn_bbox.bias"),
    ("arg:flow_conv1_weight", "flownet.flow_conv1.weight"),
    ("arg:conv3_1_bias", "flownet.conv3_1.bias"),
    ("arg:Convolution5_scale_bias", "flownet.Convolution5_scale.bias"),
    ("arg:upsample_flow3to2_weight", "flownet.upsample_flow3to2.weight"),
    ("arg:deconv5_weight", "flownet.deconv5.weight"),
])
def test_mapping_examples(mx, pt):
    assert mxnet_to_torch_name(mx) == pt
    assert mxnet_to_torch_name(mx.split(":", 1)[1]) == pt  # bare names work too
    assert torch_to_mxnet_name(pt) == mx


@pytest.mark.parametrize("mx", [
    "arg:fc1000_weight", "arg:rfcn_bbox_weight_test", "arg:bn_conv1_weight", "aux:conv1_weight",
    "arg:bn_conv1_moving_mean", "arg:res2a_branch3_weight", "arg:res2a_branch2a_gamma", "foo:conv1_weight",
    "conv1", "arg:conv7_weight",
])
def test_mapping_rejects_foreign_names(mx):
    assert mxnet_to_torch_name(mx) is None


@pytest.mark.parametrize("pt", [
    "backbone.bn_conv1.num_batches_tracked", "backbone.conv1.running_mean", "backbone.res2a.branch2a.gamma",
    "fc.weight", "weight", "backbone.res2a.bn_branch2a.weight.extra",
])
def test_inverse_mapping_rejects_foreign_keys(pt):
    assert torch_to_mxnet_name(pt) is None


# ---------------------------------------------------------------- loading MXNet files
@pytest.mark.parametrize("fname", [V2_FILE, LEGACY_FILE])
def test_load_fixture_uses_test_weights(reference_dir, fname):
    raw = read_params(reference_dir / fname)
    processed = process_test_params(raw)
    # a float64 model: the copy must follow the model's dtype
    model = _model_from({k: np.zeros_like(v) for k, v in _torch_state(processed).items()}, dtype=torch.float64)
    report = load_mxnet_checkpoint(model, reference_dir / fname)
    assert report.complete and report.unexpected == [] and len(report.loaded) == 12
    state = model.state_dict()
    assert state["rfcn_head.rfcn_bbox.weight"].dtype == torch.float64
    np.testing.assert_array_equal(state["rfcn_head.rfcn_bbox.weight"].numpy(), raw["arg:rfcn_bbox_weight_test"])
    np.testing.assert_array_equal(state["rfcn_head.rfcn_bbox.bias"].numpy(), raw["arg:rfcn_bbox_bias_test"])
    np.testing.assert_array_equal(state["backbone.bn_conv1.running_var"].numpy(), raw["aux:bn_conv1_moving_var"])
    np.testing.assert_array_equal(state["flownet.upsample_flow6to5.weight"].numpy(),
                                  raw["arg:upsample_flow6to5_weight"])


def test_load_into_real_layers_reports_extra_keys(stem_file):
    path, params = stem_file
    model = _Stem()
    report = load_model_weights(model, path)
    assert report.format == "mxnet"
    assert report.unexpected == ["arg:fc1000_weight"]  # allowed, like MXNet, but reported
    assert report.ignored_missing == ["backbone.bn_conv1.num_batches_tracked"]
    assert report.missing == [] and report.mismatched == []
    for key, value in params.items():
        if key != "arg:fc1000_weight":
            np.testing.assert_array_equal(model.state_dict()[mxnet_to_torch_name(key)].numpy(), value)
    assert "fc1000" in report.summary()
    with pytest.raises(CheckpointError, match="unexpected 1 \\[arg:fc1000_weight\\]"):
        load_mxnet_checkpoint(_Stem(), path, allow_unexpected=False)
    with pytest.raises(CheckpointError, match="num_batches_tracked"):
        load_mxnet_checkpoint(_Stem(), path, ignore_missing=())


def test_missing_and_mismatched_keys_fail_and_leave_model_untouched(tmp_path, stem_file):
    path, params = stem_file
    model = _Stem()
    model.rpn_head.rpn_bbox_pred = nn.Conv2d(8, 36, 1)  # not in the file
    model.backbone.res2a.branch2b = nn.Conv2d(8, 4, 3, bias=False)  # wrong shape
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError) as info:
        load_mxnet_checkpoint(model, path)
    msg = str(info.value)
    assert msg.startswith(str(path) + ": ") and "\n" not in msg
    assert ("missing 2 [arg:rpn_bbox_pred_weight (rpn_head.rpn_bbox_pred.weight), "
            "arg:rpn_bbox_pred_bias (rpn_head.rpn_bbox_pred.bias)]") in msg
    assert "arg:res2a_branch2b_weight (backbone.res2a.branch2b.weight): file (8, 8, 3, 3) vs model (4, 8, 3, 3)" in msg
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # non-strict: what fits is loaded, the rest is reported
    report = load_mxnet_checkpoint(model, path, strict=False)
    assert not report.complete
    assert report.missing == ["rpn_head.rpn_bbox_pred.weight", "rpn_head.rpn_bbox_pred.bias"]
    assert len(report.mismatched) == 1 and len(report.loaded) == 7
    np.testing.assert_array_equal(model.backbone.conv1.weight.detach().numpy(), params["arg:conv1_weight"])


def test_error_lists_first_twenty_names_and_the_count(tmp_path):
    model = _model_from({f"flownet.conv{i}.weight": np.zeros(1, np.float32) for i in range(2, 32)})
    path = tmp_path / "empty.params"
    write_params(path, {})
    with pytest.raises(CheckpointError, match=r"missing 30 \[.*, \.\.\. and 10 more\]"):
        load_mxnet_checkpoint(model, path)


def test_params_dict_input_and_dtype_kind_mismatch():
    model = _model_from({"feat_conv_3x3.bias": np.zeros(4, np.float32)})
    with pytest.raises(CheckpointError, match="file dtype int32 vs model torch.float32"):
        load_mxnet_checkpoint(model, {"arg:feat_conv_3x3_bias": np.arange(4, dtype=np.int32)})
    report = load_mxnet_checkpoint(model, {"arg:feat_conv_3x3_bias": np.arange(4, dtype=np.float16)})
    assert report.loaded == ["feat_conv_3x3.bias"] and report.source == "<mxnet params>"
    assert model.feat_conv_3x3.bias.tolist() == [0.0, 1.0, 2.0, 3.0]


def test_corrupt_mxnet_file_is_a_checkpoint_error(reference_dir, tmp_path):
    path = tmp_path / "cut.params"
    path.write_bytes((reference_dir / V2_FILE).read_bytes()[:5000])
    with pytest.raises(CheckpointError, match=r"cut\.params: byte \d+: truncated file"):
        load_model_weights(_Stem(), path)
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x00" * 16)
    with pytest.raises(CheckpointError, match="junk.bin: unknown checkpoint format"):
        load_model_weights(_Stem(), junk)


# ---------------------------------------------------------------- writing MXNet files
def test_bbox_folding_reproduces_do_checkpoint(reference_dir):
    raw = read_params(reference_dir / V2_FILE)
    wt, bt = bbox_test_params(raw["arg:rfcn_bbox_weight"], raw["arg:rfcn_bbox_bias"], np.zeros(8), STDS)
    assert wt.dtype == np.float32 and bt.dtype == np.float32
    assert np.array_equal(wt, raw["arg:rfcn_bbox_weight_test"])
    assert np.array_equal(bt, raw["arg:rfcn_bbox_bias_test"])
    with pytest.raises(ValueError, match="multiple of the number of stds"):
        bbox_test_params(raw["arg:rfcn_bbox_weight"], raw["arg:rfcn_bbox_bias"], np.zeros(5), [0.1] * 5)


@pytest.mark.parametrize("fname,layout", [(V2_FILE, "v2"), (LEGACY_FILE, "legacy")])
def test_save_mxnet_checkpoint_reproduces_the_reference_file(reference_dir, tmp_path, fname, layout):
    """A model holding the fixture's normalised weights, saved with the training stds, gives the exact file
    MXNet's ``do_checkpoint`` wrote (same keys, order, _test folding and bytes)."""
    raw = read_params(reference_dir / fname)
    model = _model_from(_torch_state({k: v for k, v in raw.items() if "_test" not in k}))
    out = tmp_path / "saved-0001.params"
    save_mxnet_checkpoint(model, out, layout=layout, bbox_stds=STDS)
    assert out.read_bytes() == (reference_dir / fname).read_bytes()


def test_save_mxnet_checkpoint_round_trip_real_layers(tmp_path):
    model = _Stem()
    with torch.no_grad():
        for p in model.state_dict().values():
            if p.is_floating_point():
                p.copy_(torch.randn_like(p))
    out = tmp_path / "stem.params"
    save_mxnet_checkpoint(model, out)
    saved = read_params(out)
    assert list(saved) == ["arg:conv1_weight", "arg:bn_conv1_gamma", "arg:bn_conv1_beta",
                           "arg:res2a_branch2b_weight", "arg:rpn_cls_score_weight", "arg:rpn_cls_score_bias",
                           "aux:bn_conv1_moving_mean", "aux:bn_conv1_moving_var"]
    fresh = _Stem()
    report = load_mxnet_checkpoint(fresh, out)
    assert report.complete and report.unexpected == []
    for k, v in model.state_dict().items():
        if not k.endswith("num_batches_tracked"):
            assert torch.equal(fresh.state_dict()[k], v), k
    model.extra = nn.Linear(2, 2)
    with pytest.raises(CheckpointError, match=r"without an MXNet name 2 \[extra.weight, extra.bias\]"):
        save_mxnet_checkpoint(model, tmp_path / "bad.params")
    assert not (tmp_path / "bad.params").exists()


# ---------------------------------------------------------------- native checkpoints
def test_native_round_trip_with_extra_state(tmp_path):
    torch.manual_seed(0)
    model = _Stem()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    opt.step()
    path = tmp_path / "ckpt.pth"
    cfg = default_config()
    save_checkpoint(path, model_state=model.state_dict(), config=cfg,
                    extra={"optimizer": opt.state_dict(), "epoch": 3, "rng": {"torch": torch.get_rng_state()}})
    assert os.listdir(tmp_path) == ["ckpt.pth"]
    assert detect_format(path) == "native"
    ckpt = load_checkpoint(path)
    assert ckpt["format"] == "dff-native" and ckpt["version"] == 1 and ckpt["epoch"] == 3
    assert ckpt["config"] == cfg.to_dict()
    assert torch.equal(ckpt["rng"]["torch"], torch.get_rng_state())
    opt2 = torch.optim.SGD(_Stem().parameters(), lr=0.1, momentum=0.9)
    opt2.load_state_dict(ckpt["optimizer"])
    fresh = _Stem()
    report = load_model_weights(fresh, path)
    assert report.format == "native" and report.complete and report.unexpected == []
    for k, v in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k


def test_format_is_detected_by_content_not_extension(tmp_path, stem_file):
    _, params = stem_file
    native_named_params = tmp_path / "native.params"
    save_checkpoint(native_named_params, model_state=_Stem())
    mxnet_named_pth = tmp_path / "mxnet.pth"
    write_params(mxnet_named_pth, params)
    assert detect_format(native_named_params) == "native"
    assert detect_format(mxnet_named_pth) == "mxnet"
    assert load_model_weights(_Stem(), native_named_params).format == "native"
    assert load_model_weights(_Stem(), mxnet_named_pth).format == "mxnet"
    with pytest.raises(CheckpointError, match="is an MXNet .params file"):
        load_checkpoint(mxnet_named_pth)


def test_native_key_mismatches(tmp_path):
    path = tmp_path / "n.pth"
    model = _Stem()
    model.extra = nn.Linear(2, 2)
    save_checkpoint(path, model_state=model)
    with pytest.raises(CheckpointError, match=r"unexpected 2 \[extra.weight, extra.bias\]"):
        load_model_weights(_Stem(), path)  # a native file comes from this model: extras are an error
    assert load_model_weights(_Stem(), path, allow_unexpected=True).unexpected == ["extra.weight", "extra.bias"]
    bigger = _Stem()
    bigger.more = nn.Linear(3, 3)
    with pytest.raises(CheckpointError, match=r"n\.pth: .*missing 2 \[more.weight, more.bias\]"):
        load_model_weights(bigger, tmp_path / "n.pth", allow_unexpected=True)


def test_save_rejects_unsafe_content_and_keeps_old_file(tmp_path):
    path = tmp_path / "keep.pth"
    save_checkpoint(path, model_state=_Stem(), extra={"epoch": 1})
    before = path.read_bytes()
    with pytest.raises(ValueError, match=r"\['rng'\]\['np'\]: numpy.ndarray is not weights_only-safe"):
        save_checkpoint(path, model_state=_Stem(), extra={"rng": {"np": np.zeros(3)}})
    with pytest.raises(ValueError, match="clash with the reserved keys"):
        save_checkpoint(path, model_state=_Stem(), extra={"model": 1})
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["keep.pth"]


@pytest.mark.parametrize("damage", ["truncate", "garble", "version", "format"])
def test_corrupt_native_checkpoint(tmp_path, damage):
    path = tmp_path / "bad.pth"
    if damage in ("truncate", "garble"):
        save_checkpoint(path, model_state=_Stem())
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2] if damage == "truncate" else data[:4] + bytes(len(data) - 4))
        match = r"bad\.pth: corrupt or unreadable native checkpoint"
    elif damage == "version":
        torch.save({"format": "dff-native", "version": 2, "model": {}}, path)
        match = r"bad\.pth: checkpoint version 2 is not supported"
    else:
        torch.save({"model": {}}, path)
        match = r"bad\.pth: not a dff-native checkpoint"
    with pytest.raises(CheckpointError, match=match):
        load_model_weights(_Stem(), path)
