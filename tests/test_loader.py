"""Training data (dff.dataset.loader): the reference's aspect-grouped shuffle and its quirk, sampler
determinism / mid-epoch resume / rank split, and the per-model sample construction (docs/design.md §5.1-5.3)."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from dff.config import load_config
from dff.dataset.imagenet_vid import ImageNetVID
from dff.dataset.loader import AspectGroupedBatchSampler, BadSample, TrainDataset, epoch_order, list_collate, sample_rng
from dff.dataset.synthetic import SynthConfig, generate
from dff.utils.image import compute_scale, read_image, resize, transform

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RFCN_CFG = os.path.join(REPO, "experiments/rfcn/cfgs/rfcn_synthetic_tiny.yaml")


def reference_shuffle(widths, heights, batch, rng):
    """The reference's AnchorLoader.reset with aspect grouping, written as it is (incl. ``inds[:-extra]``)."""
    horz = widths >= heights
    vert = np.logical_not(horz)
    horz_inds = np.where(horz)[0]
    vert_inds = np.where(vert)[0]
    inds = np.hstack((rng.permutation(horz_inds), rng.permutation(vert_inds)))
    extra = inds.shape[0] % batch
    inds_ = np.reshape(inds[:-extra], (-1, batch))
    row_perm = rng.permutation(np.arange(inds_.shape[0]))
    inds[:-extra] = np.reshape(inds_[row_perm, :], (-1,))
    return inds


def _sizes(n, seed=0):
    rng = np.random.default_rng(seed)
    w = rng.integers(100, 500, n).astype(float)
    h = rng.integers(100, 500, n).astype(float)
    return w, h


def _same_rng(seed, epoch):
    # epoch_order's generator (its stream 2 for (seed, epoch))
    from dff.dataset.loader import derive_seed
    return np.random.Generator(np.random.PCG64(derive_seed(seed, epoch, 0, 2)))


@pytest.mark.parametrize("n", [42, 43, 45])  # 42 % 4 = 2, 43 % 4 = 3, 45 % 4 = 1
def test_order_matches_reference_when_not_multiple(n):
    w, h = _sizes(n)
    ours = epoch_order(w, h, 4, seed=3, epoch=1)
    ref = reference_shuffle(w, h, 4, _same_rng(3, 1))
    np.testing.assert_array_equal(ours, ref)
    np.testing.assert_array_equal(epoch_order(w, h, 4, seed=3, epoch=1, reference_quirk=True), ref)


def test_quirk_when_multiple_of_batch():
    n = 48
    w, h = _sizes(n, seed=1)
    landscape = w >= h
    ref = reference_shuffle(w, h, 4, _same_rng(5, 0))
    quirk = epoch_order(w, h, 4, seed=5, epoch=0, reference_quirk=True)
    np.testing.assert_array_equal(quirk, ref)
    # the reference's bug: no batch shuffling, every landscape image before every portrait one
    k = int(landscape.sum())
    assert landscape[quirk[:k]].all() and not landscape[quirk[k:]].any()
    fixed = epoch_order(w, h, 4, seed=5, epoch=0)
    assert sorted(fixed.tolist()) == list(range(n))
    assert not np.array_equal(fixed, quirk)
    kinds = landscape[fixed].reshape(-1, 4)
    # batches stay aspect-pure (at most the one batch straddling the boundary is mixed) but are interleaved
    assert (kinds.all(1) | ~kinds.any(1)).sum() >= len(kinds) - 1
    first_portrait = np.flatnonzero(~kinds.any(1))[0]
    assert kinds[first_portrait:].all(1).any()


def test_order_without_grouping_or_shuffle():
    w, h = _sizes(20)
    np.testing.assert_array_equal(epoch_order(w, h, 4, 0, 0, shuffle=False), np.arange(20))
    p = epoch_order(w, h, 4, 0, 0, aspect_grouping=False)
    assert sorted(p.tolist()) == list(range(20)) and not np.array_equal(p, np.arange(20))


def test_sampler_determinism_resume_and_ranks():
    w, h = _sizes(43, seed=2)
    full = list(AspectGroupedBatchSampler(w, h, per_rank=2, seed=7, epoch=3))
    assert len(full) == 43 // 2 and all(len(b) == 2 and b[0][0] == 3 for b in full)
    assert full == list(AspectGroupedBatchSampler(w, h, per_rank=2, seed=7, epoch=3))
    assert full != list(AspectGroupedBatchSampler(w, h, per_rank=2, seed=7, epoch=4))
    assert full != list(AspectGroupedBatchSampler(w, h, per_rank=2, seed=8, epoch=3))
    resumed = AspectGroupedBatchSampler(w, h, per_rank=2, seed=7, epoch=3, start_batch=5)
    assert len(resumed) == len(full) - 5 and list(resumed) == full[5:]
    # 2 ranks x 1 image see the images of 1 process x 2, rank-major inside each global batch
    r0 = list(AspectGroupedBatchSampler(w, h, per_rank=1, world_size=2, rank=0, seed=7, epoch=3))
    r1 = list(AspectGroupedBatchSampler(w, h, per_rank=1, world_size=2, rank=1, seed=7, epoch=3))
    assert [a + b for a, b in zip(r0, r1)] == full
    # the incomplete last batch is never used
    used = {i for b in full for _, i in b}
    assert len(used) == 42
    with pytest.raises(ValueError, match="start_batch"):
        AspectGroupedBatchSampler(w, h, per_rank=2, start_batch=99)


