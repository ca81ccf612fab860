"""The public Python API: load a detector, run it over a video, read boxes (docs/api.md).

.. code-block:: python

    import dff

    with dff.load_detector() as det:              # the embedded mobile DFF model, the demo's settings
        for frame in det.detect("clip.mp4"):      # a file, a frame folder, "cam:0", a URL, or HxWx3 arrays
            for box in frame.boxes:               # Box(x1, y1, x2, y2, score, label, class_id), best first
                print(frame.index, frame.is_key, box.label, round(box.score, 3))

:func:`load_detector` loads the model itself (the :class:`Detector` owns it: the fast path may re-lay its
weights out, see below) and builds the engine with the choices of the demos (``rfcn/demo.py``,
``dff_rfcn/demo.py``, :mod:`dff.apps.demo`): score threshold per model kind (:data:`THRESH`), the fast path
for the device (``FastPath.from_name(None, device)``), unreadable frames of a folder skipped with a warning,
live sources read newest-frame-first with reconnects. Not the demo's: the engine runs with ``sync=False``
(the demo synchronises the device between stages for its per-stage time split; the detections are the same,
on CUDA the pipelined engine is faster) and keeps no images unless asked (``keep_images``); there is no
warm-up run. Nothing process-wide is changed here; the engine's CUDA fast path turns on cuDNN autotuning
(``torch.backends.cudnn.benchmark``), as in the demo.

:func:`frame_record` (one processed frame as a JSON line, ``docs/frame_result.schema.json``) lives here so
that the API and the demo's ``--json-out`` write the same objects.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
import weakref
from typing import Any, Generator, Iterable, Iterator, NamedTuple, Sequence, Union

import numpy as np
import torch

from dff.config import Config, load_config
from dff.deploy.runtime import BACKENDS, make_detector
from dff.engine.fastpath import FastPath
from dff.engine.frames import Frame, VideoReadError, frames_from_arrays
from dff.engine.live import LiveSource, SourceLost, SourceOpenError, open_source
from dff.engine.segment import class_fractions
from dff.engine.video import FrameResult, VideoEngine
from dff.models.builder import load_model
from dff.temporal.async_keys import key_worker
from dff.utils.checkpoint import CheckpointError

__all__ = ["DEFAULT_MODEL", "DEFAULT_TWIN", "JSON_THRESH", "THRESH", "Box", "CheckpointError", "DetectionFrame", "DetectionRun",
           "Detector", "SourceLost", "SourceOpenError", "VideoReadError", "auto_device", "frame_record", "load_detector"]

_log = logging.getLogger(__name__)

#: The embedded mobile DFF model (the demo's default), in the source checkout's ``data/models/``.
DEFAULT_MODEL = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "data",
                                              "models", "dff_mobile_synthetic.pth"))
#: Its per-frame twin (the same backbone and head on every frame): ``--compare``'s and the benchmark's baseline.
DEFAULT_TWIN = os.path.join(os.path.dirname(DEFAULT_MODEL), "rfcn_mobile_synthetic.pth")
#: The default score threshold of the detections per model kind: the demos' ``--thresh`` (the reference's,
#: the same as :data:`dff.eval.tester.DEFAULT_THRESH`).
THRESH = {"dff": 1e-4, "rfcn": 1e-3}
#: The score above which :meth:`DetectionFrame.to_json` lists a box: the demos' ``--vis-thresh`` (the reference's).
JSON_THRESH = 0.7

Source = Union[str, os.PathLike, Iterable[np.ndarray]]


class Box(NamedTuple):
    """One detection: corners in the original frame's pixels (inclusive, the reference's convention)."""

    x1: float
    y1: float
    x2: float
    y2: float
    score: float  # the class probability
    label: str  # the class name
    class_id: int  # the class index (0 is the background, never a box)
    age: int = 0  # frames since the key frame whose feature gave the box (0: computed on this frame)
    quality: float | None = None  # a model with THP's Q: the mean Q inside the box (1 on a key frame), else None


@dataclasses.dataclass
class DetectionFrame:
    """One processed frame.

    ``index``: the frame's position in the source (a live source: frames received before it; gaps are
    dropped frames); ``seq``: its position among the processed frames; ``name``: the file name (folder) or
    ``frame_%06d``; ``is_key``: whether the feature network ran on it (else the key frame's feature was
    warped to it); ``boxes``: the detections above the detector's ``thresh``, best first; ``times``: seconds
    per engine stage and ``total`` (network and post-processing, no decoding); ``timestamp``: Unix time the
    frame was captured (live) or taken by the engine (file, folder, arrays); ``latency``: seconds from then to
    the detections; ``dropped``: frames a live source dropped so far (0 otherwise); ``updated_fraction``: THP's
    partial update, the fraction of feature cells recomputed; ``key_index`` and ``age``: the key frame whose feature
    gave this frame's (its index; frames since it, 0 on a key frame); ``image``: the BGR frame with
    ``keep_images=True``, else None; ``labels``: a segmentation model's (H, W) uint8 class index of each pixel
    (``boxes`` then empty; :attr:`class_fractions`), else None; ``result``: the engine's
    :class:`~dff.engine.video.FrameResult`."""

    index: int
    seq: int
    name: str
    is_key: bool
    boxes: list[Box]
    times: dict
    timestamp: float
    latency: float
    dropped: int = 0
    updated_fraction: float = 0.0
    key_index: int = 0
    age: int = 0
    image: np.ndarray | None = dataclasses.field(default=None, repr=False)
    labels: np.ndarray | None = dataclasses.field(default=None, repr=False)
    result: FrameResult | None = dataclasses.field(default=None, repr=False)
    class_names: Sequence[str] = dataclasses.field(default=(), repr=False)
    partial_update: bool = dataclasses.field(default=False, repr=False)

    @property
    def class_fractions(self) -> dict[str, float]:
        """A segmentation model's frame: the pixel fraction of each class present, by name (empty for a detector)."""
        return {} if self.labels is None else class_fractions(self.labels, self.class_names)

    def to_json(self, thresh: float = JSON_THRESH) -> dict:
        """The frame as the demo's ``--json-out`` line (``docs/frame_result.schema.json``): the boxes scoring
        above ``thresh`` (default :data:`JSON_THRESH`, the demo's ``--vis-thresh``), best first."""
        record = frame_record(self.result, self.seq, self.timestamp, self.latency, self.dropped, self.class_names,
                              thresh)
        if self.partial_update:
            record["updated_fraction"] = round(float(self.updated_fraction), 5)
        return record


