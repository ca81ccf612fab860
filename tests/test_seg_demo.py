"""The segmentation demos (``dff_deeplab/demo.py``, ``deeplab/demo.py``) and the demo's per-task presentation
(:mod:`dff.apps.present`).

The models are tiny random-weight DeepLab / DFF DeepLab checkpoints made here (the embedded ones are trained
separately): the label maps mean nothing, the pipeline and the outputs are what is checked. The scripts run
in-process (``runpy``), so the test costs no interpreter start.
"""
from __future__ import annotations

import json
import pathlib
import runpy
import sys

import cv2
import numpy as np
import pytest
import torch

from dff.api import frame_record
from dff.apps.compare import annotate, caption_height
from dff.apps.demo import clip_size, run_demo, synthetic_clip
from dff.apps.present import (
    PRESENTATIONS,
    SEG_PALETTE,
    draw_labels,
    presentation,
)
from dff.config import load_config
from dff.engine.segment import class_fractions
from dff.engine.video import STAGES, FrameResult
from dff.models.builder import build_model
from dff.utils.checkpoint import save_checkpoint

REPO = pathlib.Path(__file__).resolve().parents[1]
DEEPLAB_CFG = REPO / "experiments" / "deeplab" / "cfgs" / "deeplab_mobile_synthetic.yaml"
DFF_DEEPLAB_CFG = REPO / "experiments" / "dff_deeplab" / "cfgs" / "dff_deeplab_mobile_synthetic.yaml"
NAMES = ("__background__", "ellipse", "box", "triangle", "star", "ring")
# small and fast: a thin backbone and flow network, inputs of at most 64 x 96 (the clip: 60 x 96)
SMALL = ["network.MOBILENET_WIDTH=0.35", "network.DFF_FEAT_DIM=32", "SCALES=[64,96]",
         f"dataset.CLASSES=[{','.join(NAMES[1:])}]", f"dataset.NUM_CLASSES={len(NAMES)}"]
N, KEY_INTERVAL = 12, 5  # the clip's frames; the config's TEST.KEY_FRAME_INTERVAL


def _checkpoint(path: pathlib.Path, kind: str, cfg_path: pathlib.Path, overrides: list[str]) -> pathlib.Path:
    cfg = load_config(cfg_path, overrides)
    torch.manual_seed(0)
    model = build_model(kind, cfg).eval()
    assert model.task == "seg" and model.class_names == NAMES
    save_checkpoint(path, model_state=model, config=cfg, extra={"weights": "test", "model_kind": model.kind})
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, pathlib.Path]:
    d = tmp_path_factory.mktemp("seg_models")
    return {"deeplab": _checkpoint(d / "deeplab.pth", "deeplab", DEEPLAB_CFG, SMALL),
            "dff_deeplab": _checkpoint(d / "dff_deeplab.pth", "dff_deeplab", DFF_DEEPLAB_CFG,
                                       [*SMALL, "network.FLOWNET_WIDTH=0.5"])}


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> pathlib.Path:
    """The detection demo's default clip (:func:`synthetic_clip`), N frames at the models' input size."""
    return pathlib.Path(synthetic_clip(str(tmp_path_factory.mktemp("clip")), frames=N, scales=(64, 96)))


def _script(monkeypatch, script: str, argv: list[str]) -> int:
    """Run ``script`` (relative to the repository) as ``python script argv...`` in this process; its exit status."""
    monkeypatch.setattr(sys, "argv", [script, *argv])
    with pytest.raises(SystemExit) as e:
        runpy.run_path(str(REPO / script), run_name="__main__")
    return int(e.value.code or 0)


def _video(path: pathlib.Path) -> tuple[int, int, int]:
    """(frames, width, height) of an .mp4 (it must open)."""
    cap = cv2.VideoCapture(str(path))
    assert cap.isOpened(), path
    size = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    return n, *size


