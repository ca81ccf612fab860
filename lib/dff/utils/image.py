"""Image reading and preprocessing exactly as the reference (``lib/utils/image.py``).

A frame is read by OpenCV as BGR uint8, resized so that its short side is ``SCALES[0][0]`` unless the
long side would then exceed ``SCALES[0][1]`` (bilinear, ``fx = fy = scale``), turned into RGB and
mean-subtracted (no division by a standard deviation). ``im_info = [H_scaled, W_scaled, scale]``.
"""
from __future__ import annotations

import os
from typing import Sequence

import cv2
import numpy as np
import torch


class ImageReadError(IOError):
    """An image file is missing or cannot be decoded; the message names the file."""


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read ``path`` as an (H, W, 3) BGR uint8 array, EXIF orientation ignored (as the reference)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ImageReadError(f"{path}: image file not found")
    im = cv2.imread(path, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if im is None or im.size == 0:
        raise ImageReadError(f"{path}: cannot decode image (corrupt or not an image)")
    return im


def compute_scale(height: int, width: int, target_size: int, max_size: int) -> float:
    """The reference's scale rule: short side to ``target_size`` unless the long side exceeds ``max_size``."""
    size_min, size_max = min(height, width), max(height, width)
    scale = float(target_size) / float(size_min)
    if np.round(scale * size_max) > max_size:
        scale = float(max_size) / float(size_max)
    return scale


def resize(im: np.ndarray, target_size: int, max_size: int, stride: int = 0,
           interpolation: int = cv2.INTER_LINEAR) -> tuple[np.ndarray, float]:
    """Resize an (H, W, 3) image by the reference's rule. Returns (resized image, scale).

    ``stride > 0`` zero-pads the bottom/right to a multiple of ``stride`` (the reference's
    ``IMAGE_STRIDE``; 0 in every shipped config).
    """
    scale = compute_scale(im.shape[0], im.shape[1], target_size, max_size)
    im = cv2.resize(im, None, None, fx=scale, fy=scale, interpolation=interpolation)
    if stride > 0:
        h = int(np.ceil(im.shape[0] / float(stride)) * stride)
        w = int(np.ceil(im.shape[1] / float(stride)) * stride)
        padded = np.zeros((h, w, im.shape[2]), dtype=im.dtype)
        padded[: im.shape[0], : im.shape[1]] = im
        im = padded
    return im, scale


def transform(im_bgr: np.ndarray, pixel_means_bgr: Sequence[float]) -> np.ndarray:
    """(H, W, 3) BGR -> (1, 3, H, W) float32 RGB minus the per-channel means.

    The subtraction happens in float64 and is cast once, as the reference's numpy array was
    converted by ``mx.nd.array``; that keeps the result bit-identical to the fixtures.
    """
    means = np.asarray(pixel_means_bgr, dtype=np.float64)
    rgb = im_bgr[:, :, ::-1].astype(np.float64) - means[::-1]
    return np.ascontiguousarray(rgb.transpose(2, 0, 1)[None]).astype(np.float32)


def preprocess(im_bgr: np.ndarray, scales: Sequence[int], pixel_means_bgr: Sequence[float],
               stride: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """One frame -> (data (1, 3, H', W') float32, im_info (1, 3) float32 ``[H', W', scale]``)."""
    target_size, max_size = int(scales[0]), int(scales[1])
    resized, scale = resize(im_bgr, target_size, max_size, stride)
    data = torch.from_numpy(transform(resized, pixel_means_bgr))
    im_info = torch.tensor([[resized.shape[0], resized.shape[1], scale]], dtype=torch.float32)
    return data, im_info
