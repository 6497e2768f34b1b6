"""The oracle's memory discipline: no verification session holds a copy of the weights.

Properties checked (none of them timing-based):
- every session that ``api.prune`` creates for verification is built from model bytes without the
  large constants (they are fed as numpy buffers), and only one session is alive at a time;
- the masked original's weights are the analysed model's own arrays (shared, not copied);
- the split sessions compute exactly what the same models with embedded weights compute, and a
  wrong pruned model still fails;
- if onnxruntime refused the fed weights, the models run with embedded weights instead.
"""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from compressor import api
from compressor.verify import oracle
from compressor.verify.oracle import masked_original, masked_reference, oracle_model, verify

DEMO = Path(__file__).resolve().parents[2] / "models" / "demo_fmnist.onnx"


def _weight_bytes(model: onnx.ModelProto) -> int:
    return sum(numpy_helper.to_array(t).nbytes for t in model.graph.initializer)


class _SessionSpy:
    """Wraps onnxruntime.InferenceSession: records the size of each model it is given and how
    many sessions are alive at once."""

    def __init__(self, monkeypatch):
        self.model_bytes: list[int] = []
        self.alive = 0
        self.max_alive = 0
        real = ort.InferenceSession
        spy = self

        def make(model_bytes, *args, **kwargs):
            sess = real(model_bytes, *args, **kwargs)
            spy.model_bytes.append(len(model_bytes))
            spy.alive += 1
            spy.max_alive = max(spy.max_alive, spy.alive)
            weakref.finalize(sess, spy._released)
            return sess

        monkeypatch.setattr(ort, "InferenceSession", make)

    def _released(self):
        self.alive -= 1


def test_prune_verifies_without_serialising_weights_and_one_session_at_a_time(monkeypatch, tmp_path):
    weights = _weight_bytes(onnx.load(DEMO))
    assert weights > 1_000_000, "the demo model should carry about 1 MB of weights"
    spy = _SessionSpy(monkeypatch)
    res = api.prune(DEMO, ratio=0.5, importance="l2", output=tmp_path / "small.onnx")
    gc.collect()
    assert res.report["verify"]["passed"] is True
    # the reference, the decoy (verify.discrimination: a wrong cut's distance) and the pruned model
    assert len(spy.model_bytes) == 3, f"expected the reference, decoy and pruned sessions, got {spy.model_bytes}"
    for n in spy.model_bytes:
        assert n < weights / 20, (f"a verification session was given {n} bytes of model for {weights} bytes of "
                                  "weights: the weights were serialised into it")
    assert spy.max_alive == 1, f"{spy.max_alive} verification sessions were alive at once; expected one at a time"


def _analysed_demo():
    proto, _ = api._as_model(str(DEMO))
    an = api.analyze(proto)
    plan = api.make_plan(an, api.score_groups(an, "l2"), api.PlanOptions(ratio=0.5))
    return an, plan


def test_masked_reference_shares_the_analysed_weights():
    an, plan = _analysed_demo()
    ref = masked_reference(an, plan.keep)
    assert ref.weights, "the masked original should feed its large constants"
    for name, arr in ref.weights.items():
        assert arr is an.index.const(name) or np.shares_memory(arr, an.index.const(name)), (
            f"weight {name} of the masked original is a copy, expected the index's own array")
    small = {t.name for t in ref.model.graph.initializer}
    assert not small & set(ref.weights), "a fed weight is also embedded"
    assert ref.model.ByteSize() < sum(a.nbytes for a in ref.weights.values()) / 20


def test_split_sessions_match_embedded_weights_and_still_catch_a_wrong_model():
    an, plan = _analysed_demo()
    pruned = api.finalize(api.apply_plan(an, plan.keep).model)
    full = masked_original(an, plan.keep)
    full.ir_version = pruned.ir_version
    ref = masked_reference(an, plan.keep)
    ref.model.ir_version = pruned.ir_version
    spec = an.index.spec
    split = verify(ref, pruned, spec)
    embedded = verify(full, pruned, spec)
    assert split.passed and embedded.passed
    assert split.max_rel_err == embedded.max_rel_err, "feeding the weights changed the numbers"

    wrong = onnx.ModelProto()
    wrong.CopyFrom(pruned)
    big = max(wrong.graph.initializer, key=lambda t: len(t.raw_data))
    big.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(big) * np.float32(1.5), big.name))
    bad = verify(masked_reference(an, plan.keep), wrong, spec)
    assert not bad.passed, f"a pruned model with a changed weight passed the oracle ({bad.max_rel_err})"


