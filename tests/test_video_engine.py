"""The video engine: key-frame schedule, cache, size changes, degenerate flows, frame sources."""
import os

import cv2
import numpy as np
import pytest
import torch

from dff.config import default_config, update_config
from dff.engine.frames import FrameSource, VideoReadError, frame_number_key, frames_from_arrays, list_frames
from dff.engine.video import VideoDetector
from dff.models.dff import DFF
from dff.models.rfcn import RFCN
from dff.utils.fixture_weights import fixture_state_dict


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


def test_only_the_current_key_feature_is_cached(cfg, dff_model):
    """Each key frame replaces the cached feature and the old one is freed: memory is constant."""
    import gc
    import weakref

    det = VideoDetector(dff_model, cfg)
    refs = []
    for data, im_info in (det.prepare(f) for f in _clip(9)):
        det.step(data, im_info)
        if not refs or refs[-1]() is not det._key_feat:
            refs.append(weakref.ref(det._key_feat))
    gc.collect()
    assert len(refs) == 3  # key frames 0, 4, 8
    assert [r() is not None for r in refs] == [False, False, True]


def test_size_change_resets_the_cache(cfg, dff_model):
    frames = _clip(3) + _clip(4, h=80, w=144, seed=1)
    results = list(VideoDetector(dff_model, cfg).run(frames_from_arrays(frames)))
    assert [r.is_key for r in results] == [True, False, False, True, False, False, False]
    for r in results:
        for d in r.detections[1:]:
            assert np.all(np.isfinite(np.asarray(d)))


def test_flow_pointing_out_of_the_image(cfg, dff_model, monkeypatch):
    """A flow that leaves the image warps to zero features; the heads still run and give finite output."""
    det = VideoDetector(dff_model, cfg, key_interval=2)
    orig = dff_model.estimate_flow

    def far_away(data, key_data):
        flow, scale = orig(data, key_data)
        return flow + 1e4, scale

    monkeypatch.setattr(dff_model, "estimate_flow", far_away)
    results = list(det.run(frames_from_arrays(_clip(2))))
    assert not results[1].is_key
    feat = dff_model.warp(torch.ones(1, 4, 5, 6), torch.full((1, 2, 5, 6), 1e4), torch.ones(1, 4, 5, 6))
    assert torch.count_nonzero(feat) == 0
    for d in results[1].detections[1:]:
        assert np.all(np.isfinite(np.asarray(d)))


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
    # stopping early releases the decoder thread
    src = iter(FrameSource(path, prefetch=1))
    next(src)
    src.close()


def test_video_with_zero_frames(tmp_path):
    path = str(tmp_path / "empty.avi")
    w = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    w.release()
    with pytest.raises(VideoReadError, match="empty.avi"):
        list(FrameSource(path))
