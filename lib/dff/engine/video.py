"""The video inference engine: key frames every ``KEY_FRAME_INTERVAL`` frames, warped features between.

One engine serves every model. With an :class:`~dff.models.rfcn.RFCN` (or a key interval of 1) every
frame is a key frame, which is the per-frame baseline; with a DFF model, frame ``i`` of a video is a
key frame when ``i % interval == 0`` (counting from the video's start, as the reference) or when the
frame size changes. Only the current key frame's input and feature are cached, so memory is constant
over any video length.

A DFF model trained with ``network.THP`` also runs the three options of "Towards High Performance Video
Object Detection" (docs/design.md §9), each a ``TEST`` key: the adaptive key-frame schedule
(``KEY_FRAME_SCHEDULE: adaptive``), the partial feature update (``PARTIAL_UPDATE``) and the key frames'
aggregation (``AGGREGATION``). With all three off the engine runs exactly the DFF path. The cache is
still one reference frame (its input and feature): the key frame, or with ``PARTIAL_UPDATE_PROPAGATE``
the last partially updated frame, whose updates then carry over to the frames warped from it. The mobile
variant's flow-guided ConvGRU (``network.GRU_AGGREGATION``, docs/design.md §10.4) runs through the same key-frame
aggregation step (``AGGREGATION`` on, the schedule fixed, no partial update).
"""
from __future__ import annotations

import copy
import dataclasses
import time
from typing import Iterable, Iterator

import numpy as np
import torch
from torch import Tensor

from dff.config import Config, update_config
from dff.engine.fastpath import FastPath, StageRunner
from dff.engine.frames import Frame
from dff.engine.postprocess import im_detect_boxes, pred_eval_fixed, rows_to_dets
from dff.utils.image import preprocess

STAGES = ("feature", "flow", "warp", "update", "aggregate", "head", "post")
SCHEDULES = ("fixed", "adaptive")


@dataclasses.dataclass(frozen=True)
class THPOptions:
    """The engine's THP settings, from ``cfg.TEST`` (docs/design.md §9)."""

    schedule: str = "fixed"
    tau: float = 0.3
    gamma: float = 0.2
    max_interval: int = 20
    partial: bool = False
    margin: int = 3
    propagate: bool = True
    aggregate: bool = False

    @classmethod
    def from_config(cls, cfg: Config) -> "THPOptions":
        t = cfg.TEST
        opts = cls(str(t.KEY_FRAME_SCHEDULE), float(t.THP_TAU), float(t.THP_GAMMA), int(t.KEY_FRAME_MAX_INTERVAL),
                   bool(t.PARTIAL_UPDATE), int(t.PARTIAL_UPDATE_MARGIN), bool(t.PARTIAL_UPDATE_PROPAGATE),
                   bool(t.AGGREGATION))
        if opts.schedule not in SCHEDULES:
            raise ValueError(f"TEST.KEY_FRAME_SCHEDULE must be one of {', '.join(SCHEDULES)}, got {opts.schedule!r}")
        if opts.max_interval < 1:
            raise ValueError(f"TEST.KEY_FRAME_MAX_INTERVAL must be >= 1, got {opts.max_interval}")
        if opts.margin < 0:
            raise ValueError(f"TEST.PARTIAL_UPDATE_MARGIN must be >= 0 feature cells, got {opts.margin}")
        return opts

    @property
    def active(self) -> bool:
        """Any THP option on (else the engine is plain DFF)."""
        return self.schedule == "adaptive" or self.partial or self.aggregate

    @property
    def needs_q(self) -> bool:
        return self.schedule == "adaptive" or self.partial

    def describe(self) -> dict:
        return dataclasses.asdict(self)


THP_OFF = {"KEY_FRAME_SCHEDULE": "fixed", "PARTIAL_UPDATE": False, "AGGREGATION": False}


