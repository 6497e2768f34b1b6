"""A LayerNorm written out in elementary ops (torch's TorchScript exports at opset <= 16) is pruned
through like LayerNormalization (compressor/analysis/rules/layernorm_decomposed.py).

    mean = ReduceMean(x, [-1]); d = x - mean; var = ReduceMean(d ** 2 | d * d, [-1])
    y = d / sqrt(var + eps) | d * reciprocal(sqrt(var + eps)); out = y * gamma + beta (optional)

These tests check that the exact pattern's channels prune and the proof passes, that the pruned
model is, independently of the proof, the same network on the kept channels computed in numpy
(its LayerNorms normalising over the kept channels only), that every near miss keeps its channels
whole and says why, that --freeze-norms and --drop-layers respect it, and that a real torch export
at opset 13 prunes as far as its opset-17 export (LayerNormalization) does.
"""

from __future__ import annotations

import io
import json
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from compressor import api
from compressor.cli import main
from compressor.surgery.drop import removal_effect
from compressor.verify.norms import masked_normalization
from tests.core.graphs import G

S, DIN, C = 6, 8, 16  # sequence length, input features, residual width


def written_out_layernorm(g: G, x: str, c: int, *, axes=(-1,), square: str = "pow", divide: str = "div",
                          affine: bool = True, channels_first: bool = False, eps=None, exponent: float = 2.0,
                          parts: dict | None = None) -> str:
    """The elementary-op LayerNorm of ``x``; the parameters ``gamma``/``beta`` and the intermediates
    (mean, d, var, std) are recorded in ``parts``. Opset >= 18 passes the ReduceMean axes as an input."""
    parts = {} if parts is None else parts

    def mean(t: str) -> str:
        if g.opset >= 18:
            return g.op("ReduceMean", [t, g.const(np.array(axes, np.int64))], keepdims=1)
        return g.op("ReduceMean", [t], axes=list(axes), keepdims=1)

    parts["mean"] = mean(x)
    d = parts["d"] = g.op("Sub", [x, parts["mean"]])
    sq = g.op("Pow", [d, g.const(np.array(exponent, np.float32))]) if square == "pow" else g.op("Mul", [d, d])
    parts["var"] = mean(sq)
    e = g.const(np.array(1e-5, np.float32) if eps is None else eps)
    std = parts["std"] = g.op("Sqrt", [g.op("Add", [parts["var"], e])])
    y = g.op("Div", [d, std]) if divide == "div" else g.op("Mul", [d, g.op("Reciprocal", [std])])
    if affine:
        shape = (c, 1, 1) if channels_first else (c,)
        parts["gamma"], parts["beta"] = g.rand(*shape, positive=True), g.rand(*shape)
        y = g.op("Add", [g.op("Mul", [y, parts["gamma"]]), parts["beta"]])
    return y


def transformer_block(opset: int = 13, extra_use: str | None = None, **ln) -> tuple[onnx.ModelProto, dict]:
    """x -> Linear(DIN, C) = h; h + MLP(LN1(h)) = s; Linear(C, 4)(LN2(s)). ``extra_use`` names an
    intermediate of LN1 that is also read outside it (added to LN1's output through a Relu).
    Returns the model and the names of its weights."""
    g = G(opset=opset)
    w = {"win": g.rand(DIN, C), "bin": g.rand(C), "w1": g.rand(C, 2 * C), "c1": g.rand(2 * C),
         "w2": g.rand(2 * C, C), "c2": g.rand(C), "wout": g.rand(C, 4), "bout": g.rand(4)}
    x = g.input("x", [1, S, DIN])
    h = g.op("Add", [g.op("MatMul", [x, w["win"]]), w["bin"]])
    p1, p2 = {}, {}
    a = written_out_layernorm(g, h, C, parts=p1, **ln)
    if extra_use:
        a = g.op("Add", [a, g.op("Relu", [p1[extra_use]])])
    u = g.op("Relu", [g.op("Add", [g.op("MatMul", [a, w["w1"]]), w["c1"]])])
    s = g.op("Add", [h, g.op("Add", [g.op("MatMul", [u, w["w2"]]), w["c2"]])])
    z = written_out_layernorm(g, s, C, parts=p2, **{k: v for k, v in ln.items() if k in ("square", "divide", "affine")})
    y = g.op("Add", [g.op("MatMul", [z, w["wout"]]), w["bout"]])
    w.update({f"{k}1": v for k, v in p1.items() if k in ("gamma", "beta")})
    w.update({f"{k}2": v for k, v in p2.items() if k in ("gamma", "beta")})
    return g.model([y]), w


