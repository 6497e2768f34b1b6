"""Old-opset exports (found by fuzzing opsets 7-12): constant folding of BatchNormalization, a
Squeeze without axes, and the constants surgery replaces."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from compressor import api
from compressor.errors import ModelError
from compressor.ir.fold import _evaluate
from compressor.ir.model_io import validate_model
from tests.core.graphs import G


@pytest.mark.parametrize("opset", [7, 9, 11, 13, 15])
def test_batch_norm_of_a_constant_folds_in_inference_mode(opset):
    """onnx's reference evaluator runs BatchNormalization 9-13 in training mode (momentum is
    always filled in): folded constants were off by up to 10%, and the oracle, comparing against
    the folded model, could not see it. At opsets 7-8 it raised."""
    rng = np.random.default_rng(0)
    s, b, m = (rng.standard_normal(8).astype(np.float32) for _ in range(3))
    v = rng.uniform(0.5, 1.5, 8).astype(np.float32)
    x = rng.standard_normal((1, 8, 2, 2)).astype(np.float32)
    node = helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"], epsilon=1e-3)
    got = _evaluate(node, {"x": x, "s": s, "b": b, "m": m, "v": v}, [helper.make_opsetid("", opset)])[0]
    c = lambda a: a.reshape(1, 8, 1, 1)  # noqa: E731
    assert np.allclose(got, (x - c(m)) / np.sqrt(c(v) + 1e-3) * c(s) + c(b), rtol=1e-6, atol=1e-6)


def test_a_folded_batch_norm_keeps_the_model_exact_end_to_end():
    rng = np.random.default_rng(1)
    w = lambda *shape: numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32) * 0.5)  # noqa: E731
    inits = []
    for name, t in [("w1", w(8, 4, 3, 3)), ("w2", w(4, 8, 3, 3)), ("c", w(1, 8, 1, 1)), ("s", w(8)), ("b", w(8)),
                    ("m", w(8))]:
        t.name = name
        inits.append(t)
    inits.append(numpy_helper.from_array(rng.uniform(0.5, 1.5, 8).astype(np.float32), "v"))
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], kernel_shape=[3, 3], pads=[1] * 4),
             helper.make_node("BatchNormalization", ["c", "s", "b", "m", "v"], ["k"]),
             helper.make_node("Add", ["c1", "k"], ["a"]), helper.make_node("Relu", ["a"], ["r"]),
             helper.make_node("Conv", ["r", "w2"], ["y"], kernel_shape=[3, 3], pads=[1] * 4)]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 9)])
    m.ir_version = 4
    out = api.prune(m, ratio=0.0).model
    x = rng.standard_normal((1, 4, 8, 8)).astype(np.float32)
    a = ort.InferenceSession(m.SerializeToString()).run(None, {"x": x})[0]
    b = ort.InferenceSession(out.SerializeToString()).run(None, {"x": x})[0]
    assert np.abs(a - b).max() <= 1e-5 * np.abs(a).max()


@pytest.mark.parametrize("opset", [11, 13])
def test_a_squeeze_without_axes_keeps_a_channel_axis_pruned_to_one(opset):
    """Squeeze with no axes drops every axis of length 1: once a group keeps one channel, the
    channel axis went too (exit 3). It now gets the axes it squeezed in the original."""
    g = G(opset=opset)
    x = g.input("x", [2, 3, 8, 8])
    h = g.op("GlobalAveragePool", [g.op("Relu", [g.conv(x, 3, 2)])])
    sq = g.op("Squeeze", [h])
    m = g.model([g.op("Gemm", [sq, g.rand(4, 2)], transB=1)])
    res = api.prune(m, ratio=0.5)
    assert res.report["verify"]["passed"] and res.report["groups"]["pruned"] == 1
    node = next(n for n in res.model.graph.node if n.op_type == "Squeeze")
    axes = (list(next(a.ints for a in node.attribute if a.name == "axes")) if opset < 13
            else numpy_helper.to_array(next(t for t in res.model.graph.initializer if t.name == node.input[1])).tolist())
    assert axes == [2, 3]


def test_constants_that_surgery_replaced_do_not_stay_behind():
    """A Reshape target rewritten to the pruned count: the old target was left unused (onnxruntime
    warned about it on every session)."""
    g = G()
    x = g.input("x", [1, 3, 8, 8])
    h = g.op("Relu", [g.conv(x, 3, 8)])
    target = g.const(np.array([1, 8 * 64], np.int64), "shape")
    m = g.model([g.op("Gemm", [g.op("Reshape", [h, target]), g.rand(4, 8 * 64)], transB=1)])
    out = api.prune(m, ratio=0.5).model
    used = {i for n in out.graph.node for i in n.input}
    assert all(t.name in used for t in out.graph.initializer), [t.name for t in out.graph.initializer]
    onnx.checker.check_model(out)


def test_folded_constants_are_what_onnxruntime_computes(monkeypatch):
    """Whatever evaluator folds a constant, onnxruntime's value is kept where the two differ (an
    evaluator bug, like the BatchNormalization one, can no longer change the model)."""
    from compressor.ir import fold

    g = G()
    x = g.input("x", [1, 3, 4, 4])
    k = g.op("Mul", [g.const(np.full((1, 3, 1, 1), 2.0, np.float32)), g.const(np.full((1, 3, 1, 1), 3.0, np.float32))])
    m = g.model([g.op("Add", [x, k])])
    real = fold._evaluate
    monkeypatch.setattr(fold, "_evaluate", lambda node, feeds, opset: [r + 1 for r in real(node, feeds, opset)])
    out, folded = fold.fold_constants(m)
    assert folded
    value = next(numpy_helper.to_array(t) for t in out.graph.initializer if t.name == out.graph.node[0].input[1])
    assert np.all(value == 6.0), value


@pytest.mark.parametrize("opset", [11, 13])
def test_a_squeeze_that_squeezed_nothing_stays_a_no_op(opset):
    """No axis of length 1 before pruning, the channel axis at 1 after: it becomes an Identity
    (empty axes would mean every axis at opset 13, and cannot be written below it)."""
    g = G(opset=opset)
    x = g.input("x", [2, 3, 3, 3])
    sq = g.op("Squeeze", [g.op("Relu", [g.conv(x, 3, 2)])])
    m = g.model([g.conv(sq, 2, 4)])
    res = api.prune(m, ratio=0.5)
    assert res.report["verify"]["passed"] and res.report["groups"]["pruned"] == 1
    assert "Squeeze" not in [n.op_type for n in res.model.graph.node]


def test_a_deprecated_op_is_judged_by_onnxruntime_not_refused_by_the_checker():
    """onnx.checker refuses every op version ONNX lists as deprecated. The tool checks the rest of
    the graph and lets onnxruntime judge the op (ir.model_io.checkable): GroupNormalization-18 runs
    there and prunes (tests/core/test_groupnorm.py); Upsample-10, which onnxruntime refuses too, is
    refused with onnxruntime's reason (exit 2 from the CLI), not the checker's."""
    g = G(opset=10)
    x = g.input("x", [1, 3, 8, 8])
    h = g.op("Relu", [g.conv(x, 3, 16)])
    h = g.op("Upsample", [h, g.const(np.array([1, 1, 2, 2], np.float32), "scales")], mode="nearest")
    y = g.conv(h, 16, 4)
    model = helper.make_model(  # G.model checks the graph, which this test is about
        helper.make_graph(g.nodes, "test", g.inputs, [helper.make_tensor_value_info(y, TensorProto.FLOAT,
                                                                                   [1, 4, 16, 16])], g.inits),
        opset_imports=[helper.make_opsetid("", 10)])
    model.ir_version = 5
    with pytest.raises(onnx.checker.ValidationError, match="deprecated"):
        onnx.checker.check_model(model)
    validate_model(model)  # the checker's copy stands the deprecated node in: the rest checks
    with pytest.raises(ModelError, match="onnxruntime cannot run the input model.*Upsample is deprecated"):
        api.prune(model, ratio=0.5)
