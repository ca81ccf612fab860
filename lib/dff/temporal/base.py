"""The interface of a temporal scheme and the one key-frame loop every scheme runs (THP's Algorithm 1).

"Towards High Performance Video Object Detection" (THP, its Algorithm 1 and Table 1) reads per-frame
detection, DFF's sparse feature propagation, recursive aggregation on key frames, the partial feature
update and adaptive key frames as options of one loop over the frames. The flow-guided ConvGRU of the
mobile paper is recursive aggregation with another aggregation network. :class:`KeyFrameLoop` is that
loop; a scheme (:class:`TemporalScheme`) says which options it allows, which layers the model holds for it,
and how its training feature is made. The engine (``dff.engine.video``), the trainer and the model call
only this interface, so a new scheme is a new module plus a registry entry (``dff.temporal.registry``).

The loop keeps one reference frame (its input, its feature and, for the partial update, its backbone
map): the key frame or, with ``PARTIAL_UPDATE_PROPAGATE``, the last partially updated frame. Memory is
constant over any video length.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Callable, ClassVar, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from dff.config import Config

SCHEDULES = ("fixed", "adaptive")
# seconds per stage of one frame; the engine adds "head" and "post"
STAGES = ("feature", "flow", "warp", "update", "aggregate", "head", "post")


class Stages(Protocol):
    """What the loop runs: a stage runner (``dff.engine.fastpath.StageRunner``, or the onnxruntime one).
    Each takes and returns float32 tensors; ``flow_q``, ``aggregate``, ``backbone``, ``feature_head`` and
    ``update`` are needed only by the schemes whose options use them."""

    def feature(self, data: Tensor) -> Tensor: ...
    def flow(self, data: Tensor, key_data: Tensor) -> tuple[Tensor, Tensor]: ...
    def flow_q(self, data: Tensor, key_data: Tensor) -> tuple[Tensor, Tensor, Tensor]: ...
    def warp(self, key_feat: Tensor, flow: Tensor, scale: Tensor | None) -> Tensor: ...
    def aggregate(self, key_feat: Tensor, prev_warped: Tensor) -> Tensor: ...
    def backbone(self, data: Tensor) -> Tensor: ...
    def feature_head(self, x: Tensor) -> Tensor: ...
    def update(self, data: Tensor, warped: Tensor, ref_backbone: Tensor, flow: Tensor, mask: Tensor,
               margin: int) -> tuple[Tensor, Tensor, object]: ...


@dataclasses.dataclass(frozen=True)
class LoopOptions:
    """The loop's options, from ``cfg.TEST`` (docs/design.md §9) and the key interval.

    ``interval``: the fixed schedule's key interval (1: every frame a key frame). The others are THP's:
    ``schedule`` fixed | adaptive (Q-based, at most ``max_interval`` apart), ``partial`` update of the
    positions with Q <= ``tau`` (``margin`` cells of context; ``propagate``: the updated frame becomes the
    reference), ``aggregate`` the key frames recursively."""

    schedule: str = "fixed"
    tau: float = 0.3
    gamma: float = 0.2
    max_interval: int = 20
    partial: bool = False
    margin: int = 3
    propagate: bool = True
    aggregate: bool = False

    @classmethod
    def from_config(cls, cfg: Config) -> "LoopOptions":
        t = cfg.TEST
        opts = cls(str(t.KEY_FRAME_SCHEDULE), float(t.THP_TAU), float(t.THP_GAMMA), int(t.KEY_FRAME_MAX_INTERVAL),
                   bool(t.PARTIAL_UPDATE), int(t.PARTIAL_UPDATE_MARGIN), bool(t.PARTIAL_UPDATE_PROPAGATE),
                   bool(t.AGGREGATION))
        if opts.schedule not in SCHEDULES:
            raise ValueError(f"TEST.KEY_FRAME_SCHEDULE must be one of {', '.join(SCHEDULES)}, got {opts.schedule!r}")
        if opts.max_interval < 1:
            raise ValueError(f"TEST.KEY_FRAME_MAX_INTERVAL must be >= 1, got {opts.max_interval}")
        if opts.margin < 0:
            raise ValueError(f"TEST.PARTIAL_UPDATE_MARGIN must be >= 0 feature cells, got {opts.margin}")
        return opts

    @property
    def active(self) -> bool:
        """Any of THP's options on (else the loop is plain DFF)."""
        return self.schedule == "adaptive" or self.partial or self.aggregate

    @property
    def needs_q(self) -> bool:
        return self.schedule == "adaptive" or self.partial

    def describe(self) -> dict:
        return dataclasses.asdict(self)