def convnext_block(channels_first: bool = False, opset: int = 13) -> tuple[onnx.ModelProto, dict]:
    """1x1 stem conv = h; a depthwise 3x3 conv; the LayerNorm (channels-last: between transposes over
    the last axis, as ConvNeXt's blocks; ``channels_first``: over axis 1 of NCHW, as its downsampling
    layers); an MLP of 1x1 convs / MatMuls; h + that; a 1x1 conv head."""
    g = G(opset=opset)
    w = {"ws": g.rand(C, 3, 1, 1), "bs": g.rand(C), "wd": g.rand(C, 1, 3, 3), "bd": g.rand(C),
         "wo": g.rand(4, C, 1, 1), "bo": g.rand(4)}
    x = g.input("x", [1, 3, 8, 8])
    h = g.op("Conv", [x, w["ws"], w["bs"]], kernel_shape=[1, 1])
    d = g.op("Conv", [h, w["wd"], w["bd"]], kernel_shape=[3, 3], pads=[1, 1, 1, 1], group=C)
    parts = {}
    if channels_first:
        w.update({"w1": g.rand(4 * C, C, 1, 1), "c1": g.rand(4 * C), "w2": g.rand(C, 4 * C, 1, 1), "c2": g.rand(C)})
        t = written_out_layernorm(g, d, C, axes=(1,), channels_first=True, parts=parts)
        t = g.op("Relu", [g.op("Conv", [t, w["w1"], w["c1"]], kernel_shape=[1, 1])])
        t = g.op("Conv", [t, w["w2"], w["c2"]], kernel_shape=[1, 1])
    else:
        w.update({"w1": g.rand(C, 4 * C), "c1": g.rand(4 * C), "w2": g.rand(4 * C, C), "c2": g.rand(C)})
        t = g.op("Transpose", [d], perm=[0, 2, 3, 1])
        t = written_out_layernorm(g, t, C, square="mul", divide="recip", parts=parts)
        t = g.op("Relu", [g.op("Add", [g.op("MatMul", [t, w["w1"]]), w["c1"]])])
        t = g.op("Add", [g.op("MatMul", [t, w["w2"]]), w["c2"]])
        t = g.op("Transpose", [t], perm=[0, 3, 1, 2])
    s = g.op("Add", [h, t])
    y = g.op("Conv", [s, w["wo"], w["bo"]], kernel_shape=[1, 1])
    w.update(gamma=parts["gamma"], beta=parts["beta"])
    return g.model([y]), w


# --- an independent numpy model of the pruned network ------------------------------------------

def _weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t).astype(np.float64) for t in model.graph.initializer}


def _kept(report: dict, tensor: str, axis: int, size: int) -> np.ndarray:
    """The indices the plan keeps along ``axis`` of ``tensor`` (all where the plan does not slice it)."""
    hit = [e["kept"] for e in report["plan"] if e["tensor"] == tensor and e["axis"] == axis]
    return np.array(hit[0] if hit else range(size))


