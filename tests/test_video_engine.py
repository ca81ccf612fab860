"""The video engine: key-frame schedule, cache, size changes, degenerate flows, frame sources."""
import gc
import os
import threading
import time
import weakref

import cv2
import numpy as np
import pytest
import torch

from dff.config import default_config, update_config
from dff.engine.frames import FrameSource, VideoReadError, frame_number_key, frames_from_arrays, list_frames
from dff.engine.video import VideoDetector
from dff.models.dff import DFF
from dff.models.rfcn import RFCN
from dff.ops import compiled_available, ops_backend, warp_scale
from dff.utils.fixture_weights import fixture_state_dict

BACKENDS = ["fallback", pytest.param("compiled", marks=pytest.mark.skipif(
    not compiled_available(), reason="compiled operators not built"))]


@pytest.fixture(scope="module")
def cfg():
    c = default_config()
    update_config(c, {"network": {"BACKBONE": "resnet_v1_tiny", "DFF_FEAT_DIM": 64,
                                  "PIXEL_MEANS": [103.06, 115.90, 123.15]},
                      "SCALES": [96, 160], "TEST": {"RPN_MIN_SIZE": 0, "RPN_PRE_NMS_TOP_N": 600,
                                                    "RPN_POST_NMS_TOP_N": 50, "KEY_FRAME_INTERVAL": 4}})
    return c


@pytest.fixture(scope="module")
def dff_model(cfg):
    m = DFF(cfg).eval()
    m.load_state_dict(fixture_state_dict(m))
    return m


def _clip(n, h=96, w=128, seed=0):
    rng = np.random.RandomState(seed)
    base = cv2.GaussianBlur(rng.randint(0, 255, (h + 40, w + 40, 3)).astype(np.uint8), (0, 0), 2)
    return [np.ascontiguousarray(base[i:i + h, 2 * i:2 * i + w]) for i in range(n)]


def assert_same_detections(a, b):
    """Two runs' results frame by frame: the same key frames and exactly the same detections."""
    assert [r.is_key for r in a] == [r.is_key for r in b]
    for ra, rb in zip(a, b, strict=True):
        assert len(ra.detections) == len(rb.detections)
        for da, db in zip(ra.detections, rb.detections):
            np.testing.assert_array_equal(np.asarray(da), np.asarray(db))


def test_key_frames_every_interval_from_the_video_start(cfg, dff_model):
    det = VideoDetector(dff_model, cfg)
    keys = [r.index for r in det.run(frames_from_arrays(_clip(10))) if r.is_key]
    assert keys == [0, 4, 8]
    # a new video restarts the schedule
    keys = [r.index for r in det.run(frames_from_arrays(_clip(5))) if r.is_key]
    assert keys == [0, 4]


def test_rfcn_model_is_always_per_frame(cfg):
    m = RFCN(cfg).eval()
    m.load_state_dict(fixture_state_dict(m))
    det = VideoDetector(m, cfg, key_interval=10)
    assert det.key_interval == 1
    assert all(r.is_key for r in det.run(frames_from_arrays(_clip(3))))


def test_interval_one_equals_the_per_frame_detector(cfg, dff_model):
    """The DFF engine at interval 1 is the per-frame baseline: same detections as RFCN with the same weights."""
    rfcn = RFCN(cfg).eval()
    rfcn.load_state_dict({k: v for k, v in dff_model.state_dict().items() if not k.startswith("flownet.")})
    frames = _clip(3)
    a = list(VideoDetector(dff_model, cfg, key_interval=1).run(frames_from_arrays(frames)))
    b = list(VideoDetector(rfcn, cfg).run(frames_from_arrays(frames)))
    for ra, rb in zip(a, b):
        for da, db in zip(ra.detections, rb.detections):
            np.testing.assert_array_equal(np.asarray(da), np.asarray(db))


