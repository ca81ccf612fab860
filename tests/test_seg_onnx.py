"""Segmentation models on ONNX and onnxruntime (dff.deploy, docs/onnx.md "Segmentation models").

A tiny random DFF DeepLab (MobileNetV2 x0.35, Light Flow x0.25, 16 feature channels, 64x96 input) and the
per-frame DeepLab with the same feature network and score convolution are exported through the detectors'
machinery (cached_export, the stage cache, model.json) and run in the video engine on onnxruntime; their label
maps and key-frame schedule must be PyTorch's ``VideoSegmenter``'s. The random initialisation is made to give a
real test: the BatchNorm statistics are taken from the clip (a fresh MobileNet's output is ~1e-7, every pixel
the same class), the flow predictors get biases so the flow is ~0.6 feature pixels (zero-initialised they
would make a non-key frame's feature the key frame's exactly) and the scale map varies around 1.

Exports are slow (torch.export, four stages): the module exports the DFF model once; the per-frame model and the
export tool reuse its stages from the stage cache (same weights and settings), so only the graphs are composed.
onnxruntime is imported, not skipped for: CI fails on any skip that is not a missing CUDA device.
"""
from __future__ import annotations

import os
import runpy

import cv2
import numpy as np
import onnx
import onnxruntime  # noqa: F401  (the backend; an ImportError here says the deploy extra is missing)
import pytest
import torch

from dff.config import load_config, set_class_names, update_config
from dff.deploy import cached_export, make_detector, onnx_detector, read_manifest
from dff.deploy.runtime import OnnxStages
from dff.engine.engines import video_engine
from dff.engine.frames import frames_from_arrays
from dff.engine.segment import VideoSegmenter
from dff.models.builder import build_model
from dff.utils.checkpoint import save_checkpoint

pytestmark = pytest.mark.slow  # ONNX export and onnxruntime

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSES = ["ellipse", "box", "triangle", "star", "ring"]
TINY = ["network.MOBILENET_WIDTH=0.35", "network.DFF_FEAT_DIM=16", "SCALES=[64,96]"]
DFF_SETS = TINY + ["network.FLOWNET_WIDTH=0.25", "network.pretrained_flow=", "TEST.KEY_FRAME_INTERVAL=3"]
# frame i % 3 == 0 is a key frame (DFF at interval 3); 7 frames: 3 key frames, 4 warped
SCHEDULE = [True, False, False, True, False, False, True]
# label maps: the fraction of pixels that must be the same class in both backends. The labels are the arg-max of
# the upsampled logits; onnxruntime's convolutions sum in another order than PyTorch's (here the logits, of size
# ~2, differ by up to 5e-5), so a pixel where two classes' logits are that close may flip. None did here
# (measured: every pixel of every frame equal); the margin only keeps such a near-tie from failing the test.
AGREEMENT = 0.995
STANDARD_OPS = {s.name for s in onnx.defs.get_all_schemas() if s.domain == ""}


def _clip(n: int = 7, h: int = 100, w: int = 150) -> list[np.ndarray]:
    """Blurred high-contrast noise, shifted 1 px down and 2 px right per frame (blobs the classes can follow)."""
    rng = np.random.RandomState(0)
    base = cv2.GaussianBlur(rng.randint(0, 255, (h + 40, w + 50, 3)).astype(np.uint8), (0, 0), 3)
    base = ((base.astype(np.float32) - base.mean()) * 6 + 128).clip(0, 255).astype(np.uint8)
    return [np.ascontiguousarray(base[i:i + h, 2 * i:2 * i + w]) for i in range(n)]


@pytest.fixture(scope="module")
def clip() -> list[np.ndarray]:
    return _clip()


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("seg_onnx_cache"))


