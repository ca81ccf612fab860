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
    load_flownet_weights(dff_model, "model/flownet_synthetic.pth")  # fills dff_model.flownet only

or write it in the MXNet layout too (``--mxnet-prefix model/flownet_synthetic`` ->
``model/flownet_synthetic-0000.params``) and set ``network.pretrained_flow: model/flownet_synthetic``
(``pretrained_epoch: 0``) in the training config, the way the reference names its Flying Chairs FlowNet.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

from dff.config import ConfigError, load_config, parse_overrides, update_config
from dff.models.flownet import FlowNet
from dff.train.flow_pretrain import (
    FLOW_STRIDE,
    evaluate_epe,
    flownet_state_for_dff,
    init_flownet,
    list_videos,
    load_flownet_weights,
    pretrain,
    save_flownet_checkpoint,
    zero_flow_epe,
)
from dff.utils.checkpoint import CheckpointError, save_mxnet_checkpoint
from dff.utils.io import atomic_write_text

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_CFG = os.path.join(REPO, "experiments", "dff_rfcn", "cfgs", "dff_rfcn_synthetic_tiny.yaml")
DEMO_CFG = os.path.join(REPO, "experiments", "dff_rfcn", "cfgs", "dff_rfcn_vid_demo.yaml")
DEMO_SCALES = [160, 256]


