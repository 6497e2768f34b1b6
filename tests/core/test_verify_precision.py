"""The proof on models it could not judge before: float16 models are compared in float32 (their
own rounding differs between two correct prunings by an ulp); an output with nothing finite
proves nothing and fails; a model onnxruntime cannot run is bad input (exit 2), not a bug."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from compressor import api
from compressor.errors import ModelError, VerificationError
from compressor.ir.model_io import ort_max_ir_version
from compressor.ir.shapes import InputSpec
from compressor.verify.oracle import verify
from compressor.verify.upcast import has_half


def _fcn(dtype=np.float16, widths=(64, 128, 128, 128), size=32, seed=0) -> onnx.ModelProto:
    """Conv+ReLU layers in ``dtype``, wide enough that float16 sums round differently once pruned."""
    rng = np.random.default_rng(seed)
    tt = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    nodes, inits, x, cin = [], [], "x", 3
    for k, w in enumerate(widths + (16,)):
        wt = (rng.standard_normal((w, cin, 3, 3)) / np.sqrt(9 * cin)).astype(dtype)
        inits += [numpy_helper.from_array(wt, f"w{k}"), numpy_helper.from_array(rng.standard_normal(w).astype(dtype) * 0.1, f"b{k}")]
        nodes.append(helper.make_node("Conv", [x, f"w{k}", f"b{k}"], [f"c{k}"], pads=[1, 1, 1, 1]))
        x, cin = f"c{k}", w
        if k < len(widths):
            nodes.append(helper.make_node("Relu", [x], [f"r{k}"]))
            x = f"r{k}"
    g = helper.make_graph(nodes, "fcn", [helper.make_tensor_value_info("x", tt, [1, 3, size, size])],
                          [helper.make_tensor_value_info(x, tt, [1, 16, size, size])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def test_a_float16_pruning_is_proven_in_float32():
    """Compared in float16 this pruning differed by 5.3e-4 (> 1e-4, exit 3); in float32 by ~1e-7."""
    model = _fcn()
    assert has_half(model)
    res = api.prune(model, ratio=0.3)
    v = res.report["verify"]
    assert v["passed"] and v["compared_in"].startswith("float32") and v["max_rel_err"] < 1e-5, v
    assert res.model.graph.initializer[0].data_type == TensorProto.FLOAT16, "the output stays float16"


def test_a_wrong_float16_model_still_fails():
    """Widening both sides keeps the proof sharp: two input channels swapped in one conv fail."""
    model = _fcn(widths=(16, 16))
    wrong = onnx.ModelProto()
    wrong.CopyFrom(model)
    w = numpy_helper.to_array(wrong.graph.initializer[2]).copy()  # w1: [16, 16, 3, 3]
    w[:, [0, 1]] = w[:, [1, 0]]
    wrong.graph.initializer[2].CopyFrom(numpy_helper.from_array(w, "w1"))
    spec = InputSpec({"x": (1, 3, 32, 32)}, {"x": np.dtype(np.float16)})
    res = verify(model, wrong, spec)
    assert not res.passed and res.max_rel_err > 1e-2 and res.compared_in.startswith("float32")


def test_float32_models_are_compared_as_they_are():
    res = api.prune(_fcn(np.float32, widths=(16, 16), size=8), ratio=0.5)
    assert res.report["verify"]["compared_in"] == "model types"


def _overflowing() -> onnx.ModelProto:
    """Conv -> Exp(1e3 x): every output is +inf on random inputs."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"]), helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2"], ["c2"]), helper.make_node("Abs", ["c2"], ["a"]),
             helper.make_node("Add", ["a", "one"], ["a1"]), helper.make_node("Mul", ["a1", "big"], ["m"]),
             helper.make_node("Exp", ["m"], ["y"])]
    inits = [numpy_helper.from_array(rng.standard_normal((8, 3, 1, 1)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.standard_normal((4, 8, 1, 1)).astype(np.float32), "w2"),
             numpy_helper.from_array(np.array(1.0, np.float32), "one"),
             numpy_helper.from_array(np.array(1e3, np.float32), "big")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 4, 4])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def test_an_output_with_nothing_finite_proves_nothing():
    """It used to pass with error 0 and the proof compared nothing: now it fails, and says why."""
    with pytest.raises(VerificationError, match="NaN or infinite on every random input"):
        api.prune(_overflowing(), ratio=0.5)
    res = api.prune(_overflowing(), ratio=0.5, verify_model=False)  # the user may still write it
    assert res.report["verify"]["skipped"]


