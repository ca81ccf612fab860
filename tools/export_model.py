"""Export trained weights for distribution: the inference checkpoint, optionally in half precision.

    python tools/export_model.py output/.../dff_rfcn_vid-0006.pth data/models/dff_rfcn_synthetic_tiny.pth --half

Half precision halves the file (the embedded models must stay a few MB); the loader casts back to the
model's dtype. The config the model was trained with is kept, so the demos rebuild the same network.
"""
from __future__ import annotations

import argparse
import sys

from dff.utils.checkpoint import CheckpointError, export_checkpoint


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src", help="a native inference checkpoint (<prefix>-NNNN.pth)")
    ap.add_argument("dst")
    ap.add_argument("--half", action="store_true", help="store floating-point tensors as float16")
    args = ap.parse_args(argv)
    try:
        n = export_checkpoint(args.src, args.dst, args.half)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.dst}: {n:,} numbers{' in float16' if args.half else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
