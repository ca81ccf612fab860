"""THP trained as published (TRAIN.THP_Q_TRAINING ste): the straight-through mask, the forced masks, the recursive
aggregation over a chain of earlier key frames in training, and the aggregation of non-key frames (Eq. 7) in
training and in the key-frame loop."""
import cv2
import numpy as np
import pytest
import torch

from dff.config import default_config, update_config
from dff.dataset.imagenet_vid import sample_previous_key
from dff.dataset.loader import TrainDataset
from dff.engine.fastpath import StageRunner
from dff.models.dff import DFF
from dff.temporal.thp import forced_update, straight_through_mask
from dff.utils.fixture_weights import fixture_state_dict


def _cfg(train=None, test=None):
    c = default_config()
    update_config(c, {"network": {"BACKBONE": "resnet_v1_tiny", "DFF_FEAT_DIM": 64, "THP": True, "THP_EMBED_DIM": 16,
                                  "PIXEL_MEANS": [103.06, 115.90, 123.15]},
                      "SCALES": [96, 160],
                      "TRAIN": {"RPN_MIN_SIZE": 0, "THP_Q_TRAINING": "ste", "THP_TAU": 0.5, **(train or {})},
                      "TEST": {"RPN_MIN_SIZE": 0, "RPN_PRE_NMS_TOP_N": 600, "RPN_POST_NMS_TOP_N": 50,
                               "KEY_FRAME_INTERVAL": 4, "KEY_FRAME_SCHEDULE": "fixed", "PARTIAL_UPDATE": False,
                               "AGGREGATION": False, **(test or {})}})
    return c


def test_straight_through_mask_is_hard_forward_and_minus_one_inside_the_window():
    q = torch.tensor([0.05, 0.4, 0.6, 0.95], requires_grad=True)
    u = straight_through_mask(q, 0.5)
    assert u.tolist() == [1.0, 1.0, 0.0, 0.0]
    z = torch.logit(q.detach())
    u.sum().backward()
    # dU/dq = dU/dz * dz/dq = -1 * 1 / (q (1 - q)) inside |z| <= 1; 0 outside (z(0.05) = -2.9, z(0.95) = 2.9)
    inside = (z.abs() <= 1).float()
    expected = -inside / (q.detach() * (1 - q.detach()))
    assert torch.allclose(q.grad, expected)
    assert q.grad[0] == 0 and q.grad[3] == 0 and q.grad[1] < 0 and q.grad[2] < 0


def test_forced_masks_take_a_third_each_and_repeat_per_sample():
    draws = [forced_update({"epoch": e, "index": i}) for e in range(3) for i in range(300)]
    counts = {k: draws.count(k) for k in (0, 1, None)}
    assert all(250 < n < 350 for n in counts.values()), counts
    assert draws == [forced_update({"epoch": e, "index": i}) for e in range(3) for i in range(300)]


def _batch(n_prev: int, epoch_index: tuple[int, int]):
    torch.manual_seed(0)
    return {"data": torch.randn(1, 3, 96, 160) * 40, "data_ref": torch.randn(1, 3, 96, 160) * 40,
            "data_prev": torch.randn(n_prev, 3, 96, 160) * 40, "eq_flag": 0, "prev_flag": 0,
            "epoch": epoch_index[0], "index": epoch_index[1],
            "im_info": torch.tensor([[96.0, 160.0, 1.0]]), "gt_boxes": torch.tensor([[10.0, 10.0, 60.0, 70.0, 1.0]])}


def _sample_with(mode):
    for i in range(100):
        if forced_update({"epoch": 0, "index": i}) == mode:
            return (0, i)
    raise AssertionError(mode)


def test_q_learns_from_the_task_loss_through_the_mask_and_the_area_penalty():
    m = DFF(_cfg(train={"THP_AGGREGATE_NON_KEY": True})).train()
    m.init_video_layers()
    # Q starts inside the straight-through window, below tau: everything recomputed, gradients flow
    with torch.no_grad():
        z = float(m.flownet.Convolution5_q.bias)
        assert -1.0 <= z < 0.0
    out = m.forward_train(_batch(3, _sample_with(None)), generator=torch.Generator().manual_seed(0))
    out["loss"].backward()
    assert m.flownet.Convolution5_q.weight.grad.abs().sum() > 0
    assert m.aggregation.em_conv3.weight.grad.abs().sum() > 0
    # with only the area penalty, Q is pushed up (fewer updates): its bias gradient is negative
    m.zero_grad()
    out = m.forward_train(_batch(3, _sample_with(None)), generator=torch.Generator().manual_seed(0))
    out["q_loss"].backward()
    assert float(m.flownet.Convolution5_q.bias.grad) < 0


@pytest.mark.parametrize("mode", [0, 1])
def test_a_forced_mask_trains_no_q(mode):
    m = DFF(_cfg()).train()
    m.init_video_layers()
    out = m.forward_train(_batch(1, _sample_with(mode)), generator=torch.Generator().manual_seed(0))
    assert float(out["q_loss"].detach()) == 0.0
    out["loss"].backward()
    assert m.flownet.Convolution5_q.weight.grad is None or float(m.flownet.Convolution5_q.weight.grad.abs().sum()) == 0