OPTIONS_OFF = {"KEY_FRAME_SCHEDULE": "fixed", "PARTIAL_UPDATE": False, "AGGREGATION": False}


def low_q_fraction(q: Tensor, tau: float) -> float:
    """The fraction of positions of Q (N, 1, h, w) with Q <= tau."""
    return float((q <= tau).float().mean())


def adaptive_is_key(q: Tensor, tau: float, gamma: float) -> bool:
    """THP's key-frame rule (its Eq. 9): a key frame when the fraction of positions with Q <= tau exceeds gamma."""
    return low_q_fraction(q, tau) > gamma


def key_frame_interval(cfg: Config, key_interval: int | None, has_flow: bool) -> int:
    """The key interval: ``key_interval`` or ``TEST.KEY_FRAME_INTERVAL``; 1 without a flow network."""
    interval = int(key_interval if key_interval is not None else cfg.TEST.KEY_FRAME_INTERVAL)
    if interval < 1:
        raise ValueError(f"key frame interval must be >= 1, got {interval}")
    return interval if has_flow else 1


@dataclasses.dataclass
class StepInfo:
    """What one :meth:`KeyFrameLoop.step` did besides the feature: ``is_key`` (the feature network ran on this
    frame and its result is that feature); ``key_index``: the index of the key frame the feature came from, and
    ``age``: frames since it (0 on a key frame); on a non-key frame with the partial update, the fraction of
    feature cells recomputed and (with ``keep_masks``) their (h, w) mask; ``q``: THP's Q of this frame against
    its key frame, (h, w) on the device, for a model that predicts Q (None on key frames: their feature is
    their own)."""

    is_key: bool
    updated_fraction: float = 0.0
    update_mask: np.ndarray | None = None
    key_index: int = 0
    age: int = 0
    q: Tensor | None = None


@dataclasses.dataclass
class KeyFrame:
    """A reference frame: what later frames warp from. ``index``: the frame's index in the video (the key
    frame's, also after a propagated partial update); ``seconds``: the time its feature took (the
    asynchronous key worker's measure)."""

    data: Tensor
    feat: Tensor
    backbone: Tensor | None = None
    index: int = 0
    seconds: float = 0.0


