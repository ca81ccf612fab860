"""The video inference engine: key frames every ``KEY_FRAME_INTERVAL`` frames, warped features between.

One engine serves both models. With an :class:`~dff.models.rfcn.RFCN` (or a key interval of 1) every
frame is a key frame, which is the per-frame baseline; with a DFF model, frame ``i`` of a video is a
key frame when ``i % interval == 0`` (counting from the video's start, as the reference) or when the
frame size changes. Only the current key frame's input and feature are cached, so memory is constant
over any video length.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Iterable, Iterator

import numpy as np
import torch
from torch import Tensor

from dff.config import Config
from dff.engine.fastpath import FastPath, StageRunner
from dff.engine.frames import Frame
from dff.engine.postprocess import im_detect_boxes, pred_eval_fixed, rows_to_dets
from dff.utils.image import preprocess

STAGES = ("feature", "flow", "warp", "head", "post")


def key_frame_interval(cfg: Config, key_interval: int | None, has_flow: bool) -> int:
    """The engine's key interval: ``key_interval`` or ``TEST.KEY_FRAME_INTERVAL``; 1 for a model without flow."""
    interval = int(key_interval if key_interval is not None else cfg.TEST.KEY_FRAME_INTERVAL)
    if interval < 1:
        raise ValueError(f"key frame interval must be >= 1, got {interval}")
    return interval if has_flow else 1


@dataclasses.dataclass
class FrameResult:
    index: int
    name: str
    is_key: bool
    detections: list  # per class (index 0 = background, empty): (k, 5) [x1, y1, x2, y2, score], original pixels
    times: dict  # seconds per stage (``STAGES``) and ``total`` (network + post, without decoding)
    image: np.ndarray | None = None  # the original BGR frame when the engine keeps images


