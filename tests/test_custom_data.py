"""Own data end to end: a synthetic set with 3 classes converted to COCO-video trains DFF from scratch through the
train/test entry point (``--set dataset.format=cocovid``), whose test prints the VID mAP, the motion breakdown and
COCO AP by class name; the same model on the same data in the two formats gives the same evaluation; a model
tested on data with another class list is an error that shows both lists; fine-tuning to another class list
re-initialises only the class-dependent layers."""
from __future__ import annotations

import json
import os
import runpy

import pytest
import torch
import yaml

from dff.dataset.synthetic import SynthConfig, generate
from dff.utils.checkpoint import load_checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DFF_CFG = os.path.join(REPO, "experiments/dff_rfcn/cfgs/dff_rfcn_synthetic_tiny.yaml")
CLASSES = ("star", "ring", "box")


def _main(script):
    return runpy.run_path(os.path.join(REPO, "experiments", script))["main"]


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("own")
    generate(str(root / "vid"), SynthConfig(seed=3, train_videos=2, val_videos=2, frames=6, height=64, width=96,
                                            det_images=4, classes=CLASSES, max_objects=2))
    convert = runpy.run_path(os.path.join(REPO, "tools/convert_dataset.py"))["main"]
    assert convert([str(root / "vid"), str(root / "coco"), "--to", "cocovid", "--no-progress"]) == 0
    return root


def _yaml(tmp_path, name, **dataset):
    with open(DFF_CFG) as f:
        d = yaml.safe_load(f)
    d["output_path"] = str(tmp_path / name)
    d["SCALES"] = [64, 96]
    d["dataset"].update(root_path=str(tmp_path / "data"), **dataset)
    d["TEST"].update(RPN_POST_NMS_TOP_N=50, KEY_FRAME_INTERVAL=2)
    d["TRAIN"].update(end_epoch=1, lr_step="")
    p = tmp_path / f"{name}.yaml"
    p.write_text(yaml.safe_dump(d))
    return p


def _eval_json(tmp_path, name, test_set):
    out = tmp_path / name / name / test_set
    with open(out / "results" / f"eval_{test_set}.json") as f:
        return json.load(f), (out / "test.log").read_text()


@pytest.mark.slow
def test_train_on_cocovid_then_same_evaluation_in_both_formats(data, tmp_path):
    coco = _yaml(tmp_path, "coco", dataset_path=str(data / "coco"))
    flags = ["--from-scratch", "--max-iters", "6", "--num-workers", "0", "--no-progress", "--no-mxnet",
             "--device", "cpu", "--save-every", "0"]
    sets = ["--set", "dataset.format=cocovid", "dataset.image_set=DET_train_30classes+VID_train_15frames",
            "dataset.test_image_set=VID_val_videos.json"]
    assert _main("dff_rfcn/dff_rfcn_end2end_train_test.py")(["--cfg", str(coco), *flags, *sets]) == 0
    ckpt = tmp_path / "coco" / "coco" / "DET_train_30classes_VID_train_15frames" / "dff_rfcn_vid-iter00000006.pth"
    saved = load_checkpoint(ckpt)["config"]["dataset"]
    assert saved["CLASSES"] == list(CLASSES) and saved["NUM_CLASSES"] == 4 and saved["format"] == "cocovid"
    result, log = _eval_json(tmp_path, "coco", "VID_val_videos")
    assert result["classes"] == list(CLASSES)
    assert set(result["motion"]) == {"all", "fast", "medium", "slow"} and result["motion"]["all"]["num_gt"] > 0
    assert set(result["coco"]["per_class"]) == set(CLASSES) and 0 <= result["coco"]["AP"] <= 1
    for needle in ("COCO bbox", "AP50", "motion", *CLASSES):
        assert needle in log, needle
    # the same model on the same data in the VID layout: the same evaluation, number for number
    vid = _yaml(tmp_path, "vid", dataset_path=str(data / "vid"))
    assert _main("dff_rfcn/dff_rfcn_test.py")(["--cfg", str(vid), "--model", str(ckpt), "--device", "cpu",
                                                "--num-workers", "0", "--no-progress"]) == 0
    other, _ = _eval_json(tmp_path, "vid", "VID_val_videos")
    assert result["num_gt_per_class"] == other["num_gt_per_class"]
    # (a class absent from these 2 videos makes the 3-class mean NaN, null in the JSON, as the reference's rule)
    assert result["ap"] == other["ap"] and result["mAP"] == other["mAP"]
    assert abs(result["mAP_present_classes"] - other["mAP_present_classes"]) <= 1e-9
    assert result["motion"] == other["motion"] and result["coco"]["AP"] == other["coco"]["AP"]
    # the tester on the onnxruntime backend (the model exported to a cache first): the same evaluation up to
    # float noise in the boxes
    ort_cfg = _yaml(tmp_path, "ort", dataset_path=str(data / "vid"))
    assert _main("dff_rfcn/dff_rfcn_test.py")(["--cfg", str(ort_cfg), "--model", str(ckpt), "--device", "cpu",
                                                "--num-workers", "0", "--no-progress", "--backend", "onnxruntime"]) == 0
    ort, log = _eval_json(tmp_path, "ort", "VID_val_videos")
    assert abs(ort["mAP_present_classes"] - other["mAP_present_classes"]) < 1e-3
    assert ort["num_gt_per_class"] == other["num_gt_per_class"]


def test_other_class_list_is_an_error_showing_both(data, tmp_path, capsys):
    other = tmp_path / "other"
    generate(str(other), SynthConfig(seed=4, train_videos=0, val_videos=1, frames=3, height=64, width=96,
                                     det_images=0, classes=("ellipse", "box")))
    cfg = _yaml(tmp_path, "x", dataset_path=str(other))
    assert _main("dff_rfcn/dff_rfcn_test.py")(["--cfg", str(cfg), "--model", "data/models/dff_rfcn_synthetic_tiny.pth",
                                                "--device", "cpu", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "the model has 5 classes ['ellipse', 'box', 'triangle', 'star', 'ring']" in err
    assert "has 2 classes ['ellipse', 'box']" in err


def test_fine_tune_to_another_class_list_reinitialises_the_class_layers(data, tmp_path):
    # the embedded model (5 shapes) fine-tuned on the 3-class set: everything but rfcn_cls is loaded
    cfg = _yaml(tmp_path, "ft", dataset_path=str(data / "vid"))
    init = os.path.join(REPO, "data/models/dff_rfcn_synthetic_tiny.pth")
    flags = ["--init", init, "--max-iters", "1", "--num-workers", "0", "--no-progress", "--no-mxnet", "--no-test",
             "--device", "cpu", "--save-every", "0"]
    assert _main("dff_rfcn/dff_rfcn_end2end_train_test.py")(["--cfg", str(cfg), *flags]) == 0
    log = (tmp_path / "ft" / "ft" / "DET_train_30classes_VID_train_15frames" / "train.log").read_text()
    assert "except the class-dependent layers ['rfcn_head.rfcn_cls'], re-initialised" in log
    a = load_checkpoint(init)["model"]
    b = load_checkpoint(tmp_path / "ft" / "ft" / "DET_train_30classes_VID_train_15frames" / "dff_rfcn_vid-iter00000001.pth")
    assert tuple(b["model"]["rfcn_head.rfcn_cls.weight"].shape)[0] == 49 * 4
    # frozen layers are the checkpoint's exactly (res2 is in FIXED_PARAMS: one update leaves it as loaded)
    k = next(k for k in a if k.startswith("backbone.res2"))
    torch.testing.assert_close(b["model"][k].float(), a[k].float())
