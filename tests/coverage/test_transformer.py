"""A small BERT-style encoder: multi-head attention and an MLP, as exporters emit them.

Two flavours: opset 17 (LayerNormalization, constant Reshape targets) and opset 13 as older
HuggingFace exports look (LayerNorm decomposed into ReduceMean/Sub/Pow/Sqrt/Div, GELU as Erf,
Reshape targets computed from Shape with literal head counts in a Concat, and the merge back
reading its width from the residual stream's Shape, as Swin/timm do).

Property: the MLP hidden units (MatMul -> Gelu -> MatMul) and whole attention heads (Q/K/V
outputs and the output projection's input together, in blocks of head_dim) are pruned; the
Reshape head counts are updated; the residual stream is kept whole because it is the graph output
(a LayerNorm alone no longer stops it: tests/core/test_layernorm.py).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from compressor import api

from _graphs import GraphBuilder, prune_ok

S, D, H, DH, FF = 8, 32, 4, 8, 64


def layer_norm(g: GraphBuilder, x: str) -> str:
    gamma, beta = g.weight(D, positive=True, base="ln_g"), g.weight(D, scale=0.1, base="ln_b")
    if g.opset >= 17:
        return g.op("LayerNormalization", [x, gamma, beta], axis=-1, epsilon=1e-5)
    mu = g.op("ReduceMean", [x], axes=[-1])
    d = g.op("Sub", [x, mu])
    var = g.op("ReduceMean", [g.op("Pow", [d, g.const(np.float32(2))])], axes=[-1])
    y = g.op("Div", [d, g.op("Sqrt", [g.op("Add", [var, g.const(np.float32(1e-5))])])])
    return g.op("Add", [g.op("Mul", [y, gamma]), beta])


def gelu(g: GraphBuilder, x: str) -> str:
    if g.opset >= 20:
        return g.op("Gelu", [x])
    e = g.op("Erf", [g.op("Div", [x, g.const(np.float32(np.sqrt(2)))])])
    return g.op("Mul", [g.op("Mul", [x, g.const(np.float32(0.5))]), g.op("Add", [e, g.const(np.float32(1))])])


def target(g: GraphBuilder, x: str, tail: list[int], computed: bool, width_from: str | None = None) -> str:
    """[1, S, *tail] as a constant, or HF-style: Shape(x)[0], Shape(x)[1] and literal tail; with
    ``width_from``, Swin/timm-style ``x.reshape(B, N, C)`` where C is read from another tensor."""
    if not computed:
        return g.ints([1, S, *tail])

    def dim(t: str, i: int) -> str:
        return g.op("Unsqueeze", [g.op("Gather", [g.op("Shape", [t]), g.ints(i, "i")], axis=0), g.ints([0], "ax")])

    lits = [dim(width_from, 2)] if width_from else [g.ints([t], "lit") for t in tail]
    return g.op("Concat", [dim(x, 0), dim(x, 1)] + lits, axis=0)


def encoder_layer(g: GraphBuilder, h: str, mask: str, computed: bool) -> str:
    def heads(t: str, perm):
        t = g.op("Reshape", [t, target(g, t, [H, DH], computed)])
        return g.op("Transpose", [t], perm=perm)

    q = heads(g.linear(h, D, D), [0, 2, 1, 3])        # [1, H, S, DH]
    k = heads(g.linear(h, D, D), [0, 2, 3, 1])        # [1, H, DH, S]
    v = heads(g.linear(h, D, D), [0, 2, 1, 3])
    s = g.op("Div", [g.op("MatMul", [q, k]), g.const(np.float32(np.sqrt(DH)))])
    p = g.op("Softmax", [g.op("Add", [s, mask])], axis=-1)
    ctx = g.op("Transpose", [g.op("MatMul", [p, v])], perm=[0, 2, 1, 3])
    ctx = g.op("Reshape", [ctx, target(g, ctx, [D], computed, width_from=h)])   # C from the residual
    h = layer_norm(g, g.op("Add", [h, g.linear(ctx, D, D)]))
    m = g.linear(gelu(g, g.linear(h, D, FF)), FF, D)
    return layer_norm(g, g.op("Add", [h, m]))


def bert_like(opset: int, computed: bool, layers: int = 2) -> onnx.ModelProto:
    g = GraphBuilder(opset=opset)
    h = g.input("embeddings", [1, S, D])
    mask = g.input("attention_bias", [1, 1, 1, S])
    for _ in range(layers):
        h = encoder_layer(g, h, mask, computed)
    g.output(h, shape=[1, S, D])
    return g.model("bert_like")


FLAVOURS = [pytest.param(17, False, id="opset17-const-targets"), pytest.param(13, True, id="opset13-hf-computed")]


@pytest.mark.parametrize("opset,computed", FLAVOURS)
def test_heads_and_mlp_prune(opset, computed):
    model = bert_like(opset, computed)
    prune_ok(model, ratios=(0.25, 0.5))
    res = api.prune(model, ratio=0.5)
    mats = [n for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in
            {t.name for t in model.graph.initializer}]
    shapes = {t.name: tuple(t.dims) for t in res.model.graph.initializer}
    wq, wk, wv, wo, w1, w2 = mats[:6]
    for w in (wq, wk, wv):
        assert shapes[w.input[1]] == (D, D // 2), f"Q/K/V keep 2 of 4 whole heads: {shapes[w.input[1]]}"
    assert shapes[wo.input[1]] == (D // 2, D), "the output projection loses the same heads' rows"
    assert shapes[w1.input[1]] == (D, FF // 2) and shapes[w2.input[1]] == (FF // 2, D), "MLP hidden halves"


@pytest.mark.parametrize("opset,computed", FLAVOURS)
def test_head_groups_are_whole_heads(opset, computed):
    an = api.analyze(bert_like(opset, computed, layers=1))
    heads = [g for g in an.prunable if g.size == H]
    assert len(heads) == 1, f"expected one prunable group of {H} heads, got {[(g.size, g.origin) for g in an.prunable]}"
    inners = {m.inner for m in heads[0].members if m.role != "param"}
    assert inners == {DH}, f"each head should own {DH} consecutive features, got inner sizes {inners}"
    resid = [g for g in an.groups if g.size == D and not g.prunable]
    assert resid, "the residual stream reaches the graph output and must stay whole"
    assert any("graph output" in r for g in resid for r in g.reasons), [g.reasons for g in resid]


def test_reshape_head_counts_are_rewritten():
    res = api.prune(bert_like(17, False, layers=1), ratio=0.5)
    targets = []
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in res.model.graph.initializer}
    for n in res.model.graph.node:
        if n.op_type == "Reshape":
            targets.append(inits[n.input[1]].tolist())
    assert [1, S, H // 2, DH] in targets and [1, S, D // 2] in targets, f"head counts not updated: {targets}"
