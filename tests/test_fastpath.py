"""The engine's fast path (autocast, channels_last, CUDA graphs) keeps the detections.

The CPU tests run everywhere (channels_last and autocast exist on the CPU); the CUDA tests run where a
GPU is (CI has none: `tools/check_fastpath.py` and these tests were run on the lent GPU, see
docs/benchmarks.md).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from dff.config import load_config
from dff.engine.fastpath import FastPath, StageRunner, tf32_mode
from dff.engine.frames import frames_from_arrays
from dff.engine.postprocess import im_detect_boxes, pred_eval_frame
from dff.engine.video import VideoDetector
from dff.models.builder import build_model
from dff.models.rfcn import RFCN
from dff.ops.prepack import conv_leaky_relu, packing, prepack_available, prepack_convolutions, unpack_convolutions
from dff.parity import fastpath as check
from dff.parity.model import RFCN_CFG, _build, _frame_inputs
from dff.utils.fixture_weights import fixture_state_dict

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_fast_path_settings():
    assert not FastPath().enabled and FastPath().describe() == "float32"
    assert FastPath.full("cpu") == FastPath()  # nothing of it applies to the CPU
    full = FastPath.full("cuda")
    assert full.amp == "fp16" and full.channels_last and full.cuda_graphs and full.cudnn_benchmark
    with pytest.raises(ValueError, match="fp16, bf16"):
        FastPath(amp="int8")
    cpu_default = FastPath(prepack=True) if prepack_available() else FastPath()
    assert FastPath.from_name(None, "cpu") == cpu_default and FastPath.from_name(None, "cuda") == full
    assert FastPath.from_name("fp32", "cpu") == FastPath(prepack=True) and FastPath.from_name("none", "cpu") == FastPath()
    assert FastPath.from_name("fp32", "cuda").amp is None and FastPath.from_name("fp32", "cuda").cuda_graphs
    # the names say the arithmetic: none and fp32 are true float32, tf32 lets the GPU use TF32
    assert not FastPath.from_name("none", "cuda").tf32 and not FastPath.from_name("fp32", "cuda").tf32
    assert FastPath.from_name("tf32", "cuda").tf32 and FastPath.from_name("tf32", "cuda").amp is None
    with pytest.raises(ValueError, match="GPU mode"):
        FastPath.from_name("tf32", "cpu")
    assert FastPath.from_name("bf16", "cpu") == FastPath(amp="bf16", channels_last=True)  # no graphs on the CPU
    with pytest.raises(ValueError, match="--fast must be one of"):
        FastPath.from_name("int8", "cpu")


def test_cuda_graphs_need_a_cuda_model():
    with pytest.raises(ValueError, match="CUDA graphs need the model on a CUDA device"):
        StageRunner(RFCN(load_config(RFCN_CFG)).eval(), FastPath(cuda_graphs=True))


def test_match_rows_finds_partners_and_misses():
    a = np.array([[1, 10, 10, 50, 50, 0.9], [2, 0, 0, 20, 20, 0.5], [3, 5, 5, 9, 9, 0.05]])
    assert check.match_rows(a, a.copy()).passed
    b = a.copy()
    b[0, 1] += 0.5  # within 1 px
    b[1, 5] = 0.45  # score off by 0.05 > 0.02
    m = check.match_rows(a, b)
    assert m.considered == 4 and m.unmatched == 2 and m.max_box_diff == pytest.approx(0.5)
    b = a.copy()
    b[1, 0] = 4  # wrong class
    assert check.match_rows(a, b).unmatched == 2


def _rows(fixture_dir, fasts, kinds=("rfcn", "dff")):
    return list(check.fixture_cases(str(fixture_dir), torch.device("cpu"), fasts, kinds=kinds))


@pytest.mark.slow
def test_channels_last_keeps_the_fixture_detections(reference_dir):
    rows = _rows(reference_dir, [FastPath(channels_last=True)])
    assert len(rows) == 6  # 2 models x 3 frames
    bad = [r.line() for r in rows if not r.passed]
    assert not bad, bad


needs_prepack = pytest.mark.skipif(not prepack_available(), reason="this torch build has no oneDNN pre-packing")


@needs_prepack
def test_prepacked_convolutions_match_plain_ones():
    torch.manual_seed(0)
    convs = [torch.nn.Conv2d(64, 96, 3, padding=1), torch.nn.Conv2d(64, 32, 3, padding=2, dilation=2, bias=False),
             torch.nn.Conv2d(64, 48, 1, stride=2), torch.nn.ConvTranspose2d(64, 16, 4, stride=2, padding=1)]
    x = torch.randn(2, 64, 11, 13)
    for m in convs:
        m.eval()
        with torch.inference_mode(), packing():
            want = m(x)
            assert prepack_convolutions(m) == 1
            got = m(x)
            # the packed path really ran: it answers in oneDNN's NHWC layout
            assert got.is_contiguous(memory_format=torch.channels_last) and not got.is_contiguous()
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
            m.weight.mul_(2)  # a changed weight must be re-packed, not served stale
            torch.testing.assert_close(m(x), 2 * want - (0 if m.bias is None else m.bias.view(1, -1, 1, 1)),
                                       rtol=1e-5, atol=1e-5)
            m.weight.div_(2)
            with packing(False):  # outside the scope: the module's own forward
                assert m(x).is_contiguous()
            # another input size: packed again for it, and only the last size's packing is kept
            x2 = torch.randn(1, 64, 7, 9)
            with packing(False):
                want2 = m(x2)
            torch.testing.assert_close(m(x2), want2, rtol=1e-5, atol=1e-5)
            assert m.__dict__["forward"]._cache[0][0] == tuple(x2.shape)
        # training and autograd take the module's own forward: gradients flow as without pre-packing
        xg = x.clone().requires_grad_()
        with packing():
            m(xg).sum().backward()
        assert xg.grad is not None and m.weight.grad is not None
        assert unpack_convolutions(m) == 1 and "forward" not in m.__dict__


@needs_prepack
def test_fused_leaky_relu_equals_the_two_steps():
    torch.manual_seed(0)
    x = torch.randn(1, 32, 9, 11)
    for m in (torch.nn.Conv2d(32, 16, 3, padding=1), torch.nn.ConvTranspose2d(32, 8, 4, stride=2, padding=1)):
        m.eval()
        with torch.inference_mode():
            want = torch.nn.functional.leaky_relu(m(x), 0.1)
            assert torch.equal(conv_leaky_relu(m, x, 0.1), want)  # no pre-packing: the two steps themselves
            prepack_convolutions(m)
            with packing():
                got = conv_leaky_relu(m, x, 0.1)
            assert got.is_contiguous(memory_format=torch.channels_last)  # the fused packed call ran
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
            assert (got < 0).any()  # the negative side (slope) was exercised


@pytest.mark.slow
@needs_prepack
def test_prepacked_cpu_fast_path_keeps_the_fixture_detections(reference_dir, recwarn):
    rows = _rows(reference_dir, [FastPath(prepack=True)])
    fell_back = [str(w.message) for w in recwarn if "pre-packed" in str(w.message)]
    assert not fell_back, fell_back  # every convolution ran packed
    assert len(rows) == 6
    bad = [r.line() for r in rows if not r.passed]
    assert not bad, bad
    assert all(r.max_abs < check.BOX_TOL for r in rows)


@pytest.mark.slow
def test_autocast_fp16_on_float32_rois(reference_dir):
    """fp16 autocast of every network stage, compared on the float32 run's rois (CPU autocast)."""
    rows = _rows(reference_dir, [FastPath(amp="fp16", channels_last=True)])
    assert len(rows) == 6
    bad = [r.line() for r in rows if not r.passed]
    assert not bad, bad
    assert all(r.max_abs < check.BOX_TOL for r in rows)


