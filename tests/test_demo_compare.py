"""The DFF demo's ``--compare``: the side-by-side video, the summary page, the closing lines, ``--compare-model``,
and the default run (the embedded model and its per-frame twin on a clip at the model's input size).

The models are tiny random-weight mobile checkpoints made here (the embedded ones are trained separately):
the detections mean nothing, the pipeline and the outputs are what is checked.
"""
from __future__ import annotations

import pathlib
import re
import signal
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

from dff.apps import compare as compare_mod
from dff.apps.compare import caption_height
from dff.apps.demo import clip_size, run_demo
from dff.config import load_config
from dff.models.builder import build_model
from dff.utils.checkpoint import save_checkpoint

REPO = pathlib.Path(__file__).resolve().parents[1]
DFF_CFG = REPO / "experiments" / "dff_rfcn" / "cfgs" / "dff_mobile_synthetic.yaml"
RFCN_CFG = REPO / "experiments" / "rfcn" / "cfgs" / "rfcn_mobile_synthetic.yaml"
SHAPES = "[ellipse,box,triangle,star,ring]"
# small and fast: a thin backbone, inputs of at most 144 x 224 (the clip's size then caps the 160:256 aspect at 224)
SMALL = ["network.MOBILENET_WIDTH=0.35", "SCALES=[144,224]", "dataset.NUM_CLASSES=6", f"dataset.CLASSES={SHAPES}"]
W, H, N = 200, 120, 5  # the test frames
SPEEDUP = re.compile(r"^speed-up of DFF over per-frame \(network only\): \d+\.\d\dx$")


def _checkpoint(path: pathlib.Path, kind: str, cfg_path: pathlib.Path, overrides: list[str]) -> pathlib.Path:
    cfg = load_config(cfg_path, overrides)
    torch.manual_seed(0)
    model = build_model(kind, cfg).eval()
    save_checkpoint(path, model_state=model, config=cfg, extra={"weights": "test", "model_kind": kind})
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, pathlib.Path]:
    d = tmp_path_factory.mktemp("models")
    return {
        "dff": _checkpoint(d / "dff_mobile.pth", "dff", DFF_CFG, SMALL),
        "rfcn": _checkpoint(d / "rfcn_mobile.pth", "rfcn", RFCN_CFG, SMALL),
        "rfcn_3_classes": _checkpoint(d / "rfcn_3.pth", "rfcn", RFCN_CFG,
                                      [*SMALL[:2], "dataset.NUM_CLASSES=4", "dataset.CLASSES=[ellipse,box,star]"]),
    }


@pytest.fixture(scope="module")
def frames(tmp_path_factory) -> pathlib.Path:
    """N flat grey frames with a moving dark square: a red border on them is unmistakable."""
    folder = tmp_path_factory.mktemp("frames")
    for i in range(N):
        im = np.full((H, W, 3), 128, np.uint8)
        im[40:80, 20 + 10 * i:60 + 10 * i] = 40
        cv2.imwrite(str(folder / f"{i}.png"), im)
    return folder


def _video(path: pathlib.Path) -> tuple[list[np.ndarray], int, int]:
    """The frames, width and height of an .mp4 (it must open)."""
    cap = cv2.VideoCapture(str(path))
    assert cap.isOpened(), path
    size = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
    out = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        out.append(f)
    cap.release()
    return out, *size


def _red(panel: np.ndarray) -> float:
    """How red a panel's outer 2-pixel frame is: mean R minus mean G over it (grey: 0; the key border: ~255)."""
    edge = np.concatenate([panel[:2].reshape(-1, 3), panel[-2:].reshape(-1, 3),
                           panel[:, :2].reshape(-1, 3), panel[:, -2:].reshape(-1, 3)]).astype(float)
    return float(edge[:, 2].mean() - edge[:, 1].mean())


def _nonempty_lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.strip()]


