"""The video inference engine: the model's temporal scheme decides the key frames, the task network runs on every frame.

One engine serves every model and backend. The scheme (:mod:`dff.temporal`, the model's ``scheme``) gives the
key-frame loop: per-frame for an R-FCN (or a key interval of 1), DFF's fixed key interval (frame ``i`` of a
video is a key frame when ``i % interval == 0``, counting from the video's start as the reference, or when
the frame size changes), and THP's and the mobile paper's options (adaptive key frames, partial update,
key-frame aggregation; ``TEST`` keys, docs/design.md §9-10). Only one reference frame's input and feature
are cached, so memory is constant over any video length. The stages run on a stage runner: PyTorch's
(:class:`~dff.engine.fastpath.StageRunner`) or onnxruntime's (``dff.deploy.runtime``).
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import time
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from dff.config import Config, update_config
from dff.engine.fastpath import FastPath, StageRunner
from dff.engine.frames import Frame
from dff.engine.postprocess import im_detect_boxes, pred_eval_fixed, rows_to_dets
from dff.temporal import OPTIONS_OFF, SCHEDULES, STAGES, KeyFrameLoop, StepInfo, TemporalScheme
from dff.temporal.async_keys import AsyncKeyFrameLoop, KeyWorker
from dff.temporal.base import Stages
from dff.utils.image import preprocess

__all__ = ["STAGES", "FrameResult", "VideoEngine", "VideoDetector", "box_quality", "per_frame_config", "schedule_overrides"]


def per_frame_config(cfg: Config) -> Config:
    """A copy of ``cfg`` with THP's options off: a per-frame baseline at key interval 1 must not schedule
    adaptively or aggregate."""
    base = copy.deepcopy(cfg)
    update_config(base, {"TEST": OPTIONS_OFF}, source="the per-frame baseline")
    return base


def schedule_overrides(schedule: str | None) -> list[str]:
    """``--schedule fixed|adaptive`` as the ``--set`` item it stands for (none when not given)."""
    if schedule is None:
        return []
    if schedule not in SCHEDULES:
        raise ValueError(f"--schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
    return [f"TEST.KEY_FRAME_SCHEDULE={schedule}"]


@dataclasses.dataclass
class FrameResult:
    index: int
    name: str
    is_key: bool
    detections: list  # per class (index 0 = background, empty): (k, 5) [x1, y1, x2, y2, score], original pixels
    times: dict  # seconds per stage (``STAGES``) and ``total`` (network + post, without decoding)
    image: np.ndarray | None = None  # the original BGR frame when the engine keeps images
    updated_fraction: float = 0.0  # THP: the fraction of feature cells recomputed on this (non-key) frame
    update_mask: np.ndarray | None = None  # THP, with keep_images: those cells, (h, w) bool
    key_index: int = 0  # the index of the key frame whose feature this frame's came from (its own on a key frame)
    age: int = 0  # frames since that key frame (index - key_index; 0 on a key frame)
    has_q: bool = False  # the model predicts THP's Q: the boxes have a quality
    q_map: np.ndarray | None = None  # Q of this non-key frame against its key frame, (h, w) float32 feature cells
    cells_per_pixel: float = 0.0  # feature cells per original-frame pixel (im_scale / stride)
    labels: np.ndarray | None = None  # segmentation: (H, W) uint8 class indices in original pixels (detections empty)

    def quality(self, box: Sequence[float]) -> float | None:
        """The mean Q inside ``box`` ([x1, y1, x2, y2], original pixels): how well the key frame's feature
        carries over there (1 on a key frame, whose feature is its own); None for a model without Q."""
        if not self.has_q:
            return None
        if self.q_map is None:
            return 1.0
        return box_quality(self.q_map, box, self.cells_per_pixel)


def box_quality(q_map: np.ndarray, box: Sequence[float], cells_per_pixel: float) -> float:
    """The mean of ``q_map`` (h, w) over the feature cells that ``box`` ([x1, y1, x2, y2], inclusive pixels)
    overlaps; a box outside the map takes its nearest cells."""
    h, w = q_map.shape
    x1, y1, x2, y2 = (float(v) * cells_per_pixel for v in box[:4])
    c1 = min(max(int(np.floor(x1)), 0), w - 1)
    r1 = min(max(int(np.floor(y1)), 0), h - 1)
    c2 = min(max(int(np.floor(x2)), c1), w - 1)
    r2 = min(max(int(np.floor(y2)), r1), h - 1)
    return float(q_map[r1:r2 + 1, c1:c2 + 1].mean())


class VideoEngine:
    """What every task's video engine shares: the model's key-frame loop on a stage runner, the frame
    preparation, the timing and :meth:`step`. A task's engine (:class:`VideoDetector`, and
    :class:`dff.engine.segment.VideoSegmenter`) adds its task network (``_head``), its post-processing and
    :meth:`run`; :func:`video_engine` picks it by the model's ``task``. The arguments are
    :class:`VideoDetector`'s (``thresh`` is the detectors' score threshold).
    """

    # the post-processing the stage runner holds as its ``post`` stage (a detector's NMS); none by default
    post_function: Callable[..., tuple[Tensor, Tensor]] | None = None

    def __init__(self, model: torch.nn.Module | None, cfg: Config, key_interval: int | None = None,
                 device: str | torch.device = "cpu", thresh: float = 1e-4, sync: bool = True,
                 keep_images: bool = False, fast: FastPath | None = None, *,
                 stages: Callable[..., Stages] | None = None, scheme: TemporalScheme | None = None,
                 keys: KeyWorker | None = None) -> None:
        self.model = model
        self.cfg = cfg
        self.thresh = thresh
        self.device = torch.device(device)
        self.sync = sync
        self.keep_images = keep_images
        if keys is not None and fast is not None and fast.cuda_graphs:
            # a graph's outputs are static buffers: the key worker and the non-key path would share them
            fast = dataclasses.replace(fast, cuda_graphs=False)
        make_stages = stages if stages is not None else functools.partial(StageRunner, model, fast)
        self.runner = make_stages(post=self.post_function)
        self.scheme = scheme if scheme is not None else model.scheme
        loop_args = {} if keys is None else {"loop_class": AsyncKeyFrameLoop, "keys": keys}
        self.loop: KeyFrameLoop = self.scheme.loop(self.runner, cfg, key_interval, clock=self._tick,
                                                   keep_masks=keep_images, **loop_args)
        self.keys = keys
        self.reset()

    def close(self) -> None:
        """Stop the key worker (asynchronous key frames); the detector is not used after this."""
        if self.keys is not None:
            self.keys.close()

    @property
    def has_flow(self) -> bool:
        return self.scheme.uses_flow

    @property
    def key_interval(self) -> int:
        """The fixed schedule's key interval (1: every frame a key frame)."""
        return self.loop.interval

    def describe_schedule(self) -> dict | None:
        """THP's options in use (what result caches and reports record), or None for plain DFF / per-frame."""
        return self.loop.describe()

    def reset(self) -> None:
        """Forget the cached key frame (call between videos)."""
        self.loop.reset()
        self._last = StepInfo(False)

    # preprocessing runs in the decode workers -----------------------------------------------------
    def prepare(self, image: np.ndarray) -> tuple[Tensor, Tensor]:
        """BGR frame -> (data (1, 3, H, W), im_info (1, 3)) on the CPU (pinned when the device is CUDA)."""
        data, im_info = preprocess(image, self.cfg.SCALES[0], self.cfg.network.PIXEL_MEANS,
                                   int(self.cfg.network.IMAGE_STRIDE))
        if self.device.type == "cuda":
            data, im_info = data.pin_memory(), im_info.pin_memory()
        return data, im_info

    @property
    def last_step(self) -> StepInfo:
        """What the last :meth:`step` did (key frame or not, its key frame's index, ...)."""
        return self._last

    @property
    def last_update_fraction(self) -> float:
        """The fraction of feature cells the last :meth:`step` recomputed (THP's partial update; 0 on key frames)."""
        return self._last.updated_fraction

    def _tick(self) -> float:
        if self.sync and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    @torch.inference_mode()
    def step(self, data: Tensor, im_info: Tensor, rois: Tensor | None = None,
             index: int | None = None) -> tuple[dict, bool, dict]:
        """One frame through the network. Returns (network outputs, is_key, stage times).

        ``rois`` (R, 5), if given, replace the proposals (to compare two runs on the same rois); the
        task network then runs as ``maps`` and the rest eagerly. ``index``: the frame's index in the video
        (the key frames' ``age`` counts in it; default: the frames stepped since :meth:`reset`)."""
        data = data.to(self.device, non_blocking=True)
        im_info_dev = im_info.to(self.device, non_blocking=True)
        times = dict.fromkeys(STAGES, 0.0)
        feat, self._last = self.loop.step(data, times, index)
        return self._head(feat, im_info_dev, rois, times, self._tick()), self._last.is_key, times

    def _head(self, feat: Tensor, im_info_dev: Tensor, rois: Tensor | None, times: dict, t1: float) -> dict:
        raise NotImplementedError