def test_each_key_frame_replaces_the_cached_state(cfg, dff_model, monkeypatch):
    """From each key frame on, the results are those of a new video starting there (nothing older is
    used), and at most one key feature is alive at any time: memory is constant over the video."""
    frames = _clip(9)
    det = VideoDetector(dff_model, cfg)
    made = []  # weak references to every key feature the feature stage returned
    feature = det.runner.feature

    def recording_feature(data):
        feat = feature(data)
        made.append(weakref.ref(feat))
        return feat

    monkeypatch.setattr(det.runner, "feature", recording_feature)
    results, alive = [], []
    for r in det.run(frames_from_arrays(frames)):
        results.append(r)
        gc.collect()
        alive.append(sum(ref() is not None for ref in made))
    assert [r.index for r in results if r.is_key] == [0, 4, 8] and len(made) == 3
    assert max(alive) <= 1, alive  # the old key feature is freed when the next key frame comes
    for k in (4, 8):
        fresh = list(VideoDetector(dff_model, cfg).run(frames_from_arrays(frames[k:k + 4])))
        assert_same_detections(results[k:k + 4], fresh)


def test_size_change_rekeys_like_a_new_video(cfg, dff_model):
    """The frame after a size change is a key frame, and from there the detections are exactly those of
    a fresh run started at that frame (the schedule restarts there too)."""
    frames = _clip(3) + _clip(5, h=80, w=144, seed=1)
    results = list(VideoDetector(dff_model, cfg).run(frames_from_arrays(frames)))
    assert [r.is_key for r in results] == [True, False, False, True, False, False, False, True]
    fresh = list(VideoDetector(dff_model, cfg).run(frames_from_arrays(frames[3:])))
    assert_same_detections(results[3:], fresh)
    assert sum(len(d) for d in fresh[1].detections) > 0  # non-trivial: a non-key frame with detections


def _outside_flows(h, w, seed=0):
    """Flows (1, 2, h, w) in feature pixels that send every position out of the image: far away, exactly
    one pixel past each edge (the inside neighbour then has weight 0), and a random mix of directions."""
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    zero = torch.zeros(h, w)

    def flow(u, v):
        return torch.stack([u, v])[None].contiguous()

    g = torch.Generator().manual_seed(seed)
    side = torch.randint(0, 4, (h, w), generator=g)
    dist = 1 + 40 * torch.rand(h, w, generator=g)  # >= 1 pixel outside
    # sampled at -dist (left/top) or size - 1 + dist (right/bottom)
    mix_u = torch.where(side == 0, -xs - dist, torch.where(side == 1, w - 1 - xs + dist, zero))
    mix_v = torch.where(side == 2, -ys - dist, torch.where(side == 3, h - 1 - ys + dist, zero))
    return {
        "far": flow(zero + 1e4, zero - 1e4),
        "left": flow(-1 - xs, zero),  # sampled at x = -1
        "right": flow(w - xs, zero),  # x = w
        "top": flow(zero, -1 - ys),  # y = -1
        "bottom": flow(zero, h - ys),  # y = h
        "mixed": flow(mix_u, mix_v),
    }


@pytest.mark.parametrize("backend", BACKENDS)
def test_flow_out_of_the_image_warps_to_exactly_zero(backend):
    """The warp op: a flow that points every position outside gives the zero feature times the scale map."""
    g = torch.Generator().manual_seed(0)
    feat = 1 + torch.rand(1, 8, 5, 7, generator=g)  # nonzero everywhere
    scale = 0.5 + torch.rand(1, 8, 5, 7, generator=g)
    # control: a zero flow is the identity
    assert torch.equal(warp_scale(feat, torch.zeros(1, 2, 5, 7), scale, backend=backend), feat * scale)
    for name, flow in _outside_flows(5, 7).items():
        out = warp_scale(feat, flow, scale, backend=backend)
        assert torch.equal(out, torch.zeros_like(feat)), (name, out.abs().max())


@pytest.mark.parametrize("backend", BACKENDS)
def test_flow_out_of_the_image_through_the_engine(cfg, dff_model, monkeypatch, backend):
    """The engine's warp stage: the non-key frame's feature is exactly zero, and its detections are those
    of the task network on the zero feature."""
    orig = dff_model.estimate_flow

    def mixed_outside(data, key_data):
        flow, scale = orig(data, key_data)
        return _outside_flows(*flow.shape[-2:])["mixed"], scale

    monkeypatch.setattr(dff_model, "estimate_flow", mixed_outside)
    with ops_backend(backend):
        det = VideoDetector(dff_model, cfg, key_interval=2)
        warped = []
        warp = det.runner.warp

        def recording_warp(key_feat, flow, scale):
            warped.append(warp(key_feat, flow, scale))
            return warped[-1]

        monkeypatch.setattr(det.runner, "warp", recording_warp)
        results = list(det.run(frames_from_arrays(_clip(2))))

        ref = VideoDetector(dff_model, cfg, key_interval=2)
        monkeypatch.setattr(ref.runner, "warp", lambda key_feat, flow, scale: torch.zeros_like(key_feat))
        expected = list(ref.run(frames_from_arrays(_clip(2))))
    assert [r.is_key for r in results] == [True, False] and len(warped) == 1
    assert warped[0].shape[1] == cfg.network.DFF_FEAT_DIM
    assert torch.equal(warped[0], torch.zeros_like(warped[0]))
    assert_same_detections(results, expected)