def _parse_scale(text: str) -> list[int]:
    try:
        short, long = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--scale must be SHORT,MAX_LONG (two integers), got {text!r}") from None
    if short < 16 or long < short:
        raise argparse.ArgumentTypeError(f"--scale {text}: need 16 <= SHORT <= MAX_LONG")
    return [short, long]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="synthetic ILSVRC2015-style root (tools/make_synthetic_vid.py --out)")
    ap.add_argument("--eval-data", default=None,
                    help="root whose val split gives the held-out EPE pairs (default: --data); e.g. the detector's "
                         "mini-VID while --data is a larger flow-only set, as the reference pre-trained on Flying Chairs")
    ap.add_argument("--cfg", default=None, help="detector config (default: the synthetic tiny config if present, "
                                                "else the DFF demo config with SCALES 160,256)")
    ap.add_argument("--scale", type=_parse_scale, default=None, help="override SCALES: SHORT,MAX_LONG (e.g. 160,256)")
    ap.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                    help="override config keys after the YAML (--scale still wins for SCALES), e.g. "
                         "--set TRAIN.MIN_OFFSET=-5 network.FLOWNET_WIDTH=0.5 (values read as YAML)")
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
    ap.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1 ...)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--out", default=os.path.join("model", "flownet_synthetic.pth"), help="checkpoint to write")
    ap.add_argument("--mxnet-prefix", default=None,
                    help="also write PREFIX-0000.params (MXNet layout, FlowNet only) for the trainer's "
                         "network.pretrained_flow: PREFIX (with pretrained_epoch 0)")
    ap.add_argument("--json", default=None, help="EPE report (default: OUT with .json)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)



    if args.iters < 0 or args.batch_size < 1 or args.eval_pairs < 1:
        print("error: --iters must be >= 0, --batch-size and --eval-pairs >= 1", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg_path = args.cfg or (TINY_CFG if os.path.isfile(TINY_CFG) else DEMO_CFG)
    try:
        cfg = load_config(cfg_path, args.set)
        demo_default = args.cfg is None and cfg_path == DEMO_CFG and "SCALES" not in parse_overrides(args.set)
        scales = args.scale or (DEMO_SCALES if demo_default else None)
        if scales:
            update_config(cfg, {"SCALES": scales}, source="--scale")
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        n_train = len(list_videos(args.data, "train"))
    except (FileNotFoundError, ValueError) as e:
        print(f"error: --data: {e}", file=sys.stderr)
        return 2
    eval_data = args.eval_data or args.data
    try:
        n_val = len(list_videos(eval_data, "val"))
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {'--eval-data' if args.eval_data else '--data'}: {e}", file=sys.stderr)
        return 2
    try:
        device = torch.device(args.device)
    except RuntimeError as e:
        print(f"error: --device {args.device!r}: {e}", file=sys.stderr)
        return 2

    torch.manual_seed(args.seed)
    flownet = FlowNet(feat_dim=int(cfg.network.DFF_FEAT_DIM), avg_pool=cfg.network.FLOW_AVG_POOL,
                      width=float(cfg.network.FLOWNET_WIDTH))
    init_flownet(flownet, args.seed)
    if args.init:
        try:
            print(load_flownet_weights(flownet, args.init).summary(), file=sys.stderr)
        except (CheckpointError, OSError) as e:
            print(f"error: --init: {e}", file=sys.stderr)
            return 2
    flownet.to(device)
    print(f"config {cfg_path}, SCALES {list(cfg.SCALES[0])}; data {args.data}: {n_train} train videos; "
          f"held-out EPE on {eval_data}: {n_val} val videos; "
          f"device {device}", file=sys.stderr)

    ev = {"seed": args.eval_seed, "min_offset": args.min_offset, "max_offset": args.max_offset}
    t0 = time.time()
    zero = zero_flow_epe(eval_data, "val", args.eval_pairs, cfg, **ev)
    before = evaluate_epe(flownet, eval_data, "val", args.eval_pairs, cfg, **ev)
    print(f"val EPE before: {before:.3f} px (zero flow: {zero:.3f} px) on {args.eval_pairs} pairs", file=sys.stderr)
    t1 = time.time()
    losses = pretrain(flownet, args.data, cfg, args.iters, batch_size=args.batch_size, lr=args.lr,
                      weight_decay=args.weight_decay, seed=args.seed, min_offset=args.min_offset,
                      max_offset=args.max_offset, flip=not args.no_flip, progress=not args.no_progress,
                      time_limit_s=args.time_limit)
    train_s = time.time() - t1
    after = evaluate_epe(flownet, eval_data, "val", args.eval_pairs, cfg, **ev)

    def mean_px(xs: list[float]) -> float | None:
        return FLOW_STRIDE * sum(xs) / len(xs) if xs else None

    window = max(1, min(20, len(losses) // 5 or 1))
    report = {
        "data": os.path.abspath(args.data), "config": os.path.abspath(cfg_path), "scales": list(cfg.SCALES[0]),
        "pixel_means": list(cfg.network.PIXEL_MEANS), "init": args.init or f"msra(seed={args.seed})",
        "iters": len(losses), "iters_requested": args.iters, "time_limit_s": args.time_limit,
        "batch_size": args.batch_size, "lr": args.lr, "weight_decay": args.weight_decay,
        "seed": args.seed, "flip": not args.no_flip,
        "offsets": [cfg.TRAIN.MIN_OFFSET if args.min_offset is None else args.min_offset,
                    cfg.TRAIN.MAX_OFFSET if args.max_offset is None else args.max_offset],
        "eval": {"data": os.path.abspath(eval_data), "split": "val", "pairs": args.eval_pairs, "seed": args.eval_seed},
        "units": "EPE in image pixels at the network input resolution (grid EPE x 16)",
        "epe_before": before, "epe_after": after, "epe_zero_flow": zero,
        "train_epe_first": mean_px(losses[:window]), "train_epe_last": mean_px(losses[-window:]),
        "train_seconds": round(train_s, 1), "total_seconds": round(time.time() - t0, 1),
        "device": str(device), "checkpoint": os.path.abspath(args.out),
    }
    flownet.cpu()
    if args.mxnet_prefix:
        mx_path = f"{args.mxnet_prefix}-0000.params"
        os.makedirs(os.path.dirname(os.path.abspath(mx_path)), exist_ok=True)
        save_mxnet_checkpoint(flownet_state_for_dff(flownet), mx_path)  # atomic (write_params)
        report["mxnet_params"] = os.path.abspath(mx_path)
    save_flownet_checkpoint(args.out, flownet, extra={"flow_pretrain": report})
    json_path = args.json or os.path.splitext(args.out)[0] + ".json"
    atomic_write_text(json_path, json.dumps(report, indent=2) + "\n")
    print(f"val EPE: before {before:.3f} px, after {after:.3f} px, zero flow {zero:.3f} px "
          f"({len(losses)} iterations, {train_s:.0f} s)")
    print(f"wrote {args.out}{' and ' + report['mxnet_params'] if args.mxnet_prefix else ''} and {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
