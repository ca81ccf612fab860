"""Export a model to ONNX: key.onnx, nonkey.onnx (DFF), keyagg.onnx (key-frame aggregation) and model.json in --out
(docs/onnx.md).

    python tools/export_onnx.py --out onnx/dff_mobile                 # the demos' default model (data/models)
    python tools/export_onnx.py --kind rfcn --out onnx/rfcn_mobile    # its per-frame twin
    python tools/export_onnx.py --model data/models/dff_rfcn_synthetic_tiny.pth --out onnx/dff_tiny
    python tools/export_onnx.py --model fixture --kind dff \\
        --cfg experiments/dff_rfcn/cfgs/resnet_v1_101_flownet_imagenet_vid_rfcn_end2end_ohem.yaml --out onnx/dff_r101
    python tools/export_onnx.py --model model/rfcn_dff_flownet_vid-0000.params --kind dff --out onnx/dff_vid
    python tools/export_onnx.py --model data/models/dff_deeplab_mobile_synthetic.pth --out onnx/dff_deeplab

key.onnx: data, im_info -> feat (the key feature, the state to keep), rois, cls_prob, bbox_pred.
nonkey.onnx: data, im_info, key_data, key_feat -> feat, rois, cls_prob, bbox_pred, flow, scale.
keyagg.onnx (a model with the ConvGRU key-frame aggregation, network.GRU_AGGREGATION: the default model): a key
frame after the first, data, prev_key_data, prev_feat, im_info -> feat (aggregated: the new state), rois, cls_prob,
bbox_pred, flow, scale.
Standard ONNX operators (opset 18), dynamic height and width; the detections' box decoding and NMS run
on the host (model.json says how). A segmentation model (DeepLab, DFF DeepLab) exports the same graphs with
its score convolution as the task network: key.onnx data -> feat, seg_score; nonkey.onnx data, key_data,
key_feat -> feat, seg_score, flow, scale (the upsampling and arg-max run on the host). Needs the optional
packages: pip install -e .[deploy]
"""
from __future__ import annotations

import argparse
import os
import sys

from dff.api import DEFAULT_MODEL as DEMO_MODEL
from dff.api import DEFAULT_TWIN as DEMO_TWIN
from dff.apps.cli import add_set_option
from dff.deploy.export import run_export_onnx

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# the demos' default models (dff.api): the mobile DFF and its per-frame twin
DEFAULT_CFG = {"dff": os.path.join(REPO, "experiments", "dff_rfcn", "cfgs", "dff_rfcn_vid_demo.yaml"),
               "rfcn": os.path.join(REPO, "experiments", "rfcn", "cfgs", "rfcn_vid_demo.yaml"),
               "dff_deeplab": os.path.join(REPO, "experiments", "dff_deeplab", "cfgs",
                                           "dff_deeplab_mobile_synthetic.yaml"),
               "deeplab": os.path.join(REPO, "experiments", "deeplab", "cfgs", "deeplab_mobile_synthetic.yaml")}
DEFAULT_MODEL = {"dff": DEMO_MODEL,
                 "rfcn": DEMO_TWIN,
                 "dff_deeplab": os.path.join(REPO, "data", "models", "dff_deeplab_mobile_synthetic.pth"),
                 "deeplab": os.path.join(REPO, "data", "models", "deeplab_mobile_synthetic.pth")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None,
                    help="a native checkpoint (.pth), an MXNet .params file or 'fixture' (the parity fixtures' "
                         "weights); default: the embedded model of --kind in data/models (dff, rfcn: the demos' "
                         "mobile models; the tiny ResNet ones are data/models/dff_rfcn_synthetic_tiny.pth and "
                         "rfcn_synthetic_tiny.pth)")
    ap.add_argument("--kind", choices=tuple(DEFAULT_MODEL), default=None,
                    help="the model kind (a native checkpoint names its own; default dff); the segmentation kinds "
                         "(dff_deeplab, deeplab) have native checkpoints only")
    ap.add_argument("--cfg", default=None, help="YAML config for an MXNet file or the fixture weights (a native "
                                                "checkpoint carries its own; default: the demo config of --kind)")
    add_set_option(ap, "TEST.RPN_POST_NMS_TOP_N=100")
    ap.add_argument("--out", required=True, help="output folder (replaced if it exists)")
    ap.add_argument("--cache", default=None,
                    help="a folder of exported stages to reuse and add to (a stage with the same weights and "
                         "settings is not exported again)")
    args = ap.parse_args(argv)
    args.model = args.model or DEFAULT_MODEL[args.kind or "dff"]
    args.cfg = args.cfg or DEFAULT_CFG[args.kind or "dff"]
    return run_export_onnx(args)


if __name__ == "__main__":
    sys.exit(main())