def frame_record(r: FrameResult, seq: int, timestamp: float, latency: float, dropped: int,
                 class_names: Sequence[str], thresh: float) -> dict:
    """One processed frame as a JSON object (``docs/frame_result.schema.json``): detections above ``thresh``,
    best first, boxes ``[x1, y1, x2, y2]`` in the original frame's pixels."""
    dets = []
    for cls in range(1, len(r.detections)):
        d = np.asarray(r.detections[cls])
        if not len(d):
            continue
        name = class_names[cls] if cls < len(class_names) else str(cls)
        for x1, y1, x2, y2, score in d[d[:, 4] > thresh].tolist():
            det = {"class": name, "class_id": cls, "score": round(score, 5),
                   "box": [round(x1, 2), round(y1, 2), round(x2, 2), round(y2, 2)], "age": r.age}
            if r.has_q:
                det["quality"] = round(float(r.quality((x1, y1, x2, y2))), 4)
            dets.append(det)
    dets.sort(key=lambda x: -x["score"])
    record = {
        "index": r.index,
        "seq": seq,
        "name": r.name,
        "timestamp": round(timestamp, 6),
        "latency_ms": round(1000 * latency, 3),
        "is_key": bool(r.is_key),
        "key_index": r.key_index,
        "age": r.age,
        "dropped": dropped,
        "net_ms": round(1000 * (r.times["total"] - r.times["post"]), 3),
        "detections": dets,
    }
    if r.labels is not None:  # a segmentation model's frame: no boxes, the classes' pixel fractions
        record["class_fractions"] = class_fractions(r.labels, class_names)
    return record


def _boxes(r: FrameResult, class_names: Sequence[str]) -> list[Box]:
    """The engine's per-class arrays -> :class:`Box` list, best first, with the frame's age and each box's quality."""
    boxes = []
    for cls in range(1, len(r.detections)):
        label = class_names[cls] if cls < len(class_names) else str(cls)
        for x1, y1, x2, y2, score in np.asarray(r.detections[cls]).reshape(-1, 5).tolist():
            boxes.append(Box(x1, y1, x2, y2, score, label, cls, r.age, r.quality((x1, y1, x2, y2))))
    boxes.sort(key=lambda b: -b.score)
    return boxes


