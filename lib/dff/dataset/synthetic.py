"""A synthetic mini ImageNet VID: moving textured objects over a panning textured background, with
exact ground-truth optical flow, written in the ILSVRC2015 layout so :class:`ImageNetVID` reads it
unchanged.

Written under ``root`` (deterministic from ``SynthConfig.seed``: the same config gives the same bytes
with the same numpy/OpenCV builds)::

    Data/VID/train/ILSVRC2015_VID_train_0000/ILSVRC2015_train_%08d/%06d.JPEG
    Data/VID/val/ILSVRC2015_val_%08d/%06d.JPEG
    Data/DET/train/ILSVRC2014_train_0000/ILSVRC2014_train_%08d.JPEG
    Data/DET/train/ILSVRC2013_train/<wnid>/<wnid>_%d.JPEG
    Annotations/{VID,DET}/...xml            the real VID/DET XML formats (VID: trackid, occluded, generated)
    ImageSets/VID_train_15frames.txt, VID_val_videos.txt, VID_val_frames.txt, DET_train_30classes.txt
    SyntheticGT/VID/<split>/<video>.json    per-frame motion of the camera and of every object
    classes.txt                             the class list (docs/custom_data.md): the shapes drawn

The lists are made by :mod:`dff.dataset.imagesets` from the written files (the same code as for a
real download). ``SyntheticGT`` is not part of ILSVRC: it holds everything needed to re-render any
frame (:func:`render_frame`) and the flow between any two frames (:func:`gt_flow`).

Scene model (all coordinates in pixels of the frame, x = column, y = row, pixel centres at integers):

* Background: a sum of plane waves (wavelengths 10..90 px) in world coordinates u; the camera maps
  u to the frame as ``p = zoom_t * (u - e_t)`` (pan e_t, slow zoom).
* Object o: a shape given by a signed distance function in its own coordinates q (about [-1, 1]^2),
  textured by a function of q, mapped to the frame as ``p = c_t + R(theta_t) diag(s_t rx, s_t ry) q``.
  Each class is a shape with its own texture and colours, and is named after the shape (``star``,
  ``box``, ...; :data:`SHAPES`), so a detector can learn them and its labels say what it sees. Objects translate
  (with slowly turning velocity), rotate, scale, occlude each other (fixed depth order), enter and
  leave the frame.
* A pixel belongs to the front-most object whose anti-aliased coverage exceeds 0.5, else to the
  background; that "layer" moves with its own transform, so the backward flow of pixel p of frame
  ``cur`` to frame ``key`` is ``T_key(T_cur^-1(p)) - p`` with T the transform of p's layer at ``cur``
  (p + flow(p) is where the same surface point lies in the key frame, possibly outside it or hidden).

Boxes: the tight box of an object's (unoccluded) coverage inside the frame, inclusive pixel indices
(x2 <= W-1); objects covering fewer than ``min_box_area`` frame pixels or with fewer than
``min_visible`` visible pixels are not annotated; ``occluded`` = 1 when less than 70% of the in-frame
coverage is visible.
"""
from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import cv2
import numpy as np

from dff.dataset import imagesets
from dff.dataset.cityscapes import ANNOTATED_FRAME
from dff.dataset.cityscapes import IMAGES as CS_IMAGES
from dff.dataset.cityscapes import LABELS as CS_LABELS
from dff.dataset.cityscapes import frame_name as cs_frame_name
from dff.dataset.cityscapes import label_name as cs_label_name
from dff.dataset.classlist import ClassList, write_class_file
from dff.dataset.convert import vid_to_cocovid
from dff.dataset.degrade import NONE, PRESETS, apply_sensor, draw_degradations, exposure_times, frame_quality
from dff.dataset.imagenet_vid import DataProblems

__all__ = [
    "SynthConfig", "STYLES", "SHAPES", "class_style", "class_list", "generate", "video_params", "det_params", "render_frame", "layer_map",
    "frame_annotations", "segmentation_label", "observed_frame", "label_frames", "gt_flow", "load_video_params", "SyntheticVID", "vid_xml", "det_xml",
]

GT_DIR = "SyntheticGT"
NON_VID_WNID = "n00007846"  # "person": a DET class outside the class list, which the readers must skip

# class style: (shape, texture, colour A, colour B) in RGB [0, 1]; a class is named after its shape
STYLES: tuple[tuple[str, str, tuple[float, float, float], tuple[float, float, float]], ...] = (
    ("ellipse", "stripes", (0.85, 0.15, 0.10), (0.98, 0.85, 0.20)),
    ("box", "checker", (0.10, 0.25, 0.85), (0.95, 0.95, 0.95)),
    ("triangle", "rings", (0.10, 0.65, 0.20), (0.05, 0.05, 0.05)),
    ("star", "dots", (0.95, 0.55, 0.05), (0.45, 0.10, 0.55)),
    ("ring", "diagonal", (0.10, 0.80, 0.85), (0.45, 0.25, 0.10)),
    ("diamond", "waves", (0.85, 0.10, 0.75), (0.20, 0.55, 0.15)),
    ("cross", "stripes_y", (0.97, 0.97, 0.97), (0.08, 0.08, 0.08)),
    ("hexagon", "checker_diag", (0.95, 0.90, 0.10), (0.15, 0.20, 0.60)),
)
SHAPES: tuple[str, ...] = tuple(s[0] for s in STYLES)
_DISTRACTOR_STYLE = ("ellipse", "flat", (0.55, 0.55, 0.55), (0.50, 0.50, 0.50))
_MIN_TEX_UNIT_PX = 15.0  # object half-size (px) below which its texture is stretched


