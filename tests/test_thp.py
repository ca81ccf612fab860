"""THP ("Towards High Performance Video Object Detection") in the engine and the model: the adaptive key-frame
rule, the partial feature update on crops, the key frames' aggregation, Q's training, constant memory."""
import copy

import cv2
import numpy as np
import pytest
import torch

from dff.config import ConfigError, default_config, update_config
from dff.engine.frames import frames_from_arrays
from dff.engine.partial import forced_mask, partial_update, plan_crops
from dff.engine.video import VideoDetector
from dff.models.dff import DFF
from dff.temporal import adaptive_is_key
from dff.temporal.thp import feature_consistency
from dff.utils.fixture_weights import fixture_state_dict

THP_OFF = {"KEY_FRAME_SCHEDULE": "fixed", "PARTIAL_UPDATE": False, "AGGREGATION": False}


def _cfg(**test):
    c = default_config()
    update_config(c, {"network": {"BACKBONE": "resnet_v1_tiny", "DFF_FEAT_DIM": 64, "THP": True, "THP_EMBED_DIM": 16,
                                  "PIXEL_MEANS": [103.06, 115.90, 123.15]},
                      "SCALES": [96, 160], "TEST": {"RPN_MIN_SIZE": 0, "RPN_PRE_NMS_TOP_N": 600,
                                                    "RPN_POST_NMS_TOP_N": 50, "KEY_FRAME_INTERVAL": 4,
                                                    "KEY_FRAME_MAX_INTERVAL": 6, **THP_OFF, **test}})
    return c


@pytest.fixture(scope="module")
def thp_model():
    m = DFF(_cfg()).eval()
    m.load_state_dict(fixture_state_dict(m))
    return m


def _clip(n, h=96, w=128, seed=0):
    rng = np.random.RandomState(seed)
    base = cv2.GaussianBlur(rng.randint(0, 255, (h + 40, w + 40, 3)).astype(np.uint8), (0, 0), 2)
    return [np.ascontiguousarray(base[i % 40:i % 40 + h, (2 * i) % 40:(2 * i) % 40 + w]) for i in range(n)]


def _with_q(model, q_fn):
    """A shallow copy of ``model`` whose Q is ``q_fn(real_q)`` (flow and scale map stay FlowNet's)."""
    m = copy.copy(model)
    m._modules = dict(model._modules)

    def estimate_flow_q(data, key_data):
        flow, scale, q = model.estimate_flow_q(data, key_data)
        return flow, scale, q_fn(q)
    m.estimate_flow_q = estimate_flow_q
    return m


def _run(model, cfg, frames, **kw):
    return list(VideoDetector(model, cfg, **kw).run(frames_from_arrays(frames)))


def _same(a, b, exact=True):
    assert [r.is_key for r in a] == [r.is_key for r in b]
    for ra, rb in zip(a, b, strict=True):
        for da, db in zip(ra.detections, rb.detections):
            if exact:
                np.testing.assert_array_equal(np.asarray(da), np.asarray(db))
            else:
                np.testing.assert_allclose(np.asarray(da), np.asarray(db), rtol=1e-3, atol=1e-2)


# the adaptive rule ------------------------------------------------------------------------------------------
def test_adaptive_rule_on_hand_made_q_maps():
    high = torch.full((1, 1, 10, 16), 0.9)
    assert not adaptive_is_key(high, tau=0.3, gamma=0.2)
    patch = high.clone()
    patch[..., :5, :8] = 0.1  # a quarter of the map below tau
    assert adaptive_is_key(patch, tau=0.3, gamma=0.2)
    assert not adaptive_is_key(patch, tau=0.3, gamma=0.3)  # 25 % does not exceed 30 %


def test_adaptive_schedule_all_high_q_waits_for_the_cap(thp_model):
    cfg = _cfg(KEY_FRAME_SCHEDULE="adaptive", THP_TAU=0.3, THP_GAMMA=0.2, KEY_FRAME_MAX_INTERVAL=6)
    res = _run(_with_q(thp_model, torch.ones_like), cfg, _clip(14))
    assert [r.index for r in res if r.is_key] == [0, 6, 12]


