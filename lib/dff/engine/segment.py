"""The video engine of a segmentation model (``model.task == "seg"``, :mod:`dff.models.deeplab`).

The key-frame loop, the stage runner and the timing are :class:`~dff.engine.video.VideoEngine`'s, so DFF's
key frames, warp x scale and the asynchronous key worker work as for a detector. The task network is the
model's 1x1 score convolution at the feature's resolution (``head``); the post-processing upsamples the scores
bilinearly to the original frame and takes the arg-max class of each pixel (``post``), the paper's N_task and
its output. Each :class:`~dff.engine.video.FrameResult` carries the label map in ``labels`` and no detections.
"""
from __future__ import annotations

import time
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from dff.engine.frames import Frame
from dff.engine.video import STAGES, FrameResult, VideoEngine
from dff.models.deeplab import upsample
from dff.temporal import StepInfo

__all__ = ["VideoSegmenter", "class_fractions", "label_map"]


def label_map(scores: Tensor, size: tuple[int, int]) -> np.ndarray:
    """Score maps (1, K, h, w) -> (H, W) uint8 arg-max class of each pixel at ``size`` (H, W). The scores are
    upsampled before the arg-max (not the labels), as the network's bilinear upsampling layer; the soft-max is
    left out because it does not change the arg-max."""
    return upsample(scores, size)[0].argmax(0).to(torch.uint8).cpu().numpy()


def class_fractions(labels: np.ndarray, class_names: Sequence[str], digits: int = 5) -> dict[str, float]:
    """The pixel fraction of each class present in ``labels`` (class indices, the background included), by class
    name (an index past ``class_names``, e.g. an ignore label, by its number), in class order, rounded to
    ``digits``: the JSON lines' ``class_fractions`` (they sum to 1)."""
    labels = np.asarray(labels).astype(np.int64, copy=False)
    counts = np.bincount(labels.ravel(), minlength=len(class_names))
    total = max(int(labels.size), 1)
    return {(str(class_names[c]) if c < len(class_names) else str(c)): round(int(counts[c]) / total, digits)
            for c in np.flatnonzero(counts).tolist()}


class VideoSegmenter(VideoEngine):
    """Segment every frame of one video (:class:`~dff.engine.video.VideoEngine`'s arguments; ``thresh`` unused)."""

    def _head(self, feat: Tensor, im_info_dev: Tensor, rois: Tensor | None, times: dict, t1: float) -> dict:
        if rois is not None:
            raise ValueError("rois= is a detector's option; a segmentation model has no proposals")
        out = {"seg_score": self.runner.task_maps(feat)["seg_score"], "im_info": im_info_dev}
        times["head"] = self._tick() - t1
        return out

    @staticmethod
    def original_size(im_info: Tensor) -> tuple[int, int]:
        """The original frame's (H, W) from ``im_info`` [H, W, scale] of the resized one."""
        h, w, scale = (float(v) for v in im_info.reshape(-1)[:3])
        return int(round(h / scale)), int(round(w / scale))

    def postprocess(self, out: dict, im_info: Tensor, size: tuple[int, int] | None = None) -> np.ndarray:
        """Network outputs -> (H, W) uint8 class indices of the original frame (``size``, default from ``im_info``)."""
        return label_map(out["seg_score"], size or self.original_size(im_info))

    def run(self, frames: Iterable[Frame]) -> Iterator[FrameResult]:
        """Segment every frame of one video, in order. ``frames`` may carry prepared inputs."""
        self.reset()
        for frame in frames:
            data, im_info = frame.prepared if frame.prepared is not None else self.prepare(frame.image)
            out, _, times = self.step(data, im_info, index=frame.index)
            t = time.perf_counter()
            size = tuple(frame.image.shape[:2]) if frame.image is not None else None
            labels = self.postprocess(out, im_info, size)
            times["post"] = time.perf_counter() - t
            yield self._result(frame, labels, times, self._last)

    def _result(self, frame: Frame, labels: np.ndarray, times: dict, info: StepInfo) -> FrameResult:
        times["total"] = sum(times[s] for s in STAGES)
        return FrameResult(frame.index, frame.name, info.is_key, [], times,
                           frame.image if self.keep_images else None, info.updated_fraction, info.update_mask,
                           info.key_index, info.age, False, None, 0.0, labels)