@dataclass
class SynthConfig:
    """What to generate. ``classes`` are shape names (:data:`SHAPES`), in class-index order."""
    seed: int = 0
    train_videos: int = 20
    val_videos: int = 4
    frames: int = 30                 # frames per video (min_frames..frames when min_frames is set)
    min_frames: int | None = None
    height: int = 160
    width: int = 256
    # the first five shapes; the class index order (hence the random draws) of the earlier VID-named set
    classes: Sequence[str] = SHAPES[:5]
    max_objects: int = 3
    det_images: int = 12
    jpeg_quality: int = 92
    min_box_area: int = 24
    min_visible: int = 12
    # multiplies every motion (pan, zoom, object speed, rotation, scale change); 1.0 is fast for VID:
    # most objects fall in FGFA's "fast" group; 0.35 gives a slow/medium/fast mix close to VID val
    motion: float = 1.0
    # --format cityscapes: label every N-th frame of a train snippet (frames 9, 19, 29, ... for 10) instead of
    # Cityscapes' one (the 20th); validation snippets always have the one
    seg_train_label_every: int = 0
    # "vid": the frames of real video (dff.dataset.degrade: motion blur of the exposure, defocus episodes, noise,
    # flicker, varying JPEG quality); each video / DET image is degraded with probability degraded_fraction
    degradations: str = NONE
    degraded_fraction: float = 1.0

    def validate(self) -> None:
        for c in self.classes:
            if c not in SHAPES:
                raise ValueError(f"SynthConfig.classes: {c!r} is not a shape the generator draws "
                                 f"(one of {', '.join(SHAPES)})")
        if not self.classes:
            raise ValueError("SynthConfig.classes: need at least one class")
        if len(set(self.classes)) != len(self.classes):
            raise ValueError(f"SynthConfig.classes: repeated class in {list(self.classes)}")
        if self.height < 32 or self.width < 32:
            raise ValueError(f"SynthConfig: image size {self.height}x{self.width} too small (>= 32x32)")
        if self.frames < 1 or (self.min_frames is not None and not 1 <= self.min_frames <= self.frames):
            raise ValueError(f"SynthConfig: frames={self.frames}, min_frames={self.min_frames}: "
                             "need 1 <= min_frames <= frames")
        if not self.motion >= 0:
            raise ValueError(f"SynthConfig: motion must be >= 0, got {self.motion}")
        if self.degradations != NONE and self.degradations not in PRESETS:
            raise ValueError(f"SynthConfig.degradations: {self.degradations!r} is not a preset "
                             f"(one of {NONE}, {', '.join(PRESETS)})")
        if not 0.0 <= self.degraded_fraction <= 1.0:
            raise ValueError(f"SynthConfig.degraded_fraction must be in [0, 1], got {self.degraded_fraction}")
        if self.train_videos < 0 or self.val_videos < 0 or self.det_images < 0 or self.max_objects < 1:
            raise ValueError("SynthConfig: counts must be >= 0 and max_objects >= 1")


# ------------------------------------------------------------------------------------------------
# shapes and textures (functions of object coordinates q; arrays of shape (N,))
# ------------------------------------------------------------------------------------------------
def _sd_box(qx: np.ndarray, qy: np.ndarray, bx: float, by: float) -> np.ndarray:
    dx, dy = np.abs(qx) - bx, np.abs(qy) - by
    return np.hypot(np.maximum(dx, 0), np.maximum(dy, 0)) + np.minimum(np.maximum(dx, dy), 0)


def _sd_polygon(qx: np.ndarray, qy: np.ndarray, n: int, r: float) -> np.ndarray:
    # regular n-gon (apothem r): max over edge normals is the exact SDF inside, a close bound outside
    ang = np.arctan2(qy, qx)
    sector = 2 * np.pi / n
    a = np.mod(ang + sector / 2, sector) - sector / 2
    return np.hypot(qx, qy) * np.cos(a) - r


def shape_sdf(shape: str, qx: np.ndarray, qy: np.ndarray) -> np.ndarray:
    """Signed distance (object units, < 0 inside) of a class shape; shapes fit in about [-1, 1]^2."""
    r = np.hypot(qx, qy)
    if shape == "ellipse":
        return r - 1.0
    if shape == "box":
        return _sd_box(qx, qy, 0.85, 0.85)
    if shape == "triangle":
        return _sd_polygon(qx, qy + 0.15, 3, 0.55)
    if shape == "star":
        return (r - (0.68 + 0.28 * np.cos(5 * np.arctan2(qy, qx)))) * 0.7
    if shape == "ring":
        return np.abs(r - 0.68) - 0.32
    if shape == "diamond":
        return (np.abs(qx) + np.abs(qy) - 1.0) / math.sqrt(2)
    if shape == "cross":
        return np.minimum(_sd_box(qx, qy, 0.95, 0.36), _sd_box(qx, qy, 0.36, 0.95))
    if shape == "hexagon":
        return _sd_polygon(qx, qy, 6, 0.88)
    raise ValueError(f"unknown shape {shape!r}")


