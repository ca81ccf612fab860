"""The contract every shipped experiment config keeps: each YAML under ``experiments/*/cfgs/`` loads, builds its model,
takes a training step on a small synthetic batch, runs the video engine of its task over a few frames and survives a
checkpoint round trip with the same detections (a segmentation model: the same label maps).

The cases are globbed: a new YAML is a new case. Only the public calls are used (``load_config``, ``build_model``,
``forward_train``, ``video_engine(...).run``, ``frames_from_arrays``, ``save_checkpoint`` / ``load_model``).
Nothing here reads data files: ``build_model`` does not load the ``network.pretrained*`` weights (the trainer does),
and the batches and frames are synthetic. The configs are shrunk by ``--set`` overrides that keep the network's
structure (small frames, fewer proposals and sampled anchors); the ResNet-101 configs are still a few seconds per
step on a CPU and are marked slow.
"""
from __future__ import annotations

import math
import pathlib

import numpy as np
import pytest
import torch

from dff.config import load_config
from dff.engine.engines import video_engine
from dff.engine.frames import frames_from_arrays
from dff.models.builder import build_model, load_model
from dff.utils.checkpoint import save_checkpoint

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = sorted(REPO.glob("experiments/*/cfgs/*.yaml"))
# experiments/<folder>/cfgs -> build_model's kind
KINDS = {"rfcn": "rfcn", "dff_rfcn": "dff", "deeplab": "deeplab", "dff_deeplab": "dff_deeplab"}
FLOW_KINDS = ("dff", "dff_deeplab")
FRAMES = 3


def _is_big(path: pathlib.Path) -> bool:
    """The reference's ResNet-101 configs (the backbone left at its default): seconds per step on a CPU. A config
    that does not load is a fast case (its tests fail, naming the error)."""
    try:
        return load_config(path).network.BACKBONE == "resnet_v1_101"
    except Exception:
        return False


def _case(path: pathlib.Path):
    rel = path.relative_to(REPO / "experiments")
    folder = rel.parts[0]
    if folder not in KINDS:  # a new experiment folder must say which model its configs build
        raise AssertionError(f"{path}: experiments/{folder}/ has no model kind in test_contract.KINDS")
    return pytest.param(path, KINDS[folder], id=f"{folder}/{path.stem}",
                        marks=[pytest.mark.slow] if _is_big(path) else [])


CASES = [_case(p) for p in CONFIGS]


def test_every_config_is_a_case():
    assert len(CONFIGS) >= 10, CONFIGS  # the glob found the shipped configs (rfcn and dff_rfcn)
    assert {p.parent.parent.name for p in CONFIGS} == set(KINDS)


