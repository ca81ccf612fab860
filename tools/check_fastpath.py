"""Check that the fast path keeps the detections: fixture models and inputs, with and without it.

    python tools/check_fastpath.py tests/fixtures/reference [--device cuda] [--amp fp16,bf16] [--no-graphs]
    python tools/check_fastpath.py tests/fixtures/reference --backend onnxruntime [--onnx-cache DIR]

For each ``--amp`` value (``none`` = float32) the fast path of ``--fast`` (on CUDA autocast,
channels_last, cuDNN autotune and CUDA graphs; on the CPU autocast and channels_last, or for ``none``
oneDNN pre-packed weights) runs the R-FCN and DFF fixture models over the fixture frames, and the
embedded trained models over a generated synthetic clip; every detection above score 0.1 must have a
partner in the plain float32 run (same class, boxes within 1 px, score within 0.02) and vice versa.
Under autocast (and TF32, float32 on a GPU) the fixture models are compared on the float32 run's rois (their RPN is saturated, so
any 1e-3 change reorders the proposals; the lines starting with ``#`` say how many detections the
whole autocast pipeline shares). On CUDA the plain float32 run is also checked against MXNet's
detections. One line per frame, then ``N passed, M failed``; exit status 1 on any failure.

``--backend onnxruntime`` checks the ONNX export instead (``dff.parity.deploy``): the same models and
inputs exported and run by onnxruntime against the PyTorch engine in float32, on the CPU, with the same
partner rule (no ``--amp``).
"""
from __future__ import annotations

import argparse
import sys

from dff.apps.cli import add_device_option
from dff.parity.deploy import run_check_onnx
from dff.parity.fastpath import run_check_fastpath


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("fixture_dir", help="directory with the model/ fixtures (e.g. tests/fixtures/reference)")
    add_device_option(ap)
    ap.add_argument("--amp", default="fp16,bf16", help="comma-separated: fp16, bf16, none")
    ap.add_argument("--no-graphs", action="store_true", help="leave CUDA graphs out of the fast path")
    ap.add_argument("--backend", choices=("torch", "onnxruntime"), default="torch",
                    help="onnxruntime: check the ONNX export against PyTorch instead of the fast paths (CPU)")
    ap.add_argument("--onnx-cache", default=None, help="--backend onnxruntime: keep (and reuse) the exports here")
    args = ap.parse_args(argv)
    return run_check_onnx(args) if args.backend == "onnxruntime" else run_check_fastpath(args)


if __name__ == "__main__":
    sys.exit(main())