def texture(name: str, qx: np.ndarray, qy: np.ndarray) -> np.ndarray:
    """Texture value in [0, 1] at object coordinates (smooth: periods >= ~0.3 object units)."""
    tau = 2 * np.pi
    if name == "stripes":
        return 0.5 + 0.5 * np.sin(tau * 1.6 * qx)
    if name == "stripes_y":
        return 0.5 + 0.5 * np.sin(tau * 1.6 * qy)
    if name == "checker":
        return 0.5 + 0.5 * np.tanh(1.5 * np.sin(tau * 1.2 * qx) * np.sin(tau * 1.2 * qy))
    if name == "checker_diag":
        return 0.5 + 0.5 * np.tanh(1.5 * np.sin(tau * 1.1 * (qx + qy)) * np.sin(tau * 1.1 * (qx - qy)))
    if name == "rings":
        return 0.5 + 0.5 * np.cos(tau * 1.8 * np.hypot(qx, qy))
    if name == "dots":
        return 0.5 + 0.5 * np.tanh(2.0 * (np.cos(tau * 1.4 * qx) * np.cos(tau * 1.4 * qy) - 0.3))
    if name == "diagonal":
        return 0.5 + 0.5 * np.sin(tau * 1.3 * (qx + qy))
    if name == "waves":
        return 0.5 + 0.5 * np.sin(tau * (1.3 * qy + 0.35 * np.sin(tau * 0.8 * qx)))
    if name == "flat":
        return np.full_like(qx, 0.5)
    raise ValueError(f"unknown texture {name!r}")


def class_style(cls_name: str) -> dict[str, Any]:
    """Style of a class: the entry of :data:`STYLES` whose shape it is named after."""
    shape, tex, ca, cb = STYLES[SHAPES.index(cls_name)]
    return {"shape": shape, "texture": tex, "color_a": list(ca), "color_b": list(cb)}


def class_list(cfg: SynthConfig) -> ClassList:
    """The generated set's class list (annotation id = display name = the shape)."""
    return ClassList.from_lists(list(cfg.classes), source="SynthConfig.classes")


# ------------------------------------------------------------------------------------------------
# scene parameters
# ------------------------------------------------------------------------------------------------
def _rng(cfg: SynthConfig, *key: int) -> np.random.Generator:
    return np.random.default_rng([cfg.seed, *key])


def _background(rng: np.random.Generator, n_waves: int = 14) -> dict[str, Any]:
    waves = []
    for _ in range(n_waves):
        lam = float(np.exp(rng.uniform(np.log(10.0), np.log(90.0))))
        ang = float(rng.uniform(0, np.pi))
        waves.append({
            "kx": 2 * np.pi / lam * math.cos(ang), "ky": 2 * np.pi / lam * math.sin(ang),
            "phase": float(rng.uniform(0, 2 * np.pi)),
            "amp": [float(a) for a in rng.uniform(-0.09, 0.09, size=3)],
        })
    return {"base": [float(b) for b in rng.uniform(0.3, 0.7, size=3)], "waves": waves}


def _camera(rng: np.random.Generator, n: int, motion: float = 1.0) -> list[list[float]]:
    """Per frame ``[zoom, ex, ey]``: pan of 0..2.5 px/frame with a slow wobble, zoom drift <= 0.4%/frame
    (all times ``motion``)."""
    speed = rng.uniform(0.0, 2.5) * motion
    ang = rng.uniform(0, 2 * np.pi)
    vx, vy = speed * math.cos(ang), speed * math.sin(ang)
    wob_a, wob_f, wob_p = rng.uniform(0, 0.6) * motion, rng.uniform(0.1, 0.4), rng.uniform(0, 2 * np.pi)
    dzoom = rng.uniform(-0.004, 0.004) * motion
    ex, ey = float(rng.uniform(-500, 500)), float(rng.uniform(-500, 500))
    out = []
    for t in range(n):
        out.append([float(math.exp(dzoom * t)), ex, ey])
        ex += vx + wob_a * math.sin(wob_f * t + wob_p)
        ey += vy + wob_a * math.cos(wob_f * t + wob_p)
    return out


def _object(rng: np.random.Generator, cfg: SynthConfig, n: int, trackid: int, cls_name: str,
            style: dict[str, Any] | None = None, wnid: str | None = None) -> dict[str, Any]:
    h, w = cfg.height, cfg.width
    m = min(h, w)
    rx = float(rng.uniform(0.09, 0.2) * m)
    ry = float(rx * rng.uniform(0.65, 1.4))
    mode = rng.choice(["inside", "enter", "leave"], p=[0.5, 0.25, 0.25])
    speed = float(rng.uniform(0.3, 2.0) if mode == "inside" else rng.uniform(1.5, 4.0)) * cfg.motion
    if mode == "enter":  # start beyond an edge, move inwards
        edge = int(rng.integers(4))
        cx = [-1.2 * rx, w + 1.2 * rx, rng.uniform(0, w), rng.uniform(0, w)][edge]
        cy = [rng.uniform(0, h), rng.uniform(0, h), -1.2 * ry, h + 1.2 * ry][edge]
        ang = math.atan2(h / 2 - cy, w / 2 - cx) + rng.uniform(-0.4, 0.4)
    else:
        cx, cy = rng.uniform(0.2 * w, 0.8 * w), rng.uniform(0.2 * h, 0.8 * h)
        ang = rng.uniform(0, 2 * np.pi)
    turn = rng.uniform(-0.04, 0.04)        # velocity direction change per frame
    omega = rng.uniform(-0.05, 0.05) * cfg.motion      # rotation, rad/frame
    dscale = rng.uniform(-0.012, 0.012) * cfg.motion   # log-scale change per frame
    theta = rng.uniform(-0.5, 0.5)
    frames = []
    for t in range(n):
        frames.append([float(cx), float(cy), float(theta), float(math.exp(dscale * t))])
        cx += speed * math.cos(ang)
        cy += speed * math.sin(ang)
        ang += turn
        theta += omega
    return {
        "trackid": trackid, "class": cls_name if wnid is None else None, "wnid": wnid or cls_name,
        "rx": rx, "ry": ry, "style": style or class_style(cls_name), "frames": frames,
        # small objects get a coarser texture: periods stay >= ~8 px (textures have <= 1.85 cycles per
        # object unit), so frames are not aliased and bilinear warping by the flow stays accurate
        "tex_freq": float(min(1.0, min(rx, ry) / _MIN_TEX_UNIT_PX)),
    }


