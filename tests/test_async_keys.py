"""Asynchronous key frames (dff.temporal.async_keys) and the streaming evaluation (dff.apps.streaming)."""
from __future__ import annotations

import json
import pathlib
import runpy
import threading

import cv2
import numpy as np
import pytest
import torch

from dff.apps.demo import synthetic_clip
from dff.apps.streaming import Output, associate, latency_summary
from dff.dataset.synthetic import SynthConfig, generate
from dff.engine.frames import frames_from_arrays, list_frames
from dff.engine.video import VideoDetector, box_quality
from dff.models.builder import load_model
from dff.temporal.async_keys import SimulatedKeys, ThreadKeys, split_threads

REPO = pathlib.Path(__file__).resolve().parents[1]
MODELS = REPO / "data" / "models"
FRAMES = 14


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    folder = synthetic_clip(str(tmp_path_factory.mktemp("clip")), frames=FRAMES, scales=(160, 256))
    return [cv2.imread(p) for p in list_frames(folder)]


def _same(a, b):
    return all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b))


@pytest.mark.parametrize("model_file, overrides", [
    ("dff_rfcn_synthetic_tiny.pth", ["TEST.KEY_FRAME_INTERVAL=4"]),
    # adaptive key frames, the partial update
    ("thp_synthetic_tiny.pth", ["TEST.KEY_FRAME_SCHEDULE=adaptive", "TEST.KEY_FRAME_MAX_INTERVAL=4"]),
    ("dff_mobile_synthetic.pth", ["TEST.KEY_FRAME_INTERVAL=4"]),  # the ConvGRU aggregation of the key frames
])
def test_zero_latency_keys_give_the_synchronous_results(clip, model_file, overrides):
    model, cfg = load_model(MODELS / model_file, overrides=overrides)
    sync = list(VideoDetector(model, cfg).run(frames_from_arrays(clip)))
    keys = SimulatedKeys()  # every key lands before its frame is served
    asyn = list(VideoDetector(model, cfg, keys=keys).run(frames_from_arrays(clip)))
    assert len(sync) == len(asyn) == FRAMES
    assert sum(r.is_key for r in sync) >= 2  # the clip has key frames after the first
    assert len(keys.durations) == sum(r.is_key for r in sync) - 1  # all but the first went through the worker
    for s, a in zip(sync, asyn):
        assert (s.is_key, s.key_index, s.age) == (a.is_key, a.key_index, a.age)
        assert _same(s.detections, a.detections), f"frame {s.index}"
        assert s.age == s.index - s.key_index


def _replay(model, cfg, frames, latency, interval):
    """The async loop on a frame clock: a key requested at frame i lands when frame i + latency is stepped."""
    now = [0]
    keys = SimulatedKeys(clock=lambda: now[0], latency=lambda: latency)
    det = VideoDetector(model, cfg, key_interval=interval, keys=keys)
    results = []
    for r in det.run(frames_from_arrays(frames)):
        results.append(r)
        now[0] = r.index + 1
    return results


@pytest.mark.parametrize("latency, interval", [(3, 5), (2, 6), (5, 4)])
def test_age_follows_the_key_frames_that_have_landed(clip, latency, interval):
    model, cfg = load_model(MODELS / "dff_rfcn_synthetic_tiny.pth")
    results = _replay(model, cfg, clip, latency, interval)
    assert [r.index for r in results] == list(range(FRAMES))  # in frame order
    assert results[0].is_key and results[0].key_index == 0  # nothing to serve the first frame from
    assert not any(r.is_key for r in results[1:])  # the others are all served while their key is computed
    used = sorted({r.key_index for r in results})
    assert len(used) >= 2, "no key frame landed"
    for r in results:
        assert r.age == r.index - r.key_index
        if r.key_index > 0:
            assert r.age >= latency  # a key is used only once it has landed
    for k1, k2 in zip(used[1:], used[2:]):  # the worker's keys (the first frame's is computed in the run)
        assert k2 - k1 >= latency  # one key in flight at a time
    for r in results:  # the newest landed key is used: none requested later had landed by then
        assert not any(r.key_index < k <= r.index - latency for k in used), r
    ages = [r.age for r in results[latency + interval:]]
    assert max(ages) <= max(interval - 1, 2 * latency - 1)  # the requests come early by the key's latency


def test_thread_keys_serve_from_landed_keys_and_stop(clip):
    model, cfg = load_model(MODELS / "dff_rfcn_synthetic_tiny.pth")
    before = threading.active_count()
    keys = ThreadKeys(threads=1)
    det = VideoDetector(model, cfg, key_interval=3, keys=keys)
    results = list(det.run(frames_from_arrays(clip * 2)))
    assert [r.index for r in results] == list(range(2 * FRAMES))
    assert all(r.age == r.index - r.key_index for r in results)
    assert len({r.key_index for r in results}) >= 2 and keys.durations  # a key computed by the worker landed
    det.close()
    assert threading.active_count() == before


def test_key_worker_errors_reach_the_caller():
    keys = ThreadKeys(threads=1)

    def boom():
        raise RuntimeError("feature network failed")
    keys.submit(boom)
    with pytest.raises(RuntimeError, match="feature network failed"):
        for _ in range(1000):
            keys.poll()
            threading.Event().wait(0.01)
    keys.close()


def test_async_needs_a_flow_network(clip):
    model, cfg = load_model(MODELS / "rfcn_synthetic_tiny.pth")
    with pytest.raises(ValueError, match="flow network"):
        VideoDetector(model, cfg, keys=SimulatedKeys())


