"""ResNet-v1 in the Caffe/MSRA layout the reference uses (docs/design.md §1.2).

Why not ``torchvision.models.resnet``: torchvision puts the downsampling stride on the 3x3 conv
(the "v1.5" layout) and its BN modules are named ``bn1..bn3``; the MSRA weights the reference was
trained from put the stride on the first 1x1 conv (``branch2a``) and the projection (``branch1``),
and res5 keeps stride 1 with dilation 2. Reusing torchvision's blocks would change the numbers, so
the blocks are written here, with module names equal to the MXNet layer names so checkpoints map by
a string rule (``res4b22_branch2a_weight`` -> ``backbone.res4b22.branch2a.weight``).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm with fixed statistics (MXNet ``use_global_stats=True``, eps 1e-5).

    Unlike ``torchvision.ops.FrozenBatchNorm2d`` the affine ``weight``/``bias`` (MXNet gamma/beta) are
    parameters: the reference trains the gamma/beta of res3-res5 (docs/design.md §5.4, a quirk we keep) while the
    moving statistics never change.
    """

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x: Tensor) -> Tensor:
        scale = self.weight * torch.rsqrt(self.running_var + self.eps)
        shift = self.bias - self.running_mean * scale
        return x * scale.view(1, -1, 1, 1).to(x.dtype) + shift.view(1, -1, 1, 1).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


def _conv(cin: int, cout: int, k: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    pad = dilation * (k - 1) // 2
    return nn.Conv2d(cin, cout, k, stride=stride, padding=pad, dilation=dilation, bias=False)


class Bottleneck(nn.Module):
    """1x1 (stride) -> BN -> ReLU -> 3x3 (dilation) -> BN -> ReLU -> 1x1 -> BN, + shortcut, ReLU."""

    def __init__(self, cin: int, mid: int, cout: int, stride: int = 1, dilation: int = 1,
                 projection: bool = False) -> None:
        super().__init__()
        self.branch2a = _conv(cin, mid, 1, stride)
        self.bn_branch2a = FrozenBatchNorm2d(mid)
        self.branch2b = _conv(mid, mid, 3, 1, dilation)
        self.bn_branch2b = FrozenBatchNorm2d(mid)
        self.branch2c = _conv(mid, cout, 1)
        self.bn_branch2c = FrozenBatchNorm2d(cout)
        if projection:
            self.branch1 = _conv(cin, cout, 1, stride)
            self.bn_branch1 = FrozenBatchNorm2d(cout)
        else:
            self.branch1 = None

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu(self.bn_branch2a(self.branch2a(x)))
        y = F.relu(self.bn_branch2b(self.branch2b(y)))
        y = self.bn_branch2c(self.branch2c(y))
        shortcut = x if self.branch1 is None else self.bn_branch1(self.branch1(x))
        return F.relu(y + shortcut)


def block_names(stage: int, count: int, numbered: bool) -> list[str]:
    """Caffe block ids: ``2a 2b 2c`` (lettered) or ``4a 4b1 .. 4b22`` (numbered, ResNet-101's res3/res4)."""
    if numbered:
        return [f"{stage}a"] + [f"{stage}b{i}" for i in range(1, count)]
    return [f"{stage}{chr(ord('a') + i)}" for i in range(count)]


# depth -> (blocks per stage res2..res5, stages with numbered block ids, base width)
RESNET_ARCHS: dict[str, tuple[Sequence[int], Sequence[int], int]] = {
    "resnet_v1_101": ((3, 4, 23, 3), (3, 4), 64),
    "resnet_v1_50": ((3, 4, 6, 3), (), 64),
    # a small network of the same topology for CPU tests, demos and the synthetic mini-VID
    "resnet_v1_tiny": ((1, 1, 1, 1), (), 16),
}


class ResNetV1(nn.Module):
    """The feature network up to res5: (N, 3, H, W) -> (N, 32*width, ceil(H/16), ceil(W/16)).

    Stride 16 overall (conv1 /2, pool1 /2, res3 /2, res4 /2, res5 /1 with dilation 2).
    """

    def __init__(self, arch: str = "resnet_v1_101") -> None:
        super().__init__()
        if arch not in RESNET_ARCHS:
            raise ValueError(f"unknown backbone {arch!r}; choose one of {sorted(RESNET_ARCHS)}")
        counts, numbered, width = RESNET_ARCHS[arch]
        self.arch = arch
        self.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
        self.bn_conv1 = FrozenBatchNorm2d(width)
        self.block_ids: list[str] = []
        cin = width
        for stage, count in zip((2, 3, 4, 5), counts):
            mid = width * 2 ** (stage - 2)
            cout = mid * 4
            stride = 2 if stage in (3, 4) else 1
            dilation = 2 if stage == 5 else 1
            for i, bid in enumerate(block_names(stage, count, stage in numbered)):
                block = Bottleneck(cin, mid, cout, stride if i == 0 else 1, dilation, projection=(i == 0))
                self.add_module(f"res{bid}", block)
                self.block_ids.append(bid)
                cin = cout
        self.out_channels = cin

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn_conv1(self.conv1(x)))
        x = F.max_pool2d(x, 3, 2, 1)
        for bid in self.block_ids:
            x = getattr(self, f"res{bid}")(x)
        return x

    def forward_probes(self, x: Tensor) -> dict[str, Tensor]:
        """Every stage output by its MXNet name (``conv1_output`` is before BN, as in the symbol)."""
        out: dict[str, Tensor] = {}
        x = self.conv1(x)
        out["conv1_output"] = x
        x = F.max_pool2d(F.relu(self.bn_conv1(x)), 3, 2, 1)
        out["pool1_output"] = x
        for bid in self.block_ids:
            x = getattr(self, f"res{bid}")(x)
            out[f"res{bid}_relu_output"] = x
        return out
