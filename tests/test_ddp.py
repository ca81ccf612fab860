"""Two processes (torchrun, gloo on CPU) x 1 image per update give the weights of one process with
``--accumulate 2`` over the same global batches: gradients are summed over the global batch as the
reference's 4-GPU kvstore does, and every per-sample random draw is seeded by the sample."""
from __future__ import annotations

import os
import runpy
import socket
import subprocess
import sys

import pytest
import torch
import yaml

from dff.dataset.synthetic import SynthConfig, generate
from dff.utils.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow  # torchrun (DDP, gloo) subprocesses

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _yaml(tmp_path, root, out, name):
    with open(os.path.join(REPO, "experiments/rfcn/cfgs/rfcn_synthetic_tiny.yaml")) as f:
        d = yaml.safe_load(f)
    d["output_path"] = str(out)
    d["dataset"].update(dataset_path=str(root), root_path=str(tmp_path / "data"), image_set="VID_train_15frames")
    d["SCALES"] = [64, 96]
    d["TRAIN"].update(lr=0.01, lr_step="0.5", end_epoch=2)  # the lr drop happens after update 3
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(d))
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_equal_one_process_accumulating(tmp_path):
    root = tmp_path / "vid"
    generate(str(root), SynthConfig(seed=4, train_videos=1, val_videos=0, frames=6, height=64, width=96,
                                    det_images=0, classes=("ellipse", "box"), max_objects=2))
    # 12 entries with flips: 6 updates per epoch at 2 images; stop at 8, inside the second epoch
    flags = ["--num-workers", "0", "--no-progress", "--no-test", "--no-mxnet", "--device", "cpu",
             "--max-iters", "8", "--save-every", "0"]
    single = _yaml(tmp_path, root, tmp_path / "out1", "single")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        main = runpy.run_path(os.path.join(REPO, "experiments/rfcn/rfcn_end2end_train_test.py"))["main"]
        assert main(["--cfg", str(single), "--accumulate", "2", *flags]) == 0
    finally:
        torch.set_num_threads(n)
    multi = _yaml(tmp_path, root, tmp_path / "out2", "multi")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
         os.path.join(REPO, "experiments/rfcn/rfcn_end2end_train_test.py"), "--cfg", str(multi), *flags],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a = load_checkpoint(tmp_path / "out1" / "single" / "VID_train_15frames" / "rfcn_vid-last.state.pth")
    b = load_checkpoint(tmp_path / "out2" / "multi" / "VID_train_15frames" / "rfcn_vid-last.state.pth")
    assert a["iteration"] == b["iteration"] == 8 and a["epoch"] == b["epoch"] == 1
    assert (a["world_size"], a["accumulate"], b["world_size"], b["accumulate"]) == (1, 2, 2, 1)
    worst = 0.0
    for k, va in a["model"].items():
        vb = b["model"][k]
        torch.testing.assert_close(vb, va, rtol=1e-5, atol=1e-6, msg=k)
        worst = max(worst, float((va - vb).abs().max()))
    print(f"max |w_ddp - w_accumulate| = {worst:.3g}")
    # the runs did train (the comparison is not between two untouched initialisations)
    m1 = a["optimizer"]["state"]
    assert m1 and all(torch.isfinite(s["momentum_buffer"]).all() for s in m1.values())
    assert any(float(s["momentum_buffer"].abs().max()) > 0 for s in m1.values())
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        torch.testing.assert_close(sb["momentum_buffer"], sa["momentum_buffer"], rtol=1e-5, atol=1e-7)
