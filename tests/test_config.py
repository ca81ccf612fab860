import pathlib

import pytest

from dff.config import ConfigError, default_config, load_config, update_config

REPO = pathlib.Path(__file__).resolve().parents[1]
CFGS = sorted(REPO.glob("experiments/*/cfgs/*.yaml"))


def test_all_shipped_configs_load():
    assert len(CFGS) >= 4
    for p in CFGS:
        cfg = load_config(p)
        assert cfg.SCALES[0][0] > 0 and cfg.dataset.NUM_CLASSES == 31, p


def test_reference_training_values():
    cfg = load_config(REPO / "experiments/dff_rfcn/cfgs/resnet_v1_101_flownet_imagenet_vid_rfcn_end2end_ohem.yaml")
    assert cfg.SCALES == [(600, 1000)]
    assert cfg.TRAIN.lr == 0.00025 and cfg.TRAIN.lr_step == "1.333" and cfg.TRAIN.end_epoch == 2
    assert cfg.TRAIN.BATCH_ROIS == -1 and cfg.TRAIN.BATCH_ROIS_OHEM == 128 and cfg.TRAIN.ENABLE_OHEM
    assert cfg.TEST.RPN_PRE_NMS_TOP_N == 6000 and cfg.TEST.RPN_POST_NMS_TOP_N == 300 and cfg.TEST.RPN_MIN_SIZE == 0
    assert cfg.network.PIXEL_MEANS == [103.06, 115.90, 123.15]
    assert cfg.network.FIXED_PARAMS == ["conv1", "bn_conv1", "res2", "bn2", "gamma", "beta"]
    # defaults the YAML does not set (spec 8.3)
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