@pytest.mark.slow
def test_the_check_catches_bf16(reference_dir):
    """bf16 (8-bit mantissa) moves the fixture boxes by up to a pixel and flips most matches: the check
    must say so (this is why the fast path defaults to fp16)."""
    rows = _rows(reference_dir, [FastPath(amp="bf16")], kinds=("rfcn",))
    assert sum(not r.passed for r in rows) >= 2, [r.line() for r in rows]


@cuda
def test_cuda_fast_path_keeps_the_detections(reference_dir):
    device = torch.device("cuda")
    fasts = [FastPath.full(device, amp=None), FastPath.full(device, amp="fp16")]
    notes: list[str] = []
    rows = list(check.cases(str(reference_dir), device, fasts, notes))
    bad = [r.line() for r in rows if not r.passed]
    assert not bad, bad
    assert any("cuda-float32" in r.case for r in rows)  # plain float32 on the GPU against MXNet


@cuda
def test_cuda_graph_replays_equal_eager_runs(reference_dir):
    """Captured stages replayed on new inputs give what the same stages give eagerly."""

    device = torch.device("cuda")
    with tf32_mode(False), torch.inference_mode():
        model = _build("dff", str(reference_dir)).to(device).eval()
        post = VideoDetector(model, model.cfg, device=device).post_function
        eager = StageRunner(model, FastPath(), post=post)
        graphed = StageRunner(model, FastPath(cuda_graphs=True), post=post)
        assert graphed.sync_free
        inputs = [_frame_inputs(str(reference_dir), k) for k in range(3)]
        frames = [data.to(device) for data, _ in inputs]
        im_info = inputs[0][1].to(device)
        for data in frames:  # the first call captures, the others replay
            key_g = graphed.feature(data).clone()
            key_e = eager.feature(data)
            torch.testing.assert_close(key_g, key_e, rtol=1e-5, atol=1e-5)
        flow_g = [t.clone() for t in graphed.flow(frames[1], frames[0])]
        flow_e = eager.flow(frames[1], frames[0])
        for g, e in zip(flow_g, flow_e):
            torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)
        maps_g = {k: v.clone() for k, v in graphed.maps(key_e, im_info).items()}
        maps_e = eager.maps(key_e, im_info)
        assert "cand_boxes" in maps_e and set(maps_g) == set(maps_e)
        for k, v in maps_e.items():
            torch.testing.assert_close(maps_g[k], v, rtol=1e-5, atol=1e-5)
        # the whole task network (proposal NMS, PSROI pooling) and the post-processing, sync-free
        head_g = {k: v.clone() for k, v in graphed.head(key_e, im_info).items()}
        head_e = eager.head(key_e, im_info)
        for k in ("rois", "cls_prob", "bbox_pred"):
            torch.testing.assert_close(head_g[k], head_e[k], rtol=1e-5, atol=1e-5)
        args = (head_e["rois"], head_e["cls_prob"], head_e["bbox_pred"], im_info)
        rows_e, count_e = eager.post(*args)
        for _ in range(2):  # capture, then replay
            rows_g, count_g = graphed.post(*args)
        assert int(count_g) == int(count_e) > 0
        assert torch.equal(rows_g[:int(count_g)], rows_e[:int(count_e)])
        assert graphed.graphs_captured == 5


