"""The mobile detector on ONNX and onnxruntime (docs/onnx.md "The mobile detector").

The demos' default model (``dff.api.DEFAULT_MODEL``: MobileNetV2, Light Flow, the light head, the flow-guided
ConvGRU over key frames) is exported once (``cached_export`` into ``$DFF_ONNX_CACHE``, else ``~/.cache/dff/onnx``,
as the backend's own cache: the export takes about a minute on 2 CPU cores, the module ~70 s then, ~15 s once the
export is there; it is reused while the weights and the traced code are unchanged) and run by the onnxruntime engine against the PyTorch engine on a 12-frame clip at key
interval 3: 8 frames at the model's input size (320 x 512, key frames 0, 3, 6), then 4 frames of another aspect
ratio that the preprocessing makes 320 x 427 (an odd width: a size change, so frame 8 is a first key frame again,
and frame 11 aggregates at that size). Key frames 3, 6 and 11 run ``keyagg.onnx``'s stages.

Measured on this project's CPU (2026-12-08): every detection above 0.1 matched, boxes within 4.3e-5 px and scores
within 7e-7 (float32 rounding: onnxruntime's convolutions sum in another order). Without the aggregation (plain
DFF, the same weights) the aggregated key frames' boxes move by 1.2 to 29 px and their scores by up to 0.024, so a
backend that skipped it fails.
"""
from __future__ import annotations

import json
import os
import runpy
import shutil

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from dff.api import DEFAULT_MODEL
from dff.apps.demo import run_demo, synthetic_clip
from dff.config import update_config
from dff.deploy import cached_export, default_cache_dir, onnx_detector, read_manifest
from dff.deploy.export import FORMAT_VERSION, MANIFEST, export_signature
from dff.deploy.graphs import build_stage
from dff.engine.frames import FrameSource
from dff.engine.postprocess import dets_to_rows
from dff.engine.video import VideoDetector
from dff.models.builder import load_model
from dff.parity.fastpath import match_rows

pytestmark = pytest.mark.slow  # ONNX export and onnxruntime

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INTERVAL = 3
KEYS = [True, False, False, True, False, False, True, False, True, False, False, True]
AGGREGATED = [3, 6, 11]  # key frames with a previous key frame of their size
# the bar of the demo's JSON lines (detections above 0.5: same class, 1 px, 0.01 in score, 95 % of them), and the
# engine's much tighter one (every detection above 0.1; float32 rounding is ~1e-5 px, ~1e-6 in score)
DEMO_MATCH, DEMO_SCORE, DEMO_BOX, DEMO_SCORE_TOL = 0.95, 0.5, 1.0, 0.01
BOX_TOL, SCORE_TOL = 1e-2, 1e-4
STANDARD_OPS = {s.name for s in onnx.defs.get_all_schemas() if s.domain == ""}


@pytest.fixture(scope="module")
def model():
    return load_model(DEFAULT_MODEL)[0]


@pytest.fixture(scope="module")
def onnx_dir(model) -> str:
    return cached_export(model, default_cache_dir())


@pytest.fixture(scope="module")
def frames(tmp_path_factory, model) -> list[np.ndarray]:
    """12 BGR frames: 8 of the synthetic clip at the model's input size, 4 more resized to 480 x 640 (4:3)."""
    clip = synthetic_clip(str(tmp_path_factory.mktemp("clip")), frames=len(KEYS), scales=model.cfg.SCALES[0])
    images = [f.image for f in FrameSource(clip)]
    return images[:8] + [cv2.resize(im, (640, 480)) for im in images[8:]]


