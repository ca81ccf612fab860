"""Per-frame R-FCN demo: ``python rfcn/demo.py FRAMES_OR_VIDEO --model rfcn_vid-0000.params``.

With no --model: the embedded mobile per-frame model (data/models/rfcn_mobile_synthetic.pth)."""
import os
import sys

from dff.api import DEFAULT_TWIN
from dff.apps.demo import run_demo

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

if __name__ == "__main__":
    sys.exit(run_demo(
        sys.argv[1:], name="rfcn/demo.py", kind="rfcn",
        default_cfg=os.path.join(REPO, "experiments", "rfcn", "cfgs", "rfcn_vid_demo.yaml"),
        default_out=os.path.join("demo_out", "rfcn"), what="rfcn_vid-0000.params",
        default_model=DEFAULT_TWIN))