def test_stage_times_are_reported(cfg, dff_model):
    results = list(VideoDetector(dff_model, cfg).run(frames_from_arrays(_clip(3))))
    assert results[0].times["feature"] > 0 and results[0].times["flow"] == 0
    assert results[1].times["feature"] == 0 and results[1].times["flow"] > 0 and results[1].times["warp"] > 0
    assert all(r.times["head"] > 0 and r.times["post"] > 0 for r in results)


def test_frame_folder_is_ordered_by_frame_number(tmp_path):
    for i in (10, 2, 1, 100, 0):
        cv2.imwrite(str(tmp_path / f"{i}.jpg"), np.full((8, 8, 3), i, np.uint8))
    assert [os.path.basename(p) for p in list_frames(str(tmp_path))] == ["0.jpg", "1.jpg", "2.jpg", "10.jpg", "100.jpg"]
    assert sorted(["f10.png", "f9.png"], key=frame_number_key) == ["f9.png", "f10.png"]
    frames = list(FrameSource(str(tmp_path), workers=3, prefetch=2))
    assert [f.name for f in frames] == ["0.jpg", "1.jpg", "2.jpg", "10.jpg", "100.jpg"]
    assert [f.index for f in frames] == [0, 1, 2, 3, 4]


def test_video_file_source(tmp_path):
    path = str(tmp_path / "clip.avi")
    w = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    for f in _clip(7, 48, 64):
        w.write(f)
    w.release()
    frames = list(FrameSource(path, max_frames=5))
    assert [f.index for f in frames] == [0, 1, 2, 3, 4] and frames[0].image.shape == (48, 64, 3)


def _write_video(path, n=12):
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    for f in _clip(n, 48, 64):
        w.write(f)
    w.release()
    return str(path)


def _write_folder(folder, n=12):
    folder.mkdir()
    for i, f in enumerate(_clip(n, 48, 64)):
        cv2.imwrite(str(folder / f"{i}.jpg"), f)
    return str(folder)


def _threads_left(before, timeout=5.0):
    """The threads started since ``before`` that are still alive after at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        new = [t for t in threading.enumerate() if t not in before and t.is_alive()]
        if not new or time.monotonic() > deadline:
            return new
        time.sleep(0.02)


@pytest.mark.parametrize("kind", ["video", "folder"])
def test_stopping_early_releases_the_decoder_threads(tmp_path, kind):
    path = _write_video(tmp_path / "clip.avi") if kind == "video" else _write_folder(tmp_path / "frames")
    before = set(threading.enumerate())
    src = iter(FrameSource(path, prefetch=2, workers=2))
    next(src)
    time.sleep(0.1)  # let the decoder fill its queue and block on it
    assert [t for t in threading.enumerate() if t not in before], "no decoding thread was started"
    src.close()
    assert _threads_left(before) == []


def test_breaking_out_of_the_engine_releases_the_decoder_thread(cfg, dff_model, tmp_path):
    path = _write_video(tmp_path / "clip.avi")
    before = set(threading.enumerate())
    det = VideoDetector(dff_model, cfg)
    for r in det.run(FrameSource(path, prepare=det.prepare, prefetch=1)):
        assert r.index == 0
        assert [t for t in threading.enumerate() if t not in before], "no decoding thread was started"
        break
    assert _threads_left(before) == []


def test_video_with_zero_frames(tmp_path):
    path = str(tmp_path / "empty.avi")
    w = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    w.release()
    with pytest.raises(VideoReadError, match="empty.avi"):
        list(FrameSource(path))
