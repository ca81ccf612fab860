"""Check this port against numerical fixtures made with the original MXNet code.

    python tools/parity.py [FIXTURE_DIR] [--backend compiled|fallback|both] [--only ops/psroi]

FIXTURE_DIR (default: the repository's copy, ``tests/fixtures/reference``) has the layout of the fixture
set made with the original code (``ops/``, ``model/``, ``params/``, ``eval/``); any directory in that
format works (other seeds, inputs and scales). One line per compared tensor:
``<case> <tensor> max_abs=<x> max_rel=<y> PASS|FAIL``, then ``N passed, M failed``. Exit status 1 on
any failure. Tolerances: the fixtures README, section 7.
"""
from __future__ import annotations

import argparse
import importlib
import os
import pathlib
import sys
import traceback

from dff.parity import Result

# area -> (module in dff.parity, sub-folder it needs, whether it runs custom operators)
AREAS = [
    ("ops_psroi", "ops", True),
    ("ops_warp", "ops", True),
    ("ops_proposal", "ops", False),
    ("params", "params", False),
    ("flownet", "model", False),
    ("model", "model", True),
    ("eval", "eval", False),
]
DEFAULT_FIXTURE_DIR = pathlib.Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "reference"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("fixture_dir", nargs="?", default=str(DEFAULT_FIXTURE_DIR),
                    help="directory with ops/, model/, params/, eval/ fixtures (default: %(default)s)")
    ap.add_argument("--backend", default="both", choices=["compiled", "fallback", "both"],
                    help="operator implementation(s) to check (default: both)")
    ap.add_argument("--only", default="", help="comma-separated areas: " + ",".join(a for a, _, _ in AREAS))
    args = ap.parse_args(argv)
    if not os.path.isdir(args.fixture_dir):
        print(f"error: {args.fixture_dir}: fixture directory not found", file=sys.stderr)
        return 2

    only = {a for a in args.only.split(",") if a}
    backends = ["compiled", "fallback"] if args.backend == "both" else [args.backend]
    passed = failed = 0
    for area, sub, uses_ops in AREAS:
        if only and area not in only:
            continue
        if not os.path.isdir(os.path.join(args.fixture_dir, sub)):
            continue
        for backend in backends if uses_ops else backends[:1]:
            tag = f"[{backend}] " if uses_ops and len(backends) > 1 else ""
            try:
                mod = importlib.import_module(f"dff.parity.{area}")
                rows = list(mod.cases(args.fixture_dir, backend))
            except ImportError as e:
                rows = [Result(f"{sub}/{area}", "", note="NOT-IMPLEMENTED")]
                print(f"# {area}: {e}", file=sys.stderr)
            except Exception as e:  # report, count as failed, and go on with the other areas
                traceback.print_exc()
                rows = [Result(f"{sub}/{area}", "run", note=f"error: {type(e).__name__}: {e}")]
            for r in rows:
                print(tag + r.line(), flush=True)
                if r.passed:
                    passed += 1
                else:
                    failed += 1
    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 and passed > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
