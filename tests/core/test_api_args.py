"""The Python API under a pipeline's mistakes, and the sensitivity probes' inputs (found by
exploring the API): wrong types are UsageErrors naming the argument, a string ``exclude`` is one
pattern, integer and offset outputs do not distort the sensitivity, and calibration data that
would change meaning in the cast to the input's type is refused."""

from __future__ import annotations

import json

import numpy as np
import pytest
from onnx import TensorProto, helper

from compressor import api
from compressor.errors import UsageError
from compressor.importance import score_groups
from compressor.importance.sensitivity import calibration_feeds, measure_sensitivity
from compressor.ir.shapes import random_feeds
from tests.core.graphs import G
from tests.core.test_cli import small_model


@pytest.mark.parametrize("kwargs, fragment", [
    ({"ratio": "0.5"}, "ratio must be"),
    ({"target_macs": "0.5"}, "target_macs must be"),
    ({"seed": 1.5}, "seed must be"),
    ({"min_channels": "2"}, "min_channels must be"),
    ({"output": 5}, "output must be"),
    ({"exclude": 3}, "exclude must be"),
    ({"plan_in": {"plan": []}}, "plan_in must be"),
    ({"input_shapes": 5}, "input_shapes must be"),
    ({"input_shapes": {"x": "1x3x8x8"}}, "positive integers"),
    ({"input_shapes": {"x": [0, 3, 8, 8]}}, "positive integers"),
])
def test_arguments_of_the_wrong_type_are_usage_errors(kwargs, fragment):
    with pytest.raises(UsageError, match=fragment):
        api.prune(small_model(), **kwargs)


def test_the_model_must_be_a_path_or_a_model_proto():
    with pytest.raises(UsageError, match="path or an onnx.ModelProto"):
        api.prune(small_model().SerializeToString())


def test_a_string_exclude_is_one_pattern():
    m = small_model()
    conv = m.graph.node[0].name
    assert not any(g.prunable for g in api.analyze(m, exclude=conv).groups if conv in g.nodes)
    kept = api.prune(m, exclude=conv).report["unprunable"]
    assert any(f"--exclude '{conv}'" in r for u in kept for r in u["reasons"])


def _two_heads(offset: float = 0.0, argmax: bool = False):
    """x -> conv a -> head a; x -> conv b -> head b (+ offset); optionally an ArgMax output."""
    g = G()
    x = g.input("x", [2, 3, 8, 8])
    a = g.op("Relu", [g.conv(x, 3, 8)])
    b = g.op("Relu", [g.conv(x, 3, 8)])
    ya = g.conv(a, 8, 4, k=1)
    yb = g.op("Add", [g.conv(b, 8, 4, k=1), g.const(np.full((1, 4, 1, 1), offset, np.float32))])
    outs = [ya, yb] + ([g.op("ArgMax", [ya], axis=1)] if argmax else [])
    return g.model(outs)


def _sensitivity(model):
    an = api.analyze(model)
    spec = api._spec(model, None)
    feeds = [random_feeds(spec, seed=t) for t in range(2)]
    return measure_sensitivity(an, score_groups(an, "l2"), feeds)


def test_sensitivity_ignores_integer_outputs_and_a_constant_offset():
    """An ArgMax output made groups infinitely sensitive (and the report unserialisable); a large
    offset on one head made its groups look free to prune (the change was over sum |y|^2)."""
    plain = _sensitivity(_two_heads()).raw
    with_argmax = _sensitivity(_two_heads(argmax=True)).raw
    shifted = _sensitivity(_two_heads(offset=1000.0)).raw
    assert plain and set(plain) == set(with_argmax) == set(shifted)
    for gid, v in plain.items():
        assert np.isfinite(with_argmax[gid]).all() and v.min() > 0
        assert shifted[gid] == pytest.approx(v, rel=1e-3), gid
    res = api.prune(_two_heads(argmax=True), target_macs=0.6, sensitivity=True)
    json.dumps(res.report, allow_nan=False)


