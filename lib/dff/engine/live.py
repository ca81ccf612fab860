"""Live frame sources: a camera or a network stream, read on a background thread that keeps only the newest frame.

A camera is ``cam:N`` (OpenCV's index, ``/dev/videoN`` on Linux); a stream is a URL that OpenCV's FFmpeg
backend opens: ``rtsp://``, ``http(s)://`` (an MJPEG ``multipart/x-mixed-replace`` stream, or a video file
on a web server), ``rtmp://``, ``udp://``... :func:`open_source` maps an input string to the right source
(:class:`LiveSource`, or :class:`~dff.engine.frames.FrameSource` for files and folders).

Why a one-slot buffer instead of a queue: a live source does not wait for the detector. When detection is
slower than the source, a queue would grow without bound and every result would arrive later than the one
before. Here the reader thread keeps decoding at the source's rate and each new frame *replaces* the one
the consumer has not taken yet (that frame is dropped and counted); the consumer always gets the newest
frame. The latency from capture to result stays bounded by about one detection plus one frame period,
and memory is constant.

A connection that drops (the read fails or times out) is reopened with exponential back-off
(:class:`Backoff`), reported through ``on_event``; after the last failed try the source ends with
:class:`SourceLost`. A source that cannot be opened at all is :class:`SourceOpenError` at construction,
with a one-line reason (no such camera, connection refused, unknown host, no stream at that address).
"""
from __future__ import annotations

import collections
import dataclasses
import os
import re
import socket
import sys
import threading
import time
import urllib.parse
from typing import Callable, Iterator, Protocol

import cv2
import numpy as np

from dff.engine.frames import Frame, FrameSource, VideoReadError

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_CAMERA = re.compile(r"^cam:(\d+)$")
# the schemes whose server the open-failure diagnosis may try a TCP connection to, with their default ports
_TCP_PORTS = {"http": 80, "https": 443, "rtsp": 554, "rtsps": 322, "rtmp": 1935, "tcp": None}


class SourceOpenError(VideoReadError):
    """A camera or stream that cannot be opened; the message names it and says why, on one line."""


class SourceLost(VideoReadError):
    """A live source that dropped and did not come back within the reconnect tries."""


class Capture(Protocol):
    """What a live source reads from: ``cv2.VideoCapture`` (tests pass fakes)."""

    def read(self) -> tuple[bool, np.ndarray | None]: ...

    def release(self) -> None: ...


@dataclasses.dataclass(frozen=True)
class Backoff:
    """When to retry a dropped connection: ``tries`` attempts, waiting ``first`` seconds before the first and
    ``factor`` times longer before each next one, at most ``cap`` seconds. ``tries=0``: no reconnecting, the
    end of the stream ends the source (a clean end). The defaults wait 0.5, 1, 2, 4, 8, then 10 s, about a
    minute in all: long enough for a camera or a server to restart."""

    tries: int = 10
    first: float = 0.5
    factor: float = 2.0
    cap: float = 10.0

    def delays(self) -> Iterator[float]:
        delay = self.first
        for _ in range(self.tries):
            yield min(delay, self.cap)
            delay *= self.factor


def camera_index(spec: str) -> int | None:
    """``"cam:N"`` -> N, anything else -> None."""
    m = _CAMERA.match(spec)
    return int(m.group(1)) if m else None


def is_live(spec: str) -> bool:
    """A camera (``cam:N``) or a URL (``scheme://...``), unless a file or folder of that name exists."""
    if os.path.exists(spec):
        return False
    return camera_index(spec) is not None or bool(_URL.match(spec))


def redact(spec: str) -> str:
    """The input for messages, without a password a URL may carry (``rtsp://user:pass@host/...``)."""
    if not _URL.match(spec):
        return spec
    u = urllib.parse.urlsplit(spec)
    if u.password is None:
        return spec
    host = u.netloc.rsplit("@", 1)[1]
    return urllib.parse.urlunsplit(u._replace(netloc=f"{u.username}:***@{host}"))


