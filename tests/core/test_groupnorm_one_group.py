"""GroupNorm with one group, pruned with its statistics over the kept channels
(compressor/analysis/rules/groupnorm.py, the oracle's reference in compressor/verify/norms.py).

A GroupNorm with one group normalises over every channel and position: no group can be removed
whole, so its channels are pruned one by one and the pruned model's GroupNorm normalises over the
kept channels times every position, as a pruned LayerNorm normalises over the kept channels.

Property: the pruned model computes GroupNorm(1) of the kept channels. Each test checks it
independently of the tool's oracle, against numpy (or torch, for the torch exports) evaluating
GroupNorm over the kept channels of the original's input, for both forms: the
``GroupNormalization`` op (opset 18: one scale value; opset 21: one per channel) and the torch
exporters' ``Reshape [N, 1, -1] -> InstanceNormalization -> Reshape`` region. The tool's own proof
must pass at ~1e-6 and tell a wrong cut apart (``discrimination``), and must fail a pruned model
with two channels swapped.
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
from compressor.errors import UsageError
from compressor.ir.shapes import InputSpec
from compressor.planning.plan import PlanOptions, make_plan
from compressor.verify import masked_reference, verify
from tests.core.graphs import G, torch_onnx
from tests.core.test_groupnorm import _kept, _weights

EPS = 1e-5


# ---- references -------------------------------------------------------------------------------

def gn1(x: np.ndarray, scale: np.ndarray, bias: np.ndarray, eps: float = EPS) -> np.ndarray:
    """GroupNorm with one group (float64): statistics per sample over every channel and position,
    then ``scale`` and ``bias`` (one value, or one per channel) along the channel axis."""
    x = np.asarray(x, np.float64)
    axes = tuple(range(1, x.ndim))
    y = (x - x.mean(axis=axes, keepdims=True)) / np.sqrt(x.var(axis=axes, keepdims=True) + eps)
    along = (1, -1) + (1,) * (x.ndim - 2)
    return y * np.asarray(scale, np.float64).reshape(along) + np.asarray(bias, np.float64).reshape(along)


def head_1x1(h: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """A 1x1 conv (float64)."""
    return np.einsum("nchw,oc->nohw", h, np.asarray(w, np.float64)[:, :, 0, 0]) + np.asarray(b, np.float64)[None, :,
                                                                                                             None, None]


def _run(model: onnx.ModelProto, feeds: dict, names: list[str] | None = None) -> list[np.ndarray]:
    if names:
        m = onnx.ModelProto()
        m.CopyFrom(model)
        have = {o.name for o in m.graph.output}
        m.graph.output.extend(helper.make_empty_tensor_value_info(n) for n in names if n not in have)
        model = m
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(names, feeds)


def _rel(got: np.ndarray, want: np.ndarray) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, (got.shape, want.shape)
    return float(np.abs(got - want).max() / np.abs(want).max())


def _assert_proof(report: dict, widened: int = 0) -> None:
    v = report["verify"]
    assert v["passed"] and v["max_rel_err"] <= 1e-5, f"the tool's proof must pass at ~1e-6: {v}"
    assert v["discrimination"] is not None and v["discrimination"] > 100 * v["tolerance"], \
        f"a wrong cut must be far from the reference: {v['discrimination']}"
    assert len(report["widened"]) == widened, f"a GroupNorm(1) is no longer widened: {report['widened']}"
    assert report["norms_pruned"], "the GroupNorm lost channels: the report names it among the norms pruned"


# ---- the GroupNormalization op --------------------------------------------------------------------

def gn_op_chain(opset: int, c: int = 16, dynamic: bool = False, half: bool = False, rank: int = 4):
    """conv 3x3 -> GroupNormalization(num_groups=1) -> relu -> conv 1x1 head (4 outputs); scale and
    bias of length C (opset 21) or 1 (opset 18). ``rank`` 3: the same over [N, C, L] (Conv1d)."""
    g = G(seed=1, opset=opset)
    spatial = (["H", "W"] if dynamic else [8, 8])[: rank - 2]
    x = g.input("x", ["N" if dynamic else 1, 3, *spatial], TensorProto.FLOAT16 if half else TensorProto.FLOAT)
    k = [3] * (rank - 2)
    stem = g.op("Conv", [x, g.rand(c, 3, *k), g.rand(c, base="b")], kernel_shape=k, pads=[1] * 2 * (rank - 2))
    p = c if opset >= 21 else 1
    gn = g.op("GroupNormalization", [stem, g.rand(p, positive=True), g.rand(p)], num_groups=1, epsilon=EPS)
    one = [1] * (rank - 2)
    y = g.op("Conv", [g.op("Relu", [gn]), g.rand(4, c, *one), g.rand(4, base="b")], kernel_shape=one)
    dims = ["N" if dynamic else 1, 4, *spatial]
    out = helper.make_tensor_value_info(y, TensorProto.FLOAT16 if half else TensorProto.FLOAT, dims)
    model = helper.make_model(helper.make_graph(g.nodes, "gn1", g.inputs, [out], g.inits),
                              opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10
    if half:
        for t in model.graph.initializer:
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float16), t.name))
    return model


def _op_expected(model: onnx.ModelProto, kept: list[int], x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(the GroupNorm's output on the kept channels, the head's output) as numpy computes them from
    the original's GroupNorm input: GroupNorm(1) over the kept channels only."""
    gn = next(n for n in model.graph.node if n.op_type == "GroupNormalization")
    head = [n for n in model.graph.node if n.op_type == "Conv"][1]
    w = _weights(model)
    h = _run(model, {"x": x}, [gn.input[0]])[0][:, kept]
    scale, bias = w[gn.input[1]], w[gn.input[2]]
    if scale.size > 1:  # opset 21: per channel
        scale, bias = scale[kept], bias[kept]
    normed = gn1(h, scale, bias)
    relu = np.maximum(normed, 0)
    wh = np.asarray(w[head.input[1]], np.float64)[:, kept]
    out = np.einsum("nc...,oc->no...", relu, wh.reshape(wh.shape[:2])) + \
        np.asarray(w[head.input[2]], np.float64).reshape((1, -1) + (1,) * (relu.ndim - 2))
    return normed, out


