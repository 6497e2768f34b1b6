"""CIFAR-style ResNets (He et al. 2016, section 4.2): ResNet-20/32/56.

Three stages of ``n`` BasicBlocks with 16/32/64 channels (times ``width``); depth = 6n + 2.
The first block of stages 2 and 3 halves the resolution (stride 2) and doubles the channels.

Shortcut choice: where the block changes shape we use **option B**, a projection shortcut
``1x1 conv (stride s) -> BatchNorm``, instead of the paper's option A (strided identity plus
zero-padded channels). Option A is parameter-free but its zero padding is a ``Pad``/``Concat``
with constant zeros in ONNX, which ties the padded channels to nothing and makes channel groups
awkward to prune; option B is an ordinary conv whose output channels are coupled to the block's
output by the residual ``Add``, the structure pruning tools are built for. It costs 2,752
parameters more than option A at width 1 (16*32 + 32*64 weights + 2*(32+64) BN affine).
All other blocks use the identity shortcut.

``input_size`` only matters for validation: the global average pool accepts 28x28 (MNIST-style,
28 -> 14 -> 7) and 32x32 (CIFAR, 32 -> 16 -> 8) alike.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ._layers import check_common_args, init_weights, scale_channels
from ._registry import register_model


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN + shortcut, then ReLU."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.relu2 = nn.ReLU(inplace=True)
        if stride != 1 or in_ch != out_ch:  # option B: projection shortcut
            self.shortcut: nn.Module = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride, 0, bias=False), nn.BatchNorm2d(out_ch)
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """Stem conv3x3 -> 3 stages of BasicBlocks -> global average pool -> linear."""

    def __init__(
        self,
        blocks_per_stage: int,
        num_classes: int = 10,
        in_channels: int = 3,
        input_size: int = 32,
        width: float = 1.0,
    ) -> None:
        super().__init__()
        check_common_args(num_classes, in_channels, input_size)
        if blocks_per_stage < 1:
            raise ValueError(f"blocks_per_stage must be >= 1, got {blocks_per_stage}")
        widths = [scale_channels(c, width) for c in (16, 32, 64)]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        stages = []
        in_ch = widths[0]
        for i, out_ch in enumerate(widths):
            blocks = []
            for j in range(blocks_per_stage):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(BasicBlock(in_ch, out_ch, stride))
                in_ch = out_ch
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(in_ch, num_classes)
        init_weights(self)
        nn.init.kaiming_normal_(self.fc.weight)  # as in the reference CIFAR code

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.flatten(self.pool(x)))


def _resnet(depth: int, **kwargs) -> CifarResNet:
    if (depth - 2) % 6:
        raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
    return CifarResNet((depth - 2) // 6, **kwargs)


@register_model
def resnet20(num_classes: int = 10, in_channels: int = 3, input_size: int = 32, width: float = 1.0) -> CifarResNet:
    """ResNet-20 (3x3 BasicBlocks), ~0.27M parameters at width 1."""
    return _resnet(20, num_classes=num_classes, in_channels=in_channels, input_size=input_size, width=width)


@register_model
def resnet32(num_classes: int = 10, in_channels: int = 3, input_size: int = 32, width: float = 1.0) -> CifarResNet:
    """ResNet-32 (3x5 BasicBlocks), ~0.47M parameters at width 1."""
    return _resnet(32, num_classes=num_classes, in_channels=in_channels, input_size=input_size, width=width)


@register_model
def resnet56(num_classes: int = 10, in_channels: int = 3, input_size: int = 32, width: float = 1.0) -> CifarResNet:
    """ResNet-56 (3x9 BasicBlocks), ~0.86M parameters at width 1."""
    return _resnet(56, num_classes=num_classes, in_channels=in_channels, input_size=input_size, width=width)
