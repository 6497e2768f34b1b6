"""Recurrent and control-flow parts: LSTM, GRU, If and Loop are barriers, and only for the groups
that reach them; the convolutional rest of the model is still pruned.

Property: the group feeding a barrier keeps all its channels (the report names the op), the
groups before it prune, and the pruned model reproduces the masked original.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from compressor import api

from _graphs import GraphBuilder, prune_ok


def conv_stem(g: GraphBuilder, x: str) -> str:
    y = g.conv_bn_relu(x, 3, 16)
    y = g.conv_bn_relu(y, 16, 24)
    return g.conv(y, 24, 32, 1)             # the channels that meet the barrier


def rnn_model(kind: str) -> onnx.ModelProto:
    g = GraphBuilder(opset=14)
    x = g.input("x", [1, 3, 16, 16])
    feat = g.op("ReduceMean", [conv_stem(g, x)], axes=[2], keepdims=0)     # [1, 32, W]
    seq = g.op("Transpose", [feat], perm=[2, 0, 1])                        # [W, 1, 32]
    hidden, gates = 12, 4 if kind == "LSTM" else 3
    w = g.weight(1, gates * hidden, 32)
    r = g.weight(1, gates * hidden, hidden)
    b = g.weight(1, 2 * gates * hidden, scale=0.1)
    y, _h = g.op(kind, [seq, w, r, b], n_out=2, hidden_size=hidden)[:2] if kind == "GRU" else \
        g.op(kind, [seq, w, r, b], n_out=3, hidden_size=hidden)[:2]
    g.output(g.op("Squeeze", [y, g.ints([1, 2], "axes")]), shape=[16, hidden])
    return g.model(kind.lower())


def if_model() -> onnx.ModelProto:
    g = GraphBuilder(opset=13)
    x = g.input("x", [1, 3, 16, 16])
    cond = g.input("flag", [], dtype=TensorProto.BOOL)  # a scalar bool input (random_feeds makes an array)
    t = conv_stem(g, x)
    then_g = helper.make_graph([helper.make_node("Relu", [t], ["then_out"])], "then", [],
                               [helper.make_tensor_value_info("then_out", TensorProto.FLOAT, [1, 32, 16, 16])])
    else_g = helper.make_graph([helper.make_node("Sigmoid", [t], ["else_out"])], "else", [],
                               [helper.make_tensor_value_info("else_out", TensorProto.FLOAT, [1, 32, 16, 16])])
    y = g.op("If", [cond], then_branch=then_g, else_branch=else_g)
    g.output(g.op("GlobalAveragePool", [y]), shape=[1, 32, 1, 1])
    return g.model("if")


def loop_model() -> onnx.ModelProto:
    g = GraphBuilder(opset=13)
    x = g.input("x", [1, 3, 16, 16])
    t = conv_stem(g, x)
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("Add", ["acc_in", t], ["acc_out"])],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc_in", TensorProto.FLOAT, [1, 32, 16, 16])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc_out", TensorProto.FLOAT, [1, 32, 16, 16])])
    trips = g.ints(2, "trips")
    keep_going = g.const(np.array(True), "cond", as_node=False)
    acc0 = g.const(np.zeros((1, 32, 16, 16), np.float32), "acc0")
    y = g.op("Loop", [trips, keep_going, acc0], body=body)
    g.output(g.op("GlobalAveragePool", [y]), shape=[1, 32, 1, 1])
    return g.model("loop")


CASES = {"LSTM": lambda: rnn_model("LSTM"), "GRU": lambda: rnn_model("GRU"), "If": if_model, "Loop": loop_model}


@pytest.mark.parametrize("op", sorted(CASES))
def test_barrier_freezes_only_what_reaches_it(op):
    model = CASES[op]()
    reports = prune_ok(model, input_shapes={"x": (1, 3, 16, 16)} if op != "If" else None)
    rep = reports[-1]
    assert any(b["op_type"] == op for b in rep["barriers"]), f"{op} should be reported as a barrier: {rep['barriers']}"
    assert rep["groups"]["pruned"] >= 2, f"the two conv groups before the {op} should prune: {rep['groups']}"
    an = api.analyze(model)
    last_conv = [n for n in model.graph.node if n.op_type == "Conv"][-1]
    frozen = next(g for g in an.groups if any(m.tensor == last_conv.input[1] and m.role == "producer"
                                             for m in g.members))
    assert not frozen.prunable and any(op in r for r in frozen.reasons), frozen.reasons