def test_dff_deeplab_demo_compare_writes_overlays_label_maps_and_class_fractions(models, clip, tmp_path,
                                                                                 monkeypatch, capsys):
    out, labels_dir, jsonl = tmp_path / "out", tmp_path / "labels", tmp_path / "frames.jsonl"
    rc = _script(monkeypatch, "dff_deeplab/demo.py",
                 [str(clip), "--model", str(models["dff_deeplab"]), "--compare-model", str(models["deeplab"]),
                  "--compare", "--labels-out", str(labels_dir), "--json-out", str(jsonl), "--out", str(out)])
    stdout, err = capsys.readouterr()
    assert rc == 0, err
    h, w = clip_size((64, 96))
    frames = sorted(clip.glob("*.JPEG"))
    assert len(frames) == N and cv2.imread(str(frames[0])).shape == (h, w, 3)

    # the summary: both runs, the classes present instead of boxes, the speed-up last but one
    assert f"dff_deeplab (key interval {KEY_INTERVAL}): {N} frames (3 key)" in stdout
    assert f"per-frame DeepLab (mobile twin): {N} frames ({N} key)" in stdout
    assert "classes present per frame" in stdout and "boxes" not in stdout
    lines = [ln for ln in stdout.splitlines() if ln.strip()]
    assert lines[-2].startswith("speed-up of DFF over per-frame (network only): ")
    assert "class present" in err or "classes present" in err  # the per-frame lines

    # the drawn outputs: one annotated frame each, demo.mp4, the side-by-side video and the summary page
    assert len(list(out.glob("*.jpg"))) == N
    assert _video(out / "demo.mp4") == (N, w, h)
    assert _video(out / "compare.mp4") == (N, 2 * w, h + caption_height(w))
    png = (out / "summary.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    assert not list(out.glob("*.tmp*")) and not list(out.glob(".*"))

    # the label maps: one PNG per frame, named after it, the frame's size, class indices only
    maps = sorted(labels_dir.iterdir())
    assert [p.name for p in maps] == [f.stem + ".png" for f in frames]  # nothing else (no temporary files)
    label_maps = {}
    for p in maps:
        lab = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
        assert lab is not None and lab.dtype == np.uint8 and lab.shape == (h, w), (p, None if lab is None else lab.shape)
        assert int(lab.max()) < len(NAMES)
        label_maps[p.stem] = lab

    # the JSON lines: the usual frame fields, class fractions summing to 1 (those of the label map written),
    # key frames every KEY_INTERVAL frames
    records = [json.loads(ln) for ln in jsonl.read_text().splitlines()]
    assert [r["index"] for r in records] == list(range(N)) and [r["seq"] for r in records] == list(range(N))
    for r in records:
        assert {"name", "timestamp", "latency_ms", "is_key", "key_index", "age", "dropped", "net_ms"} <= set(r)
        assert r["detections"] == []
        fractions = r["class_fractions"]
        assert fractions and set(fractions) <= set(NAMES) and all(0 < v <= 1 for v in fractions.values())
        assert sum(fractions.values()) == pytest.approx(1.0, abs=1e-3)
        assert fractions == class_fractions(label_maps[pathlib.Path(r["name"]).stem], NAMES)
        assert r["is_key"] == (r["index"] % KEY_INTERVAL == 0)
        assert r["key_index"] == r["index"] - r["index"] % KEY_INTERVAL and r["age"] == r["index"] % KEY_INTERVAL


def test_per_frame_deeplab_demo_ignores_the_detector_thresholds(models, clip, tmp_path, monkeypatch, capsys):
    jsonl = tmp_path / "f.jsonl"
    rc = _script(monkeypatch, "deeplab/demo.py",
                 [str(clip), "--model", str(models["deeplab"]), "--max-frames", "3", "--thresh", "0.9",
                  "--vis-thresh", "0.99", "--json-out", str(jsonl), "--out", str(tmp_path / "o"), "--no-video"])
    _, err = capsys.readouterr()
    assert rc == 0, err
    records = [json.loads(ln) for ln in jsonl.read_text().splitlines()]
    assert len(records) == 3 and all(r["is_key"] and r["age"] == 0 for r in records)
    assert all(sum(r["class_fractions"].values()) == pytest.approx(1.0, abs=1e-3) for r in records)
    assert len(list((tmp_path / "o").glob("*.jpg"))) == 3


def test_no_input_runs_the_embedded_model_on_the_detection_demo_s_synthetic_clip(models, tmp_path, capsys):
    """No input, no --model: the embedded model (here: the test's, given as the default) on the synthetic clip the
    detection demo generates, at the model's input size."""
    rc = run_demo(["--out", str(tmp_path), "--max-frames", "2", "--no-frames", "--quiet"], name="deeplab/demo.py",
                  kind="deeplab", default_cfg=str(DEEPLAB_CFG), default_out=str(tmp_path), what="a DeepLab checkpoint",
                  default_model=str(models["deeplab"]), missing_model_hint="never shown")
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "embedded model" in out and "synthetic clip" in out and "deeplab: 2 frames (2 key)" in out
    clip = sorted((tmp_path / "synthetic_clip" / "Data" / "VID" / "val").glob("*/*.JPEG"))
    assert len(clip) == 2 and cv2.imread(str(clip[0])).shape == (*clip_size((64, 96)), 3)
    assert _video(tmp_path / "demo.mp4")[0] == 2


def test_a_missing_embedded_model_names_the_file_and_the_training_command(tmp_path, capsys):
    script = runpy.run_path(str(REPO / "dff_deeplab" / "demo.py"), run_name="not_main")  # its constants only
    missing = tmp_path / "data" / "models" / "dff_deeplab_mobile_synthetic.pth"
    rc = run_demo(["--compare", "--out", str(tmp_path / "o")], name="dff_deeplab/demo.py", kind="dff_deeplab",
                  default_cfg=str(DFF_DEEPLAB_CFG), default_out=str(tmp_path / "o"), what="a DFF DeepLab checkpoint",
                  default_model=str(missing), default_compare_model=str(tmp_path / "nope.pth"),
                  missing_model_hint=script["TRAIN"])
    _, err = capsys.readouterr()
    assert rc == 2 and "Traceback" not in err
    (line,) = [ln for ln in err.splitlines() if ln.startswith("error:")]
    for needle in ("dff_deeplab_mobile_synthetic.pth", "docs/training.md",
                   "experiments/dff_deeplab/dff_deeplab_end2end_train_test.py", "--model"):
        assert needle in line, (needle, line)
    assert not (tmp_path / "o").exists()


# the presentations, directly ----------------------------------------------------------------------------
def _result(detections: list, labels: np.ndarray | None, image: np.ndarray, is_key: bool = True) -> FrameResult:
    times = dict.fromkeys(STAGES, 0.001)
    times["total"] = sum(times.values())
    return FrameResult(7, "0007.JPEG", is_key, detections, times, image, labels=labels, key_index=5, age=2)


def test_the_table_has_both_tasks():
    assert presentation("det") is PRESENTATIONS["det"] and presentation("seg") is PRESENTATIONS["seg"]
    assert (presentation("det").per_frame_kind, presentation("seg").per_frame_kind) == ("rfcn", "deeplab")
    with pytest.raises(ValueError, match="tasks: det, seg"):
        presentation("pose")


def test_detection_presentation_is_the_detection_demo_s_drawing_and_json():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)
    dets = [np.zeros((0, 5), np.float32), np.array([[5, 5, 40, 30, 0.9], [1, 1, 9, 9, 0.2]], np.float32),
            np.array([[20, 10, 70, 50, 0.8]], np.float32)]
    r = _result(dets, None, image, is_key=False)
    det = presentation("det")
    drawn = det.draw_result(r, ("bg", "a", "b"), 0.5, mark_keys=True)
    assert np.array_equal(drawn, annotate(image, dets, ("bg", "a", "b"), 0.5, key_frame=False, age=2))
    assert det.record(r, 3, 1.5, 0.01, 0, ("bg", "a", "b"), 0.5) == frame_record(r, 3, 1.5, 0.01, 0, ("bg", "a", "b"), 0.5)
    assert det.count(r, 0.5) == 2 and det.count_text(2, 0.5) == "2 boxes > 0.5"