def test_split_threads():
    assert split_threads(2) == (1, 1)
    assert split_threads(3) == (2, 1)
    assert split_threads(1) == (1, 1)


def test_box_quality_is_the_mean_q_of_the_cells_under_the_box():
    q = np.arange(12, dtype=np.float32).reshape(3, 4) / 12
    # cells per pixel 1/16: a box over pixels 0-31 x 16-31 covers columns 0-1 of row 1
    assert box_quality(q, (0, 16, 31, 31), 1 / 16) == pytest.approx(float(q[1, 0:2].mean()))
    assert box_quality(q, (0, 0, 1000, 1000), 1 / 16) == pytest.approx(float(q.mean()))
    assert box_quality(q, (900, 900, 950, 950), 1 / 16) == pytest.approx(float(q[2, 3]))  # outside: nearest


def test_thp_boxes_have_a_quality_and_key_frames_quality_one(clip):
    model, cfg = load_model(MODELS / "thp_synthetic_tiny.pth")
    results = list(VideoDetector(model, cfg).run(frames_from_arrays(clip)))
    warped = [r for r in results if not r.is_key]
    assert warped and all(r.q_map is not None for r in warped)
    assert results[0].quality((0, 0, 50, 50)) == 1.0
    qs = [r.quality((0, 0, 100, 80)) for r in warped]
    assert all(0.0 <= q <= 1.0 for q in qs) and len(set(qs)) > 1
    dff_model, dff_cfg = load_model(MODELS / "dff_rfcn_synthetic_tiny.pth")
    r = next(iter(VideoDetector(dff_model, dff_cfg).run(frames_from_arrays(clip[:1]))))
    assert r.quality((0, 0, 10, 10)) is None  # no Q in a plain DFF


def _out(index, finish, fps=10.0):
    return Output(index, index / fps, index / fps, finish, [np.zeros((0, 5)), np.array([[0, 0, 5, 5, index]])],
                  False, 0)


def test_association_uses_the_latest_output_finished_in_time():
    fps = 10.0
    # frame 0 finishes at 0.05 (ready for frame 1), frame 1 is dropped, frame 2 finishes at 0.31 (ready for frame 4)
    outs = [_out(0, 0.05), _out(2, 0.31), _out(4, 0.40)]
    boxes, used = associate(outs, 6, fps, 2)
    assert used == [-1, 0, 0, 0, 4, 4]  # an output finished exactly at i / fps counts for frame i
    assert len(boxes[0][1]) == 0 and boxes[4][1][0, 4] == 4
    lat = latency_summary(outs)
    assert lat["p50"] == pytest.approx(50.0) and lat["max"] == pytest.approx(110.0)  # 50, 110 and 0 ms


@pytest.fixture(scope="module")
def small_vid(tmp_path_factory):
    root = tmp_path_factory.mktemp("stream") / "vid"
    generate(str(root), SynthConfig(seed=5, train_videos=0, val_videos=2, frames=12, det_images=0))
    return root


def _stream(args):
    return runpy.run_path(str(REPO / "tools" / "evaluate_streaming.py"))["main"](args)


def test_streaming_replay_async_with_zero_key_latency_is_the_synchronous_run(small_vid, tmp_path):
    timings = tmp_path / "timings.json"
    timings.write_text(json.dumps({"samples": {"key": [0.1], "non_key": [0.02], "key_worker": [0.0]}}))

    def run(name, fps, *extra):
        out = tmp_path / f"{name}.json"
        rc = _stream([str(MODELS / "dff_rfcn_synthetic_tiny.pth"), "--dataset-path", str(small_vid), "--fps", fps,
                      "--replay", "--timings", str(timings), "--key-interval", "4", "--quiet", "--json", str(out),
                      "--out", str(tmp_path / name), *extra])
        assert rc == 0
        return json.loads(out.read_text())

    # 5 fps: every frame is processed (offline), so the schedules are the same
    sync, asyn = run("sync", "5"), run("async", "5", "--async-keys", "--key-latency-ms", "0")
    for key in ("streaming_mAP", "offline_mAP", "streaming_coco_AP", "latency_ms", "config"):
        assert key in sync
    assert asyn["config"]["async_keys"] and asyn["config"]["mode"] == "replay"
    assert sync["frames_processed"] == sync["frames"]
    for key in ("streaming_mAP", "streaming_coco_AP", "latency_ms", "frames_processed", "mean_lag_frames"):
        assert asyn[key] == sync[key], key
    # 100 ms key frames at 30 fps drop frames: the stream is scored with a lag
    fast = run("sync30", "30")
    assert fast["frames_processed"] < fast["frames"] and fast["mean_lag_frames"] > 1.0


def test_streaming_errors_name_the_problem(small_vid, tmp_path, capsys):
    rc = _stream([str(MODELS / "rfcn_synthetic_tiny.pth"), "--dataset-path", str(small_vid), "--async-keys", "--quiet"])
    assert rc == 2 and "flow network" in capsys.readouterr().err
    rc = _stream([str(MODELS / "dff_rfcn_synthetic_tiny.pth"), "--dataset-path", str(tmp_path / "nowhere"), "--quiet"])
    assert rc == 2 and "no such directory" in capsys.readouterr().err


def test_torch_threads_are_per_thread():
    """The CPU split relies on PyTorch's intra-op thread count being the calling thread's own."""
    own = torch.get_num_threads()
    seen = []
    t = threading.Thread(target=lambda: (torch.set_num_threads(1), seen.append(torch.get_num_threads())))
    t.start()
    t.join()
    assert seen == [1] and torch.get_num_threads() == own
