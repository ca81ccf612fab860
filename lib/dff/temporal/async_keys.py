"""Asynchronous key frames: the next key frame's feature is computed beside the non-key frames.

DFF's speed is an average; a live stream feels the worst frame, and with synchronous key frames that is every
key frame (the feature network costs several non-key frames). But a non-key frame can be served from *any*
earlier key frame: FlowNet estimates the motion from whichever key image it is given. So when a key frame is
due (the fixed interval, or THP's adaptive rule fires), :class:`AsyncKeyFrameLoop` hands it to a key worker
and serves that frame, and the frames that arrive meanwhile, from the previous key frame. When the new key
lands it replaces the old one, and the next frame is warped from it. Key-frame aggregation (THP's recursion,
the mobile paper's ConvGRU) runs in the worker, against the reference the key was requested from.

Memory is bounded: at most one key in flight, so at most two key features are held (the reference and the
one being computed). A result's ``key_index`` and ``age`` say which key frame it came from.

The key workers (:class:`KeyWorker`):

* :class:`ThreadKeys` -- real time: one thread with its own share of the CPU cores (PyTorch's intra-op
  thread count is per thread) and, on a GPU, its own CUDA stream;
* :class:`SimulatedKeys` -- replay: the key is computed at once but lands when a (simulated) clock has passed
  its latency; a latency of 0 lands it before the frame is served, which gives exactly the synchronous loop's
  results (the test of this module's logic).
"""
from __future__ import annotations

import concurrent.futures
import functools
import time
from typing import Callable, Protocol

import torch
from torch import Tensor

from dff.temporal.base import KeyFrame, KeyFrameLoop, LoopOptions, Stages, StepInfo

__all__ = ["AsyncKeyFrameLoop", "KeyWorker", "SimulatedKeys", "ThreadKeys", "key_worker", "split_threads"]


class KeyWorker(Protocol):
    """Computes one key frame at a time (:meth:`KeyFrameLoop.key_frame` jobs)."""

    @property
    def busy(self) -> bool: ...  # a key is in flight
    def submit(self, job: Callable[[], KeyFrame]) -> None: ...
    def poll(self) -> KeyFrame | None: ...  # the landed key, once; None while in flight or idle
    def run_now(self, job: Callable[[], KeyFrame]) -> KeyFrame: ...  # in the caller, nothing in flight
    def cancel(self) -> None: ...  # forget the key in flight (waits for it: memory stays bounded)
    def close(self) -> None: ...