def test_segmentation_presentation_overlay_fractions_and_count():
    image = np.full((40, 60, 3), 100, np.uint8)
    labels = np.zeros((40, 60), np.uint8)
    labels[:10, :30] = 1  # ellipse: 300 px
    labels[20:40, 30:60] = 4  # star: 600 px
    r = _result([], labels, image)
    seg = presentation("seg")
    assert seg.count(r, 0.7) == 2 and seg.count_text(2, 0.7) == "2 classes present"
    rec = seg.record(r, 0, 1.0, 0.0, 0, NAMES, 0.7)
    assert rec["class_fractions"] == {"__background__": 0.625, "ellipse": 0.125, "star": 0.25}
    assert rec["detections"] == [] and rec["index"] == 7 and rec["age"] == 2

    im = draw_labels(image, labels, NAMES, legend=False)
    assert np.array_equal(im[labels == 0], image[labels == 0])  # the background is left unpainted
    expected = np.round(100 * 0.5 + np.array(SEG_PALETTE[4]) * 0.5)
    assert np.abs(im[30, 50].astype(int) - expected).max() <= 1  # alpha-blended with the class's fixed colour
    assert not np.array_equal(im[labels == 1][0], im[labels == 4][0])
    with_legend = draw_labels(image, labels, NAMES)
    assert not np.array_equal(with_legend[-5:, :20], im[-5:, :20])  # the legend, bottom left
    # a label map at another size is fitted to the frame; the kept (PNG) form draws the same as the map
    assert draw_labels(image, labels[::2, ::2], NAMES).shape == image.shape
    marked = seg.draw(image, seg.keep(r, 0.7), NAMES, 0.7, key_frame=True)
    assert np.array_equal(marked, seg.draw(image, labels, NAMES, 0.7, key_frame=True))
    assert not np.array_equal(marked, with_legend)  # the KEY marker
