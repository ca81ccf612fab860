"""The fast path of the video engine: autocast, channels_last, cuDNN autotuning, CUDA graphs on the GPU;
oneDNN weight pre-packing (:mod:`dff.ops.prepack`) on the CPU.

:class:`FastPath` says which of these to use; :class:`StageRunner` runs the engine's fixed-shape
stages with them:

* ``feature(data)`` -- the feature network (key frames);
* ``flow(data, key_data)`` -- FlowNet: flow and scale map (non-key frames);
* ``warp(key_feat, flow, scale)`` -- the fused warp x scale (non-key frames);
* ``maps(feat, im_info)`` -- the convolutional task network (:meth:`dff.models.rfcn.RFCN.head_maps`)
  and the fixed-shape half of the proposals (:meth:`~dff.models.rfcn.RFCN.candidates`: decode, sort);
* ``head(feat, im_info)`` -- ``maps``, then the proposal NMS, PSROI pooling and softmax
  (:meth:`~dff.models.rfcn.RFCN.head_rois`): the whole task network;
* ``post(rois, cls_prob, bbox_pred, im_info)`` -- the detections' post-processing, a function given
  to the runner (the engine's :func:`dff.engine.postprocess.pred_eval_fixed`).

``head`` and ``post`` are fixed-shape and free of host synchronisation only where the compiled
:func:`dff.ops.nms_fixed` kernel exists for the device (:attr:`StageRunner.sync_free`); elsewhere the
engine uses ``maps`` and runs the rest eagerly. Everything here is float32 at the stage boundaries:
under autocast each stage casts its outputs back to float32, so proposals, PSROI pooling and the warp
(which work in float32 anyway, see :mod:`dff.ops`) see the same dtypes as without the fast path.

A CUDA graph is captured per input shape the first time a stage sees it (after two warm-up calls
that also let cuDNN pick its algorithms) and replayed after that, which removes the CPU launch
overhead of the ~300 kernels of a ResNet-101 frame. Replays write into the graph's static output
tensors: a stage's result is valid until that stage runs again (the engine copies the key feature
it caches). If capture fails the stage falls back to eager execution with a warning.
"""
from __future__ import annotations

import contextlib
import dataclasses
import warnings
from typing import Callable, Iterator

import torch
from torch import Tensor

from dff.engine.partial import UpdateInfo, partial_update
from dff.ops.backend import resolve
from dff.ops.prepack import packing, prepack_available, prepack_convolutions

AMP_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
FAST_NAMES = ("none", "fp32", "tf32", "fp16", "bf16")