def video_params(cfg: SynthConfig, split: str, k: int) -> dict[str, Any]:
    """Everything that defines video ``k`` of ``split`` ('train' or 'val'); JSON-serialisable."""
    split_code = {"train": 1, "val": 2}[split]
    rng = _rng(cfg, split_code, k)
    lo = cfg.min_frames or cfg.frames
    n = int(rng.integers(lo, cfg.frames + 1))
    n_obj = int(rng.integers(1, cfg.max_objects + 1))
    objs = []
    for o in range(n_obj):
        cls_name = str(cfg.classes[int(rng.integers(len(cfg.classes)))])
        objs.append(_object(rng, cfg, n, o, cls_name))
    depth = rng.permutation(n_obj).tolist()  # back-to-front drawing order (fixed: a depth per object)
    params = {
        "version": 1, "height": cfg.height, "width": cfg.width, "n_frames": n,
        "background": _background(rng), "camera": _camera(rng, n, cfg.motion), "objects": objs, "depth_order": depth,
        "min_box_area": cfg.min_box_area, "min_visible": cfg.min_visible,
    }
    return _with_degradations(params, cfg, 10 + split_code, k)


def _with_degradations(params: dict[str, Any], cfg: SynthConfig, *key: int) -> dict[str, Any]:
    """``params`` plus, when ``cfg`` asks for degradations and this video / image draws them, its record
    (``"degradations"``). The draws come from their own stream, so the scene is that of the clean set."""
    if cfg.degradations == NONE:
        return params
    rng = _rng(cfg, *key)
    if rng.random() < cfg.degraded_fraction:
        params["degradations"] = draw_degradations(rng, params["n_frames"], cfg.degradations)
    return params


def det_params(cfg: SynthConfig, k: int) -> dict[str, Any]:
    """A still DET image: one frame, 1..max_objects objects, varied size and aspect (some portrait)."""
    rng = _rng(cfg, 3, k)
    h = int(rng.integers(int(cfg.height * 0.8), int(cfg.height * 1.4) + 1))
    w = int(rng.integers(int(cfg.width * 0.6), int(cfg.width * 1.2) + 1))
    if k % 4 == 3:
        h, w = max(h, w), min(h, w)
    sub = SynthConfig(**{**asdict(cfg), "height": h, "width": w})
    n_obj = int(rng.integers(1, cfg.max_objects + 1))
    objs = []
    for o in range(n_obj):
        if k % 5 == 4 and o == n_obj - 1:  # a non-VID DET object: the parser must skip it
            shape, tex, ca, cb = _DISTRACTOR_STYLE
            style = {"shape": shape, "texture": tex, "color_a": list(ca), "color_b": list(cb)}
            objs.append(_object(rng, sub, 1, o, cfg.classes[0], style=style, wnid=NON_VID_WNID))
            continue
        cls_name = str(cfg.classes[int(rng.integers(len(cfg.classes)))])
        ob = _object(rng, sub, 1, o, cls_name)
        # keep still objects inside the image
        ob["frames"][0][0] = float(rng.uniform(0.25 * w, 0.75 * w))
        ob["frames"][0][1] = float(rng.uniform(0.25 * h, 0.75 * h))
        objs.append(ob)
    params = {
        "version": 1, "height": h, "width": w, "n_frames": 1, "background": _background(rng),
        "camera": _camera(rng, 1), "objects": objs, "depth_order": rng.permutation(n_obj).tolist(),
        "min_box_area": cfg.min_box_area, "min_visible": cfg.min_visible,
    }
    return _with_degradations(params, cfg, 13, k)


# ------------------------------------------------------------------------------------------------
# rendering
# ------------------------------------------------------------------------------------------------
def _state(seq: Sequence[Sequence[float]], t: float) -> Sequence[float]:
    """Per-frame state ``seq[t]``; at a time between frames (an exposure's sub-frame) the linear interpolation of
    its neighbours, extended past the last frame along the last step (a 1-frame sequence is constant)."""
    if isinstance(t, (int, np.integer)):
        return seq[t]
    if len(seq) == 1:
        return seq[0]
    i = min(max(int(math.floor(t)), 0), len(seq) - 2)
    a, b, f = seq[i], seq[i + 1], t - i
    return [x + f * (y - x) for x, y in zip(a, b)]


def _obj_matrix(ob: dict[str, Any], t: float) -> np.ndarray:
    """2x3 affine p = M [q; 1] of object ``ob`` at frame t (a time between frames interpolates)."""
    cx, cy, th, s = _state(ob["frames"], t)
    c, si = math.cos(th), math.sin(th)
    a = np.array([[c, -si], [si, c]]) @ np.diag([s * ob["rx"], s * ob["ry"]])
    return np.hstack([a, [[cx], [cy]]])


def _obj_region(ob: dict[str, Any], t: float, h: int, w: int) -> tuple[int, int, int, int] | None:
    cx, cy, _, s = _state(ob["frames"], t)
    r = 1.5 * s * max(ob["rx"], ob["ry"]) + 2
    x0, x1 = max(int(math.floor(cx - r)), 0), min(int(math.ceil(cx + r)) + 1, w)
    y0, y1 = max(int(math.floor(cy - r)), 0), min(int(math.ceil(cy + r)) + 1, h)
    return (x0, x1, y0, y1) if x0 < x1 and y0 < y1 else None


