"""FlowNet pre-training on the synthetic mini-VID (dff.train.flow_pretrain, tools/pretrain_flownet.py)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from dff.config import load_config, update_config
from dff.dataset.synthetic import GT_DIR, SynthConfig, generate, gt_flow, load_video_params
from dff.models.flownet import FlowNet
from dff.train.flow_pretrain import (
    FlowPair,
    FlowPairDataset,
    evaluate_epe,
    flow_target,
    init_flownet,
    list_videos,
    load_flownet_weights,
    pretrain,
    sample_pairs,
    save_flownet_checkpoint,
    zero_flow_epe,
)
from dff.utils.checkpoint import CheckpointError, load_checkpoint
from dff.utils.image import preprocess, read_image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_CFG = os.path.join(REPO, "experiments", "dff_rfcn", "cfgs", "dff_rfcn_vid_demo.yaml")
H, W = 64, 96  # frames of the tiny set; the FlowNet grid is 4 x 6 at scale 1


def _cfg(short: int, long: int, feat_dim: int = 1024):
    return update_config(load_config(DEMO_CFG), {"SCALES": [short, long], "network": {"DFF_FEAT_DIM": feat_dim}})


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("flowpre") / "ILSVRC2015"
    generate(str(out), SynthConfig(seed=5, train_videos=2, val_videos=1, frames=8, height=H, width=W, det_images=0,
                                   max_objects=2))
    return str(out)


def _pan_only_root(root: str, dst: str) -> tuple[str, str]:
    """A copy of ``root`` whose val video has no objects and no zoom: the flow is the camera pan only."""
    shutil.copytree(root, dst)
    video = list_videos(dst, "val")[0][0]
    path = os.path.join(dst, GT_DIR, "VID", video + ".json")
    params = load_video_params(dst, video)
    params["objects"], params["depth_order"] = [], []
    params["camera"] = [[1.0, ex, ey] for _, ex, ey in params["camera"]]
    with open(path, "w") as f:
        json.dump(params, f)
    return dst, video


# ------------------------------------------------------------------------------------------------
def test_pairs_and_shapes(root):
    cfg = _cfg(80, 120)  # scale 1.25: 80 x 120 input, grid 5 x ceil(7.5) = 8 (a partial last column)
    ds = FlowPairDataset(root, "train", cfg, 40, seed=3)
    videos = dict(list_videos(root, "train"))
    assert len(ds) == 40 and len(videos) == 2
    for video, cur, key in ds.pairs:
        assert -9 <= key - cur <= -1 and 0 <= key < videos[video]  # DFF's offsets, key != cur
    item = ds[0]
    assert item["cur"].shape == item["key"].shape == (3, 80, 120) and item["cur"].dtype == torch.float32
    assert item["flow"].shape == (2, 5, 8) and item["flow"].dtype == torch.float32
    # the very preprocessing of the detector (same SCALES / PIXEL_MEANS)
    video, cur, _ = ds.pairs[0]
    data, im_info = preprocess(read_image(ds.frame_path(video, cur)), (80, 120), cfg.network.PIXEL_MEANS)
    assert torch.equal(item["cur"], data[0]) and float(im_info[0, 2]) == 1.25
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=3)))
    assert batch["cur"].shape == (3, 3, 80, 120) and batch["flow"].shape == (3, 2, 5, 8)
    # fixed seed -> same pairs; positive offsets when asked
    assert FlowPairDataset(root, "train", cfg, 40, seed=3).pairs == ds.pairs
    assert FlowPairDataset(root, "train", cfg, 40, seed=4).pairs != ds.pairs
    fwd = sample_pairs(list(videos.items()), 50, np.random.default_rng(0), 1, 2)
    assert all(1 <= k - c <= 2 for _, c, k in fwd)


def test_flow_target_constant_and_linear():
    # constant flow (a pan), any scale and size: every cell is flow * scale / 16
    flow = np.empty((50, 70, 2), np.float32)
    flow[..., 0], flow[..., 1] = 3.5, -2.0
    t = flow_target(flow, 1.3, (65, 91))
    assert t.shape == (2, 5, 6)
    torch.testing.assert_close(t[0], torch.full((5, 6), 3.5 * 1.3 / 16))
    torch.testing.assert_close(t[1], torch.full((5, 6), -2.0 * 1.3 / 16))
    # fx = 0.1 x, fy = 0.2 y at scale 1: cell (i, j) averages x over 16j .. 16j+15 -> 0.1 (16 j + 7.5) / 16
    ys, xs = np.mgrid[0:32, 0:48].astype(np.float32)
    t = flow_target(np.stack([0.1 * xs, 0.2 * ys], -1), 1.0, (32, 48))
    j, i = np.arange(3), np.arange(2)
    np.testing.assert_allclose(t[0].numpy(), np.tile(0.1 * (16 * j + 7.5) / 16, (2, 1)), rtol=1e-6)
    np.testing.assert_allclose(t[1].numpy(), np.tile((0.2 * (16 * i + 7.5) / 16)[:, None], (1, 3)), rtol=1e-6)
    with pytest.raises(ValueError, match="flow must be"):
        flow_target(flow[..., 0], 1.0, (50, 70))


@pytest.mark.parametrize("scales,grid", [((64, 96), (4, 6)), ((80, 120), (5, 8))])
def test_pan_ground_truth_at_the_output_grid(root, tmp_path, scales, grid):
    pan_root, video = _pan_only_root(root, str(tmp_path / "pan"))
    params = load_video_params(pan_root, video)
    scale = scales[0] / H
    pairs = [FlowPair(video, 7, 0), FlowPair(video, 5, 3), FlowPair(video, 2, 4)]
    ds = FlowPairDataset(pan_root, "val", _cfg(*scales), pairs)
    flipped = FlowPairDataset(pan_root, "val", _cfg(*scales), pairs * 8, flip=True, seed=1)
    assert flipped.flips.any() and not flipped.flips.all()
    for i, (_, cur, key) in enumerate(pairs):
        # camera p = u - e_t (zoom 1): the point seen at p in cur lies at p + e_cur - e_key in key
        dx = params["camera"][cur][1] - params["camera"][key][1]
        dy = params["camera"][cur][2] - params["camera"][key][2]
        assert abs(dx) + abs(dy) > 0.1  # the video does pan
        expect = torch.tensor([dx, dy], dtype=torch.float32).view(2, 1, 1).expand(2, *grid) * scale / 16
        torch.testing.assert_close(ds[i]["flow"], expect, rtol=1e-5, atol=1e-5)
        for k in range(i, len(flipped), len(pairs)):  # a horizontal flip reverses x motion only
            sign = torch.tensor([-1.0 if flipped.flips[k] else 1.0, 1.0]).view(2, 1, 1)
            torch.testing.assert_close(flipped[k]["flow"], expect * sign, rtol=1e-5, atol=1e-5)
            if flipped.flips[k]:
                torch.testing.assert_close(flipped[k]["cur"], ds[i]["cur"].flip(-1))


def test_zero_predictor_epe_is_mean_gt_magnitude(root):
    cfg = _cfg(H, W, feat_dim=8)
    net = FlowNet(feat_dim=8)
    with torch.no_grad():
        net.Convolution5.weight.zero_()
        net.Convolution5.bias.zero_()
    got = evaluate_epe(net, root, "val", 12, cfg, seed=2)
    zero = zero_flow_epe(root, "val", 12, cfg, seed=2)
    # independently: the GT of the same pairs, 16x16 block means, their norms, in image pixels
    pairs = FlowPairDataset(root, "val", cfg, 12, seed=2).pairs
    mags = []
    for video, cur, key in pairs:
        f = gt_flow(load_video_params(root, video), cur, key).astype(np.float64)
        blocks = f.reshape(H // 16, 16, W // 16, 16, 2).mean(axis=(1, 3))
        mags.append(np.linalg.norm(blocks, axis=-1))
    expect = float(np.mean(mags))
    assert expect > 0.5
    assert got == pytest.approx(expect, rel=1e-5) and zero == pytest.approx(expect, rel=1e-5)


def test_a_few_iterations_reduce_the_epe(root):
    cfg = _cfg(H, W, feat_dim=8)
    torch.manual_seed(0)
    net = FlowNet(feat_dim=8)
    init_flownet(net, seed=0)
    assert torch.all(net.Convolution5_scale.weight == 0) and torch.all(net.Convolution5_scale.bias == 1)
    pairs = FlowPairDataset(root, "train", cfg, 2, seed=7).pairs
    before = evaluate_epe(net, root, "train", pairs, cfg)
    scale_w = net.Convolution5_scale.weight.clone()
    losses = pretrain(net, root, cfg, 8, batch_size=2, lr=3e-4, pairs=pairs, flip=False)
    after = evaluate_epe(net, root, "train", pairs, cfg)
    assert len(losses) == 8 and all(np.isfinite(losses))
    assert after < 0.6 * before, (before, after, losses)
    assert after < zero_flow_epe(root, "train", pairs, cfg)  # it learnt motion, not only to output small flow
    assert torch.equal(net.Convolution5_scale.weight, scale_w)  # the EPE does not train the scale map


def test_checkpoint_initialises_dff_flownet_only(tmp_path):
    torch.manual_seed(1)
    src = FlowNet(feat_dim=8)
    path = str(tmp_path / "sub" / "flownet.pth")
    save_flownet_checkpoint(path, src, extra={"note": "test"})
    ckpt = load_checkpoint(path)
    assert set(ckpt["model"]) == {f"flownet.{k}" for k in src.state_dict()} and ckpt["note"] == "test"
    assert ckpt["config"] is None

    class Holder(nn.Module):  # stands for the DFF model: flownet + other parameters
        def __init__(self) -> None:
            super().__init__()
            self.flownet = FlowNet(feat_dim=8)
            self.feat_conv_3x3 = nn.Conv2d(4, 4, 3)

    dst = Holder()
    other = dst.feat_conv_3x3.weight.clone()
    load_flownet_weights(dst.flownet, path)
    for k, v in src.state_dict().items():
        assert torch.equal(dst.flownet.state_dict()[k], v), k
    assert torch.equal(dst.feat_conv_3x3.weight, other)
    bare = FlowNet(feat_dim=8)
    load_flownet_weights(bare, path)
    assert torch.equal(bare.conv6_1.weight, src.conv6_1.weight)
    # a FlowNet with another scale-map width does not fit; nothing is copied
    wrong = FlowNet(feat_dim=16)
    keep = wrong.conv2.weight.clone()
    with pytest.raises(CheckpointError, match="Convolution5_scale"):
        load_flownet_weights(wrong, path)
    assert torch.equal(wrong.conv2.weight, keep)


@pytest.mark.slow
def test_tool_end_to_end(root, tmp_path):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(open(DEMO_CFG).read() + "\n")
    out = tmp_path / "model" / "flownet_synthetic.pth"
    cmd = [sys.executable, os.path.join(REPO, "tools", "pretrain_flownet.py"), "--data", root, "--cfg", str(cfg),
           "--scale", f"{H},{W}", "--iters", "2", "--batch-size", "2", "--eval-pairs", "3", "--out", str(out),
           "--no-progress"]
    res = subprocess.run(cmd + ["--mxnet-prefix", str(tmp_path / "mx" / "flownet")], capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr
    report = json.loads((tmp_path / "model" / "flownet_synthetic.json").read_text())
    assert report["iters"] == 2 and report["scales"] == [H, W]
    for k in ("epe_before", "epe_after", "epe_zero_flow"):
        assert np.isfinite(report[k]) and report[k] > 0
    assert "val EPE: before" in res.stdout
    ckpt = load_checkpoint(str(out))
    assert all(k.startswith("flownet.") for k in ckpt["model"])
    assert ckpt["flow_pretrain"]["epe_after"] == report["epe_after"]
    # the MXNet copy (for network.pretrained_flow) holds the same weights
    from_mx = FlowNet()
    load_flownet_weights(from_mx, str(tmp_path / "mx" / "flownet-0000.params"))
    for k, v in from_mx.state_dict().items():
        assert torch.equal(v, ckpt["model"]["flownet." + k]), k
    bad = subprocess.run(cmd[:3] + [str(tmp_path)] + cmd[4:], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--data" in bad.stderr and "SyntheticGT" in bad.stderr


@pytest.mark.slow
def test_tool_eval_data_is_the_held_out_root(root, tmp_path):
    """--eval-data: train on one root, measure the held-out EPE on another one's val split (a larger
    flow-only set, as the reference pre-trained on Flying Chairs)."""
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(open(DEMO_CFG).read() + "\n")
    base = [sys.executable, os.path.join(REPO, "tools", "pretrain_flownet.py"), "--data", root, "--cfg", str(cfg),
            "--scale", f"{H},{W}", "--iters", "0", "--eval-pairs", "3", "--no-progress"]
    same = subprocess.run(base + ["--out", str(tmp_path / "a.pth")], capture_output=True, text=True, timeout=300)
    assert same.returncode == 0, same.stderr
    other = tmp_path / "other"
    generate(str(other), SynthConfig(seed=6, train_videos=1, val_videos=1, frames=8, height=H, width=W, det_images=0,
                                     max_objects=2))
    res = subprocess.run(base + ["--eval-data", str(other), "--out", str(tmp_path / "b.pth")], capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    a = json.loads((tmp_path / "a.json").read_text())
    b = json.loads((tmp_path / "b.json").read_text())
    assert a["eval"]["data"] == os.path.abspath(root) and b["eval"]["data"] == os.path.abspath(str(other))
    assert a["data"] == b["data"] == os.path.abspath(root)
    # same initial weights, other held-out pairs: another zero-flow EPE
    assert a["epe_zero_flow"] != b["epe_zero_flow"]
    bad = subprocess.run(base + ["--eval-data", str(tmp_path / "nope"), "--out", str(tmp_path / "c.pth")],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--eval-data" in bad.stderr
