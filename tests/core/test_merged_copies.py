"""A channel axis merged into an outer axis and split back (rules/reshape.py: merged copies).

The dynamo exporter writes ``scaled_dot_product_attention``'s k^T as [W, heads, T, d] ->
Reshape [W * heads, T, d] -> Transpose -> Reshape [W, heads, d, T] (Hugging Face's Swin). The merge
holds the heads once per window; the split back must give the windows to the outer axis and the
heads to the inner one. It coarsened the heads instead (all heads one block, as if each window
position held a block of heads), so the keys' heads could not meet the queries' heads and both
stayed whole ("MatMul ... batch axis 1 combines channels with untracked tensor").

Property checked: with the keys merged and split back, whole heads prune exactly as with a plain
transpose (the same plan), the proof passes, and the pruned model computes what the original
computes with the removed heads' values zeroed (an independent check).
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
from onnx import numpy_helper

from compressor import api
from tests.core.graphs import window_attention

TOKENS = 5


def _run(model, feeds):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def test_keys_merged_with_the_windows_and_split_back_keep_their_heads():
    plans = {}
    for merged in (False, True):
        model, proj, _ = window_attention(TOKENS, keys_merged=merged)
        res = api.prune(model, ratio=0.5)
        rep = res.report
        assert rep["verify"]["passed"], rep["verify"]
        kept = {e["tensor"]: e["kept"] for e in rep["plan"] if e["axis"] == 1}
        assert len(kept.get(proj["k"][0], [])) == 4, \
            f"keys_merged={merged}: expected 2 of 4 heads (4 of 8 columns) kept in k's projection; " \
            f"unprunable: {rep['unprunable']}"
        assert kept[proj["k"][0]] == kept[proj["q"][0]], "queries and keys must keep the same heads"
        plans[merged] = [(e["axis"], e["kept"]) for e in rep["plan"]]
        # independent check: zero the removed heads' values in the original
        v_w, v_b = proj["v"]
        ref = type(model)()
        ref.CopyFrom(model)
        drop = np.setdiff1d(np.arange(8), kept[v_w])
        for t in ref.graph.initializer:
            if t.name in (v_w, v_b):
                a = numpy_helper.to_array(t).copy()
                a[..., drop] = 0
                t.CopyFrom(numpy_helper.from_array(a, t.name))
        x = np.random.default_rng(3).standard_normal((3, TOKENS, 8)).astype(np.float32)
        want, got = _run(ref, {"x": x}), _run(res.model, {"x": x})
        assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max(), "pruned != original with removed heads zeroed"
    assert plans[True] == plans[False], "the merged keys should give the plain transpose's plan"
