"""Regenerate models/demo.onnx, the small model that `make demo` prunes.

A CIFAR-style ResNet-20 (models/resnet_cifar.py) for 28x28 grayscale input, random weights with
randomised BatchNorm statistics, exported with BN folded (what deployment graphs look like).
It is replaced by a trained Fashion-MNIST model once the experiments land (issue 6).

    .venv/bin/python tools/make_demo_model.py
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the repository's models/ package, whatever the working directory

import torch  # noqa: E402

import models  # noqa: E402
from models.export import export_onnx  # noqa: E402

OUT = ROOT / "models" / "demo.onnx"


def main() -> None:
    torch.manual_seed(0)
    net = models.create_model("resnet20", in_channels=1, num_classes=10, input_size=28)
    g = torch.Generator().manual_seed(0)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.2)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.2)
    export_onnx(net, OUT, input_shape=(1, 1, 28, 28))
    print(f"wrote {OUT} ({OUT.stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
