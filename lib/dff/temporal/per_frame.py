"""Per-frame detection: every frame is a key frame (the R-FCN baseline; THP's Table 1, first row)."""
from __future__ import annotations

from torch import Tensor, nn

from dff.temporal.base import TemporalScheme
from dff.temporal.registry import PER_FRAME, register


@register(PER_FRAME)
class PerFrame(TemporalScheme):
    """The feature network on every frame; no flow network, no state between frames."""

    uses_flow = False

    def train_feature(self, model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        return model.extract_feature(batch["data"]), {}
