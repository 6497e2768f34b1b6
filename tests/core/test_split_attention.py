"""Split attention (SKNet's selective kernel, ResNeSt's radix softmax): a Reshape [2C] -> [2, C]
whose radix axis is only softmaxed and summed over. Each radix slice holds the same channels, so
the branch convs and the attention's two halves lose the same channels (rules/reshape.py,
_mixes_only); the radix softmax used to freeze them as a softmax over a channel axis."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from compressor import api
from compressor.verify.oracle import masked_original
from tests.core.graphs import G


def sk_unit(c: int = 8, d: int = 4):
    g = G(11, opset=17)
    x = g.input("x", [2, 3, 8, 8])
    stem = g.op("Relu", [g.conv(x, 3, c, k=3)])
    b1 = g.op("Relu", [g.conv(stem, c, c, k=3)])
    b2 = g.op("Relu", [g.op("Conv", [stem, g.rand(c, c, 3, 3), g.rand(c, base="b")], kernel_shape=[3, 3],
                             pads=[2] * 4, dilations=[2, 2])])
    ax = g.const(np.array([1], np.int64), "ax")
    feats = g.op("Concat", [g.op("Unsqueeze", [b1, ax]), g.op("Unsqueeze", [b2, ax])], axis=1)  # [N, 2, C, H, W]
    u = g.op("ReduceSum", [feats, ax], keepdims=0)
    s = g.op("GlobalAveragePool", [u])
    z = g.op("Relu", [g.conv(s, c, d, k=1)])
    a = g.conv(z, d, 2 * c, k=1)  # [N, 2C, 1, 1]
    a = g.op("Reshape", [a, g.const(np.array([2, 2, c, 1, 1], np.int64), "shape")])
    a = g.op("Softmax", [a], axis=1)
    v = g.op("ReduceSum", [g.op("Mul", [feats, a]), ax], keepdims=0)
    return g.model([g.conv(v, c, 4, k=1)])


def _run(model, x):
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_selective_kernel_branches_and_radix_attention_prune_together():
    model = sk_unit()
    res = api.prune(model, ratio=0.5)
    rep = res.report
    assert rep["verify"]["passed"], rep["verify"]
    # the stem, the attention's hidden width and the branches' shared channels all lose half
    assert rep["channels"]["removed"] == 4 + 2 + 4, (rep["channels"], rep["unprunable"])
    x = np.random.default_rng(2).standard_normal((2, 3, 8, 8)).astype(np.float32)
    keep = res.plan.keep() if callable(res.plan.keep) else res.plan.keep
    ref, got = _run(masked_original(res.analysis, keep), x), _run(res.model, x)
    assert np.max(np.abs(ref - got)) <= 1e-5 * max(1.0, float(np.max(np.abs(ref))))
