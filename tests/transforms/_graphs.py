"""Graph fixtures for the exact transforms: small CNNs with copied, zero or gated channels."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from tests.core.graphs import G


def inits(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def set_init(model: onnx.ModelProto, name: str, arr: np.ndarray) -> None:
    for t in model.graph.initializer:
        if t.name == name:
            t.CopyFrom(numpy_helper.from_array(np.asarray(arr, dtype=np.float32), name))
            return
    raise KeyError(name)


def copy_channels(model: onnx.ModelProto, tensors, src: int, dsts, axis: int = 0, noise: float = 0.0, seed: int = 0):
    """Make channels ``dsts`` of every tensor in ``tensors`` copies of channel ``src`` (optionally perturbed
    by relative ``noise``)."""
    rng = np.random.default_rng(seed)
    vals = inits(model)
    for name in tensors:
        a = vals[name].copy()
        for d in dsts:
            s = np.take(a, [src], axis=axis)
            s = s * (1 + noise * rng.standard_normal(s.shape))
            idx = [slice(None)] * a.ndim
            idx[axis] = slice(d, d + 1)
            a[tuple(idx)] = s
        set_init(model, name, a)


def rel_err(a: onnx.ModelProto, b: onnx.ModelProto, seed: int = 123) -> float:
    """Independent check: max over outputs of max|ya - yb| / max|ya| on one random input."""
    sa = ort.InferenceSession(a.SerializeToString(), providers=["CPUExecutionProvider"])
    sb = ort.InferenceSession(b.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(seed)
    feeds = {i.name: rng.standard_normal([d.dim_value for d in i.type.tensor_type.shape.dim]).astype(np.float32)
             for i in a.graph.input}
    worst = 0.0
    for x, y in zip(sa.run(None, feeds), sb.run(None, feeds)):
        assert x.shape == y.shape, f"output shapes differ: {x.shape} vs {y.shape}"
        worst = max(worst, float(np.max(np.abs(x - y)) / max(np.max(np.abs(x)), 1e-12)))
    return worst


def chain(seed: int = 0, flatten_head: bool = False) -> tuple[onnx.ModelProto, dict]:
    """x -> conv1 3x3 -> BN -> Relu -> conv2 3x3 -> BN -> Relu -> (GAP ->) Flatten -> Gemm."""
    g = G(seed)
    x = g.input("x", [2, 3, 8, 8])
    w1 = g.rand(8, 3, 3, 3)
    b1 = g.rand(8, base="b")
    c1 = g.op("Conv", [x, w1, b1], kernel_shape=[3, 3], pads=[1] * 4)
    bn1 = [g.rand(8, positive=True), g.rand(8), g.rand(8), g.rand(8, positive=True)]
    r1 = g.op("Relu", [g.op("BatchNormalization", [c1] + bn1)])
    w2 = g.rand(6, 8, 3, 3)
    c2 = g.op("Conv", [r1, w2], kernel_shape=[3, 3], pads=[1] * 4)
    bn2 = [g.rand(6, positive=True), g.rand(6), g.rand(6), g.rand(6, positive=True)]
    r2 = g.op("Relu", [g.op("BatchNormalization", [c2] + bn2)])
    if flatten_head:
        f = g.op("Flatten", [r2])
        fc = g.rand(6 * 64, 4)
    else:
        f = g.op("Flatten", [g.op("GlobalAveragePool", [r2])])
        fc = g.rand(6, 4)
    out = g.op("Gemm", [f, fc, g.rand(4)])
    names = {"w1": w1, "b1": b1, "bn1": bn1, "w2": w2, "bn2": bn2, "fc": fc}
    return g.model([out]), names


def residual(seed: int = 0) -> tuple[onnx.ModelProto, dict]:
    """stem conv+BN -> Relu -> t; block: conv a (BN, Relu), conv b (BN); t + b -> Relu -> 1x1 conv and GAP-Gemm."""
    g = G(seed)
    x = g.input("x", [2, 3, 8, 8])
    ws = g.rand(8, 3, 3, 3)
    bns = [g.rand(8, positive=True), g.rand(8), g.rand(8), g.rand(8, positive=True)]
    t = g.op("Relu", [g.op("BatchNormalization", [g.op("Conv", [x, ws], kernel_shape=[3, 3], pads=[1] * 4)] + bns)])
    wa = g.rand(5, 8, 3, 3)
    a = g.op("Relu", [g.bn(g.op("Conv", [t, wa], kernel_shape=[3, 3], pads=[1] * 4), 5)])
    wb = g.rand(8, 5, 3, 3)
    bnb = [g.rand(8, positive=True), g.rand(8), g.rand(8), g.rand(8, positive=True)]
    b = g.op("BatchNormalization", [g.op("Conv", [a, wb], kernel_shape=[3, 3], pads=[1] * 4)] + bnb)
    y = g.op("Relu", [g.op("Add", [t, b])])
    w1x1 = g.rand(4, 8, 1, 1)
    o1 = g.op("Conv", [y, w1x1, g.rand(4, base="b")], kernel_shape=[1, 1])
    fc = g.rand(8, 3)
    o2 = g.op("Gemm", [g.op("Flatten", [g.op("GlobalAveragePool", [y])]), fc, g.rand(3)])
    return g.model([o1, o2]), {"ws": ws, "bns": bns, "wa": wa, "wb": wb, "bnb": bnb, "w1x1": w1x1, "fc": fc}