def _rows(det: VideoDetector, frames: list[np.ndarray]) -> tuple[list[np.ndarray], list[dict], list[bool], list[dict]]:
    """Each frame through ``det``: detection rows ``[class, x1, y1, x2, y2, score]``, the network outputs, is_key and
    the stage times."""
    det.reset()
    rows, outs, keys, times = [], [], [], []
    with torch.inference_mode():
        for im in frames:
            data, im_info = det.prepare(im)
            out, is_key, t = det.step(data, im_info)
            dets = det.postprocess(out, im_info)
            rows.append(dets_to_rows([torch.from_numpy(np.asarray(d)) for d in dets]).numpy())
            outs.append({k: out[k] for k in ("rois", "cls_prob", "bbox_pred")})
            keys.append(is_key)
            times.append(t)
    return rows, outs, keys, times


def test_stages_compute_what_the_model_computes(model):
    """Eagerly, the export forms of the mobile parts are the model's: Light Flow (padded to even sizes in the stage)
    and the ConvGRU exactly, the light head's proposals exactly and its scores within float32 rounding (PSROI
    pooling summed in float32), at odd sizes too."""
    g = torch.Generator().manual_seed(2)
    with torch.inference_mode():
        for h, w in ((160, 256), (97, 161)):
            cur, key = torch.randn(1, 3, h, w, generator=g) * 40, torch.randn(1, 3, h, w, generator=g) * 40
            flow, scale = build_stage("flow", model)(cur, key)
            want_flow, want_scale = model.estimate_flow(cur, key)
            assert torch.equal(flow, want_flow) and torch.equal(scale, want_scale)
            own, prev = model.extract_feature(cur), model.extract_feature(key)
            assert torch.equal(build_stage("aggregate", model)(own, prev), model.aggregate(own, prev))
            info = torch.tensor([[h, w, 1.0]])
            rois, cls_prob, bbox_pred = build_stage("head", model)(own, info)
            want = model.detect(own, info)
            assert torch.equal(rois, want["rois"])
            torch.testing.assert_close(cls_prob, want["cls_prob"], atol=1e-6, rtol=1e-5)
            torch.testing.assert_close(bbox_pred, want["bbox_pred"], atol=1e-5, rtol=1e-5)


def test_onnxruntime_runs_the_key_frame_aggregation_as_pytorch(model, onnx_dir, frames):
    """The engines on the default model at key interval 3: the same key frames, the aggregation on the same ones,
    and every detection above 0.1 within float32 rounding; plain DFF (no aggregation) is far from both."""
    cfg = model.cfg
    want, _, want_keys, want_times = _rows(VideoDetector(model, cfg, key_interval=INTERVAL), frames)
    got, _, got_keys, got_times = _rows(onnx_detector(onnx_dir, cfg, key_interval=INTERVAL), frames)
    assert want_keys == got_keys == KEYS
    for times in (want_times, got_times):
        assert [i for i, t in enumerate(times) if t["aggregate"] > 0] == AGGREGATED
    assert frames[8].shape[:2] == (480, 640) and sum(len(r) for r in want) > 0
    for k, (a, b) in enumerate(zip(want, got)):
        m = match_rows(a, b, 0.1, BOX_TOL, SCORE_TOL)
        assert m.considered > 0 and m.unmatched == 0, (k, m)
    # the aggregation matters here: without it (the same model as plain DFF) the aggregated key frames' detections
    # are not PyTorch's, so an engine that ran key.onnx on them would fail the match above
    plain = _rows(VideoDetector(model, _plain_config(), key_interval=INTERVAL), frames)[0]
    for k in AGGREGATED:
        assert match_rows(plain[k], want[k], 0.1, BOX_TOL, SCORE_TOL).unmatched > 0, k


def _plain_config():
    """The default model's config with TEST.AGGREGATION false: plain DFF with the mobile parts."""
    cfg = load_model(DEFAULT_MODEL)[1]
    update_config(cfg, {"TEST": {"AGGREGATION": False}})
    return cfg


