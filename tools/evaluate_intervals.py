"""Evaluate one trained model on its config's test set at several key-frame intervals.

    python tools/evaluate_intervals.py data/models/dff_rfcn_synthetic_tiny.pth --intervals 1,2,5,10,20

The checkpoint's own config is used (dataset path, scales); R-FCN checkpoints are always per-frame.
Prints the mAP over the classes present in the test set (and over all 30) and FGFA's motion breakdown.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

from dff.config import MODEL_KEYS, parse_overrides, update_config
from dff.eval.tester import TesterError, run_test_set
from dff.models.builder import load_model
from dff.utils.checkpoint import CheckpointError
from dff.utils.io import atomic_write_text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="a native checkpoint that carries its config")
    ap.add_argument("--intervals", default="1,10")
    ap.add_argument("--dataset-path", default=None,
                    help="evaluate on this ILSVRC2015-style root instead of the checkpoint config's dataset.dataset_path "
                         "(e.g. a larger synthetic validation set made with the same generator and seed)")
    ap.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                    help="override keys of the checkpoint's config, e.g. --set TEST.RPN_POST_NMS_TOP_N=100 "
                         "(values read as YAML; keys that shape the network cannot change)")
    ap.add_argument("--out", default=None, help="test outputs (default: a temporary folder)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    try:
        model, cfg = load_model(args.model)
        kind = model.kind
        if args.set:
            update_config(cfg, parse_overrides(args.set), "--set", fixed=MODEL_KEYS)
        if args.dataset_path:
            if not os.path.isdir(args.dataset_path):
                raise OSError(f"--dataset-path {args.dataset_path}: no such directory")
            update_config(cfg, {"dataset": {"dataset_path": args.dataset_path}}, source="--dataset-path")
        out = args.out or tempfile.mkdtemp(prefix="dff_eval_")
        rows = {}
        for k in [int(v) for v in args.intervals.split(",")] if kind == "dff" else [1]:
            r = run_test_set(model, cfg, kind=kind, output_dir=os.path.join(out, f"interval_{k}"), key_interval=k,
                             progress=False)
            rows[k] = {"mAP_present_classes": r["mAP_present_classes"], "mAP": r["mAP"],
                       "motion": {m: v.get("mAP") if isinstance(v, dict) else v for m, v in r.get("motion", {}).items()}}
            print(f"{kind} interval {k:>2}: mAP {r['mAP_present_classes']:.4f} (classes present), "
                  f"motion {json.dumps(rows[k]['motion'])}", flush=True)
    except (CheckpointError, TesterError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:

        atomic_write_text(args.json, json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