class VideoDetector:
    """Run a detector over the frames of one video.

    Args:
        model: an ``RFCN`` or a ``DFF`` (anything with ``extract_feature``/``detect``; DFF adds
            ``propagate``), in eval mode, on ``device``.
        cfg: the config (scales, pixel means, NMS, ``TEST.KEY_FRAME_INTERVAL``).
        key_interval: overrides ``cfg.TEST.KEY_FRAME_INTERVAL``; forced to 1 for a model without FlowNet.
        thresh: score threshold of the post-processing (the reference: 1e-4 DFF, 1e-3 R-FCN).
        sync: synchronise the device between stages so the per-stage split is exact (costs a little
            on GPU; off gives the true pipelined speed).
        keep_images: attach the original frame to each result (for drawing).
        fast: the GPU fast path (:class:`~dff.engine.fastpath.FastPath`: autocast, channels_last, CUDA
            graphs); None runs the plain float32 model. ``FastPath.full(device)`` turns on all that applies.

    The detections' post-processing is :func:`dff.engine.postprocess.pred_eval_fixed` on every device:
    one fixed-size NMS over all (roi, class) pairs, the same detections as the reference's per-class
    loop (:func:`dff.engine.postprocess.pred_eval_frame`, the oracle the tests compare it with).

    On CUDA with the compiled kernels nothing in a frame waits for the GPU: the task
    network (proposal NMS included) and the post-processing are fixed-shape stages (CUDA graphs with
    the fast path), the detections are copied to pinned host memory asynchronously, and :meth:`run`
    hands out frame ``i`` after it has queued frame ``i + 1``, so the CPU prepares the next frame while
    the GPU works.
    """

    def __init__(self, model: torch.nn.Module, cfg: Config, key_interval: int | None = None,
                 device: str | torch.device = "cpu", thresh: float = 1e-4, sync: bool = True,
                 keep_images: bool = False, fast: FastPath | None = None) -> None:
        self.model = model
        self.cfg = cfg
        self.thresh = thresh
        self.runner = StageRunner(model, fast, post=self._post_fixed)
        self.device = torch.device(device)
        self.has_flow = model.kind == "dff"
        self.key_interval = key_frame_interval(cfg, key_interval, self.has_flow)
        self.sync = sync
        self.keep_images = keep_images
        self.reset()

    def reset(self) -> None:
        """Forget the cached key frame (call between videos)."""
        self._key_data: Tensor | None = None
        self._key_feat: Tensor | None = None
        self._since_key = 0
        self._host_buffers: dict[tuple, list[tuple[Tensor, Tensor]]] = {}
        self._flip = 0

    # preprocessing runs in the decode workers -----------------------------------------------------
    def prepare(self, image: np.ndarray) -> tuple[Tensor, Tensor]:
        """BGR frame -> (data (1, 3, H, W), im_info (1, 3)) on the CPU (pinned when the device is CUDA)."""
        data, im_info = preprocess(image, self.cfg.SCALES[0], self.cfg.network.PIXEL_MEANS,
                                   int(self.cfg.network.IMAGE_STRIDE))
        if self.device.type == "cuda":
            data, im_info = data.pin_memory(), im_info.pin_memory()
        return data, im_info

    def _tick(self) -> float:
        if self.sync and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    @torch.inference_mode()
    def step(self, data: Tensor, im_info: Tensor, rois: Tensor | None = None) -> tuple[dict, bool, dict]:
        """One frame through the network. Returns (network outputs, is_key, stage times).

        ``rois`` (R, 5), if given, replace the proposals (to compare two runs on the same rois); the
        task network then runs as ``maps`` and the rest eagerly."""
        data = data.to(self.device, non_blocking=True)
        im_info_dev = im_info.to(self.device, non_blocking=True)
        times = dict.fromkeys(STAGES, 0.0)
        t0 = self._tick()
        is_key = (
            self._key_feat is None
            or self._since_key >= self.key_interval
            or self._key_data.shape != data.shape  # a size change resets the cache
        )
        if is_key:
            feat = self.runner.feature(data)
            t1 = self._tick()
            times["feature"] = t1 - t0
            if self.has_flow and self.key_interval > 1:
                self._key_data, self._key_feat = data, feat
            else:
                self._key_data, self._key_feat = data, torch.empty(0)  # nothing to warp from: no cache
            self._since_key = 1
        else:
            flow, scale = self.runner.flow(data, self._key_data)
            tf = self._tick()
            feat = self.runner.warp(self._key_feat, flow, scale)
            t1 = self._tick()
            times["flow"], times["warp"] = tf - t0, t1 - tf
            self._since_key += 1
        if rois is not None:
            out = self.model.head_rois(self.runner.maps(feat, im_info_dev), im_info_dev, rois=rois.to(self.device))
        elif self.runner.sync_free:
            out = dict(self.runner.head(feat, im_info_dev))
        else:  # the NMS synchronises anyway: only the fixed-shape part as one stage
            out = self.model.head_rois(self.runner.maps(feat, im_info_dev), im_info_dev)
        out["im_info"] = im_info_dev
        times["head"] = self._tick() - t1
        return out, is_key, times

    def _post_fixed(self, rois: Tensor, cls_prob: Tensor, bbox_pred: Tensor, im_info: Tensor) -> tuple[Tensor, Tensor]:
        """The post-processing (a fast-path stage): head outputs -> (rows (M, 6), count (1,))."""
        scores, boxes = im_detect_boxes(rois, cls_prob[0], bbox_pred[0], im_info)
        return pred_eval_fixed(scores, boxes, self.thresh, float(self.cfg.TEST.NMS), int(self.cfg.TEST.max_per_image),
                               class_agnostic=bool(self.cfg.CLASS_AGNOSTIC))

    def _fixed_rows(self, out: dict, im_info: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The post stage on :meth:`step`'s outputs (their device ``im_info``, else ``im_info`` moved there)."""
        info = out.get("im_info")
        if info is None:
            info = im_info.to(out["rois"].device)
        return self.runner.post(out["rois"], out["cls_prob"], out["bbox_pred"], info)

    def _post_async(self, out: dict) -> tuple:
        """Queue the post-processing of ``out`` and the copy of its rows to pinned host memory;
        returns a ticket for :meth:`_post_wait`. Two buffers per shape alternate: :meth:`run` waits for
        frame ``i`` before it queues frame ``i + 2``."""
        rows, count = self._fixed_rows(out)
        key = (tuple(rows.shape), rows.dtype)
        buffers = self._host_buffers.get(key)
        if buffers is None:
            buffers = self._host_buffers[key] = [
                (torch.empty(rows.shape, dtype=rows.dtype, pin_memory=True),
                 torch.empty(count.shape, dtype=count.dtype, pin_memory=True)) for _ in range(2)]
        self._flip ^= 1
        rows_host, count_host = buffers[self._flip]
        rows_host.copy_(rows, non_blocking=True)
        count_host.copy_(count, non_blocking=True)
        done = torch.cuda.Event()
        done.record()
        return rows_host, count_host, done, out["cls_prob"].shape[-1]

    @staticmethod
    def _post_wait(ticket: tuple) -> list[np.ndarray]:
        rows_host, count_host, done, num_classes = ticket
        done.synchronize()
        return rows_to_dets(rows_host[:int(count_host[0])], num_classes)  # rows_to_dets copies out of the buffer

    def postprocess(self, out: dict, im_info: Tensor) -> list[np.ndarray]:
        """Network outputs -> per-class (k, 5) ``[x1, y1, x2, y2, score]`` arrays (index 0 empty), original
        pixels; one device-to-host copy per frame (synchronous: :meth:`run` overlaps it on CUDA)."""
        rows, count = self._fixed_rows(out, im_info)
        return rows_to_dets(rows[:int(count)], out["cls_prob"].shape[-1])

    def run(self, frames: Iterable[Frame]) -> Iterator[FrameResult]:
        """Detect on every frame of one video, in order. ``frames`` may carry prepared inputs."""
        self.reset()
        pipelined = self.device.type == "cuda" and self.runner.sync_free
        pending = None  # pipelined: the previous frame, its detections still on their way
        for frame in frames:
            data, im_info = frame.prepared if frame.prepared is not None else self.prepare(frame.image)
            out, is_key, times = self.step(data, im_info)
            t = time.perf_counter()
            if not pipelined:
                dets = self.postprocess(out, im_info)
                times["post"] = time.perf_counter() - t
                yield self._result(frame, is_key, dets, times)
                continue
            ticket = self._post_async(out)
            times["post"] = time.perf_counter() - t
            if pending is not None:
                yield self._finish(*pending)
            pending = (frame, is_key, ticket, times)
        if pending is not None:
            yield self._finish(*pending)

    def _finish(self, frame: Frame, is_key: bool, ticket: tuple, times: dict) -> FrameResult:
        t = time.perf_counter()
        dets = self._post_wait(ticket)
        times["post"] += time.perf_counter() - t  # queueing it, then waiting for it
        return self._result(frame, is_key, dets, times)

    def _result(self, frame: Frame, is_key: bool, dets: list, times: dict) -> FrameResult:
        times["total"] = sum(times[s] for s in STAGES)
        return FrameResult(frame.index, frame.name, is_key, dets, times, frame.image if self.keep_images else None)
