"""The one way to make a model: build_model / load_model (dff.models.builder)."""
from __future__ import annotations

import pathlib

import pytest
import torch

from dff.config import load_config, update_config
from dff.models.builder import build_model, fold_bbox_state, load_model
from dff.models.dff import DFF
from dff.models.rfcn import RFCN
from dff.utils.checkpoint import CheckpointError, save_checkpoint, save_mxnet_checkpoint

REPO = pathlib.Path(__file__).resolve().parents[1]
RFCN_TINY = REPO / "experiments" / "rfcn" / "cfgs" / "rfcn_synthetic_tiny.yaml"
DFF_TINY = REPO / "experiments" / "dff_rfcn" / "cfgs" / "dff_rfcn_synthetic_tiny.yaml"


def _model(kind: str, seed: int = 0):
    torch.manual_seed(seed)
    return build_model(kind, load_config(DFF_TINY if kind == "dff" else RFCN_TINY)).eval()


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_build_model_kinds():
    assert type(_model("rfcn")) is RFCN and _model("rfcn").kind == "rfcn"
    assert type(_model("dff")) is DFF and _model("dff").kind == "dff"
    with pytest.raises(ValueError, match="model kind"):
        build_model("fgfa", load_config(RFCN_TINY))


def test_native_checkpoint_names_its_kind_and_config(tmp_path):
    src = _model("dff", seed=1)
    cfg = src.cfg
    update_config(cfg, {"TEST": {"KEY_FRAME_INTERVAL": 7}})
    path = tmp_path / "m.pth"
    save_checkpoint(path, model_state=src, config=cfg, extra={"weights": "test", "model_kind": "dff"})
    model, loaded_cfg = load_model(path, load_config(RFCN_TINY))  # the file's own config wins
    assert model.kind == "dff" and not model.training
    assert loaded_cfg.TEST.KEY_FRAME_INTERVAL == 7
    assert _same_weights(model, src)
    with pytest.raises(CheckpointError, match="is a dff checkpoint, not a rfcn one"):
        load_model(path, kind="rfcn")


def test_training_state_gets_the_box_normalisation_folded_in(tmp_path):
    src = _model("rfcn", seed=2)
    path = tmp_path / "s.pth"
    save_checkpoint(path, model_state=src, config=src.cfg, extra={"weights": "train", "model_kind": "rfcn"})
    model, cfg = load_model(path)
    expected = fold_bbox_state(src.state_dict(), cfg)
    got = model.state_dict()
    assert torch.equal(got["rfcn_head.rfcn_bbox.weight"], expected["rfcn_head.rfcn_bbox.weight"])
    assert not torch.equal(got["rfcn_head.rfcn_bbox.weight"], src.state_dict()["rfcn_head.rfcn_bbox.weight"])


def test_mxnet_file_needs_the_kind_and_a_config(tmp_path):
    src = _model("rfcn", seed=3)
    path = tmp_path / "rfcn-0000.params"
    save_mxnet_checkpoint(src, path)
    with pytest.raises(CheckpointError, match="does not say which model"):
        load_model(path, load_config(RFCN_TINY))
    with pytest.raises(CheckpointError, match="carries no config"):
        load_model(path, kind="rfcn")
    model, _ = load_model(path, load_config(RFCN_TINY), kind="rfcn")
    assert model.kind == "rfcn" and _same_weights(model, src)


def test_missing_file_and_fixture_weights(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "absent.pth", kind="dff")
    with pytest.raises(ValueError, match="needs the config and the model kind"):
        load_model("fixture")
    a, _ = load_model("fixture", load_config(DFF_TINY), kind="dff")
    b, _ = load_model("fixture", load_config(DFF_TINY), kind="dff")
    assert _same_weights(a, b)  # deterministic