# ------------------------------------------------------------------------------------------------
# samples from a generated mini-VID
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("loader") / "vid"
    generate(str(root), SynthConfig(seed=2, train_videos=2, val_videos=0, frames=12, height=64, width=96,
                                    det_images=3, classes=("ellipse", "box")))
    return root


def _cfg(root, scales=(96, 160)):
    cfg = load_config(RFCN_CFG)
    cfg.dataset.dataset_path = str(root)
    cfg.SCALES = [scales]
    return cfg


def _roidb(root):
    return ImageNetVID("DET_train_30classes+VID_train_15frames", str(root), None, verbose=False).train_roidb()


def test_baseline_sample_matches_reference_get_image(synth):
    cfg = _cfg(synth)
    roidb = _roidb(synth)
    ds = TrainDataset(roidb, cfg, pairs=False)
    flipped = [i for i, r in enumerate(roidb) if r["flipped"]]
    for i in (0, flipped[0], len(roidb) - 1):
        rec = roidb[i]
        s = ds[(0, i)]
        im = read_image(rec["image"])
        if rec["flipped"]:
            im = im[:, ::-1, :]
        resized, scale = resize(im, 96, 160)
        np.testing.assert_array_equal(s["data"].numpy(), transform(resized, cfg.network.PIXEL_MEANS))
        assert s["im_info"].tolist() == [[resized.shape[0], resized.shape[1], pytest.approx(scale)]]
        exp = np.round(rec["boxes"].astype(np.float64) * scale)
        exp[:, 0::2] = np.clip(exp[:, 0::2], 0, resized.shape[1] - 1)
        exp[:, 1::2] = np.clip(exp[:, 1::2], 0, resized.shape[0] - 1)
        np.testing.assert_array_equal(s["gt_boxes"][:, :4].numpy(), exp.astype(np.float32))
        np.testing.assert_array_equal(s["gt_boxes"][:, 4].numpy(), rec["gt_classes"])
        assert "data_ref" not in s


def test_dff_pairs(synth):
    cfg = _cfg(synth)
    roidb = _roidb(synth)
    ds = TrainDataset(roidb, cfg, pairs=True, seed=11)
    offsets = set()
    for i, rec in enumerate(roidb):
        s = ds[(1, i)]
        scale = compute_scale(int(rec["height"]), int(rec["width"]), 96, 160)
        # DFF: boxes scaled, neither rounded nor clipped (docs/design.md §5.2 quirk)
        np.testing.assert_array_equal(s["gt_boxes"][:, :4].numpy(),
                                      (rec["boxes"].astype(np.float64) * scale).astype(np.float32))
        if "pattern" not in rec:
            assert s["eq_flag"] == 1 and torch.equal(s["data_ref"], s["data"])
            continue
        ref = int(s["ref_image"][-11:-5])
        t = rec["frame_seg_id"]
        assert max(t - 9, 0) <= ref <= t
        assert s["eq_flag"] == int(ref == t)
        offsets.add(ref - t)
        im = read_image(s["ref_image"])
        if rec["flipped"]:
            im = im[:, ::-1, :]
        np.testing.assert_array_equal(s["data_ref"].numpy(), transform(resize(im, 96, 160)[0], cfg.network.PIXEL_MEANS))
    assert len(offsets) >= 5  # offsets drawn over -9..0
    # reproducible from (seed, epoch, index); another epoch draws other key frames
    again = TrainDataset(roidb, cfg, pairs=True, seed=11)
    vid = [i for i, r in enumerate(roidb) if "pattern" in r]
    assert [again[(1, i)]["ref_image"] for i in vid] == [ds[(1, i)]["ref_image"] for i in vid]
    assert [ds[(2, i)]["ref_image"] for i in vid] != [ds[(1, i)]["ref_image"] for i in vid]
    # the draw is the documented sample_key_frame with the sample's own generator
    from dff.dataset.imagenet_vid import sample_key_frame
    r, _ = sample_key_frame(roidb[vid[3]], sample_rng(11, 1, vid[3]))
    assert ds[(1, vid[3])]["ref_image"] == roidb[vid[3]]["pattern"] % r


def test_unreadable_image_is_reported_not_fatal(synth, tmp_path):
    cfg = _cfg(synth)
    roidb = [dict(r) for r in _roidb(synth)[:6]]
    bad = tmp_path / "broken.JPEG"
    bad.write_bytes(b"not a jpeg")
    roidb[2]["image"] = str(bad)
    ds = TrainDataset(roidb, cfg, pairs=False)
    sampler = AspectGroupedBatchSampler([r["width"] for r in roidb], [r["height"] for r in roidb], per_rank=1,
                                        shuffle=False)
    loader = torch.utils.data.DataLoader(ds, batch_sampler=sampler, collate_fn=list_collate, num_workers=2)
    got = [b[0] for b in loader]
    assert len(got) == 6
    bads = [s for s in got if isinstance(s, BadSample)]
    assert len(bads) == 1 and bads[0].path == str(bad) and bads[0].index == 2
    assert "cannot decode" in bads[0].message
