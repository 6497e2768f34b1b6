"""Pruning around a node that mixes the channels of an axis (AnalysisContext.widen, surgery/widen.py).

ECA's 1-D conv over the pooled channels and LRN compute every output channel from its neighbours
too (a Softmax over the channels stays frozen: its channels are bins). They used to freeze the
channels they read. Now the pruned model widens their input back to every channel (a zero where
one was removed), runs them at full width, and keeps the kept channels of their output. (A
GroupNorm with one group was widened too; it is now pruned with its statistics over the kept
channels: tests/core/test_groupnorm_one_group.py.)

Property: that is exactly the masked original (removed channels zeroed at every consumer, the mixing
node included). Each test checks it independently of the tool's oracle: the original is run with a
mask multiplied in before the mixing node and the removed input channels of the last conv zeroed,
and the pruned model must reproduce its output.
"""

from __future__ import annotations

import io

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from compressor import api
from tests.core.graphs import G


def _run(model: onnx.ModelProto, feeds: dict) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)[0]


def _kept(report: dict, tensor: str, axis: int) -> list[int]:
    hit = [s for s in report["plan"] if s["tensor"] == tensor and s["axis"] == axis]
    assert hit, f"'{tensor}' axis {axis} was not sliced"
    return sorted(hit[0]["kept"])