def _frame_size(path: pathlib.Path) -> tuple[int, int]:
    """A small frame (height, width) on which the smallest square anchor of the config fits with a margin."""
    cfg = load_config(path)
    side = int(cfg.network.RPN_FEAT_STRIDE) * min(cfg.network.ANCHOR_SCALES) + 32
    h = max(64, -(-side // 32) * 32)
    return h, -(-(h * 3 // 2) // 32) * 32


def _config(path: pathlib.Path):
    """The config with small frames and fewer proposals: the same network, a fraction of the work."""
    h, w = _frame_size(path)
    return load_config(path, [
        f"SCALES=[{h},{w}]",
        "TRAIN.RPN_PRE_NMS_TOP_N=600", "TRAIN.RPN_POST_NMS_TOP_N=64", "TRAIN.RPN_BATCH_SIZE=64",
        "TEST.RPN_PRE_NMS_TOP_N=300", "TEST.RPN_POST_NMS_TOP_N=32", "TEST.max_per_image=20",
    ]), (h, w)


def _batch(kind: str, h: int, w: int) -> dict:
    """One training sample as the trainer's loader gives it (DFF: a key frame; with an aggregation: the key frame
    before it, which models without one ignore)."""
    g = torch.Generator().manual_seed(0)
    image = lambda: torch.randn(1, 3, h, w, generator=g) * 50  # noqa: E731
    label = torch.zeros(1, h, w, dtype=torch.long)  # segmentation: two labelled regions and an ignored strip
    label[:, int(0.1 * h):int(0.8 * h), int(0.15 * w):int(0.65 * w)] = 1
    label[:, int(0.3 * h):, int(0.7 * w):] = 2
    label[:, :, :4] = 255
    batch = {"data": image(), "im_info": torch.tensor([[float(h), float(w), 1.0]]),
             "gt_boxes": torch.tensor([[[0.15 * w, 0.1 * h, 0.65 * w, 0.8 * h, 1.0],
                                        [0.5 * w, 0.3 * h, 0.95 * w, 0.95 * h, 2.0]]]), "label": label}
    if kind in FLOW_KINDS:
        batch.update(data_ref=batch["data"] + torch.randn(1, 3, h, w, generator=g) * 10, eq_flag=0,
                     data_prev=image(), prev_flag=0)
    return batch


def _frames(h: int, w: int) -> list[np.ndarray]:
    """A few BGR frames with a bright square moving across a noisy background."""
    rng = np.random.RandomState(0)
    base = rng.randint(0, 90, (h, w, 3)).astype(np.uint8)
    frames = []
    for i in range(FRAMES):
        im = base.copy()
        x = w // 8 + 4 * i
        im[h // 4:h // 4 + h // 2, x:x + w // 3] = (40, 200, 230)
        frames.append(im)
    return frames


def _build(path: pathlib.Path, kind: str):
    cfg, size = _config(path)
    torch.manual_seed(0)
    return build_model(kind, cfg), cfg, size


@pytest.mark.parametrize("path, kind", CASES)
def test_config_trains_one_step(path, kind):
    model, cfg, (h, w) = _build(path, kind)
    model.train()
    out = model.forward_train(_batch(kind, h, w), torch.Generator().manual_seed(0))
    loss = out["loss"]
    assert loss.dim() == 0 and math.isfinite(float(loss.detach())), {k: float(v) for k, v in out.items()}
    loss.backward()
    grads = {n: float(p.grad.abs().sum()) for n, p in model.named_parameters() if p.grad is not None}
    assert grads and any(v > 0 for v in grads.values()), "no parameter got a gradient"
    assert all(math.isfinite(v) for v in grads.values()), [n for n, v in grads.items() if not math.isfinite(v)]


def _run(model, cfg, frames) -> list:
    return list(video_engine(model, cfg).run(frames_from_arrays(frames)))


@pytest.mark.parametrize("path, kind", CASES)
def test_config_runs_the_video_engine(path, kind):
    model, cfg, (h, w) = _build(path, kind)
    results = _run(model.eval(), cfg, _frames(h, w))
    assert [r.index for r in results] == list(range(FRAMES))
    assert results[0].is_key
    num_classes = int(cfg.dataset.NUM_CLASSES)
    for r in results:
        if model.task == "seg":
            assert r.detections == [] and r.labels.shape == (h, w) and int(r.labels.max()) < num_classes
            continue
        assert len(r.detections) == num_classes
        for d in r.detections[1:]:
            assert d.ndim == 2 and d.shape[1] == 5 and np.isfinite(d).all()


@pytest.mark.parametrize("path, kind", CASES)
def test_config_checkpoint_round_trip(path, kind, tmp_path):
    """The inference checkpoint as the trainer writes it (test weights, the model kind, the config): a fresh model
    loaded from it has the same state and detects the same boxes on a frame."""
    model, cfg, (h, w) = _build(path, kind)
    model.eval()
    ckpt = tmp_path / "model.pth"
    save_checkpoint(ckpt, model_state=model.state_dict(),
                    extra={"weights": "test", "model_kind": kind, "iteration": 0, "epoch": 0}, config=cfg)
    fresh, fresh_cfg = load_model(ckpt)  # the kind and the config from the file
    assert fresh.kind == model.kind
    assert fresh_cfg.SCALES == cfg.SCALES and fresh_cfg.TEST.RPN_POST_NMS_TOP_N == cfg.TEST.RPN_POST_NMS_TOP_N
    state, loaded = model.state_dict(), fresh.state_dict()
    assert state.keys() == loaded.keys()
    assert all(torch.equal(state[k], loaded[k]) for k in state), [k for k in state if not torch.equal(state[k], loaded[k])]
    frame = _frames(h, w)[:1]
    before, after = _run(model, cfg, frame)[0], _run(fresh, fresh_cfg, frame)[0]
    assert before.is_key and after.is_key
    if model.task == "seg":
        np.testing.assert_array_equal(before.labels, after.labels)
        return
    assert len(before.detections) == len(after.detections)
    for a, b in zip(before.detections, after.detections):
        np.testing.assert_array_equal(a, b)
    assert sum(len(d) for d in before.detections[1:]) > 0  # something to compare (random weights, low threshold)
