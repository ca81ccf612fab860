"""Time DFF's compiled operators against their pure-PyTorch fallbacks, at DFF's sizes.

    python tools/bench_ops.py [--device cpu|cuda] [--repeat N] [--warmup N] [--json OUT]

The sizes, the rows (and the "for context" ones) and the JSON report: ``dff.ops.bench``.
"""
from __future__ import annotations

import argparse
import sys

import torch

from dff.ops.bench import run_bench_ops


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu",
        help="where to run (default: cuda if available, else cpu)",
    )
    p.add_argument("--repeat", type=int, default=None, help="timed runs per row (default 50 on cuda, 10 on cpu)")
    p.add_argument("--warmup", type=int, default=None, help="untimed runs first (default 10 on cuda, 2 on cpu)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", metavar="OUT", help="also write the results as JSON (atomically)")
    args = p.parse_args(argv)
    if args.repeat is None:
        args.repeat = 50 if args.device == "cuda" else 10
    if args.warmup is None:
        args.warmup = 10 if args.device == "cuda" else 2
    if args.repeat < 1 or args.warmup < 0:
        p.error("--repeat must be >= 1 and --warmup >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    return run_bench_ops(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