def per_frame_config(cfg: Config) -> Config:
    """A copy of ``cfg`` with THP's options off: a per-frame baseline at key interval 1 must not schedule
    adaptively or aggregate."""
    base = copy.deepcopy(cfg)
    update_config(base, {"TEST": THP_OFF}, source="the per-frame baseline")
    return base


def schedule_overrides(schedule: str | None) -> list[str]:
    """``--schedule fixed|adaptive`` as the ``--set`` item it stands for (none when not given)."""
    if schedule is None:
        return []
    if schedule not in SCHEDULES:
        raise ValueError(f"--schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
    return [f"TEST.KEY_FRAME_SCHEDULE={schedule}"]


def add_schedule_option(ap) -> None:
    """The ``--schedule`` flag of the demo, tester, evaluator and benchmark."""
    ap.add_argument("--schedule", choices=SCHEDULES, default=None,
                    help="key frames: fixed (every TEST.KEY_FRAME_INTERVAL frames) or adaptive (THP models: when the "
                         "share of positions with Q <= TEST.THP_TAU exceeds TEST.THP_GAMMA); default "
                         "TEST.KEY_FRAME_SCHEDULE. Same as --set TEST.KEY_FRAME_SCHEDULE=...")


def low_q_fraction(q: Tensor, tau: float) -> float:
    """The fraction of positions of Q (N, 1, h, w) with Q <= tau."""
    return float((q <= tau).float().mean())


def adaptive_is_key(q: Tensor, tau: float, gamma: float) -> bool:
    """THP's key-frame rule: a key frame when the fraction of positions with Q <= tau exceeds gamma."""
    return low_q_fraction(q, tau) > gamma


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
    updated_fraction: float = 0.0  # THP: the fraction of feature cells recomputed on this (non-key) frame
    update_mask: np.ndarray | None = None  # THP, with keep_images: those cells, (h, w) bool


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
        self.thp = THPOptions.from_config(cfg) if self.has_flow else THPOptions()
        if self.thp.needs_q and not getattr(model, "thp", False):
            raise ValueError("TEST.KEY_FRAME_SCHEDULE adaptive and TEST.PARTIAL_UPDATE need a model trained with "
                             "network.THP (e.g. data/models/thp_synthetic_tiny.pth); this one has no Q output")
        if self.thp.aggregate and getattr(model, "aggregation", None) is None:
            raise ValueError("TEST.AGGREGATION needs a model with a key-frame aggregation (network.THP or "
                             "network.GRU_AGGREGATION, e.g. data/models/dff_mobile_synthetic.pth); this one has none")
        self.sync = sync
        self.keep_images = keep_images
        self.reset()

    def reset(self) -> None:
        """Forget the cached key frame (call between videos)."""
        self._key_data: Tensor | None = None
        self._key_feat: Tensor | None = None
        self._key_backbone: Tensor | None = None  # THP partial update: the reference's backbone map
        self._since_key = 0
        self._last_update = (0.0, None)  # THP: (fraction of cells updated, mask) of the last step
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

    @property
    def last_update_fraction(self) -> float:
        """THP: the fraction of feature cells the last :meth:`step` recomputed (0 on key frames)."""
        return self._last_update[0]

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
        if self.thp.active:
            feat, is_key = self._thp_feature(data, times)
            return self._head(feat, im_info_dev, rois, times, self._tick()), is_key, times
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
        return self._head(feat, im_info_dev, rois, times, t1), is_key, times

    def _head(self, feat: Tensor, im_info_dev: Tensor, rois: Tensor | None, times: dict, t1: float) -> dict:
        """The task network on the frame's feature; ``times["head"]`` from ``t1``."""
        if rois is not None:
            out = self.model.head_rois(self.runner.maps(feat, im_info_dev), im_info_dev, rois=rois.to(self.device))
        elif self.runner.sync_free:
            out = dict(self.runner.head(feat, im_info_dev))
        else:  # the NMS synchronises anyway: only the fixed-shape part as one stage
            out = self.model.head_rois(self.runner.maps(feat, im_info_dev), im_info_dev)
        out["im_info"] = im_info_dev
        times["head"] = self._tick() - t1
        return out

    def _thp_feature(self, data: Tensor, times: dict) -> tuple[Tensor, bool]:
        """THP's feature of one frame (docs/design.md §9.3): the adaptive or fixed key-frame decision, the
        key frame's aggregation with the reference feature warped to it, the non-key frame's warp and
        partial update. Fills ``times``; returns (feature, is_key)."""
        o = self.thp
        cap = o.max_interval if o.schedule == "adaptive" else self.key_interval
        t = self._tick()
        have_ref = self._key_feat is not None and self._key_data.shape == data.shape
        flow = scale = q = None
        low = 0.0
        is_key = not have_ref or self._since_key >= cap
        if not is_key:
            if o.needs_q:
                flow, scale, q = self.runner.flow_q(data, self._key_data)
            else:
                flow, scale = self.runner.flow(data, self._key_data)
            t, times["flow"] = self._lap(t, times["flow"])
            low = low_q_fraction(q, o.tau) if o.needs_q else 0.0  # one host sync serves both uses
            is_key = o.schedule == "adaptive" and low > o.gamma
        self._last_update = (0.0, None)
        if is_key:
            if o.partial:  # the backbone map is kept for the updates (docs/design.md §9.2)
                backbone = self.runner.backbone(data)
                feat = self.runner.feature_head(backbone)
            else:
                backbone, feat = None, self.runner.feature(data)
            t, times["feature"] = self._lap(t, times["feature"])
            if o.aggregate and have_ref:
                if flow is None:
                    flow, scale = self.runner.flow(data, self._key_data)
                    t, times["flow"] = self._lap(t, times["flow"])
                prev = self.runner.warp(self._key_feat, flow, scale)
                t, times["warp"] = self._lap(t, times["warp"])
                feat = self.runner.aggregate(feat, prev)
                t, times["aggregate"] = self._lap(t, times["aggregate"])
            self._key_data, self._key_feat, self._key_backbone = data, feat, backbone
            self._since_key = 1
        else:
            feat = self.runner.warp(self._key_feat, flow, scale)
            t, times["warp"] = self._lap(t, times["warp"])
            if o.partial and low > 0:
                mask = q[0, 0] <= o.tau
                feat, backbone, info = self.runner.update(data, feat, self._key_backbone, flow, mask, o.margin)
                t, times["update"] = self._lap(t, times["update"])
                self._last_update = (info.area_fraction, mask.cpu().numpy() if self.keep_images else None)
                if o.propagate:
                    self._key_data, self._key_feat, self._key_backbone = data, feat, backbone
            self._since_key += 1
        return feat, is_key

    def _lap(self, t: float, acc: float) -> tuple[float, float]:
        now = self._tick()
        return now, acc + now - t

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
                yield self._result(frame, is_key, dets, times, self._last_update)
                continue
            ticket = self._post_async(out)
            times["post"] = time.perf_counter() - t
            if pending is not None:
                yield self._finish(*pending)
            pending = (frame, is_key, ticket, times, self._last_update)
        if pending is not None:
            yield self._finish(*pending)

    def _finish(self, frame: Frame, is_key: bool, ticket: tuple, times: dict, update: tuple) -> FrameResult:
        t = time.perf_counter()
        dets = self._post_wait(ticket)
        times["post"] += time.perf_counter() - t  # queueing it, then waiting for it
        return self._result(frame, is_key, dets, times, update)

    def _result(self, frame: Frame, is_key: bool, dets: list, times: dict, update: tuple = (0.0, None)) -> FrameResult:
        times["total"] = sum(times[s] for s in STAGES)
        return FrameResult(frame.index, frame.name, is_key, dets, times, frame.image if self.keep_images else None,
                           update[0], update[1])
