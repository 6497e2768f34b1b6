"""Quantized and onnxruntime-optimised models: their layers count in MACs and parameters as their
float twins do, every node without a channel rule on the data path is reported as a barrier, and
the warning that nothing is prunable points only at lists that say why."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto as T
from onnx import helper, numpy_helper

from compressor import api

MS, NCHWC = "com.microsoft", "com.microsoft.nchwc"
RNG = np.random.default_rng(0)


def _model(nodes, inputs, outputs, inits, domains=(MS,)) -> onnx.ModelProto:
    """A checked model; ``inputs``/``outputs``: (name, elem type, shape)."""
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(*i) for i in inputs],
                          [helper.make_tensor_value_info(*o) for o in outputs],
                          [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]
                          + [helper.make_opsetid(d, 1) for d in domains])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def _runs(m: onnx.ModelProto) -> None:
    """The test model is one onnxruntime runs (so it is the model that op really is)."""
    ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])


def _f32(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def _i8(*shape):
    return RNG.integers(-100, 100, shape).astype(np.int8)


def _u8(*shape):
    return RNG.integers(0, 255, shape).astype(np.uint8)


def _scales(**names):
    return {k: np.float32(v) for k, v in names.items()}


# ---- float twins and their quantized / fused forms, with the number of float scale elements ------------
X4, Y4, W4 = [1, 8, 6, 6], [1, 16, 6, 6], (16, 8, 3, 3)
CONV = {"pads": [1, 1, 1, 1], "kernel_shape": [3, 3]}


def conv_float(bias: bool = True):
    inits = {"w": _f32(*W4), **({"b": _f32(16)} if bias else {})}
    return _model([helper.make_node("Conv", ["x", *inits], ["y"], **CONV)],
                  [("x", T.FLOAT, X4)], [("y", T.FLOAT, Y4)], inits), 0


def conv_fused():
    n = helper.make_node("FusedConv", ["x", "w", "b"], ["y"], domain=MS, activation="Relu", **CONV)
    return _model([n], [("x", T.FLOAT, X4)], [("y", T.FLOAT, Y4)], {"w": _f32(*W4), "b": _f32(16)}), 0


def conv_integer():
    n = helper.make_node("ConvInteger", ["x", "w"], ["y"], **CONV)
    return _model([n], [("x", T.UINT8, X4)], [("y", T.INT32, Y4)], {"w": _u8(*W4)}), 0


def conv_qlinear():
    ins = ["x", "x_scale", "x_zp", "w", "w_scale", "w_zp", "y_scale", "y_zp", "b"]
    inits = {**_scales(x_scale=0.1, w_scale=0.02, y_scale=0.3), "x_zp": np.uint8(128), "w_zp": np.int8(0),
             "y_zp": np.uint8(128), "w": _i8(*W4), "b": RNG.integers(-50, 50, 16).astype(np.int32)}
    n = helper.make_node("QLinearConv", ins, ["y"], **CONV)
    return _model([n], [("x", T.UINT8, X4)], [("y", T.UINT8, Y4)], inits), 3


def gemm_float():
    return _model([helper.make_node("Gemm", ["a", "w", "b"], ["y"], transB=1)],
                  [("a", T.FLOAT, [4, 8])], [("y", T.FLOAT, [4, 16])], {"w": _f32(16, 8), "b": _f32(16)}), 0


def gemm_fused():
    n = helper.make_node("FusedGemm", ["a", "w", "b"], ["y"], domain=MS, transB=1, activation="Relu")
    return _model([n], [("a", T.FLOAT, [4, 8])], [("y", T.FLOAT, [4, 16])], {"w": _f32(16, 8), "b": _f32(16)}), 0


def gemm_q():
    ins = ["a", "a_scale", "a_zp", "w", "w_scale", "w_zp", "b", "y_scale", "y_zp"]
    inits = {**_scales(a_scale=0.1, w_scale=0.02, y_scale=0.3), "a_zp": np.uint8(128), "w_zp": np.int8(0),
             "y_zp": np.uint8(128), "w": _i8(16, 8), "b": RNG.integers(-50, 50, 16).astype(np.int32)}
    n = helper.make_node("QGemm", ins, ["y"], domain=MS, transB=1)
    return _model([n], [("a", T.UINT8, [4, 8])], [("y", T.UINT8, [4, 16])], inits), 3


A3, K, N = [2, 4, 32], 32, 16


def matmul_float():
    return _model([helper.make_node("MatMul", ["a", "w"], ["y"])],
                  [("a", T.FLOAT, A3)], [("y", T.FLOAT, [2, 4, N])], {"w": _f32(K, N)}), 0


def matmul_fused():
    n = helper.make_node("FusedMatMul", ["a", "w"], ["y"], domain=MS, alpha=1.0)
    return _model([n], [("a", T.FLOAT, A3)], [("y", T.FLOAT, [2, 4, N])], {"w": _f32(K, N)}), 0


def matmul_integer():
    n = helper.make_node("MatMulInteger", ["a", "w"], ["y"])
    return _model([n], [("a", T.UINT8, A3)], [("y", T.INT32, [2, 4, N])], {"w": _u8(K, N)}), 0


def matmul_qlinear():
    ins = ["a", "a_scale", "a_zp", "w", "w_scale", "w_zp", "y_scale", "y_zp"]
    inits = {**_scales(a_scale=0.1, w_scale=0.02, y_scale=0.3), "a_zp": np.uint8(128), "w_zp": np.uint8(128),
             "y_zp": np.uint8(128), "w": _u8(K, N)}
    n = helper.make_node("QLinearMatMul", ins, ["y"])
    return _model([n], [("a", T.UINT8, A3)], [("y", T.UINT8, [2, 4, N])], inits), 3


def matmul_nbits():
    """4-bit weights in one block of 32 per output column: B [N, 1, 16 bytes], one scale per column."""
    n = helper.make_node("MatMulNBits", ["a", "w", "w_scale"], ["y"], domain=MS, K=K, N=N, bits=4, block_size=32)
    inits = {"w": _u8(N, 1, 16), "w_scale": np.full(N, 0.01, np.float32)}
    return _model([n], [("a", T.FLOAT, A3)], [("y", T.FLOAT, [2, 4, N])], inits), N


TWINS = {
    "FusedConv": (conv_float, conv_fused), "ConvInteger": (lambda: conv_float(bias=False), conv_integer),
    "QLinearConv": (conv_float, conv_qlinear),
    "FusedGemm": (gemm_float, gemm_fused), "QGemm": (gemm_float, gemm_q),
    "FusedMatMul": (matmul_float, matmul_fused), "MatMulInteger": (matmul_float, matmul_integer),
    "QLinearMatMul": (matmul_float, matmul_qlinear), "MatMulNBits": (matmul_float, matmul_nbits),
}


@pytest.mark.parametrize("op", sorted(TWINS))
def test_quantized_and_fused_layers_count_as_their_float_twin(op):
    make_float, make_other = TWINS[op]
    (twin, _), (other, scale_elems) = make_float(), make_other()
    _runs(other)
    want, got = api.inspect(twin), api.inspect(other)
    assert want["macs"] > 0
    assert got["macs"] == want["macs"], f"{op} must count the MACs of its float twin: {got['macs']} vs {want['macs']}"
    assert got["params"] - scale_elems == want["params"], (
        f"{op}'s (integer) weights and bias must count as the float twin's parameters: {got['params']} - "
        f"{scale_elems} scale elements vs {want['params']}")


def test_nchwc_conv_counts_as_a_conv():
    """onnxruntime's NCHWc Conv (ORT_ENABLE_ALL) on a graph input, its output reordered back to NCHW."""
    x, y = [1, 3, 8, 8], [1, 16, 8, 8]
    twin = _model([helper.make_node("Conv", ["x", "w", "b"], ["y"], **CONV)], [("x", T.FLOAT, x)],
                  [("y", T.FLOAT, y)], {"w": _f32(16, 3, 3, 3), "b": _f32(16)})
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["t"], domain=NCHWC, **CONV),
             helper.make_node("ReorderOutput", ["t"], ["y"], domain=NCHWC, channels=16)]
    other = _model(nodes, [("x", T.FLOAT, x)], [("y", T.FLOAT, y)], {"w": _f32(16, 3, 3, 3), "b": _f32(16)},
                   domains=(NCHWC,))
    try:
        _runs(other)
    except Exception as exc:  # MLAS has no NCHWc kernels on this CPU
        pytest.skip(f"onnxruntime cannot run an NCHWc Conv here: {exc}")
    got, want = api.inspect(other), api.inspect(twin)
    assert got["macs"] == want["macs"] > 0, f"NCHWc Conv MACs {got['macs']} vs Conv {want['macs']}"
    assert {b["op_type"] for b in got["barriers"]} == {"Conv", "ReorderOutput"}, got["barriers"]
    assert all("onnxruntime-optimised" in b["reason"] for b in got["barriers"]), got["barriers"]