def _coverage(ob: dict[str, Any], t: float, xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Anti-aliased coverage in [0, 1] and object coordinates (qx, qy) at pixels (xs, ys)."""
    m = _obj_matrix(ob, t)
    inv = np.linalg.inv(m[:, :2])
    dx, dy = xs - m[0, 2], ys - m[1, 2]
    qx = inv[0, 0] * dx + inv[0, 1] * dy
    qy = inv[1, 0] * dx + inv[1, 1] * dy
    px_per_unit = _state(ob["frames"], t)[3] * min(ob["rx"], ob["ry"])
    d = shape_sdf(ob["style"]["shape"], qx, qy) * px_per_unit
    return np.clip(0.5 - d, 0.0, 1.0), qx, qy


def _world_coords(params: dict[str, Any], t: float, xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    zoom, ex, ey = _state(params["camera"], t)
    return xs / zoom + ex, ys / zoom + ey


def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:h, 0:w]
    return xs.astype(np.float64), ys.astype(np.float64)


def render_frame(params: dict[str, Any], t: float) -> tuple[np.ndarray, np.ndarray]:
    """Render frame t, the scene at one instant: ``(image (H,W,3) float32 RGB in [0,1], layer (H,W) int32)``
    (a time between frames interpolates each motion; :func:`observed_frame` adds the exposure and the sensor).

    ``layer`` is 0 for background, ``trackid + 1`` where that object is the front-most with coverage
    > 0.5 (the layer whose motion gives the pixel's flow).
    """
    h, w = params["height"], params["width"]
    xs, ys = _grid(h, w)
    ux, uy = _world_coords(params, t, xs, ys)
    bg = params["background"]
    img = np.empty((h, w, 3), dtype=np.float64)
    img[:] = bg["base"]
    for wv in bg["waves"]:
        s = np.sin(wv["kx"] * ux + wv["ky"] * uy + wv["phase"])
        img += s[..., None] * np.asarray(wv["amp"])
    layer = np.zeros((h, w), dtype=np.int32)
    for o in params["depth_order"]:
        ob = params["objects"][o]
        reg = _obj_region(ob, t, h, w)
        if reg is None:
            continue
        x0, x1, y0, y1 = reg
        alpha, qx, qy = _coverage(ob, t, xs[y0:y1, x0:x1], ys[y0:y1, x0:x1])
        if not alpha.any():
            continue
        st = ob["style"]
        v = texture(st["texture"], qx * ob["tex_freq"], qy * ob["tex_freq"])[..., None]
        col = (1 - v) * np.asarray(st["color_a"]) + v * np.asarray(st["color_b"])
        a = alpha[..., None]
        img[y0:y1, x0:x1] = img[y0:y1, x0:x1] * (1 - a) + col * a
        layer[y0:y1, x0:x1][alpha > 0.5] = ob["trackid"] + 1
    return np.clip(img, 0.0, 1.0).astype(np.float32), layer


def max_displacement(params: dict[str, Any], t: int) -> float:
    """An upper bound (px) of how far any point of frame ``t`` moves over one frame interval around ``t``: the
    camera's pan and zoom, and each object's translation, rotation and scale change."""
    n = params["n_frames"]
    if n < 2:
        return 0.0
    a, b = (t, t + 1) if t + 1 < n else (t - 1, t)
    h, w = params["height"], params["width"]
    (za, exa, eya), (zb, exb, eyb) = params["camera"][a], params["camera"][b]
    d = za * math.hypot(exb - exa, eyb - eya) + abs(zb - za) / za * math.hypot(h, w)
    for ob in params["objects"]:
        (xa, ya, tha, sa), (xb, yb, thb, sb) = ob["frames"][a], ob["frames"][b]
        r = max(ob["rx"], ob["ry"]) * 1.5
        d = max(d, math.hypot(xb - xa, yb - ya) + r * max(sa, sb) * abs(thb - tha) + r * abs(sb - sa))
    return d


def observed_frame(params: dict[str, Any], t: int) -> tuple[np.ndarray, np.ndarray]:
    """Frame t as the camera records it: :func:`render_frame` for a clean video; with a degradation record, the
    mean of the sub-frames of its exposure (motion blur along each layer's own motion), then defocus, flicker and
    noise (:mod:`dff.dataset.degrade`). The layer map is the one at the frame's own time, the mid-exposure
    instant the annotations describe."""
    rec = params.get("degradations")
    if rec is None:
        return render_frame(params, t)
    times = exposure_times(t, rec["shutter"], max_displacement(params, t), rec["subframe_px"], rec["max_subframes"])
    if len(times) == 1:
        img, layer = render_frame(params, t)
    else:
        img = np.mean([render_frame(params, s)[0] for s in times], axis=0)
        layer = layer_map(params, t)
    return apply_sensor(img, rec, t), layer


def layer_map(params: dict[str, Any], t: float) -> np.ndarray:
    """Layer ids of frame t as in :func:`render_frame` (without the colour work)."""
    h, w = params["height"], params["width"]
    xs, ys = _grid(h, w)
    layer = np.zeros((h, w), dtype=np.int32)
    for o in params["depth_order"]:
        ob = params["objects"][o]
        reg = _obj_region(ob, t, h, w)
        if reg is None:
            continue
        x0, x1, y0, y1 = reg
        alpha, _, _ = _coverage(ob, t, xs[y0:y1, x0:x1], ys[y0:y1, x0:x1])
        layer[y0:y1, x0:x1][alpha > 0.5] = ob["trackid"] + 1
    return layer


def frame_annotations(params: dict[str, Any], t: int, layer: np.ndarray | None = None) -> list[dict[str, Any]]:
    """Annotated objects of frame t: ``{trackid, wnid, box (x1,y1,x2,y2) inclusive ints, occluded}``."""
    h, w = params["height"], params["width"]
    layer = layer_map(params, t) if layer is None else layer
    xs, ys = _grid(h, w)
    out = []
    for ob in params["objects"]:
        reg = _obj_region(ob, t, h, w)
        if reg is None:
            continue
        x0, x1, y0, y1 = reg
        alpha, _, _ = _coverage(ob, t, xs[y0:y1, x0:x1], ys[y0:y1, x0:x1])
        full = alpha > 0.5
        area = int(full.sum())
        visible = int((layer[y0:y1, x0:x1] == ob["trackid"] + 1).sum())
        if area < params["min_box_area"] or visible < params["min_visible"]:
            continue
        rows, cols = np.nonzero(full)
        box = (x0 + int(cols.min()), y0 + int(rows.min()), x0 + int(cols.max()), y0 + int(rows.max()))
        out.append({"trackid": ob["trackid"], "wnid": ob["wnid"], "box": box, "occluded": int(visible < 0.7 * area)})
    return out


def gt_flow(params: dict[str, Any], cur: int, key: int) -> np.ndarray:
    """Backward flow (H, W, 2) float32 from frame ``cur`` to frame ``key`` of one video.

    For pixel p = (x, y) of ``cur``, ``p + flow[y, x]`` is the position in ``key`` of the surface point
    seen at p (x: flow[..., 0], y: flow[..., 1]), whether or not it is visible or inside frame ``key``.
    """
    n = params["n_frames"]
    if not (0 <= cur < n and 0 <= key < n):
        raise IndexError(f"gt_flow: frames ({cur}, {key}) outside the video's {n} frames")
    h, w = params["height"], params["width"]
    if cur == key:
        return np.zeros((h, w, 2), dtype=np.float32)
    xs, ys = _grid(h, w)
    layer = layer_map(params, cur)
    # background: u = p / zoom_cur + e_cur, p_key = zoom_key * (u - e_key); written as an offset of p
    zc, exc, eyc = params["camera"][cur]
    zk, exk, eyk = params["camera"][key]
    r = zk / zc
    fx = (r - 1.0) * xs + zk * (exc - exk)
    fy = (r - 1.0) * ys + zk * (eyc - eyk)
    for ob in params["objects"]:
        sel = layer == ob["trackid"] + 1
        if not sel.any():
            continue
        mc, mk = _obj_matrix(ob, cur), _obj_matrix(ob, key)
        # p_key = A_key A_cur^-1 (p - c_cur) + c_key, so flow = (A_key A_cur^-1 - I)(p - c_cur) + c_key - c_cur
        a = mk[:, :2] @ np.linalg.inv(mc[:, :2]) - np.eye(2)
        px, py = xs[sel] - mc[0, 2], ys[sel] - mc[1, 2]
        fx[sel] = a[0, 0] * px + a[0, 1] * py + (mk[0, 2] - mc[0, 2])
        fy[sel] = a[1, 0] * px + a[1, 1] * py + (mk[1, 2] - mc[1, 2])
    return np.stack([fx, fy], axis=-1).astype(np.float32)


# ------------------------------------------------------------------------------------------------
# XML in the real ILSVRC formats
# ------------------------------------------------------------------------------------------------
def vid_xml(folder: str, filename: str, width: int, height: int, objects: Sequence[dict[str, Any]]) -> str:
    """An ILSVRC2015 VID annotation (same element order as the real files: xmax before xmin)."""
    parts = [f"<annotation>\n\t<folder>{folder}</folder>\n\t<filename>{filename}</filename>\n"
             f"\t<source>\n\t\t<database>ILSVRC_2015</database>\n\t</source>\n"
             f"\t<size>\n\t\t<width>{width}</width>\n\t\t<height>{height}</height>\n\t</size>\n"]
    for ob in objects:
        x1, y1, x2, y2 = ob["box"]
        parts.append(f"\t<object>\n\t\t<trackid>{ob['trackid']}</trackid>\n\t\t<name>{ob['wnid']}</name>\n"
                     f"\t\t<bndbox>\n\t\t\t<xmax>{x2}</xmax>\n\t\t\t<xmin>{x1}</xmin>\n\t\t\t<ymax>{y2}</ymax>\n"
                     f"\t\t\t<ymin>{y1}</ymin>\n\t\t</bndbox>\n\t\t<occluded>{ob['occluded']}</occluded>\n"
                     f"\t\t<generated>0</generated>\n\t</object>\n")
    parts.append("</annotation>\n")
    return "".join(parts)


def det_xml(folder: str, filename: str, width: int, height: int, objects: Sequence[dict[str, Any]],
            database: str = "ILSVRC_2014") -> str:
    """An ILSVRC DET annotation (name + bndbox xmin, xmax, ymin, ymax per object)."""
    parts = [f"<annotation>\n\t<folder>{folder}</folder>\n\t<filename>{filename}</filename>\n"
             f"\t<source>\n\t\t<database>{database}</database>\n\t</source>\n"
             f"\t<size>\n\t\t<width>{width}</width>\n\t\t<height>{height}</height>\n\t</size>\n"]
    for ob in objects:
        x1, y1, x2, y2 = ob["box"]
        parts.append(f"\t<object>\n\t\t<name>{ob['wnid']}</name>\n\t\t<bndbox>\n\t\t\t<xmin>{x1}</xmin>\n"
                     f"\t\t\t<xmax>{x2}</xmax>\n\t\t\t<ymin>{y1}</ymin>\n\t\t\t<ymax>{y2}</ymax>\n"
                     f"\t\t</bndbox>\n\t</object>\n")
    parts.append("</annotation>\n")
    return "".join(parts)


# ------------------------------------------------------------------------------------------------
# writing the dataset
# ------------------------------------------------------------------------------------------------
def _write_bytes(path: str, data: bytes) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def _encode_jpeg(img: np.ndarray, quality: int) -> bytes:
    u8 = np.rint(img * 255.0).astype(np.uint8)
    ok, buf = cv2.imencode(".JPEG", cv2.cvtColor(u8, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("cv2.imencode failed")
    return buf.tobytes()


def _observed_jpeg(params: dict[str, Any], t: int, cfg: SynthConfig) -> tuple[bytes, np.ndarray]:
    """Frame ``t`` as the camera records it (:func:`observed_frame`), JPEG-encoded at its quality (a degraded
    frame's own, else ``cfg.jpeg_quality``), and its layer map."""
    img, layer = observed_frame(params, t)
    return _encode_jpeg(img, frame_quality(params.get("degradations"), t, cfg.jpeg_quality)), layer


def video_index(split: str, k: int) -> str:
    """Index (relative to ``Data/VID``) of synthetic video k."""
    if split == "train":
        return f"train/ILSVRC2015_VID_train_{k // 1000:04d}/ILSVRC2015_train_{k:08d}"
    return f"val/ILSVRC2015_val_{k:08d}"


def _write_video(root: str, cfg: SynthConfig, split: str, k: int) -> int:
    params = video_params(cfg, split, k)
    index = video_index(split, k)
    for t in range(params["n_frames"]):
        jpeg, layer = _observed_jpeg(params, t, cfg)
        _write_bytes(os.path.join(root, "Data", "VID", index, f"{t:06d}.JPEG"), jpeg)
        xml = vid_xml(index, f"{t:06d}", params["width"], params["height"], frame_annotations(params, t, layer))
        _write_bytes(os.path.join(root, "Annotations", "VID", index, f"{t:06d}.xml"), xml.encode())
    gt = json.dumps(params, indent=None, separators=(",", ":"), sort_keys=True)
    _write_bytes(os.path.join(root, GT_DIR, "VID", index + ".json"), gt.encode())
    return params["n_frames"]


def _write_det(root: str, cfg: SynthConfig, k: int) -> None:
    params = det_params(cfg, k)
    jpeg, layer = _observed_jpeg(params, 0, cfg)
    anns = frame_annotations(params, 0, layer)
    if k % 2 == 0:
        folder, name, db = f"ILSVRC2014_train_{k // 1000:04d}", f"ILSVRC2014_train_{k:08d}", "ILSVRC_2014"
        index = f"train/{folder}/{name}"
    else:  # a 2013-style class folder, named after its first object's wnid
        wnid = params["objects"][0]["wnid"]
        folder, name, db = wnid, f"{wnid}_{k}", "ILSVRC_2013"
        index = f"train/ILSVRC2013_train/{wnid}/{name}"
    _write_bytes(os.path.join(root, "Data", "DET", index + ".JPEG"), jpeg)
    xml = det_xml(folder, name, params["width"], params["height"], anns, db)
    _write_bytes(os.path.join(root, "Annotations", "DET", index + ".xml"), xml.encode())


_OWNED = ("Data", "Annotations", "ImageSets", GT_DIR, CS_IMAGES, CS_LABELS)


def label_frames(n_frames: int, split: str, every: int = 0) -> list[int]:
    """The annotated frames of a Cityscapes-layout snippet of ``n_frames``: the 20th (the last of a shorter one),
    or for a train snippet with ``every`` > 0 frames ``every - 1``, ``2 * every - 1``, ..."""
    if split == "train" and every > 0:
        return list(range(every - 1, n_frames, every)) or [n_frames - 1]
    return [min(ANNOTATED_FRAME, n_frames - 1)]


def segmentation_label(params: dict[str, Any], layer: np.ndarray, classes: Sequence[str]) -> np.ndarray:
    """A frame's layer map (:func:`render_frame`) as class indices: each object's class (``classes`` in index
    order, 1-based), 0 for the background and for objects outside the class list. (H, W) uint8."""
    index = {c: i + 1 for i, c in enumerate(classes)}
    lut = np.zeros(len(params["objects"]) + 1, dtype=np.uint8)
    for ob in params["objects"]:
        lut[ob["trackid"] + 1] = index.get(ob["wnid"], 0)
    return lut[layer]


def _write_cityscapes_video(root: str, cfg: SynthConfig, split: str, k: int) -> int:
    """Video ``k`` of ``split`` as the snippet ``synth_<k>`` of the Cityscapes layout (PNG frames, after the same
    JPEG round trip as the VID layout's frames so the two layouts' pixels agree)."""
    params = video_params(cfg, split, k)
    city = "synth"
    labelled = set(label_frames(params["n_frames"], split, cfg.seg_train_label_every))
    for t in range(params["n_frames"]):
        jpeg, layer = _observed_jpeg(params, t, cfg)
        jpeg = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
        ok, png = cv2.imencode(".png", jpeg)
        if not ok:
            raise RuntimeError("cv2.imencode failed")
        _write_bytes(os.path.join(root, CS_IMAGES, split, city, cs_frame_name(city, k, t)), png.tobytes())
        if t in labelled:
            ok, lab = cv2.imencode(".png", segmentation_label(params, layer, cfg.classes))
            if not ok:
                raise RuntimeError("cv2.imencode failed")
            _write_bytes(os.path.join(root, CS_LABELS, split, city, cs_label_name(city, k, t)), lab.tobytes())
    gt = json.dumps(params, indent=None, separators=(",", ":"), sort_keys=True)
    _write_bytes(os.path.join(root, GT_DIR, "cityscapes", split, f"{city}_{k:06d}.json"), gt.encode())
    return params["n_frames"]


def _config_record(cfg: SynthConfig) -> dict[str, Any]:
    """``SyntheticGT/config.json``: the config; the degradation keys only when on, so a clean set's file is what
    it was before they existed."""
    rec = {**asdict(cfg), "classes": list(cfg.classes)}
    if cfg.degradations == NONE:
        del rec["degradations"], rec["degraded_fraction"]
    return rec


def generate(root: str, cfg: SynthConfig | None = None, fmt: str = "vid") -> dict[str, int]:
    """Write the synthetic dataset under ``root``; with ``fmt="cocovid"`` also a COCO-video JSON per list
    (``root/<list>.json``, :func:`dff.dataset.convert.vid_to_cocovid`), so either ``dataset.format`` reads it;
    with ``fmt="cityscapes"`` the videos in the Cityscapes layout instead (:mod:`dff.dataset.cityscapes`: PNG
    frames, ``*_labelTrainIds.png`` class maps of the annotated frames, no DET images), for segmentation.

    A previous synthetic dataset in ``root`` (recognised by ``SyntheticGT/config.json``) is replaced;
    any other existing ``Data``/``Annotations``/``ImageSets`` there is an error (never overwrite a real
    download). Returns counts: videos, frames, DET images and lines per ImageSets list.
    """
    cfg = cfg or SynthConfig()
    cfg.validate()
    present = [d for d in _OWNED if os.path.exists(os.path.join(root, d))]
    if present:
        if not os.path.isfile(os.path.join(root, GT_DIR, "config.json")):
            raise FileExistsError(f"{root}: already holds {', '.join(present)} but is not a synthetic dataset; "
                                  "choose an empty or new directory")
        for d in present:
            shutil.rmtree(os.path.join(root, d))
    frames = 0
    if fmt == "cityscapes":
        for split, n in (("train", cfg.train_videos), ("val", cfg.val_videos)):
            for k in range(n):
                frames += _write_cityscapes_video(root, cfg, split, k)
        os.makedirs(root, exist_ok=True)
        write_class_file(root, class_list(cfg))
        with open(os.path.join(root, GT_DIR, "config.json"), "w") as f:
            json.dump({**_config_record(cfg), "format": fmt}, f, sort_keys=True)
        return {"train_videos": cfg.train_videos, "val_videos": cfg.val_videos, "frames": frames}
    for split, n in (("train", cfg.train_videos), ("val", cfg.val_videos)):
        for k in range(n):
            frames += _write_video(root, cfg, split, k)
    for k in range(cfg.det_images):
        _write_det(root, cfg, k)
    lists = [x for x, n in (("VID_train_15frames", cfg.train_videos), ("VID_val_videos", cfg.val_videos),
                            ("VID_val_frames", cfg.val_videos), ("DET_train_30classes", cfg.det_images)) if n]
    os.makedirs(root, exist_ok=True)
    write_class_file(root, class_list(cfg))  # before the lists: the DET list keeps images of these classes
    counts = imagesets.make_imagesets(root, lists, progress=False)
    if fmt == "cocovid":
        vid_to_cocovid(root, root, progress=False, problems=DataProblems(verbose=False))
    elif fmt != "vid":
        raise ValueError(f"format {fmt!r}: choose vid, cocovid or cityscapes")
    with open(os.path.join(root, GT_DIR, "config.json"), "w") as f:
        json.dump(_config_record(cfg), f, sort_keys=True)
    return {"train_videos": cfg.train_videos, "val_videos": cfg.val_videos, "frames": frames,
            "det_images": cfg.det_images, **counts}


def load_video_params(root: str, video: str) -> dict[str, Any]:
    """The ``SyntheticGT`` record of ``video`` (index relative to Data/VID, e.g. ``val/ILSVRC2015_val_00000000``)."""
    path = os.path.join(root, GT_DIR, "VID", video + ".json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no synthetic ground truth for video {video!r} "
                                f"(is {root} a synthetic dataset?)")
    with open(path) as f:
        return json.load(f)


class SyntheticVID:
    """Ground-truth access for a generated dataset: ``SyntheticVID(root).gt_flow(video, cur, key)``."""

    def __init__(self, root: str) -> None:
        self.root = root
        self._cache: dict[str, dict[str, Any]] = {}

    def params(self, video: str) -> dict[str, Any]:
        if video not in self._cache:
            self._cache[video] = load_video_params(self.root, video)
        return self._cache[video]

    def gt_flow(self, video: str, cur: int, key: int) -> np.ndarray:
        """(H, W, 2) backward flow from frame ``cur`` to frame ``key`` (see module :func:`gt_flow`)."""
        return gt_flow(self.params(video), cur, key)

    def render(self, video: str, t: int) -> tuple[np.ndarray, np.ndarray]:
        """The frame before JPEG compression and its layer map (see :func:`render_frame`)."""
        return render_frame(self.params(video), t)
