"""Temporal schemes: how a detector turns a video's frames into features (docs/architecture.md).

One module per scheme, each registered by name for ``network.TEMPORAL``: ``per_frame`` (R-FCN), ``dff``
(sparse propagation), ``gru`` (the mobile paper's flow-guided ConvGRU over key frames) and ``thp``
(Q-driven adaptive key frames, partial update, recursive aggregation). All run the one
:class:`~dff.temporal.base.KeyFrameLoop` with their own options, and make their own training feature.
"""
from dff.temporal import gru, per_frame, propagation, thp  # noqa: F401  (each registers its scheme)
from dff.temporal.base import (
    OPTIONS_OFF,
    SCHEDULES,
    STAGES,
    KeyFrameLoop,
    LoopOptions,
    StepInfo,
    TemporalScheme,
    adaptive_is_key,
    key_frame_interval,
    low_q_fraction,
)
from dff.temporal.registry import PER_FRAME, SCHEMES, build_scheme, register, scheme_name

__all__ = ["OPTIONS_OFF", "SCHEDULES", "STAGES", "KeyFrameLoop", "LoopOptions", "StepInfo", "TemporalScheme",
           "adaptive_is_key", "key_frame_interval", "low_q_fraction", "PER_FRAME", "SCHEMES", "build_scheme",
           "register", "scheme_name"]
