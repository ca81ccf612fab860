"""Pre-train DFF's FlowNet on a synthetic mini-VID (the reference used Flying Chairs), with EPE.

    python tools/make_synthetic_vid.py --out data/synthetic/ILSVRC2015
    python tools/pretrain_flownet.py --data data/synthetic/ILSVRC2015 --iters 300 \\
        [--cfg CFG] [--scale 160,256] [--batch-size 4] [--lr 1e-4] [--init FLOWNET_PARAMS] \\
        [--out model/flownet_synthetic.pth] [--json PATH]

Reports the EPE on held-out pairs of the val split (image pixels at the network input resolution)
before training (random MSRA init, or --init), after training, and of the zero-flow predictor; writes
the FlowNet weights (only) as a native checkpoint with DFF's key names (``flownet.<layer>.weight``)
and a JSON with the numbers (both atomically).

CFG defaults to experiments/dff_rfcn/cfgs/dff_rfcn_synthetic_tiny.yaml when it exists, else the DFF
demo config with SCALES [160, 256]; --scale SHORT,MAX overrides SCALES. Inputs are preprocessed with the
config's SCALES / PIXEL_MEANS exactly like the detector's, and FlowNet gets ``network.DFF_FEAT_DIM``
scale channels and ``network.FLOW_AVG_POOL``, so the checkpoint fits a DFF model built from CFG.

To start DFF training from it::

    from dff.train.flow_pretrain import load_flownet_weights
    load_flownet_weights(dff_model.flownet, "model/flownet_synthetic.pth")

or write it in the MXNet layout too (``--mxnet-prefix model/flownet_synthetic`` ->
``model/flownet_synthetic-0000.params``) and set ``network.pretrained_flow: model/flownet_synthetic``
(``pretrained_epoch: 0``) in the training config, the way the reference names its Flying Chairs FlowNet.
"""
from __future__ import annotations

import argparse
import os
import sys

from dff.apps.cli import add_device_option, add_set_option
from dff.train.flow_pretrain import parse_scale_arg, run_pretraining


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="synthetic ILSVRC2015-style root (tools/make_synthetic_vid.py --out)")
    ap.add_argument("--eval-data", default=None,
                    help="root whose val split gives the held-out EPE pairs (default: --data); e.g. the detector's "
                         "mini-VID while --data is a larger flow-only set, as the reference pre-trained on Flying Chairs")
    ap.add_argument("--cfg", default=None, help="detector config (default: the synthetic tiny config if present, "
                                                "else the DFF demo config with SCALES 160,256)")
    ap.add_argument("--scale", type=parse_scale_arg, default=None, help="override SCALES: SHORT,MAX_LONG (e.g. 160,256)")
    add_set_option(ap, "TRAIN.MIN_OFFSET=-5 network.FLOWNET_WIDTH=0.5", "after the YAML (--scale still wins for SCALES)")
    ap.add_argument("--iters", type=int, required=True, help="training iterations")
    ap.add_argument("--time-limit", type=float, default=None,
                    help="stop training after this many seconds even before --iters (the JSON has the count)")
    ap.add_argument("--batch-size", type=int, default=4, help="pairs per iteration")
    ap.add_argument("--lr", type=float, default=3e-4, help="Adam learning rate")
    ap.add_argument("--weight-decay", type=float, default=0.0, help="on weights only")
    ap.add_argument("--seed", type=int, default=0, help="initialisation and training-pair seed")
    ap.add_argument("--min-offset", type=int, default=None, help="key offset range (default: TRAIN.MIN_OFFSET, -9)")
    ap.add_argument("--max-offset", type=int, default=None, help="(default: TRAIN.MAX_OFFSET, 0; positive allowed)")
    ap.add_argument("--no-flip", action="store_true", help="no random horizontal flips of training pairs")
    ap.add_argument("--eval-pairs", type=int, default=64, help="held-out val pairs for the EPE")
    ap.add_argument("--eval-seed", type=int, default=0, help="seed of the held-out pairs")
    ap.add_argument("--init", default=None, help="start from these FlowNet weights (native or MXNet .params, "
                                                 "e.g. the reference's flownet-0000.params) instead of random")
    add_device_option(ap)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--out", default=os.path.join("model", "flownet_synthetic.pth"), help="checkpoint to write")
    ap.add_argument("--mxnet-prefix", default=None,
                    help="also write PREFIX-0000.params (MXNet layout, FlowNet only) for the trainer's "
                         "network.pretrained_flow: PREFIX (with pretrained_epoch 0)")
    ap.add_argument("--json", default=None, help="EPE report (default: OUT with .json)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    return run_pretraining(ap.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
