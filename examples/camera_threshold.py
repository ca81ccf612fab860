"""Print the boxes scoring above --thresh on a camera or a stream, frame by frame (Ctrl-C stops).

    python examples/camera_threshold.py [cam:0 | rtsp://... | http://... | a video file] [--thresh 0.7]
"""
import argparse
import sys

import dff

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("source", nargs="?", default="cam:0", help="cam:N, a stream URL or a video file (default: cam:0)")
ap.add_argument("--thresh", type=float, default=0.7, help="score threshold (default: 0.7, the demo's --vis-thresh)")
ap.add_argument("--max-frames", type=int, default=None, help="stop after this many frames (default: never)")
args = ap.parse_args()

try:
    with dff.load_detector(thresh=args.thresh) as det:
        for frame in det.detect(args.source, max_frames=args.max_frames):
            boxes = "; ".join(f"{b.label} {b.score:.2f} {b.x1:.0f},{b.y1:.0f},{b.x2:.0f},{b.y2:.0f}"
                              for b in frame.boxes)
            print(f"{frame.name} {'key' if frame.is_key else 'non-key'} {boxes or '-'}", flush=True)
except dff.VideoReadError as e:  # the source does not open (no camera, a bad URL, no such file) or is lost
    sys.exit(f"error: {e}")
except KeyboardInterrupt:
    pass
