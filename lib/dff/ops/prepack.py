"""oneDNN weight pre-packing of convolutions for CPU inference (part of the CPU fast path).

Eager ``F.conv2d`` on the CPU hands oneDNN a plain (OIHW) weight, and oneDNN re-lays it out into its
blocked format on every call. For FlowNet's coarse levels that re-layout is most of the work: a 3x3
1024 -> 1024 convolution over 5x7 pixels reads 38 MB of weights to do 0.7 GFLOP (the timings are in
docs/benchmarks.md). :func:`prepack_convolutions` re-lays each weight out once, the way inductor's
``freezing`` does (again when the input shape changes: only the last shape's packing is kept), and
calls oneDNN with it; the modules, their parameters and their ``state_dict`` stay as they are.

Packing applies inside :func:`packing` only, so that a caller chooses the stages it pays off for (the
video engine: the feature network and FlowNet; not the task network, whose 1x1 convolutions over large
maps gain nothing and whose NHWC outputs would cost a transposition before PSROI pooling). Only plain
float32 inference on the CPU takes the packed path: in training (``module.training`` or
autograd recording), for other dtypes or devices, non-contiguous inputs, non-zero padding modes or
string padding, the module's own ``forward`` runs. A weight that changes (``load_state_dict``, an
optimizer step) is re-packed on the next call (an inference-mode weight has no version counter: it is
re-packed when its storage changes, not when it is modified in place). The packed convolution may sum
in another order than the plain one: results agree to float32 rounding (``tests/test_fastpath.py``),
not bit for bit.
"""
from __future__ import annotations

import contextlib
import threading
import warnings
import weakref
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_PACKED_TYPES = (nn.Conv2d, nn.ConvTranspose2d)
_scope = threading.local()


@contextlib.contextmanager
def packing(enabled: bool = True) -> Iterator[None]:
    """Within this block (this thread), modules given :func:`prepack_convolutions` run pre-packed.

    The packed convolutions answer in oneDNN's NHWC layout (``channels_last`` strides); the ops
    after them accept that, and a caller that needs NCHW makes its result contiguous."""
    previous = getattr(_scope, "on", False)
    _scope.on = enabled
    try:
        yield
    finally:
        _scope.on = previous


def prepack_available() -> bool:
    """Whether this torch build has oneDNN and the pre-packed convolution operators (inductor's)."""
    ops = torch.ops.mkldnn
    try:
        return (torch.backends.mkldnn.is_available()
                and hasattr(ops, "_convolution_pointwise") and hasattr(ops, "_convolution_transpose_pointwise")
                and hasattr(ops, "_reorder_convolution_transpose_weight"))
    except RuntimeError:  # an operator namespace that fails to load
        return False