@cuda
def test_cuda_pipelined_run_gives_the_synchronous_detections(reference_dir):
    """run() with the fixed post-processing hands out frame i after queuing frame i+1 (asynchronous
    copies to pinned buffers): the same detections as step() + postprocess() one frame at a time, and
    those equal the per-class loop run on the CPU on the same network outputs (the reference's NMS
    semantics; torchvision's CUDA NMS compares IoUs with a float32 threshold, so it is not the oracle)."""
    device = torch.device("cuda")
    g = torch.Generator().manual_seed(3)
    images = [(torch.rand(120, 200, 3, generator=g) * 255).to(torch.uint8).numpy() for _ in range(7)]
    # deterministic cuDNN: FlowNet's transposed convolutions may otherwise get an algorithm that sums with
    # atomics (cuDNN autotuning stays on after a fast-path test), and the fixture weights' saturated RPN
    # turns such 1e-7 differences into other proposals on the non-key frames
    saved = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        _pipelined_vs_one_by_one(reference_dir, device, images)
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved


def _pipelined_vs_one_by_one(reference_dir, device, images):
    with tf32_mode(False):
        model = _build("dff", str(reference_dir)).to(device).eval()
        piped = VideoDetector(model, model.cfg, key_interval=3, device=device)
        assert piped.post == "fixed" and piped.runner.sync_free  # the CUDA default
        a = list(piped.run(frames_from_arrays(images)))
        one = VideoDetector(model, model.cfg, key_interval=3, device=device)
        b, loops = [], []
        with torch.inference_mode():
            for im in images:
                data, im_info = one.prepare(im)
                out, _, _ = one.step(data, im_info)
                b.append(one.postprocess(out, im_info))
                # the same decoded boxes (decoding on the GPU and on the CPU differs by an ulp of exp)
                scores, boxes = im_detect_boxes(out["rois"], out["cls_prob"][0], out["bbox_pred"][0], out["im_info"])
                loops.append(pred_eval_frame(scores.cpu(), boxes.cpu(), one.thresh, float(model.cfg.TEST.NMS),
                                             int(model.cfg.TEST.max_per_image)))
    assert [r.index for r in a] == list(range(7))
    assert [r.is_key for r in a] == [True, False, False, True, False, False, True]
    assert sum(len(d) for r in a for d in r.detections[1:]) > 0
    for k, (ra, dets, loop) in enumerate(zip(a, b, loops)):
        assert all(np.array_equal(x, y) for x, y in zip(ra.detections, dets)), f"frame {k}: pipelined != one by one"
        bad = [j for j, (x, y) in enumerate(zip(dets, loop)) if not np.array_equal(x, y.numpy())]
        assert not bad, (f"frame {k}: CUDA fixed NMS != CPU loop in classes {bad}: "
                         f"{[(len(dets[j]), len(loop[j])) for j in bad]}")


def test_engine_post_processing_equals_the_reference_loop():
    """The engine's one fixed-size NMS gives the reference's per-class loop's detections on real head outputs."""
    cfg = load_config(RFCN_CFG)
    model = build_model("rfcn", cfg).eval()
    model.load_state_dict(fixture_state_dict(model))
    g = torch.Generator().manual_seed(0)
    image = (torch.rand(120, 200, 3, generator=g) * 255).to(torch.uint8).numpy()
    det = VideoDetector(model, cfg)
    data, im_info = det.prepare(image)
    out, _, _ = det.step(data, im_info)
    got = det.postprocess(out, im_info)
    scores, boxes = im_detect_boxes(out["rois"], out["cls_prob"], out["bbox_pred"], im_info)
    ref = pred_eval_frame(scores, boxes, det.thresh, float(cfg.TEST.NMS), int(cfg.TEST.max_per_image))
    assert sum(len(d) for d in got) > 0
    assert len(got) == len(ref) and all(np.array_equal(a, b.numpy()) for a, b in zip(got, ref))


def test_tf32_mode_sets_and_restores_the_global_flags():
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    for inside in (False, True):
        with tf32_mode(inside):
            assert torch.backends.cudnn.allow_tf32 is inside and torch.backends.cuda.matmul.allow_tf32 is inside
        assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == saved