def test_a_model_onnxruntime_cannot_load_is_bad_input():
    """A custom op onnxruntime does not know, with its shapes declared (so analysis runs): exit 2
    with onnxruntime's reason, not an internal error."""
    rng = np.random.default_rng(0)
    vi = lambda n, s: helper.make_tensor_value_info(n, TensorProto.FLOAT, s)  # noqa: E731
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2"], ["y"]),
             helper.make_node("EfficientNMS_TRT", ["y"], ["dets"], domain="trt.plugins")]
    inits = [numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.standard_normal((4, 8, 1, 1)).astype(np.float32), "w2")]
    g = helper.make_graph(nodes, "g", [vi("x", [1, 3, 8, 8])], [vi("dets", [1, 4, 8, 8])], inits,
                          value_info=[vi("y", [1, 4, 8, 8])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("trt.plugins", 1)])
    m.ir_version = 8
    with pytest.raises(ModelError, match="onnxruntime cannot run the input model.*EfficientNMS_TRT") as err:
        api.prune(m, ratio=0.5)
    assert "/onnxruntime_src/" not in str(err.value)


def test_outputs_keep_an_ir_version_onnxruntime_loads():
    """The IR version cap is asked of onnxruntime: a table of releases had capped it at 10, below
    what opset 23+ models need."""
    import onnxruntime as ort

    ir = ort_max_ir_version()
    assert ir >= 10
    m = _fcn(np.float32, widths=(8,), size=4)
    m.ir_version = ir
    ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])


