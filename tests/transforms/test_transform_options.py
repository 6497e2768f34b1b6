"""The exact transforms inside `compress` (found by exploring them): what --exclude, --no-verify and
a budget mean around them, gates given as Constant nodes, shared weights, learned metadata, and the
proof's tolerance for near-identical filters."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import helper

from compressor import api
from compressor.importance.learned import KEY as LEARNED_KEY
from compressor.surgery import fold_constant_channels, fold_gates, merge_identical
from tests.core.graphs import G

from ._graphs import chain, copy_channels, inits, rel_err
from .test_fold import _head_graph


@pytest.mark.parametrize("form", ["value_float", "value_floats", "value"])
def test_a_gate_given_as_a_constant_node_folds_and_the_node_goes(form):
    """Mul(conv, Constant(value_float=0.5)) used to crash the fold (exit 1): only ``value`` was read."""
    g = G()
    x = g.input("x", [1, 3, 8, 8])
    c = g.conv(x, 3, 8)
    value = {"value_float": 0.5, "value_floats": [0.5] * 8,
             "value": onnx.numpy_helper.from_array(np.full((1, 8, 1, 1), 0.5, np.float32))}[form]
    g.nodes.append(helper.make_node("Constant", [], ["gate"], **{form: value}))
    if form == "value_floats":
        gate = g.op("Reshape", ["gate", g.const(np.array([1, 8, 1, 1], np.int64))])
    else:
        gate = "gate"
    m = g.model([g.conv(g.op("Mul", [c, gate]), 8, 4, k=1)])
    out, report = fold_gates(m)
    assert [e["status"] for e in report["gates"]] == ["folded"], report["gates"]
    assert not any(n.op_type in ("Mul", "Constant") for n in out.graph.node), "the gate and its Constant go"
    assert rel_err(m, out) <= 1e-5


def test_a_gate_on_a_layer_with_shared_weights_is_left():
    """Folding into a conv whose weights another conv reads would copy them: skipped, with the reason."""
    g = G()
    x = g.input("x", [1, 8, 8, 8])
    w, b = g.rand(8, 8, 3, 3), g.rand(8, base="b")
    c1 = g.op("Conv", [x, w, b], kernel_shape=[3, 3], pads=[1] * 4)
    c2 = g.op("Conv", [g.op("Relu", [c1]), w, b], kernel_shape=[3, 3], pads=[1] * 4)
    gated = g.op("Mul", [c2, g.const(np.linspace(0.5, 1.5, 8, dtype=np.float32).reshape(1, 8, 1, 1))])
    m = g.model([g.conv(gated, 8, 4, k=1)])
    out, report = fold_gates(m)
    entry = report["gates"][0]
    assert entry["status"] == "skipped" and "shared with another node" in entry["reason"]
    assert report["params_after"] == report["params_before"]


def test_fold_constants_keeps_excluded_groups_whole():
    model, n = _head_graph()
    conv1 = next(node.name for node in model.graph.node if node.input[1] == n["w1"])
    _, free = fold_constant_channels(model)
    assert free["channels_removed"] >= 1
    out, report = fold_constant_channels(model, exclude=[conv1])
    assert inits(out)[n["w1"]].shape[0] == 8, "the excluded group keeps its zero channel"
    res = api.prune(model, fold_constants=True, exclude=[conv1], ratio=0.0)
    assert inits(res.model)[n["w1"]].shape[0] == 8


def test_near_identical_filters_merge_under_a_proof_scaled_to_their_tolerance():
    """Copies that differ by 5e-5 merge at --merge-identical 1e-4; the proof at a fixed 1e-5 used
    to refuse the whole run (exit 3). A wrong merge is still caught: it is off by far more."""
    model, n = chain()
    copy_channels(model, [n["w1"], n["b1"], *n["bn1"]], 2, [5], noise=5e-5)
    merged, report = merge_identical(model, tol=1e-4)
    assert report["channels_removed"] == 1 and report["verify"]["tolerance"] == pytest.approx(1e-3)
    assert 1e-6 < report["max_rel_err"] <= 1e-3


def test_no_verify_skips_the_transforms_proof_too(monkeypatch):
    model, n = chain()
    copy_channels(model, [n["w1"], n["b1"], *n["bn1"]], 0, [3])
    from compressor.surgery import _exact

    calls = []
    real = _exact.verify
    monkeypatch.setattr(_exact, "verify", lambda *a, **k: calls.append(1) or real(*a, **k))
    res = api.prune(model, merge_identical=0.0, verify_model=False)
    assert not calls and res.report["transforms"][0]["verify"] == {"passed": None, "skipped": True}


def _with_learned(model: onnx.ModelProto, groups) -> onnx.ModelProto:
    doc = {"schema": "compressor.learned/1", "method": "test", "groups": groups}
    model.metadata_props.add(key=LEARNED_KEY, value=json.dumps(doc))
    return model


def test_a_merge_keeps_the_learned_importances_of_the_groups_it_did_not_touch():
    model, n = chain()
    copy_channels(model, [n["w1"], n["b1"], *n["bn1"]], 0, [3])
    _with_learned(model, [
        {"members": [{"tensor": n["w1"], "axis": 0, "offset": 0, "inner": 1}], "size": 8,
         "importance": list(np.linspace(1, 2, 8))},
        {"members": [{"tensor": n["w2"], "axis": 0, "offset": 0, "inner": 1}], "size": 6,
         "importance": [5.0, 1.0, 4.0, 2.0, 3.0, 0.5]}])
    merged, report = merge_identical(model)
    doc = json.loads(next(p.value for p in merged.metadata_props if p.key == LEARNED_KEY))
    assert [g["members"][0]["tensor"] for g in doc["groups"]] == [n["w2"]]
    assert any("dropped the learned entries of 1 merged group" in note for note in report["notes"])
    res = api.prune(model, merge_identical=0.0, ratio=0.5, importance="learned")
    assert res.report["importance"] == "learned"
    kept = next(s["kept"] for s in res.report["plan"] if s["tensor"] == n["w2"] and s["axis"] == 0)
    assert kept == [0, 2, 4], "the untouched group is pruned by its learned scores"


def test_a_budget_is_a_fraction_of_the_input_model_when_transforms_run_first():
    model, n = chain()
    copy_channels(model, [n["w1"], n["b1"], *n["bn1"]], 0, [3, 5])
    res = api.prune(model, merge_identical=0.0, target_macs=0.9)
    r, t = res.report, res.report["transforms"][0]
    assert r["macs_before"] == t["macs_before"], "before = the input model"
    assert t["macs_after"] <= 0.9 * t["macs_before"], "the merge alone meets the budget"
    assert r["macs_after"] == t["macs_after"], "so nothing more is pruned (it used to cut 0.9 again)"
    r = api.prune(model, merge_identical=0.0, target_macs=0.6).report
    assert 0.5 * r["macs_before"] < r["macs_after"] <= 0.6 * r["macs_before"]
