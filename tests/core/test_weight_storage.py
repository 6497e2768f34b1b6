"""The pruned model keeps the input's weight storage: int8 + DequantizeLinear and fp16/bf16 + Cast
weights come back encoded (sliced as the surgery sliced them), exactly, or stay float with a warning."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from compressor import api
from compressor.ir.fold import prepare
from tests.core.graphs import G


def chain(opset: int = 17) -> onnx.ModelProto:
    """conv3x3 -> relu -> conv3x3 -> relu -> conv1x1 -> global pool: two prunable groups."""
    g = G(opset=opset)
    x = g.input("x", [1, 3, 8, 8])
    h = g.op("Relu", [g.conv(x, 3, 8)])
    h = g.op("Relu", [g.conv(h, 8, 12)])
    return g.model([g.op("GlobalAveragePool", [g.conv(h, 12, 4, k=1)])])


def conv_weights(model: onnx.ModelProto) -> list[str]:
    return [n.input[1] for n in model.graph.node if n.op_type == "Conv"]


def store(model: onnx.ModelProto, how: str, names: list[str] | None = None) -> onnx.ModelProto:
    """``model`` with its conv weights stored encoded: "per-channel" (int8, one scale per output
    channel, axis 0), "per-tensor" (int8), "mixed" (the first weight per-channel, the rest per
    tensor), "fp16" or "bf16" (a Cast to float). The float values are the decoded ones."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    names = conv_weights(m) if names is None else names
    inits = {t.name: t for t in m.graph.initializer}
    nodes = []
    for k, name in enumerate(names):
        w = numpy_helper.to_array(inits[name])
        m.graph.initializer.remove(inits[name])
        kind = how if how != "mixed" else ("per-channel" if k == 0 else "per-tensor")
        if kind in ("fp16", "bf16"):
            dtype = TensorProto.FLOAT16 if kind == "fp16" else TensorProto.BFLOAT16
            m.graph.initializer.append(helper.make_tensor(f"{name}_h", dtype, w.shape, w.ravel().tolist()))
            nodes.append(helper.make_node("Cast", [f"{name}_h"], [name], to=TensorProto.FLOAT, name=f"cast_{name}"))
            continue
        if kind == "per-channel":
            s = (np.abs(w).reshape(len(w), -1).max(1) / 127).astype(np.float32)
            q = np.clip(np.round(w / s.reshape(-1, 1, 1, 1)), -127, 127).astype(np.int8)
            zp, attrs = np.zeros(len(w), np.int8), {"axis": 0}
        else:
            s = np.array(np.abs(w).max() / 127, np.float32)
            q = np.clip(np.round(w / s), -127, 127).astype(np.int8)
            zp, attrs = np.array(3, np.int8), {}
            q = np.clip(q.astype(np.int32) + 3, -128, 127).astype(np.int8)  # a non-zero zero point
        m.graph.initializer.extend([numpy_helper.from_array(q, f"{name}_q"), numpy_helper.from_array(s, f"{name}_s"),
                                    numpy_helper.from_array(zp, f"{name}_zp")])
        nodes.append(helper.make_node("DequantizeLinear", [f"{name}_q", f"{name}_s", f"{name}_zp"], [name],
                                      name=f"dq_{name}", **attrs))
    rest = list(m.graph.node)
    del m.graph.node[:]
    m.graph.node.extend(nodes + rest)
    onnx.checker.check_model(m)
    return m