def split_threads(total: int | None = None, worker: int | None = None) -> tuple[int, int]:
    """(non-key path, key worker) intra-op threads out of ``total`` cores (default: PyTorch's current count):
    ``worker`` for the key worker (default half), the rest, at least one, to the non-key path, whose latency
    every frame feels (docs/benchmarks.md measures the splits of 2 cores)."""
    total = torch.get_num_threads() if total is None else int(total)
    worker = max(1, total // 2) if worker is None else int(worker)
    return max(1, total - worker), worker


def key_worker(device: str | torch.device = "cpu", threads: int | None = None,
               worker_threads: int | None = None) -> ThreadKeys:
    """The real-time key worker for ``device``: on the CPU the cores are split (:func:`split_threads` of
    ``threads`` and ``worker_threads``) and the calling thread keeps its share (``torch.set_num_threads``)."""
    device = torch.device(device)
    if device.type == "cuda":
        return ThreadKeys(None, device)
    own, worker = split_threads(threads, worker_threads)
    torch.set_num_threads(own)
    return ThreadKeys(worker, device)


class SimulatedKeys:
    """A key worker on a clock: the job runs at once (its result is exact) and lands when ``clock()`` has
    passed the submit time plus ``latency()`` seconds. ``latency`` returning 0 lands it at once."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter,
                 latency: Callable[[], float] = lambda: 0.0) -> None:
        self.clock = clock
        self.latency = latency
        self._key: KeyFrame | None = None
        self._ready_at = 0.0
        self.durations: list[float] = []  # the simulated latency of each key

    @property
    def busy(self) -> bool:
        return self._key is not None

    def submit(self, job: Callable[[], KeyFrame]) -> None:
        if self.busy:
            raise RuntimeError("a key frame is already in flight")
        start = self.clock()
        with torch.inference_mode():
            self._key = job()
        delay = float(self.latency())
        self._ready_at = start + delay
        self.durations.append(delay)

    def run_now(self, job: Callable[[], KeyFrame]) -> KeyFrame:
        self.cancel()
        return job()

    def poll(self) -> KeyFrame | None:
        if self._key is None or self.clock() < self._ready_at:
            return None
        key, self._key = self._key, None
        return key

    def cancel(self) -> None:
        self._key = None

    close = cancel


class ThreadKeys:
    """Real time: key frames computed on one background thread with ``threads`` intra-op threads (None: leave
    PyTorch's count) and, for a CUDA ``device``, on a stream of its own, so the key frame's kernels interleave
    with the non-key frames' instead of stalling them. An error in the worker is raised by :meth:`poll`."""

    def __init__(self, threads: int | None = None, device: str | torch.device = "cpu") -> None:
        self.threads = threads
        self.device = torch.device(device)
        self._stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="dff-key", initializer=self._init)
        self._future: concurrent.futures.Future | None = None
        self.durations: list[float] = []  # wall seconds of each landed key, in the worker

    def _init(self) -> None:
        if self.threads is not None:
            torch.set_num_threads(self.threads)  # this thread's count: the caller's stays as it is

    @property
    def busy(self) -> bool:
        return self._future is not None

    def submit(self, job: Callable[[], KeyFrame]) -> None:
        if self.busy:
            raise RuntimeError("a key frame is already in flight")
        ready = None
        if self._stream is not None:  # the key's input was queued on the caller's stream
            ready = torch.cuda.Event()
            ready.record()
        self._future = self._pool.submit(self._run, job, ready)

    def _run(self, job: Callable[[], KeyFrame], ready: torch.cuda.Event | None) -> tuple[KeyFrame, object]:
        start = time.perf_counter()
        with torch.inference_mode():
            if self._stream is None:
                key = job()
                key.seconds = time.perf_counter() - start
                return key, None
            with torch.cuda.stream(self._stream):
                self._stream.wait_event(ready)
                key = job()
                done = torch.cuda.Event()
                done.record(self._stream)
        done.synchronize()
        key.seconds = time.perf_counter() - start
        return key, done

    def run_now(self, job: Callable[[], KeyFrame]) -> KeyFrame:
        """A key frame in the caller's thread (a stream's first: no frame can be served meanwhile), with the
        idle worker's cores added to the caller's."""
        self.cancel()
        if self.threads is None or self.device.type == "cuda":
            return job()
        own = torch.get_num_threads()
        torch.set_num_threads(own + self.threads)
        try:
            return job()
        finally:
            torch.set_num_threads(own)

    def poll(self) -> KeyFrame | None:
        if self._future is None or not self._future.done():
            return None
        future, self._future = self._future, None
        key, done = future.result()
        if done is not None:  # the caller's stream uses the worker's tensors from now on
            stream = torch.cuda.current_stream(self.device)
            stream.wait_event(done)
            for t in (key.data, key.feat, key.backbone):
                if isinstance(t, Tensor) and t.is_cuda:
                    t.record_stream(stream)
        self.durations.append(key.seconds)
        return key

    def cancel(self) -> None:
        future, self._future = self._future, None
        if future is not None and not future.cancel():
            concurrent.futures.wait([future])  # at most one key's time; its tensors are then dropped

    def close(self) -> None:
        self.cancel()
        self._pool.shutdown(wait=True)


class AsyncKeyFrameLoop(KeyFrameLoop):
    """The key-frame loop with the key frames' features computed by ``keys`` (:class:`KeyWorker`) while the
    frames are served from the newest key that has landed.

    The key frame is requested when the schedule says so (the reference is ``cap`` frames old, less the frames the
    last key took to land; or THP's Eq. 9 on the frame's Q) and no key is in flight; the frame itself is served
    from the previous key.
    A frame with no key frame to warp from (a video's first, a change of size) is computed here, as in the
    synchronous loop. With a worker that lands keys at once the results are the synchronous loop's.
    """

    def __init__(self, stages: Stages, options: LoopOptions, interval: int,
                 clock: Callable[[], float] = time.perf_counter, keep_masks: bool = False, with_q: bool = False, *,
                 keys: KeyWorker) -> None:
        self.keys = keys
        super().__init__(stages, options, interval, clock, keep_masks, with_q)
        if not self.keeps_reference:
            raise ValueError("asynchronous key frames need a model with a flow network run at a key interval > 1 "
                             "(or THP's options): with a key frame on every frame there is nothing to serve from")

    def reset(self) -> None:
        self.keys.cancel()
        super().reset()
        self._lead = 0

    def _land(self, data: Tensor, index: int) -> None:
        key = self.keys.poll()
        if key is not None and key.data.shape == data.shape:
            self._set_reference(key)
            self._lead = index - key.index  # frames the key took: the next is requested that much earlier

    def step(self, data: Tensor, times: dict, index: int | None = None) -> tuple[Tensor, StepInfo]:
        o = self.options
        index = self._index(index)
        self._land(data, index)
        t = self.clock()
        if not self._has_ref(data):  # nothing to serve from: this frame waits for its own key frame
            key = self.keys.run_now(functools.partial(self.key_frame, data, index, None, times=times))
            self._set_reference(key)
            return key.feat, StepInfo(True, key_index=index)
        flow = scale = q = None
        low = 0.0
        # the fixed schedule bounds the served feature's age: a key is due when the reference is ``cap`` frames
        # old, less the frames the last key took to land, so that the new key lands about when the old one is due
        due = index - self._ref.index >= self.cap - min(self._lead, self.cap - 1)
        if not due and not self.keys.busy:
            flow, scale, q, low, t = self._flow(data, times, t)
            due = o.schedule == "adaptive" and low > o.gamma
        if due and not self.keys.busy:
            self.keys.submit(functools.partial(self.key_frame, data, index, self._ref, flow, scale))
            key = self.keys.poll()
            if key is not None:  # landed at once: the frame is its own key frame
                self._set_reference(key)
                self._lead = 0
                times["feature"] += key.seconds
                return key.feat, StepInfo(True, key_index=index)
            t = self.clock()
        if flow is None:
            flow, scale, q, low, t = self._flow(data, times, t)
        return self._non_key(data, index, times, t, flow, scale, q, low)

