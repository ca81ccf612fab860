"""``make_synthetic_vid.py --degradations vid`` (dff.dataset.degrade): the annotations and the scene are those of the
clean set with the same seed, motion blur comes from the exposure and follows each layer's true motion, and the
mixed set leaves its clean videos byte for byte as the clean set has them."""
from __future__ import annotations

import copy
import json
import os

import cv2
import numpy as np
import pytest

from dff.dataset.degrade import exposure_times
from dff.dataset.synthetic import (
    GT_DIR,
    SynthConfig,
    generate,
    max_displacement,
    observed_frame,
    render_frame,
    video_params,
)

CFG = dict(seed=5, train_videos=2, val_videos=3, frames=12, height=64, width=96, det_images=6, motion=0.35)


def _files(root, sub: str, ext: str) -> dict[str, bytes]:
    out = {}
    for dirpath, _, files in os.walk(os.path.join(root, sub)):
        for f in files:
            if f.endswith(ext):
                p = os.path.join(dirpath, f)
                with open(p, "rb") as fh:
                    out[os.path.relpath(p, root)] = fh.read()
    return out


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    base = tmp_path_factory.mktemp("degrade")
    clean, vid, mixed = (str(base / n) for n in ("clean", "vid", "mixed"))
    generate(clean, SynthConfig(**CFG))
    generate(vid, SynthConfig(**CFG, degradations="vid"))
    generate(mixed, SynthConfig(**CFG, degradations="vid", degraded_fraction=0.5))
    return clean, vid, mixed


def test_annotations_and_lists_equal_the_clean_sets(sets):
    clean, vid, mixed = sets
    for other in (vid, mixed):
        for sub, ext in (("Annotations", ".xml"), ("ImageSets", ".txt")):
            a, b = _files(clean, sub, ext), _files(other, sub, ext)
            assert a and a == b
    a, b = _files(clean, "Data", ".JPEG"), _files(vid, "Data", ".JPEG")
    assert a.keys() == b.keys() and all(a[k] != b[k] for k in a)  # every frame degraded (noise at least)


def test_the_scene_is_the_clean_one(sets):
    cfg = SynthConfig(**CFG)
    for k in range(CFG["val_videos"]):
        p = video_params(SynthConfig(**CFG, degradations="vid"), "val", k)
        assert "degradations" in p
        del p["degradations"]
        assert p == video_params(cfg, "val", k)


def test_the_mix_keeps_its_clean_videos_byte_for_byte(sets):
    clean, _, mixed = sets
    a, b = _files(clean, "Data", ".JPEG"), _files(mixed, "Data", ".JPEG")
    degraded = set()
    for dirpath, _, files in os.walk(os.path.join(mixed, GT_DIR, "VID")):
        for f in files:
            with open(os.path.join(dirpath, f)) as fh:
                if "degradations" in json.load(fh):
                    degraded.add(f[:-len(".json")])
    video_jpegs = [k for k in a if "/VID/" in k]
    same = [k for k in video_jpegs if a[k] == b[k]]
    changed = [k for k in video_jpegs if a[k] != b[k]]
    assert same and changed  # both kinds in a 5-video mix with this seed
    assert all(os.path.basename(os.path.dirname(k)) not in degraded for k in same)
    assert all(os.path.basename(os.path.dirname(k)) in degraded for k in changed)


def _one_object_scene(vx: float, vy: float, n: int = 8) -> dict:
    """A static camera and one textured box translating by (vx, vy) px per frame, without rotation or scaling,
    and a degradation record with the exposure alone (no defocus, flicker or noise)."""
    p = copy.deepcopy(video_params(SynthConfig(seed=2, frames=n, height=96, width=128, max_objects=1,
                                                classes=("box",)), "val", 0))
    p["camera"] = [[1.0, 10.0, -20.0] for _ in range(n)]
    ob = p["objects"][0]
    ob.update(rx=20.0, ry=20.0, tex_freq=1.0)
    ob["frames"] = [[40.0 + vx * t, 40.0 + vy * t, 0.0, 1.0] for t in range(n)]
    p["objects"], p["depth_order"] = [ob], [0]
    p["degradations"] = {"preset": "vid", "shutter": 1.0, "subframe_px": 0.5, "max_subframes": 16,
                         "defocus_sigma": [0.0] * n, "gain": [1.0] * n, "noise_sigma": 0.0,
                         "jpeg_quality": [90] * n, "seed": 0}
    return p


def _shift_mean(img: np.ndarray, dx: float, dy: float, n: int = 12) -> np.ndarray:
    """The mean of ``img`` translated by s * (dx, dy), s evenly over [-1/2, 1/2] (bilinear, sub-pixel)."""
    out = np.zeros_like(img)
    for i in range(n):
        f = i / (n - 1) - 0.5
        m = np.float32([[1, 0, f * dx], [0, 1, f * dy]])
        out += cv2.warpAffine(img, m, img.shape[1::-1], flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    return out / n


@pytest.mark.parametrize("vx, vy", [(6.0, 0.0), (0.0, 6.0)])
def test_motion_blur_follows_the_layer_motion(vx, vy):
    p = _one_object_scene(vx, vy)
    t = 3
    sharp, layer = render_frame(p, t)
    seen, seen_layer = observed_frame(p, t)
    assert np.array_equal(layer, seen_layer)  # the annotated instant is the mid-exposure one
    cx, cy = 40 + int(vx * t), 40 + int(vy * t)
    # the static background, away from the object's swept area, is not blurred at all
    far = np.ones_like(layer, dtype=bool)
    far[max(0, cy - 40):cy + 40, max(0, cx - 40):cx + 40] = False
    assert far.sum() > 2000
    np.testing.assert_allclose(seen[far], sharp[far], atol=1e-6)
    # inside the moving object the exposure is the sharp frame smeared along the motion, not across it
    inner = np.zeros_like(far)
    inner[cy - 10:cy + 10, cx - 10:cx + 10] = True
    assert np.abs(seen - sharp)[inner].mean() > 0.02  # blurred
    along = np.abs(seen - _shift_mean(sharp, vx, vy))[inner].mean()
    across = np.abs(seen - _shift_mean(sharp, vy, vx))[inner].mean()
    assert along < 0.01 and across > 3 * along, (along, across)


def test_a_static_scene_renders_one_sub_frame():
    p = _one_object_scene(0.0, 0.0)
    assert max_displacement(p, 3) == 0.0
    assert exposure_times(3, 1.0, 0.0, 0.5, 16) == [3.0]
    np.testing.assert_array_equal(observed_frame(p, 3)[0], np.clip(render_frame(p, 3)[0], 0, 1))
    assert len(exposure_times(3, 1.0, 6.0, 0.5, 16)) == 12 and len(exposure_times(3, 1.0, 60.0, 0.5, 16)) == 16


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="degradations"):
        SynthConfig(degradations="rain").validate()
    with pytest.raises(ValueError, match="degraded_fraction"):
        SynthConfig(degradations="vid", degraded_fraction=1.5).validate()


def test_the_config_record_of_a_clean_set_has_no_degradation_keys(sets):
    clean, vid, _ = sets
    with open(os.path.join(clean, GT_DIR, "config.json")) as f:
        assert "degradations" not in json.load(f)
    with open(os.path.join(vid, GT_DIR, "config.json")) as f:
        rec = json.load(f)
    assert rec["degradations"] == "vid" and rec["degraded_fraction"] == 1.0
