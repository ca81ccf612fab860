"""Per-frame semantic segmentation demo: ``python deeplab/demo.py FRAMES_OR_VIDEO``.

With no --model: the embedded mobile per-frame DeepLab (data/models/deeplab_mobile_synthetic.pth). With no input: a
synthetic clip, as the detection demo's. Each frame is drawn with its label map as a coloured overlay;
``--json-out`` writes each frame's class fractions, ``--labels-out DIR`` its label map as a PNG of class indices."""
import os
import sys

from dff.apps.demo import run_demo

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TRAIN = ("it is trained with the commands in docs/training.md (semantic segmentation): "
         "python experiments/deeplab/deeplab_end2end_train_test.py --cfg "
         "experiments/deeplab/cfgs/deeplab_mobile_synthetic.yaml --init data/models/rfcn_mobile_synthetic.pth, its "
         "last epoch exported to data/models/deeplab_mobile_synthetic.pth (tools/export_model.py); "
         "or pass --model with a DeepLab checkpoint (.pth)")

if __name__ == "__main__":
    sys.exit(run_demo(
        sys.argv[1:], name="deeplab/demo.py", kind="deeplab",
        default_cfg=os.path.join(REPO, "experiments", "deeplab", "cfgs", "deeplab_mobile_synthetic.yaml"),
        default_out=os.path.join("demo_out", "deeplab"), what="a DeepLab checkpoint (.pth)",
        default_model=os.path.join(REPO, "data", "models", "deeplab_mobile_synthetic.pth"),
        missing_model_hint=TRAIN))
