"""LayerNorm over the channel axis is pruned through, and channel counts read by Shape are guarded.

The oracle's reference for a pruned LayerNorm normalises over the kept channels only
(compressor/verify/norms.py); these tests check that reference against onnxruntime's own
LayerNormalization on the sliced input, that whole blocks prune and verify, that the report and
the CLI say what happened, and that ``--freeze-norms`` keeps such groups whole.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from compressor import api
from compressor.cli import main
from compressor.verify.norms import masked_layernorm
from tests.core.graphs import G


def convnext_block(opset: int = 17, c: int = 16) -> onnx.ModelProto:
    """Stem conv, then ConvNeXt's block: depthwise conv, channels-last LayerNorm, MLP, residual."""
    g = G(opset=opset)
    x = g.input("x", [1, 3, 8, 8])
    h = g.conv(x, 3, c, k=3)
    d = g.conv(h, c, c, k=7, group=c)
    t = g.op("Transpose", [d], perm=[0, 2, 3, 1])
    t = g.op("LayerNormalization", [t, g.rand(c, positive=True), g.rand(c)], axis=-1, epsilon=1e-6)
    t = g.op("MatMul", [t, g.rand(c, 4 * c)])
    t = g.op("Add", [t, g.rand(4 * c)])
    t = g.op("Gelu" if opset >= 20 else "Relu", [t])
    t = g.op("MatMul", [t, g.rand(4 * c, c)])
    t = g.op("Transpose", [t], perm=[0, 3, 1, 2])
    s = g.op("Add", [h, t])
    y = g.conv(s, c, 4, k=1)
    return g.model([y])


def _ln_scale_shapes(model: onnx.ModelProto) -> list[tuple[int, ...]]:
    inits = {t.name: tuple(t.dims) for t in model.graph.initializer}
    return [inits[n.input[1]] for n in model.graph.node if n.op_type == "LayerNormalization"]


@pytest.mark.parametrize("opset", [17, 20])
def test_convnext_block_prunes_through_layernorm_and_verifies(opset):
    res = api.prune(convnext_block(opset), ratio=0.5, importance="l2")
    r = res.report
    assert r["verify"]["passed"] and r["verify"]["max_rel_err"] <= 1e-5, r["verify"]
    assert r["norms_pruned"], "the LayerNorm's channels were pruned: the report must name it"
    assert _ln_scale_shapes(res.model) == [(8,)], "scale/bias must be sliced with the channels"
    assert r["macs_after"] < 0.5 * r["macs_before"]


def test_freeze_norms_keeps_the_normalised_group_whole():
    model = convnext_block()
    an = api.analyze(model, prune_norms=False)
    frozen = [g for g in an.groups if g.size == 16 and not g.prunable]
    assert frozen and any("LayerNormalization" in r for g in frozen for r in g.reasons)
    res = api.prune(model, ratio=0.5, prune_norms=False)
    assert res.report["norms_pruned"] == [] and _ln_scale_shapes(res.model) == [(16,)]
    assert res.report["verify"]["passed"]