def test_bfloat16_weights_are_parameters():
    nodes = [helper.make_node("Cast", ["x"], ["xb"], to=T.BFLOAT16), helper.make_node("MatMul", ["xb", "w"], ["yb"]),
             helper.make_node("Cast", ["yb"], ["y"], to=T.FLOAT)]
    m = _model(nodes, [("x", T.FLOAT, [4, 16])], [("y", T.FLOAT, [4, 32])],
               {"w": _f32(16, 32).astype(ml_dtypes.bfloat16)}, domains=())
    info = api.inspect(m)
    assert info["params"] == 16 * 32, f"a bfloat16 weight's 512 elements are parameters, got {info['params']}"
    assert info["macs"] == 4 * 16 * 32


# ---- barriers ------------------------------------------------------------------------------------------


def test_rule_less_ops_fed_by_the_graph_input_and_by_each_other_are_barriers():
    """FusedConv -> FusedConv -> Conv: both fused convs are reported though neither touches a tracked
    group; a rule-less op computing only from the input's shape is not on the data path."""
    nodes = [helper.make_node("FusedConv", ["x", "w1", "b1"], ["a"], name="fc1", domain=MS, activation="Relu", **CONV),
             helper.make_node("FusedConv", ["a", "w2", "b2"], ["c"], name="fc2", domain=MS, activation="Relu", **CONV),
             helper.make_node("Conv", ["c", "w3"], ["y"], name="conv", **CONV),
             helper.make_node("Shape", ["x"], ["s"], name="shape"),
             helper.make_node("CumSum", ["s", "zero"], ["cs"], name="cumsum")]
    m = _model(nodes, [("x", T.FLOAT, [1, 3, 6, 6])], [("y", T.FLOAT, [1, 4, 6, 6]), ("cs", T.INT64, [4])],
               {"w1": _f32(8, 3, 3, 3), "b1": _f32(8), "w2": _f32(8, 8, 3, 3), "b2": _f32(8), "w3": _f32(4, 8, 3, 3),
                "zero": np.int64(0)})
    _runs(m)
    info = api.inspect(m)
    listed = [(b["node"], b["op_type"]) for b in info["barriers"]]
    assert listed == [("fc1", "FusedConv"), ("fc2", "FusedConv")], f"expected the two fused convs only: {listed}"
    assert all(b["reason"] == "no channel rule for com.microsoft::FusedConv (onnxruntime-optimised op: prune the "
               "model before onnxruntime's optimisation)" for b in info["barriers"]), info["barriers"]