@pytest.fixture(scope="module")
def models(clip):
    """(DFF DeepLab, per-frame DeepLab with the DFF model's feature network and score convolution)."""
    torch.manual_seed(0)
    cfg = load_config(os.path.join(REPO, "experiments/dff_deeplab/cfgs/dff_deeplab_mobile_synthetic.yaml"), DFF_SETS)
    set_class_names(cfg, CLASSES)
    dff = build_model("dff_deeplab", cfg).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        flownet = dff.flownet
        for conv in (flownet.predict3, flownet.predict4, flownet.predict5):
            conv.weight.normal_(0, 0.05, generator=g)
            conv.bias.normal_(0, 1.0, generator=g)
        flownet.Convolution5_scale.weight.normal_(0, 0.05, generator=g)
        flownet.Convolution5_scale.bias.fill_(1.0)
        dff.score.weight.normal_(0, 0.5, generator=g)
        dff.score.bias.normal_(0, 0.1, generator=g)
        dff.feat_conv_3x3.weight.normal_(0, 0.05, generator=g)
        # BatchNorm statistics of the clip (cumulative averages over its frames)
        engine = video_engine(dff, cfg)
        for m in dff.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.momentum = None
                m.reset_running_stats()
        dff.train()
        for image in clip:
            dff.extract_feature(engine.prepare(image)[0])
    dff.eval()
    pcfg = load_config(os.path.join(REPO, "experiments/deeplab/cfgs/deeplab_mobile_synthetic.yaml"), TINY)
    set_class_names(pcfg, CLASSES)
    per_frame = build_model("deeplab", pcfg).eval()
    per_frame.load_state_dict({k: v for k, v in dff.state_dict().items() if not k.startswith("flownet.")})
    return dff, per_frame


@pytest.fixture(scope="module")
def dff_dir(models, cache) -> str:
    return cached_export(models[0], cache)


def _agreement(got: list, want: list) -> list[float]:
    assert len(got) == len(want)
    out = []
    for a, b in zip(got, want):
        assert a.labels.shape == b.labels.shape and a.labels.dtype == b.labels.dtype == np.uint8
        out.append(float((a.labels == b.labels).mean()))
    return out


def test_dff_deeplab_on_onnxruntime_segments_as_pytorch(models, clip, dff_dir, cache, monkeypatch):
    dff = models[0]
    want = list(video_engine(dff, dff.cfg).run(frames_from_arrays(clip)))
    monkeypatch.setattr("dff.deploy.export.export_onnx", lambda *a, **k: pytest.fail("exported again"))
    engine = make_detector(dff, dff.cfg, backend="onnxruntime", cache_dir=cache)  # the cached export
    assert type(engine) is VideoSegmenter and isinstance(engine.runner, OnnxStages)
    assert engine.runner.onnx_dir == dff_dir and engine.key_interval == 3
    got = list(engine.run(frames_from_arrays(clip)))
    assert [r.is_key for r in got] == [r.is_key for r in want] == SCHEDULE
    assert [(r.key_index, r.age) for r in got] == [(r.key_index, r.age) for r in want]
    agree = _agreement(got, want)
    assert min(agree) >= AGREEMENT, agree
    assert sum(len(np.unique(r.labels)) > 1 for r in want) == len(want)  # not one class everywhere
    for r in got:
        assert r.detections == [] and (r.times["feature"] > 0) == r.is_key and (r.times["warp"] > 0) != r.is_key

    # the network outputs themselves: key and warped frames' scores within float32 rounding
    torch_engine = video_engine(dff, dff.cfg)
    engine.reset()
    for image in clip[:3]:
        data, im_info = engine.prepare(image)
        out, is_key, _ = engine.step(data, im_info)
        ref, ref_key, _ = torch_engine.step(data, im_info)
        assert is_key == ref_key
        np.testing.assert_allclose(out["seg_score"].numpy(), ref["seg_score"].numpy(), rtol=1e-4, atol=1e-4)