def _ln(t: np.ndarray, axis: int = -1, eps: float = 1e-5) -> np.ndarray:
    """LayerNorm of ``t`` over ``axis``, in float64."""
    d = t - t.mean(axis=axis, keepdims=True)
    return d / np.sqrt((d * d).mean(axis=axis, keepdims=True) + eps)


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def _dwconv3(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Depthwise 3x3 convolution, padding 1, of NCHW ``x``."""
    hh, ww = x.shape[2:]
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    out = sum(xp[:, :, i:i + hh, j:j + ww] * w[None, :, 0, i, j, None, None] for i in range(3) for j in range(3))
    return out + b[None, :, None, None]


def _conv1(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.einsum("nchw,oc->nohw", x, w[:, :, 0, 0]) + b[None, :, None, None]


def _assert_prunes_through(report: dict, removed: int, norms: int) -> None:
    assert report["verify"]["passed"] and report["verify"]["max_rel_err"] <= 1e-5, report["verify"]
    assert report["channels"]["removed"] == removed, (
        f"expected {removed} channels removed (the LayerNorm's group too), got {report['channels']}; "
        f"unprunable: {report['unprunable']}")
    assert len(report["norms_pruned"]) == norms, f"expected {norms} written-out LayerNorms pruned through: " \
                                                 f"{report['norms_pruned']}"


VARIANTS = [  # (opset, square, divide, affine): torch's exports write Pow and Div; attribute / input axes
    (13, "pow", "div", True),
    (13, "mul", "recip", False),
    (11, "pow", "recip", True),  # the reference's ReduceSum takes its axes as an attribute before opset 13
    (18, "pow", "div", True),
    (18, "mul", "recip", True),
    (18, "pow", "div", False),
]


@pytest.mark.parametrize("opset,square,divide,affine", VARIANTS)
def test_transformer_block_prunes_through_written_out_layernorms(opset, square, divide, affine):
    model, w = transformer_block(opset, square=square, divide=divide, affine=affine)
    res = api.prune(model, ratio=0.5, importance="l2")
    r = res.report
    _assert_prunes_through(r, removed=C // 2 + C, norms=2)  # half the residual stream and of the MLP
    got = {n.op_type for n in res.model.graph.node}
    assert "ReduceMean" in got and "LayerNormalization" not in got, "the pattern stays as written"

    # independently of the proof: the pruned model is the block on the kept channels, its LayerNorms
    # normalising over the kept channels only
    p = _weights(model)
    kr, kh = _kept(r, w["bin"], 0, C), _kept(r, w["c1"], 0, 2 * C)
    assert len(kr) == C // 2 and len(kh) == C

    def ln(t, k):
        out = _ln(t)
        return out * p[w[f"gamma{k}"]][kr] + p[w[f"beta{k}"]][kr] if affine else out

    x = np.random.default_rng(1).standard_normal((1, S, DIN)).astype(np.float32)
    h = x @ p[w["win"]][:, kr] + p[w["bin"]][kr]
    u = np.maximum(ln(h, 1) @ p[w["w1"]][np.ix_(kr, kh)] + p[w["c1"]][kh], 0)
    s = h + u @ p[w["w2"]][np.ix_(kh, kr)] + p[w["c2"]][kr]
    want = ln(s, 2) @ p[w["wout"]][kr] + p[w["bout"]]
    np.testing.assert_allclose(_run(res.model, x), want, rtol=1e-4, atol=1e-4,
                               err_msg="the pruned model is not LayerNorm over the kept channels")


@pytest.mark.parametrize("channels_first", [False, True], ids=["channels_last", "channels_first"])
def test_convnext_block_prunes_through_written_out_layernorm(channels_first):
    model, w = convnext_block(channels_first)
    res = api.prune(model, ratio=0.5, importance="l2")
    r = res.report
    _assert_prunes_through(r, removed=C // 2 + 2 * C, norms=1)
    gammas = [t for t in res.model.graph.initializer if t.name == w["gamma"]]
    assert [int(np.prod(t.dims)) for t in gammas] == [C // 2], "gamma must be sliced with the channels"

    p = _weights(model)
    kr = _kept(r, w["bs"], 0, C)
    x = np.random.default_rng(2).standard_normal((1, 3, 8, 8)).astype(np.float32)
    h = _conv1(x, p[w["ws"]][kr], p[w["bs"]][kr])
    d = _dwconv3(h, p[w["wd"]][kr], p[w["bd"]][kr])
    gamma, beta = p[w["gamma"]].reshape(-1)[kr], p[w["beta"]].reshape(-1)[kr]
    if channels_first:
        kh = _kept(r, w["c1"], 0, 4 * C)
        t = _ln(d, axis=1) * gamma[:, None, None] + beta[:, None, None]
        t = np.maximum(_conv1(t, p[w["w1"]][np.ix_(kh, kr)], p[w["c1"]][kh]), 0)
        t = _conv1(t, p[w["w2"]][np.ix_(kr, kh)], p[w["c2"]][kr])
    else:
        kh = _kept(r, w["c1"], 0, 4 * C)
        t = _ln(d.transpose(0, 2, 3, 1)) * gamma + beta
        t = np.maximum(t @ p[w["w1"]][np.ix_(kr, kh)] + p[w["c1"]][kh], 0)
        t = (t @ p[w["w2"]][np.ix_(kh, kr)] + p[w["c2"]][kr]).transpose(0, 3, 1, 2)
    want = _conv1(h + t, p[w["wo"]][:, kr], p[w["bo"]])
    np.testing.assert_allclose(_run(res.model, x), want, rtol=1e-4, atol=1e-4,
                               err_msg="the pruned model is not LayerNorm over the kept channels")


@pytest.mark.parametrize("axis,opset", [(-1, 13), (1, 11), (1, 18)])
def test_masked_reference_is_the_layernorm_of_the_kept_channels(axis, opset):
    """verify/norms.py's reference for a written-out LayerNorm (no affine; axis 1 of NCHW too)."""
    x = np.random.default_rng(4).standard_normal((2, 6, 3, 5)).astype(np.float32) * 2 + 1
    n = x.shape[axis]
    mask = np.zeros(n, np.float32)
    kept = [0, 2, 5] if n == 6 else [1, 2, 4]
    mask[kept] = 1
    nodes, consts = masked_normalization("x", "y", mask, "ref", axis=axis % 4, rank=4, epsilon=1e-3, opset=opset)
    graph = helper.make_graph(nodes, "ref", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], consts)
    got = _run(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=9), x)
    xk = np.take(x.astype(np.float64), kept, axis=axis)
    np.testing.assert_allclose(np.take(got, kept, axis=axis), _ln(xk, axis=axis, eps=1e-3), rtol=1e-5, atol=1e-5)
    assert not np.take(got, [i for i in range(n) if i not in kept], axis=axis).any(), "removed channels output 0"