@pytest.mark.slow
def test_compare_writes_the_side_by_side_video_and_the_summary_page(models, frames, tmp_path):
    p = subprocess.run([sys.executable, "dff_rfcn/demo.py", str(frames), "--model", str(models["dff"]),
                        "--compare-model", str(models["rfcn"]), "--key-interval", "2", "--vis-thresh", "1.0",
                        "--out", str(tmp_path), "--no-frames", "--quiet"],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    out = p.stdout
    assert f"dff (key interval 2): {N} frames (3 key)" in out
    assert f"per-frame R-FCN (mobile twin): {N} frames ({N} key)" in out

    video, width, height = _video(tmp_path / "compare.mp4")
    assert len(video) == N
    assert width == 2 * W and height == H + caption_height(W)
    # the DFF panel (right) of a key frame has the red border, of a warped frame not; the per-frame panel never
    bar = caption_height(W)
    dff_red = [_red(f[bar:, W:]) for f in video]
    base_red = [_red(f[bar:, :W]) for f in video]
    assert [r > 100 for r in dff_red] == [True, False, True, False, True], dff_red
    assert max(base_red) < 30, base_red

    png = tmp_path / "summary.png"
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    page = cv2.imread(str(png))
    assert page is not None and page.shape[0] >= 600 and page.shape[1] >= 800
    assert not list(tmp_path.glob("*.tmp*")) and not list(tmp_path.glob(".*"))

    # the printed summary ends with the speed-up, then where the time goes for both runs
    *_, speed, split = _nonempty_lines(out)
    assert SPEEDUP.match(speed), speed
    assert split.startswith("where the time goes"), split
    base_part, dff_part = split.split(": ", 1)[1].split("; ")
    assert base_part.startswith("per-frame feature") and "flow" not in base_part
    assert dff_part.startswith("DFF feature") and "flow" in dff_part and "warp" in dff_part


def test_default_run_uses_the_twin_on_a_clip_at_the_model_input_size(models, tmp_path, capsys):
    """No input, no --model: the embedded model (here: the test's, given as the default) on a synthetic clip at the
    model's input size, and --compare runs the embedded per-frame twin."""
    rc = run_demo(["--compare", "--out", str(tmp_path), "--max-frames", "3", "--no-frames", "--quiet"],
                  name="dff_rfcn/demo.py", kind="dff", default_cfg=str(DFF_CFG), default_out=str(tmp_path),
                  what="a DFF model", default_model=str(models["dff"]), default_compare_model=str(models["rfcn"]))
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "embedded model" in out and "synthetic clip" in out
    assert "per-frame R-FCN (mobile twin): 3 frames" in out
    h, w = clip_size((144, 224))
    assert (h, w) == (140, 224)  # the 160:256 aspect, the long side capped at 224
    clip = sorted((tmp_path / "synthetic_clip" / "Data" / "VID" / "val").glob("*/*.JPEG"))
    assert len(clip) == 3  # no more frames generated than --max-frames reads
    assert cv2.imread(str(clip[0])).shape == (h, w, 3)
    video, width, _ = _video(tmp_path / "compare.mp4")
    assert len(video) == 3 and width == 2 * w
    assert SPEEDUP.match(_nonempty_lines(out)[-2])


def test_the_mobile_configs_clip_is_their_input_size():
    for cfg in (DFF_CFG, RFCN_CFG):
        assert clip_size(load_config(cfg).SCALES[0]) == (320, 512)


def test_compare_without_a_twin_runs_the_dff_weights_per_frame(models, frames, tmp_path, capsys):
    # the default twin goes with the embedded DFF model only: another DFF model is compared with itself
    rc = run_demo([str(frames), "--model", str(models["dff"]), "--compare", "--out", str(tmp_path), "--no-frames",
                   "--quiet", "--no-video"],
                  name="dff_rfcn/demo.py", kind="dff", default_cfg=str(DFF_CFG), default_out=str(tmp_path),
                  what="a DFF model", default_model=str(tmp_path / "elsewhere.pth"),
                  default_compare_model=str(models["rfcn"]))
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert f"per-frame R-FCN (same weights): {N} frames ({N} key)" in out
    assert (tmp_path / "summary.png").is_file() and not (tmp_path / "compare.mp4").exists()  # --no-video
    assert SPEEDUP.match(_nonempty_lines(out)[-2])


@pytest.mark.parametrize("which, needles", [("rfcn_3_classes", ["3 classes", "ellipse, box, star", "same class list"]),
                                            ("dff", ["dff checkpoint", "rfcn"])])
def test_compare_model_must_be_a_per_frame_rfcn_with_the_same_classes(models, frames, tmp_path, capsys, which, needles):
    rc = run_demo([str(frames), "--model", str(models["dff"]), "--compare-model", str(models[which]),
                   "--out", str(tmp_path / "o")],
                  name="dff_rfcn/demo.py", kind="dff", default_cfg=str(DFF_CFG), default_out=str(tmp_path),
                  what="a DFF model")
    _, err = capsys.readouterr()
    assert rc == 2 and "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, err
    assert "--compare-model" in lines[0] and str(models[which]) in lines[0]
    for n in needles:
        assert n in lines[0], (n, lines[0])
    assert not (tmp_path / "o").exists()  # refused before anything ran


def test_ctrl_c_in_the_per_frame_run_finalises_the_comparison(models, frames, tmp_path, capsys, monkeypatch):
    """SIGINT while the per-frame run draws its second frame: the run stops there, compare.mp4 is complete (under its
    final name, the frames so far) and the summary still ends with the speed-up and where the time goes."""
    add_base = compare_mod.Comparison.add_base
    seen = []

    def add_base_then_interrupt(self, r):
        add_base(self, r)
        seen.append(r.index)
        if len(seen) == 2:
            signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(compare_mod.Comparison, "add_base", add_base_then_interrupt)
    rc = run_demo([str(frames), "--model", str(models["dff"]), "--compare-model", str(models["rfcn"]),
                   "--out", str(tmp_path), "--no-frames", "--quiet"],
                  name="dff_rfcn/demo.py", kind="dff", default_cfg=str(DFF_CFG), default_out=str(tmp_path),
                  what="a DFF model")
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "stopped by SIGINT" in out and f"dff (key interval 10): {N} frames" in out
    assert "per-frame R-FCN (mobile twin): 2 frames" in out
    video, width, _ = _video(tmp_path / "compare.mp4")
    assert len(video) == 2 and width == 2 * W
    assert not list(tmp_path.glob("*.tmp*"))
    assert (tmp_path / "summary.png").is_file()
    *_, speed, split = _nonempty_lines(out)
    assert SPEEDUP.match(speed) and split.startswith("where the time goes")


EMBEDDED_DFF = REPO / "data" / "models" / "dff_mobile_synthetic.pth"
EMBEDDED_TWIN = REPO / "data" / "models" / "rfcn_mobile_synthetic.pth"


@pytest.mark.slow
def test_the_readme_command_with_the_embedded_models_shows_the_objects(tmp_path):
    """``python dff_rfcn/demo.py --compare`` as a new user runs it (here 20 frames): the embedded mobile DFF and its
    twin on a 320x512 clip of an unseen seed; at the default drawing threshold (0.7) both draw most of the clip's
    objects (the clip's own annotations count them), not "zero or one box" per frame."""
    assert EMBEDDED_DFF.is_file() and EMBEDDED_TWIN.is_file()
    p = subprocess.run([sys.executable, "dff_rfcn/demo.py", "--compare", "--max-frames", "20", "--out", str(tmp_path),
                        "--no-frames", "--quiet"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    out = p.stdout
    assert "dff_mobile_synthetic.pth" in out and "rfcn_mobile_synthetic.pth" in out
    xmls = sorted((tmp_path / "synthetic_clip" / "Annotations" / "VID" / "val").glob("*/*.xml"))[:20]
    objects = sum(x.read_text().count("<object>") for x in xmls)
    drawn = [int(n) for n in re.findall(r"(\d+) boxes drawn", out)]
    assert objects >= 20 and len(drawn) == 2, (objects, drawn)
    assert all(n >= objects // 2 for n in drawn), (drawn, objects)
    video, width, height = _video(tmp_path / "compare.mp4")
    assert len(video) == 20 and width == 2 * 512 and height == 320 + caption_height(512)
    assert (tmp_path / "summary.png").stat().st_size > 20_000
