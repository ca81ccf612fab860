"""The synthetic mini-VID generator (dff.dataset.synthetic): determinism, ILSVRC layout read back by
ImageNetVID, and the ground-truth flow checked by warping rendered frames."""
from __future__ import annotations

import hashlib
import json
import os
import xml.etree.ElementTree as ET

import cv2
import numpy as np
import pytest

from dff.dataset import imagesets
from dff.dataset.imagenet_vid import ImageNetVID
from dff.dataset.synthetic import (
    GT_DIR,
    SynthConfig,
    SyntheticVID,
    frame_annotations,
    generate,
    gt_flow,
    layer_map,
    video_index,
    video_params,
)

# small: 64x96 frames, videos of 10..16 frames (some shorter than 15: every frame is listed)
CFG = dict(seed=7, train_videos=3, val_videos=2, frames=16, min_frames=10, height=64, width=96,
           det_images=10, max_objects=3, classes=("ellipse", "box", "triangle"))


def _digest_tree(root) -> dict[str, str]:
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            p = os.path.join(dirpath, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, root)] = hashlib.sha256(fh.read()).hexdigest()
    return out


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "ILSVRC2015"
    counts = generate(str(root), SynthConfig(**CFG))
    return root, counts


def test_determinism(synth, tmp_path):
    root, _ = synth
    again = tmp_path / "again"
    generate(str(again), SynthConfig(**CFG))
    a, b = _digest_tree(root), _digest_tree(again)
    assert len(a) > 100 and a == b  # same seed: the same files, byte for byte
    other = tmp_path / "other"
    generate(str(other), SynthConfig(**{**CFG, "seed": 8}))
    c = _digest_tree(other)
    jpegs = [k for k in a if k.endswith(".JPEG") and k in c]
    assert jpegs and sum(a[k] != c[k] for k in jpegs) > 0.9 * len(jpegs)


def test_layout_and_lists(synth):
    root, counts = synth
    assert counts["train_videos"] == 3 and counts["val_videos"] == 2 and counts["det_images"] == 10
    for split, n in (("train", 3), ("val", 2)):
        for k in range(n):
            ix = video_index(split, k)
            p = json.loads((root / GT_DIR / "VID" / f"{ix}.json").read_text())
            frames = sorted(os.listdir(root / "Data" / "VID" / ix))
            assert frames == [f"{t:06d}.JPEG" for t in range(p["n_frames"])]
            xmls = sorted(os.listdir(root / "Annotations" / "VID" / ix))
            assert xmls == [f"{t:06d}.xml" for t in range(p["n_frames"])]
            assert 10 <= p["n_frames"] <= 16
            im = cv2.imread(str(root / "Data" / "VID" / ix / "000000.JPEG"))
            assert im.shape == (64, 96, 3)
    sets = root / "ImageSets"
    train = (sets / "VID_train_15frames.txt").read_text().splitlines()
    videos = imagesets.scan_vid_videos(str(root), "train")
    assert [v for v, _ in videos] == [video_index("train", k) for k in range(3)]
    assert train == list(imagesets.vid_train_15frames_lines(videos))
    assert train[0].startswith("train/ILSVRC2015_VID_train_0000/ILSVRC2015_train_00000000 1 ")
    val = (sets / "VID_val_videos.txt").read_text().splitlines()
    n0 = len(os.listdir(root / "Data" / "VID" / "val" / "ILSVRC2015_val_00000000"))
    assert val[0] == f"val/ILSVRC2015_val_00000000 1 0 {n0}" and val[1].split()[1] == str(n0 + 1)
    frames = (sets / "VID_val_frames.txt").read_text().splitlines()
    assert frames[n0] == f"val/ILSVRC2015_val_00000001/000000 {n0 + 1}"
    det = (sets / "DET_train_30classes.txt").read_text().splitlines()
    assert det and all(x.endswith(" 1") and x.startswith("train/ILSVRC201") for x in det)


def test_xml_matches_the_real_vid_format(synth, reference_dir):
    root, _ = synth
    ref = json.loads((reference_dir / "eval" / "vid_eval_inputs.json").read_text())["annotation_xml"]
    ref_xml = ET.fromstring(next(iter(ref.values())))

    def shape(el):
        return [el.tag, [shape(c) for c in el]]

    ours = None
    for dirpath, _, files in sorted(os.walk(root / "Annotations" / "VID" / "train")):
        for f in sorted(files):
            x = ET.parse(os.path.join(dirpath, f)).getroot()
            if x.find("object") is not None:
                ours = x
                break
        if ours is not None:
            break
    assert ours is not None
    # same elements in the same order: folder, filename, source/database, size, objects with trackid,
    # name, bndbox (xmax, xmin, ymax, ymin), occluded, generated
    assert shape(ours)[1][:4] == shape(ref_xml)[1][:4]
    assert shape(ours.find("object")) == shape(ref_xml.find("object"))


