"""ONNX export and the onnxruntime backend (dff.deploy, docs/onnx.md).

The operators' export forms against their oracles (PSROI pooling, the proposal NMS, the warp on the
exported graph), the graphs (standard operators, dynamic sizes, model.json), the backend (same
detections as the PyTorch engine on the fixture and embedded models, key frames, the cache) and the
command lines. Exports are slow (torch.export), so every model is exported once into a module-wide
cache that the tests share (the R-FCN fixture model reuses the DFF fixture model's stages).
"""
from __future__ import annotations

import json
import os
import runpy

import cv2
import numpy as np
import onnx
import onnx.utils
import onnxruntime as ort
import pytest
import torch

from dff.apps.demo import run_demo
from dff.config import update_config
from dff.deploy import (
    DEPLOY_HINT,
    DeployUnavailable,
    cached_export,
    export_onnx,
    make_detector,
    onnx_detector,
    read_manifest,
)
from dff.deploy import runtime as deploy_runtime
from dff.deploy.export import TRANSLATIONS, export_signature
from dff.deploy.graphs import build_stage
from dff.deploy.ops import (
    onnx_iou_threshold,
    proposal_pick,
    psroi_conv_std,
    psroi_pool_std,
    round_half_away_std,
    warp_scale_std,
)
from dff.engine.frames import frames_from_arrays
from dff.engine.video import STAGES, VideoDetector
from dff.models.builder import load_model
from dff.ops import nms_fixed
from dff.ops.psroi import psroi_pool_fallback, round_half_away
from dff.ops.warp import warp_scale_fallback
from dff.parity.deploy import EMBEDDED, embedded_cases, fixture_cases

pytestmark = pytest.mark.slow  # ONNX export and onnxruntime

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def export_tool(argv: list[str]) -> int:
    return runpy.run_path(os.path.join(REPO, "tools", "export_onnx.py"))["main"](argv)


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def _export_module(module: torch.nn.Module, args: tuple, dynamic: dict, path) -> ort.InferenceSession:
    program = torch.onnx.export(module.eval(), args, dynamo=True, verbose=False, opset_version=18,
                                dynamic_shapes=dynamic, custom_translation_table=TRANSLATIONS)
    return _session(program.model_proto)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """The exports of this module (cached_export: a model exported once, its stages reusable)."""
    return str(tmp_path_factory.mktemp("onnx_cache"))


@pytest.fixture(scope="module")
def embedded_dff():
    return load_model(EMBEDDED["dff"])[0]


@pytest.fixture(scope="module")
def embedded_dff_dir(embedded_dff, cache):
    return cached_export(embedded_dff, cache)


# the operators' export forms --------------------------------------------------------------------------------
def test_round_half_away_std_is_c_round():
    v = torch.tensor([0.5, -0.5, 1.5, 2.5, -2.5, 0.49999997, -0.49999997, 7.4999995, 3.0, 0.0, 1e7, -1e7 - 1])
    assert torch.equal(round_half_away_std(v).abs(), round_half_away(v).abs())
    assert torch.equal(round_half_away_std(v), round_half_away(v) + 0.0)  # -0.0 == 0.0


def _rois(g: torch.Generator, n: int, h: int, w: int) -> torch.Tensor:
    """Rois in image pixels of an (h*16, w*16) image: random (some inverted), the whole image, one pixel."""
    ih, iw = 16 * h, 16 * w
    r = torch.rand(n, 4, generator=g) * torch.tensor([iw - 1, ih - 1, iw - 1, ih - 1])
    r[:3] = torch.tensor([[0.0, 0.0, iw - 1, ih - 1], [5.0, 5.0, 5.0, 5.0], [7.5, 8.5, 100.5, 60.49999]])
    return torch.cat([torch.zeros(n, 1), r], dim=1)


