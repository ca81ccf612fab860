import json
import pathlib
import runpy

import cv2
import numpy as np
import pytest

from dff.config import (
    MODEL_KEYS,
    ConfigError,
    class_names,
    config_from_dict,
    default_config,
    load_config,
    parse_overrides,
    set_class_names,
    update_config,
)
from dff.dataset.factory import open_dataset

REPO = pathlib.Path(__file__).resolve().parents[1]
CFGS = sorted(REPO.glob("experiments/*/cfgs/*.yaml"))
ABLATIONS = sorted(REPO.glob("experiments/*/ablations/*.yaml"))
EXP = REPO / "experiments"


def test_all_shipped_configs_load():
    assert len(CFGS) >= 4 and len(ABLATIONS) == 14
    for p in CFGS + ABLATIONS:
        cfg = load_config(p)
        assert cfg.SCALES[0][0] > 0 and cfg.dataset.NUM_CLASSES == 31, p
    for p in ABLATIONS:  # deltas: they extend a config instead of copying it
        assert "_BASE_:" in p.read_text() and len(p.read_text().splitlines()) < 20, p


def test_reference_training_values():
    cfg = load_config(REPO / "experiments/dff_rfcn/cfgs/resnet_v1_101_flownet_imagenet_vid_rfcn_end2end_ohem.yaml")
    assert cfg.SCALES == [(600, 1000)]
    assert cfg.TRAIN.lr == 0.00025 and cfg.TRAIN.lr_step == "1.333" and cfg.TRAIN.end_epoch == 2
    assert cfg.TRAIN.BATCH_ROIS == -1 and cfg.TRAIN.BATCH_ROIS_OHEM == 128 and cfg.TRAIN.ENABLE_OHEM
    assert cfg.TEST.RPN_PRE_NMS_TOP_N == 6000 and cfg.TEST.RPN_POST_NMS_TOP_N == 300 and cfg.TEST.RPN_MIN_SIZE == 0
    assert cfg.network.PIXEL_MEANS == [103.06, 115.90, 123.15]
    assert cfg.network.FIXED_PARAMS == ["conv1", "bn_conv1", "res2", "bn2", "gamma", "beta"]
    # defaults the YAML does not set (docs/design.md §8.3)
    assert cfg.TEST.KEY_FRAME_INTERVAL == 10 and cfg.TEST.max_per_image == 300
    assert cfg.TRAIN.MIN_OFFSET == -9 and cfg.TRAIN.MAX_OFFSET == 0 and cfg.TRAIN.wd == 0.0005
    assert cfg.network.DFF_FEAT_DIM == 1024


def test_rfcn_config_differs_only_where_the_spec_says():
    a = load_config(REPO / "experiments/rfcn/cfgs/resnet_v1_101_imagenet_vid_rfcn_end2end_ohem.yaml").to_dict()
    b = load_config(REPO / "experiments/dff_rfcn/cfgs/resnet_v1_101_flownet_imagenet_vid_rfcn_end2end_ohem.yaml").to_dict()
    assert a["dataset"]["test_image_set"] == "VID_val_frames" and b["dataset"]["test_image_set"] == "VID_val_videos"
    assert a["TRAIN"]["model_prefix"] == "rfcn_vid" and a["network"]["pretrained_flow"] == ""
    for k in ("output_path", "symbol"):
        a.pop(k), b.pop(k)
    for d in (a, b):
        d["dataset"].pop("test_image_set"), d["TRAIN"].pop("model_prefix"), d["network"].pop("pretrained_flow")
    assert a == b


@pytest.mark.parametrize("text, key", [
    ("TRAIN:\n  lr_stpe: '1'\n", "TRAIN.lr_stpe"),
    ("TRAINN:\n  lr: 1\n", "TRAINN"),
    ("network:\n  ANCHOR_SCALE: [8]\n", "network.ANCHOR_SCALE"),
])
def test_unknown_key_is_an_error_naming_file_and_key(tmp_path, text, key):
    p = tmp_path / "typo.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert str(p) in msg and f"'{key}'" in msg and "\n" not in msg