@pytest.mark.parametrize("opset", [18, 21])
def test_groupnormalization_op_matches_groupnorm_of_the_kept_channels(opset):
    model = gn_op_chain(opset)
    res = api.prune(model, ratio=0.5, importance="l2")
    r = res.report
    _assert_proof(r)
    stem = next(n for n in model.graph.node if n.op_type == "Conv").input[1]
    kept = _kept(r, stem, 16)
    assert len(kept) == 8, kept
    gn = next(n for n in res.model.graph.node if n.op_type == "GroupNormalization")
    assert next(a.i for a in gn.attribute if a.name == "num_groups") == 1, "one group stays one group"
    assert _weights(res.model)[gn.input[1]].shape == ((8,) if opset >= 21 else (1,)), \
        "opset 21: the scale is sliced with the channels; opset 18: its one value stays"
    assert r["norms_pruned"] == [gn.name]
    for seed in (0, 1):
        x = np.random.default_rng(seed).standard_normal((1, 3, 8, 8)).astype(np.float32) * 2 + 0.5
        want_gn, want = _op_expected(model, kept, x)
        got_gn, got = _run(res.model, {"x": x}, [gn.output[0], res.model.graph.output[0].name])
        assert _rel(got_gn, want_gn) <= 1e-5 and _rel(got, want) <= 1e-5


def test_groupnormalization_op_float16():
    """A float16 model: the proof compares in float32 (both models widened); the pruned float16
    model agrees with numpy's GroupNorm over the kept channels to float16 precision."""
    model = gn_op_chain(21, half=True)
    res = api.prune(model, ratio=0.5, importance="l2")
    r = res.report
    _assert_proof(r)
    assert r["verify"]["compared_in"].startswith("float32")
    kept = _kept(r, next(n for n in model.graph.node if n.op_type == "Conv").input[1], 16)
    x = np.random.default_rng(2).standard_normal((1, 3, 8, 8)).astype(np.float16)
    _, want = _op_expected(model, kept, x)
    got = _run(res.model, {"x": x})[0]
    assert got.dtype == np.float16 and _rel(got, want) <= 1e-2