# --- near misses: the channels stay whole, and the reason says why ---------------------------------

NEAR_MISSES = {
    "reduces over two axes": (dict(axes=(-2, -1)), "reduces over several axes"),
    "eps not a scalar": (dict(eps=np.full((1, S, 1), 1e-5, np.float32)), "epsilon is not a scalar constant"),
    "centred input used elsewhere": (dict(extra_use="d"), "is not read by exactly the square and the division"),
    "mean used elsewhere": (dict(extra_use="mean"), "read by 2 nodes"),
    "std used elsewhere": (dict(extra_use="std"), "read by 2 nodes"),
    "Pow exponent 3": (dict(exponent=3.0), "exponent is not the constant 2"),
}


def _residual_group(an):
    grp = [g for g in an.groups if g.size == C and any(m.tensor for m in g.members)]
    assert len(grp) == 1, [g.to_dict() for g in an.groups]
    return grp[0]


@pytest.mark.parametrize("case", list(NEAR_MISSES))
@pytest.mark.parametrize("opset", [13, 18])
def test_near_miss_stays_frozen_with_its_reason(case, opset):
    kwargs, why = NEAR_MISSES[case]
    model, _ = transformer_block(opset, **kwargs)
    an = api.analyze(model)
    grp = _residual_group(an)
    assert not grp.prunable, f"{case}: the residual stream must stay whole"
    assert any("not an exact LayerNorm decomposition" in r and why in r for r in grp.reasons), (
        f"{case}: expected a reason naming '{why}', got {grp.reasons}")
    assert len(an.ctx.norm_points) == 1, "only the second, exact LayerNorm is recognised"


def test_freeze_norms_keeps_written_out_layernorms_whole():
    model, _ = transformer_block(13)
    grp = _residual_group(api.analyze(model, prune_norms=False))
    assert not grp.prunable
    assert any("LayerNorm written out" in r and "--freeze-norms" in r for r in grp.reasons), grp.reasons
    res = api.prune(model, ratio=0.5, prune_norms=False)
    assert res.report["norms_pruned"] == [] and res.report["verify"]["passed"]
    assert res.report["channels"]["removed"] == C, "only the MLP hidden units may go"


