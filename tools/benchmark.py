"""Benchmark DFF against the per-frame R-FCN, in one process, through the same video engine.

    python tools/benchmark.py --cfg experiments/dff_rfcn/cfgs/resnet_v1_101_flownet_imagenet_vid_rfcn_end2end_ohem.yaml \\
        --video ../shared/data/videos/vtest.avi --frames 20 --key-intervals 10 --scale 600,1000 --device cpu

For every key interval it reports network-only fps (frames decoded, preprocessed and already on the
device; feature network, FlowNet, warp and task network, without NMS post-processing), end-to-end
fps (decoding the file and post-processing included), the per-stage split, peak memory, and the
speed-up over per-frame (network-only DFF fps / per-frame fps, both measured in this run on the same
frames). Without ``--model`` and ``--cfg`` it measures the embedded mobile DFF
(``data/models/dff_mobile_synthetic.pth``, docs/design.md §10) against its per-frame twin
(``data/models/rfcn_mobile_synthetic.pth``, ``--per-frame-model``); with ``--cfg`` and no ``--model`` the
networks get deterministic initial weights: enough to measure speed.

``--backend onnxruntime`` measures the engine on the model's ONNX export (``--onnx DIR``, or exported to
a cache first, docs/onnx.md) and then the PyTorch engine on the same frames: both network-only fps per
key interval and their ratio.

THP models (docs/design.md §9): ``--schedule adaptive`` measures the per-frame R-FCN and one "adaptive" row
(key frames chosen by Q) instead of rows per key interval, with the key frames and the mean updated area.
``--partial-area 0.1,0.25`` (any DFF model) times the partial feature update forced to cover those fractions
of the feature map against the full key-frame feature network.
"""
from __future__ import annotations

import argparse
import os
import sys

# the embedded mobile DFF and its per-frame twin (docs/design.md §10): measured when neither --model nor --cfg is given
from dff.api import DEFAULT_MODEL, DEFAULT_TWIN
from dff.apps.benchmark import run_benchmark
from dff.apps.cli import add_backend_options, add_device_option, add_fast_option, add_schedule_option, add_set_option

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REFERENCE_CFG = os.path.join(REPO, "experiments", "dff_rfcn", "cfgs",
                             "resnet_v1_101_flownet_imagenet_vid_rfcn_end2end_ohem.yaml")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cfg", default=None,
                    help="YAML config (default: the ResNet-101 reference's; a native --model brings its own config)")
    add_set_option(ap, "TEST.RPN_POST_NMS_TOP_N=100")
    ap.add_argument("--model", default=None,
                    help="MXNet .params or native checkpoint (default: the embedded mobile DFF "
                         "data/models/dff_mobile_synthetic.pth; with --cfg: deterministic initial weights)")
    ap.add_argument("--per-frame-model", default=None,
                    help="the per-frame baseline: an R-FCN checkpoint with the same backbone and head (default: "
                         "data/models/rfcn_mobile_synthetic.pth with the embedded mobile DFF, else the --model at "
                         "key interval 1)")
    ap.add_argument("--video", default=None, help="video file or frame folder (default: a generated clip)")
    ap.add_argument("--frames", type=int, default=20)
    ap.add_argument("--key-intervals", default="1,2,5,10,20",
                    help="the key intervals measured (ignored with the adaptive schedule)")
    ap.add_argument("--scale", default=None, help="short,max-long side (default: the config's SCALES)")
    add_device_option(ap)
    add_fast_option(ap)
    add_backend_options(ap)
    ap.add_argument("--onnx-cache", default=None,
                    help="where exports are kept (default $DFF_ONNX_CACHE or ~/.cache/dff/onnx)")
    ap.add_argument("--profile", default=None,
                    help="also profile the largest key interval (torch.profiler) and write the op table here")
    ap.add_argument("--workers", type=int, default=None,
                    help="decoding threads for a frame folder (default: min(8, CPU cores))")
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--plot", default=None, help="write a PNG of fps per key interval here")
    ap.add_argument("--no-end-to-end", action="store_true", help="skip the end-to-end runs")
    ap.add_argument("--eval", action="store_true",
                    help="also evaluate mAP per key interval on the config's test set (a trained --model; "
                         "the synthetic mini-VID for the tiny configs) and plot mAP against fps")
    ap.add_argument("--eval-dir", default=None, help="where the test outputs go (default: a temporary folder)")
    ap.add_argument("--lengths", default=None,
                    help="e.g. 100,1000,5000: stream that many generated frames end to end through DFF at the "
                         "largest key interval and report time and peak RSS per length (memory must stay flat)")
    add_schedule_option(ap)
    ap.add_argument("--partial-area", default=None, metavar="F1,F2,...",
                    help="e.g. 0.1,0.25: also time THP's partial feature update forced to cover these fractions of "
                         "the feature map (TEST.PARTIAL_UPDATE_MARGIN cells of context) against the full key-frame "
                         "feature network, on the first frame (any DFF model)")
    args = ap.parse_args(argv)
    if args.model is None and args.cfg is None and os.path.isfile(DEFAULT_MODEL):
        args.model = DEFAULT_MODEL
        print(f"model: {os.path.relpath(args.model)} (the embedded mobile DFF)")
    embedded = args.model is not None and os.path.abspath(args.model) == DEFAULT_MODEL
    if embedded and args.per_frame_model is None and args.backend == "torch" and os.path.isfile(DEFAULT_TWIN):
        args.per_frame_model = DEFAULT_TWIN  # like with like: the twin's own weights
    args.cfg = args.cfg or REFERENCE_CFG
    return run_benchmark(args, argv)


if __name__ == "__main__":
    sys.exit(main())
