"""DFF semantic segmentation demo: ``python dff_deeplab/demo.py FRAMES_OR_VIDEO [--compare]``.

With no --model: the embedded mobile DFF DeepLab (data/models/dff_deeplab_mobile_synthetic.pth); ``--compare`` then
runs its per-frame twin (data/models/deeplab_mobile_synthetic.pth) beside it. With no input: a synthetic clip, as
the detection demo's. Each frame is drawn with its label map as a coloured overlay; ``--json-out`` writes each
frame's class fractions, ``--labels-out DIR`` its label map as a PNG of class indices."""
import os
import sys

from dff.apps.demo import run_demo

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = os.path.join(REPO, "data", "models")

TRAIN = ("it is trained with the commands in docs/training.md (semantic segmentation): the per-frame twin with "
         "python experiments/deeplab/deeplab_end2end_train_test.py --cfg "
         "experiments/deeplab/cfgs/deeplab_mobile_synthetic.yaml --init data/models/rfcn_mobile_synthetic.pth, then "
         "python experiments/dff_deeplab/dff_deeplab_end2end_train_test.py --cfg "
         "experiments/dff_deeplab/cfgs/dff_deeplab_mobile_synthetic.yaml --init <the twin's last epoch>, its last "
         "epoch exported to data/models/dff_deeplab_mobile_synthetic.pth (tools/export_model.py); "
         "or pass --model with a DFF DeepLab checkpoint (.pth)")

if __name__ == "__main__":
    sys.exit(run_demo(
        sys.argv[1:], name="dff_deeplab/demo.py", kind="dff_deeplab",
        default_cfg=os.path.join(REPO, "experiments", "dff_deeplab", "cfgs", "dff_deeplab_mobile_synthetic.yaml"),
        default_out=os.path.join("demo_out", "dff_deeplab"), what="a DFF DeepLab checkpoint (.pth)",
        default_model=os.path.join(MODELS, "dff_deeplab_mobile_synthetic.pth"),
        default_compare_model=os.path.join(MODELS, "deeplab_mobile_synthetic.pth"), missing_model_hint=TRAIN))
