"""Sharded testing: ``torchrun --nproc_per_node 2 experiments/dff_rfcn/dff_rfcn_test.py`` (gloo on CPU) writes the
same results file and the same evaluation as one process, and a rerun resumes from the per-video cache."""
from __future__ import annotations

import json
import os
import runpy
import socket
import subprocess
import sys

import pytest
import torch
import yaml

from dff.config import load_config, set_class_names
from dff.dataset.classlist import class_list_of_root
from dff.dataset.synthetic import SynthConfig, generate
from dff.models.builder import build_model
from dff.train.trainer import init_new_layers
from dff.utils.checkpoint import save_checkpoint

pytestmark = pytest.mark.slow  # torchrun subprocesses

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DFF_CFG = os.path.join(REPO, "experiments/dff_rfcn/cfgs/dff_rfcn_synthetic_tiny.yaml")
SCRIPT = os.path.join(REPO, "experiments/dff_rfcn/dff_rfcn_test.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _setup(tmp_path):
    root = tmp_path / "vid"
    # 5 videos: the two ranks get 3 and 2, so the merge has to interleave them
    generate(str(root), SynthConfig(seed=9, train_videos=0, val_videos=5, frames=5, height=64, width=96,
                                    det_images=0, classes=("star", "ring", "box"), max_objects=2))
    cfg = load_config(DFF_CFG)
    set_class_names(cfg, class_list_of_root(str(root)).names)
    torch.manual_seed(0)
    model = build_model("dff", cfg)
    init_new_layers(model, torch.Generator().manual_seed(0))
    with torch.no_grad():
        model.flownet.Convolution5_scale.bias.fill_(1.5)  # a scale map that is not the identity
    ckpt = tmp_path / "model.pth"
    save_checkpoint(ckpt, model_state=model, config=cfg, extra={"model_kind": "dff"})
    with open(DFF_CFG) as f:
        d = yaml.safe_load(f)
    d["dataset"].update(dataset_path=str(root), root_path=str(tmp_path / "data"))
    d["SCALES"] = [64, 96]
    d["TEST"].update(RPN_POST_NMS_TOP_N=50, KEY_FRAME_INTERVAL=2)
    paths = []
    for name in ("one", "two"):
        d["output_path"] = str(tmp_path / name)
        p = tmp_path / f"{name}.yaml"
        p.write_text(yaml.safe_dump(d))
        paths.append(p)
    return ckpt, paths


def _outputs(tmp_path, name):
    out = tmp_path / name / name / "VID_val_videos"
    results = (out / "results" / "det_VID_val_videos_all.txt").read_text()
    with open(out / "results" / "eval_VID_val_videos.json") as f:
        ev = json.load(f)
    return results, ev


def test_two_processes_equal_one(tmp_path):
    ckpt, (one, two) = _setup(tmp_path)
    flags = ["--model", str(ckpt), "--device", "cpu", "--num-workers", "0", "--no-progress"]
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert runpy.run_path(SCRIPT)["main"](["--cfg", str(one), *flags]) == 0
    finally:
        torch.set_num_threads(n)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
           SCRIPT, "--cfg", str(two), *flags]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r1, e1 = _outputs(tmp_path, "one")
    r2, e2 = _outputs(tmp_path, "two")
    assert r1.count("\n") > 100  # random weights: many detections, so equality means something
    assert r1 == r2
    for key in ("mAP", "ap", "motion", "coco", "num_gt_per_class", "num_tp_per_class"):
        assert e1[key] == e2[key], key
    assert e2["videos"] == 5 and e2["videos_cached"] == 0  # every video run now, by one of the two ranks
    # a rerun finds every video cached by its rank and evaluates the same
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r3, e3 = _outputs(tmp_path, "two")
    assert r3 == r1 and e3["mAP"] == e1["mAP"] and e3["videos_cached"] == 5
