"""Group sensitivity (importance/sensitivity.py) and the allocation on it: the masking model equals
the oracle's masked original for any plan, sensitivities order groups by how much they matter to the
outputs, and the allocator then spends the cut where the outputs move least per millisecond saved."""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from compressor import api
from compressor.bench.layers import measure_table
from compressor.errors import UsageError
from compressor.importance import score_groups
from compressor.importance.sensitivity import Sensitivity, calibration_feeds, fixed_batch_size, measure_sensitivity
from compressor.ir.shapes import random_feeds
from compressor.planning import PlanOptions, make_plan
from compressor.planning.allocate import Allocator
from compressor.verify.oracle import masked_original, masking_model
from tests.core.graphs import G
from tests.core.test_latency_budget import _FakeRatioMeter, fake_meter  # noqa: F401 (fixture)
from tests.core.test_latency_table import branchy


def two_branches(quiet: float = 1e-3):
    """Group A (32 ch) feeds a 3x3 conv (expensive); group B (32 ch) a 1x1 conv (cheap) whose
    branch is scaled by ``quiet`` before the add, so B's channels barely move the output."""
    g = G()
    x = g.input("x", [1, 8, 8, 8])
    a = g.cbr(x, 8, 32, k=1)
    a = g.cbr(a, 32, 8)
    b = g.cbr(x, 8, 32, k=1)
    b = g.cbr(b, 32, 8, k=1)
    b = g.op("Mul", [b, g.const(np.full((1, 8, 1, 1), quiet, np.float32))])
    return g.model([g.op("Add", [a, b])])


def _weights_timer(m) -> float:
    w = next(i for i in m.graph.initializer if i.name == "w")
    return 1e-3 * math.prod(w.dims)  # proportional to the weights: a 3x3 costs 9x a 1x1


