"""The test loop (dff.eval.tester): the VideoDetector engine over the val videos, the results file, the
evaluation, per-video resumability and bad frames."""
from __future__ import annotations

import os
import re
import runpy
import shutil

import numpy as np
import pytest
import torch

from dff.config import load_config, set_class_names
from dff.dataset.classlist import class_list_of_root
from dff.dataset.imagenet_vid import ImageNetVID
from dff.dataset.synthetic import SynthConfig, generate
from dff.engine.frames import FrameSource
from dff.engine.video import VideoDetector
from dff.eval.tester import TesterError, default_model_path
from dff.eval.tester import run_test_set as run_tester
from dff.train.trainer import build_model, init_new_layers
from dff.utils.checkpoint import save_checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RFCN_CFG = os.path.join(REPO, "experiments/rfcn/cfgs/rfcn_synthetic_tiny.yaml")
DFF_CFG = os.path.join(REPO, "experiments/dff_rfcn/cfgs/dff_rfcn_synthetic_tiny.yaml")
# random weights detect every class; classes absent from the tiny set then have AP NaN (the reference's rule)
pytestmark = pytest.mark.filterwarnings("ignore:vid_eval. AP is NaN")


def run_test(argv, kind):
    """The entry script ``*_test.py``'s main(argv), in this process."""
    script = "dff_rfcn/dff_rfcn_test.py" if kind == "dff" else "rfcn/rfcn_test.py"
    return runpy.run_path(os.path.join(REPO, "experiments", script))["main"](argv)


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def val_vid(tmp_path_factory):
    root = tmp_path_factory.mktemp("tester") / "vid"
    generate(str(root), SynthConfig(seed=5, train_videos=0, val_videos=2, frames=7, height=64, width=96,
                                    det_images=0, classes=("ellipse", "box")))
    return root


def _cfg(kind, root, tmp_path):
    cfg = load_config(DFF_CFG if kind == "dff" else RFCN_CFG)
    cfg.dataset.dataset_path = str(root)
    cfg.dataset.root_path = str(tmp_path / "data")
    cfg.SCALES = [(64, 96)]
    cfg.TEST.RPN_POST_NMS_TOP_N = 50  # fewer boxes: faster, still many detections with random weights
    set_class_names(cfg, class_list_of_root(str(root)).names)  # the data's classes, as training sets them
    return cfg


def _model(kind, cfg, seed=0):
    torch.manual_seed(seed)
    m = build_model(kind, cfg)
    init_new_layers(m, torch.Generator().manual_seed(seed))
    with torch.no_grad():  # a non-trivial scale map and flow, so the DFF path differs from per-frame
        if kind == "dff":
            m.flownet.Convolution5_scale.bias.fill_(1.5)
    return m.eval()


def test_frame_list_and_video_list_give_the_same_videos(val_vid):
    a = ImageNetVID("VID_val_videos", str(val_vid), None, verbose=False).test_videos()
    b = ImageNetVID("VID_val_frames", str(val_vid), None, verbose=False).test_videos()
    assert a == b and len(a) == 2
    assert a[1].frame_ids == list(range(8, 15)) and a[1].indices[0] == "val/ILSVRC2015_val_00000001/000000"
    assert all(os.path.isfile(p) for v in a for p in v.paths)


