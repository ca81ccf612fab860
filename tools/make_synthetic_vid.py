"""Generate a synthetic mini ImageNet VID (ILSVRC2015 layout, with ground-truth optical flow).

    python tools/make_synthetic_vid.py --out data/synthetic/ILSVRC2015 [--train-videos 20] [--val-videos 4]
        [--frames 30] [--min-frames N] [--height 160] [--width 256] [--seed 0]
        [--classes ellipse,box,triangle,star,ring] [--det-images 12] [--max-objects 3] [--format vid|cocovid|cityscapes]
        [--degradations none|vid] [--degraded-fraction 1.0]

The classes are the shapes drawn (``classes.txt``; one of ellipse, box, triangle, star, ring, diamond, cross,
hexagon each). The result is read by ``dff.dataset.imagenet_vid.ImageNetVID`` like the real dataset (set
``dataset.dataset_path`` to OUT); ``--format cocovid`` also writes a COCO-video file per list (``OUT/<list>.json``,
read with ``dataset.format: cocovid``); ``dff.dataset.synthetic.SyntheticVID(OUT).gt_flow(video, cur, key)``
gives the exact backward flow between any two frames of a video. The same arguments give the same bytes;
a previous synthetic dataset in OUT is replaced, any other data there is left alone (error).

``--degradations vid`` records the frames as real video looks (``dff.dataset.degrade``, docs/design.md §13): motion
blur from the exposure (sub-frames of the same scene, so it follows each layer's true motion), defocus episodes,
sensor noise, brightness flicker and a varying JPEG quality. The scene and the annotations are those of the same
seed without it. ``--degraded-fraction F`` degrades each video and DET image with probability F (a clean and
degraded mix for training).
"""
from __future__ import annotations

import argparse
import sys
import time

from dff.dataset.degrade import NONE, PRESETS
from dff.dataset.synthetic import SynthConfig, generate


def main(argv: list[str] | None = None) -> int:
    d = SynthConfig()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="output ILSVRC2015-style directory")
    ap.add_argument("--train-videos", type=int, default=d.train_videos)
    ap.add_argument("--val-videos", type=int, default=d.val_videos)
    ap.add_argument("--frames", type=int, default=d.frames, help="frames per video (the maximum with --min-frames)")
    ap.add_argument("--min-frames", type=int, default=None, help="draw each video's length in [min-frames, frames]")
    ap.add_argument("--height", type=int, default=d.height)
    ap.add_argument("--width", type=int, default=d.width)
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument("--classes", default=",".join(d.classes),
                    help="comma-separated shapes, each a class named after it (default %(default)s)")
    ap.add_argument("--format", choices=("vid", "cocovid", "cityscapes"), default="vid",
                    help="vid: the ILSVRC2015 layout; cocovid: also a COCO-video JSON per list; cityscapes: the "
                         "Cityscapes video layout with per-pixel class labels (segmentation; no DET images)")
    ap.add_argument("--seg-train-label-every", type=int, default=d.seg_train_label_every,
                    help="cityscapes: label every N-th frame of the train snippets (default: the 20th only, as Cityscapes)")
    ap.add_argument("--det-images", type=int, default=d.det_images, help="still DET images")
    ap.add_argument("--max-objects", type=int, default=d.max_objects, help="objects per video/image (1..N)")
    ap.add_argument("--jpeg-quality", type=int, default=d.jpeg_quality)
    ap.add_argument("--motion", type=float, default=d.motion,
                    help="multiplier of all motion (default %(default)s; 0.35 gives a VID-like slow/medium/fast mix)")
    ap.add_argument("--degradations", choices=(NONE, *PRESETS), default=d.degradations,
                    help="vid: motion blur of the exposure, defocus episodes, noise, flicker, varying JPEG quality "
                         "(default %(default)s: sharp frames)")
    ap.add_argument("--degraded-fraction", type=float, default=d.degraded_fraction,
                    help="with --degradations: the chance that a video / DET image is degraded (default %(default)s)")
    args = ap.parse_args(argv)
    cfg = SynthConfig(seed=args.seed, train_videos=args.train_videos, val_videos=args.val_videos,
                      frames=args.frames, min_frames=args.min_frames, height=args.height, width=args.width,
                      classes=tuple(c.strip() for c in args.classes.split(",") if c.strip()),
                      max_objects=args.max_objects, det_images=args.det_images, jpeg_quality=args.jpeg_quality,
                      motion=args.motion, seg_train_label_every=args.seg_train_label_every,
                      degradations=args.degradations, degraded_fraction=args.degraded_fraction)
    try:
        cfg.validate()
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    t0 = time.time()
    try:
        counts = generate(args.out, cfg, args.format)
    except FileExistsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{args.out}: " + ", ".join(f"{k} {v}" for k, v in counts.items()) + f" ({time.time() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
