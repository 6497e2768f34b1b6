"""Gather: the identity ``as_strided`` index the dynamo exporter emits before a classifier's
LayerNorm2d (ConvNeXt), the class-token select of a ViT, and embedding tables.

Property: an identity index over a channel axis passes the channels through (and is rewritten to
the kept count); any other index over a channel axis freezes the group; the pruned model
reproduces the masked original.
"""

from __future__ import annotations

import numpy as np

from compressor import api

from _graphs import GraphBuilder, prune_ok


def as_strided_model(perm: bool = False):
    g = GraphBuilder(opset=18)
    x = g.input("x", [1, 3, 8, 8])
    y = g.conv_bn_relu(g.conv_bn_relu(x, 3, 16), 16, 24)
    m = g.op("ReduceMean", [y, g.ints([2, 3], "axes")], keepdims=1)          # [1, 24, 1, 1]
    flat = g.op("Reshape", [m, g.ints([-1])])                                 # [24]
    idx = np.arange(24, dtype=np.int64)
    if perm:
        idx = idx[::-1].copy()
    z = g.op("Gather", [flat, g.ints(idx.reshape(1, 24, 1, 1), "idx")], axis=0)  # [1, 24, 1, 1]
    z = g.op("Flatten", [z])
    g.output(g.op("Gemm", [z, g.weight(10, 24)], transB=1))
    return g.model("as_strided")


def test_identity_gather_passes_channels():
    reports = prune_ok(as_strided_model())
    assert reports[-1]["groups"]["pruned"] == 2, f"both conv groups should prune: {reports[-1]['groups']}"
    assert not reports[-1]["barriers"]


def test_permuting_gather_freezes_its_group():
    reports = prune_ok(as_strided_model(perm=True))
    assert reports[-1]["groups"]["pruned"] == 1, "the permuted 24-channel group must stay whole"


def class_token_and_embedding():
    g = GraphBuilder(opset=13)
    ids = g.input("ids", [1, 6], dtype=7)                                    # int64 token ids
    table = g.weight(50, 16, base="embedding")
    e = g.op("Gather", [table, ids], axis=0)                                  # [1, 6, 16]
    h = g.op("Relu", [g.linear(e, 16, 32)])
    cls = g.op("Gather", [h, g.ints(0, "tok")], axis=1)                       # [1, 32]
    g.output(g.op("Gemm", [cls, g.weight(4, 32)], transB=1))
    return g.model("tokens")


def test_embedding_columns_and_class_token():
    model = class_token_and_embedding()
    reports = prune_ok(model)
    assert reports[-1]["groups"]["pruned"] == 2, "embedding columns and hidden units both prune"
    res = api.prune(model, ratio=0.5)
    shapes = {t.name: tuple(t.dims) for t in res.model.graph.initializer}
    emb = next(n for n in shapes if n.startswith("embedding"))
    assert shapes[emb] == (50, 8), f"the embedding table keeps its rows and half its columns: {shapes[emb]}"
