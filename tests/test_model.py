import json
import math

import pytest
import torch

from dff.config import default_config, update_config
from dff.models.dff import DFF
from dff.models.resnet import ResNetV1
from dff.models.rfcn import RFCN
from dff.parity.model import fixture_state
from dff.utils.checkpoint import CheckpointError, load_model_weights, save_mxnet_checkpoint, torch_to_mxnet_name
from dff.utils.fixture_weights import fixture_state_dict


def _cfg(**network):
    cfg = default_config()
    update_config(cfg, {"network": {"PIXEL_MEANS": [103.06, 115.90, 123.15], **network}, "SCALES": [240, 400],
                        "TEST": {"RPN_MIN_SIZE": 0, "HAS_RPN": True}})
    return cfg


def _names(reference_dir, name):
    return {e["key"]: tuple(e["shape"]) for e in json.loads((reference_dir / "model" / name).read_text())}


@pytest.mark.parametrize("cls, params", [(RFCN, "rfcn_params.json"), (DFF, "dff_all_params.json")])
def test_state_dict_is_exactly_the_reference_parameter_list(reference_dir, cls, params):
    ref = _names(reference_dir, params)
    model = cls(_cfg())
    ours = {torch_to_mxnet_name(k): tuple(v.shape) for k, v in model.state_dict().items()}
    assert None not in ours
    assert set(ours) == set(ref), (sorted(set(ours) - set(ref))[:5], sorted(set(ref) - set(ours))[:5])
    assert ours == ref


@pytest.mark.parametrize("h, w", [(225, 400), (600, 1000), (601, 999), (375, 500), (33, 17)])
def test_feature_map_is_ceil_of_stride_16(h, w):
    net = ResNetV1("resnet_v1_tiny")
    out = net(torch.zeros(1, 3, h, w))
    assert out.shape[-2:] == (math.ceil(h / 16), math.ceil(w / 16))


def test_backbone_variants():
    counts = {a: sum(1 for n, _ in ResNetV1(a).named_children() if n.startswith("res"))
              for a in ("resnet_v1_101", "resnet_v1_50", "resnet_v1_tiny")}
    assert counts == {"resnet_v1_101": 33, "resnet_v1_50": 16, "resnet_v1_tiny": 4}
    r101 = ResNetV1("resnet_v1_101")
    assert hasattr(r101, "res4b22") and hasattr(r101, "res3b3") and hasattr(r101, "res5c")
    assert r101.res5a.branch2b.dilation == (2, 2) and r101.res5a.branch2a.stride == (1, 1)
    assert r101.res4a.branch2a.stride == (2, 2) and r101.res4a.branch2b.stride == (1, 1)
    with pytest.raises(ValueError, match="unknown backbone"):
        ResNetV1("resnet_v1_152")


def test_mxnet_checkpoint_with_test_weights_round_trip(reference_dir, tmp_path):
    """A checkpoint as the reference's do_checkpoint writes it (legacy layout, rfcn_bbox_*_test folded
    with the box stds) loads, and the loaded head outputs the de-normalised deltas."""
    torch.manual_seed(0)
    cfg = _cfg(BACKBONE="resnet_v1_tiny", DFF_FEAT_DIM=64)
    src = RFCN(cfg).eval()
    src.load_state_dict(fixture_state_dict(src))
    stds = (0.1, 0.1, 0.2, 0.2) * 2
    path = tmp_path / "rfcn_vid-0000.params"
    save_mxnet_checkpoint(src, path, layout="legacy", bbox_stds=stds)
    dst = RFCN(cfg).eval()
    load_model_weights(dst, path)
    x = torch.randn(1, 3, 64, 96) * 50
    im_info = torch.tensor([[64.0, 96.0, 1.0]])
    with torch.no_grad():
        a, b = src(x, im_info), dst(x, im_info)
    torch.testing.assert_close(a["cls_prob"], b["cls_prob"])
    per_channel = torch.tensor(stds)
    torch.testing.assert_close(b["bbox_pred"], a["bbox_pred"] * per_channel, rtol=1e-5, atol=1e-6)


def test_mismatched_checkpoint_names_the_parameters(tmp_path):
    cfg = _cfg(BACKBONE="resnet_v1_tiny", DFF_FEAT_DIM=64)
    model = RFCN(cfg)
    state = {torch_to_mxnet_name(k): v.numpy() for k, v in fixture_state_dict(model).items()}
    del state["arg:res3a_branch2b_weight"]
    state["arg:rpn_cls_score_weight"] = state["arg:rpn_cls_score_weight"][:4]
    from dff.utils.mxnet_params import write_params

    path = tmp_path / "bad-0000.params"
    write_params(path, state)
    with pytest.raises(CheckpointError) as e:
        load_model_weights(model, path)
    msg = str(e.value)
    assert "res3a_branch2b" in msg and "rpn_cls_score" in msg and str(path) in msg


def test_fixture_weights_reproduce_reference_sha1(reference_dir):
    import hashlib

    entries = json.loads((reference_dir / "model" / "rfcn_params.json").read_text())
    state = fixture_state(str(reference_dir), "rfcn_params.json")
    bad = [e["key"] for e in entries if hashlib.sha1(state[e["key"]].astype("<f4").tobytes()).hexdigest() != e["sha1"]]
    assert not bad


def test_dff_mxnet_checkpoint_loads_and_gives_the_same_outputs(tmp_path):
    """A DFF checkpoint in the reference's format (all 578 kinds of names incl. FlowNet) loads and the
    non-key path gives the same outputs as the model it was written from."""
    cfg = _cfg(BACKBONE="resnet_v1_tiny", DFF_FEAT_DIM=64)
    src = DFF(cfg).eval()
    src.load_state_dict(fixture_state_dict(src))
    path = tmp_path / "rfcn_dff_flownet_vid-0000.params"
    save_mxnet_checkpoint(src, path, layout="legacy")
    dst = DFF(cfg).eval()
    report = load_model_weights(dst, path)
    assert not report.missing and not report.mismatched
    assert any(k.startswith("flownet.") for k in report.loaded)
    key, cur = torch.randn(1, 3, 64, 96) * 50, torch.randn(1, 3, 64, 96) * 50
    im_info = torch.tensor([[64.0, 96.0, 1.0]])
    with torch.no_grad():
        key_feat = src.extract_feature(key)
        pa, pb = src.propagate(cur, key, key_feat), dst.propagate(cur, key, key_feat)
        a = {**src.detect(pa["feat"], im_info), **pa}
        b = {**dst.detect(pb["feat"], im_info), **pb}
    for k in ("flow", "scale", "feat", "rois", "cls_prob", "bbox_pred"):
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
