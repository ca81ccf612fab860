"""What a demo run reports, in constant memory: running statistics, latency percentiles, JSON lines.

A live run may last for days, so nothing here keeps a per-frame list: the summary is running sums, and
the latency percentiles come from a fixed log-spaced histogram (0.5 % resolution).
The JSON lines follow ``docs/frame_result.schema.json`` (one object per processed frame).
"""
from __future__ import annotations

import collections
import json
import math
import os
import resource
import sys
import time
from typing import IO, Sequence

import numpy as np

from dff.api import frame_record  # noqa: F401  (moved to dff.api, the layer below; kept importable here)
from dff.engine.video import STAGES, FrameResult


def peak_rss_mb() -> float:
    """The process's peak resident memory so far (MB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def current_rss_mb() -> float:
    """The process's resident memory now (MB; the peak where ``/proc`` is missing)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return peak_rss_mb()


class LatencyHistogram:
    """Latencies in log-spaced bins from 0.1 ms to 1000 s, 1 % wide: percentiles over any run length in a
    fixed 13 KB (a bin's centre is within 0.5 % of every value in it)."""

    LOW, HIGH, STEP = 1e-4, 1e3, 1.01

    def __init__(self) -> None:
        self._bins = int(math.ceil(math.log(self.HIGH / self.LOW) / math.log(self.STEP))) + 1
        self._counts = np.zeros(self._bins, dtype=np.int64)
        self.count = 0
        self.max = 0.0

    def add(self, seconds: float) -> None:
        s = min(max(seconds, self.LOW), self.HIGH)
        self._counts[int(math.log(s / self.LOW) / math.log(self.STEP))] += 1
        self.count += 1
        self.max = max(self.max, seconds)

    def percentile(self, q: float) -> float:
        """The ``q``-th percentile (0-100) in seconds; NaN before the first value."""
        if self.count == 0:
            return float("nan")
        rank = max(1, math.ceil(q / 100.0 * self.count))
        b = int(np.searchsorted(np.cumsum(self._counts), rank))
        return self.LOW * self.STEP ** (b + 0.5)


class RunStats:
    """Running totals of one run of the engine: frames, key frames, per-stage time, boxes drawn, latency."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.frames = 0
        self.key_frames = 0
        self.drawn = 0
        self.stage_s = dict.fromkeys(STAGES, 0.0)
        self.net_s = 0.0
        self.latency = LatencyHistogram()
        self.recent: collections.deque[tuple[float, float]] = collections.deque(maxlen=32)  # (done, latency)
        self.started = time.perf_counter()
        self.wall = 0.0

    def add(self, r: FrameResult, drawn: int, latency: float) -> None:
        self.frames += 1
        self.key_frames += int(r.is_key)
        self.drawn += drawn
        for s in STAGES:
            self.stage_s[s] += r.times[s]
        self.net_s += r.times["total"] - r.times["post"]
        self.latency.add(latency)
        self.recent.append((time.perf_counter(), latency))

    def finish(self) -> None:
        self.wall = time.perf_counter() - self.started

    def recent_fps(self) -> float:
        """Processed frames per second over the last few frames (0 before two)."""
        if len(self.recent) < 2:
            return 0.0
        span = self.recent[-1][0] - self.recent[0][0]
        return (len(self.recent) - 1) / span if span > 0 else 0.0

    def summary(self) -> dict:
        n = max(self.frames, 1)
        net = self.net_s / n
        return {
            "label": self.label,
            "frames": self.frames,
            "key_frames": self.key_frames,
            "net_ms": 1000 * net,
            "net_fps": 1.0 / net if net > 0 else float("inf"),
            "stage_ms": {s: 1000 * t / n for s, t in self.stage_s.items()},
            "end_to_end_fps": self.frames / self.wall if self.wall > 0 else float("inf"),
            "drawn": self.drawn,
            "latency_p50_ms": 1000 * self.latency.percentile(50),
            "latency_p95_ms": 1000 * self.latency.percentile(95),
        }


def boxes_above(detections: Sequence[np.ndarray], thresh: float) -> int:
    """How many boxes (background excluded) score above ``thresh``."""
    return sum(int((np.asarray(d)[:, 4] > thresh).sum()) for d in detections[1:] if len(d))


class JsonLines:
    """One JSON object per line to a file, or to stdout for ``"-"``; every line is flushed as it is written, so a
    reader (``tail -f``, a pipe) sees each frame at once and a stopped run leaves only whole lines."""

    def __init__(self, path: str) -> None:
        self.path = path
        if path == "-":
            self._f: IO[str] = sys.stdout
        else:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            self._f = open(path, "w", encoding="utf-8")
        self.lines = 0

    def write(self, record: dict) -> None:
        self._f.write(json.dumps(record, separators=(",", ":")) + "\n")
        self._f.flush()
        self.lines += 1

    def close(self) -> None:
        if self._f is sys.stdout:
            self._f.flush()
        else:
            self._f.close()