def test_a_float16_layernorm_is_pruned_through():
    """Linear -> LayerNorm(64) -> ReLU -> Linear in float16: the LayerNorm's channels were frozen
    (the masked reference was written for float32 only); its reference is now built in the
    input's type and proven, widened, in float32."""
    rng = np.random.default_rng(0)
    h16 = lambda *s: (rng.standard_normal(s) * 0.3).astype(np.float16)  # noqa: E731
    nodes = [helper.make_node("MatMul", ["x", "wa"], ["a"]), helper.make_node("Add", ["a", "ba"], ["a1"]),
             helper.make_node("LayerNormalization", ["a1", "g", "b"], ["n"], axis=-1),
             helper.make_node("Relu", ["n"], ["r"]), helper.make_node("MatMul", ["r", "wb"], ["y"])]
    inits = [numpy_helper.from_array(h16(16, 64), "wa"), numpy_helper.from_array(h16(64), "ba"),
             numpy_helper.from_array((1 + h16(64)).astype(np.float16), "g"), numpy_helper.from_array(h16(64), "b"),
             numpy_helper.from_array(h16(64, 8), "wb")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [2, 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [2, 8])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    res = api.prune(m, ratio=0.5)
    r = res.report
    assert r["norms_pruned"] and r["channels"]["removed"] == 32, r["unprunable"]
    assert r["verify"]["passed"] and r["verify"]["compared_in"].startswith("float32")


def test_half_precision_inside_a_function_is_widened():
    """has_half looked at the main graph only: a local function computing in float16 was compared
    in its own types."""
    from compressor.verify.upcast import upcast

    body = [helper.make_node("Cast", ["a"], ["h"], to=TensorProto.FLOAT16),
            helper.make_node("Cast", ["h"], ["b"], to=TensorProto.FLOAT)]
    fn = helper.make_function("local", "half_trip", ["a"], ["b"], body, [helper.make_opsetid("", 17)])
    g = helper.make_graph([helper.make_node("half_trip", ["x"], ["y"], domain="local")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("local", 1)],
                          functions=[fn])
    assert has_half(m)
    wide, _ = upcast(m, {})
    assert not has_half(wide) and wide.functions[0].node[0].attribute[0].i == TensorProto.FLOAT


def test_a_float16_model_with_int8_weights_and_a_float16_scale_verifies():
    """A DequantizeLinear with a float16 scale writes float16 values; widened to float32 it skipped
    that rounding, which the masked original's folded weight has: even the unpruned model failed
    at 2.3e-4 (found by random-graph fuzzing). Its output is now rounded through float16."""
    rng = np.random.default_rng(1)
    w0 = rng.standard_normal((16, 1, 3, 3)).astype(np.float32)
    scale = np.float16(np.abs(w0).max() / 127)
    q = np.clip(np.round(w0 / np.float32(scale)), -127, 127).astype(np.int8)
    inits = [numpy_helper.from_array(q, "w0_q"), numpy_helper.from_array(np.asarray(scale, np.float16), "w0_s"),
             numpy_helper.from_array(np.asarray(0, np.int8), "w0_zp"),
             numpy_helper.from_array((rng.standard_normal((16, 16, 3, 3)) * 0.1).astype(np.float16), "w1"),
             numpy_helper.from_array((rng.standard_normal((8, 16, 3, 3)) * 0.1).astype(np.float16), "w2")]
    nodes = [helper.make_node("DequantizeLinear", ["w0_q", "w0_s", "w0_zp"], ["w0"]),
             helper.make_node("Conv", ["x", "w0"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["a", "w1"], ["b"], pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["b", "w2"], ["y"], pads=[1, 1, 1, 1])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [1, 1, 9, 9])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [1, 8, 9, 9])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])
    m.ir_version = 10
    for ratio in (0.0, 0.5):
        res = api.prune(m, ratio=ratio)
        assert res.report["verify"]["passed"] and res.report["verify"]["max_rel_err"] < 1e-5, (ratio, res.report["verify"])
    assert any(n.op_type == "DequantizeLinear" for n in res.model.graph.node), "the weight stays int8"


def test_layers_removed_from_a_float16_model_are_allowed_its_rounding():
    """--drop-layers leaves computed biases (a removed branch's constant, absorbed), which a float16
    model rounds to 11 bits: the proof allows 1e-3 there, as for the exact transforms."""
    import json

    rng = np.random.default_rng(0)
    h = lambda n, *s: numpy_helper.from_array((rng.standard_normal(s) * 0.3).astype(np.float16), n)  # noqa: E731
    nodes = [helper.make_node("Conv", ["x", "w0", "b0"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["a", "w1", "b1"], ["c1"]), helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"]), helper.make_node("Add", ["a", "c2"], ["s"]),
             helper.make_node("GlobalAveragePool", ["s"], ["gp"]), helper.make_node("Flatten", ["gp"], ["f"]),
             helper.make_node("MatMul", ["f", "wf"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [1, 4])],
                          [h("w0", 8, 3, 3, 3), h("b0", 8), h("w1", 8, 8, 1, 1), h("b1", 8), h("w2", 8, 8, 1, 1),
                           h("b2", 8), h("wf", 8, 4)])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    plan = json.loads(api.prune(m, ratio=0.0).plan.to_json())
    for grp in plan["groups"]:
        if "w1:0:0" in grp["signature"]:
            grp["kept"] = []
    plan["options"]["drop_layers"] = True
    res = api.prune(m, plan_in=api.PruningPlan.from_dict(plan))
    assert res.report["removed_whole"]["groups"] == 1 and res.report["verify"]["passed"]
    assert res.report["verify"]["tolerance"] == 1e-3