def test_bad_yaml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    p = tmp_path / "bad.yaml"
    p.write_text("TRAIN: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(p)
    p.write_text("SCALES: [600]\n")
    with pytest.raises(ConfigError, match="SCALES"):
        load_config(p)


def test_update_and_attribute_access():
    cfg = default_config()
    update_config(cfg, {"TEST": {"KEY_FRAME_INTERVAL": 5}, "SCALES": [240, 400]})
    assert cfg.TEST.KEY_FRAME_INTERVAL == 5 and cfg["TEST"]["KEY_FRAME_INTERVAL"] == 5
    assert cfg.SCALES == [(240, 400)]
    with pytest.raises(AttributeError):
        cfg.TEST.NOPE


# ---- configs as deltas: _BASE_ ------------------------------------------------------------------


def _flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def _changed(path, base):
    """The keys whose loaded value differs between ``path`` and ``base``, with the new values."""
    a, b = _flat(load_config(EXP / base).to_dict()), _flat(load_config(EXP / path).to_dict())
    assert a.keys() == b.keys()
    return {k: b[k] for k in a if a[k] != b[k]}


# each derived config against the one it varies: exactly these keys change (written by hand, from the
# experiments' descriptions in docs/training.md)
RFCN_TINY, DFF_TINY = "rfcn/cfgs/rfcn_synthetic_tiny.yaml", "dff_rfcn/cfgs/dff_rfcn_synthetic_tiny.yaml"
DERIVED = [
    ("dff_rfcn/cfgs/dff_rfcn_synthetic_tiny.yaml", RFCN_TINY,
     {"symbol": "resnet_v1_tiny_flownet_rfcn", "output_path": "./output/dff_rfcn/synthetic",
      "network.FLOWNET_WIDTH": 0.25, "TRAIN.model_prefix": "dff_rfcn_vid", "dataset.test_image_set": "VID_val_videos"}),
    ("rfcn/ablations/rfcn_synthetic_tiny_320.yaml", RFCN_TINY,
     {"SCALES": [(320, 512)], "output_path": "./output/rfcn/synthetic_320"}),
    ("rfcn/ablations/rfcn_synthetic_tiny_round2.yaml", RFCN_TINY,
     {"network.pretrained": "./model/rfcn_synthetic_tiny", "output_path": "./output/rfcn/synthetic_round2"}),
    ("rfcn/ablations/rfcn_synthetic_tiny_320_round2.yaml", RFCN_TINY,
     {"SCALES": [(320, 512)], "network.pretrained": "./model/rfcn_synthetic_tiny_320",
      "output_path": "./output/rfcn/synthetic_320_round2"}),
    ("dff_rfcn/ablations/dff_rfcn_synthetic_tiny_flowinit.yaml", DFF_TINY,
     {"network.pretrained_flow": "./model/flownet_synthetic_tiny", "output_path": "./output/dff_rfcn/synthetic_flowinit"}),
    ("dff_rfcn/ablations/dff_rfcn_synthetic_tiny_flowset.yaml", DFF_TINY,
     {"network.pretrained": "./model/rfcn_synthetic_tiny", "network.pretrained_flow": "./model/flownet_synthetic_tiny_flow800",
      "output_path": "./output/dff_rfcn/synthetic_flowset"}),
    ("dff_rfcn/ablations/dff_rfcn_synthetic_tiny_320.yaml", DFF_TINY,
     {"SCALES": [(320, 512)], "network.pretrained_flow": "./model/flownet_synthetic_tiny_12k",
      "output_path": "./output/dff_rfcn/synthetic_320"}),
    ("dff_rfcn/ablations/dff_rfcn_synthetic_tiny_320_flowset.yaml", DFF_TINY,
     {"SCALES": [(320, 512)], "network.pretrained": "./model/rfcn_synthetic_tiny_320",
      "network.pretrained_flow": "./model/flownet_synthetic_tiny_flow800_320", "output_path": "./output/dff_rfcn/synthetic_320_flowset"}),
]


@pytest.mark.parametrize("path, base, expected", DERIVED, ids=[d[0].split("/")[-1] for d in DERIVED])
def test_derived_config_changes_only_its_keys(path, base, expected):
    assert _changed(path, base) == expected


def test_base_chain_is_relative_to_each_file_and_merges_nested_keys(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "root.yaml").write_text("TRAIN:\n  lr: 0.1\n  end_epoch: 3\nnetwork:\n  DFF_FEAT_DIM: 64\n")
    (tmp_path / "a" / "mid.yaml").write_text("_BASE_: root.yaml\nTRAIN:\n  lr: 0.2\nSCALES: [100, 200]\n")
    (tmp_path / "b" / "leaf.yaml").write_text("_BASE_: ../a/mid.yaml\nTRAIN:\n  end_epoch: 5\n")
    cfg = load_config(tmp_path / "b" / "leaf.yaml")
    assert cfg.TRAIN.lr == 0.2 and cfg.TRAIN.end_epoch == 5  # mid's lr, leaf's epoch
    assert cfg.network.DFF_FEAT_DIM == 64 and cfg.SCALES == [(100, 200)]  # from root / mid, untouched
    assert cfg.TRAIN.momentum == 0.9  # the defaults under them all


def test_base_cycle_is_an_error_naming_the_file(tmp_path):
    (tmp_path / "x.yaml").write_text("_BASE_: y.yaml\n")
    (tmp_path / "y.yaml").write_text("_BASE_: x.yaml\nTRAIN:\n  lr: 1\n")
    with pytest.raises(ConfigError, match="cycle") as e:
        load_config(tmp_path / "x.yaml")
    assert "x.yaml" in str(e.value) and "y.yaml" in str(e.value)
    (tmp_path / "self.yaml").write_text("_BASE_: self.yaml\n")
    with pytest.raises(ConfigError, match="self.yaml.*cycle"):
        load_config(tmp_path / "self.yaml")


def test_missing_base_is_an_error_naming_both_files(tmp_path):
    p = tmp_path / "delta.yaml"
    p.write_text("_BASE_: ../nowhere/base.yaml\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert msg.startswith(str(p)) and "nowhere/base.yaml" in msg and "not found" in msg
    p.write_text("_BASE_: [a, b]\n")
    with pytest.raises(ConfigError, match="_BASE_ must be"):
        load_config(p)


# ---- --set overrides ------------------------------------------------------------------------------

def test_set_overrides_are_typed_and_applied_after_the_yaml():
    cfg = load_config(EXP / RFCN_TINY, ["TEST.KEY_FRAME_INTERVAL=5", "TRAIN.lr=1e-3", "TRAIN.lr_step=3",
                                        "network.ANCHOR_RATIOS=[1]", "network.NUM_ANCHORS=3", "SCALES=[320, 512]",
                                        "TRAIN.FLIP=false", "output_path=out/x", "TRAIN.lr=0.002"])
    assert cfg.TEST.KEY_FRAME_INTERVAL == 5 and isinstance(cfg.TEST.KEY_FRAME_INTERVAL, int)
    assert cfg.TRAIN.lr == 0.002 and isinstance(cfg.TRAIN.lr, float)  # the last one wins
    assert cfg.TRAIN.lr_step == 3  # YAML typing: the reference's '1.333' strings need quotes
    assert cfg.network.ANCHOR_RATIOS == [1] and cfg.SCALES == [(320, 512)]
    assert cfg.TRAIN.FLIP is False and cfg.output_path == "out/x"
    assert cfg.TRAIN.end_epoch == 6 and cfg.network.BACKBONE == "resnet_v1_tiny"  # the YAML's, untouched
    assert parse_overrides(["TRAIN.lr_step='1.333'", "TEST.NMS=0.3"]) == {"TRAIN": {"lr_step": "1.333"},
                                                                           "TEST": {"NMS": 0.3}}


@pytest.mark.parametrize("item, needle", [
    ("TEST.KEY_FRAME_INTERVALL=5", "'TEST.KEY_FRAME_INTERVALL'"),  # unknown key
    ("TRAIN=1", "'TRAIN' must be a mapping"),
    ("TEST.KEY_FRAME_INTERVAL", "expected KEY=VALUE"),  # malformed: no '='
    ("=5", "expected KEY=VALUE"),
    ("TRAIN.lr=[1", "not valid YAML"),
    ("SCALES=600", "SCALES must be"),
])
def test_bad_set_item_is_an_error_naming_it(item, needle):
    with pytest.raises(ConfigError) as e:
        load_config(EXP / RFCN_TINY, [item])
    assert needle in str(e.value) and str(e.value).startswith("--set")


# ---- keys with no effect in this port -------------------------------------------------------------

@pytest.mark.parametrize("key, value", [
    ("network.NUM_ANCHORS", "6"), ("TRAIN.END2END", "false"), ("TEST.HAS_RPN", "false"),
    ("TRAIN.RPN_POSITIVE_WEIGHT", "0.5"), ("network.RCNN_FEAT_STRIDE", "8"), ("TEST.BATCH_IMAGES", "2"),
    ("dataset.proposal", "selective_search"), ("dataset.dataset", "PascalVOC"), ("default.kvstore", "dist_async"),
    ("symbol", "resnet_v1_50_rfcn"), ("TRAIN.BBOX_REGRESSION_THRESH", "0.6"),
])
def test_no_effect_key_with_another_value_is_an_error_naming_file_and_key(tmp_path, key, value):
    section, _, leaf = key.rpartition(".")
    p = tmp_path / "cfg.yaml"
    p.write_text(f"_BASE_: {EXP / RFCN_TINY}\n" + (f"{section}:\n  {leaf}: {value}\n" if section else f"{leaf}: {value}\n"))
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert str(e.value).startswith(f"{p}: {key}: has no effect in this port (")
    with pytest.raises(ConfigError, match=f"^--set: {key}: has no effect"):
        load_config(EXP / RFCN_TINY, [f"{key}={value}"])
    with pytest.raises(ConfigError, match=f"^x: {key}: has no effect"):
        update_config(default_config(), parse_overrides([f"{key}={value}"]), "x")


def test_no_effect_keys_accept_what_the_port_implements():
    cfg = load_config(EXP / RFCN_TINY, ["gpus=0,1,2,3,4,5,6,7", "MXNET_VERSION=mxnet_cu90", "TRAIN.CXX_PROPOSAL=false",
                                        "TEST.CXX_PROPOSAL=false", "default.kvstore=local", "TRAIN.RPN_POSITIVE_WEIGHT=-2",
                                        "symbol=resnet_v1_tiny_flownet_rfcn", "symbol="])
    assert cfg.gpus == "0,1,2,3,4,5,6,7" and cfg.TRAIN.CXX_PROPOSAL is False and cfg.symbol == ""
    # NUM_ANCHORS and BBOX_REGRESSION_THRESH follow the keys the code uses; stale, they are named
    load_config(EXP / RFCN_TINY, ["network.ANCHOR_SCALES=[4, 8]", "network.NUM_ANCHORS=6"])
    with pytest.raises(ConfigError, match="NUM_ANCHORS.*= 6 anchors"):
        load_config(EXP / RFCN_TINY, ["network.ANCHOR_SCALES=[4, 8]"])
    load_config(EXP / RFCN_TINY, ["TRAIN.FG_THRESH=0.6", "TRAIN.BBOX_REGRESSION_THRESH=0.6"])
    # a key the YAML leaves at its reference default is not checked (END2END defaults to false)
    cfg = default_config()
    update_config(cfg, {"network": {"ANCHOR_SCALES": [4, 8]}})
    assert cfg.TRAIN.END2END is False and cfg.network.NUM_ANCHORS == 9


def test_update_config_refuses_to_change_fixed_keys_and_leaves_cfg_as_it_was():
    cfg = load_config(EXP / DFF_TINY)
    with pytest.raises(ConfigError, match="^--set: network.DFF_FEAT_DIM: the model is already built with 128"):
        update_config(cfg, {"TEST": {"NMS": 0.5}, "network": {"DFF_FEAT_DIM": 64}}, "--set", fixed=MODEL_KEYS)
    assert cfg.TEST.NMS == 0.3 and cfg.network.DFF_FEAT_DIM == 128
    test = cfg.TEST
    update_config(cfg, {"TEST": {"NMS": 0.5}, "network": {"DFF_FEAT_DIM": 128}}, "--set", fixed=MODEL_KEYS)
    assert cfg.TEST is test and test.NMS == 0.5  # in place: holders of cfg (model.cfg) see it


# ---- --set on the entry points (in-process; each: a bad key is exit 2 naming it, and a value arrives) ----

DFF_MODEL = REPO / "data" / "models" / "dff_rfcn_synthetic_tiny.pth"


def _tool(name):
    return runpy.run_path(str(REPO / "tools" / name))["main"]


def _error_line(capsys):
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert len(err) == 1, err
    return err[0]


@pytest.fixture
def frames(tmp_path):
    d = tmp_path / "frames"
    d.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        cv2.imwrite(str(d / f"{i}.jpg"), rng.integers(0, 255, (64, 96, 3), dtype=np.uint8))
    return d


def _demo(argv):
    from dff.apps.demo import run_demo

    return run_demo(argv, name="dff_rfcn/demo.py", kind="dff", what="dff_rfcn_vid-0000.params",
                    default_cfg=str(EXP / "dff_rfcn/cfgs/dff_rfcn_vid_demo.yaml"), default_out="unused")


def test_demo_set_reaches_the_checkpoint_config(frames, tmp_path, capsys):
    base = [str(frames), "--model", str(DFF_MODEL), "--out", str(tmp_path / "o"), "--no-video", "--no-frames",
            "--quiet", "--max-frames", "4"]
    # the embedded checkpoint brings its own config (interval 10); --set applies after it
    assert _demo(base + ["--set", "TEST.KEY_FRAME_INTERVAL=3"]) == 0
    assert "4 frames (2 key)" in capsys.readouterr().out
    assert _demo(base + ["--set", "TEST.NOPE=1"]) == 2
    assert "'TEST.NOPE'" in _error_line(capsys)
    assert _demo(base + ["--set", "network.DFF_FEAT_DIM=64"]) == 2  # the weights fix it
    assert "network.DFF_FEAT_DIM: the model is already built with 128" in _error_line(capsys)


def test_demo_load_applies_set_to_the_model_config():
    from dff.apps.demo import load_demo_model

    model, cfg = load_demo_model("dff", str(EXP / "dff_rfcn/cfgs/dff_rfcn_vid_demo.yaml"), str(DFF_MODEL), "cpu",
                                 "x", ["TEST.RPN_POST_NMS_TOP_N=50"])
    assert model.cfg is cfg and cfg.TEST.RPN_POST_NMS_TOP_N == 50 and cfg.network.BACKBONE == "resnet_v1_tiny"


def test_benchmark_set(tmp_path, capsys):
    main = _tool("benchmark.py")
    argv = ["--cfg", str(EXP / DFF_TINY), "--model", str(DFF_MODEL), "--frames", "2", "--key-intervals", "1",
            "--no-end-to-end", "--device", "cpu", "--json", str(tmp_path / "b.json")]
    assert main(argv + ["--set", "TEST.NOPE=1"]) == 2
    assert "'TEST.NOPE'" in _error_line(capsys)
    assert main(argv + ["--set", "SCALES=[64,96]"]) == 0  # over the checkpoint's own 160/256
    h, w = json.loads((tmp_path / "b.json").read_text())["input"]["network_input"]
    assert min(h, w) == 64 and max(h, w) <= 96


def test_evaluate_intervals_set(tmp_path, capsys):
    main = _tool("evaluate_intervals.py")
    model = str(REPO / "data" / "models" / "rfcn_synthetic_tiny.pth")
    assert main([model, "--set", "TEST.NOPE=1"]) == 2
    assert "'TEST.NOPE'" in _error_line(capsys)
    assert main([model, "--set", "oops"]) == 2
    assert "expected KEY=VALUE" in _error_line(capsys)
    assert main([model, "--set", f"dataset.dataset_path={tmp_path / 'nope'}", "--out", str(tmp_path / "o")]) == 2
    assert str(tmp_path / "nope") in _error_line(capsys)  # the tester looked where --set said


def test_pretrain_flownet_set(tmp_path, capsys):
    from dff.dataset.synthetic import SynthConfig, generate

    root = tmp_path / "vid"
    generate(str(root), SynthConfig(seed=5, train_videos=1, val_videos=1, frames=6, height=64, width=96,
                                    det_images=0, max_objects=1))
    main = _tool("pretrain_flownet.py")
    argv = ["--data", str(root), "--cfg", str(EXP / DFF_TINY), "--iters", "0", "--eval-pairs", "1",
            "--out", str(tmp_path / "f.pth"), "--no-progress"]
    assert main(argv + ["--set", "TRAIN.MIN_OFFST=-2"]) == 2
    assert "'TRAIN.MIN_OFFST'" in _error_line(capsys)
    assert main(argv + ["--set", "TRAIN.MIN_OFFSET=-2", "SCALES=[64,96]"]) == 0
    report = json.loads((tmp_path / "f.json").read_text())
    assert report["offsets"] == [-2, 0] and report["scales"] == [64, 96]


def test_class_list_keys():
    from_yaml = load_config(EXP / "rfcn/cfgs/resnet_v1_101_imagenet_vid_rfcn_end2end_ohem.yaml")
    assert class_names(from_yaml)[:3] == ("__background__", "airplane", "antelope") and len(class_names(from_yaml)) == 31
    lines = set_class_names(from_yaml, ["star", "ring"])
    assert class_names(from_yaml) == ("__background__", "star", "ring") and from_yaml.dataset.NUM_CLASSES == 3
    assert lines == ["dataset.NUM_CLASSES 31 -> 3 (the data's 2 classes and the background)"]
    from_yaml.dataset.NUM_CLASSES = 5
    with pytest.raises(ConfigError, match="NUM_CLASSES = 5 but dataset.CLASSES names 2 classes"):
        class_names(from_yaml)
    with pytest.raises(ConfigError, match="must be distinct"):
        class_names(update_config(default_config(), {"dataset": {"CLASSES": ["a", "a"], "NUM_CLASSES": 3}}))
    # a checkpoint's config saved before these keys existed: the defaults fill them in
    old = default_config().to_dict()
    del old["dataset"]["CLASSES"], old["dataset"]["format"]
    cfg = config_from_dict(old, "old.pth")
    assert cfg.dataset.format == "vid" and class_names(cfg) == class_names(default_config())
    with pytest.raises(ConfigError, match="old.pth: unknown config key 'dataset.colour'"):
        config_from_dict({"dataset": {"colour": 1}}, "old.pth")


def test_unknown_dataset_format(tmp_path):
    cfg = default_config()
    cfg.dataset.dataset_path = str(tmp_path)
    cfg.dataset.format = "yolo"
    with pytest.raises(ValueError, match="dataset.format: 'yolo' is not one of vid, cocovid"):
        open_dataset(cfg, "x")