def test_psroi_std_matches_the_oracle_eagerly_and_in_onnxruntime(tmp_path):
    """The standard-operator PSROI pooling against the float64 oracle (the reference's bins), in PyTorch
    and exported (dynamic map size and roi count) in onnxruntime; maps with a large mean too."""
    g = torch.Generator().manual_seed(0)

    class Pool(torch.nn.Module):
        def forward(self, maps, rois):
            return psroi_pool_std(maps, rois, 0.0625, 7, 7, 3)

    maps0 = torch.randn(1, 3 * 49, 6, 10, generator=g)
    dyn = {"maps": {2: torch.export.Dim("h", min=2, max=256), 3: torch.export.Dim("w", min=2, max=256)},
           "rois": {0: torch.export.Dim("r", min=2, max=4096)}}
    session = _export_module(Pool(), (maps0, _rois(g, 20, 6, 10)), dyn, tmp_path / "psroi.onnx")
    for h, w, mean, n in ((6, 10, 0.0, 20), (38, 63, 20.0, 300), (15, 25, -3.0, 64), (1, 1, 1.0, 5)):
        maps = torch.randn(1, 3 * 49, h, w, generator=g) * 3 + mean
        rois = _rois(g, n, h, w)
        want = psroi_pool_fallback(maps, rois, 0.0625, 7, 7, 3)
        tol = 2e-6 * float(want.abs().max()) + 1e-6
        got = Pool()(maps, rois)
        assert (got - want).abs().max() <= tol
        got_ort = session.run(None, {"maps": maps.numpy(), "rois": rois.numpy()})[0]
        assert np.abs(got_ort - want.numpy()).max() <= tol
        assert (want == 0).sum() == (torch.from_numpy(got_ort) == 0).sum()  # the same empty bins
    # the export's head: the 1x1 convolution that makes the maps, then the pooling
    x = torch.relu(torch.randn(1, 16, 15, 25, generator=g))
    weight, bias = torch.randn(3 * 49, 16, 1, 1, generator=g) * 0.3, torch.randn(3 * 49, generator=g)
    rois = _rois(g, 64, 15, 25)
    want = psroi_pool_fallback(torch.nn.functional.conv2d(x, weight, bias), rois, 0.0625, 7, 7, 3)
    got = psroi_conv_std(x, weight, bias, rois, 0.0625, 7, 7, 3)
    assert (got - want).abs().max() <= 2e-6 * float(want.abs().max()) + 1e-6


def test_warp_std_gives_the_fallback_values():
    """The export form of the warp against dff.ops.warp_scale_fallback: random, zero, integer and far flows."""
    g = torch.Generator().manual_seed(5)
    for h, w in ((10, 16), (7, 13), (1, 1)):
        feat = torch.randn(1, 32, h, w, generator=g)
        scale = torch.rand(1, 32, h, w, generator=g)
        for flow in (torch.randn(1, 2, h, w, generator=g) * 3, torch.zeros(1, 2, h, w), torch.full((1, 2, h, w), -2.0),
                     torch.full((1, 2, h, w), 1e6)):
            assert torch.equal(warp_scale_std(feat, flow, scale), warp_scale_fallback(feat, flow, scale))
        assert torch.equal(warp_scale_std(feat, torch.zeros(1, 2, h, w)), feat)


def test_onnx_iou_threshold_compares_like_double():
    for t in (0.7, 0.3, 0.5, 0.1, 1.0 / 3):
        t32 = np.float32(onnx_iou_threshold(t))
        assert float(t32) <= t
        above = np.nextafter(t32, np.float32(2))
        assert float(above) > t  # no float32 strictly between the threshold and t


