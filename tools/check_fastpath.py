"""Check that the fast path keeps the detections: fixture models and inputs, with and without it.

    python tools/check_fastpath.py tests/fixtures/reference [--device cuda] [--amp fp16,bf16] [--no-graphs]

For each ``--amp`` value (``none`` = float32) the fast path of ``--fast`` (on CUDA autocast,
channels_last, cuDNN autotune and CUDA graphs; on the CPU autocast and channels_last, or for ``none``
oneDNN pre-packed weights) runs the R-FCN and DFF fixture models over the fixture frames, and the
embedded trained models over a generated synthetic clip; every detection above score 0.1 must have a
partner in the plain float32 run (same class, boxes within 1 px, score within 0.02) and vice versa.
Under autocast (and TF32, float32 on a GPU) the fixture models are compared on the float32 run's rois (their RPN is saturated, so
any 1e-3 change reorders the proposals; the lines starting with ``#`` say how many detections the
whole autocast pipeline shares). On CUDA the plain float32 run is also checked against MXNet's
detections. One line per frame, then ``N passed, M failed``; exit status 1 on any failure.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys

import torch

from dff.engine.fastpath import AMP_DTYPES, FastPath
from dff.parity import fastpath


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("fixture_dir", help="directory with the model/ fixtures (e.g. tests/fixtures/reference)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--amp", default="fp16,bf16", help="comma-separated: fp16, bf16, none")
    ap.add_argument("--no-graphs", action="store_true", help="leave CUDA graphs out of the fast path")
    args = ap.parse_args(argv)
    if not os.path.isdir(os.path.join(args.fixture_dir, "model")):
        print(f"error: {args.fixture_dir}: no model/ fixture folder there", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda: no CUDA device is available", file=sys.stderr)
        return 2

    fasts = []
    for amp in (a.strip() for a in args.amp.split(",") if a.strip()):
        if amp != "none" and amp not in AMP_DTYPES:
            print(f"error: --amp {amp}: expected {', '.join(AMP_DTYPES)} or none", file=sys.stderr)
            return 2
        fast = FastPath.from_name("fp32" if amp == "none" else amp, device)  # as --fast of the benchmark
        fasts.append(dataclasses.replace(fast, cuda_graphs=False) if args.no_graphs else fast)
    passed = failed = 0
    notes: list[str] = []
    for r in fastpath.cases(args.fixture_dir, device, fasts, notes):
        print(r.line(), flush=True)
        passed, failed = passed + r.passed, failed + (not r.passed)
    for n in notes:
        print(f"# {n}")
    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 and passed > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
