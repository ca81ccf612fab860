"""Evaluate one trained model on its config's test set at several key-frame intervals.

    python tools/evaluate_intervals.py data/models/dff_rfcn_synthetic_tiny.pth --intervals 1,2,5,10,20
    python tools/evaluate_intervals.py data/models/thp_synthetic_tiny.pth --schedule adaptive --set TEST.THP_GAMMA=0.1 --json OUT

The checkpoint's own config is used (dataset path, scales); R-FCN checkpoints are always per-frame.
Prints the mAP over the classes present in the test set (the JSON also has ``mAP``, over all the model's
classes), FGFA's motion breakdown and the
feature network's share of the work (key frames, updated area, feature cost). ``--schedule fixed,adaptive``
evaluates both; without it, the checkpoint config's TEST.KEY_FRAME_SCHEDULE.

A segmentation model (DeepLab, DFF DeepLab; a Cityscapes-layout test set) prints the mIoU instead, by the DFF
paper's protocol: each labelled frame predicted from every key frame 0 .. interval-1 frames before it, the mIoU
of each key distance averaged (the JSON also has the mIoU per distance and the IoU per class).
``--no-scale-map`` warps its key feature without the scale map (the paper's ablation):

    python tools/evaluate_intervals.py data/models/dff_deeplab_mobile_synthetic.pth --intervals 1,5,10 --json OUT
"""
from __future__ import annotations

import argparse
import sys

from dff.apps.cli import add_set_option
from dff.apps.evaluate import run_evaluate_intervals


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="a native checkpoint that carries its config")
    ap.add_argument("--intervals", default="1,10")
    ap.add_argument("--dataset-path", default=None,
                    help="evaluate on this ILSVRC2015-style root (Cityscapes layout for a segmentation model) instead of "
                         "the checkpoint config's dataset.dataset_path (e.g. a larger synthetic validation set made "
                         "with the same generator and seed)")
    add_set_option(ap, "TEST.RPN_POST_NMS_TOP_N=100", "of the checkpoint's config")
    ap.add_argument("--schedule", default=None,
                    help="fixed (each of --intervals), adaptive (THP models), or fixed,adaptive; default: the config's "
                         "TEST.KEY_FRAME_SCHEDULE")
    ap.add_argument("--no-scale-map", action="store_true",
                    help="segmentation models only: warp the key frame's feature without the scale map")
    ap.add_argument("--out", default=None, help="test outputs (default: a temporary folder)")
    ap.add_argument("--json", default=None)
    return run_evaluate_intervals(ap.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
