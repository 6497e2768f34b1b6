"""Per-rule tests: tiny graphs pruned, each proven by the masked-original oracle.

Property checked everywhere: the pruned model reproduces the masked original (relative error
<= 1e-5) and the channel groups the rule should create are prunable and actually pruned.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from compressor import api
from tests.core.graphs import G


def prune_ok(model, ratio=0.5, min_pruned=1, **kw):
    res = api.prune(model, ratio=ratio, importance=kw.pop("importance", "random"), **kw)
    v = res.report["verify"]
    assert v["passed"] and v["max_rel_err"] <= 1e-5, f"oracle failed: {v}"
    assert res.report["groups"]["pruned"] >= min_pruned, f"expected >= {min_pruned} pruned groups: {res.report['groups']}"
    return res


def shapes(model):
    return {t.name: tuple(t.dims) for t in model.graph.initializer}


def test_conv_bn_relu_chain_slices_producer_bn_and_consumer():
    g = G()
    x = g.input("x", [1, 3, 8, 8])
    h = g.cbr(x, 3, 8)
    y = g.conv(h, 8, 4)
    res = prune_ok(g.model([y]))
    s = shapes(res.model)
    convs = [n for n in res.model.graph.node if n.op_type == "Conv"]
    bn = next(n for n in res.model.graph.node if n.op_type == "BatchNormalization")
    assert s[convs[0].input[1]] == (4, 3, 3, 3), "producer conv should keep 4 of 8 filters"
    assert s[convs[1].input[1]][1] == 4, "consumer conv should keep 4 input channels"
    assert all(s[n] == (4,) for n in bn.input[1:]), "BN params must be sliced with the conv"


def test_residual_add_unions_both_branches():
    g = G()
    x = g.input("x", [1, 3, 8, 8])
    a = g.cbr(x, 3, 8)
    b = g.cbr(a, 8, 8)
    s = g.op("Add", [a, b])
    y = g.conv(s, 8, 2)
    an = api.analyze(g.model([y]))
    pr = an.prunable
    convs = [n.input[1] for n in g.nodes if n.op_type == "Conv"]
    groups_with_both = [grp for grp in pr if {convs[0], convs[1]} <= {m.tensor for m in grp.members}]
    assert groups_with_both, "the residual add must couple the two convs' output channels into one group"
    prune_ok(g.model([y]))


def test_depthwise_conv_passes_channels_and_rewrites_group():
    g = G()
    x = g.input("x", [1, 3, 8, 8])
    h = g.cbr(x, 3, 8)
    d = g.op("Relu", [g.conv(h, 8, 8, group=8)])
    y = g.conv(d, 8, 4, k=1)
    res = prune_ok(g.model([y]))
    conv = [n for n in res.model.graph.node if n.op_type == "Conv"][1]
    group = next(a.i for a in conv.attribute if a.name == "group")
    assert group == 4, f"depthwise group attribute should follow the channels: {group}"


def test_grouped_conv_keeps_group_count_and_prunes_every_group_alike():
    g = G()
    x = g.input("x", [1, 4, 8, 8])
    h = g.cbr(x, 4, 8)
    y = g.conv(g.conv(h, 8, 8, group=2), 8, 2, k=1)
    res = prune_ok(g.model([y]))
    conv = [n for n in res.model.graph.node if n.op_type == "Conv"][1]
    assert next(a.i for a in conv.attribute if a.name == "group") == 2


def test_concat_offsets_map_to_consumer_slices():
    g = G()
    x = g.input("x", [1, 3, 8, 8])
    a = g.cbr(x, 3, 6)
    b = g.cbr(x, 3, 10)
    c = g.op("Concat", [a, b], axis=1)
    y = g.conv(c, 16, 2)
    res = prune_ok(g.model([y]), min_pruned=2)
    w = [n for n in res.model.graph.node if n.op_type == "Conv"][-1].input[1]
    assert shapes(res.model)[w][1] == 3 + 5


@pytest.mark.parametrize("opset", [11, 13, 18])
def test_split_halves_prune_independently(opset):
    g = G(opset=opset)
    x = g.input("x", [1, 3, 8, 8])
    h = g.cbr(x, 3, 8)
    if opset >= 18:
        a, b = g.op("Split", [h], n_out=2, axis=1, num_outputs=2)
    elif opset >= 13:
        a, b = g.op("Split", [h, g.const(np.array([4, 4], dtype=np.int64))], n_out=2, axis=1)
    else:
        a, b = g.op("Split", [h], n_out=2, axis=1, split=[4, 4])
    y = g.op("Add", [g.conv(a, 4, 2), g.conv(b, 4, 2)])
    an = api.analyze(g.model([y]))
    sizes = sorted(grp.size for grp in an.prunable)
    assert sizes.count(4) >= 2, f"the split must cut the conv's group into two of 4: {sizes}"
    prune_ok(g.model([y]), min_pruned=2)


@pytest.mark.parametrize("opset", [9, 13])
def test_slice_on_channel_axis(opset):
    g = G(opset=opset)
    x = g.input("x", [1, 3, 8, 8])
    h = g.cbr(x, 3, 8)
    if opset < 10:
        s = g.op("Slice", [h], starts=[2], ends=[8], axes=[1])
    else:
        i64 = lambda v: g.const(np.array(v, dtype=np.int64))  # noqa: E731
        s = g.op("Slice", [h, i64([2]), i64([8]), i64([1])])
    y = g.conv(s, 6, 2)
    prune_ok(g.model([y]))


@pytest.mark.parametrize("trans_b", [0, 1])
def test_flatten_gemm_each_channel_owns_hw_columns(trans_b):
    g = G()
    x = g.input("x", [1, 3, 4, 4])
    h = g.cbr(x, 3, 8)
    f = g.op("Flatten", [h], axis=1)
    w = g.rand(*((16, 128) if trans_b else (128, 16)))
    z = g.op("Relu", [g.op("Gemm", [f, w, g.rand(16)], transB=trans_b)])
    y = g.op("Gemm", [z, g.rand(10, 16), g.rand(10)], transB=1)
    res = prune_ok(g.model([y]), min_pruned=2)
    assert res.report["macs_after"] < res.report["macs_before"]


def test_reshape_matmul_mlp_hidden_units():
    g = G()
    x = g.input("x", [2, 5, 16])
    h = g.op("MatMul", [x, g.rand(16, 32)])
    h = g.op("Gelu", [g.op("Add", [h, g.rand(32)])]) if g.opset >= 20 else g.op("Relu", [g.op("Add", [h, g.rand(32)])])
    y = g.op("MatMul", [h, g.rand(32, 16)])
    res = prune_ok(g.model([y]))
    assert res.report["macs_after"] < res.report["macs_before"]


def test_se_block_couples_scale_with_features():
    g = G()
    x = g.input("x", [1, 3, 8, 8])
    h = g.cbr(x, 3, 8)
    s = g.op("GlobalAveragePool", [h])
    s = g.op("Relu", [g.conv(s, 8, 4, k=1)])
    s = g.op("HardSigmoid", [g.conv(s, 4, 8, k=1)])
    m = g.op("Mul", [h, s])
    y = g.conv(m, 8, 2)
    prune_ok(g.model([y]), min_pruned=2)


def test_per_channel_constants_prelu_and_mul_are_sliced():
    g = G()
    x = g.input("x", [1, 3, 8, 8])
    h = g.conv(x, 3, 8)
    h = g.op("PRelu", [h, g.rand(8, 1, 1)])
    h = g.op("Mul", [h, g.rand(1, 8, 1, 1)])
    h = g.op("Add", [h, g.rand(8, 1, 1)])
    y = g.conv(h, 8, 2)
    res = prune_ok(g.model([y]))
    assert sorted(v for v in shapes(res.model).values() if len(v) == 3 and v[1:] == (1, 1)) == [(4, 1, 1), (4, 1, 1)]


def test_conv_transpose_producer_and_consumer():
    g = G()
    x = g.input("x", [1, 3, 4, 4])
    h = g.cbr(x, 3, 8)
    u = g.op("ConvTranspose", [h, g.rand(8, 6, 2, 2), g.rand(6)], kernel_shape=[2, 2], strides=[2, 2])
    y = g.conv(g.op("Relu", [u]), 6, 2)
    prune_ok(g.model([y]), min_pruned=2)


def test_constant_node_weights_paddle_style():
    g = G()
    x = g.input("x", [1, 3, 8, 8])
    w = g.op("Constant", [], value=numpy_helper.from_array(g.rng.standard_normal((8, 3, 3, 3)).astype(np.float32)))
    h = g.op("HardSwish", [g.op("Conv", [x, w], kernel_shape=[3, 3], pads=[1, 1, 1, 1])])
    w2 = g.op("Constant", [], value=numpy_helper.from_array(g.rng.standard_normal((2, 8, 1, 1)).astype(np.float32)))
    y = g.op("Conv", [h, w2], kernel_shape=[1, 1])
    res = prune_ok(g.model([y]))
    consts = [n for n in res.model.graph.node if n.op_type == "Constant"]
    dims = [tuple(a.t.dims) for n in consts for a in n.attribute]
    assert (4, 3, 3, 3) in dims and (2, 4, 1, 1) in dims, dims
    names = {e["tensor"] for e in res.report["plan"]}
    assert names == {w, w2}, f"the plan must name the Constant outputs: {names}"


def test_spatial_ops_keep_channels():
    g = G()
    x = g.input("x", [1, 3, 8, 8])
    h = g.cbr(x, 3, 8)
    h = g.op("InstanceNormalization", [h, g.rand(8), g.rand(8)])
    h = g.op("MaxPool", [h], kernel_shape=[2, 2], strides=[2, 2])
    h = g.op("Pad", [h, g.const(np.array([0, 0, 1, 1, 0, 0, 1, 1], dtype=np.int64))])
    h = g.op("Resize", [h, "", g.const(np.array([1, 1, 2, 2], dtype=np.float32))], mode="nearest")
    r = g.op("ReduceMean", [h, g.const(np.array([2, 3], dtype=np.int64))], keepdims=1) if g.opset >= 18 else \
        g.op("ReduceMean", [h], axes=[2, 3], keepdims=1)
    y = g.conv(r, 8, 2, k=1)
    prune_ok(g.model([y]))


def test_transpose_nhwc_graph():
    g = G()
    x = g.input("x", [1, 8, 8, 3])
    h = g.op("Transpose", [x], perm=[0, 3, 1, 2])
    h = g.cbr(h, 3, 8)
    t = g.op("Transpose", [h], perm=[0, 2, 3, 1])
    t = g.op("Add", [t, g.rand(8)])
    t = g.op("Transpose", [t], perm=[0, 3, 1, 2])
    y = g.conv(t, 8, 2)
    prune_ok(g.model([y]))


def test_graph_output_groups_are_frozen():
    g = G()
    x = g.input("x", [1, 3, 8, 8])
    y = g.cbr(x, 3, 8)
    an = api.analyze(g.model([y]))
    assert not an.prunable, "a group that reaches a graph output must not be prunable"
    assert any("graph output" in r for grp in an.groups for r in grp.reasons)


@pytest.mark.parametrize("norm", ["LayerNormalization"])
def test_channel_mixing_normalisations_are_barriers(norm):
    """(A Softmax or LRN over the channels, or a GroupNorm with one group, is pruned around instead:
    tests/core/test_widen.py, tests/core/test_groupnorm.py.)"""
    g = G(opset=21)
    x = g.input("x", [1, 3, 8, 8])
    h = g.cbr(x, 3, 8)
    if norm == "LayerNormalization":
        t = g.op("Transpose", [h], perm=[0, 2, 3, 1])
        t = g.op("LayerNormalization", [t, g.rand(8), g.rand(8)], axis=-1)
        n = g.op("Transpose", [t], perm=[0, 3, 1, 2])
    y = g.conv(n, 8, 2)
    # a channels-last LayerNorm prunes through by default (tests/core/test_layernorm.py); frozen on request
    kw = {"prune_norms": False} if norm == "LayerNormalization" else {}
    an = api.analyze(g.model([y]), **kw)
    frozen = [grp for grp in an.groups if grp.size == 8]
    assert frozen and not any(grp.prunable for grp in frozen), f"{norm} over channels must freeze the group"
    assert any(norm in r for grp in frozen for r in grp.reasons), [grp.reasons for grp in frozen]
    # the prune report says what was left whole and why, not only whole-node barriers
    report = api.prune(g.model([y]), ratio=0.5, **kw).report
    left = [u for u in report["unprunable"] if u["channels"] == 8]
    assert left and any(norm in r for u in left for r in u["reasons"]), report["unprunable"]


def test_analysis_of_custom_op_reports_barrier_without_running(monkeypatch):
    """Analysis needs shapes only; a custom op becomes a barrier naming the node."""
    from compressor.analysis.groups import analyze_index
    from compressor.ir.graph import GraphIndex
    from compressor.ir.shapes import resolve_inputs

    g = G()
    x = g.input("x", [1, 3, 8, 8])
    a = g.cbr(x, 3, 8)
    b = g.cbr(a, 8, 8)
    c = g.op("Softmax", [b], axis=1)
    m = g.model([c])
    m.graph.node[-1].op_type = "MyOp"
    m.graph.node[-1].domain = "my.domain"
    m.opset_import.append(onnx.helper.make_opsetid("my.domain", 1))
    monkeypatch.setattr("compressor.ir.graph.infer_shapes", _shapes_from_onnx)
    an = analyze_index(GraphIndex(m, resolve_inputs(m)))
    assert [b.op_type for b in an.barriers] == ["MyOp"], f"the custom op must be the one barrier: {an.barriers}"
    assert "no channel rule" in an.barriers[0].reason
    assert any(grp.prunable for grp in an.groups), "the conv before the barrier still prunes"


def _shapes_from_onnx(model, spec, wanted=None, const=None):
    from compressor.ir.shapes import with_fixed_inputs

    inferred = onnx.shape_inference.infer_shapes(with_fixed_inputs(model, spec))
    shapes = {t.name: tuple(t.dims) for t in model.graph.initializer}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input):
        dims = vi.type.tensor_type.shape.dim
        if dims and all(d.HasField("dim_value") for d in dims):
            shapes[vi.name] = tuple(d.dim_value for d in dims)
    b_out = model.graph.node[-1].input[0]
    shapes[model.graph.node[-1].output[0]] = shapes[b_out]
    return shapes, {}, {}


def test_round_to_and_min_channels_are_respected():
    g = G()
    x = g.input("x", [1, 3, 8, 8])
    h = g.cbr(x, 3, 20)
    y = g.conv(h, 20, 2)
    w = g.nodes[0].input[1]
    res = prune_ok(g.model([y]), ratio=0.7, round_to=4)
    assert shapes(res.model)[w][0] == 8, "20 * 0.3 = 6 kept, rounded up to 8"
    res = prune_ok(g.model([y]), ratio=0.9, min_channels=5)
    assert shapes(res.model)[w][0] == 5


def test_round_to_counts_the_channels_of_grouped_convs():
    """RegNet-style grouped conv: 6 groups of 8. Keeping 4 per group is 24 channels, already a
    multiple of 8: rounding must not widen it back to 8 per group (the whole layer)."""
    g = G()
    x = g.input("x", [1, 3, 8, 8])
    h = g.cbr(x, 3, 48)
    h = g.cbr(h, 48, 48, group=6)
    y = g.conv(h, 48, 4)
    m = g.model([y])
    w_first, w_grouped = m.graph.node[0].input[1], next(n.input[1] for n in m.graph.node if n.op_type == "Conv"
                                                         and any(a.name == "group" and a.i == 6 for a in n.attribute))
    res = prune_ok(m, ratio=0.5, round_to=8)
    s = shapes(res.model)
    assert s[w_first][0] == 24 and s[w_grouped] == (24, 4, 3, 3), s
    res = api.prune(m, ratio=0.5, round_to=16)
    assert shapes(res.model)[w_first][0] == 48, "4 per group x 6 = 24 is no multiple of 16: 8 per group (48)"


def test_exclude_protects_matching_groups_and_says_why():
    g = G()
    x = g.input("x", [1, 3, 8, 8])
    a = g.cbr(x, 3, 8)
    b = g.cbr(a, 8, 8)
    y = g.conv(b, 8, 2)
    m = g.model([y])
    first_conv = m.graph.node[0].name
    res = prune_ok(m, exclude=[first_conv])
    excluded = [grp for grp in res.analysis.groups if any("excluded" in r for r in grp.reasons)]
    assert len(excluded) == 1 and first_conv in excluded[0].reasons[0]
    w0 = m.graph.node[0].input[1]
    assert shapes(res.model)[w0][0] == 8, "the excluded conv keeps all its filters"


def _beside_a_free_chain(build, opset: int = 17):
    """x -> conv(4->8) -> relu -> ``build(g, r)`` -> 1x1 conv -> y1, beside an unrelated chain
    x -> conv(4->8) -> relu -> 1x1 conv -> y2 that must still be pruned."""
    g = G(opset=opset)
    x = g.input("x", [1, 4, 8, 8])
    r = g.op("Relu", [g.conv(x, 4, 8)])
    mid, c = build(g, r)
    y1 = g.conv(mid, c, 3, k=1) if c else g.op("ReduceSum", [mid, g.const(np.array([2], np.int64))], keepdims=0)
    y2 = g.conv(g.op("Relu", [g.conv(x, 4, 8)]), 8, 3, k=1)
    return g.model([y1, y2])


def _to_axis2(g, r):
    return g.op("Transpose", [r], perm=[0, 2, 1, 3])


@pytest.mark.parametrize("case, build, reason", [
    ("a strided conv over channels moved to a spatial axis",  # (stride 1 is widened: test_widen.py)
     lambda g, r: (g.op("Conv", [_to_axis2(g, r), g.rand(6, 8, 3, 3)], kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                        strides=[2, 1]), 6), "convolves or batches over axis 2"),
    ("an InstanceNorm whose statistics run over channels on axis 2",
     lambda g, r: (g.op("Transpose", [g.op("InstanceNormalization", [_to_axis2(g, r), g.rand(8), g.rand(8)])],
                        perm=[0, 2, 1, 3]), 8), "normalises over axis 2"),
    ("a GroupNorm over channels on axis 2",
     lambda g, r: (g.op("Transpose", [g.op("GroupNormalization", [_to_axis2(g, r), g.rand(8), g.rand(8)],
                                           num_groups=2)], perm=[0, 2, 1, 3]), 8), "normalises across channels"),
    ("a Pad that shifts the channels by one (+1 / -1)",
     lambda g, r: (g.op("Pad", [r, g.const(np.array([0, 1, 0, 0, 0, -1, 0, 0], np.int64))]), 8), "pads axis 1"),
    ("a Size of the channels used as a number",
     lambda g, r: (g.op("Div", [r, g.op("Cast", [g.op("Size", [r])], to=1)]), 8), "counts the channels"),
    ("a Gather whose indices carry the channels",
     lambda g, r: (g.op("Transpose", [g.op("Gather", [g.rand(5, 8), g.op("Cast", [g.op("Clip", [
         r, g.const(np.array(0.0, np.float32)), g.const(np.array(4.0, np.float32))])], to=7)])], perm=[0, 4, 1, 2, 3]),
         None), "indexes with"),
])
def test_channels_on_an_axis_the_op_mixes_freeze_only_their_group(case, build, reason):
    """Each used to pass the group on unfrozen: the whole run then failed verification (exit 3),
    and the unrelated chain was not pruned either (found by fuzzing)."""
    m = _beside_a_free_chain(build, opset=21 if case.startswith("a GroupNorm") else 17)
    res = prune_ok(m, min_pruned=1)
    frozen = [u for u in res.report["unprunable"] if any(reason in r for r in u["reasons"])]
    assert frozen, (case, res.report["unprunable"])


@pytest.mark.parametrize("op", ["Conv", "ConvTranspose"])
def test_depthwise_conv_with_a_channel_multiplier_passes_channels_through(op):
    """group = C with 2 outputs per input channel: Conv W[2C, 1, k, k], ConvTranspose W[C, 2, k, k].
    The transposed one used to be taken for a grouped conv of one channel per group (frozen)."""
    g = G()
    x = g.input("x", [1, 3, 8, 8])
    h = g.op("Relu", [g.conv(x, 3, 8)])
    w = g.rand(16, 1, 3, 3) if op == "Conv" else g.rand(8, 2, 3, 3)
    d = g.op(op, [h, w, g.rand(16, base="b")], kernel_shape=[3, 3], pads=[1, 1, 1, 1], group=8)
    res = prune_ok(g.model([g.conv(g.op("Relu", [d]), 16, 4, k=1)]))
    s = shapes(res.model)
    assert s[w] == ((8, 1, 3, 3) if op == "Conv" else (4, 2, 3, 3))
    node = next(n for n in res.model.graph.node if n.op_type == op and n.input[1] == w)
    assert next(a.i for a in node.attribute if a.name == "group") == 4


def test_a_group_norm_written_out_by_an_exporter_is_named_in_the_reason():
    """torch writes GroupNorm as Reshape [N, groups, -1] -> InstanceNormalization -> Reshape back;
    the reason named only the Reshape ("regroups channel axis 1 with other axes"). (The exact form
    prunes in whole groups, tests/core/test_groupnorm.py, and so does any regrouping whose groups
    hold whole channel blocks; here the way back goes through [1, 8, 64] and the 8 channels are a
    Concat of 3 and 5, which no group of 4 holds whole.)"""
    g = G()
    x = g.input("x", [1, 3, 8, 8])
    h = g.op("Concat", [g.cbr(x, 3, 3), g.cbr(x, 3, 5)], axis=1)
    grouped = g.op("Reshape", [h, g.const(np.array([1, 2, -1], np.int64))])
    normed = g.op("InstanceNormalization", [grouped, g.rand(2), g.rand(2)])
    back = g.op("Reshape", [normed, g.const(np.array([1, 8, 64], np.int64))])
    back = g.op("Reshape", [back, g.const(np.array([1, 8, 8, 8], np.int64))])
    m = g.model([g.conv(g.op("Relu", [back]), 8, 4, k=1)])
    reasons = [r for grp in api.analyze(m).groups for r in grp.reasons]
    assert any("a GroupNorm written as Reshape + InstanceNormalization" in r for r in reasons), reasons


def test_positions_concatenated_beside_pruned_channels_are_not_reported_as_channels():
    """A detection head concatenates its anchors' outputs with untracked tensors: the untracked
    operand's positions are a placeholder in the layout, no layer's channels, and used to top the
    report's channels left whole (SSD: 6300 "channels"). They are left out of ``unprunable``."""
    g = G()
    x = g.input("x", [1, 3, 8, 8])
    a = g.op("Relu", [g.conv(x, 3, 8)])
    cat = g.op("Concat", [g.conv(a, 8, 4), g.op("Relu", [x])], axis=1)
    y = g.conv(a, 8, 2)
    res = api.prune(g.model([cat, y]), ratio=0.5, importance="l2")
    r = res.report
    assert r["verify"]["passed"] and r["channels"]["removed"] == 4, r["channels"]
    assert not [u for u in r["unprunable"] if any("is not a pruned tensor" in x for x in u["reasons"])], \
        r["unprunable"]
