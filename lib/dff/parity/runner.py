"""The parity command (``tools/parity.py``): every area of :mod:`dff.parity` over one fixture directory.

:data:`AREAS` lists the areas in their order, each with the fixture sub-folder it needs and whether it runs
the custom operators (then once per backend); :func:`run_parity` imports each area's module, prints its
:class:`~dff.parity.Result` rows and the ``N passed, M failed`` line.
"""
from __future__ import annotations

import argparse
import importlib
import os
import pathlib
import sys
import traceback

from dff.parity import Result

__all__ = ["AREAS", "DEFAULT_FIXTURE_DIR", "run_parity"]

# area -> (module in dff.parity, sub-folder it needs, whether it runs custom operators)
AREAS = [("ops_psroi", "ops", True), ("ops_warp", "ops", True), ("ops_proposal", "ops", False),
         ("params", "params", False), ("flownet", "model", False), ("model", "model", True), ("eval", "eval", False)]
DEFAULT_FIXTURE_DIR = pathlib.Path(__file__).resolve().parents[3] / "tests" / "fixtures" / "reference"


def _area_rows(area: str, sub: str, fixture_dir: str, backend: str) -> list[Result]:
    """The rows of one area and backend; an area that cannot be imported is one NOT-IMPLEMENTED row, one that
    raises is one failed row (with the traceback on stderr), so the other areas still run."""
    try:
        mod = importlib.import_module(f"dff.parity.{area}")
        return list(mod.cases(fixture_dir, backend))
    except ImportError as e:
        print(f"# {area}: {e}", file=sys.stderr)
        return [Result(f"{sub}/{area}", "", note="NOT-IMPLEMENTED")]
    except Exception as e:  # report, count as failed, and go on with the other areas
        traceback.print_exc()
        return [Result(f"{sub}/{area}", "run", note=f"error: {type(e).__name__}: {e}")]


def run_parity(args: argparse.Namespace) -> int:
    """``tools/parity.py``: the areas of ``args.only`` (all when empty; comma-separated) whose sub-folder
    ``args.fixture_dir`` has, through ``args.backend`` (compiled, fallback or both); one line per row, then the
    counts. 0 when everything passed (and something ran), 1 otherwise, 2 without the fixture directory or with
    an unknown area in ``args.only`` (the message lists the valid ones)."""
    only = {a.strip() for a in args.only.split(",") if a.strip()}
    unknown = sorted(only - {a for a, _, _ in AREAS})
    if unknown:
        print(f"error: --only: unknown area(s) {', '.join(unknown)}; valid areas: "
              + ", ".join(a for a, _, _ in AREAS), file=sys.stderr)
        return 2
    if not os.path.isdir(args.fixture_dir):
        print(f"error: {args.fixture_dir}: fixture directory not found", file=sys.stderr)
        return 2
    backends = ["compiled", "fallback"] if args.backend == "both" else [args.backend]
    passed = failed = 0
    for area, sub, uses_ops in AREAS:
        if only and area not in only:
            continue
        if not os.path.isdir(os.path.join(args.fixture_dir, sub)):
            continue
        for backend in backends if uses_ops else backends[:1]:
            tag = f"[{backend}] " if uses_ops and len(backends) > 1 else ""
            for r in _area_rows(area, sub, args.fixture_dir, backend):
                print(tag + r.line(), flush=True)
                if r.passed:
                    passed += 1
                else:
                    failed += 1
    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 and passed > 0 else 1