def _describe(x: Any) -> str:
    if isinstance(x, np.ndarray):
        return f"an array of shape {x.shape} and dtype {x.dtype}"
    return f"a {type(x).__name__}"


def _checked_images(images: Iterable[Any]) -> Iterator[np.ndarray]:
    """The images of ``images``, each checked to be an HxWx3 uint8 array (BGR, as OpenCV reads)."""
    for i, im in enumerate(images):
        if not (isinstance(im, np.ndarray) and im.ndim == 3 and im.shape[2] == 3 and im.dtype == np.uint8
                and im.shape[0] > 0 and im.shape[1] > 0):
            raise ValueError(f"frame {i} of the source: expected an HxWx3 uint8 BGR image (a numpy array, as "
                             f"cv2.imread gives), got {_describe(im)}")
        yield im


def _stamped(frames: Iterable[Frame], stamps: dict[int, float]) -> Iterator[Frame]:
    """The frames, noting each one's capture time (a file's, folder's or array's: when the engine takes it)."""
    for f in frames:
        stamps[f.index] = f.timestamp if f.timestamp is not None else time.time()
        yield f


def auto_device(device: str | torch.device | None) -> torch.device:
    """``"auto"``: CUDA when available, else the CPU; anything else as :class:`torch.device` reads it."""
    if device is None or (isinstance(device, str) and device in ("", "auto")):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class DetectionRun(Iterator[DetectionFrame]):
    """What :meth:`Detector.detect` returns: an iterator of :class:`DetectionFrame`; :meth:`close` ends it early
    and closes its live source (also when it was never iterated)."""

    def __init__(self, frames: Iterator[DetectionFrame], live: LiveSource | None) -> None:
        self._frames = frames
        self._live = live

    def __iter__(self) -> DetectionRun:
        return self

    def __next__(self) -> DetectionFrame:
        return next(self._frames)

    def close(self) -> None:
        self._frames.close()  # runs the generator's finally (the decoder stops) if it had started
        if self._live is not None:
            self._live.close()


