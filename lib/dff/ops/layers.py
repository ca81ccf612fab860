"""Small building blocks below the models: shared by the flow networks and the temporal schemes."""
from __future__ import annotations

from torch import Tensor, nn


class SeparableConv2d(nn.Module):
    """3x3 depthwise (``stride``) then 1x1 pointwise convolution, no activation (the user adds its own)."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(cin, cin, 3, stride=stride, padding=1, groups=cin)
        self.pointwise = nn.Conv2d(cin, cout, 1)

    def forward(self, x: Tensor) -> Tensor:
        """x (N, cin, H, W) -> (N, cout, ceil(H / stride), ceil(W / stride))."""
        return self.pointwise(self.depthwise(x))