def test_imagenet_vid_reads_it(synth, tmp_path):
    root, _ = synth
    ds = ImageNetVID("DET_train_30classes+VID_train_15frames", str(root), str(tmp_path / "cache"), verbose=False)
    gt = SyntheticVID(str(root))
    vid = ds.set_roidb("VID_train_15frames")
    assert len(vid) == len((root / "ImageSets" / "VID_train_15frames.txt").read_text().splitlines())
    n_empty = 0
    for e in vid:
        video = e["index"].rsplit("/", 1)[0]
        p = gt.params(video)
        anns = frame_annotations(p, e["frame_seg_id"])
        np.testing.assert_array_equal(e["boxes"], np.array([a["box"] for a in anns], np.uint16).reshape(-1, 4))
        # classes.txt lists the shapes in SynthConfig.classes order; the XML names them
        assert ds.classes == ("__background__", *CFG["classes"])
        assert e["gt_classes"].tolist() == [ds.classes.index(a["wnid"]) for a in anns]
        assert (e["width"], e["height"], e["frame_seg_len"]) == (96.0, 64.0, p["n_frames"])
        n_empty += not anns
    det = ds.set_roidb("DET_train_30classes")
    for e in det:
        with open(os.path.join(root, "Annotations", "DET", e["index"] + ".xml")) as f:
            x = ET.parse(f).getroot()
        names = [o.find("name").text for o in x.findall("object")]
        # the objects outside the class list ("person") are skipped, the others kept in order
        assert e["gt_classes"].tolist() == [ds.classes.index(n) for n in names if n in ds.classes[1:]]
        assert e["width"] == float(x.find("size/width").text)
    assert any("n00007846" in (root / "Annotations" / "DET" / (e["index"] + ".xml")).read_text() for e in det)
    full = ds.gt_roidb(flip=True)
    train = ds.train_roidb()
    n_empty += sum(len(e["boxes"]) == 0 for e in det)
    assert len(train) == len(full) - 2 * n_empty
    flipped = full[len(det):2 * len(det)]
    for a, b in zip(det, flipped):
        assert b["flipped"] and b["image"] == a["image"]
        np.testing.assert_array_equal(b["boxes"][:, 0], a["width"] - a["boxes"][:, 2].astype(float) - 1)
        np.testing.assert_array_equal(b["boxes"][:, 2], a["width"] - a["boxes"][:, 0].astype(float) - 1)
    assert ds.problems.counts == {}
    val = ImageNetVID("VID_val_videos", str(root), None, verbose=False)
    out = tmp_path / "VID_val_videos_eval.txt"
    val.write_eval_image_set(str(out))
    assert out.read_text() == (root / "ImageSets" / "VID_val_frames.txt").read_text()


def _visible_in_both(lc: np.ndarray, lk: np.ndarray, mx: np.ndarray, my: np.ndarray) -> np.ndarray:
    """Pixels of cur whose layer is the same in a 3x3 neighbourhood in both frames (no boundary
    anti-aliasing in either) and whose key position is inside the key frame."""
    h, w = lc.shape
    k3 = np.ones((3, 3), np.uint8)
    inb = (mx >= 1) & (mx <= w - 2) & (my >= 1) & (my <= h - 2)
    xi = np.clip(np.rint(mx).astype(int), 0, w - 1)
    yi = np.clip(np.rint(my).astype(int), 0, h - 1)
    ok = np.zeros((h, w), bool)
    for lab in np.unique(lc):
        ec = cv2.erode((lc == lab).astype(np.uint8), k3).astype(bool)
        ek = cv2.erode((lk == lab).astype(np.uint8), k3).astype(bool)
        ok |= ec & ek[yi, xi] & inb
    return ok


