"""The layer latency table (bench/layers.py) and the allocation on it (planning/allocate.py):
channel counts follow any plan exactly (concat, depthwise, Gemm), probes are real one-node models,
interpolation reproduces a bilinear cost, and the allocator removes channels where they buy the
most time per importance, within its per-group limit."""

from __future__ import annotations

import math

import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from compressor import api
from compressor.bench.layers import find_layers, grid, measure_table, ort_layer_timer
from compressor.importance import score_groups
from compressor.planning import PlanOptions, make_plan
from compressor.planning.allocate import Allocator, TableKnob, importance_kept
from compressor.surgery.context import SurgeryContext
from tests.core.graphs import G
from tests.core.test_latency_budget import _FakeRatioMeter, fake_meter  # noqa: F401 (fixture)


def branchy():
    """A stem, a depthwise conv, a concat of two branches, a 1x1 conv and a Gemm head."""
    g = G()
    x = g.input("x", [1, 3, 16, 16])
    h = g.cbr(x, 3, 16)
    d = g.cbr(h, 16, 16, group=16)
    b = g.cbr(h, 16, 24, k=1)
    h = g.op("Concat", [d, b], axis=1)
    h = g.cbr(h, 40, 32, k=1)
    h = g.op("Flatten", [g.op("GlobalAveragePool", [h])])
    return g.model([g.op("Gemm", [h, g.rand(10, 32), g.rand(10, base="b")], transB=1)])


@pytest.fixture(scope="module")
def analysed():
    an = api.analyze(branchy())
    return an, score_groups(an, "l2")


def test_layer_channels_follow_any_plan_exactly(analysed):
    """For random plans, each layer's (cin, cout) from the group widths equals the shapes the
    surgery gives its input and output."""
    an, scores = analysed
    layers = find_layers(an, 17)
    assert [lyr.op for lyr in layers] == ["Conv"] * 4 + ["Gemm"]
    assert sum(lyr.depthwise for lyr in layers) == 1
    rng = np.random.default_rng(0)
    index = an.index
    by_label = {index.node_label(n): n for n in index.nodes}
    for _ in range(5):
        plan = make_plan(an, scores, PlanOptions(ratio=float(rng.uniform(0.1, 0.8)), global_ranking=True))
        widths = {g.id: len(g.kept) for g in plan.groups}
        ctx = SurgeryContext(an, plan.keep, index.model, 17)
        for lyr in layers:
            node = by_label[lyr.node]
            cin, cout = lyr.channels(widths)
            assert cin == ctx.new_shape(node.input[0])[1]
            assert cout == ctx.new_shape(node.output[0])[1]


