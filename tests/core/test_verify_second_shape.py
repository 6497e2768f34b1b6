"""A model with dynamic input dims is also proven at a second input shape: a pruned model whose
shape operand was written in at the verification shape passes there and fails everywhere else
(a Reshape target C x H pinned to C' x 8; found by an exploratory tester in both torch exporters)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from compressor import api
from compressor.ir.shapes import InputSpec
from compressor.verify.oracle import verify
from compressor.verify.second_shape import alternate_specs

F = np.dtype(np.float32)


def _model(dims, target=None) -> onnx.ModelProto:
    """Conv, then y = reshape(c, [N, C*H, W]): the target computed from Shape(c) at run time, or the
    constant ``target`` (what a pinned rewrite leaves)."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 3, 1, 1)).astype(np.float32), "w")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"])]
    if target is None:
        nodes += [helper.make_node("Shape", ["c"], ["s"]),
                  helper.make_node("Gather", ["s", "i0"], ["n"], axis=0),
                  helper.make_node("Gather", ["s", "i1"], ["ch"], axis=0),
                  helper.make_node("Gather", ["s", "i2"], ["h"], axis=0),
                  helper.make_node("Gather", ["s", "i3"], ["w_"], axis=0),
                  helper.make_node("Mul", ["ch", "h"], ["chh"]),
                  helper.make_node("Concat", ["n", "chh", "w_"], ["t"], axis=0)]
        inits += [numpy_helper.from_array(np.array([k], np.int64), f"i{k}") for k in range(4)]
    else:
        inits.append(numpy_helper.from_array(np.array(target, np.int64), "t"))
    nodes.append(helper.make_node("Reshape", ["c", "t"], ["y"]))
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, None, None])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def test_alternate_shapes_change_only_dynamic_dims():
    spec = InputSpec({"x": (1, 3, 8, 8)}, {"x": F})
    assert alternate_specs(_model([1, 3, 8, 8]), spec) == []
    alts = alternate_specs(_model(["N", 3, "H", "W"]), spec)
    assert alts[0].shapes == {"x": (2, 3, 4, 6)}, "batch + 1, H x 0.5, W x 0.75: unequal, so H and W differ"
    assert all(a.shapes["x"][1] == 3 for a in alts) and len({a.shapes["x"] for a in alts}) == len(alts)
    shared = alternate_specs(_model(["N", 3, "S", "S"]), spec)
    assert shared[0].shapes["x"][2] == shared[0].shapes["x"][3], "dims sharing a symbol keep sharing a value"


def test_a_shape_operand_pinned_at_the_verification_shape_fails_the_proof():
    dynamic = _model(["N", 3, "H", "W"])
    pinned = _model(["N", 3, "H", "W"], target=[1, 32, 8])  # C*H = 4*8 written in
    spec = InputSpec({"x": (1, 3, 8, 8)}, {"x": F})
    assert verify(dynamic, pinned, spec).passed, "at the verification shape alone it looks right"
    res = verify(dynamic, pinned, spec, alternates=alternate_specs(dynamic, spec))
    assert not res.passed and "second input shape" in res.reason and res.second_shape["passed"] is False
    same = verify(dynamic, dynamic, spec, alternates=alternate_specs(dynamic, spec))
    assert same.passed and same.second_shape == {"shapes": {"x": [2, 3, 4, 6]}, "passed": True, "max_rel_err": 0.0}


def test_a_model_that_runs_at_one_shape_only_skips_the_second():
    """The original itself cannot run at any other shape (a constant Reshape target): nothing to
    compare there, and the proof at the verification shape stands."""
    fixed = _model(["N", 3, "H", "W"], target=[1, 32, 8])
    spec = InputSpec({"x": (1, 3, 8, 8)}, {"x": F})
    res = verify(fixed, fixed, spec, alternates=alternate_specs(fixed, spec))
    assert res.passed and "skipped" in res.second_shape


def test_prune_reports_the_second_shape():
    rng = np.random.default_rng(0)
    w = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Conv", ["r", "w2"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2, "H", "W"])],
                          [numpy_helper.from_array(w(8, 3, 3, 3), "w1"), numpy_helper.from_array(w(2, 8, 1, 1), "w2")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    res = api.prune(m, ratio=0.5, input_shapes={"x": (1, 3, 8, 8)})
    v = res.report["verify"]
    assert v["passed"] and v["second_shape"]["passed"] and v["second_shape"]["shapes"] == {"x": [2, 3, 4, 6]}


def test_an_output_empty_on_random_inputs_is_a_result():
    """A detector keeping the scores above a threshold none reaches: its empty output is what the
    model computes, not an input dimension 0 (that case alone fails: nothing is compared)."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.standard_normal((4, 8, 1, 1)).astype(np.float32), "w2"),
             numpy_helper.from_array(np.array(1e6, np.float32), "thr"),
             numpy_helper.from_array(np.array([-1], np.int64), "flat")]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["a"], ["b"]),
             helper.make_node("Conv", ["b", "w2"], ["s"]), helper.make_node("Reshape", ["s", "flat"], ["sf"]),
             helper.make_node("Greater", ["sf", "thr"], ["keep"]),
             helper.make_node("Compress", ["sf", "keep"], ["scores"], axis=0)]
    g = helper.make_graph(nodes, "det", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["K"])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    res = api.prune(m, ratio=0.5)
    assert res.report["verify"]["passed"] and res.report["groups"]["pruned"] == 1