def test_gt_flow_warps_key_onto_current(synth):
    """Warping the key frame by the gt flow reproduces the current frame (raw renders, before JPEG)."""
    root, _ = synth
    gt = SyntheticVID(str(root))
    checked_obj = 0
    for video, cur, key in [(video_index("train", 0), 1, 0), (video_index("train", 1), 9, 0),
                            (video_index("train", 2), 3, 8), (video_index("val", 0), 9, 2),
                            (video_index("val", 1), 5, 4)]:
        p = gt.params(video)
        ic, lc = gt.render(video, cur)
        ik, lk = gt.render(video, key)
        np.testing.assert_array_equal(lc, layer_map(p, cur))
        flow = gt.gt_flow(video, cur, key)
        assert flow.shape == (64, 96, 2) and flow.dtype == np.float32
        ys, xs = np.mgrid[0:64, 0:96].astype(np.float32)
        mx, my = xs + flow[..., 0], ys + flow[..., 1]
        warped = cv2.remap(ik, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        ok = _visible_in_both(lc, lk, mx, my)
        assert ok.mean() > 0.3, (video, cur, key)
        err = np.abs(warped - ic).max(-1)
        still = np.abs(ik - ic).max(-1)
        # bilinear resampling of smooth textures (periods >= ~8 px): background waves are gentle, object
        # textures high-contrast; measured maxima over 24 pairs: 0.0034/0.0104 and 0.0113/0.0312 (mean/p99)
        for sel, tol_mean, tol_p99 in ((ok & (lc == 0), 0.006, 0.02), (ok & (lc > 0), 0.02, 0.06)):
            if sel.sum() < 30:
                continue
            assert err[sel].mean() < tol_mean and np.percentile(err[sel], 99) < tol_p99, (video, cur, key)
            checked_obj += bool((sel & (lc > 0)).any())
        # the scene moves: without the flow the error is several times larger
        assert still[ok].mean() > 5 * err[ok].mean()
        # a flow off by (0.7, 0.7) px is clearly worse
        shifted = cv2.remap(ik, mx + 0.7, my + 0.7, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        assert np.abs(shifted - ic).max(-1)[ok].mean() > 2 * err[ok].mean()
    assert checked_obj >= 2  # object pixels (not only background) were checked
    v = video_index("train", 1)
    np.testing.assert_array_equal(gt.gt_flow(v, 4, 4), 0)
    with pytest.raises(IndexError):
        gt.gt_flow(v, 0, 999)


def test_gt_flow_object_motion_is_exact():
    """Flow of an object pixel equals the object's own affine motion; background follows the camera."""
    cfg = SynthConfig(**{**CFG, "max_objects": 1})
    p = video_params(cfg, "train", 0)
    ob = p["objects"][0]
    ob["rx"] = ob["ry"] = 10.0
    ob["style"]["shape"] = "ellipse"
    ob["frames"][0] = [40.0, 30.0, 0.0, 1.0]
    ob["frames"][3] = [45.0, 28.0, 0.5, 1.2]  # translate (5, -2), rotate 0.5 rad, scale 1.2
    p["camera"][0] = [1.0, 0.0, 0.0]
    p["camera"][3] = [1.1, 3.0, -1.0]  # pan and zoom: p_key = 1.1 * (p - (3, -1))
    flow = gt_flow(p, 0, 3)
    lay = layer_map(p, 0)
    assert len(p["objects"]) == 1 and lay[30, 40] == 1 and lay[30, 44] == 1 and lay[0, 0] == 0 and lay[63, 95] == 0
    np.testing.assert_allclose(flow[30, 40], [5.0, -2.0], atol=1e-5)  # the centre goes with the centre
    # 4 px right of the centre: rotated by 0.5 rad and scaled by 1.2 about it
    expect = np.array([45 + 1.2 * 4 * np.cos(0.5), 28 + 1.2 * 4 * np.sin(0.5)]) - [44, 30]
    np.testing.assert_allclose(flow[30, 44], expect, atol=1e-4)
    np.testing.assert_allclose(flow[0, 0], [1.1 * -3.0, 1.1 * 1.0], atol=1e-5)
    np.testing.assert_allclose(flow[63, 95], [1.1 * (95 - 3.0) - 95, 1.1 * (63 + 1.0) - 63], atol=1e-4)


def test_regenerate_replaces_only_synthetic_data(tmp_path):
    small = {**CFG, "train_videos": 2, "val_videos": 1, "det_images": 2, "frames": 3, "min_frames": None}
    root = tmp_path / "s"
    generate(str(root), SynthConfig(**small))
    generate(str(root), SynthConfig(**{**small, "train_videos": 1}))  # fewer videos: no leftovers
    assert os.listdir(root / "Data" / "VID" / "train" / "ILSVRC2015_VID_train_0000") == ["ILSVRC2015_train_00000000"]
    real = tmp_path / "real"
    os.makedirs(real / "Data" / "VID")
    with pytest.raises(FileExistsError, match="not a synthetic dataset"):
        generate(str(real), SynthConfig(**small))


def test_config_errors(tmp_path):
    with pytest.raises(ValueError, match="not a shape the generator draws"):
        generate(str(tmp_path), SynthConfig(classes=("box", "unicorn")))
    with pytest.raises(ValueError, match="min_frames"):
        generate(str(tmp_path), SynthConfig(frames=5, min_frames=9))


def test_motion_multiplier_scales_every_motion():
    """motion=0 freezes the scene (zero flow everywhere); motion=0.5 halves the flow of motion=1."""
    still = video_params(SynthConfig(seed=3, frames=12, motion=0.0), "val", 0)
    assert np.abs(gt_flow(still, 9, 0)).max() < 1e-6
    full = gt_flow(video_params(SynthConfig(seed=3, frames=12), "val", 0), 1, 0)
    half = gt_flow(video_params(SynthConfig(seed=3, frames=12, motion=0.5), "val", 0), 1, 0)
    assert np.abs(full).mean() > 0.3
    assert 0.35 < np.abs(half).mean() / np.abs(full).mean() < 0.65