def test_the_export_records_the_task_and_builds_a_segmenter_without_the_model(models, clip, dff_dir):
    dff = models[0]
    manifest = read_manifest(dff_dir)
    assert manifest["task"] == "seg" and manifest["kind"] == "dff_deeplab"
    assert {g: (v["stages"], v["inputs"], v["outputs"]) for g, v in manifest["graphs"].items()} == {
        "key": (["feature", "task_maps"], ["data"], ["feat", "seg_score"]),
        "nonkey": (["flow", "warp", "task_maps"], ["data", "key_data", "key_feat"],
                   ["feat", "seg_score", "flow", "scale"])}
    assert set(manifest["inputs"]) == {"data", "key_data", "key_feat"}
    assert manifest["outputs"]["seg_score"]["shape"][:2] == [1, dff.num_classes]
    assert "label_map" in manifest["host"]["segmentation_post_processing"]
    assert "TEST.RPN_POST_NMS_TOP_N" not in manifest["baked"] and manifest["key_frame_interval"] == 3
    assert manifest["class_names"] == list(dff.class_names)
    for graph in ("key", "nonkey"):
        model = onnx.load(os.path.join(dff_dir, f"{graph}.onnx"))
        onnx.checker.check_model(model)
        assert {n.op_type for n in model.graph.node} <= STANDARD_OPS and {n.domain for n in model.graph.node} <= {""}
        data = model.graph.input[0].type.tensor_type.shape.dim
        assert data[2].dim_param and data[3].dim_param  # dynamic height and width

    # model.json alone: its config, its task's engine, the onnxruntime stages the loop calls
    engine = onnx_detector(dff_dir)
    assert type(engine) is VideoSegmenter and engine.model is None
    for stage in ("feature", "flow", "warp", "task_maps"):
        assert stage in engine.runner.sessions
    got = list(engine.run(frames_from_arrays(clip[:4])))
    want = list(video_engine(dff, dff.cfg).run(frames_from_arrays(clip[:4])))
    assert [r.is_key for r in got] == SCHEDULE[:4]
    assert min(_agreement(got, want)) >= AGREEMENT
    # what only a detector's graphs bake in does not tie a segmentation export; what its graphs do does
    cfg = load_config(os.path.join(REPO, "experiments/dff_deeplab/cfgs/dff_deeplab_mobile_synthetic.yaml"), DFF_SETS)
    set_class_names(cfg, CLASSES)
    update_config(cfg, {"TEST": {"RPN_POST_NMS_TOP_N": 100}})
    onnx_detector(dff_dir, cfg)
    update_config(cfg, {"network": {"DFF_FEAT_DIM": 32}})
    with pytest.raises(ValueError, match="network.DFF_FEAT_DIM"):
        onnx_detector(dff_dir, cfg)


def test_per_frame_deeplab_on_onnxruntime_segments_as_pytorch(models, clip, dff_dir, cache, capsys):
    per_frame = models[1]
    log = []
    engine = make_detector(per_frame, per_frame.cfg, backend="onnxruntime", cache_dir=cache, log=log.append)
    assert log and all("reusing" in line for line in log[:-1])  # the DFF model's feature and score stages
    manifest = read_manifest(engine.runner.onnx_dir)
    assert manifest["task"] == "seg" and list(manifest["graphs"]) == ["key"] and manifest["key_frame_interval"] == 1
    assert type(engine) is VideoSegmenter and engine.key_interval == 1
    want = list(video_engine(per_frame, per_frame.cfg).run(frames_from_arrays(clip[:4])))
    got = list(engine.run(frames_from_arrays(clip[:4])))
    assert [r.is_key for r in got] == [r.is_key for r in want] == [True] * 4
    assert min(_agreement(got, want)) >= AGREEMENT


def test_export_tool_exports_a_segmentation_checkpoint(models, dff_dir, cache, tmp_path, capsys):
    dff = models[0]
    ckpt = tmp_path / "dff_deeplab_tiny.pth"
    save_checkpoint(ckpt, model_state=dff, extra={"weights": "test", "model_kind": dff.kind}, config=dff.cfg)
    out = tmp_path / "onnx"
    main = runpy.run_path(os.path.join(REPO, "tools", "export_onnx.py"))["main"]
    assert main(["--model", str(ckpt), "--out", str(out), "--cache", os.path.join(cache, "stages")]) == 0
    stdout = capsys.readouterr().out
    assert stdout.count("reusing") == 4 and "dff_deeplab model ->" in stdout  # the same stages as the fixture's
    assert sorted(os.listdir(out)) == ["key.onnx", "model.json", "nonkey.onnx"]
    manifest = read_manifest(out)
    assert manifest["task"] == "seg" and manifest["signature"] == read_manifest(dff_dir)["signature"]
