"""Reshapes that regroup the channel axis with the axes after it (rules/reshape.py:_regroup).

``x.view(b, c * h, w).view(b, c, h * w)`` and ``x.view(b, g, -1)`` move each channel's elements
between axes without interleaving channels: in the flattened block of axes a channel owns a run of
consecutive elements. Where that run is a whole number of the output axis' positions the channels
map straight through; where one output position holds several whole channels, the channels are
kept or removed in blocks of that many (whatever mixes the inner axes then mixes one block only).
Both used to freeze the channels ("regroups channel axis 1 with other axes").
"""

from __future__ import annotations

import numpy as np
from onnx import numpy_helper

from compressor import api
from tests.core._dynamic_graphs import masked_original
from tests.core.graphs import G


def _run(model, x):
    import onnxruntime as ort

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def _independent_check(model, res):
    """The pruned model equals the original with the removed input channels of the last conv zeroed."""
    x = np.random.default_rng(5).standard_normal((1, 3, 8, 8)).astype(np.float32)
    ref = _run(masked_original(model, res.report["plan"]), x)
    got = _run(res.model, x)
    assert np.max(np.abs(ref - got)) <= 1e-5 * max(1.0, float(np.max(np.abs(ref))))


def _kept_of_last_conv(res):
    last = [n for n in res.model.graph.node if n.op_type == "Conv"][-1]
    return next(e["kept"] for e in res.report["plan"] if e["tensor"] == last.input[1] and e["axis"] == 1)


def _chain(targets, widths=(16,), mix=None):
    """conv(s) -> Concat (if several widths) -> Reshape through ``targets`` -> [op over the last
    axis] -> Reshape back to [1, C, 8, 8] -> 1x1 conv."""
    g = G(2)
    x = g.input("x", [1, 3, 8, 8])
    parts = [g.conv(x, 3, c, k=3) for c in widths]
    h = parts[0] if len(parts) == 1 else g.op("Concat", parts, axis=1)
    c = sum(widths)
    for i, t in enumerate(targets):
        h = g.op("Reshape", [h, g.const(np.array(t, np.int64), "s")])
        if mix is not None and i == len(targets) - 1:
            h = g.op(mix, [h], axis=len(t) - 1)
    h = g.op("Reshape", [h, g.const(np.array([1, c, 8, 8], np.int64), "s")])
    return g.model([g.conv(h, c, 4, k=1)])


def test_view_c_times_h_then_c_maps_channels_through():
    """[1, 16, 8, 8] -> [1, 128, 8] -> [1, 16, 64] -> Softmax over 64 -> back: channel c owns rows
    8c..8c+7, then position c again; the static exports of ``view(b, 16 * h, w)`` and
    ``view(b, 16, h * w)``."""
    model = _chain([[1, 128, 8], [1, 16, 64]], mix="Softmax")
    res = api.prune(model, ratio=0.5)
    assert res.report["channels"]["removed"] == 8 and res.report["verify"]["passed"], res.report["channels"]
    shapes = {t.name: list(t.dims) for t in res.model.graph.initializer}
    reshaped = [numpy_helper.to_array(t).tolist() for t in res.model.graph.initializer if list(t.dims) == [3]]
    assert [1, 64, 8] in reshaped and [1, 8, 64] in reshaped, reshaped
    assert shapes[res.model.graph.node[-1].input[1]] == [4, 8, 1, 1]
    _independent_check(model, res)


def test_positions_holding_several_channels_keep_whole_blocks():
    """[1, 8, 8, 8] -> [1, 2, 256]: each of the 2 positions holds 4 whole channels, and the Softmax
    over 256 mixes them: channels go 4 at a time, a whole position each."""
    model = _chain([[1, 2, 256]], widths=(8,), mix="Softmax")
    res = api.prune(model, ratio=0.5)
    assert res.report["verify"]["passed"]
    assert _kept_of_last_conv(res) in ([0, 1, 2, 3], [4, 5, 6, 7])
    _independent_check(model, res)


def test_a_position_that_cuts_through_a_concats_parts_freezes():
    """A Concat of 3 and 5 channels: a position of 4 channels would hold parts of both."""
    model = _chain([[1, 2, 256]], widths=(3, 5), mix="Softmax")
    reasons = [r for grp in api.analyze(model).groups for r in grp.reasons]
    assert any("cut through its channels" in r for r in reasons), reasons
    res = api.prune(model, ratio=0.5)
    assert res.report["channels"]["removed"] == 0
