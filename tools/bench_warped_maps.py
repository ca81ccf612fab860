"""Time a non-key frame's two ways to get the mobile head's maps, in one run (docs/design.md §10.6).

    python tools/bench_warped_maps.py [--model data/models/dff_mobile_synthetic.pth] [--size 320,427] [--repeat 200]

"recompute" is what the engine does: warp the key feature (DFF_FEAT_DIM channels) x scale, then the head's
convolutions (the RPN's two 1x1 convolutions and the light head's 1x1 thin-map convolution). "warp maps" is the
mobile paper's: the key frame's maps (the RPN's 2A + 4A outputs and the 490-channel thin map) warped by the same
flow. Both on this machine's CPU through the engine's fast path; prints the milliseconds of each and their ratio.
"""
from __future__ import annotations

import argparse
import json
import sys

import torch

from dff.apps.benchmark import median_ms
from dff.engine.fastpath import FastPath, StageRunner
from dff.models.builder import load_model
from dff.utils.io import atomic_write_text

DEFAULT_MODEL = "data/models/dff_mobile_synthetic.pth"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--size", default="320,427", help="network input HEIGHT,WIDTH (the benchmark clip's)")
    ap.add_argument("--repeat", type=int, default=200)
    ap.add_argument("--json", metavar="OUT", help="also write the numbers here (atomically)")
    args = ap.parse_args(argv)
    h, w = (int(v) for v in args.size.split(","))
    model, _ = load_model(args.model)
    model = model.float().eval()
    stages = StageRunner(model, FastPath.from_name("fp32", "cpu"))
    gen = torch.Generator().manual_seed(0)
    cur, key = (torch.randn(1, 3, h, w, generator=gen) * 50 for _ in range(2))
    with torch.no_grad():
        key_feat = stages.feature(key)
        flow, scale = stages.flow(cur, key)
        key_maps = model.head_maps(key_feat)
        convs = [k for k in ("rpn_cls_prob", "rpn_bbox_pred", "thin_maps", "cls_maps", "bbox_maps") if k in key_maps]
        # the benchmark's timer (median of the calls): one way to time a stage in this project
        cpu = torch.device("cpu")
        recompute = median_ms(lambda: model.head_maps(stages.warp(key_feat, flow, scale)), cpu, args.repeat)[0]
        warp_maps = median_ms(lambda: [model.warp(key_maps[k], flow, None) for k in convs], cpu, args.repeat)[0]
    channels = {k: int(key_maps[k].shape[1]) for k in convs}
    out = {"recompute_ms": recompute, "warp_maps_ms": warp_maps, "ratio_warp_over_recompute": warp_maps / recompute,
           "feature_channels": int(key_feat.shape[1]), "map_channels": channels, "grid": list(key_feat.shape[-2:]),
           "threads": torch.get_num_threads()}
    print(json.dumps(out, indent=1))
    if args.json:
        atomic_write_text(args.json, json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
