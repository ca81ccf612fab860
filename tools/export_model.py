"""Export trained weights for distribution: the inference checkpoint, optionally in half precision.

    python tools/export_model.py output/.../dff_rfcn_vid-0006.pth data/models/dff_rfcn_synthetic_tiny.pth --half

Half precision halves the file (the embedded models must stay a few MB); the loader casts back to the
model's dtype. The config the model was trained with is kept, so the demos rebuild the same network;
``--set TEST.RPN_PRE_NMS_TOP_N=300 ...`` changes its test-time settings (keys that shape the network are refused).
"""
from __future__ import annotations

import argparse
import sys

from dff.apps.cli import add_set_option
from dff.config import MODEL_KEYS, ConfigError, config_from_dict, parse_overrides, update_config
from dff.utils.checkpoint import CheckpointError, checkpoint_config, export_checkpoint


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src", help="a native inference checkpoint (<prefix>-NNNN.pth)")
    ap.add_argument("dst")
    ap.add_argument("--half", action="store_true", help="store floating-point tensors as float16")
    add_set_option(ap, "TEST.RPN_PRE_NMS_TOP_N=300", "of the stored config (test-time keys only)")
    args = ap.parse_args(argv)
    try:
        config = None
        if args.set:
            saved = checkpoint_config(args.src)
            if saved is None:
                raise CheckpointError(f"{args.src}: carries no config for --set to change")
            cfg = config_from_dict(saved, f"{args.src} (its config)")
            update_config(cfg, parse_overrides(args.set), "--set", fixed=MODEL_KEYS)
            config = cfg.to_dict()
        n = export_checkpoint(args.src, args.dst, args.half, config)
    except (CheckpointError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.dst}: {n:,} numbers{' in float16' if args.half else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