class VideoDetector(VideoEngine):
    """Run a detector over the frames of one video.

    Args:
        model: a detector (``dff.models``: an ``RFCN`` or a ``DFF``), in eval mode, on ``device``; None with
            ``stages`` and ``scheme`` (another backend's network).
        cfg: the config (scales, pixel means, NMS, ``TEST.KEY_FRAME_INTERVAL`` and the scheme's ``TEST`` options).
        key_interval: overrides ``cfg.TEST.KEY_FRAME_INTERVAL``; forced to 1 for a model without a flow network.
        thresh: score threshold of the post-processing (the reference: 1e-4 DFF, 1e-3 R-FCN).
        sync: synchronise the device between stages so the per-stage split is exact (costs a little
            on GPU; off gives the true pipelined speed).
        keep_images: attach the original frame to each result (for drawing).
        fast: the GPU fast path (:class:`~dff.engine.fastpath.FastPath`: autocast, channels_last, CUDA
            graphs); None runs the plain float32 model. ``FastPath.full(device)`` turns on all that applies.
        stages, scheme: another backend's stage runner, as a factory called with ``post=`` this detector's
            post-processing (:meth:`post_function`; ``dff.deploy.runtime``), and the temporal scheme it runs; by
            default the model's :class:`~dff.engine.fastpath.StageRunner` and ``model.scheme``.
        keys: a key worker (:mod:`dff.temporal.async_keys`): key frames are computed asynchronously while the
            frames are served from the newest key that has landed; None: synchronous key frames.

    The detections' post-processing is :func:`dff.engine.postprocess.pred_eval_fixed` on every device:
    one fixed-size NMS over all (roi, class) pairs, the same detections as the reference's per-class
    loop (:func:`dff.engine.postprocess.pred_eval_frame`, the oracle the tests compare it with).

    On CUDA with the compiled kernels nothing in a frame waits for the GPU: the task
    network (proposal NMS included) and the post-processing are fixed-shape stages (CUDA graphs with
    the fast path), the detections are copied to pinned host memory asynchronously, and :meth:`run`
    hands out frame ``i`` after it has queued frame ``i + 1``, so the CPU prepares the next frame while
    the GPU works.
    """

    def _head(self, feat: Tensor, im_info_dev: Tensor, rois: Tensor | None, times: dict, t1: float) -> dict:
        """The task network on the frame's feature; ``times["head"]`` from ``t1``."""
        if self.model is None:  # another backend: its head stage, its own proposals
            if rois is not None:
                raise ValueError("rois= is a PyTorch-engine option: this backend computes its own proposals")
            out = dict(self.runner.head(feat, im_info_dev))
        elif rois is not None:
            out = self.model.head_rois(self.runner.maps(feat, im_info_dev), im_info_dev, rois=rois.to(self.device))
        elif self.runner.sync_free:
            out = dict(self.runner.head(feat, im_info_dev))
        else:  # the NMS synchronises anyway: only the fixed-shape part as one stage
            out = self.model.head_rois(self.runner.maps(feat, im_info_dev), im_info_dev)
        out["im_info"] = im_info_dev
        times["head"] = self._tick() - t1
        return out

    def reset(self) -> None:
        """Forget the cached key frame and the pipelined post-processing's host buffers (call between videos)."""
        super().reset()
        self._host_buffers: dict[tuple, list[tuple[Tensor, Tensor]]] = {}
        self._flip = 0

    def post_function(self, rois: Tensor, cls_prob: Tensor, bbox_pred: Tensor, im_info: Tensor) -> tuple[Tensor, Tensor]:
        """The post-processing (a stage of the runner): head outputs -> (rows (M, 6), count (1,))."""
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
            out, is_key, times = self.step(data, im_info, index=frame.index)
            t = time.perf_counter()
            if not pipelined:
                dets = self.postprocess(out, im_info)
                times["post"] = time.perf_counter() - t
                yield self._result(frame, dets, times, self._last, im_info, data.shape[-1])
                continue
            ticket = self._post_async(out)
            times["post"] = time.perf_counter() - t
            if pending is not None:
                yield self._finish(*pending)
            pending = (frame, ticket, times, self._last, im_info, data.shape[-1])
        if pending is not None:
            yield self._finish(*pending)

    def _finish(self, frame: Frame, ticket: tuple, times: dict, info: StepInfo, im_info: Tensor,
                width: int) -> FrameResult:
        t = time.perf_counter()
        dets = self._post_wait(ticket)
        times["post"] += time.perf_counter() - t  # queueing it, then waiting for it
        return self._result(frame, dets, times, info, im_info, width)

    def _result(self, frame: Frame, dets: list, times: dict, info: StepInfo, im_info: Tensor,
                width: int) -> FrameResult:
        times["total"] = sum(times[s] for s in STAGES)
        q_map, cells = None, 0.0
        if info.q is not None:
            q_map = info.q.float().cpu().numpy()
            cells = float(im_info[0, 2]) * q_map.shape[1] / width  # im_scale / stride
        return FrameResult(frame.index, frame.name, info.is_key, dets, times,
                           frame.image if self.keep_images else None, info.updated_fraction, info.update_mask,
                           info.key_index, info.age, self.scheme.has_q, q_map, cells)