def test_probes_are_real_models_at_the_asked_widths(analysed):
    an, _ = analysed
    for lyr in find_layers(an, 17):
        cin = max(1, lyr.dense_cin // 2)
        cout = cin if lyr.depthwise else max(1, lyr.dense_cout // 2)
        probe = lyr.build(cin, cout)
        sess = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
        shape = [d if isinstance(d, int) else 1 for d in sess.get_inputs()[0].shape]
        y = sess.run(None, {"x": np.ones(shape, np.float32)})[0]
        assert shape[1] == cin and y.shape[1] == cout, (lyr.node, shape, y.shape)


def test_grid_spans_the_floor_to_the_dense_count_on_the_step():
    assert grid(64, 8, 16) == [16, 32, 48, 64]
    assert grid(40, 8, 10) == [10, 16, 24, 32, 40]
    assert grid(3, 8, 1) == [1, 3]


def _bilinear_timer(model) -> float:
    """A fake probe timer: ms = 1e-3 * cin * cout for every layer (exactly bilinear)."""
    w = next(i for i in model.graph.initializer if i.name == "w")
    x = model.graph.input[0].type.tensor_type.shape.dim
    cin = x[1].dim_value
    node = model.graph.node[0]
    if node.op_type == "Gemm":
        cout = w.dims[0]
    else:
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        cout = w.dims[0] if group == 1 else cin
    return 1e-3 * cin * cout


def test_a_probe_slower_than_a_wider_one_is_timed_again(analysed):
    an, _ = analysed
    seen: dict[bytes, int] = {}

    def hiccup(model) -> float:
        key = model.SerializeToString()
        seen[key] = seen.get(key, 0) + 1
        node = model.graph.node[0]
        w = next(i for i in model.graph.initializer if i.name == "w")
        first_narrow = node.op_type == "Conv" and w.dims[0] == 4 and seen[key] == 1
        return _bilinear_timer(model) * (50.0 if first_narrow else 1.0)  # one bad reading, then normal

    table = measure_table(an, 17, hiccup, reference_ms=5.0, step=4, floor=lambda n: max(1, n // 4))
    clean = measure_table(an, 17, _bilinear_timer, reference_ms=5.0, step=4, floor=lambda n: max(1, n // 4))
    assert table.retimed >= 1
    for k in clean.grids:
        assert np.allclose(table.grids[k][2], clean.grids[k][2]), k


def test_table_interpolates_a_bilinear_cost_exactly_and_splits_the_rest(analysed):
    an, scores = analysed
    table = measure_table(an, 17, _bilinear_timer, reference_ms=5.0, step=4, floor=lambda n: max(1, n // 4))
    layers_dense = sum(1e-3 * lyr.dense_cin * lyr.dense_cout for lyr in table.layers)
    assert table.rest_ms == pytest.approx(5.0 - layers_dense)
    assert table.dense_ms() == pytest.approx(5.0)
    plan = make_plan(an, scores, PlanOptions(ratio=0.5, round_to=4))
    widths = {g.id: len(g.kept) for g in plan.groups}
    expect = sum(1e-3 * math.prod(lyr.channels(widths)) for lyr in table.layers)
    assert table.predict(widths) - table.rest(widths) == pytest.approx(expect)
    assert 0 < table.rest(widths) < table.rest_ms, "the rest shrinks with the activations"
    rows = table.rows(widths)
    assert len(rows) == 5 and all(r["planned_ms"] <= r["dense_ms"] for r in rows)
    assert table.summary()["distinct_layers"] == len(table.grids) <= 5


def test_allocator_meets_the_predicted_budget_within_its_limits(analysed):
    an, scores = analysed
    table = measure_table(an, 17, _bilinear_timer, reference_ms=5.0, step=4, floor=lambda n: max(1, n // 4))
    alloc = Allocator(an, scores, PlanOptions(round_to=4), table, max_group_ratio=0.75)
    last = 1.0
    for f in (0.9, 0.7, 0.5):
        plan, achieved = alloc.plan_for(f)
        assert achieved <= f + 1e-9 and achieved <= last
        last = achieved
        for d in plan.groups:
            if d.removed:
                assert len(d.kept) % 4 == 0 and len(d.kept) >= math.ceil(d.size * 0.25)
    floor_plan, floor_f = TableKnob(alloc).floor()
    assert 0.0625 < floor_f < last, "no group loses more than 75% of its channels: cin x cout > 1/16 of dense"
    assert all(len(d.kept) == max(4, math.ceil(d.size * 0.25 / 4) * 4) or not d.removed for d in floor_plan.groups)


def test_allocator_leaves_no_step_that_fits_below_the_budget(analysed):
    """After the greedy's last (possibly overshooting) step, the slack left is filled: no group can
    take one step back up and still meet the budget: the predicted fraction follows the budget
    to within one step of one group."""
    an, _ = analysed
    table = measure_table(an, 17, _bilinear_timer, reference_ms=5.0, step=4, floor=lambda n: max(1, n // 4))
    for seed in range(4):  # skewed scores: cheap early steps on one group, a coarse closing step on another
        rng = np.random.default_rng(seed)
        scores = {g.id: rng.random(g.size) ** rng.choice([1, 4, 8]) for g in an.prunable}
        alloc = Allocator(an, scores, PlanOptions(round_to=4), table, max_group_ratio=0.75)
        for f in np.linspace(0.45, 0.95, 21):
            widths, a = alloc.widths_for(float(f))
            assert a <= f + 1e-9
            for g in an.prunable:
                w = widths[g.id]
                if 0 < w < g.size:
                    up = dict(widths)
                    up[g.id] = min(g.size, w + 4)
                    assert alloc.predict(up) / alloc.dense_ms > f, (seed, f, g.id, w)


def test_allocator_takes_the_channels_that_buy_time_cheaply():
    """Two groups of equal size and importance; only one feeds an expensive layer. The allocator
    prunes that one first, while a uniform ratio would cut both alike."""
    g = G()
    x = g.input("x", [1, 8, 8, 8])
    a = g.cbr(x, 8, 32, k=1)  # group A: feeds a 3x3 conv (expensive)
    a = g.cbr(a, 32, 8)
    b = g.cbr(x, 8, 32, k=1)  # group B: feeds a 1x1 conv (cheap)
    b = g.cbr(b, 32, 8, k=1)
    model = g.model([g.op("Add", [a, b])])
    an = api.analyze(model)
    scores = {gr.id: np.ones(gr.size) for gr in an.prunable}

    def timer(m) -> float:
        w = next(i for i in m.graph.initializer if i.name == "w")
        return 1e-3 * math.prod(w.dims)  # proportional to the weights: 3x3 costs 9x a 1x1

    table = measure_table(an, 17, timer, reference_ms=1.0, step=8, floor=lambda n: max(1, n // 4))
    alloc = Allocator(an, scores, PlanOptions(round_to=8), table)
    plan, _ = alloc.plan_for(0.85)
    widths = {d.id: len(d.kept) for d in plan.groups if d.size == 32}
    expensive = next(gr.id for gr in an.prunable if gr.size == 32 and any(
        (an.index.shape(m.tensor) or (0,))[-1] == 3 for m in gr.members))
    cheap = next(gid for gid in widths if gid != expensive)
    assert widths[expensive] < widths[cheap] == 32, widths
    # importance decides too: the cheap group's channels are mostly worthless, so they go first
    scores[cheap] = np.array([0.01] * 24 + [1.0] * 8)
    alloc = Allocator(an, scores, PlanOptions(round_to=8), table)
    plan, _ = alloc.plan_for(0.95)
    widths = {d.id: len(d.kept) for d in plan.groups if d.size == 32}
    assert widths[cheap] < widths[expensive] == 32, widths
    assert importance_kept(an, scores, plan) > importance_kept(an, scores, make_plan(
        an, scores, PlanOptions(ratio=0.25, round_to=8)))


def test_real_probe_timer_measures_positive_times(analysed):
    an, _ = analysed
    timer = ort_layer_timer("cpu", 1, min_time_s=0.0, min_runs=3, warmup=1)
    lyr = find_layers(an, 17)[0]
    assert timer(lyr.build(lyr.dense_cin, lyr.dense_cout)) > 0


def test_prune_to_latency_allocates_on_the_table_and_reports_it(fake_meter):  # noqa: F811
    res = api.prune(branchy(), target_latency=7.0, round_to=4)
    b = res.report["budget"]
    assert b["allocation"] == "latency-table" and b["latency_table"]["probes"] > 0
    assert abs(b["ratio"] / 0.7 - 1) <= 0.05 and res.report["verify"]["passed"]
    assert len(b["layers"]) == 5 and {"node", "dense", "planned", "dense_ms", "planned_ms"} <= set(b["layers"][0])
    assert 0 < b["importance_kept"] < 1 and all("predicted_fraction" in s for s in b["steps"])
    off = api.prune(branchy(), target_latency=7.0, round_to=4, latency_table=False).report["budget"]
    assert off["allocation"] == "uniform" and "latency_table" not in off and "layers" not in off


def test_cli_shows_the_table_line(fake_meter, tmp_path):  # noqa: F811
    import onnx

    from compressor.cli import main

    src = tmp_path / "m.onnx"
    onnx.save(branchy(), src)
    res = CliRunner().invoke(main, [str(src), "-o", str(tmp_path / "s.onnx"), "--target-latency", "7",
                                    "--round-to", "4"])
    assert res.exit_code == 0, res.output
    assert "latency table: 5 layers" in res.output and "allocation latency-table" in res.output
    res = CliRunner().invoke(main, [str(src), "-o", str(tmp_path / "u.onnx"), "--target-latency", "7",
                                    "--round-to", "4", "--no-latency-table"])
    assert res.exit_code == 0 and "latency table" not in res.output, res.output


def test_keep_macs_allocation_removes_the_fewest_macs_per_millisecond():
    """Two equal groups; one feeds a 3x3 conv, the other a 1x1, and the timer charges both alike
    per channel pair (as a memory-bound layer would). Costed by MACs, the allocation cuts the 1x1's
    group first: the same predicted time saved for a ninth of the MACs."""
    from compressor.planning.allocate import cost_table
    from compressor.planning.budget import plan_cost

    g = G()
    x = g.input("x", [1, 8, 8, 8])
    a = g.cbr(x, 8, 32, k=1)
    a = g.cbr(a, 32, 8)  # 3x3
    b = g.cbr(x, 8, 32, k=1)
    b = g.cbr(b, 32, 8, k=1)  # 1x1
    model = g.model([g.op("Add", [a, b])])
    an = api.analyze(model)
    scores = {gr.id: np.ones(gr.size) for gr in an.prunable}

    def timer(m) -> float:
        w = next(i for i in m.graph.initializer if i.name == "w")
        return 1e-3 * w.dims[0] * w.dims[1]  # channels only: a 3x3 costs what a 1x1 does

    floor = lambda n: max(1, n // 4)  # noqa: E731
    table = measure_table(an, 17, timer, reference_ms=1.0, step=8, floor=floor)
    macs = cost_table(an, 17, 8, floor, "macs")
    keep = Allocator(an, scores, PlanOptions(round_to=8), table, macs=macs)
    plan, _ = keep.plan_for(0.8)
    widths = {d.id: len(d.kept) for d in plan.groups if d.size == 32}
    three = next(gr.id for gr in an.prunable if gr.size == 32 and any(
        (an.index.shape(m.tensor) or (0,))[-1] == 3 for m in gr.members))
    one = next(gid for gid in widths if gid != three)
    assert widths[one] < widths[three] == 32, widths
    plain, _ = Allocator(an, scores, PlanOptions(round_to=8), table).plan_for(0.8)
    assert plan_cost(an, plan.keep)[0] >= plan_cost(an, plain.keep)[0]
    assert TableKnob(keep).details()["allocation_cost"] == "macs"
    with pytest.raises(ValueError):
        Allocator(an, scores, PlanOptions(round_to=8), table, macs=macs, sensitivity=object())


def test_prune_keep_macs_needs_a_latency_target_and_excludes_sensitivity(fake_meter):  # noqa: F811
    from compressor.errors import UsageError

    res = api.prune(branchy(), target_latency=7.0, round_to=4, keep_macs=True)
    b = res.report["budget"]
    assert b["allocation_cost"] == "macs" and "sensitivity" not in b and res.report["verify"]["passed"]
    with pytest.raises(UsageError, match="needs --target-latency"):
        api.prune(branchy(), ratio=0.5, keep_macs=True)
    with pytest.raises(UsageError, match="pick one"):
        api.prune(branchy(), target_latency=7.0, keep_macs=True, sensitivity=True)


def test_grouped_conv_probes_run_at_multiples_of_their_groups():
    """A conv with 6 groups of 8 channels: every probe of the table keeps whole groups (a multiple
    of 6 channels, and of the step) so onnxruntime can run it; regnet_y_400mf's --target-latency
    used to stop on 'Output channels M is not divisible by group'."""
    g = G()
    x = g.input("x", [1, 8, 8, 8])
    h = g.cbr(x, 8, 48, k=1)
    h = g.cbr(h, 48, 48, group=6)
    model = g.model([g.cbr(h, 48, 16, k=1)])
    an = api.analyze(model)
    probed = []
    real = ort_layer_timer("cpu", 1, min_time_s=0.0, min_runs=1, warmup=0)

    def timer(m) -> float:
        node = m.graph.node[0]
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        w = next(i for i in m.graph.initializer if i.name == "w")
        probed.append((group, w.dims[0]))
        return real(m)  # raises if onnxruntime rejects the probe

    table = measure_table(an, 17, timer, reference_ms=1.0, step=8, floor=lambda n: max(1, n // 4))
    grouped = [(gr, cout) for gr, cout in probed if gr == 6]
    assert grouped and all(cout % 24 == 0 or cout == 12 for _, cout in grouped), grouped
    assert table.probes + table.retimed == len(probed)


def test_leftover_probe_is_a_block_read_through_the_constant_add():
    """The leftover probe: with the Add, both the next block's conv and its residual sum read the
    constant Add's output; without it, the same model reads the ReLU. Both run on onnxruntime."""
    import onnx

    from compressor.bench.layers import leftover_probe, time_leftover

    shape = (1, 24, 5, 5)
    for with_add in (True, False):
        m = leftover_probe(shape, with_add, 17)
        onnx.checker.check_model(m, full_check=True)
        readers = [n.op_type for n in m.graph.node if ("hk" if with_add else "h") in n.input]
        assert readers == ["Conv", "Add"]
        assert sum(n.op_type == "Add" for n in m.graph.node) == (2 if with_add else 1)
        s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        (y,) = s.run(None, {"x": np.ones((1, 16, 5, 5), np.float32)})
        assert y.shape == shape
    assert time_leftover(ort_layer_timer("cpu", 1, min_time_s=0.001, min_runs=2), shape, 17, repeats=1) >= 0.0
