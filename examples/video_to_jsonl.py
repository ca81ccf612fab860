"""Detect objects in a video file or a folder of frames; print one JSON line per frame (the demo's --json-out).

    python examples/video_to_jsonl.py [VIDEO_OR_FOLDER] [--out FILE] [--model PATH] [--max-frames N]

Without an input: a short synthetic clip, generated the way the demo does (the embedded model's input size).
"""
import argparse
import contextlib
import json
import os
import sys
import tempfile

import dff
from dff.apps.demo import synthetic_clip

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("input", nargs="?", help="video file or folder of frames (default: a synthetic clip)")
ap.add_argument("--out", default="-", help="JSON lines file (default: stdout)")
ap.add_argument("--model", default=None, help="checkpoint (default: the embedded mobile DFF model)")
ap.add_argument("--max-frames", type=int, default=None)
args = ap.parse_args()

try:
    with dff.load_detector(args.model) as det, tempfile.TemporaryDirectory() as tmp, \
            (contextlib.nullcontext(sys.stdout) if args.out == "-" else open(args.out, "w")) as out:
        source = args.input or synthetic_clip(tmp, frames=12, scales=det.cfg.SCALES[0])
        for frame in det.detect(source, max_frames=args.max_frames):
            print(json.dumps(frame.to_json(), separators=(",", ":")), file=out, flush=True)
except BrokenPipeError:  # the reader went away (| head): stop quietly
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
except (OSError, ValueError) as e:  # a missing model or input (dff.CheckpointError, dff.VideoReadError)
    sys.exit(f"error: {e}")