class Detector:
    """A video object detector (made by :func:`load_detector`). One video at a time: :meth:`detect` starts a
    new one (from a key frame) and ends an unfinished earlier iteration. Not thread-safe: use one Detector per
    thread. A context manager: leaving the block (or :meth:`close`) ends the iterations and closes live
    sources (cameras, streams).

    Attributes: ``model`` (the loaded network, owned by the detector: the fast path may have re-laid out its
    weights), ``cfg`` (its config), ``engine`` (the model task's engine, e.g. :class:`~dff.engine.video.VideoDetector`), ``class_names``
    (background first), ``kind`` (``"dff"`` or ``"rfcn"``), ``device``, ``backend``, ``thresh``, ``fast``
    (the :class:`~dff.engine.fastpath.FastPath`), ``key_interval``, ``model_path``."""

    def __init__(self, model: torch.nn.Module, cfg: Config, engine: VideoEngine, *, model_path: str,
                 device: torch.device, backend: str, fast: FastPath) -> None:
        self.model = model
        self.cfg = cfg
        self.engine = engine
        self.class_names: tuple[str, ...] = tuple(model.class_names)
        self.kind: str = model.kind
        self.model_path = model_path
        self.device = device
        self.backend = backend
        self.fast = fast
        self._runs: weakref.WeakSet = weakref.WeakSet()

    @property
    def thresh(self) -> float:
        return float(self.engine.thresh)

    @property
    def key_interval(self) -> int:
        return int(self.engine.key_interval)

    def __repr__(self) -> str:
        return (f"Detector({self.model_path!r}, kind={self.kind!r}, device={str(self.device)!r}, "
                f"backend={self.backend!r}, key_interval={self.key_interval}, thresh={self.thresh:g})")

    def detect(self, source: Source, *, max_frames: int | None = None) -> DetectionRun:
        """Detect on every frame of ``source``, in order; yields a :class:`DetectionFrame` per frame.

        ``source``: a video file or a folder of frames (ordered by frame number; unreadable frames are skipped
        with a warning), ``"cam:N"`` or a stream URL (RTSP, HTTP(S) MJPEG...: read newest-frame-first, frames
        that arrive while the detector is busy are dropped, a dropped connection is reopened with back-off),
        or an iterable of HxWx3 uint8 BGR numpy arrays (a list, a generator, an (N, H, W, 3) array).
        ``max_frames``: stop after this many frames.

        The source is opened now: a missing file, a folder without images or a camera that does not open
        raises :class:`~dff.engine.frames.VideoReadError` (:class:`~dff.engine.live.SourceOpenError` for a
        camera or a stream) naming it. While iterating, a frame of an iterable that is not an HxWx3 uint8 array
        raises ``ValueError``, a live source that drops for good :class:`~dff.engine.live.SourceLost`."""
        if max_frames is not None and max_frames < 0:
            raise ValueError(f"max_frames must be >= 0, got {max_frames}")
        self._end_runs()
        live: LiveSource | None = None
        if isinstance(source, (str, os.PathLike)):
            opened = open_source(os.fspath(source), prepare=self.engine.prepare, max_frames=max_frames,
                                 on_error="skip")
            live = opened if isinstance(opened, LiveSource) else None
            frames: Iterable[Frame] = opened
        elif isinstance(source, np.ndarray) and source.ndim == 3:
            raise TypeError(f"detect() takes a sequence of frames, got one image of shape {source.shape}: "
                            "pass [image]")
        elif isinstance(source, Iterable) and not isinstance(source, (bytes, bytearray)):
            images = _checked_images(source)
            if max_frames is not None:
                images = (im for _, im in zip(range(max_frames), images))
            frames = frames_from_arrays(images, self.engine.prepare)
        else:
            raise TypeError("source must be a path (video file, frame folder), 'cam:N', a stream URL, or an "
                            f"iterable of HxWx3 uint8 BGR arrays; got {_describe(source)}")
        run = DetectionRun(self._iterate(frames, live), live)
        self._runs.add(run)
        return run

    def _iterate(self, frames: Iterable[Frame], live: LiveSource | None) -> Generator[DetectionFrame, None, None]:
        stamps: dict[int, float] = {}  # frame index -> capture time, for the one or two frames in the engine
        partial = self.engine.loop.options.partial
        stamped = _stamped(frames, stamps)
        try:
            with contextlib.closing(stamped), contextlib.closing(self.engine.run(stamped)) as results:
                for seq, r in enumerate(results):
                    now = time.time()
                    stamp = stamps.pop(r.index, now)
                    yield DetectionFrame(
                        index=r.index, seq=seq, name=r.name, is_key=bool(r.is_key),
                        boxes=_boxes(r, self.class_names), times=dict(r.times), timestamp=stamp,
                        latency=now - stamp, dropped=live.stats().dropped if live is not None else 0,
                        updated_fraction=float(r.updated_fraction), key_index=r.key_index, age=r.age,
                        image=r.image, labels=r.labels, result=r,
                        class_names=self.class_names, partial_update=partial)
        finally:
            if live is not None:
                live.close()  # the reader stops now, not when the generators are collected

    def _end_runs(self) -> None:
        for run in list(self._runs):
            run.close()
        self._runs = weakref.WeakSet()

    def reset(self) -> None:
        """End any unfinished :meth:`detect` iteration (closing its live source) and forget the cached key
        frame; the next :meth:`detect` starts afresh (it does so anyway: each call is one video)."""
        self._end_runs()
        self.engine.reset()

    def close(self) -> None:
        """End any unfinished :meth:`detect` iteration and close its live source. The detector stays usable."""
        self._end_runs()

    def __enter__(self) -> Detector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def load_detector(model: str | os.PathLike | None = None, *, device: str | torch.device = "auto",
                  backend: str = "torch", onnx_dir: str | os.PathLike | None = None, key_interval: int | None = None,
                  thresh: float | None = None, fast: str | FastPath | None = None, overrides: Sequence[str] = (),
                  keep_images: bool = False, cfg: str | os.PathLike | None = None,
                  kind: str | None = None, async_keys: bool = False) -> Detector:
    """A :class:`Detector` with the demos' defaults.

    Args:
        model: a native checkpoint (``.pth``: it carries its config, kind and class names), an MXNet
            ``.params`` file (with ``cfg`` and ``kind``), or ``"fixture"`` (the parity fixtures' deterministic
            weights: the real pipeline, meaningless detections; with ``cfg`` and ``kind``). Default
            :data:`DEFAULT_MODEL`, the embedded mobile DFF model (``data/models/dff_mobile_synthetic.pth``
            of the source checkout).
        device: ``"auto"`` (CUDA when available, else the CPU), ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
        backend: ``"torch"`` or ``"onnxruntime"`` (the model's ONNX export, made and cached on first use
            unless ``onnx_dir`` names one; needs ``pip install -e .[deploy]``; docs/onnx.md).
        onnx_dir: ``backend="onnxruntime"``: the folder of ``tools/export_onnx.py`` for this model.
        key_interval: a key frame every N frames (default the config's ``TEST.KEY_FRAME_INTERVAL``; always
            1 for a per-frame R-FCN).
        thresh: the boxes' score threshold (default :data:`THRESH` of the model's kind, the demos'
            ``--thresh``: 1e-4 DFF, 1e-3 R-FCN, which keeps low-score boxes; use e.g. 0.7, the demos'
            ``--vis-thresh``, for confident boxes only).
        fast: the PyTorch fast path: ``"fp16"``, ``"bf16"``, ``"fp32"``, ``"tf32"``, ``"none"`` or a
            :class:`~dff.engine.fastpath.FastPath`; default as the demos, ``fp16`` on CUDA, ``fp32``
            (oneDNN pre-packed weights) on the CPU. Ignored by the onnxruntime backend.
        overrides: ``KEY=VALUE`` config overrides (the demos' ``--set``), e.g.
            ``["TEST.KEY_FRAME_SCHEDULE=adaptive"]``; keys that shape the network must match the checkpoint.
        keep_images: attach each frame's image to its :class:`DetectionFrame` (``frame.image``).
        cfg: a YAML config for a file that carries none (MXNet ``.params``, ``"fixture"``).
        kind: ``"dff"`` or ``"rfcn"`` for a file that does not say (MXNet ``.params``, ``"fixture"``).
        async_keys: compute the key frames on a worker beside the non-key frames (``dff.temporal.async_keys``):
            no frame waits for a whole key frame; on the CPU the cores are split between the two (this sets
            ``torch.set_num_threads`` of the calling thread). A DFF model only.

    Raises :class:`~dff.utils.checkpoint.CheckpointError` (a ``ValueError``) naming the file when the model is
    missing or does not load; ``ValueError`` / ``TypeError`` for a bad argument;
    :class:`~dff.deploy.DeployUnavailable` for ``backend="onnxruntime"`` without the optional packages.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if model is not None and not isinstance(model, (str, os.PathLike)):
        raise TypeError(f"model must be a checkpoint path (str or os.PathLike) or None, got {_describe(model)}: "
                        "load_detector loads the model itself (the fast path changes the module it runs)")
    if model is None:
        if not os.path.isfile(DEFAULT_MODEL):
            raise CheckpointError(f"{DEFAULT_MODEL}: the embedded default model is not there (it ships in the "
                                  "source checkout's data/models/, which an installed package does not carry); "
                                  "pass a model path: load_detector('path/to/model.pth')")
        model = DEFAULT_MODEL
    path = os.fspath(model)
    dev = auto_device(device)
    overrides = list(overrides)
    base_cfg = load_config(cfg, overrides) if cfg is not None else None
    net, net_cfg = load_model(path, base_cfg, kind=kind, device=dev, overrides=overrides)
    if thresh is None:
        thresh = THRESH.get(net.kind, 0.0)  # a segmentation model has no scores to threshold
    fast_path = fast if isinstance(fast, FastPath) else FastPath.from_name(fast, dev)
    if async_keys and not net.has_flow:
        raise ValueError(f"{path}: async_keys needs a model with a flow network (a DFF); this one is per-frame")
    engine = make_detector(net, net_cfg, backend=backend, onnx_dir=onnx_dir, log=_log.info,
                           key_interval=key_interval, device=dev, thresh=float(thresh), sync=False,
                           keep_images=keep_images, fast=fast_path, keys=key_worker(dev) if async_keys else None)
    return Detector(net, net_cfg, engine, model_path=path, device=dev, backend=backend, fast=fast_path)
