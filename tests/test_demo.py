"""The demos end to end, as a user runs them (subprocesses from the repository root)."""
import os
import pathlib
import re
import shutil
import subprocess
import sys

import cv2
import pytest

from dff.apps.demo import synthetic_clip
from dff.utils.checkpoint import checkpoint_config

pytestmark = pytest.mark.slow  # the demos as subprocesses

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY_DFF = REPO / "data" / "models" / "dff_rfcn_synthetic_tiny.pth"


def run(*args, timeout=600):
    p = subprocess.run([sys.executable, *map(str, args)], cwd=REPO, capture_output=True, text=True, timeout=timeout)
    return p.returncode, p.stdout, p.stderr


def test_rfcn_demo_on_reference_frames(shared_data_dir, tmp_path):
    rc, out, err = run("rfcn/demo.py", shared_data_dir / "ILSVRC2015_val_00007010", "--model", "fixture",
                       "--max-frames", "2", "--out", tmp_path, "--quiet")
    assert rc == 0, err
    assert sorted(os.listdir(tmp_path)) == ["000000.jpg", "000001.jpg", "demo.mp4"]
    assert "rfcn: 2 frames (2 key)" in out and "fps" in out
    im = cv2.imread(str(tmp_path / "000000.jpg"))
    assert im.shape == (720, 1280, 3)  # drawn on the original frame


def test_dff_demo_on_video_file(shared_data_dir, tmp_path):
    rc, out, err = run("dff_rfcn/demo.py", shared_data_dir / "videos" / "vtest.avi", "--model", "fixture",
                       "--max-frames", "4", "--key-interval", "3", "--out", tmp_path, "--compare", "--no-frames")
    assert rc == 0, err
    assert "4 frames (2 key)" in out  # frames 0 and 3
    assert "speed-up of DFF over per-frame" in out
    cap = cv2.VideoCapture(str(tmp_path / "demo.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 4
    # no per-frame twin for this model: the baseline is its own weights, every frame a key frame
    assert "per-frame R-FCN (same weights): 4 frames (4 key)" in out
    cap = cv2.VideoCapture(str(tmp_path / "compare.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 4
    assert int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)) == 2 * 768  # vtest.avi is 768 x 576
    assert (tmp_path / "summary.png").is_file()
    # per-frame lines mark key frames
    assert err.count(" key ") >= 2


def _assert_one_line_error(rc, err, *needles):
    assert rc == 2
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, err
    for n in needles:
        assert str(n) in lines[0], (n, lines[0])


def test_missing_frame_folder(tmp_path):
    rc, _, err = run("rfcn/demo.py", tmp_path / "nope", "--model", "fixture", "--out", tmp_path / "o")
    _assert_one_line_error(rc, err, tmp_path / "nope", "not found")


def test_missing_model_file(shared_data_dir, tmp_path):
    rc, _, err = run("rfcn/demo.py", shared_data_dir / "ILSVRC2015_val_00007010", "--model", tmp_path / "x.params",
                     "--out", tmp_path)
    _assert_one_line_error(rc, err, tmp_path / "x.params", "not found")


def test_no_model_and_no_embedded_model_says_what_to_pass(tmp_path):
    from dff.apps.demo import run_demo

    rc = run_demo([str(tmp_path)], name="demo", kind="rfcn", default_cfg=str(REPO / "experiments/rfcn/cfgs/rfcn_vid_demo.yaml"),
                  default_out=str(tmp_path / "o"), what="rfcn_vid-0000.params",
                  default_model=str(tmp_path / "absent.pth"))
    assert rc == 2


def test_tiny_synthetic_model_finds_objects_on_the_demo_clip(tmp_path):
    """The small DFF model trained on the synthetic mini-VID (given by --model: the demos' default is now the mobile
    model) runs on the clip the demo generates when given no input, a seed it has never seen, and finds a good part
    of its objects (the clip's own annotations say how many there are). The default run itself (no input, no
    --model) is tests/test_demo_compare.py's."""
    clip = synthetic_clip(str(tmp_path), frames=20, scales=checkpoint_config(TINY_DFF)["SCALES"][0])
    rc, out, err = run("dff_rfcn/demo.py", clip, "--model", TINY_DFF, "--out", tmp_path / "o", "--quiet",
                       "--max-frames", "20", "--vis-thresh", "0.3")
    assert rc == 0, err
    assert "20 frames (2 key)" in out
    xmls = sorted((tmp_path / "synthetic_clip" / "Annotations" / "VID" / "val").glob("*/*.xml"))[:20]
    objects = sum(x.read_text().count("<object>") for x in xmls)
    drawn = int(re.search(r"(\d+) boxes drawn", out).group(1))
    assert objects > 20 and drawn >= objects // 4, (drawn, objects)
    assert (tmp_path / "o" / "demo.mp4").is_file()


def test_truncated_params_file(shared_data_dir, reference_dir, tmp_path):
    bad = tmp_path / "rfcn_vid-0000.params"
    data = (reference_dir / "params" / "dff_tiny-0001.params").read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    rc, _, err = run("rfcn/demo.py", shared_data_dir / "ILSVRC2015_val_00007010", "--model", bad, "--out", tmp_path)
    _assert_one_line_error(rc, err, bad)


def test_config_typo(shared_data_dir, tmp_path):
    cfg = tmp_path / "typo.yaml"
    cfg.write_text("TEST:\n  KEY_FRAME_INTERVALL: 5\n")
    rc, _, err = run("dff_rfcn/demo.py", shared_data_dir / "ILSVRC2015_val_00007010", "--model", "fixture",
                     "--cfg", cfg, "--out", tmp_path)
    _assert_one_line_error(rc, err, cfg, "TEST.KEY_FRAME_INTERVALL")


def test_unreadable_frame_is_reported_and_skipped(shared_data_dir, tmp_path):
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(3):
        shutil.copy(shared_data_dir / "ILSVRC2015_val_00007010" / f"{i:06d}.JPEG", frames / f"{i}.jpg")
    (frames / "10.jpg").write_bytes(b"\xff\xd8 truncated")  # sorts after 2.jpg by frame number
    rc, out, err = run("rfcn/demo.py", frames, "--model", "fixture", "--out", tmp_path / "o", "--quiet",
                       "--no-video")
    assert rc == 0, err
    assert "Traceback" not in err
    assert f"{frames / '10.jpg'}: cannot decode" in err
    assert "skipped 1 unreadable frame" in out
    assert sorted(os.listdir(tmp_path / "o")) == ["0.jpg", "1.jpg", "2.jpg"]


def test_empty_and_unreadable_videos(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    rc, _, err = run("rfcn/demo.py", empty, "--model", "fixture", "--out", tmp_path / "o")
    _assert_one_line_error(rc, err, empty, "no image files")
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(os.urandom(2048))
    rc, _, err = run("dff_rfcn/demo.py", junk, "--model", "fixture", "--out", tmp_path / "o")
    _assert_one_line_error(rc, err, junk)
