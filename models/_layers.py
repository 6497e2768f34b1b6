"""Small building blocks and helpers shared by the model families."""

from __future__ import annotations

import torch.nn as nn


def scale_channels(channels: int, width: float, divisor: int = 1, min_channels: int | None = None) -> int:
    """``channels * width`` rounded to a multiple of ``divisor``, never below ``min_channels``.

    With ``divisor > 1`` this is MobileNet's ``_make_divisible``: rounding down never loses more
    than 10% of the channels. The result is always at least 1.
    """
    if width <= 0:
        raise ValueError(f"width must be > 0, got {width}")
    floor = max(1, min_channels if min_channels is not None else divisor)
    scaled = channels * width
    out = max(floor, int(scaled + divisor / 2) // divisor * divisor)
    if divisor > 1 and out < 0.9 * scaled:
        out += divisor
    return out


def conv_bn_relu(
    in_ch: int,
    out_ch: int,
    kernel_size: int = 3,
    stride: int = 1,
    groups: int = 1,
    act: type[nn.Module] | None = nn.ReLU,
) -> nn.Sequential:
    """Conv (no bias, 'same' padding for odd kernels) -> BatchNorm -> activation."""
    layers: list[nn.Module] = [
        nn.Conv2d(in_ch, out_ch, kernel_size, stride, kernel_size // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_ch),
    ]
    if act is not None:
        layers.append(act(inplace=True))
    return nn.Sequential(*layers)


def check_common_args(num_classes: int, in_channels: int, input_size: int) -> None:
    """Fail early with a clear message on nonsensical constructor arguments."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if in_channels < 1:
        raise ValueError(f"in_channels must be >= 1, got {in_channels}")
    if input_size < 8:
        raise ValueError(f"input_size must be >= 8 pixels, got {input_size}")


def init_weights(module: nn.Module) -> None:
    """Kaiming-normal convs, unit BN, small-normal linear layers (deterministic under a seed)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)
