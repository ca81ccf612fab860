"""DFF's custom operators: position-sensitive RoI pooling, the fused flow-warp x scale and a fixed-size
greedy NMS.

Each runs either the compiled C++/CUDA library (``operator_cxx/``, built by ``sh init.sh`` or
``python -m dff.ops.build``) or a pure-PyTorch fallback with the same semantics; see
:mod:`dff.ops.backend` for the choice (``DFF_OPS_BACKEND`` = auto | compiled | fallback).
"""
from dff.ops._ext import compiled_available
from dff.ops.backend import get_default_backend, ops_backend, set_default_backend
from dff.ops.nms import nms_fixed
from dff.ops.psroi import psroi_pool
from dff.ops.warp import warp_scale

__all__ = [
    "compiled_available",
    "get_default_backend",
    "nms_fixed",
    "ops_backend",
    "psroi_pool",
    "set_default_backend",
    "warp_scale",
]