@pytest.mark.parametrize("rank", [4, 3])
def test_groupnormalization_op_dynamic_spatial_size(rank):
    """Batch, height and width dynamic (rank 3: the length): the statistics' count follows the
    spatial size at run time. Proven at a second shape by the tool; checked here at two others."""
    model = gn_op_chain(21, dynamic=True, rank=rank)
    spatial = [8, 8][: rank - 2]
    res = api.prune(model, ratio=0.5, importance="l2", input_shapes={"x": [1, 3, *spatial]})
    r = res.report
    _assert_proof(r)
    assert r["verify"]["second_shape"]["passed"], r["verify"]["second_shape"]
    kept = _kept(r, next(n for n in model.graph.node if n.op_type == "Conv").input[1], 16)
    for shape in ([2, 3, 5, 11], [3, 3, 16, 4]):
        x = np.random.default_rng(len(shape)).standard_normal(shape[:rank]).astype(np.float32)
        _, want = _op_expected(model, kept, x)
        assert _rel(_run(res.model, {"x": x})[0], want) <= 1e-5


def test_the_proof_fails_a_wrong_cut():
    """The same pruning with two kept channels swapped (the stem's filters and biases): the oracle's
    reference (statistics over the kept channels) must refuse it. And the pruned model is not the
    zero-masked original (statistics over every channel, the removed ones as zeros, which the
    widening used to compute): the two semantics differ by far more than the tolerance."""
    model = gn_op_chain(21)
    res = api.prune(model, ratio=0.5, importance="l2")
    _assert_proof(res.report)
    stem = next(n for n in model.graph.node if n.op_type == "Conv")
    wrong = onnx.ModelProto()
    wrong.CopyFrom(res.model)
    for t in wrong.graph.initializer:
        if t.name in (stem.input[1], stem.input[2]):
            a = numpy_helper.to_array(t).copy()
            a[[0, 1]] = a[[1, 0]]
            t.CopyFrom(numpy_helper.from_array(a, t.name))
    spec = InputSpec({"x": (1, 3, 8, 8)}, {"x": np.dtype(np.float32)})
    bad = verify(masked_reference(res.analysis, res.plan.keep), wrong, spec)
    assert not bad.passed and bad.max_rel_err > 1e-2, bad
    good = verify(masked_reference(res.analysis, res.plan.keep), res.model, spec)
    assert good.passed and good.max_rel_err <= 1e-5, good

    kept = _kept(res.report, stem.input[1], 16)
    x = np.random.default_rng(3).standard_normal((1, 3, 8, 8)).astype(np.float32)
    gn = next(n for n in model.graph.node if n.op_type == "GroupNormalization")
    w = _weights(model)
    h = _run(model, {"x": x}, [gn.input[0]])[0].astype(np.float64)
    zeroed = np.zeros_like(h)
    zeroed[:, kept] = h[:, kept]
    widened = gn1(zeroed, w[gn.input[1]], w[gn.input[2]])[:, kept]
    got = _run(res.model, {"x": x}, [gn.output[0]])[0]
    assert _rel(got, widened) > 1e-2, "kept statistics and zero-masked statistics must differ"


def test_freeze_norms_keeps_the_channels_whole():
    model = gn_op_chain(21)
    an = api.analyze(model, prune_norms=False)
    stem = next(n for n in model.graph.node if n.op_type == "Conv").input[1]
    grp = next(g for g in an.groups if any(m.tensor == stem for m in g.members))
    assert not grp.prunable and any("one group" in r and "--freeze-norms" in r for r in grp.reasons), grp.reasons
    res = api.prune(model, ratio=0.5, prune_norms=False)
    assert res.report["norms_pruned"] == [] and res.report["widened"] == []
    assert _kept(res.report, stem, 16) == list(range(16))


def test_runtime_scale_of_one_group():
    """A run-time scale of one value (opset 18) needs no slicing: pruned; of C values (opset 21):
    it cannot be sliced, the channels stay whole with the reason."""
    for opset, p, prunable in ((18, 1, True), (21, 16, False)):
        g = G(opset=opset)
        x = g.input("x", [1, 3, 8, 8])
        s = g.input("s", [p])
        h = g.op("GroupNormalization", [g.conv(x, 3, 16), s, g.rand(p)], num_groups=1)
        y = g.conv(g.op("Relu", [h]), 16, 4, k=1)
        out = helper.make_tensor_value_info(y, TensorProto.FLOAT, [1, 4, 8, 8])
        model = helper.make_model(helper.make_graph(g.nodes, "m", g.inputs, [out], g.inits),
                                  opset_imports=[helper.make_opsetid("", opset)])
        model.ir_version = 10
        an = api.analyze(model)
        grp = next(g for g in an.groups if g.size == 16)
        assert grp.prunable == prunable, grp.reasons
        if not prunable:
            assert any("computed at run time" in r for r in grp.reasons), grp.reasons