def run(model: onnx.ModelProto, x: np.ndarray, optimize: bool = False) -> np.ndarray:
    so = ort.SessionOptions()
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def masked_original(model: onnx.ModelProto, plan: list[dict]) -> onnx.ModelProto:
    """The stored model with the removed input channels of each conv multiplied by zero (built here
    from the report's plan, independently of compressor's oracle)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    cut = {e["tensor"]: e for e in plan if e["axis"] == 1}
    nodes = []
    for n in m.graph.node:
        if n.op_type == "Conv" and n.input[1] in cut:
            e = cut[n.input[1]]
            shape = {t.name: list(t.dims) for t in m.graph.initializer}.get(f"{n.input[1]}_q")
            c = shape[1] if shape else None
            mask = np.zeros((1, c, 1, 1), np.float32)
            mask[0, e["kept"]] = 1
            m.graph.initializer.append(numpy_helper.from_array(mask, f"mask_{n.name}"))
            nodes.append(helper.make_node("Mul", [n.input[0], f"mask_{n.name}"], [f"masked_{n.name}"]))
            n.input[0] = f"masked_{n.name}"
        nodes.append(n)
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    return m


def dq_data(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Weight name -> the stored data its DequantizeLinear reads."""
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    return {n.output[0]: inits[n.input[0]] for n in model.graph.node
            if n.op_type == "DequantizeLinear" and n.input[0] in inits}