def test_results_eval_and_resume(val_vid, tmp_path, monkeypatch):
    cfg = _cfg("rfcn", val_vid, tmp_path)
    cfg.dataset.test_image_set = "VID_val_frames"
    model = _model("rfcn", cfg)
    out = tmp_path / "test"
    r1 = run_tester(model, cfg, kind="rfcn", output_dir=str(out), progress=False, num_workers=2)
    assert r1["videos"] == 2 and r1["frames"] == 14 and r1["videos_cached"] == 0 and r1["thresh"] == 1e-3
    assert r1["timing"]["frames_timed"] == 14 and r1["timing"]["key_frames"] == 14  # per-frame model
    assert 0.0 <= r1["mAP_present_classes"] <= 1.0 and "motion" in r1
    res = out / "results" / "det_VID_val_frames_all.txt"
    lines = res.read_text().splitlines()
    assert lines and all(re.fullmatch(r"\d+ \d+ \d\.\d{4}( -?\d+\.\d\d){4}", ln) for ln in lines)
    assert {int(ln.split()[0]) for ln in lines} <= set(range(1, 15))
    assert min(float(ln.split()[2]) for ln in lines) > 1e-3
    assert (out / "results" / "eval_VID_val_frames.json").is_file()
    assert (out / "VID_val_frames_eval.txt").read_text().splitlines()[7] == "val/ILSVRC2015_val_00000001/000000 8"

    # the detections are exactly the engine's on the frame folder
    video0 = val_vid / "Data" / "VID" / "val" / "ILSVRC2015_val_00000000"
    det = VideoDetector(model, cfg, thresh=1e-3)
    direct = list(det.run(FrameSource(str(video0), prepare=det.prepare)))
    expected = sum(len(d) for r in direct for d in r.detections[1:])
    assert expected == sum(1 for ln in lines if int(ln.split()[0]) <= 7)
    first = np.concatenate([d for d in direct[0].detections[1:] if len(d)])
    got = np.array([[float(x) for x in ln.split()[3:]] + [float(ln.split()[2])] for ln in lines
                    if ln.split()[0] == "1"])
    np.testing.assert_allclose(np.sort(got[:, 4]), np.sort(first[:, 4]), atol=5e-5)

    # a rerun skips finished videos: the network is not called, the files are the same
    calls = {"n": 0}
    real_step = VideoDetector.step

    def counting(self, *a, **k):
        calls["n"] += 1
        return real_step(self, *a, **k)

    monkeypatch.setattr(VideoDetector, "step", counting)
    before = res.read_bytes()
    r2 = run_tester(model, cfg, kind="rfcn", output_dir=str(out), progress=False)
    assert calls["n"] == 0 and r2["videos_cached"] == 2 and res.read_bytes() == before
    assert r2["mAP"] == r1["mAP"] or (np.isnan(r2["mAP"]) and np.isnan(r1["mAP"]))
    # a lost video is redone alone; so is one whose file is damaged
    os.unlink(out / "detections" / "val__ILSVRC2015_val_00000001.npz")
    r3 = run_tester(model, cfg, kind="rfcn", output_dir=str(out), progress=False)
    assert calls["n"] == 7 and r3["videos_cached"] == 1 and res.read_bytes() == before
    damaged = out / "detections" / "val__ILSVRC2015_val_00000000.npz"
    damaged.write_bytes(damaged.read_bytes()[:100])
    run_tester(model, cfg, kind="rfcn", output_dir=str(out), progress=False)
    assert calls["n"] == 14 and res.read_bytes() == before
    # --ignore-cache redoes everything; other weights or threshold invalidate the cache
    run_tester(model, cfg, kind="rfcn", output_dir=str(out), progress=False, ignore_cache=True)
    assert calls["n"] == 28
    run_tester(model, cfg, kind="rfcn", output_dir=str(out), progress=False, thresh=0.01)
    assert calls["n"] == 42
    assert all(float(ln.split()[2]) > 0.01 for ln in res.read_text().splitlines())
    run_tester(_model("rfcn", cfg, seed=1), cfg, kind="rfcn", output_dir=str(out), progress=False, thresh=0.01)
    assert calls["n"] == 56


