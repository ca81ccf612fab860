import os
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


def _reference_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get("DFF_REFERENCE_DIR", REPO.parent / "shared" / "reference"))


@pytest.fixture(scope="session")
def reference_dir() -> pathlib.Path:
    """The MXNet fixtures. CI has them beside the checkout; their absence is a failure, not a skip."""
    d = _reference_dir()
    assert d.is_dir(), f"reference fixtures not found at {d}; set DFF_REFERENCE_DIR"
    return d


@pytest.fixture(scope="session")
def shared_data_dir() -> pathlib.Path:
    d = pathlib.Path(os.environ.get("DFF_SHARED_DATA_DIR", REPO.parent / "shared" / "data"))
    assert d.is_dir(), f"shared data not found at {d}; set DFF_SHARED_DATA_DIR"
    return d
