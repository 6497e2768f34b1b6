"""Axes with no channels of their own that a later consumer couples with channels (Rule.adopt).

Properties checked:
- ``F.normalize(h, dim=-1)`` as the dynamo exporter writes it (ReduceL2 -> Clip -> Expand to a
  constant shape -> Div; Hugging Face's Swin-V2 cosine attention, SwiftFormer): the norm expanded
  to h's channels holds copies of one value per row, so it takes h's channels and h's group prunes
  (the Div froze it as "combines channels with untracked tensor 'expand'"); the Expand's constant
  shape is restated to the kept count;
- a constant plus a run-time tensor broadcast over an axis (Hugging Face's Swin: the position bias
  [1, heads, T, T] plus the shifted-window mask [W, 1, T, T]) has the constant's positions there:
  the sum takes the heads of the attention scores it is added to and the bias is sliced with them;
- a position embedding that reaches the tokens through run-time reshapes, transposes, a resize
  and a Concat with a class position (PVT's TorchScript export) is sliced with the tokens'
  channels, and the computed shapes follow;
- the adoption is refused where another reader took the tensor as untracked before (an earlier
  node read it) or the tensor is a graph output: the channels then stay whole, as before;
- in every case the pruned model computes what the original computes with the removed channels
  zeroed at their producer (an independent check, no compressor code) and the proof passes.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from compressor import api
from tests.core.graphs import G, window_attention

T, C = 6, 8


def _run(model: onnx.ModelProto, feeds: dict) -> np.ndarray:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def _zero_producers(model: onnx.ModelProto, plan: list[dict], producers: dict[str, int]) -> onnx.ModelProto:
    """The original with the removed channels of each producer weight (name -> its output axis)
    set to zero: its output channels are then zero, which is what pruning them must compute."""
    kept = {(e["tensor"], e["axis"]): e["kept"] for e in plan}
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for t in out.graph.initializer:
        if t.name in producers and (t.name, producers[t.name]) in kept:
            arr = numpy_helper.to_array(t).copy()
            drop = np.ones(arr.shape[producers[t.name]], bool)
            drop[kept[(t.name, producers[t.name])]] = False
            np.moveaxis(arr, producers[t.name], 0)[drop] = 0
            t.CopyFrom(numpy_helper.from_array(arr, t.name))
    return out


def _check(model, res, producers: dict[str, int], feeds: dict) -> None:
    want = _run(_zero_producers(model, res.report["plan"], producers), feeds)
    got = _run(res.model, feeds)
    err = float(np.abs(got - want).max() / (np.abs(want).max() + 1e-12))
    assert err <= 1e-5, f"the pruned model differs from the original with removed channels zeroed by {err:.2e}"


def _kept(res, tensor: str, axis: int) -> int | None:
    entry = next((e for e in res.report["plan"] if e["tensor"] == tensor and e["axis"] == axis), None)
    return None if entry is None else len(entry["kept"])


# ---- F.normalize: Expand of a norm ------------------------------------------------------------

def normalize_block(reader: str = "none"):
    """h = x @ W1 + b1 [1, T, C]; y = (h / Expand(Clip(ReduceL2(h, -1)), [1, T, C])) @ W2.
    ``reader``: "identity_first" reads the expanded norm with an Identity placed before the Div
    (graph output beside y), "output" makes the expanded norm a graph output too."""
    g = G(3, opset=18)
    x = g.input("x", [1, T, 3])
    w1, b1 = g.rand(3, C, base="w1_"), g.rand(C, base="b1_")
    h = g.op("Add", [g.op("MatMul", [x, w1]), b1])
    norm = g.op("ReduceL2", [h, g.const(np.array([-1], np.int64), "axes")], keepdims=1)
    norm = g.op("Clip", [norm, g.const(np.array(1e-12, np.float32), "eps")])
    expanded = g.op("Expand", [norm, g.const(np.array([1, T, C], np.int64), "shape")])
    outs = []
    if reader == "identity_first":
        outs.append(g.op("Identity", [expanded]))
    y = g.op("MatMul", [g.op("Div", [h, expanded]), g.rand(C, 4, base="w2_")])
    outs.insert(0, y)
    if reader == "output":
        outs.append(expanded)
    return g.model(outs), w1, b1


def test_normalized_channels_prune_through_the_expanded_norm():
    model, w1, b1 = normalize_block()
    res = api.prune(model, ratio=0.5)
    rep = res.report
    assert rep["verify"]["passed"], rep["verify"]
    assert _kept(res, w1, 1) == C // 2, f"expected W1 to keep {C // 2} output channels; unprunable: {rep['unprunable']}"
    expand = next(n for n in res.model.graph.node if n.op_type == "Expand")
    shape = {t.name: numpy_helper.to_array(t) for t in res.model.graph.initializer}[expand.input[1]]
    assert shape.tolist() == [1, T, C // 2], f"the Expand's shape should be restated to the kept count: {shape}"
    x = np.random.default_rng(0).standard_normal((1, T, 3)).astype(np.float32)
    _check(model, res, {w1: 1, b1: 0}, {"x": x})


def test_expanded_norm_read_earlier_or_output_keeps_the_channels_whole():
    for reader in ("identity_first", "output"):
        model, w1, _ = normalize_block(reader)
        res = api.prune(model, ratio=0.5)
        rep = res.report
        assert rep["verify"]["passed"], rep["verify"]
        assert _kept(res, w1, 1) is None, f"{reader}: W1's channels should stay whole, plan: {rep['plan']}"
        reasons = [r for u in rep["unprunable"] for r in u["reasons"]]
        assert any("combines channels with untracked tensor" in r or "reaches graph output" in r for r in reasons), \
            f"{reader}: expected the Div's or the output's reason, got {reasons}"


# ---- position bias + window mask --------------------------------------------------------------

def test_window_bias_plus_mask_is_sliced_with_the_heads():
    model, proj, bias = window_attention(T, mask=True)
    res = api.prune(model, ratio=0.5)
    rep = res.report
    assert rep["verify"]["passed"], rep["verify"]
    assert _kept(res, bias, 1) == 2, f"expected the bias to keep 2 of 4 heads; plan: {rep['plan']}, " \
                                     f"unprunable: {rep['unprunable']}"
    assert _kept(res, proj["q"][0], 1) == 4, "expected 2 heads x 2 to stay in the query projection"
    rng = np.random.default_rng(1)
    feeds = {"x": rng.standard_normal((3, T, 8)).astype(np.float32),
             "mask": np.where(rng.random((3, 1, T, T)) < 0.3, -100.0, 0.0).astype(np.float32)}
    # removed heads: zero their value projection, the heads' outputs are then zero at the out projection
    _check(model, res, {proj["v"][0]: 1, proj["v"][1]: 0}, feeds)


# ---- a position embedding interpolated at run time --------------------------------------------

def interpolated_position_embedding(cls_token: bool):
    """PVT as the TorchScript exporter writes it: tokens = LayerNorm(flatten(conv(x))) [1, 16, C];
    the position embedding pe [1, 16, C] is reshaped to [1, 4, 4, C] by a target computed from the
    conv output's Shape, transposed to [1, C, 4, 4], resized to the conv output's H, W (sizes
    Concat(Shape(pe')[0:2], H, W)), reshaped back to [1, C, 16] (target [1, -1, H*W]) and transposed
    to [1, 16, C]; with ``cls_token``, a constant class position [1, 1, C] is concatenated before it
    and the tokens get a class token too. The sum goes through an MLP."""
    g = G(9, opset=17)
    x = g.input("x", [1, 3, 8, 8])
    conv_w, conv_b = g.rand(C, 3, 2, 2, base="patch"), g.rand(C, base="patch_b")
    feat = g.op("Conv", [x, conv_w, conv_b], kernel_shape=[2, 2], strides=[2, 2])  # [1, C, 4, 4]
    tokens = g.op("Transpose", [g.op("Reshape", [feat, g.const(np.array([1, C, -1], np.int64))])], perm=[0, 2, 1])
    tokens = g.op("LayerNormalization", [tokens, g.rand(C, positive=True), g.rand(C)], axis=-1)
    shape = g.op("Shape", [feat])
    hw = [g.op("Gather", [shape, g.const(np.array([a], np.int64))], axis=0) for a in (2, 3)]
    pe = g.rand(1, 16, C, base="pe")
    grid = g.op("Reshape", [pe, g.op("Concat", [g.const(np.array([1], np.int64)), *hw,
                                                g.const(np.array([-1], np.int64))], axis=0)])
    grid = g.op("Transpose", [grid], perm=[0, 3, 1, 2])
    nc = g.op("Slice", [g.op("Shape", [grid]), g.const(np.array([0], np.int64)), g.const(np.array([2], np.int64))])
    grid = g.op("Resize", [grid, "", "", g.op("Concat", [nc, *hw], axis=0)], mode="linear")
    flat = g.op("Reshape", [grid, g.op("Concat", [g.const(np.array([1, -1], np.int64)), g.op("Mul", hw)], axis=0)])
    pos = g.op("Transpose", [flat], perm=[0, 2, 1])
    if cls_token:
        pos = g.op("Concat", [g.rand(1, 1, C, base="cls_pos"), pos], axis=1)
        tokens = g.op("Concat", [g.rand(1, 1, C, base="cls"), tokens], axis=1)
    h = g.op("Add", [tokens, pos])
    hidden = g.op("Relu", [g.op("MatMul", [h, g.rand(C, 2 * C, base="fc1_")])])
    return g.model([g.op("MatMul", [hidden, g.rand(2 * C, 4, base="fc2_")])]), conv_w, conv_b, pe


def test_position_embedding_resized_at_run_time_is_sliced_with_the_tokens():
    for cls_token in (False, True):
        model, conv_w, conv_b, pe = interpolated_position_embedding(cls_token)
        res = api.prune(model, ratio=0.5)
        rep = res.report
        assert rep["verify"]["passed"], rep["verify"]
        assert _kept(res, conv_w, 0) == C // 2, f"cls_token={cls_token}: the token channels should prune: " \
                                                f"{rep['unprunable']}"
        assert _kept(res, pe, 2) == C // 2, f"cls_token={cls_token}: the position embedding is sliced with them"
        x = np.random.default_rng(2).standard_normal((1, 3, 8, 8)).astype(np.float32)
        # the LayerNorm pruned through: its statistics run over the kept channels, which zeroing
        # the producer does not reproduce; the proof (rep["verify"]) covers it, and the output's
        # shape and finiteness are checked here
        got = _run(res.model, {"x": x})
        assert got.shape == (1, 16 + cls_token, 4) and np.isfinite(got).all()


# ---- a Shape of the adopted tensor read earlier by a rule that checked it untracked -----------

def test_shape_of_expanded_norm_read_by_an_earlier_reshape_keeps_the_channels_whole():
    """``z.reshape(expanded.shape)`` analysed before the Div: its target read the expanded norm's
    length as a fixed one (untracked then); adopting the channels would change that length at run
    time (the pruned model failed: cannot reshape [1, 48] to [1, 6, 4]). The adoption is refused
    and the model still prunes nothing wrong."""
    g = G(3, opset=18)
    x = g.input("x", [1, T, 3])
    z = g.input("z", [1, T * C])
    w1, b1 = g.rand(3, C, base="w1_"), g.rand(C, base="b1_")
    h = g.op("Add", [g.op("MatMul", [x, w1]), b1])
    norm = g.op("ReduceL2", [h, g.const(np.array([-1], np.int64), "axes")], keepdims=1)
    expanded = g.op("Expand", [norm, g.const(np.array([1, T, C], np.int64), "shape")])
    other = g.op("Reshape", [z, g.op("Shape", [expanded])])
    y = g.op("MatMul", [g.op("Div", [h, expanded]), g.rand(C, 4, base="w2_")])
    model = g.model([y, other])
    res = api.prune(model, ratio=0.5)
    rep = res.report
    assert rep["verify"]["passed"], rep["verify"]
    assert _kept(res, w1, 1) is None, f"W1's channels should stay whole, plan: {rep['plan']}"
    rng = np.random.default_rng(3)
    feeds = {"x": rng.standard_normal((1, T, 3)).astype(np.float32),
             "z": rng.standard_normal((1, T * C)).astype(np.float32)}
    _check(model, res, {w1: 1, b1: 0}, feeds)
