"""The public API (dff.api, docs/api.md): load_detector's defaults are the demo's, detect() gives the engine's
boxes on arrays and on folders, to_json() follows the demo's JSON lines, errors name what is wrong; the two
examples run (slow: subprocesses)."""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

import dff
from dff.api import DEFAULT_MODEL, JSON_THRESH, THRESH, Box, DetectionFrame, frame_record
from dff.apps.demo import build_parser, demo_class_names, synthetic_clip
from dff.deploy import make_detector
from dff.engine.fastpath import FastPath
from dff.engine.frames import FrameSource, list_frames
from dff.eval.tester import DEFAULT_THRESH
from dff.models.builder import load_model

REPO = pathlib.Path(__file__).resolve().parents[1]
SCHEMA = json.loads((REPO / "docs" / "frame_result.schema.json").read_text())
FRAMES = 4


@pytest.fixture(scope="module")
def det():
    with dff.load_detector() as d:
        yield d


@pytest.fixture(scope="module")
def clip(det, tmp_path_factory):
    """A short synthetic clip at the model's input size, as the demo makes it (a frame folder)."""
    return synthetic_clip(str(tmp_path_factory.mktemp("clip")), frames=FRAMES, scales=det.cfg.SCALES[0])


def demo_args():
    """The DFF demo's command-line defaults."""
    return build_parser("dff_rfcn/demo.py", "unused.yaml", "out", dff=True).parse_args([])


@pytest.fixture(scope="module")
def engine_boxes(clip):
    """The engine run directly, with the demo's settings, on the clip: per frame (name, is_key, dets)."""
    args = demo_args()
    model, cfg = load_model(DEFAULT_MODEL, device=args.device)
    engine = make_detector(model, cfg, backend=args.backend, key_interval=args.key_interval, device=args.device,
                           thresh=args.thresh, keep_images=True, fast=FastPath.from_name(args.fast, args.device))
    source = FrameSource(clip, prepare=engine.prepare, on_error="skip")
    return [(r.name, r.is_key, r.detections) for r in engine.run(source)]


def as_rows(boxes: list[Box]) -> np.ndarray:
    return np.array([[b.class_id, b.x1, b.y1, b.x2, b.y2, b.score] for b in boxes]).reshape(-1, 6)


def dets_rows(dets) -> np.ndarray:
    rows = [[c, *d] for c in range(1, len(dets)) for d in np.asarray(dets[c]).reshape(-1, 5).tolist()]
    rows = np.array(rows).reshape(-1, 6)
    return rows[np.argsort(-rows[:, 5], kind="stable")]


def test_defaults_are_the_demos(det):
    args = demo_args()
    assert os.path.samefile(det.model_path, REPO / "data" / "models" / "dff_mobile_synthetic.pth")
    assert det.kind == "dff" and det.backend == "torch"
    assert det.device == torch.device("cuda" if torch.cuda.is_available() else "cpu") == torch.device(args.device)
    assert det.thresh == THRESH["dff"] == DEFAULT_THRESH["dff"] == args.thresh == 1e-4
    assert THRESH == DEFAULT_THRESH
    assert JSON_THRESH == args.vis_thresh == 0.7
    assert det.fast == FastPath.from_name(None, det.device) == FastPath.from_name(args.fast, args.device)
    assert det.key_interval == det.cfg.TEST.KEY_FRAME_INTERVAL
    assert det.class_names == tuple(demo_class_names(det.model))[:] and det.class_names[0] == "__background__"
    assert det.engine.sync is False and det.engine.keep_images is False
    assert "dff_mobile_synthetic.pth" in repr(det)


def test_rfcn_model_gets_the_per_frame_threshold():
    with dff.load_detector(REPO / "data" / "models" / "rfcn_mobile_synthetic.pth", device="cpu", fast="none") as d:
        assert d.kind == "rfcn" and d.thresh == 1e-3 == build_parser("r", "c", "o", dff=False).parse_args([]).thresh
        assert d.key_interval == 1


def test_detect_on_arrays_and_folder_gives_the_engines_boxes(det, clip, engine_boxes):
    images = [cv2.imread(f) for f in list_frames(clip)]
    for source, names in ((images, [f"frame_{i:06d}" for i in range(FRAMES)]),
                          (clip, [n for n, _, _ in engine_boxes])):
        frames = list(det.detect(source))
        assert [f.name for f in frames] == names
        assert [f.index for f in frames] == [f.seq for f in frames] == list(range(FRAMES))
        assert [f.is_key for f in frames] == [k for _, k, _ in engine_boxes] == [True] + [False] * (FRAMES - 1)
        for f, (_, _, dets) in zip(frames, engine_boxes):
            assert f.boxes, "the embedded model finds the synthetic objects"
            assert all(isinstance(b, Box) and b.label == det.class_names[b.class_id] for b in f.boxes)
            assert [b.score for b in f.boxes] == sorted((b.score for b in f.boxes), reverse=True)
            np.testing.assert_allclose(as_rows(f.boxes), dets_rows(dets), rtol=0, atol=1e-4)
            assert f.image is None and f.dropped == 0 and f.latency >= 0 and f.times["total"] > 0


def test_max_frames_generators_and_stacked_arrays(det, clip):
    images = [cv2.imread(f) for f in list_frames(clip)]
    assert [f.index for f in det.detect(iter(images), max_frames=2)] == [0, 1]
    assert [f.name for f in det.detect(clip, max_frames=1)] == [os.path.basename(list_frames(clip)[0])]
    assert len(list(det.detect(np.stack(images[:2])))) == 2


