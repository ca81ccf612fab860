"""Where the tests find their inputs, and CI's rule that nothing but the CUDA tests may skip.

* The MXNet reference fixtures live in the repository (``tests/fixtures/reference``, a copy of the fixture
  set made with the original code): every test reads them through :data:`REFERENCE_DIR` / the
  ``reference_dir`` fixture. ``DFF_REFERENCE_DIR`` points the tests at another fixture directory of the
  same layout. Their absence is a failure, not a skip.
* The real video data (ImageNet VID lists, JPEG frames, a video file) is not in the repository: tests
  that need it take the ``shared_data_dir`` fixture, which reads ``DFF_SHARED_DATA_DIR`` (default
  ``<repo>/../shared/data``) and skips, naming the variable, where the folder does not exist.
* ``--no-skips-except-cuda`` (CI): the run fails when any test skipped for a reason that is not a
  missing CUDA device/toolkit.
"""
import os
import pathlib
import re

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
REFERENCE_DIR = pathlib.Path(os.environ.get("DFF_REFERENCE_DIR", REPO / "tests" / "fixtures" / "reference"))
SHARED_DATA_DIR = pathlib.Path(os.environ.get("DFF_SHARED_DATA_DIR", REPO.parent / "shared" / "data"))
SHARED_DATA_SKIP = f"needs the real video data: set DFF_SHARED_DATA_DIR (default ../shared/data, not found at {SHARED_DATA_DIR})"
CUDA_REASON = re.compile(r"\bcuda\b", re.IGNORECASE)


@pytest.fixture(scope="session")
def reference_dir() -> pathlib.Path:
    """The MXNet fixtures (in the repository)."""
    assert REFERENCE_DIR.is_dir(), f"reference fixtures not found at {REFERENCE_DIR}; set DFF_REFERENCE_DIR"
    return REFERENCE_DIR


@pytest.fixture(scope="session")
def shared_data_dir() -> pathlib.Path:
    """The real video data (``../shared/data`` or ``$DFF_SHARED_DATA_DIR``); skips where it is absent."""
    if not SHARED_DATA_DIR.is_dir():
        pytest.skip(SHARED_DATA_SKIP)
    return SHARED_DATA_DIR


# --------------------------------------------------------------------------------------------------
# --no-skips-except-cuda


def pytest_addoption(parser):
    parser.addoption("--no-skips-except-cuda", action="store_true", default=False,
                     help="fail the run if a test skips for a reason other than CUDA (CI has no GPU, and "
                          "everything else must run there)")


def _skip_reason(report) -> str:
    lr = report.longrepr
    if isinstance(lr, tuple) and len(lr) == 3:  # (path, line, "Skipped: reason")
        return str(lr[2])
    return str(lr)


_bad_skips: list[tuple[str, str]] = []


def _note(report) -> None:
    if report.skipped and not hasattr(report, "wasxfail"):
        reason = _skip_reason(report)
        if not CUDA_REASON.search(reason):
            _bad_skips.append((report.nodeid, reason))


def pytest_runtest_logreport(report):
    _note(report)


def pytest_collectreport(report):
    _note(report)  # a module skipped as a whole (pytest.skip(allow_module_level=True), importorskip)


def pytest_sessionfinish(session, exitstatus):
    if session.config.getoption("--no-skips-except-cuda") and _bad_skips and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if config.getoption("--no-skips-except-cuda") and _bad_skips:
        terminalreporter.section("skips other than CUDA (--no-skips-except-cuda: the run fails)", red=True)
        for nodeid, reason in _bad_skips:
            terminalreporter.line(f"{nodeid}: {reason}")