def _session(path: str) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def test_keyagg_graph_takes_the_state_and_gives_the_new_one(model, onnx_dir, frames):
    """key.onnx, keyagg.onnx and nonkey.onnx run whole (as another runtime would, the host passing the state):
    the engine's outputs on frames 0 (key), 3 (aggregated key) and 4 (warped from the aggregated feature)."""
    det = onnx_detector(onnx_dir, model.cfg, key_interval=INTERVAL)
    _, outs, _, _ = _rows(det, frames[:5])
    inputs = [tuple(t.numpy() for t in det.prepare(im)) for im in frames[:5]]
    key = _session(os.path.join(onnx_dir, "key.onnx")).run(None, {"data": inputs[0][0], "im_info": inputs[0][1]})
    agg = _session(os.path.join(onnx_dir, "keyagg.onnx")).run(
        None, {"data": inputs[3][0], "im_info": inputs[3][1], "prev_key_data": inputs[0][0], "prev_feat": key[0]})
    warped = _session(os.path.join(onnx_dir, "nonkey.onnx")).run(
        None, {"data": inputs[4][0], "im_info": inputs[4][1], "key_data": inputs[3][0], "key_feat": agg[0]})
    for got, k in ((key, 0), (agg, 3), (warped, 4)):
        for i, name in enumerate(("rois", "cls_prob", "bbox_pred"), start=1):
            np.testing.assert_allclose(got[i], outs[k][name].numpy(), atol=1e-5, rtol=1e-5, err_msg=f"{k} {name}")
    assert not np.allclose(agg[0], _session(os.path.join(onnx_dir, "key.onnx")).run(
        None, {"data": inputs[3][0], "im_info": inputs[3][1]})[0], atol=1e-3)  # aggregated, not the own feature


def test_manifest_records_the_aggregation_graph(model, onnx_dir):
    manifest = read_manifest(onnx_dir)
    assert manifest["format_version"] == FORMAT_VERSION == 2 and manifest["signature"] == export_signature(model)
    assert {g: (v["file"], v["inputs"], v["outputs"]) for g, v in manifest["graphs"].items()} == {
        "key": ("key.onnx", ["data", "im_info"], ["feat", "rois", "cls_prob", "bbox_pred"]),
        "nonkey": ("nonkey.onnx", ["data", "key_data", "key_feat", "im_info"],
                   ["feat", "rois", "cls_prob", "bbox_pred", "flow", "scale"]),
        "keyagg": ("keyagg.onnx", ["data", "prev_key_data", "prev_feat", "im_info"],
                   ["feat", "rois", "cls_prob", "bbox_pred", "flow", "scale"])}
    agg = manifest["graphs"]["keyagg"]
    assert agg["stages"] == ["feature", "flow", "warp", "aggregate", "head"]
    assert agg["stage_io"]["aggregate"] == {"inputs": ["own_feat", "prev_warped"], "outputs": ["feat"]}
    assert manifest["stages"]["aggregate"]["graph"] == "keyagg" and manifest["state"]["aggregation"] is True
    assert "light head" in manifest["in_graph"]["head"] and "keyagg.onnx" in manifest["in_graph"]["key_frame_aggregation"]
    graph = onnx.load(os.path.join(onnx_dir, "keyagg.onnx"))
    assert {n.op_type for n in graph.graph.node} <= STANDARD_OPS and {n.domain for n in graph.graph.node} <= {""}
    dims = graph.graph.input[0].type.tensor_type.shape.dim
    assert dims[2].dim_param and dims[3].dim_param  # height and width are symbolic


