"""CIFAR-style DenseNets (Huang et al. 2017): DenseNet-40 (k=12) and a small DenseNet-BC-22.

Three dense blocks; inside a block every layer sees the channel-concatenation of the block input
and all earlier layers' outputs and adds ``growth_rate`` new channels:
``x <- concat(x, layer(x))``. Layers are pre-activation: ``BN-ReLU-conv3x3`` (plain) or
``BN-ReLU-conv1x1(4k)-BN-ReLU-conv3x3(k)`` (bottleneck, "B"). Between blocks a transition
``BN-ReLU-conv1x1(floor(theta*C))-avgpool2`` shrinks channels by the compression ``theta``
(1 plain, 0.5 for "C") and halves the resolution. The head is ``BN-ReLU-global avgpool-linear``.

Note for pruning tools: every BatchNorm after the stem normalises a concatenation, so a channel
produced by one conv is read by BNs of all later layers of its block.

``width`` scales the growth rate and the stem channels. ``input_size`` is only validated: the
global pool accepts 32x32 (32 -> 16 -> 8) and 28x28 (28 -> 14 -> 7).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ._layers import check_common_args, init_weights, scale_channels
from ._registry import register_model


class DenseLayer(nn.Module):
    """Pre-activation layer producing ``growth`` channels, concatenated to its input."""

    def __init__(self, in_ch: int, growth: int, bottleneck: bool) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        ch = in_ch
        if bottleneck:
            inter = 4 * growth
            layers += [nn.BatchNorm2d(ch), nn.ReLU(inplace=True), nn.Conv2d(ch, inter, 1, bias=False)]
            ch = inter
        layers += [nn.BatchNorm2d(ch), nn.ReLU(inplace=True), nn.Conv2d(ch, growth, 3, 1, 1, bias=False)]
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.layers(x)], dim=1)


class Transition(nn.Sequential):
    """BN-ReLU-conv1x1-avgpool2."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__(
            nn.BatchNorm2d(in_ch),
            nn.ReLU(inplace=True),
            nn.Conv2d(in_ch, out_ch, 1, bias=False),
            nn.AvgPool2d(2, 2),
        )


class DenseNet(nn.Module):
    def __init__(
        self,
        depth: int = 40,
        growth_rate: int = 12,
        bottleneck: bool = False,
        compression: float = 1.0,
        num_classes: int = 10,
        in_channels: int = 3,
        input_size: int = 32,
        width: float = 1.0,
    ) -> None:
        super().__init__()
        check_common_args(num_classes, in_channels, input_size)
        per_layer_depth = 2 if bottleneck else 1
        if (depth - 4) % (3 * per_layer_depth) or depth < 4 + 3 * per_layer_depth:
            raise ValueError(
                f"DenseNet depth must be 3*{per_layer_depth}*n + 4 with n >= 1 "
                f"({'bottleneck' if bottleneck else 'plain'} layers), got {depth}"
            )
        if not 0.0 < compression <= 1.0:
            raise ValueError(f"compression must be in (0, 1], got {compression}")
        n_layers = (depth - 4) // (3 * per_layer_depth)
        growth = scale_channels(growth_rate, width)
        ch = 2 * growth if bottleneck else scale_channels(16, width)
        self.stem = nn.Conv2d(in_channels, ch, 3, 1, 1, bias=False)
        stages: list[nn.Module] = []
        for b in range(3):
            layers = []
            for _ in range(n_layers):
                layers.append(DenseLayer(ch, growth, bottleneck))
                ch += growth
            stages.append(nn.Sequential(*layers))
            if b < 2:
                out = max(1, int(ch * compression))
                stages.append(Transition(ch, out))
                ch = out
        self.features = nn.Sequential(*stages)
        self.norm = nn.BatchNorm2d(ch)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(ch, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.norm(self.features(self.stem(x))))
        return self.fc(self.flatten(self.pool(x)))


@register_model
def densenet40(num_classes: int = 10, in_channels: int = 3, input_size: int = 32, width: float = 1.0) -> DenseNet:
    """DenseNet-40, growth 12, no bottleneck/compression: ~1.0M parameters at width 1."""
    return DenseNet(40, 12, False, 1.0, num_classes, in_channels, input_size, width)


@register_model
def densenet_bc22(num_classes: int = 10, in_channels: int = 3, input_size: int = 32, width: float = 1.0) -> DenseNet:
    """DenseNet-BC-22, growth 12, 3 bottleneck layers per block, compression 0.5: ~70k parameters."""
    return DenseNet(22, 12, True, 0.5, num_classes, in_channels, input_size, width)