def _int_input_model():
    """ids (int64) index a 5-row table; the rows feed a conv."""
    g = G()
    g.inputs.append(helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", 8, 8]))
    table = g.rand(5, 3)
    e = g.op("Transpose", [g.op("Gather", [table, "ids"], axis=0)], perm=[0, 3, 1, 2])
    return g.model([g.conv(g.op("Relu", [g.conv(e, 3, 8)]), 8, 4, k=1)])


@pytest.mark.parametrize("values, fragment", [
    (np.full((4, 8, 8), 1.5), "holds fractions"),
    (np.full((4, 8, 8), 2.0 ** 70), "outside the int64 range"),
])
def test_calibration_that_would_change_in_the_cast_is_refused(values, fragment):
    model = _int_input_model()
    with pytest.raises(UsageError, match=fragment):
        calibration_feeds(api._spec(model, {"ids": [1, 8, 8]}), {"ids": values})


def test_calibration_the_model_cannot_run_is_a_usage_error():
    model = _int_input_model()
    with pytest.raises(UsageError, match="onnxruntime cannot run the model on the sensitivity probes' inputs"):
        api.prune(model, input_shapes={"ids": [1, 8, 8]}, target_macs=0.5,
                  calibration={"ids": np.full((4, 8, 8), 9, np.int64)})  # row 9 of 5


def test_calibration_runs_at_the_batch_the_user_gave():
    """A symbolic batch in the graph, a Reshape to [1, C] inside (torch's view(1, -1)): the
    probes ran in batches of 32 and onnxruntime failed; the --input-shape batch is used now."""
    g = G()
    x = g.input("x", ["N", 3, 8, 8])
    h = g.op("GlobalAveragePool", [g.op("Relu", [g.conv(x, 3, 8)])])
    m = g.model([g.op("Gemm", [g.op("Reshape", [h, g.const(np.array([1, 8], np.int64))]), g.rand(4, 8)],
                      transB=1)])
    calib = np.random.default_rng(0).standard_normal((6, 3, 8, 8)).astype(np.float32)
    res = api.prune(m, input_shapes={"x": [1, 3, 8, 8]}, target_macs=0.6, calibration=calib)
    assert res.report["verify"]["passed"] and "6 samples" in res.report["budget"]["sensitivity"]["inputs"]


def test_a_budget_on_a_model_without_macs_is_a_usage_error():
    """Only a PRelu: no Conv/Gemm/MatMul, so no MACs to keep a fraction of (it divided by zero)."""
    g = G()
    x = g.input("x", [1, 4, 8, 8])
    m = g.model([g.op("PRelu", [x, g.rand(4, 1, 1, positive=True)])])
    for kw in ({"target_macs": 0.5}, {"target_macs": 0.5, "sensitivity": True}):
        with pytest.raises(UsageError, match="has no MACs to keep a fraction of"):
            api.prune(m, **kw)


def test_the_probes_run_unoptimised_when_onnxruntime_refuses_its_own_rewrite():
    """Two spatial Pads before a MaxPool: onnxruntime 1.31's optimiser fuses them into pads no
    smaller than the kernel and then refuses the session (found by random-graph fuzzing)."""
    g = G(opset=16)
    x = g.input("x", [1, 4, 6, 6])
    h = g.op("Relu", [g.conv(x, 4, 8, k=1)])
    pads = g.const(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64))
    p = g.op("Pad", [g.op("Pad", [h, pads]), pads])
    m = g.model([g.conv(g.op("MaxPool", [p], kernel_shape=[2, 2], strides=[2, 2]), 8, 3, k=1)])
    an = api.analyze(m)
    sens = measure_sensitivity(an, score_groups(an, "l2"), [random_feeds(api._spec(m, None), seed=0)])
    assert sens.raw


def test_a_batch_one_single_value_output_keeps_its_sensitivity():
    """Its spread is across the feeds, not within one (it read 0: every group looked free)."""
    from compressor.importance.sensitivity import _output_change

    ref = [[np.array([[0.3 + 0.1 * i]], np.float32)] for i in range(8)]
    got = [[np.array([[0.9]], np.float32)] for _ in range(8)]
    assert _output_change(ref, got) > 1.0
    assert _output_change(ref, ref) == 0.0


def test_sensitivity_with_a_scalar_first_input():
    """The probes' batch came from dim 0 of the first input: a scalar flag there raised IndexError."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = lambda n, *s: numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n)  # noqa: E731
    nodes = [helper.make_node("Cast", ["flag"], ["ff"], to=TensorProto.FLOAT),
             helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1] * 4), helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Mul", ["r", "ff"], ["m"]), helper.make_node("Conv", ["m", "hw", "hb"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("flag", TensorProto.INT64, []),
                                       helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2, "H", "W"])],
                          [w("w", 8, 3, 3, 3), w("b", 8), w("hw", 2, 8, 1, 1), w("hb", 2)])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    res = api.prune(m, target_macs=0.6, sensitivity=True, input_shapes={"x": [1, 3, 16, 16]})
    assert res.report["verify"]["passed"] and res.report["budget"]["sensitivity"]