def _masked(model: onnx.ModelProto, mixer_input: str, axis: int, mask: np.ndarray, consumer_w: str,
            removed: list[int]) -> onnx.ModelProto:
    """The original with ``mask`` multiplied into ``mixer_input`` along ``axis`` (where it is read
    by the mixing node) and the consumer weight's removed input channels zeroed."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    rank = len([d for d in next(v for v in onnx.shape_inference.infer_shapes(m).graph.value_info
                                if v.name == mixer_input).type.tensor_type.shape.dim])
    shape = [1] * rank
    shape[axis] = mask.size
    m.graph.initializer.append(numpy_helper.from_array(mask.reshape(shape).astype(np.float32), "test_mask"))
    for n in m.graph.node:
        if mixer_input in n.input and n.op_type not in ("Mul", "Shape", "Expand", "Conv") or (
                n.op_type == "Conv" and n.input[0] == mixer_input and mixer_input.startswith("eca_in")):
            n.input[list(n.input).index(mixer_input)] = "test_masked"
    idx = next(i for i, n in enumerate(m.graph.node) if "test_masked" in n.input)
    m.graph.node.insert(idx, helper.make_node("Mul", [mixer_input, "test_mask"], ["test_masked"]))
    for t in m.graph.initializer:
        if t.name == consumer_w:
            w = numpy_helper.to_array(t).copy()
            w[:, removed] = 0
            t.CopyFrom(numpy_helper.from_array(w, t.name))
    return m


def _masked_before(model: onnx.ModelProto, mask: np.ndarray, pick) -> onnx.ModelProto:
    """The original with ``mask`` multiplied into the first input of every node ``pick`` selects
    (the consumers of the pruned channels, where the masked original zeroes them)."""
    ref = onnx.ModelProto()
    ref.CopyFrom(model)
    ref.graph.initializer.append(numpy_helper.from_array(mask, "test_mask"))
    nodes = []
    for n in ref.graph.node:
        if pick(n):
            masked = f"{n.input[0]}_masked_for_{n.name}"
            nodes.append(helper.make_node("Mul", [n.input[0], "test_mask"], [masked]))
            n.input[0] = masked
        nodes.append(n)
    del ref.graph.node[:]
    ref.graph.node.extend(nodes)
    return ref


def _assert_reproduces(ref: onnx.ModelProto, pruned: onnx.ModelProto, shape, seed: int) -> None:
    feeds = {"x": np.random.default_rng(seed).standard_normal(shape).astype(np.float32)}
    want, got = _run(ref, feeds), _run(pruned, feeds)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(np.abs(want).max()))


def _check(model, report, pruned, producer_w: str, mixer_input: str, axis: int, consumer_w: str, c: int,
           feeds: dict) -> list[int]:
    assert report["verify"]["passed"] and report["verify"]["max_rel_err"] <= 1e-5, report["verify"]
    kept = _kept(report, producer_w, 0)
    assert 0 < len(kept) < c, f"the {c} channels around the mixing node were not pruned: kept {kept}"
    removed = sorted(set(range(c)) - set(kept))
    mask = np.zeros(c)
    mask[kept] = 1
    want = _run(_masked(model, mixer_input, axis, mask, consumer_w, removed), feeds)
    got = _run(pruned, feeds)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(np.abs(want).max()))
    # and a wrong mask would not pass: the check can tell
    wrong = np.ones(c)
    assert not np.allclose(_run(_masked(model, mixer_input, axis, wrong, consumer_w, removed), feeds), got,
                           rtol=1e-4, atol=1e-4 * float(np.abs(want).max()))
    return kept


def eca_block(opset: int = 17, c: int = 16, k: int = 3, batch="N"):
    """conv -> relu -> [ECA: GAP, Reshape [B,1,C], Conv1d(k), Sigmoid, Reshape [B,C,1,1], Mul] -> conv."""
    g = G(opset=opset)
    x = g.input("x", [batch, 3, 8, 8])
    h = g.op("Relu", [g.conv(x, 3, c)])
    p = g.op("GlobalAveragePool", [h])
    v = g.op("Reshape", [p, g.const(np.array([0, 1, -1], np.int64), "to_b1c")])
    v = g.op("Identity", [v])
    g.nodes[-1].output[0] = "eca_in"
    a = g.op("Conv", ["eca_in", g.rand(1, 1, k)], kernel_shape=[k], pads=[k // 2, k // 2])
    gate = g.op("Reshape", [g.op("Sigmoid", [a]), g.const(np.array([0, -1, 1, 1], np.int64), "to_bc11")])
    y = g.conv(g.op("Mul", [h, gate]), c, 4)
    out = helper.make_tensor_value_info(y, TensorProto.FLOAT, [batch, 4, 8, 8])
    model = helper.make_model(helper.make_graph(g.nodes, "eca", g.inputs, [out], g.inits),
                              opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    convs = [n for n in g.nodes if n.op_type == "Conv"]
    return model, convs[0].input[1], convs[2].input[1]


@pytest.mark.parametrize("opset", [11, 17])
def test_eca_conv_over_the_channels_is_pruned_around(opset):
    model, producer, consumer = eca_block(opset)
    res = api.prune(model, ratio=0.5, importance="l2")
    r = res.report
    feeds = {"x": np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)}
    kept = _check(model, r, res.model, producer, "eca_in", 2, consumer, 16, feeds)
    assert len(kept) == 8
    ops = [n.op_type for n in res.model.graph.node]
    assert ops.count("Pad") == 1 and ops.count("Gather") == 2, ops
    assert len(r["widened"]) == 1 and r["widened"][0].startswith("Conv"), r["widened"]
    eca = next(n for n in res.model.graph.node if n.op_type == "Conv" and len(n.input) == 2)
    w = {t.name: numpy_helper.to_array(t) for t in res.model.graph.initializer}[eca.input[1]]
    assert w.shape == (1, 1, 3), "the ECA conv's kernel is not sliced: it runs at full width"
    assert r["macs_after"] < 0.51 * r["macs_before"]  # (the ECA conv still runs at full width)
    assert r["verify"]["second_shape"]["passed"], "dynamic batch: proven at a second shape too"


def test_a_strided_or_shrinking_conv_over_the_channels_stays_frozen():
    """Widening needs the output axis to carry the input positions one for one."""
    model, _, _ = eca_block(k=3)
    eca = next(n for n in model.graph.node if n.input and n.input[0] == "eca_in")
    del eca.attribute[:]
    eca.attribute.extend([helper.make_attribute("kernel_shape", [3])])  # no padding: C - 2 outputs
    # the gate no longer has C values: the model cannot run, so pad it back after the sigmoid
    sig = next(n for n in model.graph.node if n.op_type == "Sigmoid")
    sig_out = sig.output[0]
    sig.output[0] = "sig_raw"
    idx = list(model.graph.node).index(sig)
    model.graph.initializer.append(numpy_helper.from_array(np.array([0, 0, 1, 0, 0, 1], np.int64), "pad1"))
    model.graph.node.insert(idx + 1, helper.make_node("Pad", ["sig_raw", "pad1"], [sig_out]))
    res = api.prune(model, ratio=0.5, importance="l2")
    assert res.report["verify"]["passed"]
    assert any("convolves or batches over axis 2" in r for u in res.report["unprunable"] for r in u["reasons"]), \
        res.report["unprunable"]
    assert not [n for n in res.model.graph.node if n.op_type == "Gather"]


def mixer_chain(op: str, opset: int, c: int = 16, **attrs):
    g = G(opset=opset)
    x = g.input("x", [1, 3, 8, 8])
    g.op("Relu", [g.conv(x, 3, c)])
    g.nodes[-1].output[0] = "mix_in"
    n = g.op(op, ["mix_in"], **attrs)
    y = g.conv(n, c, 4)
    convs = [nd for nd in g.nodes if nd.op_type == "Conv"]
    return g.model([y], ir_version=5 if opset < 11 else 8), convs[0].input[1], convs[1].input[1]


LRN = {"size": 3, "alpha": 1e-3, "beta": 0.75, "bias": 1.0}


@pytest.mark.parametrize("op, opset, attrs", [
    ("LRN", 13, LRN),
    ("LRN", 10, LRN),  # Pad's pads are an attribute below opset 11
], ids=["lrn13", "lrn10"])
def test_a_node_mixing_the_channel_axis_runs_at_full_width_between_the_cuts(op, opset, attrs):
    model, producer, consumer = mixer_chain(op, opset, **attrs)
    res = api.prune(model, ratio=0.5, importance="l2")
    feeds = {"x": np.random.default_rng(1).standard_normal((1, 3, 8, 8)).astype(np.float32)}
    _check(model, res.report, res.model, producer, "mix_in", 1, consumer, 16, feeds)
    pads = [n for n in res.model.graph.node if n.op_type == "Pad"]
    assert len(pads) == 1 and (len(pads[0].input) == 2) == (opset >= 11), "Pad's pads: an input from opset 11"


@pytest.mark.parametrize("op, opset", [("Softmax", 13), ("LogSoftmax", 17), ("Softmax", 11)])
def test_a_softmax_over_the_channels_stays_frozen(op, opset):
    """Its channels are mostly the bins of a distribution (YOLO's DFL softmax over 16 bins, read as
    a distance): widened, pruning would remove bins and move every box (by 28 px on average on an
    ultralytics yolov8n: stop 21's YOLO exploration). It stays a barrier for the channels it reads."""
    model, _, _ = mixer_chain(op, opset, axis=1)
    res = api.prune(model, ratio=0.5, importance="l2")
    r = res.report
    assert r["widened"] == [] and r["channels"]["removed"] == 0, (r["widened"], r["channels"])
    assert any(op in x and "normalises over axis 1" in x for u in r["unprunable"] for x in u["reasons"])


def test_eca_exported_by_torch_is_pruned_around():
    """timm's EcaModule as torch writes it (mean over H, W; view(b, 1, -1); Conv1d; sigmoid; view;
    expand_as), both exporters' forms at opset 17 with a dynamic batch."""
    torch = pytest.importorskip("torch")

    class ECA(torch.nn.Module):
        def __init__(self, c):
            super().__init__()
            self.conv = torch.nn.Conv1d(1, 1, 3, padding=1, bias=False)
            self.c = c

        def forward(self, x):
            y = x.mean((2, 3)).view(x.shape[0], 1, -1)
            y = self.conv(y).view(x.shape[0], -1, 1, 1).sigmoid()
            return x * y.expand_as(x)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = torch.nn.Conv2d(3, 16, 3, padding=1)
            self.bn = torch.nn.BatchNorm2d(16)
            self.eca = ECA(16)
            self.c2 = torch.nn.Conv2d(16, 4, 3, padding=1)

        def forward(self, x):
            return self.c2(self.eca(torch.relu(self.bn(self.c1(x)))))

    torch.manual_seed(0)
    net = Net().eval()
    with torch.no_grad():
        net.bn.running_mean.uniform_(-0.5, 0.5)
        net.bn.bias.uniform_(-0.5, 0.5)
    buf = io.BytesIO()
    torch.onnx.export(net, (torch.randn(2, 3, 8, 8),), buf, dynamo=False, opset_version=17, input_names=["x"],
                      output_names=["y"], dynamic_axes={"x": {0: "n"}, "y": {0: "n"}})
    model = onnx.load_from_string(buf.getvalue())
    res = api.prune(model, ratio=0.5)
    r = res.report
    assert r["verify"]["passed"] and r["verify"]["max_rel_err"] <= 1e-5, r["verify"]
    assert r["verify"]["second_shape"]["passed"]
    assert r["channels"]["removed"] == 8, "the 16 channels through the ECA gate are pruned to 8"
    assert not any("convolves" in x for u in r["unprunable"] for x in u["reasons"]), r["unprunable"]


def test_mvn_over_the_channels_stays_frozen():
    """MVN has no epsilon: fed the zeros of removed channels, a slice whose kept channels are all 0
    (after a Relu) would divide 0 by 0, NaN where the original is finite (stress test of stop 22)."""
    model, _, _ = mixer_chain("MeanVarianceNormalization", 13, axes=[1])
    res = api.prune(model, ratio=0.5, importance="l2")
    assert res.report["widened"] == [] and res.report["channels"]["removed"] == 0
    assert any("MeanVarianceNormalization" in r and "normalises over axis 1" in r
               for u in res.report["unprunable"] for r in u["reasons"]), res.report["unprunable"]


def test_widened_nodes_in_a_row():
    """A widened node reading another's narrowed output: its Pad/Gather were spliced before their
    input existed and the model failed shape inference (stress test of stop 22). Independent
    check: the original with both mixing nodes' inputs (and the last conv's) masked."""
    g = G(opset=21)
    x = g.input("x", [1, 3, 8, 8])
    h = g.op("Relu", [g.conv(x, 3, 16)])
    h = g.op("LRN", [h], **LRN)
    y = g.conv(g.op("LRN", [h], **LRN), 16, 4)
    out = helper.make_tensor_value_info(y, TensorProto.FLOAT, [1, 4, 8, 8])
    model = helper.make_model(helper.make_graph(g.nodes, "row", g.inputs, [out], g.inits),
                              opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    res = api.prune(model, ratio=0.5, importance="l2")
    r = res.report
    assert r["verify"]["passed"] and r["verify"]["max_rel_err"] <= 1e-5, r["verify"]
    assert len(r["widened"]) == 2, r["widened"]
    kept = _kept(r, next(n for n in model.graph.node if n.op_type == "Conv").input[1], 0)
    assert len(kept) == 8
    mask = np.zeros((1, 16, 1, 1), np.float32)
    mask[0, kept] = 1
    mixing = ("LRN",)
    mixers = {n.output[0] for n in model.graph.node if n.op_type in mixing}
    ref = _masked_before(model, mask, lambda n: n.op_type in mixing or (n.op_type == "Conv" and n.input[0] in mixers))
    _assert_reproduces(ref, res.model, (1, 3, 8, 8), seed=2)


def _outer_product(g: G, c1: int = 8, c2: int = 12) -> str:
    """[1, c1, c2]: two conv groups on axes 1 and 2 (pooled, multiplied as an outer product)."""
    x = g.input("x", [1, 3, 8, 8])
    u = g.op("Reshape", [g.op("GlobalAveragePool", [g.conv(x, 3, c1)]), g.const(np.array([1, c1, 1], np.int64))])
    v = g.op("Reshape", [g.op("GlobalAveragePool", [g.conv(x, 3, c2)]), g.const(np.array([1, 1, c2], np.int64))])
    return g.op("Mul", [u, v])


def test_a_widened_node_reading_a_rescaled_mean():
    """A 1-D conv over axis 2 of a mean over axis 1 (rescaled by a Mul/Div follower): the widening's
    Pad was spliced before the follower that writes its input (stress test of stop 22)."""
    g = G(opset=13)
    p = _outer_product(g)
    m = g.op("ReduceMean", [p], axes=[1], keepdims=1)
    c = g.op("Conv", [m, g.rand(1, 1, 3)], kernel_shape=[3], pads=[1, 1])
    y = g.op("MatMul", [c, g.rand(12, 4)])
    res = api.prune(g.model([y], ir_version=8), ratio=0.5, importance="l2")
    r = res.report
    assert r["verify"]["passed"] and r["verify"]["max_rel_err"] <= 1e-5, r["verify"]
    assert len(r["widened"]) == 1 and r["channels"]["removed"] == 10, (r["widened"], r["channels"])


def test_one_axis_per_node_is_widened_the_other_freezes():
    """A 3x3 conv over an outer product [1, 1, C1, C2] mixes two tracked axes. One is widened; the
    other freezes (a second widening of the same node crashed)."""
    g = G(opset=13)
    p = g.op("Unsqueeze", [_outer_product(g), g.const(np.array([1], np.int64))])  # [1, 1, 8, 12]
    c = g.op("Conv", [p, g.rand(1, 1, 3, 3)], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    q = g.op("Transpose", [g.op("MatMul", [c, g.rand(12, 4)])], perm=[0, 1, 3, 2])
    y = g.op("MatMul", [q, g.rand(8, 3)])
    model = g.model([y], ir_version=8)
    res = api.prune(model, ratio=0.5, importance="l2")
    r = res.report
    assert r["verify"]["passed"] and r["verify"]["max_rel_err"] <= 1e-5, r["verify"]
    assert len(r["widened"]) == 1 and r["channels"]["removed"] > 0, (r["widened"], r["channels"])
    assert any("convolves or batches over axis" in x for u in r["unprunable"] for x in u["reasons"])


def test_exclude_naming_the_widened_node_protects_its_channels():
    model, producer, _ = eca_block()
    eca = next(n for n in model.graph.node if n.input and n.input[0] == "eca_in")
    res = api.prune(model, ratio=0.5, importance="l2", exclude=[eca.name])
    assert res.report["channels"]["removed"] == 0 and res.report["widened"] == [], res.report["channels"]


def test_macs_after_counts_the_widened_node_at_full_width():
    from compressor.ir.graph import GraphIndex
    from compressor.ir.shapes import resolve_inputs
    from compressor.metrics import count

    model, _, _ = eca_block(k=5, batch=1)
    res = api.prune(model, ratio=0.5, importance="l2")
    macs, params, _ = count(GraphIndex(res.model, resolve_inputs(res.model, {})))
    assert res.report["widened"] and (res.report["macs_after"], res.report["params_after"]) == (macs, params)


def test_a_depthwise_conv_widened_over_one_axis_still_loses_channels_on_its_channel_axis():
    """[N, C1, C2] with channels on both axes: a depthwise Conv1d over axis 2 is widened there, and
    its channel axis 1 is pruned as usual (its group count rewritten). The widened tensors' shapes
    used to be all original, so the group count stayed and onnxruntime refused the model (review of
    stop 22)."""
    g = G(opset=17)
    x = g.input("x", [1, 3, 8, 8])
    pa = g.op("Unsqueeze", [g.op("ReduceMean", [g.op("Relu", [g.conv(x, 3, 8)])], axes=[2, 3], keepdims=0),
                            g.const(np.array([2], np.int64))])  # [1, 8, 1]
    pb = g.op("Unsqueeze", [g.op("ReduceMean", [g.op("Relu", [g.conv(x, 3, 12)])], axes=[2, 3], keepdims=0),
                            g.const(np.array([1], np.int64))])  # [1, 1, 12]
    dw = g.op("Conv", [g.op("Mul", [pa, pb]), g.rand(8, 1, 3)], kernel_shape=[3], pads=[1, 1], group=8)
    y = g.op("MatMul", [g.op("Conv", [dw, g.rand(4, 8, 1)], kernel_shape=[1]), g.rand(12, 5)])
    res = api.prune(g.model([y], ir_version=8), ratio=0.5, importance="l2")
    r = res.report
    assert r["verify"]["passed"] and r["verify"]["max_rel_err"] <= 1e-5, r["verify"]
    assert r["channels"]["removed"] == 10 and len(r["widened"]) == 1, (r["channels"], r["widened"])
    depthwise = next(n for n in res.model.graph.node if n.op_type == "Conv" and any(
        a.name == "group" and a.i > 1 for a in n.attribute))
    assert next(a.i for a in depthwise.attribute if a.name == "group") == 4


def test_channels_merged_with_a_dynamic_batch_are_not_widened():
    """[N, C] -> [1, N*C] carries the channels once per batch position: as many copies as the
    batch, so the layout and a widening's indices would hold at one batch only. The merged channels
    freeze (a widened Softmax there failed at any other batch: review of stop 22)."""
    g = G(opset=17)
    x = g.input("x", ["N", 3, 8, 8])
    f = g.op("Reshape", [g.op("GlobalAveragePool", [g.op("Relu", [g.conv(x, 3, 8)])]),
                         g.const(np.array([1, 1, -1], np.int64))])  # [1, 1, N*8]
    s = g.op("Conv", [f, g.rand(1, 1, 3)], kernel_shape=[3], pads=[1, 1])
    y = g.op("ReduceSum", [g.op("Mul", [s, f]), g.const(np.array([2], np.int64))], keepdims=0)
    out = helper.make_tensor_value_info(y, TensorProto.FLOAT, [1, 1])
    model = helper.make_model(helper.make_graph(g.nodes, "m", g.inputs, [out], g.inits),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    res = api.prune(model, ratio=0.5, importance="l2")
    assert res.report["widened"] == [] and res.report["channels"]["removed"] == 0
    for n in (2, 3):
        _run(res.model, {"x": np.random.default_rng(n).standard_normal((n, 3, 8, 8)).astype(np.float32)})