def open_capture(spec: str, timeout: float = 10.0) -> cv2.VideoCapture | None:
    """Open a camera or a stream with OpenCV; None when it does not open.

    Streams go through the FFmpeg backend with open and read timeouts, so that a server that stops sending
    makes ``read`` fail after ``timeout`` seconds (a dropped connection) instead of blocking forever."""
    cam = camera_index(spec)
    if cam is not None:
        cap = cv2.VideoCapture(cam)
        if cap.isOpened():
            # a camera driver queues several frames by default; the reader drains it anyway, but one buffer
            # keeps the frame it hands out as fresh as the driver allows
            cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
    else:
        ms = max(1, int(timeout * 1000))
        cap = cv2.VideoCapture(spec, cv2.CAP_FFMPEG,
                               [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms])
    if not cap.isOpened():
        cap.release()
        return None
    return cap


def explain_open_failure(spec: str, timeout: float = 10.0) -> str:
    """Why ``spec`` does not open, in a few words (OpenCV only says that it did not): for a camera whether
    the device exists; for a TCP-based URL what a plain connection to its server does."""
    cam = camera_index(spec)
    if cam is not None:
        device = f"/dev/video{cam}"
        if sys.platform.startswith("linux") and not os.path.exists(device):
            return f"no camera {cam} ({device} does not exist)"
        return f"camera {cam} does not open (busy, no permission, or not a capture device)"
    u = urllib.parse.urlsplit(spec)
    scheme = u.scheme.lower()
    try:
        port = u.port or _TCP_PORTS.get(scheme)
    except ValueError:
        return f"invalid port in {redact(spec)}"
    if scheme in _TCP_PORTS and u.hostname and port:
        where = f"{u.hostname}:{port}"
        try:
            socket.create_connection((u.hostname, port), timeout=min(timeout, 5.0)).close()
        except socket.gaierror:
            return f"unknown host {u.hostname!r}"
        except ConnectionRefusedError:
            return f"connection refused by {where} (nothing listening there?)"
        except (socket.timeout, TimeoutError):
            return f"no answer from {where} within {min(timeout, 5.0):g} s"
        except OSError as e:
            return f"cannot connect to {where}: {e.strerror or e}"
        return (f"{where} accepts connections but sent no video stream OpenCV's FFmpeg backend reads within "
                f"{timeout:g} s (wrong path, not a video, or a login needed?)")
    return f"no video stream OpenCV's FFmpeg backend reads within {timeout:g} s"


class LatestFrame:
    """A one-slot buffer between a reader thread and a consumer.

    :meth:`put` replaces the frame the consumer has not taken yet (counted in :attr:`dropped`);
    :meth:`take` returns the newest frame. After :meth:`finish`, the frame still in the slot is handed out,
    then :attr:`done` is true and :attr:`error` says whether the end was a failure.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._frame: Frame | None = None
        self._finished = False
        self.error: BaseException | None = None
        self.received = 0  # frames put
        self.delivered = 0  # frames taken
        self.dropped = 0  # frames replaced before they were taken

    def put(self, frame: Frame) -> None:
        with self._cond:
            if self._frame is not None:
                self.dropped += 1
            self._frame = frame
            self.received += 1
            self._cond.notify_all()

    def finish(self, error: BaseException | None = None) -> None:
        """No more frames; ``error`` when the source failed. Only the first call counts."""
        with self._cond:
            if not self._finished:
                self._finished, self.error = True, error
            self._cond.notify_all()

    def take(self, timeout: float) -> Frame | None:
        """The newest frame, waiting up to ``timeout`` seconds; None on time-out or when :attr:`done`."""
        with self._cond:
            self._cond.wait_for(lambda: self._frame is not None or self._finished, timeout)
            frame, self._frame = self._frame, None
            if frame is not None:
                self.delivered += 1
            return frame

    def peek(self, timeout: float) -> Frame | None:
        """Like :meth:`take`, but the frame stays in the slot."""
        with self._cond:
            self._cond.wait_for(lambda: self._frame is not None or self._finished, timeout)
            return self._frame

    @property
    def done(self) -> bool:
        with self._cond:
            return self._finished and self._frame is None


@dataclasses.dataclass
class LiveStats:
    """A snapshot of a live source's counters."""

    received: int  # frames read from the source
    delivered: int  # frames handed to the consumer
    dropped: int  # frames replaced by a newer one before the consumer took them
    disconnects: int  # times the connection dropped (or the stream ended)
    reconnects: int  # times it was reopened
    state: str  # "running", "reconnecting", "ended", "lost" or "stopped"
    last_event: str  # the last connection message, "" before any


