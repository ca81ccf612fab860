"""Deep Feature Flow demo: ``python dff_rfcn/demo.py FRAMES_OR_VIDEO --model rfcn_dff_flownet_vid-0000.params``.

With no --model: the embedded mobile DFF model (data/models/dff_mobile_synthetic.pth); ``--compare`` then runs
its per-frame twin (data/models/rfcn_mobile_synthetic.pth) beside it."""
import os
import sys

from dff.api import DEFAULT_MODEL, DEFAULT_TWIN
from dff.apps.demo import run_demo

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

if __name__ == "__main__":
    sys.exit(run_demo(
        sys.argv[1:], name="dff_rfcn/demo.py", kind="dff",
        default_cfg=os.path.join(REPO, "experiments", "dff_rfcn", "cfgs", "dff_rfcn_vid_demo.yaml"),
        default_out=os.path.join("demo_out", "dff_rfcn"), what="rfcn_dff_flownet_vid-0000.params",
        default_model=DEFAULT_MODEL, default_compare_model=DEFAULT_TWIN))