def test_adaptive_schedule_low_patch_makes_a_key_frame(thp_model):
    cfg = _cfg(KEY_FRAME_SCHEDULE="adaptive", THP_TAU=0.3, THP_GAMMA=0.2, KEY_FRAME_MAX_INTERVAL=100)
    calls = []

    def q_fn(q):
        calls.append(1)
        out = torch.ones_like(q)
        if len(calls) == 3:  # the 4th frame: a patch of half the map below tau
            out[..., : q.shape[-2] // 2, :] = 0.0
        return out
    res = _run(_with_q(thp_model, q_fn), cfg, _clip(8))
    assert [r.index for r in res if r.is_key] == [0, 3]


def test_schedule_key_is_checked():
    with pytest.raises(ValueError, match="KEY_FRAME_SCHEDULE"):
        VideoDetector(DFF(_cfg()).eval(), _cfg(KEY_FRAME_SCHEDULE="sometimes"))
    with pytest.raises(ConfigError):
        update_config(_cfg(), {"TEST": {"KEY_FRAME_SCHEDUL": "adaptive"}}, "test")


def test_thp_options_need_a_thp_model():
    cfg = _cfg()
    update_config(cfg, {"network": {"THP": False}}, "test")
    plain = DFF(cfg).eval()
    update_config(cfg, {"TEST": {"PARTIAL_UPDATE": True}}, "test")
    with pytest.raises(ValueError, match="network.THP"):
        VideoDetector(plain, cfg)


# the partial update ------------------------------------------------------------------------------------------
def test_partial_update_all_high_q_is_plain_dff(thp_model):
    frames = _clip(10)
    plain = _run(thp_model, _cfg(), frames)
    partial = _run(_with_q(thp_model, torch.ones_like), _cfg(PARTIAL_UPDATE=True), frames)
    _same(plain, partial)
    assert all(r.updated_fraction == 0.0 for r in partial)


def test_partial_update_all_low_q_is_the_per_frame_feature(thp_model):
    frames = _clip(6)
    per_frame = _run(thp_model, _cfg(), frames, key_interval=1)
    partial = _run(_with_q(thp_model, torch.zeros_like), _cfg(PARTIAL_UPDATE=True), frames)
    assert [r.updated_fraction for r in partial if not r.is_key] == [1.0] * 4
    for ra, rb in zip(per_frame, partial):
        for da, db in zip(ra.detections, rb.detections):
            np.testing.assert_allclose(np.asarray(da), np.asarray(db), rtol=1e-3, atol=1e-2)


def _update(model, data, warped, warped_backbone, mask, margin):
    return partial_update(model.backbone, model.feature_from_backbone, model.feature_head_reach, data, warped,
                          warped_backbone, mask, margin)


def test_all_cells_on_crops_equal_the_full_frame_feature(thp_model):
    data = torch.randn(1, 3, 96, 160) * 40
    with torch.no_grad():
        full = thp_model.extract_feature(data)
        mask = torch.ones(full.shape[-2:], dtype=torch.bool)
        out, backbone, info = _update(thp_model, data, torch.zeros_like(full),
                                      torch.zeros(1, thp_model.backbone.out_channels, *full.shape[-2:]), mask, 2)
    assert info.area_fraction == 1.0
    torch.testing.assert_close(out, full, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(backbone, thp_model.backbone(data), rtol=1e-4, atol=1e-4)


def test_crop_update_error_shrinks_with_the_margin(thp_model):
    """Inside the updated region the crop's feature approaches the full-frame one as the margin grows, and
    is the full-frame feature once the crop is the whole frame. The warped backbone map is the frame's own
    (a perfect warp), so what is measured is the crop's error alone. Tolerance: the mean error over the
    updated cells, relative to the feature's mean magnitude there, below 0.5 / 0.2 / 0.05 at margins
    0 / 2 / 4 cells and float noise once the crop is the frame."""
    torch.manual_seed(0)
    data = torch.randn(1, 3, 160, 256) * 40
    with torch.no_grad():
        full = thp_model.extract_feature(data)
        full_backbone = thp_model.backbone(data)
        mask = torch.zeros(full.shape[-2:], dtype=torch.bool)
        mask[4:6, 7:9] = True  # 2 x 2 cells in the middle of the 10 x 16 map
        size = float(full[..., mask].abs().mean())
        errors = []
        for margin in (0, 1, 2, 4, 16):
            out, _, _ = _update(thp_model, data, torch.zeros_like(full), full_backbone, mask, margin)
            errors.append(float((out - full)[..., mask].abs().mean()) / size)
            assert float(out[..., ~mask].abs().max()) == 0.0  # only the mask's cells change
    assert all(a >= b for a, b in zip(errors, errors[1:])), errors
    assert errors[0] < 0.5 and errors[2] < 0.2 and errors[3] < 0.05, errors
    assert errors[-1] < 1e-5, errors


def test_plan_crops_covers_the_mask_with_its_margin():
    mask = torch.zeros(10, 16, dtype=torch.bool)
    mask[1, 1] = mask[8, 14] = True
    assert sorted(plan_crops(mask, 1)) == [(0, 0, 3, 3), (7, 13, 10, 16)]
    # grown regions that overlap merge into one crop
    mask[1, 4] = True
    assert sorted(plan_crops(mask, 1)) == [(0, 0, 3, 6), (7, 13, 10, 16)]
    assert plan_crops(torch.zeros(4, 4, dtype=torch.bool), 2) == []
    with pytest.raises(ValueError):
        plan_crops(mask, -1)


def test_forced_mask_covers_about_the_fraction():
    for f in (0.1, 0.25, 1.0):
        m = forced_mask(38, 63, f)
        assert abs(float(m.float().mean()) - f) < 0.02


# aggregation ---------------------------------------------------------------------------------------------------
def test_aggregation_with_zero_previous_weight_is_dff(thp_model, monkeypatch):
    frames = _clip(10)
    plain = _run(thp_model, _cfg(), frames)
    monkeypatch.setattr(thp_model.aggregation, "weights", lambda k, p: (torch.ones_like(k[:, :1]),
                                                                        torch.zeros_like(k[:, :1])))
    aggregated = _run(thp_model, _cfg(AGGREGATION=True), frames)
    _same(plain, aggregated)


def test_aggregation_changes_key_features(thp_model):
    frames = _clip(10)
    plain = _run(thp_model, _cfg(), frames)
    aggregated = _run(thp_model, _cfg(AGGREGATION=True), frames)
    assert [r.is_key for r in plain] == [r.is_key for r in aggregated]
    assert aggregated[4].times["aggregate"] > 0 and aggregated[0].times["aggregate"] == 0  # no previous at the start
    changed = any(not np.array_equal(np.asarray(a), np.asarray(b))
                  for ra, rb in zip(plain[4:], aggregated[4:]) for a, b in zip(ra.detections, rb.detections))
    assert changed


def test_aggregation_weights_sum_to_one(thp_model):
    k, p = torch.rand(1, 64, 6, 10), torch.rand(1, 64, 6, 10)
    wk, wp = thp_model.aggregation.weights(k, p)
    torch.testing.assert_close(wk + wp, torch.ones_like(wk))
    assert bool((wk >= wp).all())  # the key frame's own feature has cosine 1 with itself


# training --------------------------------------------------------------------------------------------------------
def test_q_target():
    own = torch.rand(1, 8, 4, 5) + 0.5
    assert torch.allclose(feature_consistency(own, own, 0.25), torch.ones(1, 1, 4, 5))
    far = own.clone()
    far[..., 0, 0] += 5.0
    q = feature_consistency(far, own, 0.25)
    assert float(q[0, 0, 0, 0]) < 0.01 and float(q[0, 0, 1, 1]) == 1.0


def test_thp_training_step_trains_q_and_the_aggregation():
    cfg = _cfg()
    update_config(cfg, {"TRAIN": {"RPN_MIN_SIZE": 0}}, "test")
    m = DFF(cfg).train()
    m.init_video_layers()
    torch.manual_seed(0)
    batch = {"data": torch.randn(1, 3, 96, 160) * 40, "data_ref": torch.randn(1, 3, 96, 160) * 40,
             "data_prev": torch.randn(1, 3, 96, 160) * 40, "eq_flag": 0, "prev_flag": 0,
             "im_info": torch.tensor([[96.0, 160.0, 1.0]]), "gt_boxes": torch.tensor([[10.0, 10.0, 60.0, 70.0, 1.0]])}
    out = m.forward_train(batch, generator=torch.Generator().manual_seed(0))
    assert float(out["q_loss"].detach()) > 0
    out["loss"].backward()
    assert m.flownet.Convolution5_q.weight.grad.abs().sum() > 0
    assert m.aggregation.em_conv3.weight.grad.abs().sum() > 0
    # the key frame as the current frame and no previous key: neither Q nor the aggregation runs
    m.zero_grad()
    out = m.forward_train({**batch, "eq_flag": 1, "prev_flag": 1}, generator=torch.Generator().manual_seed(0))
    assert float(out["q_loss"]) == 0.0
    out["loss"].backward()
    assert m.flownet.Convolution5_q.weight.grad is None or m.flownet.Convolution5_q.weight.grad.abs().sum() == 0


# memory -------------------------------------------------------------------------------------------------------------
def _rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return 0.0


@pytest.mark.slow
def test_memory_is_flat_over_1000_frames(thp_model):
    cfg = _cfg(KEY_FRAME_SCHEDULE="adaptive", PARTIAL_UPDATE=True, AGGREGATION=True, KEY_FRAME_MAX_INTERVAL=20)
    update_config(cfg, {"SCALES": [64, 96]}, "test")
    rng = np.random.RandomState(0)

    def q_fn(q):  # a random patch below tau on every frame, a key frame now and then
        out = torch.ones_like(q)
        y, x = rng.randint(0, q.shape[-2]), rng.randint(0, q.shape[-1])
        out[..., y:y + 2, x:x + 2] = 0.0
        if rng.rand() < 0.05:
            out[...] = 0.0
        return out
    det = VideoDetector(_with_q(thp_model, q_fn), cfg)
    frames = _clip(40, 64, 96)
    rss, cached = [], []
    results = 0
    for i, frame in enumerate(f for _ in range(25) for f in frames_from_arrays(frames)):
        out, is_key, _ = det.step(*det.prepare(frame.image))
        results += 1
        if i in (199, 999):
            rss.append(_rss_mb())
            cached.append(sum(t.numel() for t in (det.loop._ref.data, det.loop._ref.feat)))
    assert results == 1000
    assert cached[0] == cached[1]  # one reference frame, whatever happened
    assert rss[1] - rss[0] < 30.0, rss
