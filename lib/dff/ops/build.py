"""Build the compiled operator library (``operator_cxx/`` -> ``lib/dff/ops/_ext/dff_ops.so``).

    python -m dff.ops.build [--cpu-only] [--force] [--verbose]

One shared library (not a Python module) that registers ``torch.ops.dff.*``; :mod:`dff.ops._ext`
loads it. CUDA kernels are compiled too when torch has CUDA and ``nvcc`` is found (``$CUDA_HOME/bin``
or ``PATH``); ``--cpu-only`` skips them. Uses ninja (through ``torch.utils.cpp_extension``) when it is
installed, else one direct compiler call (CPU only).

Never fails an install: a missing compiler or a failed build prints a WARNING and exits 0 (the
operators then use their pure-PyTorch fallbacks). Idempotent: a stamp records a hash of the sources
and of the build configuration, and an unchanged build is not redone (``--force`` rebuilds).

Environment: ``CXX`` (C++ compiler), ``CUDA_HOME``, ``TORCH_CUDA_ARCH_LIST`` (default: the visible
GPUs, or "8.0;9.0+PTX" when none is visible, to keep the compile short), ``MAX_JOBS``.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import sysconfig
import time
import traceback

import torch

from dff.ops import _ext

NAME = "dff_ops"
DEFAULT_CUDA_ARCHS = "8.0;9.0+PTX"  # A100/H100 SASS; PTX runs (JIT) on newer GPUs; sm_8x SASS covers 8.6/8.9
CXX_FLAGS = ["-O3", "-fopenmp", "-ffp-contract=off"]  # openmp: at::parallel_for; no FMA: match the reference
CUDA_FLAGS = ["-O3", "--fmad=false"]  # no FMA: same float results as the CPU kernels (bin edges, weights)
LD_FLAGS = ["-fopenmp"]


def source_dir() -> pathlib.Path:
    """``operator_cxx/`` of the repository (this package is ``<repo>/lib/dff``)."""
    return pathlib.Path(__file__).resolve().parents[3] / "operator_cxx"


def _sources(cuda: bool) -> list[pathlib.Path]:
    src = source_dir()
    files = sorted(src.glob("*.cpp"))
    if cuda:
        files += sorted(src.glob("*.cu"))
    return files


def find_cxx() -> str | None:
    """The C++ compiler to use (``$CXX``, else c++, g++ or clang++ on PATH), or None."""
    cxx = os.environ.get("CXX") or "c++"
    return shutil.which(cxx) or shutil.which("g++") or shutil.which("clang++")


def cuda_toolkit() -> tuple[str | None, str]:
    """(toolkit root with bin/nvcc and lib64|lib, how it was found) or (None, why not).

    ``nvcc`` may be a wrapper script (here /usr/local/bin/nvcc execs /usr/local/cuda-13.0/bin/nvcc), in
    which case torch's guess (the parent of nvcc's folder, /usr/local) has no libcudart and linking
    fails. ``nvcc --dryrun`` prints the real root as ``TOP=``; that is what is used.
    """
    env = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    nvcc = None
    if env and os.path.isfile(os.path.join(env, "bin", "nvcc")):
        nvcc = os.path.join(env, "bin", "nvcc")
    else:
        nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None, "nvcc not found (set CUDA_HOME or put nvcc on PATH)"
    try:
        out = subprocess.run(  # a dry-run compile prints the driver's variables, TOP among them
            [nvcc, "--dryrun", "-c", "-x", "cu", os.devnull, "-o", os.devnull],
            capture_output=True, text=True, timeout=60,
        )
        text = out.stdout + out.stderr
    except (OSError, subprocess.SubprocessError) as e:
        return None, f"{nvcc} does not run: {e}"
    m = re.search(r"^#\$ TOP=(.+)$", text, re.MULTILINE)
    candidates = [m.group(1).strip()] if m else []
    candidates.append(str(pathlib.Path(os.path.realpath(nvcc)).parent.parent))
    for c in candidates:
        root = os.path.realpath(c)
        libdir = next((d for d in ("lib64", "lib") if _has_cudart(os.path.join(root, d))), None)
        if os.path.isfile(os.path.join(root, "bin", "nvcc")) and libdir:
            return root, f"nvcc {nvcc} -> toolkit {root}"
    return None, f"no CUDA toolkit with bin/nvcc and lib64/libcudart found for {nvcc} (tried {candidates})"


def _has_cudart(libdir: str) -> bool:
    return os.path.isdir(libdir) and any(f.startswith("libcudart.so") for f in os.listdir(libdir))


def _digest(files: list[pathlib.Path], config: dict) -> str:
    h = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
    for f in sorted(files) + sorted(source_dir().glob("*.h")):
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def build(cpu_only: bool = False, force: bool = False, verbose: bool = False) -> pathlib.Path:
    """Build (or find up to date) the library; returns its path. Raises on failure."""
    src = source_dir()
    if not src.is_dir():
        raise FileNotFoundError(f"sources not found: {src} (a non-editable install has no operator_cxx/)")
    cxx = find_cxx()
    if cxx is None:
        raise FileNotFoundError("no C++ compiler found (set CXX or install g++)")

    cuda_root, cuda_why = cuda_toolkit() if torch.version.cuda is not None else (None, "torch has no CUDA")
    if cuda_root is not None:
        os.environ["CUDA_HOME"] = cuda_root  # also silences cpp_extension's guess for CPU-only builds
    if cpu_only:
        cuda_root, cuda_why = None, "--cpu-only"
    with_cuda = cuda_root is not None
    if with_cuda:
        if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
            os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_CUDA_ARCHS

    out_dir = _ext.build_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    lib = out_dir / _ext.LIBRARY_NAME
    stamp = out_dir / f"{NAME}.stamp.json"
    files = _sources(with_cuda)
    config = {
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "cxx": cxx,
        "cuda": cuda_root,
        "archs": os.environ.get("TORCH_CUDA_ARCH_LIST", "") if with_cuda else "",
        "cxx_flags": CXX_FLAGS,
        "cuda_flags": CUDA_FLAGS,
    }
    digest = _digest(files, config)
    mode = f"CPU+CUDA ({config['archs'] or 'visible GPUs'})" if with_cuda else f"CPU only ({cuda_why})"
    if not force and lib.is_file() and stamp.is_file():
        try:
            if json.loads(stamp.read_text()).get("digest") == digest:
                print(f"dff.ops.build: up to date: {lib} [{mode}]")
                return lib
        except (OSError, ValueError):
            pass

    print(f"dff.ops.build: building {lib} [{mode}] from {len(files)} sources in {src}", flush=True)
    # no stale library survives a failed build: it might not match the current sources
    stamp.unlink(missing_ok=True)
    lib.unlink(missing_ok=True)
    t0 = time.time()
    # deferred: cpp_extension reads CUDA_HOME when imported, and build() has only now chosen the toolkit
    from torch.utils import cpp_extension

    if with_cuda:
        cpp_extension.CUDA_HOME = cuda_root  # the module caches its own guess at import
    if cpp_extension.is_ninja_available():
        cpp_extension.load(
            name=NAME,
            sources=[str(f) for f in files],
            extra_cflags=CXX_FLAGS,
            extra_cuda_cflags=CUDA_FLAGS,
            extra_ldflags=LD_FLAGS,
            extra_include_paths=[str(src)],
            build_directory=str(out_dir),
            verbose=verbose,
            with_cuda=with_cuda,
            is_python_module=False,
        )
    else:
        if with_cuda:
            print("dff.ops.build: WARNING: ninja is not installed; building the CPU kernels only "
                  "(pip install ninja for CUDA)", flush=True)
            files = _sources(False)
            config = {**config, "cuda": None, "archs": ""}
            digest = _digest(files, config)
            mode = "CPU only (ninja not installed)"
        _build_direct(cxx, files, lib, verbose)
    built = out_dir / f"{NAME}.so"
    if built != lib:
        built.replace(lib)
    stamp.write_text(json.dumps({"digest": digest, "config": config, "mode": mode}, indent=1))
    print(f"dff.ops.build: built {lib} [{mode}] in {time.time() - t0:.1f} s", flush=True)
    return lib


def _build_direct(cxx: str, files: list[pathlib.Path], lib: pathlib.Path, verbose: bool) -> None:
    """One compiler call for the CPU sources (used when ninja is missing)."""
    from torch.utils import cpp_extension  # deferred: it reads CUDA_HOME when imported (see build)

    abi = int(getattr(torch._C, "_GLIBCXX_USE_CXX11_ABI", True))
    # C++20: what torch's own extension builds use (recent torch headers require it)
    cmd = [cxx, "-shared", "-fPIC", "-std=c++20", *CXX_FLAGS, f"-D_GLIBCXX_USE_CXX11_ABI={abi}"]
    cmd += [f"-I{p}" for p in [*cpp_extension.include_paths(), sysconfig.get_paths()["include"], str(source_dir())]]
    cmd += [str(f) for f in files]
    cmd += [f"-L{p}" for p in cpp_extension.library_paths()]
    cmd += ["-lc10", "-ltorch_cpu", "-ltorch", *LD_FLAGS, "-o", str(lib)]
    if verbose:
        print(" ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dff.ops.build", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cpu-only", action="store_true", help="do not compile the CUDA kernels")
    ap.add_argument("--force", action="store_true", help="rebuild even if the sources are unchanged")
    ap.add_argument("--verbose", action="store_true", help="show the compiler commands")
    args = ap.parse_args(argv)
    try:
        build(cpu_only=args.cpu_only, force=args.force, verbose=args.verbose)
    except Exception as e:  # an install must never break: warn, and the fallbacks are used
        if args.verbose:
            traceback.print_exc()
        lines = str(e).strip().splitlines()
        errors = [ln.strip() for ln in lines if "error" in ln.lower()][:5] or lines[-1:]
        print(f"dff.ops.build: WARNING: compiled operators not built ({type(e).__name__}: "
              f"{' | '.join(errors)}); the pure-PyTorch fallbacks will be used. "
              f"Run `python -m dff.ops.build --verbose` for details.", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
