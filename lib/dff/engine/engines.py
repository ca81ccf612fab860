"""The video engine of each task, by the model's ``task``: one table, so no caller asks which model it has."""
from __future__ import annotations

from typing import Any

from torch import nn

from dff.config import Config
from dff.engine.segment import VideoSegmenter
from dff.engine.video import VideoDetector, VideoEngine

__all__ = ["ENGINES", "video_engine"]

ENGINES: dict[str, type[VideoEngine]] = {"det": VideoDetector, "seg": VideoSegmenter}


def video_engine(model: nn.Module, cfg: Config | None = None, **kwargs: Any) -> VideoEngine:
    """The engine of ``model.task`` for ``model`` (``cfg`` default ``model.cfg``; ``kwargs`` as
    :class:`~dff.engine.video.VideoDetector`'s)."""
    try:
        engine = ENGINES[model.task]
    except KeyError:
        raise ValueError(f"no video engine for task {model.task!r} (one of {', '.join(ENGINES)})") from None
    return engine(model, cfg if cfg is not None else model.cfg, **kwargs)
