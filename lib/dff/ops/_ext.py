"""Loader of the compiled operator library (``operator_cxx/``, built by ``python -m dff.ops.build``).

The shared library registers ``torch.ops.dff.*`` (schemas and CPU/CUDA kernels). It is loaded lazily,
on the first call that needs it. This module then registers, from Python, the parts torch wants in
Python: fake (meta) kernels for ``torch.compile``, the autograd formulas and autocast casts. The C++
side names this module with ``m.set_python_module("dff.ops._ext")``.

If the library is absent or fails to load, :func:`load` warns once, naming the path and the build
command, and returns False; the operators then use their pure-PyTorch fallbacks.
"""
from __future__ import annotations

import os
import pathlib
import warnings

import torch

LIBRARY_ENV = "DFF_OPS_LIBRARY"  # path of the library to load instead of the default build output
LIBRARY_NAME = "dff_ops.so"
BUILD_HINT = "build them with `sh init.sh` or `python -m dff.ops.build`"

_loaded: bool | None = None  # None: not tried yet
_error = ""
_warned = False
_registered = False  # Python-side registrations are process-wide: done once, never undone


class CompiledOpsWarning(UserWarning):
    """The compiled operators could not be loaded; the pure-PyTorch fallbacks are used."""


def build_dir() -> pathlib.Path:
    """Where ``python -m dff.ops.build`` puts the library (``lib/dff/ops/_ext/``, git-ignored)."""
    return pathlib.Path(__file__).resolve().parent / "_ext"


def library_path() -> pathlib.Path:
    """The library to load: ``$DFF_OPS_LIBRARY`` if set, else ``lib/dff/ops/_ext/dff_ops.so``."""
    env = os.environ.get(LIBRARY_ENV)
    return pathlib.Path(env) if env else build_dir() / LIBRARY_NAME


@torch.compiler.assume_constant_result  # under torch.compile: run eagerly at trace time, a constant in the graph
def load() -> bool:
    """Load the library once (a racing first call is harmless: loading is idempotent). True if usable."""
    global _loaded, _error, _warned
    if _loaded is None:
        path = library_path()
        try:
            if not path.is_file():
                raise FileNotFoundError("not built")
            torch.ops.load_library(str(path))
            _register_python_side()
            _find_kernels()
            _loaded = True
        except Exception as e:  # any failure (missing, ABI mismatch, ...) means: use the fallback
            _loaded = False
            _error = f"{path}: {type(e).__name__}: {e}".replace("\n", " ")
            if not _warned:
                _warned = True
                warnings.warn(
                    f"dff.ops: compiled operators not loaded ({_error}); using the pure-PyTorch fallback. "
                    f"{BUILD_HINT[0].upper()}{BUILD_HINT[1:]}.",
                    CompiledOpsWarning,
                    stacklevel=3,
                )
    return _loaded


def compiled_available() -> bool:
    """True if the compiled operator library is built and loads (it is loaded by this call)."""
    return load()


def load_error() -> str:
    """Why the library did not load ("" if it did or was not tried)."""
    return _error


_OPS = ("dff::psroi_pool_forward", "dff::warp_scale_forward", "dff::nms_fixed")
_kernels: dict[str, frozenset[str]] = {}  # op -> device types with a kernel; filled once at load


def has_kernel(op: str, device_type: str) -> bool:
    """Whether loaded operator ``op`` (e.g. ``"dff::warp_scale_forward"``) has a kernel for the device type.

    A plain dict lookup (computed at load), so ``torch.compile`` can trace the backend choice.
    """
    return device_type in _kernels.get(op, ())


def _find_kernels() -> None:
    for op in _OPS:
        _kernels[op] = frozenset(
            dev for dev, key in (("cpu", "CPU"), ("cuda", "CUDA"))
            if torch._C._dispatch_has_kernel_for_dispatch_key(op, key)
        )


# ----------------------------------------------------------------------------------------------------
# Python-side registrations for the C++ operators


def _register_python_side() -> None:
    global _registered
    if _registered:
        return
    lib = "dff::"

    # fake kernels: output shapes/dtypes only (torch.compile, meta tensors)
    @torch.library.register_fake(lib + "psroi_pool_forward")
    def _psroi_forward_fake(data, rois, spatial_scale, group_size, pooled_size, output_dim):
        shape = (rois.shape[0], output_dim, pooled_size, pooled_size)
        return data.new_empty(shape), data.new_empty(shape, dtype=torch.int32)

    @torch.library.register_fake(lib + "psroi_pool_backward")
    def _psroi_backward_fake(grad_out, rois, mapping_channel, spatial_scale, pooled_size, data_size):
        return grad_out.new_empty(data_size)

    @torch.library.register_fake(lib + "warp_scale_forward")
    def _warp_forward_fake(feat, flow, scale):
        return torch.empty_like(feat, memory_format=torch.contiguous_format)

    @torch.library.register_fake(lib + "warp_scale_backward")
    def _warp_backward_fake(grad_out, feat, flow, scale):
        n, c, h, w = feat.shape
        return (
            feat.new_empty((n, c, h, w)),
            feat.new_empty((n, 2, h, w)),
            feat.new_empty((n if scale is not None else 0, c, h, w)),
        )

    @torch.library.register_fake(lib + "nms_fixed")
    def _nms_fixed_fake(boxes, valid, labels, scores, iou_threshold, max_keep, cap):
        return boxes.new_empty((max_keep,), dtype=torch.long), boxes.new_empty((1,), dtype=torch.long)

    # autograd
    def _psroi_setup(ctx, inputs, output):
        data, rois, spatial_scale, _group_size, pooled_size, _output_dim = inputs
        _out, mapping_channel = output
        ctx.save_for_backward(rois, mapping_channel)
        ctx.spatial_scale = spatial_scale
        ctx.pooled_size = pooled_size
        ctx.data_size = list(data.shape)
        ctx.mark_non_differentiable(mapping_channel)

    def _psroi_backward(ctx, grad_out, _grad_mapping):
        rois, mapping_channel = ctx.saved_tensors
        grad_data = None
        if ctx.needs_input_grad[0]:
            grad_data = torch.ops.dff.psroi_pool_backward(
                grad_out, rois, mapping_channel, ctx.spatial_scale, ctx.pooled_size, ctx.data_size
            )
        return grad_data, None, None, None, None, None  # no gradient to rois (as in MXNet)

    torch.library.register_autograd(lib + "psroi_pool_forward", _psroi_backward, setup_context=_psroi_setup)

    def _warp_setup(ctx, inputs, output):
        feat, flow, scale = inputs
        ctx.save_for_backward(feat, flow, scale)

    def _warp_backward(ctx, grad_out):
        feat, flow, scale = ctx.saved_tensors
        grad_feat, grad_flow, grad_scale = torch.ops.dff.warp_scale_backward(grad_out, feat, flow, scale)
        need = ctx.needs_input_grad
        return (
            grad_feat if need[0] else None,
            grad_flow if need[1] else None,
            grad_scale if scale is not None and need[2] else None,
        )

    torch.library.register_autograd(lib + "warp_scale_forward", _warp_backward, setup_context=_warp_setup)

    # autocast (AMP): the kernels are float32/float64 only, so run them in float32 inside autocast regions
    for op in ("psroi_pool_forward", "warp_scale_forward"):
        for device_type in ("cpu", "cuda"):
            torch.library.register_autocast(lib + op, device_type, torch.float32)
    _registered = True