def test_the_chain_of_earlier_key_frames_is_aggregated_recursively():
    m = DFF(_cfg()).eval()
    m.load_state_dict(fixture_state_dict(m), strict=False)
    b = _batch(3, (0, 0))
    calls = []
    aggregate = m.aggregate

    def spy(key_feat, prev_warped):
        calls.append(key_feat.shape[0])
        return aggregate(key_feat, prev_warped)
    m.aggregate = spy
    with torch.no_grad():
        feat = m.scheme.key_frame_feature(m, b)
        # the same recursion by hand: oldest -> middle -> newest -> key frame
        f = m.extract_feature(b["data_prev"][2:3])
        for cur, key in ((b["data_prev"][1:2], b["data_prev"][2:3]), (b["data_prev"][0:1], b["data_prev"][1:2]),
                         (b["data_ref"], b["data_prev"][0:1])):
            flow, scale = m.estimate_flow(cur, key)
            f = aggregate(m.extract_feature(cur), m.warp(f, flow, scale))
    assert calls == [1, 1, 1]
    assert torch.allclose(feat, f, atol=1e-4)


def test_the_loader_draws_a_chain_of_previous_keys():
    cfg = _cfg(train={"THP_PREV_KEYS": 3, "THP_PREV_KEY_MIN_OFFSET": -10, "THP_PREV_KEY_MAX_OFFSET": -1})
    ds = TrainDataset([], cfg, pairs=True)
    rec = {"frame_seg_len": 30}
    rng = np.random.default_rng(0)
    for _ in range(50):
        chain = ds._previous_keys(rec, 25, rng)
        assert 1 <= len(chain) <= 3
        steps = np.diff([25, *chain])
        assert all(-10 <= d <= -1 for d in steps), chain  # each one 1..10 frames before the one after it
        assert len(chain) == 3 or chain[-1] == 0  # shorter only where it reached the video's start
    assert ds._previous_keys(rec, 0, rng) == []  # the video's first frame has no earlier key frame
    assert ds._previous_keys({}, None, rng) == []  # a DET image has none
    # one previous key frame: the draw a single previous key always had
    one = TrainDataset([], _cfg(train={"THP_PREV_KEYS": 1}), pairs=True)
    assert one._previous_keys(rec, 25, np.random.default_rng(3)) == [sample_previous_key(rec, 25, np.random.default_rng(3))]
    with pytest.raises(ValueError, match="THP_PREV_KEYS"):
        TrainDataset([], _cfg(train={"THP_PREV_KEYS": 0}), pairs=True)


def _clip(n, h=96, w=128, seed=0):
    rng = np.random.RandomState(seed)
    base = cv2.GaussianBlur(rng.randint(0, 255, (h + 40, w + 40, 3)).astype(np.uint8), (0, 0), 2)
    return [np.ascontiguousarray(base[i % 40:i % 40 + h, (2 * i) % 40:(2 * i) % 40 + w]) for i in range(n)]


def _low_patch(q):
    """Q with a patch of a quarter of the map below any tau, the rest high."""
    out = torch.ones_like(q)
    out[..., : q.shape[-2] // 2, : q.shape[-1] // 2] = 0.0
    return out


def test_non_key_frames_aggregate_where_they_were_updated():
    """Eq. 7 in the loop: an updated non-key frame's feature is blended with the warped key feature, so at the
    updated cells it differs from the plain partial update; the other cells stay the warped feature."""
    test = {"PARTIAL_UPDATE": True, "THP_TAU": 0.5, "PARTIAL_UPDATE_PROPAGATE": False}
    m = DFF(_cfg(test=test)).eval()
    m.load_state_dict(fixture_state_dict(m), strict=False)
    estimate = m.estimate_flow_q
    m.estimate_flow_q = lambda data, key: (*estimate(data, key)[:2], _low_patch(estimate(data, key)[2]))
    feats = {}
    for agg in (False, True):
        cfg = _cfg(test={**test, "AGGREGATION": agg})
        loop = m.scheme.loop(_stages(m), cfg)
        frames = [torch.from_numpy(f).permute(2, 0, 1)[None].float() for f in _clip(3)]
        times = dict.fromkeys(("feature", "flow", "warp", "update", "aggregate", "head", "post"), 0.0)
        out = [loop.step(f, times) for f in frames]
        feats[agg] = [o[0] for o in out]
        assert [o[1].is_key for o in out] == [True, False, False]
        assert (times["aggregate"] > 0) == agg
    for f0, f1 in zip(feats[False][1:], feats[True][1:]):
        h, w = f0.shape[-2:]
        top = (slice(None), slice(None), slice(0, h // 2), slice(0, w // 2))
        rest = torch.ones(h, w, dtype=torch.bool)
        rest[: h // 2, : w // 2] = False
        assert not torch.allclose(f0[top], f1[top], atol=1e-4)
        torch.testing.assert_close(f0[..., rest], f1[..., rest], atol=1e-4, rtol=1e-4)


def _stages(model):
    return StageRunner(model)
