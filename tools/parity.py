"""Check this port against numerical fixtures made with the original MXNet code.

    python tools/parity.py [FIXTURE_DIR] [--backend compiled|fallback|both] [--only AREA[,AREA...]]

FIXTURE_DIR (default: the repository's copy, ``tests/fixtures/reference``) has the layout of the fixture
set made with the original code (``ops/``, ``model/``, ``params/``, ``eval/``); any directory in that
format works (other seeds, inputs and scales). One line per compared tensor:
``<case> <tensor> max_abs=<x> max_rel=<y> PASS|FAIL``, then ``N passed, M failed``. Exit status 1 on
any failure. ``--only`` takes area names (``ops_psroi``, ``ops_warp``, ``ops_proposal``, ``params``,
``flownet``, ``model``, ``eval``; e.g. ``--only ops_psroi,ops_warp``); an unknown area is an error (exit
status 2, the valid areas listed). Tolerances: the fixtures README, section 7.
"""
from __future__ import annotations

import argparse
import sys

from dff.parity.runner import AREAS, DEFAULT_FIXTURE_DIR, run_parity


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("fixture_dir", nargs="?", default=str(DEFAULT_FIXTURE_DIR),
                    help="directory with ops/, model/, params/, eval/ fixtures (default: %(default)s)")
    ap.add_argument("--backend", default="both", choices=["compiled", "fallback", "both"],
                    help="operator implementation(s) to check (default: both)")
    ap.add_argument("--only", default="", help="comma-separated areas (default: all): "
                    + ",".join(a for a, _, _ in AREAS))
    return run_parity(ap.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