def _run(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def test_masking_model_equals_the_masked_original_for_any_plan():
    an = api.analyze(branchy())
    scores = score_groups(an, "l2")
    mm = masking_model(an)
    model = mm.oracle.embedded()
    x = random_feeds(an.index.spec if hasattr(an.index, "spec") else api._spec(branchy(), None), seed=3)
    rng = np.random.default_rng(0)
    for _ in range(4):
        plan = make_plan(an, scores, PlanOptions(ratio=float(rng.uniform(0.1, 0.8)), global_ranking=True))
        want = _run(masked_original(an, plan.keep), x)
        got = _run(model, {**x, **mm.feeds(plan.keep)})
        for a, b in zip(want, got):
            np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
    # nothing removed: the masks are all ones and the model is the original
    np.testing.assert_allclose(_run(model, {**x, **mm.feeds({})})[0], _run(branchy(), x)[0], rtol=1e-6)


def test_sensitivity_orders_groups_by_their_effect_on_the_outputs():
    an = api.analyze(two_branches())
    scores = {g.id: np.ones(g.size) for g in an.prunable}
    feeds, described = calibration_feeds(api._spec(two_branches(), None), None, trials=3)
    assert described.startswith("random") and len(feeds) == 3
    sens = measure_sensitivity(an, scores, feeds, inputs=described)
    big = {g.id for g in an.prunable if g.size == 32}
    a, b = sorted(big, key=lambda gid: sens.raw[gid][-1], reverse=True)
    assert sens.raw[a][-1] > 50 * sens.raw[b][-1] > 0
    for gid in sens.raw:  # probed at 1/4, 1/2, 3/4 removed; the envelope is monotone and from 0
        assert np.all(np.diff(sens.errors[gid]) >= 0) and sens.at(gid, 0.0) == 0.0
        assert sens.at(gid, sens.fractions[gid][1]) == pytest.approx(sens.errors[gid][1])
    assert sens.runs == 3 * (1 + sum(len(v) for v in sens.raw.values()))
    summary = sens.summary()
    assert summary["groups"] == len(sens.raw) and set(summary["per_group"][str(a)]) == {"removed", "output_change"}


def test_sensitivity_interpolates_and_keeps_a_monotone_envelope():
    s = Sensitivity({7: np.array([0.25, 0.5, 0.75])}, {7: np.array([0.2, 0.1, 0.6])})
    assert list(s.errors[7]) == [0.2, 0.2, 0.6]  # a noisy dip does not make removing more look free
    assert s.at(7, 0.125) == pytest.approx(0.1) and s.at(7, 0.625) == pytest.approx(0.4)
    assert s.at(7, 1.0) == pytest.approx(0.6 + 0.4 / 0.25 * 0.25)
    assert s.at(99, 0.5) == 0.0


def test_allocator_on_sensitivity_cuts_the_quiet_group_first():
    """By channel importance (equal scores), the allocator cuts the group feeding the expensive
    conv (test_latency_table); by sensitivity it cuts the group whose removal the outputs barely
    notice, though it saves less time per channel."""
    model = two_branches()
    an = api.analyze(model)
    scores = {g.id: np.ones(g.size) for g in an.prunable}
    table = measure_table(an, 17, _weights_timer, reference_ms=1.0, step=8, floor=lambda n: max(1, n // 4))
    feeds, _ = calibration_feeds(api._spec(model, None), None)
    sens = measure_sensitivity(an, scores, feeds)
    size32 = [g.id for g in an.prunable if g.size == 32]
    quiet = min(size32, key=lambda gid: sens.raw[gid][-1])
    loud = next(gid for gid in size32 if gid != quiet)
    by_importance, _ = Allocator(an, scores, PlanOptions(round_to=8), table).widths_for(0.9)
    assert by_importance[loud] < by_importance[quiet] == 32
    by_sensitivity, _ = Allocator(an, scores, PlanOptions(round_to=8), table, sensitivity=sens).widths_for(0.9)
    assert by_sensitivity[quiet] < 32 and by_sensitivity[loud] == 32, by_sensitivity


def test_calibration_feeds_batch_real_samples_and_reject_mismatches():
    spec = api._spec(two_branches(), None)
    data = {"x": np.random.default_rng(0).standard_normal((20, 8, 8, 8)).astype(np.float64)}
    feeds, described = calibration_feeds(spec, data, batch=8)
    assert described == "calibration (20 samples)" and [f["x"].shape[0] for f in feeds] == [8, 8, 4]
    assert feeds[0]["x"].dtype == np.float32
    feeds, _ = calibration_feeds(spec, {None: data["x"]})  # a .npy: the model's only input
    assert sum(f["x"].shape[0] for f in feeds) == 20
    assert fixed_batch_size(two_branches()) == 1  # the test graphs fix batch 1: one sample per run
    feeds, _ = calibration_feeds(spec, data, fixed_batch=3)
    assert [f["x"].shape[0] for f in feeds] == [3] * 6
    with pytest.raises(UsageError, match="fixed at 32"):
        calibration_feeds(spec, data, fixed_batch=32)
    with pytest.raises(UsageError, match="calibration data has inputs"):
        calibration_feeds(spec, {"y": data["x"]})
    with pytest.raises(UsageError, match="has shape"):
        calibration_feeds(spec, {"x": data["x"][:, :4]})


def test_prune_with_sensitivity_reports_it_and_checks_its_options(fake_meter, tmp_path):  # noqa: F811
    samples = np.random.default_rng(1).standard_normal((6, 3, 16, 16)).astype(np.float32)
    np.save(tmp_path / "calib.npy", samples)
    res = api.prune(branchy(), target_latency=7.0, round_to=2, sensitivity=True, calibration=tmp_path / "calib.npy")
    b = res.report["budget"]
    assert b["allocation_cost"] == "sensitivity" and b["sensitivity"]["inputs"] == "calibration (6 samples)"
    assert b["sensitivity"]["groups"] == len([g for g in res.analysis.prunable if g.size > 1])
    assert abs(b["ratio"] / 0.7 - 1) <= 0.05 and res.report["verify"]["passed"]
    default = api.prune(branchy(), target_latency=7.0, round_to=2).report["budget"]
    assert default["allocation_cost"] == "sensitivity" and default["sensitivity"]["inputs"].startswith("random")
    plain = api.prune(branchy(), target_latency=7.0, round_to=4, sensitivity=False).report["budget"]
    assert plain["allocation_cost"] == "importance" and "sensitivity" not in plain
    reprobed = api.prune(branchy(), target_latency=7.0, round_to=2, reprobe=True)
    b = reprobed.report["budget"]
    assert reprobed.report["verify"]["passed"] and abs(b["ratio"] / 0.7 - 1) <= 0.05
    assert [r["at_fraction"] for r in b["reprobed"]][:2] == [0.9, 0.8], b.get("reprobed")
    with pytest.raises(UsageError, match="--reprobe"):
        api.prune(branchy(), target_latency=7.0, sensitivity=False, reprobe=True)
    with pytest.raises(UsageError, match="needs --target-latency"):
        api.prune(branchy(), ratio=0.5, sensitivity=True)
    with pytest.raises(UsageError, match="used by --sensitivity only"):
        api.prune(branchy(), target_latency=7.0, calibration=tmp_path / "calib.npy", sensitivity=False)
    with pytest.raises(UsageError, match="calibration file not found"):
        api.prune(branchy(), target_latency=7.0, sensitivity=True, calibration=tmp_path / "missing.npz")
    (tmp_path / "corrupt.npz").write_bytes(b"not a zip file")
    with pytest.raises(UsageError, match="cannot read calibration data"):
        api.prune(branchy(), target_latency=7.0, calibration=tmp_path / "corrupt.npz")


def test_cli_calibration_implies_sensitivity(fake_meter, tmp_path):  # noqa: F811
    from compressor.cli import main

    src = tmp_path / "m.onnx"
    onnx.save(branchy(), src)
    np.savez(tmp_path / "calib.npz", x=np.zeros((4, 3, 16, 16), np.float32) + 0.5)
    res = CliRunner().invoke(main, [str(src), "-o", str(tmp_path / "s.onnx"), "--target-latency", "7",
                                    "--round-to", "2", "--calibration", str(tmp_path / "calib.npz")])
    assert res.exit_code == 0, res.output
    assert "allocation latency-table by sensitivity" in res.output
    assert "probed on calibration (4 samples)" in res.output


def test_allocator_closes_the_budget_with_the_cheapest_sufficient_step():
    """Group A's step saves 9x the time of B's for a little more importance: the best ratio. When
    the budget needs less than B's step saves, B's cheaper step closes it instead of A's."""
    model = two_branches(quiet=1.0)
    an = api.analyze(model)
    table = measure_table(an, 17, _weights_timer, reference_ms=1.0, step=8, floor=lambda n: max(1, n // 4))
    size32 = [g.id for g in an.prunable if g.size == 32]
    alloc = Allocator(an, {g.id: np.ones(g.size) for g in an.prunable}, PlanOptions(round_to=8), table)
    a = max(size32, key=lambda gid: alloc._saving(gid, alloc.dense, 24))
    b = next(gid for gid in size32 if gid != a)
    scores = {g.id: np.ones(g.size) for g in an.prunable}
    scores[b] = np.array([0.5] * 8 + [1.5] * 24)  # B's 8 least important cost 8 * 0.4 = 3.2, A's 8
    alloc = Allocator(an, scores, PlanOptions(round_to=8), table)
    save_a, save_b = alloc._saving(a, alloc.dense, 24), alloc._saving(b, alloc.dense, 24)
    assert save_a / 8 > save_b / 3.2, "A's step is the better ratio"
    widths, _ = alloc.widths_for(1 - 0.5 * save_b / alloc.dense_ms)
    assert widths[b] == 24 and widths[a] == 32, widths
    widths, _ = alloc.widths_for(1 - 0.5 * save_a / alloc.dense_ms)  # B's step alone is not enough
    assert widths[a] == 24, widths


def test_macs_table_predicts_exact_macs_for_any_plan():
    from compressor.planning.allocate import macs_table
    from compressor.planning.budget import plan_cost

    an = api.analyze(branchy())
    scores = score_groups(an, "l2")
    table = macs_table(an, 17, 4, lambda n: max(1, n // 4))
    rng = np.random.default_rng(0)
    for _ in range(5):
        plan = make_plan(an, scores, PlanOptions(ratio=float(rng.uniform(0.1, 0.7)), global_ranking=True))
        widths = {g.id: len(g.kept) for g in plan.groups}
        assert table.predict(widths) == pytest.approx(plan_cost(an, plan.keep)[0], rel=1e-6)


def test_target_macs_with_sensitivity_cuts_the_quiet_group_and_meets_the_budget():
    model = two_branches()
    res = api.prune(model, target_macs=0.9, sensitivity=True, round_to=8)
    b = res.report["budget"]
    assert b["allocation"] == "macs-table" and b["allocation_cost"] == "sensitivity" and b["achieved"] <= 0.9
    assert res.report["macs_after"] <= 0.9 * res.report["macs_before"] and res.report["verify"]["passed"]
    per_group = {int(k): v["output_change"][-1] for k, v in b["sensitivity"]["per_group"].items()}
    widths = {d.id: len(d.kept) for d in res.plan.groups if d.size == 32}
    quiet = min(widths, key=per_group.get)
    loud = next(gid for gid in widths if gid != quiet)
    assert widths[quiet] == 8 and widths[loud] == 32, widths  # the quiet group goes to its 25% floor first
    # a budget that needs the loud group cut anyway: the quiet group's cuts are given back, since
    # the loud group's one step alone meets it (allocate.Allocator._fill)
    res = api.prune(model, target_macs=0.8, sensitivity=True, round_to=8)
    widths = {d.id: len(d.kept) for d in res.plan.groups if d.size == 32}
    assert widths == {quiet: 32, loud: 24} and res.report["budget"]["achieved"] <= 0.8
    uniform = api.prune(model, target_macs=0.8, round_to=8).report["budget"]
    assert "allocation_cost" not in uniform, "the MACs target stays uniform unless asked"
    with pytest.raises(UsageError, match="unreachable"):
        api.prune(model, target_macs=0.01, sensitivity=True)


def test_params_table_predicts_the_layers_parameters():
    """The params table's prediction follows plan_cost's parameter count for random plans."""
    from compressor.planning.allocate import cost_table
    from compressor.planning.budget import plan_cost

    an = api.analyze(branchy())
    scores = score_groups(an, "l2")
    table = cost_table(an, 17, 4, lambda n: max(1, n // 4), "params")
    rng = np.random.default_rng(1)
    for _ in range(5):
        plan = make_plan(an, scores, PlanOptions(ratio=float(rng.uniform(0.1, 0.7)), global_ranking=True))
        widths = {g.id: len(g.kept) for g in plan.groups}
        assert table.predict(widths) == pytest.approx(plan_cost(an, plan.keep)[1], rel=0.02)


def test_target_params_with_sensitivity_meets_the_budget_and_is_reported():
    model = two_branches()
    res = api.prune(model, target_params=0.8, sensitivity=True, round_to=8)
    b = res.report["budget"]
    assert b["kind"] == "params" and b["allocation"] == "params-table" and b["achieved"] <= 0.8, b
    assert res.report["params_after"] <= 0.8 * res.report["params_before"] and res.report["verify"]["passed"]
    assert b["allocation_cost"] == "sensitivity" and b["sensitivity"]["per_group"], b
    uniform = api.prune(model, target_params=0.8, round_to=8).report["budget"]
    assert "allocation_cost" not in uniform, "the params target stays uniform unless asked"


def test_reprobing_measures_each_group_beyond_a_plan():
    """Re-probed on a plan: every other group keeps its plan's channels while one loses more; the
    value is the output change beyond the plan's own, 0 at the plan's width and not before it."""
    from compressor.importance.sensitivity import _output_change

    model = branchy()
    an = api.analyze(model)
    scores = score_groups(an, "l2")
    feeds, _ = calibration_feeds(api._spec(model, None), None)
    groups = sorted((g for g in an.prunable if g.size >= 8), key=lambda g: g.id)
    first, other = groups[0], groups[1]
    base = {g.id: g.size for g in an.prunable}
    base[first.id] = first.size // 2
    sens = measure_sensitivity(an, scores, feeds, base=base)
    assert sens.base == pytest.approx({g.id: (0.5 if g.id == first.id else 0.0) for g in an.prunable if g.size > 1})
    assert sens.at(first.id, 0.5) == 0.0 and sens.at(first.id, 0.25) == 0.0
    assert list(sens.fractions[first.id]) == sorted(sens.fractions[first.id]) and sens.fractions[first.id][0] > 0.5
    # the values, recomputed on the masked original: the plan alone, and the plan with the other
    # group losing its least important channels too
    order = {g.id: np.argsort(-scores[g.id], kind="stable") for g in groups}
    plan_keep = {first.id: sorted(order[first.id][: base[first.id]].tolist())}
    dense_out = [_run(model, f) for f in feeds]
    at_plan = _output_change(dense_out, [_run(masked_original(an, plan_keep), f) for f in feeds])
    assert sens.base_change == pytest.approx(at_plan, rel=1e-4)
    removed = int(round(sens.fractions[other.id][0] * other.size))
    both = {**plan_keep, other.id: sorted(order[other.id][: other.size - removed].tolist())}
    beyond = _output_change(dense_out, [_run(masked_original(an, both), f) for f in feeds]) - at_plan
    assert sens.raw[other.id][0] == pytest.approx(beyond, rel=1e-4, abs=1e-7)


def test_allocator_reprobes_at_each_pivot_it_passes_and_reuses_them():
    model = two_branches()
    an = api.analyze(model)
    scores = {g.id: np.arange(g.size, dtype=float) + 1 for g in an.prunable}
    table = measure_table(an, 17, _weights_timer, reference_ms=1.0, step=8, floor=lambda n: max(1, n // 4))
    feeds, _ = calibration_feeds(api._spec(model, None), None)
    sens = measure_sensitivity(an, scores, feeds)
    seen = []

    def reprobe(widths):
        seen.append(dict(widths))
        return measure_sensitivity(an, scores, feeds, base=widths)

    with pytest.raises(ValueError, match="sensitivity"):
        Allocator(an, scores, PlanOptions(round_to=8), table, reprobe=reprobe)
    alloc = Allocator(an, scores, PlanOptions(round_to=8), table, sensitivity=sens, reprobe=reprobe,
                      pivots=(0.9, 0.75))
    w, got = alloc.widths_for(0.7)
    assert got <= 0.7 + 1e-9 and len(seen) == 2  # at 0.9 and at 0.75
    one_shot = Allocator(an, scores, PlanOptions(round_to=8), table, sensitivity=sens)
    assert seen[0] == one_shot.widths_for(0.9)[0]  # the first pivot's plan: on the dense sensitivity
    assert table.predict(seen[1]) <= 0.75 * table.predict(alloc.dense) + 1e-9
    assert all(w[g] <= seen[1][g] for g in w)  # it went on from the last pivot's plan
    alloc.widths_for(0.6)
    assert len(seen) == 2  # the pivots' plans and probes are kept
    assert alloc.sensitivity is sens and [r["at_fraction"] for r in alloc.reprobed()] == [0.9, 0.75]
    assert alloc.widths_for(0.95)[0] == one_shot.widths_for(0.95)[0]  # above every pivot: one shot


def test_reprobe_option_is_reported_and_needs_sensitivity():
    model = two_branches()
    res = api.prune(model, target_macs=0.6, sensitivity=True, round_to=8, reprobe=True)
    b = res.report["budget"]
    assert res.report["verify"]["passed"] and b["achieved"] <= 0.6
    assert [r["at_fraction"] for r in b["reprobed"]] == [0.9, 0.8, 0.7], b.get("reprobed")
    with pytest.raises(UsageError, match="--reprobe"):
        api.prune(model, target_macs=0.6, reprobe=True)


def test_cli_reprobe(tmp_path):
    import json

    from compressor.cli import main

    src = tmp_path / "m.onnx"
    onnx.save(two_branches(), src)
    r = CliRunner().invoke(main, ["prune", str(src), "--dry-run", "--target-macs", "0.6", "--sensitivity",
                                  "--reprobe", "--round-to", "8", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["budget"]["reprobed"]
    r = CliRunner().invoke(main, ["prune", str(src), "--dry-run", "--target-macs", "0.6", "--sensitivity",
                                  "--reprobe", "--round-to", "8"])
    assert r.exit_code == 0 and "re-probed at 0.9 (output change" in r.output, r.output
    r = CliRunner().invoke(main, ["prune", str(src), "--dry-run", "--target-macs", "0.6", "--reprobe"])
    assert r.exit_code != 0 and "--reprobe" in r.output