class KeyFrameLoop:
    """One video's features: which frames are key frames, and the feature of every frame.

    Args:
        stages: the stage runner.
        options: :class:`LoopOptions` (validated by the scheme that made the loop).
        interval: the fixed schedule's key interval (1: per-frame).
        clock: returns the time after the work queued so far (the engine synchronises the device in it when
            it times stages exactly).
        keep_masks: return the partial update's cell masks (for drawing).
        with_q: the stages predict THP's Q (``flow_q``): every non-key frame gets its Q (:attr:`StepInfo.q`,
            the boxes' ``quality``), not only those the options need it for.
    """

    def __init__(self, stages: Stages, options: LoopOptions, interval: int,
                 clock: Callable[[], float] = time.perf_counter, keep_masks: bool = False, with_q: bool = False) -> None:
        self.stages = stages
        self.options = options
        self.interval = interval
        self.clock = clock
        self.keep_masks = keep_masks
        self.with_q = with_q or options.needs_q
        # a reference frame is worth keeping only if a later frame can use it
        self.keeps_reference = interval > 1 or options.active
        self.reset()

    def reset(self) -> None:
        """Forget the reference frame (call between videos)."""
        self._ref: KeyFrame | None = None
        self._since_key = 0
        self._count = 0  # frames stepped in this video: the default frame index

    def describe(self) -> dict | None:
        """The THP options in use, or None when the loop is plain DFF / per-frame."""
        return self.options.describe() if self.options.active else None

    @property
    def cap(self) -> int:
        """The most frames a key frame serves before the next is due."""
        return self.options.max_interval if self.options.schedule == "adaptive" else self.interval

    def _lap(self, t: float, times: dict, stage: str) -> float:
        now = self.clock()
        times[stage] += now - t
        return now

    def _index(self, index: int | None) -> int:
        index = self._count if index is None else int(index)
        self._count += 1
        return index

    def _has_ref(self, data: Tensor) -> bool:
        return self._ref is not None and self._ref.data.shape == data.shape  # a size change: a new key

    def _flow(self, data: Tensor, times: dict, t: float) -> tuple[Tensor, Tensor, Tensor | None, float, float]:
        """Flow, scale and (``with_q``) Q from the reference to ``data``; the fraction of Q <= tau."""
        o, s = self.options, self.stages
        q = None
        if self.with_q:
            flow, scale, q = s.flow_q(data, self._ref.data)
        else:
            flow, scale = s.flow(data, self._ref.data)
        t = self._lap(t, times, "flow")
        low = low_q_fraction(q, o.tau) if o.needs_q else 0.0  # one host sync serves both uses
        return flow, scale, q, low, t

    def key_frame(self, data: Tensor, index: int, ref: KeyFrame | None, flow: Tensor | None = None,
                  scale: Tensor | None = None, times: dict | None = None) -> KeyFrame:
        """The key frame ``data``'s reference: its feature, aggregated with ``ref`` (warped by ``flow``, computed
        here when not given) when the options aggregate. Touches no loop state, so a key worker can run it."""
        o, s = self.options, self.stages
        times = dict.fromkeys(STAGES, 0.0) if times is None else times
        start = t = self.clock()
        if o.partial:  # the backbone map is kept for the updates (docs/design.md §9.2)
            backbone = s.backbone(data)
            feat = s.feature_head(backbone)
        else:
            backbone, feat = None, s.feature(data)
        t = self._lap(t, times, "feature")
        if o.aggregate and ref is not None:
            if flow is None:
                flow, scale = s.flow(data, ref.data)
                t = self._lap(t, times, "flow")
            prev = s.warp(ref.feat, flow, scale)
            t = self._lap(t, times, "warp")
            feat = s.aggregate(feat, prev)
            t = self._lap(t, times, "aggregate")
        return KeyFrame(data, feat, backbone, index, t - start)

    def _set_reference(self, key: KeyFrame) -> None:
        if self.keeps_reference:
            self._ref = key
        else:  # nothing to warp from: keep only the input's shape
            self._ref = KeyFrame(key.data, torch.empty(0), None, key.index)

    def _non_key(self, data: Tensor, index: int, times: dict, t: float, flow: Tensor, scale: Tensor,
                 q: Tensor | None, low: float) -> tuple[Tensor, StepInfo]:
        """The reference's feature warped to ``data`` (and partially updated)."""
        o, s = self.options, self.stages
        ref = self._ref
        feat = s.warp(ref.feat, flow, scale)
        t = self._lap(t, times, "warp")
        # a copy: the stage's output buffer (a CUDA graph's) is rewritten by the next frame before the result is read
        info = StepInfo(False, key_index=ref.index, age=index - ref.index, q=None if q is None else q[0, 0].clone())
        if o.partial and low > 0:
            mask = q[0, 0] <= o.tau
            warped = feat.clone() if o.aggregate else feat  # the stage's buffer may be reused by the update's warp
            feat, backbone, update = s.update(data, feat, ref.backbone, flow, mask, o.margin)
            t = self._lap(t, times, "update")
            info.updated_fraction = update.area_fraction
            info.update_mask = mask.cpu().numpy() if self.keep_masks else None
            if o.aggregate:
                # THP's Eq. 7: the updated feature blended with the warped (aggregated) key feature; where nothing
                # was recomputed the two are equal and so is the blend
                feat = s.aggregate(feat, warped)
                t = self._lap(t, times, "aggregate")
            if o.propagate:
                self._ref = KeyFrame(data, feat, backbone, ref.index)
        return feat, info

    def step(self, data: Tensor, times: dict, index: int | None = None) -> tuple[Tensor, StepInfo]:
        """One frame (1, 3, H, W) on the device -> (its feature (1, C, h, w), :class:`StepInfo`); adds the seconds of
        each stage to ``times`` (keys :data:`STAGES`). ``index``: the frame's index in the video (default: the
        frames stepped since :meth:`reset`)."""
        o = self.options
        index = self._index(index)
        t = self.clock()
        have_ref = self._has_ref(data)
        flow = scale = q = None
        low = 0.0
        is_key = not have_ref or self._since_key >= self.cap
        if not is_key:
            flow, scale, q, low, t = self._flow(data, times, t)
            is_key = o.schedule == "adaptive" and low > o.gamma
        if is_key:
            key = self.key_frame(data, index, self._ref if have_ref else None, flow, scale, times)
            self._set_reference(key)
            self._since_key = 1
            return key.feat, StepInfo(True, key_index=index)
        feat, info = self._non_key(data, index, times, t, flow, scale, q, low)
        self._since_key += 1
        return feat, info


