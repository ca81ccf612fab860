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
* ``-m "not slow"``: the developer's run (a few minutes on 2 cores). The ``slow`` marker (``pyproject.toml``) is on
  the tests that start subprocesses, serve or read live streams, run torchrun/DDP, export to ONNX or run
  onnxruntime, and the long loops (full training runs, memory-flatness loops over many frames); CI runs them all.
* Each test starts with the ``dff`` logger tree as the previous one found it (:func:`_isolated_dff_logging`):
  an in-process entry point's ``setup_logging()`` (console handler, level, propagate) does not outlive its test.
* One intra-op thread (``OMP_NUM_THREADS=1`` unless set: the tests and the subprocesses they start,
  :func:`pytest_configure`): on 2 shared cores, two OpenMP threads per process fight the other processes and make
  a model step 10-30x slower; the tests' inputs are small, so one thread loses little where the cores are free.
"""
import logging
import os
import pathlib
import re

import pytest
import torch

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
# test isolation: the ``dff`` logger tree


def _dff_loggers() -> dict[str, logging.Logger]:
    """The ``dff`` logger and every ``dff.*`` logger created so far (placeholders excluded)."""
    loggers = {"dff": logging.getLogger("dff")}
    for name, lg in list(logging.Logger.manager.loggerDict.items()):
        if name.startswith("dff.") and isinstance(lg, logging.Logger):
            loggers[name] = lg
    return loggers


@pytest.fixture(autouse=True)
def _isolated_dff_logging():
    """Snapshot the ``dff`` logger tree (handlers, level, propagate, disabled) before each test and restore it
    after: the entry scripts' ``setup_logging()`` run in-process (``runpy``/``main(argv)``) installs a console
    handler on ``dff`` that is never closed, and it must not reach the next test. Handlers a test added and left
    behind are closed (a log file in the test's ``tmp_path``)."""
    saved = {name: (list(lg.handlers), lg.level, lg.propagate, lg.disabled) for name, lg in _dff_loggers().items()}
    yield
    kept = {id(h) for handlers, *_ in saved.values() for h in handlers}
    for name, lg in _dff_loggers().items():
        handlers, level, propagate, disabled = saved.get(name, ([], logging.NOTSET, True, False))
        for h in lg.handlers:
            if id(h) not in kept:
                h.close()
        lg.handlers[:] = handlers
        lg.setLevel(level)
        lg.propagate, lg.disabled = propagate, disabled


# --------------------------------------------------------------------------------------------------
# --no-skips-except-cuda


def pytest_configure(config):
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # inherited by the demos, tools and torchrun the tests start
    torch.set_num_threads(max(1, int(os.environ["OMP_NUM_THREADS"])))


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
