"""The mobile variant's feature network: MobileNetV2 at output stride 16 (docs/design.md §10.1).

"Towards High Performance Video Object Detection for Mobiles" runs a MobileNet feature network with its
last stride removed (output stride 16, the stride the task network and the flow are built for). Here the
architecture is torchvision's MobileNetV2 (its blocks, its initialisation, a width multiplier), cut before
the final 1x1 convolution to 1280 channels (the classifier's, no spatial use) and with the last strided
block made stride 1 and every block after it dilated by 2, as DeepLab does to MobileNets: the receptive
field is kept, the map stays at 1/16. No weights are loaded: the model is trained from scratch.
"""
from __future__ import annotations

from torch import Tensor, nn
from torchvision.models import mobilenet_v2

# torchvision's MobileNetV2 ``features``: index 14 is the first block at stride 32; 18 is the final 1x1 conv
_FIRST_STRIDE32_BLOCK = 14
_LAST_BLOCK = 17


def _dilate(block: nn.Module, first: bool) -> None:
    """Make a stride-32 inverted residual block stride 1 with its 3x3 depthwise convolution dilated by 2."""
    for m in block.modules():
        if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3):
            m.dilation, m.padding = (2, 2), (2, 2)
            if first:
                m.stride = (1, 1)


class MobileNetV2Backbone(nn.Module):
    """(N, 3, H, W) -> (N, 320*width (rounded to 8), ceil(H/16), ceil(W/16)).

    ``width``: torchvision's ``width_mult`` (``network.MOBILENET_WIDTH``). BatchNorm layers are ordinary
    ``nn.BatchNorm2d`` (the model is trained from scratch, so their statistics are learnt here)."""

    def __init__(self, width: float = 1.0) -> None:
        super().__init__()
        if not width > 0:
            raise ValueError(f"network.MOBILENET_WIDTH must be > 0, got {width}")
        self.arch = f"mobilenet_v2 x{width:g}"
        features = mobilenet_v2(weights=None, width_mult=width).features[:_LAST_BLOCK + 1]
        for i in range(_FIRST_STRIDE32_BLOCK, _LAST_BLOCK + 1):
            _dilate(features[i], first=i == _FIRST_STRIDE32_BLOCK)
        self.features = features
        self.out_channels = int(features[_LAST_BLOCK].out_channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.features(x)