def test_a_version_1_manifest_still_loads(model, onnx_dir, frames, tmp_path):
    """An export folder of format version 1 (key.onnx and nonkey.onnx, no stage_io): plain DFF runs on it as
    before; with TEST.AGGREGATION the error names keyagg.onnx and the fix."""
    old = tmp_path / "v1"
    old.mkdir()
    for f in ("key.onnx", "nonkey.onnx"):
        os.symlink(os.path.join(onnx_dir, f), old / f)
    manifest = read_manifest(onnx_dir)
    del manifest["graphs"]["keyagg"], manifest["stages"]["aggregate"]
    for g in manifest["graphs"].values():
        del g["stage_io"]
    manifest["format_version"] = 1
    (old / MANIFEST).write_text(json.dumps(manifest))
    plain_cfg = _plain_config()
    want = _rows(VideoDetector(model, plain_cfg, key_interval=INTERVAL), frames[:5])[0]
    got = _rows(onnx_detector(str(old), plain_cfg, key_interval=INTERVAL), frames[:5])[0]
    for a, b in zip(want, got):
        m = match_rows(a, b, 0.1, BOX_TOL, SCORE_TOL)
        assert m.considered > 0 and m.unmatched == 0
    with pytest.raises(ValueError, match=r"keyagg\.onnx.*TEST\.AGGREGATION=false"):
        onnx_detector(str(old), model.cfg, key_interval=INTERVAL)
    manifest["format_version"] = FORMAT_VERSION + 1
    (old / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="version"):
        read_manifest(old)


def _demo(argv: list[str]) -> int:
    return run_demo(argv, name="dff_rfcn/demo.py", kind="dff", what="x",
                    default_cfg=os.path.join(REPO, "experiments", "dff_rfcn", "cfgs", "dff_rfcn_vid_demo.yaml"),
                    default_out="unused", default_model=DEFAULT_MODEL)


def test_demo_on_onnxruntime_gives_the_pytorch_detections(onnx_dir, frames, tmp_path, capsys):
    """dff_rfcn/demo.py (the default model) with --backend onnxruntime --onnx DIR against the torch backend: the
    JSON lines' detections above 0.5 matched (same class, 1 px, 0.01)."""
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, im in enumerate(frames):
        cv2.imwrite(str(folder / f"{i:06d}.jpg"), im)
    common = [str(folder), "--key-interval", str(INTERVAL), "--vis-thresh", str(DEMO_SCORE), "--no-video",
              "--no-frames", "--quiet"]
    records = {}
    for backend in ("torch", "onnxruntime"):
        extra = ["--backend", backend, "--onnx", onnx_dir] if backend == "onnxruntime" else []
        out = tmp_path / f"{backend}.jsonl"
        assert _demo([*common, *extra, "--out", str(tmp_path / backend), "--json-out", str(out)]) == 0, \
            capsys.readouterr().err
        records[backend] = [json.loads(line) for line in out.read_text().splitlines()]
    want, got = records["torch"], records["onnxruntime"]
    assert [r["is_key"] for r in want] == [r["is_key"] for r in got] == KEYS
    considered = matched = 0
    for a, b in zip(want, got):
        for d in a["detections"]:
            considered += 1
            matched += any(e["class_id"] == d["class_id"] and abs(e["score"] - d["score"]) <= DEMO_SCORE_TOL
                           and max(abs(x - y) for x, y in zip(e["box"], d["box"])) <= DEMO_BOX
                           for e in b["detections"])
    assert considered >= len(KEYS) and matched >= DEMO_MATCH * considered, (matched, considered)


def test_export_tool_exports_the_demos_default_model(model, onnx_dir, tmp_path, capsys):
    """tools/export_onnx.py with no --model: the demos' default model (its stages from the cache)."""
    tool = runpy.run_path(os.path.join(REPO, "tools", "export_onnx.py"))
    assert tool["DEFAULT_MODEL"]["dff"] == DEFAULT_MODEL
    assert os.path.isfile(tool["DEFAULT_MODEL"]["rfcn"]) and load_model(tool["DEFAULT_MODEL"]["rfcn"])[0].kind == "rfcn"
    out = tmp_path / "dff"
    stages = os.path.join(os.path.dirname(onnx_dir), "stages")
    assert tool["main"](["--out", str(out), "--cache", stages]) == 0
    text = capsys.readouterr().out
    assert "exporting" not in text and "keyagg: keyagg.onnx" in text  # every stage reused
    assert read_manifest(out)["signature"] == export_signature(model)
    shutil.rmtree(out)
