"""MobileNet-V1 (Howard et al. 2017) and MobileNet-V2 (Sandler et al. 2018), CIFAR-style.

V1: depthwise-separable blocks ``3x3 depthwise conv-BN-ReLU -> 1x1 pointwise conv-BN-ReLU``.
V2: inverted residuals ``1x1 expand-BN-ReLU6 -> 3x3 depthwise-BN-ReLU6 -> 1x1 project-BN``
(linear bottleneck) with an identity shortcut when stride is 1 and channels match.

``width`` is the paper's width multiplier (alpha); channel counts are rounded to multiples of 8
as in the reference implementations (never below 8). V2's final 1x1 conv keeps 1280 channels
for ``width <= 1`` and scales above, as in the paper.

``input_size`` picks the stride plan: for small inputs (<= 64 px: CIFAR 32, MNIST 28) the stem
has stride 1 and V2's second stage has stride 1 (the usual CIFAR adaptation, e.g. kuangliu's
pytorch-cifar), so 32x32 ends at 2x2 (V1) / 4x4 (V2) before the global pool and 28x28 at
2x2 / 4x4; larger inputs use the ImageNet strides.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ._layers import check_common_args, conv_bn_relu, init_weights, scale_channels
from ._registry import register_model

_SMALL_INPUT = 64  # at or below this side length, use the CIFAR stride plan

# V1: (out_channels, stride) of each depthwise-separable block, ImageNet plan.
_V1_BLOCKS: list[tuple[int, int]] = [
    (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
    (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1),
]  # fmt: skip

# V2: (expansion t, out_channels c, repeats n, first stride s), ImageNet plan.
_V2_STAGES: list[tuple[int, int, int, int]] = [
    (1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1),
]  # fmt: skip


class DepthwiseSeparable(nn.Module):
    """3x3 depthwise conv-BN-ReLU then 1x1 pointwise conv-BN-ReLU."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.depthwise = conv_bn_relu(in_ch, in_ch, 3, stride, groups=in_ch)
        self.pointwise = conv_bn_relu(in_ch, out_ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


class MobileNetV1(nn.Module):
    def __init__(
        self, num_classes: int = 10, in_channels: int = 3, input_size: int = 32, width: float = 1.0
    ) -> None:
        super().__init__()
        check_common_args(num_classes, in_channels, input_size)
        small = input_size <= _SMALL_INPUT
        ch = scale_channels(32, width, 8)
        self.stem = conv_bn_relu(in_channels, ch, 3, 1 if small else 2)
        blocks = []
        for out, stride in _V1_BLOCKS:
            out = scale_channels(out, width, 8)
            blocks.append(DepthwiseSeparable(ch, out, stride))
            ch = out
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(ch, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flatten(self.pool(self.blocks(self.stem(x)))))


class InvertedResidual(nn.Module):
    """1x1 expand (skipped when t == 1) -> 3x3 depthwise -> 1x1 linear projection (+ identity)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = in_ch * expansion
        layers: list[nn.Module] = []
        if expansion != 1:
            layers.append(conv_bn_relu(in_ch, hidden, 1, act=nn.ReLU6))
        layers += [
            conv_bn_relu(hidden, hidden, 3, stride, groups=hidden, act=nn.ReLU6),
            conv_bn_relu(hidden, out_ch, 1, act=None),
        ]
        self.conv = nn.Sequential(*layers)
        self.use_residual = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.use_residual else out


class MobileNetV2(nn.Module):
    def __init__(
        self, num_classes: int = 10, in_channels: int = 3, input_size: int = 32, width: float = 1.0
    ) -> None:
        super().__init__()
        check_common_args(num_classes, in_channels, input_size)
        small = input_size <= _SMALL_INPUT
        ch = scale_channels(32, width, 8)
        self.stem = conv_bn_relu(in_channels, ch, 3, 1 if small else 2, act=nn.ReLU6)
        blocks = []
        for i, (t, c, n, s) in enumerate(_V2_STAGES):
            if small and i == 1:
                s = 1
            out = scale_channels(c, width, 8)
            for j in range(n):
                blocks.append(InvertedResidual(ch, out, s if j == 0 else 1, t))
                ch = out
        self.blocks = nn.Sequential(*blocks)
        last = scale_channels(1280, max(1.0, width), 8)
        self.head = conv_bn_relu(ch, last, 1, act=nn.ReLU6)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(last, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.blocks(self.stem(x)))
        return self.fc(self.flatten(self.pool(x)))


@register_model
def mobilenet_v1(num_classes: int = 10, in_channels: int = 3, input_size: int = 32, width: float = 1.0) -> MobileNetV1:
    """MobileNet-V1, ~3.2M parameters at width 1 (10 classes)."""
    return MobileNetV1(num_classes, in_channels, input_size, width)


@register_model
def mobilenet_v2(num_classes: int = 10, in_channels: int = 3, input_size: int = 32, width: float = 1.0) -> MobileNetV2:
    """MobileNet-V2, ~2.2M parameters at width 1 (10 classes)."""
    return MobileNetV2(num_classes, in_channels, input_size, width)


@register_model
def mobilenet_v2_small(num_classes: int = 10, in_channels: int = 3, input_size: int = 32,
                       width: float = 0.5) -> MobileNetV2:
    """MobileNet-V2 at half width (8-160 block channels, the 1280-channel head): the MobileNetV2-style
    network of the CPU experiments (tools/experiments.py, table ``models``)."""
    return MobileNetV2(num_classes, in_channels, input_size, width)
