"""fold.py: gates and constant channels are folded exactly into neighbours, then removed."""

from __future__ import annotations

import numpy as np

from compressor.surgery import fold_constant_channels, fold_gates
from tests.core.graphs import G

from ._graphs import inits, rel_err, residual, set_init


def _entry(report, gid):
    return next(e for e in report["groups"] if e["group"] == gid)


def _head_graph(pad_consumer: bool = False, gate_values=None, zero_filter: bool = True):
    """conv1 (channel 2 all zero) -> BN (mean -1: the channel outputs a positive constant) -> Relu -> r1;
    r1 -> 1x1 conv (or a padded 3x3 conv) -> BN -> gate Mul -> Relu -> GAP -> Gemm; r1 -> GAP -> Gemm."""
    g = G(1)
    x = g.input("x", [2, 3, 8, 8])
    w1 = g.rng.standard_normal((8, 3, 3, 3)).astype(np.float32)
    if zero_filter:
        w1[2] = 0
    c1 = g.op("Conv", [x, g.const(w1), g.const(np.zeros(8, np.float32), "b")], kernel_shape=[3, 3], pads=[1] * 4)
    mean = g.rng.standard_normal(8).astype(np.float32)
    mean[2] = -1.0
    bn1 = g.op("BatchNormalization", [c1, g.rand(8, positive=True), g.const(np.full(8, 0.5, np.float32)),
                                      g.const(mean), g.rand(8, positive=True)])
    r1 = g.op("Relu", [bn1])
    k = 3 if pad_consumer else 1
    w2 = g.rand(6, 8, k, k)
    c2 = g.op("Conv", [r1, w2, g.rand(6, base="b")], kernel_shape=[k, k], pads=[k // 2] * 4)
    y = g.bn(c2, 6)
    if gate_values is not None:
        y = g.op("Mul", [y, g.const(np.asarray(gate_values, np.float32).reshape(1, 6, 1, 1), "gate")])
    y = g.op("Relu", [y])
    o1 = g.op("Gemm", [g.op("Flatten", [g.op("GlobalAveragePool", [y])]), g.rand(4, 6), g.rand(4)], transB=1)
    fc = g.rand(8, 4)
    o2 = g.op("Gemm", [g.op("Flatten", [g.op("GlobalAveragePool", [r1])]), fc, g.rand(4)])
    return g.model([o1, o2]), {"w1": g.nodes[0].input[1], "w2": w2, "fc": fc}


def test_zero_filter_and_zero_gate_fold_into_1x1_conv_and_gemm():
    """conv1 channel 2 (zero filter after BN+Relu: constant > 0) folds into the 1x1 conv's and the Gemm's
    biases; gate channel 1 (gate 0, folded into BN) is a constant 0. Both are removed; error <= 1e-5."""
    gate = [0.5, 0.0, 1.0, 1.5, 2.0, 0.7]
    model, n = _head_graph(gate_values=gate)
    before = model.SerializeToString()
    out, report = fold_constant_channels(model)
    assert model.SerializeToString() == before, "the input model must not be edited"
    assert [e["status"] for e in report["gates"]] == ["folded"] and report["gates"][0]["zero_channels"] == [1]
    g0, g1 = _entry(report, 0), _entry(report, 1)
    assert g0["folded"] == [2] and g0["values"][2] > 0, g0
    assert g1["folded"] == [1] and g1["values"][1] == 0.0, g1
    assert report["channels_removed"] == 2 and report["macs_after"] < report["macs_before"]
    assert not any(node.op_type == "Mul" for node in out.graph.node), "the gate Mul is folded away"
    vals = inits(out)
    assert vals[n["w1"]].shape[0] == 7 and vals[n["w2"]].shape == (5, 7, 1, 1) and vals[n["fc"]].shape[0] == 7
    assert report["max_rel_err"] <= 1e-5 and rel_err(model, out) <= 1e-5, report["verify"]


def test_padded_3x3_consumer_is_reported_and_left():
    """A padded 3x3 conv sees the constant only away from the border: not exact, channel left in place."""
    model, n = _head_graph(pad_consumer=True)
    out, report = fold_constant_channels(model)
    g0 = _entry(report, 0)
    assert g0["folded"] == [] and g0["left"][0]["channel"] == 2, g0
    assert "padded 3x3 Conv" in g0["left"][0]["reason"], g0["left"]
    assert report["channels_removed"] == 0 and inits(out)[n["w1"]].shape[0] == 8
    assert report["max_rel_err"] <= 1e-5


def test_nothing_to_fold_is_a_proven_no_op():
    model, _ = _head_graph(zero_filter=False)
    out, report = fold_constant_channels(model)
    assert report["groups"] == [] and report["channels_removed"] == 0 and report["max_rel_err"] <= 1e-5


def test_residual_trunk_constant_folds_when_every_consumer_can_take_it():
    """Trunk channel 3 constant (both producers zero): it reaches the padded 3x3 conv of the block, so it
    stays; once that consumer sees a 1x1 kernel, the trunk channel folds into the 1x1 conv and the Gemm."""
    model, n = residual()
    vals = inits(model)
    for name in (n["ws"], n["wb"]):
        w = vals[name].copy()
        w[3] = 0
        set_init(model, name, w)
    _, report = fold_constant_channels(model)
    trunk = next(e for e in report["groups"] if e["size"] == 8)
    assert trunk["folded"] == [] and "padded 3x3" in trunk["left"][0]["reason"], trunk
    # the block's first conv reads the trunk before the Add: make it a 1x1 so every consumer is foldable
    g = G(5)
    x = g.input("x", [2, 3, 8, 8])
    ws = g.rand(8, 3, 3, 3)
    t = g.op("Relu", [g.bn(g.op("Conv", [x, ws], kernel_shape=[3, 3], pads=[1] * 4), 8)])
    wb = g.rand(8, 8, 1, 1)
    b = g.bn(g.op("Conv", [t, wb, g.rand(8, base="b")], kernel_shape=[1, 1]), 8)
    y = g.op("Relu", [g.op("Add", [t, b])])
    o1 = g.op("Conv", [y, g.rand(4, 8, 1, 1)], kernel_shape=[1, 1])
    o2 = g.op("Gemm", [g.op("Flatten", [g.op("GlobalAveragePool", [y])]), g.rand(8, 3), g.rand(3)])
    model = g.model([o1, o2])
    vals = inits(model)
    for name in (ws, wb):
        w = vals[name].copy()
        w[3] = 0
        set_init(model, name, w)
    out, report = fold_constant_channels(model)
    trunk = next(e for e in report["groups"] if e["size"] == 8)
    assert trunk["folded"] == [3], trunk
    assert inits(out)[ws].shape[0] == 7 and report["max_rel_err"] <= 1e-5 and rel_err(model, out) <= 1e-5


def test_gates_fold_into_conv_bn_and_through_relu():
    """Gate after a Conv -> its weights; after BN -> scale/bias; non-negative gate after Relu -> through it;
    a negative gate after Relu is not exact and stays."""
    g = G(2)
    x = g.input("x", [1, 3, 6, 6])
    c = g.conv(x, 3, 4)
    y = g.op("Mul", [c, g.const(np.array([1.0, 0.0, 2.0, 0.5], np.float32).reshape(4, 1, 1), "gate")])
    y = g.op("Relu", [g.bn(g.conv(y, 4, 5), 5)])
    y = g.op("Mul", [g.const(np.array([[0.3], [1.0], [0.0], [2.0], [1.0]], np.float32).reshape(1, 5, 1, 1), "gate"), y])
    y = g.op("Relu", [g.bn(g.conv(y, 5, 4), 4)])
    y = g.op("Mul", [y, g.const(np.array([1.0, -1.0, 1.0, 1.0], np.float32).reshape(1, 4, 1, 1), "gate")])
    model = g.model([y])
    out, report = fold_gates(model)
    status = [e["status"] for e in report["gates"]]
    assert status == ["folded", "folded", "skipped"], report["gates"]
    assert "negative" in report["gates"][2]["reason"]
    assert sum(n.op_type == "Mul" for n in out.graph.node) == 1
    assert report["max_rel_err"] <= 1e-5 and rel_err(model, out) <= 1e-5


def test_matmul_consumer_gets_an_add_and_near_zero_filters_need_zero_tol():
    """A MatMul has no bias: an Add carries the folded constant. A filter of 1e-9 * max is only zero with
    zero_tol (and the result still reproduces the original within 1e-5)."""
    g = G(4)
    x = g.input("x", [2, 3, 8, 8])
    w = g.rng.standard_normal((6, 3, 3, 3)).astype(np.float32)
    w[4] = 1e-9
    mean = np.zeros(6, np.float32)
    mean[4] = -1.0  # the near-zero channel then outputs relu(0.5 + gamma / sqrt(var + eps)) > 0
    bn = g.op("BatchNormalization", [g.op("Conv", [x, g.const(w)], kernel_shape=[3, 3], pads=[1] * 4),
                                     g.rand(6, positive=True), g.const(np.full(6, 0.5, np.float32)), g.const(mean),
                                     g.rand(6, positive=True)])
    y = g.op("MatMul", [g.op("Flatten", [g.op("GlobalAveragePool", [g.op("Relu", [bn])])]), g.rand(6, 5)])
    model = g.model([y])
    _, exact = fold_constant_channels(model)
    assert exact["groups"] == [], "without zero_tol a 1e-9 filter is not zero"
    out, report = fold_constant_channels(model, zero_tol=1e-6)
    e = report["groups"][0]
    assert e["folded"] == [4] and e["values"][4] > 0, e
    assert report["channels_removed"] == 1
    assert [n.op_type for n in out.graph.node][-1] == "Add", "the MatMul's folded constant needs an Add"
    assert report["max_rel_err"] <= 1e-5 and rel_err(model, out) <= 1e-5


def test_channel_constant_at_one_size_but_not_another_is_left():
    """A zero filter's channel (its bias b) is zero-padded at the top, then globally pooled: at each
    H x W its pooled value is the constant b (H - 2) / H, a different constant at every size. Probed
    at one shape only, it was folded as the verification shape's constant and the model failed at
    every other size (fuzz seed 802231); it is now probed at the second shape too and left."""
    g = G(3)
    x = g.input("x", [1, 3, "H", "W"])
    w = g.rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    w[3] = 0
    c = g.op("Conv", [x, g.const(w), g.const(np.array([0.1, -0.2, 0.3, 0.7], np.float32), "b")],
             kernel_shape=[3, 3], pads=[1] * 4)
    p = g.op("Pad", [c, g.const(np.array([0, 0, 2, 0, 0, 0, 0, 0], np.int64), "pads")], mode="constant")
    y = g.op("Gemm", [g.op("Flatten", [g.op("GlobalAveragePool", [p])]), g.rand(5, 4), g.rand(5)], transB=1)
    model = g.model([y])
    out, report = fold_constant_channels(model, {"x": [1, 3, 12, 12]})
    entry = _entry(report, 0)
    assert entry["folded"] == [] and [e["channel"] for e in entry["left"]] == [3], entry
    assert "not constant" in entry["left"][0]["reason"]
    assert report["verify"]["passed"] and report["verify"]["second_shape"], report["verify"]


def test_the_probe_runs_the_graph_as_written():
    """A Pad before an AveragePool: onnxruntime fuses them when it optimises, and the fused pool's
    padding (2) is not smaller than its kernel (2), so it refuses to load the probe model that reads
    the pool's output (fuzz seed 2104705). The probe now runs without graph rewrites, like the proof."""
    g = G(4)
    x = g.input("x", [1, 4, 12, 10])
    w = g.rng.standard_normal((4, 4, 3, 3)).astype(np.float32)
    w[1] = 0
    h = g.op("Conv", [x, g.const(w)], kernel_shape=[3, 3], pads=[1] * 4)
    h = g.op("Clip", [h, g.const(np.array(0, np.float32), "lo"), g.const(np.array(6, np.float32), "hi")])
    h = g.op("Pad", [h, g.const(np.array([0, 0, 2, 0, 0, 0, 2, 2], np.int64), "pads")], mode="constant")
    h = g.op("AveragePool", [h], kernel_shape=[2, 2], pads=[0, 0, 0, 0], strides=[1, 1])
    y = g.op("Conv", [h, g.rand(6, 4, 1, 1), g.rand(6, base="b")], kernel_shape=[1, 1])
    out, report = fold_constant_channels(g.model([y]))
    assert report["verify"]["passed"] and _entry(report, 0)["folded"] == [1], report["groups"]