def _qlinear_chain() -> onnx.ModelProto:
    """x -> QuantizeLinear -> QLinearConv -> QLinearConv -> DequantizeLinear: no float layer at all."""
    q = ["s", "zp"]
    nodes = [helper.make_node("QuantizeLinear", ["x", *q], ["xq"]),
             helper.make_node("QLinearConv", ["xq", *q, "w1", "ws", "wzp", *q], ["h"], **CONV),
             helper.make_node("QLinearConv", ["h", *q, "w2", "ws", "wzp", *q], ["yq"], **CONV),
             helper.make_node("DequantizeLinear", ["yq", *q], ["y"])]
    inits = {"s": np.float32(0.1), "zp": np.uint8(128), "ws": np.float32(0.02), "wzp": np.int8(0),
             "w1": _i8(8, 8, 3, 3), "w2": _i8(16, 8, 3, 3)}
    return _model(nodes, [("x", T.FLOAT, X4)], [("y", T.FLOAT, Y4)], inits, domains=())


def test_a_quantized_model_lists_every_quantized_op_and_the_warning_points_at_them():
    m = _qlinear_chain()
    _runs(m)
    res = api.prune(m, ratio=0.5)
    ops = [b["op_type"] for b in res.report["barriers"]]
    assert ops == ["QuantizeLinear", "QLinearConv", "QLinearConv", "DequantizeLinear"], ops
    assert all("quantized op: prune the float model, then quantize" in b["reason"] for b in res.report["barriers"])
    assert res.report["macs_before"] == 6 * 6 * 8 * 72 + 6 * 6 * 16 * 72, res.report["macs_before"]
    warning = next(w for w in res.report["warnings"] if "prunable" in w)
    assert "`barriers`" in warning and "`unprunable`" not in warning, (
        f"the warning must point at the non-empty list only (unprunable: {res.report['unprunable']}): {warning}")


def test_warning_without_any_group_or_barrier_points_at_no_list():
    m = _model([helper.make_node("Relu", ["x"], ["y"])], [("x", T.FLOAT, [1, 4])], [("y", T.FLOAT, [1, 4])], {},
               domains=())
    res = api.prune(m, ratio=0.5)
    assert not res.report["barriers"] and not res.report["unprunable"]
    warning = next(w for w in res.report["warnings"] if "prunable" in w)
    assert "say why" not in warning and "says why" not in warning, f"both lists are empty, yet: {warning}"