class _PackedForward:
    """Replaces one module's ``forward``; keeps the packed weight of the last input shape."""

    def __init__(self, module: nn.Conv2d | nn.ConvTranspose2d) -> None:
        self._module = weakref.ref(module)  # no cycle module -> forward -> module
        self._original = type(module).forward
        # the packing of the last input shape only: a video keeps its size, and one packed copy of every
        # weight per size seen would grow without bound over a test set of mixed resolutions
        self._cache: tuple[tuple, Tensor] | None = None
        self.failed = False

    def _usable(self, m: nn.Module, x: Tensor) -> bool:
        return (getattr(_scope, "on", False) and not self.failed and not m.training and not torch.is_grad_enabled()
                and x.device.type == "cpu" and x.dtype == torch.float32 and x.dim() == 4
                and m.weight.dtype == torch.float32 and m.weight.device.type == "cpu"
                and (x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last))
                and m.padding_mode == "zeros" and not isinstance(m.padding, str)
                # a 1x1 convolution is one matrix product: its weight re-layout is 1/HW of the work, and on an
                # NCHW input the plain path keeps the output NCHW (no transposition for whoever reads it)
                and not (m.kernel_size == (1, 1) and m.stride == (1, 1) and x.is_contiguous()))

    def _packed_weight(self, m: nn.Module, x: Tensor) -> Tensor:
        key = tuple(x.shape)
        w = m.weight
        # inference tensors have no version counter: for them only a new storage triggers a re-pack
        stamp = (key, w.data_ptr(), None if w.is_inference() else w._version)
        if self._cache is None or self._cache[0] != stamp:
            self._cache = None  # free the old packing before making the new one
            w = w.detach()
            if isinstance(m, nn.ConvTranspose2d):
                packed = torch.ops.mkldnn._reorder_convolution_transpose_weight(
                    w, list(m.padding), list(m.output_padding), list(m.stride), list(m.dilation), m.groups, list(key))
            else:
                packed = torch._C._nn.mkldnn_reorder_conv2d_weight(
                    w.to_mkldnn(), list(m.padding), list(m.stride), list(m.dilation), m.groups, list(key))
            self._cache = (stamp, packed)
        return self._cache[1]

    def packed(self, x: Tensor, attr: str = "none", scalars: list[float] | None = None) -> Tensor | None:
        """The packed convolution of ``x`` with oneDNN post-op ``attr`` (e.g. ``"leaky_relu"``, [slope]);
        None where the packed path does not apply (the caller runs the module and the op itself)."""
        m = self._module()
        if m is None or not self._usable(m, x):
            return None
        try:
            w = self._packed_weight(m, x)
            b = None if m.bias is None else m.bias.detach()
            if isinstance(m, nn.ConvTranspose2d):
                return torch.ops.mkldnn._convolution_transpose_pointwise(
                    x, w, b, list(m.padding), list(m.output_padding), list(m.stride), list(m.dilation), m.groups,
                    attr, scalars or [], "")
            return torch.ops.mkldnn._convolution_pointwise(
                x, w, b, list(m.padding), list(m.stride), list(m.dilation), m.groups, attr, scalars or [], "")
        except RuntimeError as e:  # an unsupported configuration: this module runs plain from now on
            self.failed = True
            self._cache = None
            warnings.warn(f"CPU fast path: pre-packed {type(m).__name__} failed ({e}); running it unpacked")
            return None

    def __call__(self, x: Tensor, *args, **kwargs) -> Tensor:
        y = None if args or kwargs else self.packed(x)
        return self._original(self._module(), x, *args, **kwargs) if y is None else y


def conv_leaky_relu(module: nn.Module, x: Tensor, slope: float) -> Tensor:
    """``leaky_relu(module(x), slope)``; inside :func:`packing`, one oneDNN call with the activation fused
    (a pass less over the output; the same values: max(y, 0) + slope * min(y, 0) in float32 either way)."""
    forward = module.__dict__.get("forward")
    if isinstance(forward, _PackedForward):
        y = forward.packed(x, "leaky_relu", [slope])
        if y is not None:
            return y
    return F.leaky_relu(module(x), slope, inplace=True)


def prepack_convolutions(model: nn.Module) -> int:
    """Give every ``Conv2d`` / ``ConvTranspose2d`` of ``model`` a pre-packed float32 CPU inference path,
    taken inside :func:`packing`.

    Returns how many modules got it (0 where :func:`prepack_available` is False). Idempotent; undo
    with :func:`unpack_convolutions`.
    """
    if not prepack_available():
        return 0
    count = 0
    for m in model.modules():
        if type(m) in _PACKED_TYPES:  # exact types: a subclass may have its own forward
            if not isinstance(m.__dict__.get("forward"), _PackedForward):
                m.forward = _PackedForward(m)
            count += 1
    return count


def unpack_convolutions(model: nn.Module) -> int:
    """Remove what :func:`prepack_convolutions` added; returns how many modules had it."""
    count = 0
    for m in model.modules():
        if isinstance(m.__dict__.get("forward"), _PackedForward):
            del m.forward
            count += 1
    return count