def test_oracle_model_feeds_large_constants_and_embeds_small_ones():
    an, plan = _analysed_demo()
    om = oracle_model(an.index.model)
    for t in om.model.graph.initializer:
        assert len(t.raw_data) < oracle.FEED_MIN_BYTES or t.data_type not in oracle._FEEDABLE, (
            f"{t.name} ({len(t.raw_data)} bytes) stayed embedded")
    declared = {i.name for i in om.model.graph.input}
    assert set(om.weights) <= declared, "every fed weight must be a graph input"
    back = om.embedded()
    assert {t.name for t in back.graph.initializer} == {t.name for t in an.index.model.graph.initializer}


def test_refused_weight_feeds_fall_back_to_embedded_weights(monkeypatch):
    an, plan = _analysed_demo()
    pruned = api.finalize(api.apply_plan(an, plan.keep).model)
    expected = verify(masked_original(an, plan.keep), pruned, an.index.spec)
    real = oracle._session
    calls = []

    def refuse_inputs(model):
        calls.append(len(model.graph.initializer))
        if len(model.graph.input) > 1:  # the split model: its weights are graph inputs
            raise RuntimeError("simulated: a kernel wants this weight as a constant")
        return real(model)

    monkeypatch.setattr(oracle, "_session", refuse_inputs)
    got = verify(masked_reference(an, plan.keep), pruned, an.index.spec)
    assert len(calls) == 4, f"expected a refused and an embedded session per model, got {len(calls)} sessions"
    assert got.passed and got.max_rel_err == expected.max_rel_err


@pytest.mark.parametrize("shrink", [4, 1024])
def test_load_rejects_short_raw_data_without_the_checker_seeing_it(tmp_path, shrink):
    """validate_model checks large initializers' sizes itself (they are stubbed for onnx.checker)."""
    from compressor.errors import ModelError
    from compressor.ir.model_io import load_model

    m = onnx.load(DEMO)
    big = max(m.graph.initializer, key=lambda t: len(t.raw_data))
    big.raw_data = big.raw_data[:-shrink]
    p = tmp_path / "short.onnx"
    onnx.save(m, p)
    with pytest.raises(ModelError, match="too small for the declared shape"):
        load_model(p)


def test_constant_node_weights_and_overridable_initializers_are_fed(tmp_path):
    """A weight held by a Constant node, and an initializer that is also a graph input (IR >= 4
    overridable default), are fed like any initializer; a cut through the Constant is still proven."""
    from onnx import helper

    from tests.core.graphs import G

    g = G()
    x = g.input("x", [1, 16, 8, 8])
    h = g.cbr(x, 16, 32)
    w = g.rand(8, 32, 3, 3)
    out = g.op("Conv", [h, w], kernel_shape=[3, 3], pads=[1] * 4)
    m = g.model([out])
    t = next(i for i in m.graph.initializer if i.name == w)
    m.graph.node.insert(0, helper.make_node("Constant", [], [w], value=t))
    m.graph.initializer.remove(t)
    onnx.checker.check_model(m)
    p = tmp_path / "m.onnx"
    onnx.save(m, p)
    res = api.prune(p, ratio=0.5, importance="l2")
    assert res.report["verify"]["passed"] and res.report["channels"]["removed"] > 0

    bn_scale = next(n for n in m.graph.node if n.op_type == "BatchNormalization").input[1]
    m.graph.input.append(helper.make_tensor_value_info(bn_scale, onnx.TensorProto.FLOAT, [32]))
    om = oracle_model(m, min_bytes=64)
    assert w in om.weights and all(n.op_type != "Constant" for n in om.model.graph.node), "Constant weight not fed"
    assert bn_scale in om.weights and sum(i.name == bn_scale for i in om.model.graph.input) == 1
    feeds = {"x": np.random.default_rng(0).standard_normal((1, 16, 8, 8)).astype(np.float32)}
    opts = oracle.session_options()  # the same kernels for both (no fusions)
    split = ort.InferenceSession(om.model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    whole = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    a, b = split.run(None, {**feeds, **om.weights})[0], whole.run(None, feeds)[0]
    assert np.array_equal(a, b), f"the split model computes something else: max diff {np.abs(a - b).max()}"