@contextlib.contextmanager
def tf32_mode(enabled: bool) -> Iterator[None]:
    """cuDNN convolutions and cuBLAS matmuls in TF32 (10-bit mantissa) or true float32 while inside;
    the previous global setting is restored on exit (PyTorch's default leaves TF32 convolutions on)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@dataclasses.dataclass(frozen=True)
class FastPath:
    """Which speed-ups to use. All off (the default) is the plain float32 eager engine (TF32 off too).

    amp: ``"fp16"`` or ``"bf16"`` autocast of the stages, or None.
    tf32: let float32 convolutions and matmuls run in TF32 on GPUs that have it (off: true float32).
    channels_last: run the convolutions in NHWC memory format (faster tensor-core kernels).
    cuda_graphs: capture the fixed-shape stages in CUDA graphs (CUDA only).
    cudnn_benchmark: let cuDNN time its algorithms for each new shape.
    prepack: float32 CPU convolutions with weights pre-packed for oneDNN (:mod:`dff.ops.prepack`).
    """

    amp: str | None = None
    tf32: bool = False
    channels_last: bool = False
    cuda_graphs: bool = False
    cudnn_benchmark: bool = False
    prepack: bool = False

    def __post_init__(self) -> None:
        if self.amp is not None and self.amp not in AMP_DTYPES:
            raise ValueError(f"FastPath.amp must be one of {', '.join(AMP_DTYPES)} or None, got {self.amp!r}")

    @classmethod
    def full(cls, device: str | torch.device, amp: str | None = "fp16", tf32: bool = True) -> "FastPath":
        """Everything that applies to ``device``: all on for CUDA, nothing for the CPU."""
        if torch.device(device).type != "cuda":
            return cls()
        return cls(amp=amp, tf32=tf32, channels_last=True, cuda_graphs=True, cudnn_benchmark=True)

    @classmethod
    def from_name(cls, name: str | None, device: str | torch.device) -> "FastPath":
        """A command line's ``--fast`` value, named by the arithmetic it runs in:

        * ``none``: the plain eager engine in true float32 (TF32 off);
        * ``fp32``: still true float32, with the speed-ups that keep it: on CUDA channels_last, cuDNN
          autotuning and CUDA graphs; on the CPU oneDNN pre-packed weights;
        * ``tf32`` (CUDA only): ``fp32`` with TF32 convolutions and matmuls;
        * ``fp16`` / ``bf16``: on CUDA ``tf32`` with autocast; on the CPU autocast and channels_last.

        None: ``fp16`` on CUDA, ``fp32`` on the CPU (``none`` where this torch cannot pre-pack)."""
        device = torch.device(device)
        if name is None:
            name = "fp16" if device.type == "cuda" else ("fp32" if prepack_available() else "none")
        if name not in FAST_NAMES:
            raise ValueError(f"--fast must be one of {', '.join(FAST_NAMES)}, got {name!r}")
        if name == "none":
            return cls()
        if name == "tf32" and device.type != "cuda":
            raise ValueError("--fast tf32 is a GPU mode (TF32 tensor cores); on the CPU use fp32")
        amp = None if name in ("fp32", "tf32") else name
        if device.type != "cuda":
            # measured on the CPU: channels_last alone is slower, pre-packing faster (docs/benchmarks.md)
            return cls(prepack=True) if amp is None else cls(amp=amp, channels_last=True)
        return cls.full(device, amp=amp, tf32=name != "fp32")

    @property
    def enabled(self) -> bool:
        return bool(self.amp or self.tf32 or self.channels_last or self.cuda_graphs or self.cudnn_benchmark
                    or self.prepack)

    def describe(self) -> str:
        parts = [f"amp {self.amp}" if self.amp else ("float32 (TF32 allowed)" if self.tf32 else "float32")]
        parts += [name for name, on in (("channels_last", self.channels_last), ("CUDA graphs", self.cuda_graphs),
                                        ("cuDNN autotune", self.cudnn_benchmark),
                                        ("oneDNN pre-packed weights", self.prepack)) if on]
        return ", ".join(parts)


def _float32(x):
    """Outputs leave a stage in float32 (contiguous NCHW), whatever the stage computed in."""
    if isinstance(x, Tensor):
        return x.float().contiguous() if x.is_floating_point() else x
    if isinstance(x, dict):
        return {k: _float32(v) for k, v in x.items()}
    if isinstance(x, (tuple, list)):
        return type(x)(_float32(v) for v in x)
    return x


class _Graphed:
    """One function, captured in a CUDA graph per input signature; replays copy the inputs in."""

    def __init__(self, fn: Callable, name: str) -> None:
        self.fn = fn
        self.name = name
        self.graphs: dict[tuple, tuple] = {}
        self.failed = False

    def __call__(self, *args: Tensor):
        if self.failed:
            return self.fn(*args)
        key = tuple((tuple(a.shape), a.dtype, a.device) for a in args)
        entry = self.graphs.get(key)
        if entry is None:
            try:
                entry = self.graphs[key] = self._capture(args)
            except RuntimeError as e:  # e.g. an operator that synchronises: run this stage eagerly
                warnings.warn(f"fast path: CUDA graph capture of the {self.name} stage failed ({e}); "
                              f"running it eagerly")
                self.failed = True
                torch.cuda.synchronize()
                return self.fn(*args)
        graph, static_in, static_out = entry
        for dst, src in zip(static_in, args):
            dst.copy_(src, non_blocking=True)
        graph.replay()
        return static_out

    def _capture(self, args: tuple[Tensor, ...]) -> tuple:
        static_in = [a.detach().clone() for a in args]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up off the capture: cuDNN autotuning, lazy inits
            for _ in range(2):
                self.fn(*static_in)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # thread_local: decoding threads may pin memory (a CUDA call) while this thread captures
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            static_out = self.fn(*static_in)
        return graph, static_in, static_out


class StageRunner:
    """The engine's fixed-shape stages of ``model`` with the speed-ups of ``fast``.

    ``model`` must be in eval mode on its device; with ``channels_last`` it is converted in place.
    """

    def __init__(self, model: torch.nn.Module, fast: FastPath | None = None,
                 post: Callable[..., tuple[Tensor, Tensor]] | None = None) -> None:
        self.model = model
        self.fast = fast or FastPath()
        try:
            self.device = next(model.parameters()).device
        except StopIteration:
            self.device = torch.device("cpu")
        # head and post run without host synchronisation only where the compiled nms_fixed runs (its
        # pure-PyTorch fallback synchronises); decided once, not on every frame
        self.sync_free = resolve(None, "dff::nms_fixed", torch.empty(0, device=self.device)) == "compiled"
        f = self.fast
        if f.cuda_graphs and self.device.type != "cuda":
            raise ValueError(f"fast path: CUDA graphs need the model on a CUDA device, it is on {self.device}")
        if f.cudnn_benchmark:
            torch.backends.cudnn.benchmark = True
        if f.channels_last:
            model.to(memory_format=torch.channels_last)
        if f.prepack and self.device.type == "cpu":
            if not prepack_convolutions(model):
                warnings.warn("fast path: this torch cannot pre-pack oneDNN weights; CPU convolutions run plain")
        # every stage of every scheme: a model lacking one (an R-FCN's flow) fails only if the scheme calls it
        stages = {"feature": self._feature, "maps": self._maps, "head": self._head, "task_maps": self._task_maps,
                  "flow": self._flow,
                  "warp": self._warp, "flow_q": self._flow_q, "aggregate": self._aggregate}
        if post is not None:
            stages["post"] = post
        if f.cuda_graphs:
            stages = {k: _Graphed(fn, k) for k, fn in stages.items()}
        self._stages = stages

    # the stage bodies -------------------------------------------------------------------------
    def _autocast(self):
        dtype = AMP_DTYPES.get(self.fast.amp) if self.fast.amp else None
        # no weight-cast cache: inside a CUDA graph the casts must be part of the graph
        return torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None,
                              cache_enabled=False if self.fast.cuda_graphs else None)

    def _input(self, x: Tensor) -> Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.fast.channels_last else x

    def _precision(self):
        # on CUDA the TF32 choice is the stage's, not the process's: set while the stage runs (and is
        # captured), restored after
        return tf32_mode(self.fast.tf32) if self.device.type == "cuda" else contextlib.nullcontext()

    def _packing(self):
        # the feature network and FlowNet only: see dff.ops.prepack for why not the task network
        return packing(self.fast.prepack and self.device.type == "cpu")

    def _feature(self, data: Tensor) -> Tensor:
        with self._precision(), self._autocast(), self._packing():
            return _float32(self.model.extract_feature(self._input(data)))

    def _flow(self, data: Tensor, key_data: Tensor) -> tuple[Tensor, Tensor]:
        with self._precision(), self._autocast(), self._packing():
            return _float32(self.model.estimate_flow(self._input(data), self._input(key_data)))

    def _flow_q(self, data: Tensor, key_data: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        with self._precision(), self._autocast(), self._packing():
            return _float32(self.model.estimate_flow_q(self._input(data), self._input(key_data)))

    def _aggregate(self, key_feat: Tensor, prev_warped: Tensor) -> Tensor:
        with self._precision(), self._autocast():
            return _float32(self.model.aggregate(self._input(key_feat), self._input(prev_warped)))

    def _warp(self, key_feat: Tensor, flow: Tensor, scale: Tensor) -> Tensor:
        return self.model.warp(key_feat, flow, scale)  # float32: the warp samples in float32 anyway

    def _maps(self, feat: Tensor, im_info: Tensor) -> dict[str, Tensor]:
        with self._precision(), self._autocast():
            maps = _float32(self.model.head_maps(self._input(feat)))
        maps.update(self.model.candidates(maps, im_info))  # float32/64 box arithmetic, outside autocast
        return maps

    def _head(self, feat: Tensor, im_info: Tensor) -> dict[str, Tensor]:
        return self.model.head_rois(self._maps(feat, im_info), im_info)

    def _task_maps(self, feat: Tensor) -> dict[str, Tensor]:
        with self._precision(), self._autocast():
            return _float32(self.model.head_maps(self._input(feat)))

    # the engine's calls ----------------------------------------------------------------------------
    def feature(self, data: Tensor) -> Tensor:
        """data (1, 3, H, W) -> key feature (1, C, h, w) float32 (a graph output: copy it to keep it)."""
        return self._stages["feature"](data)

    def flow(self, data: Tensor, key_data: Tensor) -> tuple[Tensor, Tensor]:
        """FlowNet(data, key_data) -> (flow (1, 2, h, w), scale map (1, C, h, w)), float32."""
        return self._stages["flow"](data, key_data)

    def flow_q(self, data: Tensor, key_data: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """THP: FlowNet(data, key_data) -> (flow, scale map, Q (1, 1, h, w)), float32."""
        return self._stages["flow_q"](data, key_data)

    def aggregate(self, key_feat: Tensor, prev_warped: Tensor) -> Tensor:
        """THP: the key frame's feature aggregated with the previous one warped to it, (1, C, h, w) float32."""
        return self._stages["aggregate"](key_feat, prev_warped)

    def backbone(self, data: Tensor) -> Tensor:
        """THP: the backbone alone, (B, 3, H, W) image or crops -> (B, C_res5, h, w) float32; never graphed (the
        crops' sizes change from frame to frame)."""
        with self._precision(), self._autocast(), self._packing():
            return _float32(self.model.backbone(self._input(data)))

    def update(self, data: Tensor, warped: Tensor, ref_backbone: Tensor, flow: Tensor, mask: Tensor,
               margin: int) -> tuple[Tensor, Tensor, UpdateInfo]:
        """THP's partial update of the ``mask`` cells: the reference's backbone map warped by ``flow``, then
        :func:`dff.engine.partial.partial_update` with this runner's backbone and last layer."""
        warped_backbone = self.warp(ref_backbone, flow, None)
        return partial_update(self.backbone, self.feature_head, self.model.feature_head_reach, data, warped,
                              warped_backbone, mask, margin)

    def feature_head(self, x: Tensor) -> Tensor:
        """THP: the feature network's last layer on a backbone map (or a window of one), float32."""
        with self._precision(), self._autocast(), self._packing():
            return _float32(self.model.feature_from_backbone(self._input(x)))

    def warp(self, key_feat: Tensor, flow: Tensor, scale: Tensor) -> Tensor:
        """warp(key_feat, flow) x scale -> (1, C, h, w) float32."""
        return self._stages["warp"](key_feat, flow, scale)

    def maps(self, feat: Tensor, im_info: Tensor) -> dict[str, Tensor]:
        """feature, im_info (1, 3) -> :meth:`dff.models.rfcn.RFCN.head_maps` (float32) and
        :meth:`~dff.models.rfcn.RFCN.candidates`."""
        return self._stages["maps"](feat, im_info)

    def task_maps(self, feat: Tensor) -> dict[str, Tensor]:
        """feature -> the model's ``head_maps`` alone (float32): a segmentation model's score maps."""
        return self._stages["task_maps"](feat)

    def head(self, feat: Tensor, im_info: Tensor) -> dict[str, Tensor]:
        """feature, im_info (1, 3) -> :meth:`dff.models.rfcn.RFCN.head_rois` outputs (rois, cls_prob, bbox_pred, ...)."""
        return self._stages["head"](feat, im_info)

    def post(self, rois: Tensor, cls_prob: Tensor, bbox_pred: Tensor, im_info: Tensor) -> tuple[Tensor, Tensor]:
        """The post-processing function given to the runner (with ``post=``): its (rows, count)."""
        if "post" not in self._stages:
            raise RuntimeError("StageRunner.post: this runner was made without a post-processing function")
        return self._stages["post"](rois, cls_prob, bbox_pred, im_info)

    @property
    def graphs_captured(self) -> int:
        return sum(len(s.graphs) for s in self._stages.values() if isinstance(s, _Graphed))
