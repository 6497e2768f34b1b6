"""Tiny reference networks with hand-written channel groups for the regularizer tests."""

from __future__ import annotations

import torch
from torch import nn

from compressor.train.groups import make_group


def bn_names(prefix: str) -> list[str]:
    """BN tensors of a channel: the analysis reports them with role "param"."""
    return [f"{prefix}.{k}" for k in ("weight", "bias", "running_mean", "running_var")]


class ConvNet(nn.Module):
    """conv1 -> bn1 -> relu -> conv2 -> bn2 -> relu -> global pool -> fc."""

    def __init__(self, width: int = 8, classes: int = 4) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.fc = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean((2, 3)))


def convnet_groups(model: ConvNet):
    return [
        make_group(model, 0, producers=["conv1.weight"], params=bn_names("bn1"), consumers=["conv2.weight"]),
        make_group(model, 1, producers=["conv2.weight"], params=bn_names("bn2"), consumers=["fc.weight"]),
    ]


class TinyResNet(nn.Module):
    """stem -> [conv1 bn1 relu conv2 bn2] + identity -> relu -> pool -> fc: one residual trunk group."""

    def __init__(self, width: int = 8, classes: int = 4) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        self.conv1 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.fc = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.stem(x)))
        y = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(x + self.bn2(self.conv2(y)))
        return self.fc(x.mean((2, 3)))


def tinyresnet_groups(model: TinyResNet):
    return [
        make_group(model, 0, producers=["stem.weight", "conv2.weight"], params=bn_names("bn") + bn_names("bn2"),
                   consumers=["conv1.weight", "fc.weight"]),
        make_group(model, 1, producers=["conv1.weight"], params=bn_names("bn1"), consumers=["conv2.weight"]),
    ]


def teacher_data(n_batches: int = 8, batch: int = 16, classes: int = 4, seed: int = 0, hw: int = 8):
    """Fixed batches labelled by a random teacher net: a learnable, deterministic task."""
    gen = torch.Generator().manual_seed(seed)
    teacher = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                            nn.Flatten(), nn.Linear(6, classes))
    with torch.no_grad():
        for p in teacher.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
    out = []
    for _ in range(n_batches):
        x = torch.randn(batch, 3, hw, hw, generator=gen)
        with torch.no_grad():
            y = teacher(x).argmax(1)
        out.append((x, y))
    return out


def train(model, reg, data, *, steps: int, lr: float = 0.05, momentum: float = 0.9, wd: float = 0.0,
          attach: bool = True, epoch_every: int | None = None):
    """Plain SGD loop with the three regularizer lines; returns the optimizer."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=wd)
    if attach and reg is not None:
        reg.attach(opt)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for i in range(steps):
        x, y = data[i % len(data)]
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        if reg is not None:
            reg.step()
        opt.step()
        if epoch_every and reg is not None and (i + 1) % epoch_every == 0:
            reg.epoch_end()
    return opt


class ConcatNet(nn.Module):
    """Two branches concatenated on channels, then BN, PReLU, a 1x1 conv and a flatten+linear head."""

    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(10)
        self.act = nn.PReLU(10)
        self.mix = nn.Conv2d(10, 8, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8 * 4 * 4, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.bn(torch.cat([self.a(x), self.b(x)], 1)))
        y = torch.relu(self.bn2(self.mix(y)))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(y, 4), 1))