class LiveSource:
    """Iterate the frames of a camera or a network stream, newest first: frames that arrive while the consumer
    is busy replace each other (drop-oldest), so the consumer never falls behind the source.

    Args:
        spec: ``"cam:N"`` or a URL OpenCV's FFmpeg backend opens.
        prepare: optional function ``image -> object`` run on the frames handed out (in the consumer's thread,
            so no time goes into preparing frames that are then dropped).
        max_frames: stop after handing out this many frames (None: until the stream ends or stops).
        backoff: how a dropped connection is retried (:class:`Backoff`; default: the defaults).
        timeout: seconds to wait for a stream to open, and for a frame before the connection counts as dropped.
        stop: an event that ends the iteration when set (e.g. by a signal handler: only ``is_set`` is read
            from the consumer's thread, which never blocks).
        on_event: called with a one-line message when the connection drops and when it comes back
            (from the reader thread).
        opener: ``() -> Capture | None`` that opens the source (default :func:`open_capture`; tests pass fakes).

    Raises :class:`SourceOpenError` when the source does not open. Iterating raises :class:`SourceLost` when
    the connection dropped and the reconnect tries ran out; a stream that ends with ``Backoff(tries=0)`` is a
    clean end. After the iteration, :attr:`end` says why it ended: ``"ended"``, ``"lost"``, ``"stopped"``
    (``stop`` was set) or ``"max_frames"``. A source is iterated once.
    """

    poll = 0.1  # seconds between looks at ``stop`` while waiting for a frame

    def __init__(self, spec: str, prepare: Callable[[np.ndarray], object] | None = None,
                 max_frames: int | None = None, backoff: Backoff | None = None, timeout: float = 10.0,
                 stop: threading.Event | None = None, on_event: Callable[[str], None] | None = None,
                 opener: Callable[[], Capture | None] | None = None) -> None:
        self.spec = spec
        self.name = redact(spec)
        self.prepare = prepare
        self.max_frames = max_frames
        self.backoff = backoff if backoff is not None else Backoff()
        self.timeout = timeout
        self.end: str | None = None
        self._stop = stop if stop is not None else threading.Event()
        self._on_event = on_event
        self._opener = opener if opener is not None else (lambda: open_capture(spec, timeout))
        self._buffer = LatestFrame()
        self._closing = threading.Event()
        self._disconnects = self._reconnects = 0
        self._state = "running"
        self._events: collections.deque[str] = collections.deque(maxlen=16)
        cap = self._opener()
        if cap is None:
            what = "camera" if camera_index(spec) is not None else "stream"
            raise SourceOpenError(f"{self.name}: cannot open {what}: {explain_open_failure(spec, timeout)}")
        # the reader starts now and drains the source from the start: a source that is not read backs up
        # (a camera's driver queue, a server's socket) and its first frames would be old
        self._thread = threading.Thread(target=self._read, args=(cap,), name="dff-live", daemon=True)
        self._thread.start()

    # reader thread ---------------------------------------------------------------------------------
    def _read(self, cap: Capture | None) -> None:
        index = 0
        try:
            while cap is not None and not self._closing.is_set():
                ok, image = cap.read()
                if ok and image is not None:
                    self._buffer.put(Frame(index, f"frame_{index:06d}", image, None, time.time()))
                    index += 1
                    continue
                cap.release()
                cap = None if self._closing.is_set() else self._reopen(index)
        except Exception as e:  # hand the error to the consumer instead of dying silently
            self._buffer.finish(VideoReadError(f"{self.name}: {e}"))
        finally:
            if cap is not None:
                cap.release()
            self._buffer.finish(None)  # no-op when already finished

    def _event(self, message: str) -> None:
        self._events.append(message)
        if self._on_event is not None:
            self._on_event(message)

    def _reopen(self, frames: int) -> Capture | None:
        """After a failed read: reopen with back-off. None when the source ends (the buffer is finished)."""
        self._disconnects += 1
        b = self.backoff
        if b.tries <= 0:
            self._state = "ended"
            self._buffer.finish(None)
            return None
        self._state = "reconnecting"
        self._event(f"{self.name}: connection lost after {frames} frames; reconnecting "
                    f"(up to {b.tries} tries, {b.first:g} s back-off doubling to {b.cap:g} s)")
        t0 = time.monotonic()
        for attempt, delay in enumerate(b.delays(), 1):
            if self._closing.wait(delay):
                return None
            cap = self._opener()
            if cap is not None:
                self._reconnects += 1
                self._state = "running"
                self._event(f"{self.name}: reconnected after {time.monotonic() - t0:.1f} s "
                            f"({attempt} {'try' if attempt == 1 else 'tries'})")
                return cap
        self._state = "lost"
        why = explain_open_failure(self.spec, self.timeout)
        message = (f"{self.name}: connection lost after {frames} frames and not back after {b.tries} reconnect "
                   f"tries over {time.monotonic() - t0:.1f} s ({why})")
        self._event(message)
        self._buffer.finish(SourceLost(message))
        return None

    # consumer --------------------------------------------------------------------------------------
    def stats(self) -> LiveStats:
        b = self._buffer
        state = "stopped" if self.end == "stopped" else self._state
        return LiveStats(b.received, b.delivered, b.dropped, self._disconnects, self._reconnects, state,
                         self._events[-1] if self._events else "")

    def _ended(self) -> bool:
        """After an empty wait: whether the source has ended (raises :class:`SourceLost` if it failed)."""
        if not self._buffer.done:
            return False
        if self._buffer.error is not None:
            self.end = "lost"
            raise self._buffer.error
        self.end = "ended"
        return True

    def first_frame(self) -> Frame | None:
        """Wait for the first frame and return it without taking it (a warm-up); None if stopped or ended first."""
        while not self._stop.is_set():
            frame = self._buffer.peek(self.poll)
            if frame is not None:
                return frame
            if self._ended():
                return None
        self.end = "stopped"
        return None

    def __iter__(self) -> Iterator[Frame]:
        try:
            count = 0
            while self.max_frames is None or count < self.max_frames:
                if self._stop.is_set():
                    self.end = "stopped"
                    return
                frame = self._buffer.take(self.poll)
                if frame is None:
                    if self._ended():
                        return
                    continue
                if self.prepare is not None:
                    frame.prepared = self.prepare(frame.image)
                count += 1
                yield frame
            self.end = "max_frames"
        finally:
            self.close()

    def close(self, wait: float = 2.0) -> None:
        """Stop the reader. It may be inside a blocking read (at most ``timeout`` seconds); waits ``wait``
        seconds for it, then leaves it to finish on its own (a daemon thread that releases its capture)."""
        self._closing.set()
        if self._thread is not threading.current_thread():
            self._thread.join(wait)


def open_source(spec: str, prepare: Callable[[np.ndarray], object] | None = None, max_frames: int | None = None,
                *, on_error: str = "raise", backoff: Backoff | None = None, timeout: float = 10.0,
                stop: threading.Event | None = None,
                on_event: Callable[[str], None] | None = None) -> FrameSource | LiveSource:
    """The frame source for an input string: ``cam:N`` or a URL -> :class:`LiveSource` (``backoff``, ``timeout``,
    ``stop``, ``on_event`` apply); a video file, a frame folder -> :class:`~dff.engine.frames.FrameSource`
    (``on_error`` applies). A file or folder that exists wins over the same string read as a camera or URL."""
    if is_live(spec):
        return LiveSource(spec, prepare, max_frames, backoff=backoff, timeout=timeout, stop=stop, on_event=on_event)
    return FrameSource(spec, prepare=prepare, max_frames=max_frames, on_error=on_error)
