"""Which implementation the operators run: the compiled C++/CUDA library or pure PyTorch.

``backend`` arguments and the default take one of:

* ``"auto"`` (default): the compiled operators when the library is built and has a kernel for the
  tensors' device and dtype (float32/float64 on CPU or CUDA), else the pure-PyTorch fallback;
* ``"compiled"``: the compiled operators; a clear error if the library is not built;
* ``"fallback"``: pure PyTorch (same semantics; see each operator for its exactness).

The default comes from the environment variable ``DFF_OPS_BACKEND`` unless set with
:func:`set_default_backend` or, for a block, :func:`ops_backend`.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

from dff.ops import _ext

BACKENDS = ("auto", "compiled", "fallback")
ENV_VAR = "DFF_OPS_BACKEND"

_default: str | None = None  # None: read ENV_VAR


def _check_name(name: str, where: str) -> str:
    if not isinstance(name, str) or name.strip().lower() not in BACKENDS:
        raise ValueError(f"{where}: unknown operator backend {name!r}; expected one of {', '.join(BACKENDS)}")
    return name.strip().lower()


def get_default_backend() -> str:
    """The backend used when an operator is called with ``backend=None``."""
    if _default is not None:
        return _default
    return _check_name(os.environ.get(ENV_VAR, "auto") or "auto", f"environment variable {ENV_VAR}")


def set_default_backend(name: str | None) -> None:
    """Set the default backend (``"auto"``, ``"compiled"``, ``"fallback"``); None: back to ``DFF_OPS_BACKEND``."""
    global _default
    _default = None if name is None else _check_name(name, "set_default_backend")


@contextlib.contextmanager
def ops_backend(name: str | None) -> Iterator[None]:
    """Use backend ``name`` as the default inside a ``with`` block (None: leave the default as it is)."""
    global _default
    previous = _default
    if name is not None:
        set_default_backend(name)
    try:
        yield
    finally:
        _default = previous


_COMPILED_DTYPES = (torch.float32, torch.float64)


def resolve(backend: str | None, op: str, like: torch.Tensor) -> str:
    """``"compiled"`` or ``"fallback"`` for operator ``op`` (``"dff::name"``) on tensors like ``like``."""
    name = get_default_backend() if backend is None else _check_name(backend, f"{op.split('::')[-1]}(backend=...)")
    if name == "fallback":
        return "fallback"
    if name == "compiled":
        if not _ext.load():
            raise RuntimeError(
                f"{op}: backend 'compiled' requested but the compiled operators are not available "
                f"({_ext.load_error()}); {_ext.BUILD_HINT}"
            )
        return "compiled"
    usable = (
        like.dtype in _COMPILED_DTYPES
        and _ext.load()
        and _ext.has_kernel(op, like.device.type)
    )
    return "compiled" if usable else "fallback"


def describe(x: object) -> str:
    """``shape (..)`` of a tensor, else its type name: for argument errors."""
    return f"shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