def test_int8_weights_are_written_int8_sliced_and_match_an_independent_masked_original(tmp_path):
    src = store(chain(), "mixed")  # w1 per channel (axis 0), the others per tensor with a zero point 3
    res = api.prune(src, ratio=0.5, output=tmp_path / "small.onnx")
    r, out = res.report, onnx.load(tmp_path / "small.onnx")
    assert r["verify"]["passed"] and r["channels"]["removed"] > 0
    floats = [t.name for t in out.graph.initializer if t.data_type == TensorProto.FLOAT and len(t.dims) == 4]
    assert floats == [], f"conv weights written as float: {floats}"
    stored, data = dq_data(src), dq_data(out)
    assert sorted(data) == sorted(stored), "every weight keeps its DequantizeLinear"
    inits = {t.name: numpy_helper.to_array(t) for t in out.graph.initializer}
    for name, q in data.items():
        assert q.dtype == np.int8, f"{name}: int8 data expected, got {q.dtype}"
        expected = stored[name]
        for e in (e for e in r["plan"] if e["tensor"] == name):
            expected = np.take(expected, e["kept"], axis=e["axis"])
        assert np.array_equal(q, expected), f"{name}: the stored int8 data sliced by the plan expected"
    w1 = conv_weights(src)[0]
    kept_out = next(e["kept"] for e in r["plan"] if e["tensor"] == w1 and e["axis"] == 0)
    scale = inits[next(n.input[1] for n in out.graph.node if n.op_type == "DequantizeLinear" and n.output[0] == w1)]
    assert scale.shape == (len(kept_out),), "the per-channel scale is sliced with the output channels"
    per_tensor = [inits[n.input[1]] for n in out.graph.node if n.op_type == "DequantizeLinear" and n.output[0] != w1]
    assert all(s.shape == () for s in per_tensor), "per-tensor scales stay scalars"
    x = np.random.default_rng(1).standard_normal((1, 3, 8, 8)).astype(np.float32)
    ref = run(masked_original(src, r["plan"]), x)
    assert np.allclose(run(out, x), ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
    assert (tmp_path / "small.onnx").stat().st_size < src.ByteSize(), "the pruned int8 model is smaller"
    assert any("stored encoding" in line for line in r["load_notes"])
    assert "warnings" not in r


def qdq_model() -> onnx.ModelProto:
    """x -> Q/DQ -> conv(int8 weight) -> Q/DQ -> relu -> conv(int8 weight) -> y: the activation
    QuantizeLinear nodes freeze every group (no rule), so nothing is prunable."""
    g = G(opset=17)
    x = g.input("x", [1, 3, 8, 8])

    def qdq(t: str) -> str:
        s, zp = g.const(np.array(0.05, np.float32), "s"), g.const(np.array(0, np.int8), "zp")
        return g.op("DequantizeLinear", [g.op("QuantizeLinear", [t, s, zp]), s, zp])

    h = g.op("Relu", [qdq(g.conv(qdq(x), 3, 16))])
    return store(g.model([g.conv(qdq(h), 16, 8)]), "per-channel")


def test_a_qdq_model_with_nothing_prunable_is_written_with_its_int8_weights():
    src = qdq_model()
    res = api.prune(src, ratio=0.5)
    out = res.model
    assert res.report["channels"]["removed"] == 0 and res.report["verify"]["passed"]
    data = dq_data(out)
    assert all(w in data and data[w].dtype == np.int8 for w in conv_weights(src)), \
        "the weights keep their int8 DequantizeLinear"
    assert out.ByteSize() < 1.2 * src.ByteSize(), f"{out.ByteSize()} bytes written for a {src.ByteSize()}-byte input"
    x = np.random.default_rng(2).standard_normal((1, 3, 8, 8)).astype(np.float32)
    # under onnxruntime's default optimisations too (int8 kernels), the output computes what the input does
    assert np.array_equal(run(out, x, optimize=True), run(src, x, optimize=True))


@pytest.mark.parametrize("how,dtype", [("fp16", TensorProto.FLOAT16), ("bf16", TensorProto.BFLOAT16)])
def test_fp16_and_bf16_stored_weights_stay_so(how, dtype):
    src = store(chain(), how)
    res = api.prune(src, ratio=0.5)
    out = res.model
    assert res.report["verify"]["passed"]
    inits = {t.name: t for t in out.graph.initializer}
    casts = {n.output[0]: inits[n.input[0]] for n in out.graph.node if n.op_type == "Cast"}
    assert sorted(casts) == sorted(conv_weights(src))
    assert all(t.data_type == dtype for t in casts.values()), "the weights keep their narrow float type"
    assert [t.name for t in out.graph.initializer if len(t.dims) == 4 and t.data_type == TensorProto.FLOAT] == []


def test_a_blocked_dequantize_stays_float_with_a_warning_naming_it():
    src = chain(opset=21)
    w = conv_weights(src)[1]  # [12, 8, 3, 3], blocks of 4 along the input channels (axis 1)
    inits = {t.name: t for t in src.graph.initializer}
    arr = numpy_helper.to_array(inits[w])
    s = (np.abs(arr).reshape(12, 2, 4, 3, 3).max(axis=2) / 127).astype(np.float32) + 1e-3
    q = np.clip(np.round(arr / np.repeat(s, 4, axis=1)), -127, 127).astype(np.int8)
    src.graph.initializer.remove(inits[w])
    src.graph.initializer.extend([numpy_helper.from_array(q, "wq"), numpy_helper.from_array(s, "ws")])
    src.graph.node.insert(0, helper.make_node("DequantizeLinear", ["wq", "ws"], [w], axis=1, block_size=4))
    onnx.checker.check_model(src)
    res = api.prune(src, ratio=0.5)
    r = res.report
    assert r["verify"]["passed"]
    assert any(w in line and "block_size" in line for line in r.get("warnings", [])), r.get("warnings")
    assert w in {t.name for t in res.model.graph.initializer}, "the weight stays a float initializer"


def test_an_encoded_weight_folded_with_a_transpose_after_it_is_reported_float():
    src = chain()
    w = conv_weights(src)[1]
    inits = {t.name: t for t in src.graph.initializer}
    arr = numpy_helper.to_array(inits[w])
    s = np.array(np.abs(arr).max() / 127, np.float32)
    q = np.clip(np.round(arr / s), -127, 127).astype(np.int8).transpose(1, 0, 2, 3)
    src.graph.initializer.remove(inits[w])
    src.graph.initializer.extend([numpy_helper.from_array(np.ascontiguousarray(q), "wq"),
                                  numpy_helper.from_array(s, "ws")])
    src.graph.node.insert(0, helper.make_node("Transpose", ["wt"], [w], perm=[1, 0, 2, 3]))
    src.graph.node.insert(0, helper.make_node("DequantizeLinear", ["wq", "ws"], ["wt"]))
    onnx.checker.check_model(src)
    r = api.prune(src, ratio=0.5).report
    assert r["verify"]["passed"]
    assert any("wt" in line and "float" in line for line in r.get("warnings", [])), r.get("warnings")


def test_a_weight_an_exact_transform_changed_stays_float_with_a_warning():
    # conv1's filters 0 and 1 identical: --merge-identical sums conv2's input slices 0 and 1
    model = chain()
    inits = {t.name: t for t in model.graph.initializer}
    w1, b1 = model.graph.node[0].input[1:3]
    for name in (w1, b1):
        arr = numpy_helper.to_array(inits[name]).copy()
        arr[1] = arr[0]
        inits[name].CopyFrom(numpy_helper.from_array(arr, name))
    src = store(model, "per-channel")
    res = api.prune(src, ratio=0.0, merge_identical=0.0)
    r = res.report
    assert r["transforms"][0]["channels_removed"] >= 1 and r["verify"]["passed"]
    w2 = conv_weights(src)[1]
    assert any(w2 in line and "transform" in line for line in r.get("warnings", [])), r.get("warnings")
    assert dq_data(res.model)[conv_weights(src)[2]].dtype == np.int8, "a weight the transform left is int8 again"


def test_weights_of_layers_removed_whole_go_without_a_warning():
    g = G()
    x = g.input("x", [1, 3, 8, 8])
    h = g.op("Relu", [g.conv(x, 3, 8)])
    for _ in range(3):
        b = g.conv(g.op("Relu", [g.conv(h, 8, 6)]), 6, 8)
        h = g.op("Relu", [g.op("Add", [h, b])])
    p = g.op("Flatten", [g.op("GlobalAveragePool", [h])])
    src = store(g.model([g.op("Gemm", [p, g.rand(5, 8), g.rand(5, base="b")], transB=1)]), "per-channel")
    res = api.prune(src, target_macs=0.05, sensitivity=True, drop_layers=True)
    r = res.report
    assert r["removed_whole"]["groups"] >= 1 and r["verify"]["passed"]
    assert not any("float" in line for line in r.get("warnings", [])), r.get("warnings")
    data = dq_data(res.model)
    assert data and all(q.dtype == np.int8 for q in data.values())
    assert [t.name for t in res.model.graph.initializer if len(t.dims) == 4 and t.data_type == TensorProto.FLOAT] == []


def sparse_model() -> onnx.ModelProto:
    g = G()
    x = g.input("x", [1, 3, 8, 8])
    h = g.op("Relu", [g.conv(x, 3, 8)])
    m = g.model([g.conv(h, 8, 4)])
    w = conv_weights(m)[1]
    t = next(t for t in m.graph.initializer if t.name == w)
    arr = numpy_helper.to_array(t).copy()
    arr[np.abs(arr) < 0.8] = 0
    flat = arr.ravel()
    idx = np.nonzero(flat)[0]
    m.graph.initializer.remove(t)
    m.graph.sparse_initializer.append(helper.make_sparse_tensor(
        numpy_helper.from_array(flat[idx], w), numpy_helper.from_array(idx.astype(np.int64), f"{w}_idx"),
        list(arr.shape)))
    onnx.checker.check_model(m)
    return m


def test_prepare_makes_sparse_initializers_dense_with_a_warning():
    m = sparse_model()
    prepared, notes = prepare(m)
    w = conv_weights(m)[1]
    dense = {t.name: numpy_helper.to_array(t) for t in prepared.graph.initializer}[w]
    sp = m.graph.sparse_initializer[0]
    expected = np.zeros(dense.size, np.float32)
    expected[numpy_helper.to_array(sp.indices)] = numpy_helper.to_array(sp.values)
    assert np.array_equal(dense.ravel(), expected) and not prepared.graph.sparse_initializer
    assert any("sparse" in line for line in notes)
    assert len(m.graph.sparse_initializer) == 1, "the caller's model is not edited"


def test_a_sparse_initializer_model_prunes():
    res = api.prune(sparse_model(), ratio=0.5)
    assert res.report["verify"]["passed"] and res.report["channels"]["removed"] > 0
    assert any("sparse" in line for line in res.report["warnings"])