def test_cli_reports_and_freezes_norms(tmp_path):
    src = tmp_path / "m.onnx"
    onnx.save(convnext_block(), src)
    runner = CliRunner()
    out = runner.invoke(main, ["prune", str(src), "-o", str(tmp_path / "a.onnx"), "--ratio", "0.5", "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["norms_pruned"]
    human = runner.invoke(main, ["prune", str(src), "-o", str(tmp_path / "b.onnx"), "--ratio", "0.5"])
    assert human.exit_code == 0 and "norms pruned through: 1" in human.output, human.output
    frozen = runner.invoke(main, ["prune", str(src), "-o", str(tmp_path / "c.onnx"), "--ratio", "0.5",
                                  "--freeze-norms", "--json"])
    assert frozen.exit_code == 0, frozen.output
    assert json.loads(frozen.stdout)["norms_pruned"] == []


@pytest.mark.parametrize("with_bias", [True, False])
def test_masked_layernorm_equals_layernorm_of_the_kept_channels(with_bias):
    rng = np.random.default_rng(3)
    c = 12
    x = rng.standard_normal((2, 5, c)).astype(np.float32) * 3 + 1
    scale = rng.standard_normal(c).astype(np.float32)
    bias = rng.standard_normal(c).astype(np.float32)
    mask = np.zeros(c, np.float32)
    kept = [0, 3, 4, 7, 10]
    mask[kept] = 1

    ins = ["x", "scale"] + (["bias"] if with_bias else [])
    ln = helper.make_node("LayerNormalization", ins, ["y"], axis=-1, epsilon=1e-3, name="ln")
    nodes, consts = masked_layernorm(ln, mask, "ref")
    inits = [numpy_helper.from_array(scale, "scale")] + ([numpy_helper.from_array(bias, "bias")] if with_bias else [])
    graph = helper.make_graph(nodes, "ref", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits + consts)
    ref = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    got = ort.InferenceSession(ref.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]

    k_ins = [helper.make_tensor_value_info("x", TensorProto.FLOAT, (2, 5, len(kept)))]
    k_inits = [numpy_helper.from_array(scale[kept], "scale")]
    if with_bias:
        k_inits.append(numpy_helper.from_array(bias[kept], "bias"))
    kg = helper.make_graph([ln], "kept", k_ins, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], k_inits)
    km = helper.make_model(kg, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    want = ort.InferenceSession(km.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": np.ascontiguousarray(x[..., kept])})[0]
    np.testing.assert_allclose(got[..., kept], want, rtol=1e-5, atol=1e-5)


def test_layernorm_over_several_axes_stays_a_barrier():
    g = G(opset=17)
    x = g.input("x", [1, 3, 8, 8])
    h = g.cbr(x, 3, 8)
    t = g.op("Transpose", [h], perm=[0, 2, 3, 1])
    t = g.op("LayerNormalization", [t, g.rand(8, 8), g.rand(8, 8)], axis=-2)
    t = g.op("Transpose", [t], perm=[0, 3, 1, 2])
    y = g.conv(t, 8, 2)
    an = api.analyze(g.model([y]))
    assert not any(grp.prunable for grp in an.groups if grp.size == 8)


# --- channel counts read by Shape --------------------------------------------------------------

def _shape_read_model(*read_axes: int, dynamic_batch: bool = False) -> onnx.ModelProto:
    """conv -> h; prod(Shape(h)[read_axes]) -> Cast -> Sqrt -> Reciprocal scales h (an attention-scale
    idiom: torchvision's Swin computes (C // heads) ** -0.5 from x.shape[-1] at run time)."""
    g = G(opset=17)
    x = g.input("x", ["N" if dynamic_batch else 1, 3, 8, 8])
    h = g.cbr(x, 3, 8)
    shp = g.op("Shape", [h])
    n = g.op("Gather", [shp, g.const(np.array(read_axes[0], dtype=np.int64))], axis=0)
    for ax in read_axes[1:]:
        n = g.op("Mul", [n, g.op("Gather", [shp, g.const(np.array(ax, dtype=np.int64))], axis=0)])
    f = g.op("Cast", [n], to=TensorProto.FLOAT)
    s = g.op("Reciprocal", [g.op("Sqrt", [f])])
    m = g.op("Mul", [h, s])
    y = g.conv(m, 8, 2)
    return g.model([y])


def test_channel_count_read_into_arithmetic_is_pinned_to_its_original_value():
    """Pruning would change the scale 1/sqrt(C) at run time; the original value is fed instead."""
    model = _shape_read_model(1)
    an = api.analyze(model)
    assert any(g.prunable for g in an.groups if g.size == 8)
    assert len(an.ctx.shape_pins) == 1 and float(an.ctx.shape_pins[0].value) == pytest.approx(8 ** -0.5)
    res = api.prune(model, ratio=0.5, importance="l1")
    assert res.report["groups"]["pruned"] >= 1 and res.report["verify"]["passed"], res.report["verify"]
    assert res.report["verify"]["max_rel_err"] <= 1e-5
    assert [p["input"] for p in res.report["shape_pins"]] == [1]
    assert res.report["shape_pins"][0]["value"] == pytest.approx(8 ** -0.5)
    assert api.inspect(model)["shape_pins"] == res.report["shape_pins"]
    mul = next(n for n in res.model.graph.node if n.op_type == "Mul")
    inits = {t.name: numpy_helper.to_array(t) for t in res.model.graph.initializer}
    assert float(inits[mul.input[1]]) == pytest.approx(8 ** -0.5), "the scale must stay the original model's"


def test_channel_count_mixed_with_a_dynamic_size_is_frozen_not_pinned():
    """C x H depends on the input's size too: a constant would be wrong at another input shape."""
    an = api.analyze(_shape_read_model(1, 2))
    grp = [g for g in an.groups if g.size == 8]
    assert grp and not any(g.prunable for g in grp)
    assert any("is read into Mul" in r for g in grp for r in g.reasons), [g.reasons for g in grp]
    assert not an.ctx.shape_pins
    assert api.prune(_shape_read_model(1, 2), ratio=0.5).report["verify"]["passed"]


def test_channel_count_read_into_a_graph_output_is_frozen():
    g = G(opset=17)
    x = g.input("x", [1, 3, 8, 8])
    h = g.cbr(x, 3, 8)
    y = g.conv(h, 8, 2)
    n = g.op("Shape", [h])
    an = api.analyze(g.model([y, n]))
    grp = [gr for gr in an.groups if gr.size == 8]
    assert grp and not any(gr.prunable for gr in grp)
    assert any("graph output" in r for gr in grp for r in gr.reasons)


def test_spatial_size_read_by_shape_keeps_channels_prunable():
    res = api.prune(_shape_read_model(3), ratio=0.5, importance="l1")
    assert res.report["groups"]["pruned"] >= 1, res.report["unprunable"]
    assert res.report["verify"]["passed"] and res.report["verify"]["max_rel_err"] <= 1e-5
    assert not api.analyze(_shape_read_model(3)).ctx.shape_pins, "a spatial size needs no pin"
