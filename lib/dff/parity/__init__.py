"""Parity checks against fixtures made with the original MXNet code.

A fixture directory has the layout of ``tests/fixtures/reference`` (``ops/``, ``model/``, ``params/``,
``eval/``). Each module of this package checks one area and exposes ``cases(fixture_dir, backend)``,
a generator of :class:`Result` rows; ``tools/parity.py`` prints them. ``backend`` is ``"compiled"`` or
``"fallback"`` and selects the operator implementation (areas without custom operators ignore it).
Tolerances follow the fixtures README, section 7.
"""
from __future__ import annotations

import dataclasses
import glob
import os
from typing import Any

import numpy as np

from dff.ops import _ext


@dataclasses.dataclass
class Result:
    case: str
    tensor: str
    max_abs: float = float("nan")
    max_rel: float = float("nan")
    passed: bool = False
    note: str = ""  # "NOT-IMPLEMENTED", "MISSING", or an error message

    def line(self) -> str:
        if self.note == "NOT-IMPLEMENTED":
            return f"{self.case} NOT-IMPLEMENTED"
        if self.note and np.isnan(self.max_abs):
            return f"{self.case} {self.tensor} {self.note} FAIL"
        status = "PASS" if self.passed else "FAIL"
        extra = f" ({self.note})" if self.note else ""
        return f"{self.case} {self.tensor} max_abs={self.max_abs:.3g} max_rel={self.max_rel:.3g} {status}{extra}"


# tolerances of README section 7 (float32 port of a float32 reference)
TOL_EXACT = dict(atol=1e-6, rtol=0.0)  # op fixtures: "exact up to about 1e-6"
TOL_FEATURE = dict(atol=1e-4, rtol=1e-4)
TOL_PROB = dict(atol=1e-5, rtol=0.0)
TOL_BOX = dict(atol=1e-3, rtol=0.0)  # pixels


def compare(case: str, tensor: str, got: Any, expected: Any, atol: float, rtol: float = 0.0) -> Result:
    """Compare ``got`` with ``expected`` elementwise: pass iff ``|got-exp| <= atol + rtol*|exp|`` everywhere."""
    if hasattr(got, "detach"):
        got = got.detach().cpu().numpy()
    got = np.asarray(got, dtype=np.float64)
    exp = np.asarray(expected, dtype=np.float64)
    if got.shape != exp.shape:
        return Result(case, tensor, note=f"shape {tuple(got.shape)} != expected {tuple(exp.shape)}")
    if got.size == 0:
        return Result(case, tensor, 0.0, 0.0, True)
    if not np.all(np.isfinite(got)):
        return Result(case, tensor, float("inf"), float("inf"), False, "non-finite values")
    diff = np.abs(got - exp)
    max_abs = float(diff.max())
    max_rel = float((diff / np.maximum(np.abs(exp), 1e-12)).max())
    passed = bool(np.all(diff <= atol + rtol * np.abs(exp)))
    return Result(case, tensor, max_abs, max_rel, passed)


def not_implemented(case: str) -> Result:
    return Result(case, "", note="NOT-IMPLEMENTED")


def op_fixture_files(fixture_dir: str, pattern: str, backend: str) -> tuple[list[str], list[Result]]:
    """The ``ops/<pattern>`` fixture files, or the rows that explain why they cannot be checked
    (none present; the compiled backend asked for but not built)."""

    files = sorted(glob.glob(os.path.join(fixture_dir, "ops", pattern)))
    if not files:
        return [], [Result(f"ops/{pattern.split('*')[0].rstrip('_')}", "", note=f"MISSING: no ops/{pattern}")]
    if backend == "compiled" and not _ext.compiled_available():
        note = f"compiled operators not available ({_ext.load_error()}); {_ext.BUILD_HINT}"
        return [], [Result(f"ops/{os.path.basename(f)[:-4]}", "", note=note) for f in files]
    return files, []
