"""Fitting the latency table to profiles of the whole model (bench/calibrate.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from onnx import helper

from compressor import api
from compressor.bench.calibrate import Point, attribute_kernels, calibrate, fit_layer, fit_to_profiles
from compressor.bench.inputs import random_feeds
from compressor.bench.layers import measure_table
from compressor.importance import score_groups
from compressor.ir.graph import node_label
from compressor.planning import PlanOptions, make_plan
from tests.core.test_latency_budget import fake_meter_real_profiles  # noqa: F401 (fixture)
from tests.core.test_latency_table import _bilinear_timer, branchy


def _graph(nodes):
    return helper.make_graph(nodes, "g", [], [])


def N(op, ins, outs, name, domain=""):  # noqa: N802 - reads like the graphs it builds
    return helper.make_node(op, ins, outs, name=name, domain=domain)


def _covered(cover, kernel):
    return sorted(n.name for n in cover[kernel])


def test_kernels_cover_the_original_nodes_they_fuse_and_convert_for():
    """onnxruntime's CPU graph, as it names things: a Conv+Relu in the blocked layout named after
    the Relu's output (its own output internal), the layout conversions around it, a MatMul+Add
    turned into a Gemm between two Reshapes of internal tensors, and a GELU of five nodes fused."""
    original = _graph([
        N("Conv", ["x", "w1"], ["c1"], "conv1"), N("Relu", ["c1"], ["r1"], "relu1"),
        N("MatMul", ["r1", "w2"], ["m"], "mm"), N("Add", ["m", "b2"], ["a"], "add"),
        N("Div", ["a", "k"], ["d"], "div"), N("Erf", ["d"], ["e"], "erf"), N("Add", ["e", "one"], ["e1"], "add1"),
        N("Mul", ["a", "e1"], ["m1"], "mul"), N("Mul", ["m1", "half"], ["y"], "mul1"),
    ])
    nchwc = "com.microsoft.nchwc"
    optimized = _graph([
        N("ReorderInput", ["x"], ["x_nchwc"], "ReorderInput", nchwc),
        N("Conv", ["x_nchwc", "w1r"], ["reorder_token_0"], "r1_nchwc", nchwc),
        N("ReorderOutput", ["reorder_token_0"], ["r1"], "ReorderOutput", nchwc),
        N("Reshape", ["r1", "s"], ["gemm_in"], "gemm_input_reshape"),
        N("Gemm", ["gemm_in", "w2", "b2"], ["gemm_out"], "mm/MatMulAddFusion"),
        N("Reshape", ["gemm_out", "s2"], ["a"], "gemm_output_reshape"),
        N("Gelu", ["a"], ["y"], "Gelu", "com.microsoft"),
    ])
    kernels = {k.name: 1.0 for k in optimized.node}
    cover, times, lost = attribute_kernels(original, optimized, kernels)
    assert lost == 0 and set(cover) == set(kernels)
    for k in ("ReorderInput", "r1_nchwc", "ReorderOutput"):
        assert _covered(cover, k) == ["conv1", "relu1"], k
    for k in ("gemm_input_reshape", "mm/MatMulAddFusion", "gemm_output_reshape"):
        assert _covered(cover, k) == ["add", "mm"], k
    assert _covered(cover, "Gelu") == ["add1", "div", "erf", "mul", "mul1"]


def test_a_kernel_with_no_original_node_is_reported_lost():
    original = _graph([N("Relu", ["x"], ["y"], "relu")])
    optimized = _graph([N("Relu", ["x"], ["y"], "relu"), N("Identity", ["q"], ["z"], "extra")])
    cover, _, lost = attribute_kernels(original, optimized, {"relu": 1.0, "extra": 0.5, "gone": 0.25})
    assert set(cover) == {"relu"} and lost == pytest.approx(0.75)


def test_a_layer_fit_takes_the_slope_through_two_points_and_falls_back_to_the_ratio():
    assert fit_layer([1.0, 0.5], [1.5, 0.9]) == pytest.approx((1.2, 0.3, 0.5))
    assert fit_layer([1.0], [1.5]) == (1.5, 0.0, 0.0)
    assert fit_layer([1.0, 0.98], [1.5, 1.2]) == (1.5, 0.0, 0.0), "points too close: no slope"
    assert fit_layer([1.0, 0.5], [1.5, -2.0]) == (1.5, 0.0, 0.0), "a slope out of bounds is noise"


@pytest.fixture(scope="module")
def table_and_plan():
    an = api.analyze(branchy())
    scores = score_groups(an, "l2")
    table = measure_table(an, 17, _bilinear_timer, reference_ms=5.0, step=4, floor=lambda n: max(1, n // 4))
    plan = make_plan(an, scores, PlanOptions(ratio=0.5, round_to=4))
    return an, scores, table, {g.id: len(g.kept) for g in plan.groups}


def test_calibrated_layers_follow_the_fitted_line_and_rest_nodes_their_own_cost(table_and_plan):
    an, scores, table, half = table_and_plan
    probe = {lyr.node: table.layer_ms(lyr, *lyr.channels(half)) for lyr in table.layers}
    dense_probe = {lyr.node: table.layer_ms(lyr, lyr.dense_cin, lyr.dense_cout) for lyr in table.layers}
    line = lambda p: 0.8 * p + 0.05  # noqa: E731 - in-graph time against probe time, every layer
    rest = [lb for lb, lin in table.rest_nodes if lin[1]]  # rest nodes whose elements follow the widths
    pool = next(lb for lb, _ in table.rest_nodes if "GlobalAveragePool" in lb)
    dense_pt = Point(dict(table.dense_widths), {k: line(v) for k, v in dense_probe.items()}, {rest[0]: 0.3, pool: 0.1})
    half_pt = Point(half, {k: line(v) for k, v in probe.items()}, {})
    cal, info = calibrate(table, [dense_pt, half_pt])
    assert info.summary()["layers_fitted"] == 5 and info.summary()["slope_median"] == pytest.approx(0.8)
    assert cal.dense_ms() == pytest.approx(table.reference_ms), "the fitted table still sums to the reference"
    third = {g: max(1, w * 3 // 4) for g, w in table.dense_widths.items()}  # between the points: the line
    quarter = {g: max(1, w // 4) for g, w in table.dense_widths.items()}  # below them: the ratio at half
    for lyr in table.layers:
        raw = table.layer_ms(lyr, *lyr.channels(third))
        assert cal.layer_ms(lyr, *lyr.channels(third)) == pytest.approx(line(raw))
        low, narrow = probe[lyr.node], table.layer_ms(lyr, *lyr.channels(quarter))
        if narrow < low:
            assert cal.layer_ms(lyr, *lyr.channels(quarter)) == pytest.approx(narrow * line(low) / low)
    layers_dense = sum(line(v) for v in dense_probe.values())
    constant = table.reference_ms - layers_dense - 0.4
    assert info.constant_ms == pytest.approx(constant)
    lin = dict(table.rest_nodes)
    share = lambda lb, w: lin[lb][0] + sum(c * w[g] for g, c in lin[lb][1].items())  # noqa: E731
    follow = lambda lb: share(lb, third) / share(lb, table.dense_widths)  # noqa: E731
    assert pool != rest[0] and follow(rest[0]) < 1
    expect = 0.3 * follow(rest[0]) + 0.1 * follow(pool) + constant
    assert cal.rest(third) == pytest.approx(expect), "each rest node follows its own elements; the constant stays"
    assert cal.layer_ms(table.layers[0], 0, 8) == 0.0, "a removed layer still costs nothing"
    with pytest.raises(ValueError, match="already calibrated"):
        fit_to_profiles(cal, branchy(), {})


def test_a_real_profile_credits_every_kernel_and_fits_every_layer(table_and_plan):
    an, scores, table, half = table_and_plan
    model = branchy()
    feeds = random_feeds(model, {"x": [1, 3, 16, 16]})
    second = api._pruned_for_timing(an, make_plan(an, scores, PlanOptions(ratio=0.5, round_to=4)))
    cal, info = fit_to_profiles(table, model, feeds, (second, half), threads=1, min_time_s=0.1)
    s = info.summary()
    assert s["kernels"] > 0 and s["unattributed_ms"] == 0 and s["profiled_models"] == 2
    assert s["layers_fitted"] == 5 and s["runs"] >= 5
    assert cal.dense_ms() == pytest.approx(table.reference_ms, rel=1e-6)
    assert all(math.isfinite(cal.layer_ms(lyr, *lyr.channels(half))) for lyr in table.layers)
    assert cal.summary()["calibration"] == s
    labels = {node_label(n) for n in model.graph.node}
    assert set(info.fit) <= labels and set(info.rest_ms) <= labels


def test_prune_to_latency_reports_the_profile_fit_unless_turned_off(fake_meter_real_profiles):  # noqa: F811
    from compressor.planning.budget import LatencyTargetError

    try:  # the fake meter's ratios follow the MACs, not the profile: its search may miss
        on = api.prune(branchy(), target_latency=7.0, round_to=4).report["budget"]["latency_table"]
    except LatencyTargetError as exc:
        on = exc.budget["latency_table"]
    assert on["calibration"]["layers_fitted"] == 5 and on["calibration"]["profiled_models"] == 2
    off = api.prune(branchy(), target_latency=7.0, round_to=4, profile_table=False).report["budget"]
    assert "calibration" not in off["latency_table"]


def test_profiles_are_taken_on_the_cpu_provider_only(table_and_plan):
    an, scores, table, _ = table_and_plan

    class Meter:
        provider_used, threads = "CUDAExecutionProvider", 1

    same = api._profiled_table(table, branchy(), an, scores, PlanOptions(round_to=4), None, Meter(), False)
    assert same is table and "CPU provider only" in same.calibration["skipped"]
    table.calibration = None
    assert np.isfinite(table.dense_ms())
