"""End to end through the documented commands: generate a tiny mini-VID, train both models a few updates
with the *_end2end_train_test.py scripts, test and evaluate; retest with the *_test.py scripts from the
native and the MXNet checkpoint."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

pytestmark = pytest.mark.slow  # full training runs as subprocesses

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def _run(*args, timeout=240):
    proc = subprocess.run([sys.executable, *args], cwd=REPO, env=ENV, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"{args[0]} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc


def _yaml(tmp_path, kind, data):
    src = ("experiments/dff_rfcn/cfgs/dff_rfcn_synthetic_tiny.yaml" if kind == "dff"
           else "experiments/rfcn/cfgs/rfcn_synthetic_tiny.yaml")
    with open(os.path.join(REPO, src)) as f:
        d = yaml.safe_load(f)
    d["output_path"] = str(tmp_path / "output")
    d["dataset"].update(dataset_path=str(data), root_path=str(tmp_path / "data"))
    d["SCALES"] = [64, 96]
    d["TRAIN"].update(end_epoch=1, lr=0.004)
    d["TEST"].update(test_epoch=1, RPN_POST_NMS_TOP_N=100)
    path = tmp_path / f"{kind}_smoke.yaml"
    path.write_text(yaml.safe_dump(d))
    return path


@pytest.fixture(scope="module")
def mini_vid(tmp_path_factory):
    out = tmp_path_factory.mktemp("smoke") / "synthetic_vid"
    _run("tools/make_synthetic_vid.py", "--out", str(out), "--train-videos", "1", "--val-videos", "2",
         "--frames", "6", "--height", "64", "--width", "96", "--det-images", "2", "--classes", "ellipse,box",
         "--seed", "4")
    return out


def _eval(out_dir, set_name):
    with open(os.path.join(out_dir, "results", f"eval_{set_name}.json")) as f:
        return json.load(f)


def test_rfcn_train_test_and_retest(mini_vid, tmp_path):
    cfg = _yaml(tmp_path, "rfcn", mini_vid)
    # one full epoch (the roidb has 16 entries: 4 updates of 4 images), 2 loader worker processes
    p = _run("experiments/rfcn/rfcn_end2end_train_test.py", "--cfg", str(cfg), "--accumulate", "4",
             "--num-workers", "2", "--frequent", "1", "--no-progress")
    log = p.stderr
    assert "Update 1 " in log and "epoch 1 done" in log and "mean time per frame" in log
    train_dir = tmp_path / "output" / "rfcn_smoke" / "DET_train_30classes_VID_train_15frames"
    for name in ("rfcn_vid-0001.pth", "rfcn_vid-0001.state.pth", "rfcn_vid-0001.params", "rfcn_vid-last.state.pth",
                 "train.log"):
        assert (train_dir / name).is_file(), name
    test_dir = tmp_path / "output" / "rfcn_smoke" / "VID_val_frames"
    first = _eval(test_dir, "VID_val_frames")
    assert first["videos"] == 2 and first["num_images"] == 12 and first["num_gt_objects"] > 0
    results = test_dir / "results" / "det_VID_val_frames_all.txt"
    first_bytes = results.read_bytes()
    assert first_bytes
    # the test script finds <prefix>-<test_epoch>.pth, reuses the finished videos, same results
    p = _run("experiments/rfcn/rfcn_test.py", "--cfg", str(cfg), "--no-progress")
    assert _eval(test_dir, "VID_val_frames")["videos_cached"] == 2 and results.read_bytes() == first_bytes
    # the MXNet checkpoint (with the reference's _test keys) detects the same boxes
    _run("experiments/rfcn/rfcn_test.py", "--cfg", str(cfg), "--no-progress", "--ignore-cache", "--model",
         str(train_dir / "rfcn_vid-0001.params"))
    assert _eval(test_dir, "VID_val_frames")["videos_cached"] == 0 and results.read_bytes() == first_bytes


def test_dff_train_test(mini_vid, tmp_path):
    cfg = _yaml(tmp_path, "dff", mini_vid)
    p = _run("experiments/dff_rfcn/dff_rfcn_end2end_train_test.py", "--cfg", str(cfg), "--accumulate", "2",
             "--max-iters", "2", "--num-workers", "1", "--frequent", "1", "--no-progress", "--no-mxnet",
             "--key-interval", "3")
    assert "Update 2 " in p.stderr and "stopped after 2 updates" in p.stderr
    train_dir = tmp_path / "output" / "dff_smoke" / "DET_train_30classes_VID_train_15frames"
    assert (train_dir / "dff_rfcn_vid-iter00000002.pth").is_file()
    test_dir = tmp_path / "output" / "dff_smoke" / "VID_val_videos"
    ev = _eval(test_dir, "VID_val_videos")
    assert ev["videos"] == 2 and ev["num_images"] == 12 and ev["key_interval"] == 3
    assert ev["timing"]["key_frames"] == 4  # frames 0 and 3 of each 6-frame video
    assert (test_dir / "VID_val_videos_eval.txt").read_text().splitlines()[6] == "val/ILSVRC2015_val_00000001/000000 7"
    assert "mAP_present_classes" in ev and "motion" in ev
