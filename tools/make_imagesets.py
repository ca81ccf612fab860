"""Generate the reference's ImageSets lists from a raw ILSVRC2015 download.

    python tools/make_imagesets.py --root data/ILSVRC2015 [--lists VID_train_15frames,VID_val_videos]
                                   [--out DIR] [--max-per-class N]

ROOT holds ``Data/{DET,VID}`` and ``Annotations/{DET,VID}``; the lists go to ``ROOT/ImageSets`` (or
``--out``): VID_train_15frames.txt, VID_val_videos.txt, VID_val_frames.txt, DET_train_30classes.txt.
Rules and their known differences from the reference's files: ``dff.dataset.imagesets``.
"""
from __future__ import annotations

import argparse
import os
import sys

from dff.dataset.imagesets import ALL_LISTS, make_imagesets


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", required=True, help="the ILSVRC2015 directory (with Data/ and Annotations/)")
    ap.add_argument("--lists", default=",".join(ALL_LISTS), help="comma-separated lists to write (default: all)")
    ap.add_argument("--out", default=None, help="output directory (default: ROOT/ImageSets)")
    ap.add_argument("--max-per-class", type=int, default=None,
                    help="cap DET images per class (evenly spaced; the reference's own subsampling is unknown)")
    args = ap.parse_args(argv)
    if not os.path.isdir(args.root):
        print(f"error: --root {args.root}: directory not found", file=sys.stderr)
        return 2
    lists = [x for x in args.lists.split(",") if x]
    try:
        counts = make_imagesets(args.root, lists, args.out, args.max_per_class)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for name, n in counts.items():
        print(f"{os.path.join(args.out or os.path.join(args.root, 'ImageSets'), name + '.txt')}: {n} lines")
    return 0


if __name__ == "__main__":
    sys.exit(main())