def _random_boxes(g: torch.Generator, n: int) -> torch.Tensor:
    """Clustered, heavily overlapping boxes, duplicates, tiny ones and widths in (-1, 0) (the +1 convention's
    inverted boxes), in priority order."""
    centres = torch.rand(max(n // 20, 1), 2, generator=g) * 300
    c = centres[torch.randint(0, centres.shape[0], (n,), generator=g)] + torch.randn(n, 2, generator=g) * 6
    size = torch.rand(n, 2, generator=g) * 60 - 0.9
    boxes = torch.cat([c, c + size], dim=1)
    if n > 10:
        boxes[5] = boxes[3]  # an exact duplicate
    return boxes.float()


def test_proposal_nms_in_onnx_keeps_what_nms_fixed_keeps(tmp_path):
    """ONNX NonMaxSuppression on the widened boxes with rank scores (the exported proposal_pick) against
    dff.ops.nms_fixed and the cyclic padding of MXNet's Proposal: the same rows, for any box count."""

    class Pick(torch.nn.Module):
        def forward(self, boxes):
            return proposal_pick(boxes, 0.7, 50)

    g = torch.Generator().manual_seed(1)
    session = _export_module(Pick(), (_random_boxes(g, 200),),
                             {"boxes": {0: torch.export.Dim("n", min=2, max=100000)}}, tmp_path / "nms.onnx")
    for n in (2, 3, 40, 200, 1000, 3000):
        boxes = _random_boxes(g, n)
        keep, count = nms_fixed(boxes, 0.7, min(50, n))
        want = keep[torch.arange(50) % count.clamp(min=1)]
        got = session.run(None, {"boxes": boxes.numpy()})[0]
        np.testing.assert_array_equal(got, want.numpy())


def test_flownet_and_head_stages_compute_what_the_model_computes(embedded_dff):
    """Eagerly, the export forms of FlowNet (unconditional crop) and of the task network are the model's:
    FlowNet exactly, the head's proposals exactly and its scores within float32 rounding (odd sizes too)."""
    m = embedded_dff
    g = torch.Generator().manual_seed(2)
    with torch.inference_mode():
        for h, w in ((160, 256), (97, 161)):
            cur, key = torch.randn(1, 3, h, w, generator=g) * 40, torch.randn(1, 3, h, w, generator=g) * 40
            flow, scale = build_stage("flow", m)(cur, key)
            want_flow, want_scale = m.estimate_flow(cur, key)
            assert torch.equal(flow, want_flow) and torch.equal(scale, want_scale)
            feat = m.extract_feature(cur)
            info = torch.tensor([[h, w, 1.0]])
            rois, cls_prob, bbox_pred = build_stage("head", m)(feat, info)
            want = m.detect(feat, info)
            assert torch.equal(rois, want["rois"])
            torch.testing.assert_close(cls_prob, want["cls_prob"], atol=1e-6, rtol=1e-5)
            torch.testing.assert_close(bbox_pred, want["bbox_pred"], atol=1e-5, rtol=1e-5)


# the exported graphs ---------------------------------------------------------------------------------------
def _stage(onnx_dir: str, graph: str, stage: str) -> ort.InferenceSession:
    manifest = read_manifest(onnx_dir)
    model = onnx.load(os.path.join(onnx_dir, manifest["graphs"][graph]["file"]))
    io = manifest["stages"][stage]
    return _session(onnx.utils.Extractor(model).extract_model(io["inputs"], io["outputs"]))


def test_warp_after_export_zero_flow_is_identity_and_integer_flow_an_exact_shift(embedded_dff_dir):
    warp = _stage(embedded_dff_dir, "nonkey", "warp")
    g = torch.Generator().manual_seed(3)
    for h, w in ((10, 16), (7, 13)):
        feat = torch.randn(1, 128, h, w, generator=g)
        ones = torch.ones_like(feat)

        def run(flow, scale=ones):
            return warp.run(None, {"key_feat": feat.numpy(), "flow": flow.numpy(), "scale": scale.numpy()})[0]

        np.testing.assert_array_equal(run(torch.zeros(1, 2, h, w)), feat.numpy())
        dx, dy = 2, -1  # output pixel p samples p + flow: out[y, x] = feat[y - 1, x + 2], zero outside
        flow = torch.stack([torch.full((h, w), float(dx)), torch.full((h, w), float(dy))])[None]
        want = torch.zeros_like(feat)
        want[:, :, 1:, : w - 2] = feat[:, :, : h - 1, 2:]
        np.testing.assert_array_equal(run(flow), want.numpy())
        flow = torch.randn(1, 2, h, w, generator=g) * 3
        scale = torch.rand(1, 128, h, w, generator=g) + 0.5
        np.testing.assert_allclose(run(flow, scale), warp_scale_fallback(feat, flow, scale).numpy(), atol=1e-6)


STANDARD_OPS = {s.name for s in onnx.defs.get_all_schemas() if s.domain == ""}


def test_graphs_use_standard_operators_dynamic_sizes_and_describe_themselves(embedded_dff, embedded_dff_dir):
    manifest = read_manifest(embedded_dff_dir)
    for graph, inputs, outputs in (("key", ["data", "im_info"], ["feat", "rois", "cls_prob", "bbox_pred"]),
                                   ("nonkey", ["data", "key_data", "key_feat", "im_info"],
                                    ["feat", "rois", "cls_prob", "bbox_pred", "flow", "scale"])):
        model = onnx.load(os.path.join(embedded_dff_dir, f"{graph}.onnx"))
        onnx.checker.check_model(model)
        assert {n.domain for n in model.graph.node} <= {""}
        assert {n.op_type for n in model.graph.node} <= STANDARD_OPS
        assert {i.domain for i in model.opset_import} == {""}
        assert [i.name for i in model.graph.input] == inputs
        assert [o.name for o in model.graph.output] == outputs
        data = model.graph.input[0].type.tensor_type.shape.dim
        assert data[2].dim_param and data[3].dim_param  # height and width are symbolic
        assert manifest["graphs"][graph]["inputs"] == inputs and manifest["graphs"][graph]["outputs"] == outputs
    assert manifest["kind"] == "dff"
    assert manifest["class_names"] == list(embedded_dff.class_names)
    assert set(manifest["state"]) >= {"key_feat", "key_data"}
    assert "NonMaxSuppression" in manifest["in_graph"]["proposal_nms"]
    assert "pred_eval_fixed" in manifest["host"]["detection_post_processing"]
    assert manifest["input_size"]["scales"] == [list(s) for s in embedded_dff.cfg.SCALES]
    assert manifest["key_frame_interval"] == int(embedded_dff.cfg.TEST.KEY_FRAME_INTERVAL)
    assert manifest["signature"] == export_signature(embedded_dff)
    assert json.dumps(manifest)  # plain JSON


def test_whole_graphs_give_what_the_stage_sessions_give(embedded_dff, embedded_dff_dir):
    """key.onnx and nonkey.onnx run whole (as another runtime would) equal the backend's per-stage runs."""
    det = onnx_detector(embedded_dff_dir, embedded_dff.cfg, key_interval=2)
    whole = {g: _session(onnx.load(os.path.join(embedded_dff_dir, f"{g}.onnx"))) for g in ("key", "nonkey")}
    g = torch.Generator().manual_seed(4)
    frames = [(torch.randn(1, 3, 160, 224, generator=g) * 40, torch.tensor([[160.0, 224.0, 0.8]])) for _ in range(2)]
    key_out, is_key, _ = det.step(*frames[0])
    cur_out, is_cur_key, _ = det.step(*frames[1])
    assert is_key and not is_cur_key
    k = whole["key"].run(None, {"data": frames[0][0].numpy(), "im_info": frames[0][1].numpy()})
    n = whole["nonkey"].run(None, {"data": frames[1][0].numpy(), "im_info": frames[1][1].numpy(),
                                   "key_data": frames[0][0].numpy(), "key_feat": k[0]})
    for got, out in ((k, key_out), (n, cur_out)):
        for i, name in enumerate(("rois", "cls_prob", "bbox_pred"), start=1):
            np.testing.assert_allclose(got[i], out[name].numpy(), atol=1e-5, rtol=1e-5)


# the backend -----------------------------------------------------------------------------------------------
def test_fixture_models_onnxruntime_detections_match_pytorch(reference_dir, cache):
    """The R-FCN and DFF fixture models (ResNet-101) on the fixture frames: every detection above 0.1 has
    a partner (tools/check_fastpath.py --backend onnxruntime)."""
    rows = list(fixture_cases(str(reference_dir), cache))
    assert len(rows) == 6
    for r in rows:
        assert r.passed, r.line()


def test_embedded_models_onnxruntime_detections_match_pytorch(embedded_dff_dir, cache):
    rows = list(embedded_cases(cache))
    assert len(rows) == 24
    for r in rows:
        assert r.passed, r.line()


def _clip(n: int, h: int = 120, w: int = 176, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.RandomState(seed)
    base = rng.randint(0, 255, (h + 40, w + 40, 3)).astype(np.uint8)
    return [np.ascontiguousarray(base[i:i + h, 2 * i:2 * i + w]) for i in range(n)]


def test_key_frames_stage_times_and_size_changes_as_the_pytorch_engine(embedded_dff, embedded_dff_dir):
    frames = _clip(5) + _clip(3, h=96, w=128)  # the size change makes frame 5 a key frame
    want = list(VideoDetector(embedded_dff, embedded_dff.cfg, key_interval=3).run(frames_from_arrays(frames)))
    det = make_detector(embedded_dff, embedded_dff.cfg, backend="onnxruntime", onnx_dir=embedded_dff_dir,
                        key_interval=3, keep_images=True)
    got = list(det.run(frames_from_arrays(frames)))
    assert [r.is_key for r in got] == [r.is_key for r in want] == [True, False, False, True, False, True, False, False]
    for r in got:
        assert set(r.times) == set(STAGES) | {"total"} and r.image is not None
        assert (r.times["feature"] > 0) == r.is_key and (r.times["flow"] > 0) != r.is_key and r.times["head"] > 0
        assert len(r.detections) == embedded_dff.num_classes


def test_make_detector_backends_cache_and_mismatches(embedded_dff, embedded_dff_dir, cache, monkeypatch):
    assert type(make_detector(embedded_dff, embedded_dff.cfg)) is VideoDetector
    with pytest.raises(ValueError, match="backend"):
        make_detector(embedded_dff, embedded_dff.cfg, backend="tensorrt")
    with pytest.raises(ValueError, match="onnxruntime"):
        make_detector(embedded_dff, embedded_dff.cfg, onnx_dir=embedded_dff_dir)
    # the cache: the same model is not exported again
    monkeypatch.setattr("dff.deploy.export.export_onnx", lambda *a, **k: pytest.fail("exported again"))
    det = make_detector(embedded_dff, embedded_dff.cfg, backend="onnxruntime", cache_dir=cache)
    assert det.runner.onnx_dir == embedded_dff_dir and det.key_interval == int(embedded_dff.cfg.TEST.KEY_FRAME_INTERVAL)
    assert det.runner.class_names == embedded_dff.class_names
    assert det.runner.fast.describe().startswith("onnxruntime") and not det.runner.fast.enabled
    # an export of other weights, or a config that changes what the graphs bake in
    rfcn = load_model(EMBEDDED["rfcn"])[0]
    with pytest.raises(ValueError, match="other weights"):
        make_detector(rfcn, rfcn.cfg, backend="onnxruntime", onnx_dir=embedded_dff_dir)
    cfg = load_model(EMBEDDED["dff"])[1]
    update_config(cfg, {"TEST": {"RPN_POST_NMS_TOP_N": 100}})
    with pytest.raises(ValueError, match="TEST.RPN_POST_NMS_TOP_N"):
        onnx_detector(embedded_dff_dir, cfg)
    with pytest.raises(ValueError, match="proposals"):
        make_detector(None, None, backend="onnxruntime", onnx_dir=embedded_dff_dir).step(
            torch.zeros(1, 3, 64, 64), torch.tensor([[64.0, 64.0, 1.0]]), rois=torch.zeros(1, 5))


def test_missing_optional_packages_name_the_install_command(embedded_dff, embedded_dff_dir, monkeypatch):
    monkeypatch.setattr(deploy_runtime, "ort", None)
    with pytest.raises(DeployUnavailable, match=r"pip install -e \.\[deploy\]"):
        make_detector(embedded_dff, embedded_dff.cfg, backend="onnxruntime", onnx_dir=embedded_dff_dir)
    assert "[deploy]" in DEPLOY_HINT


def test_export_tool_writes_the_rfcn_graph_and_the_manifest(tmp_path, cache, capsys):
    """tools/export_onnx.py on the embedded tiny R-FCN (its stages from the module's cache, if there; the tool's
    default is the demos' mobile twin, tests/test_onnx_mobile.py)."""
    out = tmp_path / "rfcn"
    assert export_tool(["--model", EMBEDDED["rfcn"], "--out", str(out), "--cache", os.path.join(cache, "stages")]) == 0
    assert sorted(os.listdir(out)) == ["key.onnx", "model.json"]
    manifest = read_manifest(out)
    assert manifest["kind"] == "rfcn" and list(manifest["graphs"]) == ["key"] and manifest["key_frame_interval"] == 1
    assert "rfcn model" in capsys.readouterr().out
    assert export_tool(["--model", str(tmp_path / "missing.pth"), "--out", str(tmp_path / "x")]) == 2
    assert "error:" in capsys.readouterr().err


def test_export_onnx_replaces_the_folder_atomically(embedded_dff, embedded_dff_dir, tmp_path, cache, monkeypatch):
    out = tmp_path / "exp"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    monkeypatch.setattr("dff.deploy.export.compose", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError, match="boom"):
        export_onnx(embedded_dff, out, stage_cache=os.path.join(cache, "stages"))
    assert os.listdir(out) == ["stale.txt"] and os.listdir(tmp_path) == ["exp"]  # nothing half-written left


# the command lines ---------------------------------------------------------------------------------------
def test_benchmark_measures_onnxruntime_against_pytorch(embedded_dff_dir, tmp_path, capsys):
    main = runpy.run_path(os.path.join(REPO, "tools", "benchmark.py"))["main"]
    argv = ["--cfg", os.path.join(REPO, "experiments", "dff_rfcn", "cfgs", "dff_rfcn_synthetic_tiny.yaml"),
            "--model", EMBEDDED["dff"], "--frames", "3", "--key-intervals", "1,2", "--no-end-to-end", "--device", "cpu"]
    assert main(argv + ["--onnx", embedded_dff_dir]) == 2  # --onnx without --backend onnxruntime
    assert "--backend onnxruntime" in capsys.readouterr().err
    assert main(argv + ["--backend", "onnxruntime", "--eval"]) == 2
    ort_argv = ["--backend", "onnxruntime", "--onnx", embedded_dff_dir, "--json", str(tmp_path / "b.json")]
    assert main(argv + ort_argv) == 0
    out = capsys.readouterr().out
    assert "onnxruntime" in out.splitlines()[0] and "onnxruntime fps" in out
    report = json.loads((tmp_path / "b.json").read_text())
    assert report["backend"] == "onnxruntime" and report["onnx_dir"] == embedded_dff_dir
    for k in ("1", "2"):
        row = report["backend_comparison"][k]
        assert row["ratio"] == pytest.approx(row["onnxruntime_fps"] / row["torch_fps"])
        assert set(row["onnxruntime_stages_ms"]) == set(row["torch_stages_ms"]) == {"feature", "flow", "warp", "head"}


def test_demo_runs_on_the_onnxruntime_backend(embedded_dff_dir, tmp_path, capsys):
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, im in enumerate(_clip(4)):
        cv2.imwrite(str(folder / f"{i:06d}.jpg"), im)
    argv = [str(folder), "--model", EMBEDDED["dff"], "--backend", "onnxruntime", "--onnx", embedded_dff_dir,
            "--out", str(tmp_path / "out"), "--no-video", "--quiet", "--key-interval", "2"]
    rc = run_demo(argv, name="dff_rfcn/demo.py", kind="dff", what="x",
                  default_cfg=os.path.join(REPO, "experiments", "dff_rfcn", "cfgs", "dff_rfcn_vid_demo.yaml"),
                  default_out=str(tmp_path / "out"))
    assert rc == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "4 frames (2 key)" in out and len(os.listdir(tmp_path / "out")) == 4
