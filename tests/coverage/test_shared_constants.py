"""Constants shared by several nodes: deliberate weight sharing and exporter deduplication.

The dynamo exporter stores identical constants once (two zero biases of equal length become one
initializer). Slicing a shared constant couples the groups of every node that reads it.

Property: sharing only adds coupling (the tied groups lose the same channels), the model stays
valid and reproduces the masked original.
"""

from __future__ import annotations

import numpy as np

from compressor import api

from _graphs import GraphBuilder, prune_ok


def deduplicated_bias_model():
    g = GraphBuilder(opset=13)
    x = g.input("x", [1, 3, 8, 8])
    zeros = g.const(np.zeros(16, np.float32), "zero_bias")
    a = g.op("Relu", [g.op("Conv", [x, g.weight(16, 3, 3, 3), zeros], pads=[1] * 4)])
    b = g.op("Relu", [g.op("Conv", [a, g.weight(16, 16, 3, 3), zeros], pads=[1] * 4)])
    c = g.op("Relu", [g.conv(b, 16, 24)])
    g.output(g.op("Gemm", [g.op("Flatten", [g.op("GlobalAveragePool", [c])]), g.weight(5, 24)], transB=1))
    return g.model("dedup")


def test_shared_bias_ties_groups_and_verifies():
    model = deduplicated_bias_model()
    prune_ok(model)
    an = api.analyze(model)
    tied = [gr for gr in an.groups if any(m.tensor.startswith("zero_bias") for m in gr.members)]
    assert len(tied) == 1 and tied[0].prunable, "both convs reading the shared bias form one prunable group"