def test_to_json_is_the_demos_json_line(det, clip):
    frame = next(iter(det.detect(clip)))
    record = frame.to_json()
    assert set(SCHEMA["required"]) <= set(record) <= set(SCHEMA["properties"])
    assert record == frame_record(frame.result, 0, frame.timestamp, frame.latency, 0, det.class_names, JSON_THRESH)
    item = SCHEMA["properties"]["detections"]["items"]
    assert record["detections"], "the key frame has confident boxes"
    for d in record["detections"]:
        assert set(d) == set(item["required"]) and len(d["box"]) == 4 and d["score"] > JSON_THRESH
    assert len(record["detections"]) == sum(b.score > JSON_THRESH for b in frame.boxes)
    assert len(frame.to_json(thresh=0.0)["detections"]) == len(frame.boxes)
    json.dumps(record)


def test_keep_images_and_the_context_manager_ends_an_iteration(clip):
    with dff.load_detector(device="cpu", keep_images=True, key_interval=2) as d:
        run = d.detect(clip)
        first = next(run)
        assert isinstance(first, DetectionFrame) and first.image.shape[2] == 3 and first.image.dtype == np.uint8
        assert [f.is_key for f in [first, next(run), next(run)]] == [True, False, True]
    assert next(run, None) is None  # closed with the block
    d.reset()
    assert len(list(d.detect(clip, max_frames=1))) == 1  # still usable


def test_bad_model_paths_name_the_file(tmp_path, monkeypatch):
    missing = tmp_path / "nope.pth"
    with pytest.raises(dff.CheckpointError, match="nope.pth"):
        dff.load_detector(missing)
    bad = tmp_path / "garbage.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(dff.CheckpointError, match="garbage.pth"):
        dff.load_detector(str(bad))
    monkeypatch.setattr(dff.api, "DEFAULT_MODEL", str(tmp_path / "gone" / "dff_mobile_synthetic.pth"))
    with pytest.raises(dff.CheckpointError, match=r"gone.*dff_mobile_synthetic\.pth.*pass a model path"):
        dff.load_detector()
    with pytest.raises(TypeError, match="checkpoint path"):
        dff.load_detector(torch.nn.Linear(1, 1))
    with pytest.raises(ValueError, match="backend"):
        dff.load_detector(backend="tensorrt")


def test_bad_sources_give_clear_errors(det, tmp_path):
    with pytest.raises(dff.VideoReadError, match="missing.mp4"):
        det.detect(str(tmp_path / "missing.mp4"))
    with pytest.raises(dff.VideoReadError, match="no image files"):
        det.detect(tmp_path)
    with pytest.raises(ValueError, match=r"frame 1 of the source: expected an HxWx3 uint8 BGR image.*\(8, 8\)"):
        list(det.detect([np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), np.uint8)]))
    with pytest.raises(ValueError, match="frame 0.*float32"):
        list(det.detect([np.zeros((8, 8, 3), np.float32)]))
    with pytest.raises(TypeError, match=r"one image of shape \(8, 8, 3\): pass \[image\]"):
        det.detect(np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(TypeError, match="source must be"):
        det.detect(3)


# --------------------------------------------------------------------------------------------------
# the examples, as a user runs them


def run_example(*argv: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "examples" / argv[0]), *argv[1:]], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO)


@pytest.mark.slow
def test_example_video_to_jsonl(tmp_path):
    p = run_example("video_to_jsonl.py", "--max-frames", "3")  # no input: a synthetic clip
    assert p.returncode == 0, p.stderr
    lines = [json.loads(line) for line in p.stdout.splitlines()]
    assert [r["index"] for r in lines] == [0, 1, 2] and lines[0]["is_key"] and lines[0]["detections"]
    assert all(set(SCHEMA["required"]) <= set(r) <= set(SCHEMA["properties"]) for r in lines)
    out = tmp_path / "out.jsonl"
    p = run_example("video_to_jsonl.py", str(tmp_path / "missing.mp4"), "--out", str(out))
    assert p.returncode == 1 and "missing.mp4" in p.stderr and not p.stdout


@pytest.mark.slow
def test_example_camera_threshold_on_a_video_file(tmp_path):
    folder = synthetic_clip(str(tmp_path), frames=3)
    video = str(tmp_path / "clip.mp4")
    images = [cv2.imread(f) for f in list_frames(folder)]
    writer = cv2.VideoWriter(video, cv2.VideoWriter_fourcc(*"mp4v"), 25.0, images[0].shape[1::-1])
    for im in images:
        writer.write(im)
    writer.release()
    p = run_example("camera_threshold.py", video, "--thresh", "0.9")
    assert p.returncode == 0, p.stderr
    lines = [line.split(" ", 2) for line in p.stdout.splitlines()]  # name, key / non-key, boxes or "-"
    assert [(name, kind) for name, kind, _ in lines] == [("frame_000000", "key"), ("frame_000001", "non-key"),
                                                         ("frame_000002", "non-key")]
    boxes = [b.split() for _, _, text in lines if text != "-" for b in text.split("; ")]
    assert boxes and all(len(b) == 3 and float(b[1]) > 0.9 and len(b[2].split(",")) == 4 for b in boxes)
    p = run_example("camera_threshold.py", "cam:99")  # no such camera: a clear message, exit status 1
    assert p.returncode == 1 and "cam:99" in p.stderr and "Traceback" not in p.stderr
