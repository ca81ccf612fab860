"""Degradations of real video for the synthetic generator (``make_synthetic_vid.py --degradations vid``).

FGFA and THP explain the gain of temporal aggregation by the frames a per-frame detector gets wrong: motion blur,
defocus, noise. A preset (:data:`PRESETS`) says how strongly each appears; :func:`draw_degradations` draws one
video's (or DET image's) record from its own random stream, so the scene, the annotations and the ground-truth flow
are those of the clean set with the same seed. The record goes into the video's ``SyntheticGT`` JSON, so every
frame's degradation can be looked up when results are broken down.

* **Motion blur** is rendered, not filtered: the generator averages sub-frames at times inside the shutter interval
  ``t +- shutter / 2`` (:func:`exposure_times`), with the same scene model, so each layer blurs along its own
  motion and a static layer stays sharp. The sub-frame count follows the fastest layer's displacement during the
  exposure (``subframe_px`` apart at most).
* **Defocus episodes**: a few frames of Gaussian blur that grows and fades (a half sine over the episode).
* **Sensor noise** (Gaussian, one level per video), **brightness flicker** (a gain per frame) and a JPEG quality
  that varies per frame.

docs/design.md §13 lists every parameter, its default and how the preset was calibrated.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

__all__ = ["Degradations", "PRESETS", "NONE", "draw_degradations", "exposure_times", "apply_sensor", "frame_quality"]

NONE = "none"


@dataclass(frozen=True)
class Degradations:
    """One preset. Ranges are ``(low, high)`` of a uniform draw."""
    shutter: tuple[float, float] = (0.5, 1.0)          # exposure, fraction of the frame interval (one per video)
    subframe_px: float = 0.5                           # most displacement between two sub-frames of an exposure
    max_subframes: int = 16
    defocus_per_frame: float = 1 / 8                   # expected episodes per frame (Poisson)
    defocus_frames: tuple[int, int] = (5, 12)          # episode length
    defocus_sigma: tuple[float, float] = (2.0, 5.0)    # peak Gaussian sigma, px
    still_defocus_p: float = 0.3                       # a DET image's chance of being out of focus
    noise_sigma: tuple[float, float] = (0.02, 0.08)    # std of Gaussian noise, image in [0, 1] (one per video)
    flicker: float = 0.08                              # std of the per-frame brightness gain around 1
    jpeg_quality: tuple[int, int] = (20, 80)           # per frame


PRESETS: dict[str, Degradations] = {"vid": Degradations()}


def draw_degradations(rng: np.random.Generator, n_frames: int, preset: str) -> dict[str, Any]:
    """The degradation record of a video of ``n_frames`` (1: a still image, no motion blur and at most one defocused
    frame): ``{"preset", "shutter", "defocus_sigma": [per frame], "noise_sigma", "gain": [per frame],
    "jpeg_quality": [per frame], "seed"}``; JSON-serialisable."""
    p = PRESETS[preset]
    if n_frames > 1:
        sigma = np.zeros(n_frames)
        for _ in range(int(rng.poisson(p.defocus_per_frame * n_frames))):
            length = int(rng.integers(p.defocus_frames[0], p.defocus_frames[1] + 1))
            start = int(rng.integers(-length + 1, n_frames))
            peak = float(rng.uniform(*p.defocus_sigma))
            for t in range(max(start, 0), min(start + length, n_frames)):
                sigma[t] = max(sigma[t], peak * math.sin(math.pi * (t - start + 0.5) / length))
        shutter = float(rng.uniform(*p.shutter))
    else:
        sigma = np.array([float(rng.uniform(*p.defocus_sigma)) if rng.random() < p.still_defocus_p else 0.0])
        shutter = 0.0
    return {
        "preset": preset, "shutter": shutter, "subframe_px": p.subframe_px, "max_subframes": p.max_subframes,
        "defocus_sigma": [round(float(s), 4) for s in sigma],
        "noise_sigma": float(rng.uniform(*p.noise_sigma)),
        "gain": [float(g) for g in 1.0 + p.flicker * rng.standard_normal(n_frames)],
        "jpeg_quality": [int(q) for q in rng.integers(p.jpeg_quality[0], p.jpeg_quality[1] + 1, size=n_frames)],
        "seed": int(rng.integers(2 ** 31)),
    }


def exposure_times(t: int, shutter: float, displacement_px: float, subframe_px: float, max_subframes: int) -> list[float]:
    """The sub-frame times of frame ``t``'s exposure, centred on ``t`` (the annotated instant): one time when the
    fastest layer moves less than ``subframe_px`` during the exposure, else evenly spaced over ``t +- shutter/2``."""
    n = min(max_subframes, max(1, math.ceil(shutter * displacement_px / subframe_px)))
    if n == 1:
        return [float(t)]
    return [t + shutter * (i / (n - 1) - 0.5) for i in range(n)]


def apply_sensor(img: np.ndarray, record: dict[str, Any], t: int) -> np.ndarray:
    """Defocus, flicker and noise of frame ``t`` on an (H, W, 3) float image in [0, 1] (the exposure); the noise is
    drawn from the record's seed and ``t``, so a frame renders the same alone or in its video."""
    out = img.astype(np.float32)
    sigma = float(record["defocus_sigma"][t])
    if sigma > 0.3:
        out = cv2.GaussianBlur(out, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT_101)
    out = out * float(record["gain"][t])
    rng = np.random.default_rng([int(record["seed"]), t])
    out = out + rng.standard_normal(out.shape).astype(np.float32) * float(record["noise_sigma"])
    return np.clip(out, 0.0, 1.0)


def frame_quality(record: dict[str, Any] | None, t: int, default: int) -> int:
    """Frame ``t``'s JPEG quality: the record's, or ``default`` for a clean frame."""
    return default if record is None else int(record["jpeg_quality"][t])

