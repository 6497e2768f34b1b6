"""CIFAR-style VGG-13/16 with BatchNorm (Simonyan & Zisserman 2015; the CIFAR variant of
e.g. Liu et al. 2017 "Network Slimming").

Feature stack: 3x3 conv-BN-ReLU layers with 2x2 max pools between the stages.
Classifier: flatten -> Linear(features, 512*width) -> ReLU -> Linear(., num_classes): a small
two-layer head, so there is one fully-connected channel group for pruning tools to act on.

``input_size`` plans the pooling: a 2x2 pool is only placed while the feature map is at least
2x2, so 32x32 inputs go 32 -> 16 -> 8 -> 4 -> 2 -> 1 (five pools) and 28x28 inputs go
28 -> 14 -> 7 -> 3 -> 1 (the fifth pool is dropped). The first linear layer's input size is
``channels * final_side**2``; there is no global pool, so a wrong ``input_size`` is an error at
the first linear layer rather than a silent change of model.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ._layers import check_common_args, init_weights, scale_channels
from ._registry import register_model

# Numbers are conv output channels, "M" a 2x2 max pool.
VGG_CONFIGS: dict[str, list[int | str]] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
}


class VGG(nn.Module):
    """``features`` (conv-BN-ReLU stack) -> flatten -> ``classifier`` (two linear layers)."""

    def __init__(
        self,
        config: list[int | str],
        num_classes: int = 10,
        in_channels: int = 3,
        input_size: int = 32,
        width: float = 1.0,
        hidden: int = 512,
    ) -> None:
        super().__init__()
        check_common_args(num_classes, in_channels, input_size)
        layers: list[nn.Module] = []
        ch, side = in_channels, input_size
        for item in config:
            if item == "M":
                if side >= 2:
                    layers.append(nn.MaxPool2d(2, 2))
                    side //= 2
                continue
            out = scale_channels(int(item), width)
            layers += [nn.Conv2d(ch, out, 3, 1, 1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
            ch = out
        self.features = nn.Sequential(*layers)
        self.flatten = nn.Flatten(1)
        hidden_ch = scale_channels(hidden, width)
        self.classifier = nn.Sequential(
            nn.Linear(ch * side * side, hidden_ch),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_ch, num_classes),
        )
        self.final_side = side
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.features(x)))


@register_model
def vgg13_bn(num_classes: int = 10, in_channels: int = 3, input_size: int = 32, width: float = 1.0) -> VGG:
    """VGG-13 with BN, ~9.7M parameters at width 1 (10 classes)."""
    return VGG(VGG_CONFIGS["vgg13"], num_classes, in_channels, input_size, width)


@register_model
def vgg16_bn(num_classes: int = 10, in_channels: int = 3, input_size: int = 32, width: float = 1.0) -> VGG:
    """VGG-16 with BN, ~15.0M parameters at width 1 (10 classes)."""
    return VGG(VGG_CONFIGS["vgg16"], num_classes, in_channels, input_size, width)


@register_model
def vgg11_small(num_classes: int = 10, in_channels: int = 3, input_size: int = 32, width: float = 0.5) -> VGG:
    """VGG-11 with BN at half width (32-256 channels, a 256-wide hidden layer): the VGG-style network
    of the CPU experiments (tools/experiments.py, table ``models``)."""
    return VGG(VGG_CONFIGS["vgg11"], num_classes, in_channels, input_size, width)