class TemporalScheme:
    """How a detector turns a video's frames into features for its head; one subclass per scheme, registered
    by name (``dff.temporal.registry``, ``network.TEMPORAL``).

    Model side: :attr:`uses_flow` (the model holds a flow network), :attr:`has_q` (the flow network also
    predicts THP's Q), :meth:`build_modules` (the scheme's own layers, held by the model under these names),
    :meth:`init_layers`, :attr:`new_layer_patterns`, :attr:`loss_names` and :meth:`train_feature`.
    Engine side: :meth:`loop` validates ``cfg.TEST`` against what the scheme can do and returns the
    :class:`KeyFrameLoop` of one detector.
    """

    name: ClassVar[str] = ""
    uses_flow: ClassVar[bool] = True
    has_q: ClassVar[bool] = False
    # layers a checkpoint of a simpler scheme (plain DFF) lacks: started by init_layers instead
    new_layer_patterns: ClassVar[tuple[str, ...]] = ()
    loss_names: ClassVar[tuple[str, ...]] = ()
    # training samples carry a key frame before the key frame (``data_prev``, ``prev_flag``)
    trains_on_previous_key: ClassVar[bool] = False

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg

    # model side ---------------------------------------------------------------------------------------
    def build_modules(self, feat_dim: int) -> dict[str, nn.Module]:
        """The scheme's own layers for a feature of ``feat_dim`` channels (none by default)."""
        return {}

    def init_layers(self, model: nn.Module) -> None:
        """Start the scheme's own layers so that the model begins as the simpler model it is fine-tuned from."""

    def train_feature(self, model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """The feature that carries the frame's task losses, and the scheme's own losses (named
        :attr:`loss_names`; the model adds them to ``loss``)."""
        raise NotImplementedError

    # engine side --------------------------------------------------------------------------------------
    def options(self, cfg: Config) -> LoopOptions:
        """``cfg.TEST``'s loop options; an option this scheme cannot run is a ``ValueError`` saying which model
        can. The default allows none of THP's options."""
        opts = LoopOptions.from_config(cfg)
        if opts.needs_q:
            raise ValueError("TEST.KEY_FRAME_SCHEDULE adaptive and TEST.PARTIAL_UPDATE need a model trained with "
                             "network.THP (e.g. data/models/thp_synthetic_tiny.pth); this one has no Q output")
        if opts.aggregate:
            raise ValueError("TEST.AGGREGATION needs a model with a key-frame aggregation (network.THP or "
                             "network.GRU_AGGREGATION, e.g. data/models/dff_mobile_synthetic.pth); this one has none")
        return opts

    def loop(self, stages: Stages, cfg: Config, key_interval: int | None = None,
             clock: Callable[[], float] = time.perf_counter, keep_masks: bool = False,
             loop_class: type[KeyFrameLoop] = KeyFrameLoop, **loop_args: object) -> KeyFrameLoop:
        """The key-frame loop of one detector on ``stages`` (``key_interval`` overrides
        ``TEST.KEY_FRAME_INTERVAL``); ``loop_class`` and ``loop_args``: another loop over the same options (the
        asynchronous one, ``dff.temporal.async_keys``)."""
        return loop_class(stages, self.options(cfg), key_frame_interval(cfg, key_interval, self.uses_flow),
                          clock, keep_masks, with_q=self.has_q, **loop_args)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


def batch_flag(value: object, name: str) -> bool:
    """A 0/1 batch flag (bool, int or 1-element tensor) -> bool; anything else is an error."""
    flag = torch.as_tensor(value).reshape(-1)
    if flag.numel() != 1 or float(flag[0]) not in (0.0, 1.0):
        raise ValueError(f"forward_train: {name} must be a single 0 or 1, got {value!r}")
    return float(flag[0]) == 1.0


def check_same_shape(data: Tensor, other: Tensor, other_name: str = "data_ref", name: str = "data") -> None:
    if other.shape != data.shape:
        raise ValueError(f"forward_train: {other_name} {tuple(other.shape)} must have the shape of {name} "
                         f"{tuple(data.shape)}")
