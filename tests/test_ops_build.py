"""The operator build script and the loader: built and loaded where a compiler exists (CI runs
``sh init.sh`` first), idempotent, never failing an install, and a missing library -> one warning +
the pure-PyTorch fallback."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import warnings

import pytest
import torch

from dff.ops import _ext, backend, compiled_available, psroi_pool, warp_scale
from dff.ops.build import cuda_toolkit, find_cxx

OPS = ("dff::psroi_pool_forward", "dff::warp_scale_forward")


def _stamp() -> dict:
    path = _ext.build_dir() / "dff_ops.stamp.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _run_build(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dff.ops.build", *args], capture_output=True, text=True, timeout=300, env=env
    )


@pytest.mark.slow
def test_library_built_and_loaded_when_a_compiler_exists():
    if find_cxx() is None:
        pytest.skip("no C++ compiler on this machine: nothing can be built")
    assert compiled_available(), f"not loaded: {_ext.load_error()} (CI builds it with `sh init.sh`)"
    assert _ext.library_path().is_file()
    for op in OPS:
        assert _ext.has_kernel(op, "cpu"), op
    if _stamp().get("config", {}).get("cuda"):  # a CUDA build must have registered its kernels
        for op in OPS:
            assert _ext.has_kernel(op, "cuda"), op


@pytest.mark.slow
def test_cuda_build_when_nvcc_and_a_cuda_torch_exist():
    """Where nvcc and a CUDA build of torch are present (CI here: nvcc 13, no GPU), init.sh must have
    compiled the CUDA kernels, not silently fallen back to a CPU-only library."""
    import torch

    toolkit, how = cuda_toolkit()
    if toolkit is None or torch.version.cuda is None:
        pytest.skip(f"no CUDA toolkit or CPU-only torch ({how}): a CPU-only build is correct here")
    assert _stamp().get("config", {}).get("cuda"), "nvcc is present but the library was built without CUDA"
    for op in OPS:
        assert _ext.has_kernel(op, "cuda"), op


@pytest.mark.slow
def test_build_script_is_idempotent():
    if find_cxx() is None:
        pytest.skip("no C++ compiler on this machine: nothing can be built")
    lib = _ext.build_dir() / _ext.LIBRARY_NAME
    assert lib.is_file() and _stamp(), "library not built: run `python -m dff.ops.build`"
    mtime = lib.stat().st_mtime_ns
    args = [] if _stamp()["config"].get("cuda") else ["--cpu-only"]  # same configuration as the build
    r = _run_build(*args)
    assert r.returncode == 0, r.stderr
    assert "up to date" in r.stdout, r.stdout + r.stderr
    assert lib.stat().st_mtime_ns == mtime


@pytest.mark.slow
def test_build_without_compiler_warns_and_exits_0(tmp_path):
    lib = _ext.build_dir() / _ext.LIBRARY_NAME
    before = lib.stat().st_mtime_ns if lib.is_file() else None
    env = {k: v for k, v in os.environ.items() if k not in ("CXX", "CUDA_HOME", "CUDA_PATH")}
    env["PATH"] = str(tmp_path)  # no compiler (and no nvcc) to be found
    r = _run_build(env=env)
    assert r.returncode == 0, r.stderr
    assert "WARNING" in r.stderr and "no C++ compiler" in r.stderr, r.stderr
    assert (lib.stat().st_mtime_ns if lib.is_file() else None) == before  # the existing build is untouched


def test_cuda_home_is_resolved_through_an_nvcc_wrapper(tmp_path, monkeypatch):
    """/usr/local/bin/nvcc may be a script exec'ing the real nvcc; torch would then guess CUDA_HOME =
    /usr/local (no libcudart there). The toolkit root must come from nvcc's own TOP."""
    root = tmp_path / "cuda-99.0"
    (root / "bin").mkdir(parents=True)
    (root / "lib64").mkdir()
    (root / "lib64" / "libcudart.so").write_bytes(b"")
    real = root / "bin" / "nvcc"
    real.write_text(f'#!/bin/sh\necho "#\\$ TOP={root}/bin/.."\n')
    wrapper_dir = tmp_path / "wrapper" / "bin"
    wrapper_dir.mkdir(parents=True)
    wrapper = wrapper_dir / "nvcc"
    wrapper.write_text(f'#!/bin/sh\nexec {real} "$@"\n')
    for f in (real, wrapper):
        f.chmod(f.stat().st_mode | stat.S_IEXEC)
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.delenv("CUDA_PATH", raising=False)
    monkeypatch.setenv("PATH", f"{wrapper_dir}:/usr/bin:/bin")
    found, how = cuda_toolkit()
    assert found == str(root), how
    (root / "lib64" / "libcudart.so").unlink()
    found, how = cuda_toolkit()
    assert found is None and "libcudart" in how


def test_missing_library_warns_once_and_falls_back(tmp_path, monkeypatch):
    missing = tmp_path / "nowhere" / "dff_ops.so"
    monkeypatch.setenv(_ext.LIBRARY_ENV, str(missing))
    monkeypatch.delenv(backend.ENV_VAR, raising=False)
    monkeypatch.setattr(backend, "_default", None)
    # forget the load state (restored by monkeypatch afterwards)
    monkeypatch.setattr(_ext, "_loaded", None)
    monkeypatch.setattr(_ext, "_error", "")
    monkeypatch.setattr(_ext, "_warned", False)

    feat = torch.randn(1, 3, 5, 6)
    flow = torch.rand(1, 2, 5, 6) * 4 - 2
    with pytest.warns(_ext.CompiledOpsWarning, match=r"nowhere/dff_ops\.so.*python -m dff\.ops\.build"):
        out = warp_scale(feat, flow)
    assert torch.equal(out, warp_scale(feat, flow, backend="fallback"))
    assert not compiled_available()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once only
        data = torch.randn(1, 9, 4, 4)
        rois = torch.tensor([[0.0, 0, 0, 40, 40]])
        assert torch.equal(psroi_pool(data, rois, 0.25, 3, 3, 1), psroi_pool(data, rois, 0.25, 3, 3, 1, backend="fallback"))
    with pytest.raises(RuntimeError, match=r"backend 'compiled' requested.*nowhere/dff_ops\.so.*python -m dff\.ops\.build"):
        warp_scale(feat, flow, backend="compiled")


def test_default_backend_from_environment_and_context(monkeypatch):
    monkeypatch.setattr(backend, "_default", None)
    monkeypatch.setenv(backend.ENV_VAR, "fallback")
    assert backend.get_default_backend() == "fallback"
    with backend.ops_backend("compiled"):
        assert backend.get_default_backend() == "compiled"
    assert backend.get_default_backend() == "fallback"
    monkeypatch.setenv(backend.ENV_VAR, "fast")
    with pytest.raises(ValueError, match="DFF_OPS_BACKEND.*'fast'"):
        warp_scale(torch.zeros(1, 1, 2, 2), torch.zeros(1, 2, 2, 2))
    with pytest.raises(ValueError, match="unknown operator backend"):
        backend.set_default_backend("gpu")