def test_removing_every_channel_is_refused():
    """A plan that empties the GroupNorm's channels would leave it nothing to normalise: refused,
    naming it (as for a LayerNorm pruned through)."""
    model = gn_op_chain(21)
    an = api.analyze(model)
    plan = make_plan(an, {g.id: np.ones(g.size) for g in an.groups}, PlanOptions(ratio=0.0))
    stem = next(n for n in model.graph.node if n.op_type == "Conv").input[1]
    gone = next(g for g in an.groups if any(m.tensor == stem for m in g.members))
    next(d for d in plan.groups if d.id == gone.id).kept = []
    with pytest.raises(UsageError, match="GroupNormalization.* normalises these channels and would be left with none"):
        api.prune(model, plan_in=plan)


def test_groupnorm_then_lrn():
    """A GroupNorm(1) pruned through and an LRN widened after it: the LRN is the one widened node."""
    g = G(opset=21)
    x = g.input("x", [1, 3, 8, 8])
    h = g.op("Relu", [g.conv(x, 3, 16)])
    h = g.op("GroupNormalization", [h, g.rand(16, positive=True), g.rand(16)], num_groups=1)
    y = g.conv(g.op("LRN", [h], size=3, alpha=1e-3, beta=0.75, bias=1.0), 16, 4)
    out = helper.make_tensor_value_info(y, TensorProto.FLOAT, [1, 4, 8, 8])
    model = helper.make_model(helper.make_graph(g.nodes, "row", g.inputs, [out], g.inits),
                              opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    res = api.prune(model, ratio=0.5, importance="l2")
    _assert_proof(res.report, widened=1)
    assert res.report["widened"][0].startswith("LRN") and res.report["channels"]["removed"] == 8


def test_cli_names_the_norms_pruned_through(tmp_path):
    src = tmp_path / "m.onnx"
    onnx.save(gn_op_chain(21), src)
    runner = CliRunner()
    human = runner.invoke(main, ["prune", str(src), "-o", str(tmp_path / "a.onnx"), "--ratio", "0.5"])
    assert human.exit_code == 0 and "norms pruned through: 1" in human.output, human.output
    assert "widened" not in human.output
    out = runner.invoke(main, ["prune", str(src), "-o", str(tmp_path / "b.onnx"), "--ratio", "0.5", "--json"])
    r = json.loads(out.stdout)
    assert r["norms_pruned"] and r["widened"] == []


# ---- the exporters' form: Reshape [N, 1, -1] -> InstanceNormalization -> Reshape -> Mul -> Add ---

def _torch_net():
    torch = pytest.importorskip("torch")

    class Net(torch.nn.Module):
        """conv -> GroupNorm(1, 16) -> relu -> 1x1 head."""

        def __init__(self):
            super().__init__()
            self.stem = torch.nn.Conv2d(3, 16, 3, padding=1)
            self.norm = torch.nn.GroupNorm(1, 16, eps=EPS)
            self.head = torch.nn.Conv2d(16, 4, 1)

        def forward(self, x):
            return self.head(torch.relu(self.norm(self.stem(x))))

    torch.manual_seed(0)
    net = Net().eval()
    with torch.no_grad():
        net.norm.weight.uniform_(0.5, 1.5)
        net.norm.bias.normal_()
        net.stem.bias.normal_()
    return net


def _torch_expected(net, kept: list[int], x: np.ndarray) -> np.ndarray:
    """The net's output with its GroupNorm over the kept channels only (float64, from the torch
    weights: independent of the ONNX graph)."""
    import torch

    with torch.no_grad():
        h = net.stem(torch.from_numpy(x)).double().numpy()[:, kept]
    normed = gn1(h, net.norm.weight.detach().double().numpy()[kept], net.norm.bias.detach().double().numpy()[kept])
    return head_1x1(np.maximum(normed, 0), net.head.weight.detach().double().numpy()[:, kept],
                    net.head.bias.detach().double().numpy())


@pytest.mark.parametrize("how", ["legacy13", "legacy17", "dynamo18"])
def test_exported_groupnorm_matches_groupnorm_of_the_kept_channels(how):
    """TorchScript reads the Reshape back's shape with Shape(x) (it adapts); dynamo writes it as a
    literal [N, C, H, W] (rewritten to the kept count). The region runs as it is at the pruned
    width: nothing around it, and its InstanceNormalization's one-value scale and bias stay."""
    torch = pytest.importorskip("torch")
    net = _torch_net()
    model = torch_onnx(net, torch.randn(1, 3, 8, 8), how)
    assert any(n.op_type == "InstanceNormalization" for n in model.graph.node), "the exporter's decomposed form"
    res = api.prune(model, ratio=0.5, importance="l2")
    r = res.report
    _assert_proof(r)
    kept = _kept(r, "stem.weight", 16)
    assert len(kept) == 8
    ops = [n.op_type for n in res.model.graph.node]
    assert ops.count("InstanceNormalization") == 1 and "Pad" not in ops and "Gather" not in ops, ops
    w = _weights(res.model)
    norm = next(n for n in res.model.graph.node if n.op_type == "InstanceNormalization")
    assert w[norm.input[1]].shape == (1,), "one group: the InstanceNormalization's one value stays"
    for seed in (0, 1):
        x = np.random.default_rng(seed).standard_normal((1, 3, 8, 8)).astype(np.float32)
        assert _rel(_run(res.model, {"x": x})[0], _torch_expected(net, kept, x)) <= 1e-5


def test_exported_groupnorm_dynamic_spatial_size():
    """TorchScript with a dynamic batch, height and width: Reshape [0, 1, -1] and Shape(x) follow
    the input; the proof runs at a second shape, and the check here at two more."""
    torch = pytest.importorskip("torch")
    import io

    net = _torch_net()
    buf = io.BytesIO()
    torch.onnx.export(net, (torch.randn(1, 3, 8, 8),), buf, dynamo=False, opset_version=17, input_names=["x"],
                      output_names=["y"], dynamic_axes={"x": {0: "n", 2: "h", 3: "w"}, "y": {0: "n", 2: "h", 3: "w"}})
    model = onnx.load_from_string(buf.getvalue())
    res = api.prune(model, ratio=0.5, importance="l2", input_shapes={"x": [1, 3, 8, 8]})
    r = res.report
    _assert_proof(r)
    assert r["verify"]["second_shape"]["passed"], r["verify"]["second_shape"]
    kept = _kept(r, "stem.weight", 16)
    for shape in ([2, 3, 5, 13], [1, 3, 16, 6]):
        x = np.random.default_rng(sum(shape)).standard_normal(shape).astype(np.float32)
        assert _rel(_run(res.model, {"x": x})[0], _torch_expected(net, kept, x)) <= 1e-5


def _written_out(opset: int, into: list[int], back: str, c: int = 16):
    """conv -> Reshape(``into``) -> InstanceNormalization(ones(1), zeros(1)) -> Reshape back (by
    ``back``: "shape" for Shape(x), "literal" for [0, C, 8, 8]) -> Mul, Add [C, 1, 1] -> relu -> 1x1 conv."""
    g = G(seed=2, opset=opset)
    x = g.input("x", [1, 3, 8, 8])
    h = g.conv(x, 3, c)
    r = g.op("Reshape", [h, g.const(np.array(into, np.int64))])
    n = g.op("InstanceNormalization", [r, g.const(np.ones(1, np.float32)), g.const(np.zeros(1, np.float32))],
             epsilon=EPS)
    shape = g.op("Shape", [h]) if back == "shape" else g.const(np.array([0, c, 8, 8], np.int64))
    y = g.op("Reshape", [n, shape])
    scale, bias = g.rand(c, 1, 1, positive=True), g.rand(c, 1, 1)
    y = g.op("Add", [g.op("Mul", [y, scale]), bias])
    out = g.conv(g.op("Relu", [y]), c, 4, k=1)
    model = helper.make_model(helper.make_graph(g.nodes, "written", g.inputs,
                                                [helper.make_tensor_value_info(out, TensorProto.FLOAT, [1, 4, 8, 8])],
                                                g.inits), opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model, {"scale": scale, "bias": bias}


@pytest.mark.parametrize("back", ["shape", "literal"])
def test_written_out_groupnorm_at_opset_11(back):
    """The region at opset 11 (ReduceSum's axes an attribute in the reference), the Reshape back by
    Shape(x) or a literal C (rewritten to the kept count)."""
    model, names = _written_out(11, [0, 1, -1], back)
    res = api.prune(model, ratio=0.5, importance="l2")
    r = res.report
    _assert_proof(r)
    stem, head = [n for n in model.graph.node if n.op_type == "Conv"]
    kept = _kept(r, stem.input[1], 16)
    w = _weights(model)
    x = np.random.default_rng(4).standard_normal((1, 3, 8, 8)).astype(np.float32)
    h = _run(model, {"x": x}, [stem.output[0]])[0][:, kept]
    normed = gn1(h, w[names["scale"]].reshape(-1)[kept], w[names["bias"]].reshape(-1)[kept])
    want = head_1x1(np.maximum(normed, 0), w[head.input[1]][:, kept], w[head.input[2]])
    assert _rel(_run(res.model, {"x": x})[0], want) <= 1e-5
    if back == "literal":
        reshape_back = [n for n in res.model.graph.node if n.op_type == "Reshape"][1]
        assert _weights(res.model)[reshape_back.input[1]].tolist() == [0, len(kept), 8, 8]


def test_a_literal_length_into_one_group_is_frozen_with_the_reason():
    """Reshape [0, 1, C*H*W]: the length would not follow the pruned channels: left whole, said why."""
    model, _ = _written_out(13, [0, 1, 16 * 64], "shape")
    an = api.analyze(model)
    grp = next(g for g in an.groups if g.size == 16)
    assert not grp.prunable and any("gives its length as a number" in r for r in grp.reasons), grp.reasons


# ---- PoolFormer: GroupNorm(1) around a pooling token mixer and an MLP, residual ------------------

def _poolformer_like(how: str) -> tuple[onnx.ModelProto, object]:
    """conv -> [x + (pool(GN1(x)) - GN1(x))] -> [x + conv(GN1(x))] -> conv: GroupNorm with one group,
    as the torch exporters write it (PoolFormer's norm)."""
    torch = pytest.importorskip("torch")

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = torch.nn.Conv2d(3, 16, 3, padding=1)
            self.n1, self.n2 = torch.nn.GroupNorm(1, 16), torch.nn.GroupNorm(1, 16)
            self.pool = torch.nn.AvgPool2d(3, 1, 1, count_include_pad=False)
            self.mlp = torch.nn.Conv2d(16, 16, 1)
            self.head = torch.nn.Conv2d(16, 4, 1)

        def forward(self, x):
            h = self.stem(x)
            t = self.n1(h)
            h = h + (self.pool(t) - t)
            h = h + self.mlp(torch.relu(self.n2(h)))
            return self.head(h)

    torch.manual_seed(0)
    net = Block().eval()
    with torch.no_grad():
        for n in (net.n1, net.n2):
            n.weight.uniform_(0.5, 1.5)
            n.bias.normal_()
    return torch_onnx(net, torch.randn(2, 3, 8, 8), how, dynamic_batch=True), net


@pytest.mark.parametrize("how", ["legacy13", "legacy17", "dynamo18"])
def test_poolformer_block_prunes_with_kept_statistics(how):
    """The trunk is one group (the residual sums); both GroupNorms normalise its kept channels. The
    check here runs the block in torch with the kept channels only (the pool averages per channel)."""
    import torch

    model, net = _poolformer_like(how)
    res = api.prune(model, ratio=0.5, importance="l2")
    r = res.report
    _assert_proof(r)
    assert len(r["norms_pruned"]) == 2 and r["channels"]["removed"] >= 8, (r["norms_pruned"], r["channels"])
    kept = _kept(r, "stem.weight", 16)
    mlp_kept = _kept(r, "mlp.weight", 16)
    assert mlp_kept == kept, "the MLP's output joins the trunk"
    x = np.random.default_rng(5).standard_normal((2, 3, 8, 8)).astype(np.float32)
    with torch.no_grad():
        h = net.stem(torch.from_numpy(x)).double()[:, kept]

        def norm(n, t):
            return torch.from_numpy(gn1(t.numpy(), n.weight.double().numpy()[kept], n.bias.double().numpy()[kept]))

        t = norm(net.n1, h)
        h = h + (net.pool(t) - t)
        h = h + torch.nn.functional.conv2d(torch.relu(norm(net.n2, h)), net.mlp.weight.double()[kept][:, kept],
                                           net.mlp.bias.double()[kept])
        want = torch.nn.functional.conv2d(h, net.head.weight.double()[:, kept], net.head.bias.double()).numpy()
    assert _rel(_run(res.model, {"x": x})[0], want) <= 1e-5
    if how != "dynamo18":
        assert r["verify"]["second_shape"]["passed"], "dynamic batch: proven at a second shape too"
