"""Streaming evaluation: each validation video played as a live stream, scored as its user sees it.

    python tools/evaluate_streaming.py data/models/dff_mobile_synthetic.pth --dataset-path data/synthetic_vid_val40 --fps 30 --async-keys --json OUT
    python tools/evaluate_streaming.py data/models/rfcn_mobile_synthetic.pth --dataset-path D --fps 30 --replay

Frame i arrives at i / fps; the detector takes the newest frame whenever it is free; the ground truth of frame
i is scored against the latest output finished by i / fps ("Towards Streaming Perception", Li et al., ECCV
2020; docs/benchmarks.md). Prints and writes (--json) the streaming mAP over the classes present, the offline
mAP of the same configuration, COCO AP, and the latency p50 / p95 / p99 from arrival to output.
--replay measures each step's runtime once (or reads --timings) and simulates the schedule on a virtual clock.
"""
from __future__ import annotations

import argparse
import sys

from dff.apps.cli import add_fast_option, add_schedule_option, add_set_option
from dff.apps.streaming import run_evaluate_streaming


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="a native checkpoint that carries its config")
    ap.add_argument("--dataset-path", default=None, help="an ILSVRC2015-style root (default: the checkpoint config's)")
    ap.add_argument("--fps", type=float, default=30.0, help="the stream's frame rate (default %(default)s)")
    ap.add_argument("--key-interval", type=int, default=None, help="default: the config's TEST.KEY_FRAME_INTERVAL")
    ap.add_argument("--async-keys", action="store_true",
                    help="compute key frames on a worker beside the non-key frames (docs/live.md)")
    ap.add_argument("--threads", type=int, default=None, help="CPU cores to use (default: PyTorch's count)")
    ap.add_argument("--key-threads", type=int, default=None,
                    help="--async-keys: the key worker's share of --threads (default half, the rest to the non-key path)")
    ap.add_argument("--replay", action="store_true",
                    help="simulate the schedule from measured step runtimes (deterministic for a given --seed)")
    ap.add_argument("--timings", default=None, metavar="FILE",
                    help="--replay: the runtimes a real-time run saved with --save-timings (default: measure them "
                         "now, in real time over the first --calibrate-videos videos)")
    ap.add_argument("--calibrate-videos", type=int, default=10)
    ap.add_argument("--key-latency-ms", type=float, default=None,
                    help="--replay --async-keys: every key lands this long after it is requested (0: at once, which "
                         "gives the synchronous results)")
    ap.add_argument("--save-timings", default=None, metavar="FILE", help="a real-time run: write its step runtimes")
    ap.add_argument("--seed", type=int, default=0, help="--replay: the draws' seed")
    ap.add_argument("--max-videos", type=int, default=None)
    ap.add_argument("--records", default=None, metavar="FILE",
                    help="write one JSON line per processed frame (video, index, arrival, start, finish, key_index)")
    ap.add_argument("--out", default=None, help="the evaluation folder (default: a temporary one)")
    ap.add_argument("--json", default=None, help="write the result object here")
    ap.add_argument("--quiet", action="store_true")
    add_schedule_option(ap)
    add_set_option(ap, "TEST.KEY_FRAME_INTERVAL=5", "of the checkpoint's config")
    add_fast_option(ap)
    return run_evaluate_streaming(ap.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
