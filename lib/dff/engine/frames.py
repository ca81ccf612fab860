"""Frame sources: a video file (OpenCV) or a folder of frames, decoded ahead in background threads.

(Cameras and network streams are :mod:`dff.engine.live`; ``dff.engine.live.open_source`` picks the
source for an input string.)

Decoding and preprocessing (resize, mean subtraction) happen in worker threads so they overlap with
the network; OpenCV releases the GIL while it decodes and resizes. The queue is bounded, so memory
stays constant over any video length.
"""
from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import os
import queue
import re
import threading
import warnings
from typing import Callable, Iterator, Sequence

import cv2
import numpy as np

from dff.utils.image import ImageReadError, read_image

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


class VideoReadError(IOError):
    """A video or frame folder cannot be read; the message names the path and the problem."""


@dataclasses.dataclass
class Frame:
    index: int  # position in the video, 0-based
    name: str  # file name (folder input) or "frame_%06d" (video input)
    image: np.ndarray  # (H, W, 3) BGR uint8, the original frame
    prepared: object = None  # whatever the `prepare` callable returned (e.g. network input tensors)
    timestamp: float | None = None  # capture time (``time.time()``) for a live source; None for files and folders


def frame_number_key(name: str) -> tuple:
    """Sort key that orders ``9.jpg < 10.jpg`` (numbers compared as numbers), unlike ``glob``/``sorted``."""
    parts = re.split(r"(\d+)", os.path.basename(name))
    return tuple((0, int(p), p) if p.isdigit() else (1, 0, p.lower()) for p in parts)


def list_frames(folder: str) -> list[str]:
    """The image files of ``folder`` in frame-number order."""
    if not os.path.isdir(folder):
        raise VideoReadError(f"{folder}: frame folder not found")
    names = [n for n in os.listdir(folder) if n.lower().endswith(IMAGE_EXTENSIONS)]
    if not names:
        raise VideoReadError(f"{folder}: no image files ({', '.join(IMAGE_EXTENSIONS)}) in this folder")
    return [os.path.join(folder, n) for n in sorted(names, key=frame_number_key)]


def _open_video(path: str) -> cv2.VideoCapture:
    if not os.path.isfile(path):
        raise VideoReadError(f"{path}: video file not found")
    cap = cv2.VideoCapture(path)
    if not cap.isOpened():
        raise VideoReadError(f"{path}: cannot open video (unsupported or corrupt file)")
    return cap


class FrameSource:
    """Iterate the frames of a video file or a frame folder, in order, decoded ahead.

    Args:
        path: a video file (anything OpenCV's ``VideoCapture`` opens), a folder of images, or a list of
            image files (read in the given order; e.g. a test list's frames).
        prepare: optional function ``image -> object`` run in the worker (e.g. preprocessing).
        max_frames: stop after this many frames (None: all).
        prefetch: how many frames may be decoded ahead.
        workers: decoding threads for folders (a video file is decoded sequentially).
        on_error: ``"raise"`` or ``"skip"`` for an unreadable frame in a folder (skips are counted in
            :attr:`skipped` and warned about).
    """

    def __init__(self, path: str | Sequence[str], prepare: Callable[[np.ndarray], object] | None = None,
                 max_frames: int | None = None, prefetch: int = 8, workers: int = 2,
                 on_error: str = "raise") -> None:
        if isinstance(path, (str, os.PathLike)):
            self.path, files = os.fspath(path), None
        else:
            files = [os.fspath(p) for p in path]
            self.path = os.path.dirname(files[0]) if files else ""
        self.prepare = prepare
        self.max_frames = max_frames
        self.prefetch = max(1, prefetch)
        self.workers = max(1, workers)
        self.on_error = on_error
        self.skipped: list[str] = []
        self.is_folder = files is not None or os.path.isdir(self.path)
        if self.is_folder:
            self._files = files if files is not None else list_frames(self.path)
            if max_frames is not None:
                self._files = self._files[:max_frames]
        else:
            _open_video(self.path).release()  # fail now, with the path, not inside a worker

    def __len__(self) -> int:
        if self.is_folder:
            return len(self._files)
        cap = _open_video(self.path)
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        cap.release()
        return n if self.max_frames is None else min(n, self.max_frames)

    def _load(self, index: int, file: str) -> Frame | None:
        try:
            image = read_image(file)
        except ImageReadError as e:
            if self.on_error != "skip":
                raise
            warnings.warn(f"skipping frame: {e}")
            self.skipped.append(file)
            return None
        prepared = self.prepare(image) if self.prepare else None
        return Frame(index, os.path.basename(file), image, prepared)

    def _iter_folder(self) -> Iterator[Frame]:
        # a bounded window of futures keeps order and memory constant
        with cf.ThreadPoolExecutor(self.workers, thread_name_prefix="dff-decode") as pool:
            pending: list[cf.Future] = []
            files = iter(enumerate(self._files))
            for _ in range(self.prefetch):
                nxt = next(files, None)
                if nxt is None:
                    break
                pending.append(pool.submit(self._load, *nxt))
            while pending:
                frame = pending.pop(0).result()
                nxt = next(files, None)
                if nxt is not None:
                    pending.append(pool.submit(self._load, *nxt))
                if frame is not None:
                    yield frame

    def _iter_video(self) -> Iterator[Frame]:
        q: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()
        done = object()

        def worker() -> None:
            cap = _open_video(self.path)
            try:
                i = 0
                while not stop.is_set() and (self.max_frames is None or i < self.max_frames):
                    ok, image = cap.read()
                    if not ok:
                        break
                    prepared = self.prepare(image) if self.prepare else None
                    q.put(Frame(i, f"frame_{i:06d}", image, prepared))
                    i += 1
                q.put(done if i > 0 else VideoReadError(f"{self.path}: the video has no decodable frames"))
            except BaseException as e:  # hand the error to the consumer instead of dying silently
                q.put(e)
            finally:
                cap.release()

        t = threading.Thread(target=worker, name="dff-decode", daemon=True)
        t.start()
        try:
            while True:
                item = q.get()
                if item is done:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            while t.is_alive():  # unblock a worker waiting on a full queue
                try:
                    q.get_nowait()
                except queue.Empty:
                    pass
                t.join(timeout=0.05)

    def __iter__(self) -> Iterator[Frame]:
        return self._iter_folder() if self.is_folder else self._iter_video()


def frames_from_arrays(images: Sequence[np.ndarray], prepare: Callable | None = None) -> Iterator[Frame]:
    """Frames already in memory (tests, benchmarks)."""
    for i, im in enumerate(images):
        yield Frame(i, f"frame_{i:06d}", im, prepare(im) if prepare else None)