def test_plain_mean_over_channels_is_a_plain_consumer():
    """A channel mean that is no LayerNorm (its result scales the input) is no norm point: it is a
    consumer rescaled to the masked original (tests/core/test_reduce_channels.py)."""
    g = G(opset=13)
    x = g.input("x", [1, S, DIN])
    h = g.op("Add", [g.op("MatMul", [x, g.rand(DIN, C)]), g.rand(C)])
    m = g.op("ReduceMean", [h], axes=[-1], keepdims=1)
    y = g.op("MatMul", [g.op("Mul", [h, m]), g.rand(C, 4)])
    model = g.model([y])
    an = api.analyze(model)
    assert _residual_group(an).prunable and not an.ctx.norm_points
    res = api.prune(model, ratio=0.5)
    assert res.report["verify"]["passed"] and not res.report.get("norms_pruned"), res.report.get("norms_pruned")


def test_drop_layers_keeps_a_channel_for_the_written_out_layernorm():
    """Removing the residual stream whole would leave the LayerNorms nothing to normalise."""
    model, w = transformer_block(13)
    an = api.analyze(model)
    grp = _residual_group(an)
    assert grp.prunable
    eff = removal_effect(an, {grp.id})
    assert eff.why and "ReduceMean" in eff.why and "would be left with none" in eff.why, eff.why


# --- a real torch export ------------------------------------------------------------------------

def _torch_block(opset: int):
    torch = pytest.importorskip("torch")
    nn = torch.nn

    class Block(nn.Module):
        def __init__(self, c: int = 32):
            super().__init__()
            self.inp, self.ln1, self.ln2 = nn.Linear(DIN, c), nn.LayerNorm(c), nn.LayerNorm(c)
            self.fc1, self.fc2, self.out = nn.Linear(c, 2 * c), nn.Linear(2 * c, c), nn.Linear(c, 4)

        def forward(self, x):
            h = self.inp(x)
            h = h + self.fc2(torch.relu(self.fc1(self.ln1(h))))
            return self.out(self.ln2(h))

    torch.manual_seed(0)
    m = Block().eval()
    with torch.no_grad():
        for ln in (m.ln1, m.ln2):  # trained-looking, distinct parameters
            ln.weight.uniform_(0.5, 1.5)
            ln.bias.normal_()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(m, (torch.randn(1, S, DIN),), buf, opset_version=opset, dynamo=False,
                          input_names=["x"], output_names=["y"])
    return m, onnx.load_from_string(buf.getvalue())


def test_torch_opset13_export_prunes_like_its_layernormalization_export(tmp_path):
    torch = pytest.importorskip("torch")
    m, model = _torch_block(13)
    assert "LayerNormalization" not in {n.op_type for n in model.graph.node}, "opset 13 writes LayerNorm out"
    src = tmp_path / "m13.onnx"
    onnx.save(model, src)
    out = CliRunner().invoke(main, ["prune", str(src), "-o", str(tmp_path / "s13.onnx"), "--ratio", "0.5", "--json"])
    assert out.exit_code == 0, out.output
    r = json.loads(out.stdout)
    _assert_prunes_through(r, removed=16 + 32, norms=2)
    r17 = api.prune(_torch_block(17)[1], ratio=0.5).report
    assert r17["channels"] == r["channels"], "the opset-13 export must prune as far as the opset-17 one"

    # the pruned model against torch's own layer_norm on the kept channels
    sd = {k: v.detach().double() for k, v in m.state_dict().items()}
    kr, kh = _kept(r, "inp.bias", 0, 32), _kept(r, "fc1.bias", 0, 64)
    f = torch.nn.functional
    x = torch.randn(1, S, DIN, dtype=torch.float64)
    with torch.no_grad():
        h = f.linear(x, sd["inp.weight"][kr], sd["inp.bias"][kr])
        a = f.layer_norm(h, (len(kr),), sd["ln1.weight"][kr], sd["ln1.bias"][kr])
        u = torch.relu(f.linear(a, sd["fc1.weight"][kh][:, kr], sd["fc1.bias"][kh]))
        s = h + f.linear(u, sd["fc2.weight"][kr][:, kh], sd["fc2.bias"][kr])
        want = f.linear(f.layer_norm(s, (len(kr),), sd["ln2.weight"][kr], sd["ln2.bias"][kr]),
                        sd["out.weight"][:, kr], sd["out.bias"]).numpy()
    got = _run(onnx.load(tmp_path / "s13.onnx"), x.numpy().astype(np.float32))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