def test_dff_key_frames_and_bad_frame(val_vid, tmp_path):
    root = tmp_path / "vid"
    shutil.copytree(val_vid, root)
    broken = root / "Data" / "VID" / "val" / "ILSVRC2015_val_00000000" / "000004.JPEG"
    broken.write_bytes(b"\xff\xd8 truncated")
    cfg = _cfg("dff", root, tmp_path)
    model = _model("dff", cfg)
    r = run_tester(model, cfg, kind="dff", output_dir=str(tmp_path / "t"), progress=False, key_interval=3)
    assert r["thresh"] == 1e-4 and r["key_interval"] == 3
    assert r["bad_frames"] == [str(broken)]
    # video 0 runs 6 frames (one unreadable) -> key frames at 0, 3, 6 of the frames seen: 2 (0 and the 4th
    # frame seen); video 1: frames 0, 3, 6 -> 3
    assert r["timing"]["frames_timed"] == 13 and r["timing"]["key_frames"] == 5
    lines = (tmp_path / "t" / "results" / "det_VID_val_videos_all.txt").read_text().splitlines()
    assert 5 not in {int(ln.split()[0]) for ln in lines}  # the unreadable frame (id 5) has no detections
    assert {int(ln.split()[0]) for ln in lines} >= {1, 2, 3, 4, 6, 7}


def test_default_model_path_error(val_vid, tmp_path):
    cfg = _cfg("dff", val_vid, tmp_path)
    cfg.output_path = str(tmp_path / "out")
    cfg.TEST.test_epoch = 2
    with pytest.raises(TesterError, match=r"dff_rfcn_vid-0002\.pth .*--model"):
        default_model_path(cfg, "x/dff_rfcn_synthetic_tiny.yaml")
    d = tmp_path / "out" / "dff_rfcn_synthetic_tiny" / "DET_train_30classes_VID_train_15frames"
    d.mkdir(parents=True)
    (d / "dff_rfcn_vid-0002.params").write_bytes(b"x")
    assert default_model_path(cfg, "x/dff_rfcn_synthetic_tiny.yaml") == str(d / "dff_rfcn_vid-0002.params")


def test_missing_dataset_or_model_is_one_line(val_vid, tmp_path, capsys):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(f"dataset:\n  dataset_path: {tmp_path / 'none'}\noutput_path: {tmp_path / 'out'}\n")
    code = run_test(["--cfg", str(cfg_file)], "dff")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and str(tmp_path / "none") in err[0] and "make_synthetic_vid.py" in err[0]
    assert not (tmp_path / "out").exists()
    cfg_file.write_text(f"dataset:\n  dataset_path: {val_vid}\noutput_path: {tmp_path / 'out'}\n")
    code = run_test(["--cfg", str(cfg_file), "--model", str(tmp_path / "m.pth")], "rfcn")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "m.pth: model file not found" in err[0]


def test_evaluate_intervals_dataset_path_must_exist(tmp_path):
    import subprocess
    import sys

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    res = subprocess.run([sys.executable, os.path.join(repo, "tools", "evaluate_intervals.py"),
                          os.path.join(repo, "data", "models", "rfcn_synthetic_tiny.pth"),
                          "--dataset-path", str(tmp_path / "nope")], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "--dataset-path" in res.stderr and "nope" in res.stderr


def test_set_reaches_the_proposals_of_a_checkpoint_with_its_own_config(val_vid, tmp_path, monkeypatch):
    """``*_test.py --model X.pth --set TEST.RPN_POST_NMS_TOP_N=N``: the model a native checkpoint brings reads its
    proposal settings from its own config, which must carry the --set too (the result cache records it)."""
    cfg = _cfg("rfcn", val_vid, tmp_path)
    model = _model("rfcn", cfg)
    ckpt = tmp_path / "m.pth"
    save_checkpoint(ckpt, model_state=model, config=cfg, extra={"model_kind": "rfcn", "weights": "test"})
    seen = {}

    def capture(model, cfg, **kwargs):
        seen["model_top_n"] = int(model.cfg.TEST.RPN_POST_NMS_TOP_N)
        seen["cfg_top_n"] = int(cfg.TEST.RPN_POST_NMS_TOP_N)
        return None

    monkeypatch.setattr("dff.eval.tester.run_test_set", capture)
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(f"dataset:\n  dataset_path: {val_vid}\noutput_path: {tmp_path / 'out'}\n")
    code = run_test(["--cfg", str(cfg_file), "--model", str(ckpt), "--set", "TEST.RPN_POST_NMS_TOP_N=7"], "rfcn")
    assert code == 0
    assert seen == {"model_top_n": 7, "cfg_top_n": 7}
