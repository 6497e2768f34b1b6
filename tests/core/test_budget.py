"""Budgets: MACs/params targets are met with the least pruning; impossible budgets are refused with
nothing written. (Latency targets: tests/core/test_latency_budget.py.)"""

from __future__ import annotations

import dataclasses

import pytest

from compressor import api
from compressor.errors import UsageError
from compressor.planning import PlanOptions
from compressor.planning.budget import plan_for_fraction
from compressor.importance import score_groups
from tests.core.graphs import G


def net():
    g = G()
    x = g.input("x", [1, 3, 8, 8])
    h = g.cbr(x, 3, 32)
    h = g.op("Add", [h, g.cbr(h, 32, 32)])
    h = g.cbr(h, 32, 48)
    return g.model([g.conv(h, 48, 4)])


@pytest.mark.parametrize("kind,fraction,global_ranking", [("macs", 0.5, False), ("macs", 0.25, True),
                                                          ("params", 0.4, False)])
def test_fraction_budget_is_met_closely(kind, fraction, global_ranking):
    res = api.prune(net(), **{f"target_{kind}": fraction}, global_ranking=global_ranking)
    r = res.report
    got = (r["macs_after"] / r["macs_before"]) if kind == "macs" else (r["params_after"] / r["params_before"])
    assert got <= fraction + 1e-9, f"budget {fraction} exceeded: {got}"
    assert got >= fraction - 0.08, f"pruned far more than needed: {got} for {fraction}"
    assert r["verify"]["passed"] and r["budget"]["kind"] == kind


def test_unreachable_budget_is_a_usage_error():
    with pytest.raises(UsageError, match="unreachable"):
        api.prune(net(), target_macs=0.001)


def test_two_budgets_conflict():
    with pytest.raises(UsageError, match="at most one"):
        api.prune(net(), target_macs=0.5, target_params=0.5)


def test_round_to_auto_measures_candidates_and_keeps_multiples():
    res = api.prune(net(), ratio=0.5, round_to="auto")
    ra = res.report["round_to_auto"]
    assert {m["round_to"] for m in ra["measured"]} >= {1, 4, 8}
    chosen = ra["chosen"]
    assert min(ra["measured"], key=lambda m: m["latency_ms"])["round_to"] == chosen
    # at ratio 0.5 the 32/48-channel groups keep 16/24 under 1, 4 and 8 alike: timed once, not thrice
    by_r = {m["round_to"]: m for m in ra["measured"]}
    assert by_r[4].get("same_plan_as") == 1 and by_r[8].get("same_plan_as") == 1
    assert by_r[4]["latency_ms"] == by_r[1]["latency_ms"] and "same_plan_as" not in by_r[chosen]
    for g in res.plan.groups:
        if g.removed:
            assert len(g.kept) % chosen == 0 or len(g.kept) == g.size


def test_round_to_auto_with_a_budget_reports_the_chosen_plans_budget(monkeypatch):
    """Each multiple is planned for the budget; the report's ``budget`` is the chosen plan's (it was
    the last candidate's), and multiples with no plan are listed with their error."""
    from compressor.bench import api as bench_api

    real = bench_api.benchmark

    def slowest_last(models, **kw):  # the more weights a candidate keeps, the faster it "runs": the
        res = real(models[:1], **{**kw, "min_time": None, "runs": 3})  # finest multiple wins, not the last
        rows = []
        for m in models:
            ms = 1e6 / sum(t.ByteSize() for t in m.graph.initializer)
            rows.append(dataclasses.replace(res.results[0], stats=dataclasses.replace(res.results[0].stats, p50_ms=ms)))
        res.results = rows
        return res

    monkeypatch.setattr(bench_api, "benchmark", slowest_last)
    res = api.prune(net(), target_macs=0.3, round_to="auto")
    r = res.report
    ra = r["round_to_auto"]
    assert r["budget"]["achieved"] == pytest.approx(r["macs_after"] / r["macs_before"])
    assert ra["chosen"] == min(ra["measured"], key=lambda m: m["latency_ms"])["round_to"] == 1
    listed = {m["round_to"] for m in ra["measured"]} | {f["round_to"] for f in ra.get("failed", [])}
    assert listed == {1, 4, 8, 16, 32}


def test_fraction_rejects_out_of_range():
    an = api.analyze(net())
    with pytest.raises(UsageError):
        plan_for_fraction(an, score_groups(an, "l2"), PlanOptions(), "macs", 1.5)


def test_a_provider_fallback_while_timing_is_warned_about():
    """--round-to auto (like a latency target) timed on a provider that fell back: one warning, as
    it happens and in the report (it was silent; only the measured rows named the provider)."""
    lines: list[str] = []
    res = api.prune(net(), ratio=0.5, round_to="auto", provider="cuda", log=lines.append)
    used = {m["provider"] for m in res.report["round_to_auto"]["measured"]}
    if used == {"CUDAExecutionProvider"}:
        pytest.skip("CUDA works here: nothing falls back")
    assert len(lines) == 1 and lines[0].startswith("warning: CUDAExecutionProvider is unavailable"), lines
    assert res.report["warnings"] == [lines[0].removeprefix("warning: ")]


def trunk_net():
    """An 8-channel residual trunk under wide branches: one trunk channel changes every layer, so
    the global ranking's MACs fall in one jump when the trunk is cut."""
    g = G()
    x = g.input("x", [1, 3, 16, 16])
    h = g.cbr(x, 3, 8)
    for _ in range(3):
        h = g.op("Add", [h, g.cbr(g.cbr(h, 8, 24), 24, 8)])
    h = g.cbr(h, 8, 32)
    return g.model([g.conv(h, 32, 4)])


@pytest.mark.parametrize("round_to,fraction", [(4, 0.5), (1, 0.4), (4, 0.4)])
def test_global_budget_gives_back_the_slack_of_a_jump(round_to, fraction):
    """Before the give-back these landed at 0.356, 0.331 and 0.356: the least global ratio that met
    the budget cut the trunk, and everything else with it. Channels then come back a rounding step
    at a time while the budget holds."""
    res = api.prune(trunk_net(), target_macs=fraction, global_ranking=True, round_to=round_to)
    r = res.report
    got = r["macs_after"] / r["macs_before"]
    assert fraction - 0.01 <= got <= fraction + 1e-9, f"MACs {got} for a {fraction} budget"
    assert r["budget"]["given_back"] > 0 and r["verify"]["passed"]
    for g in res.plan.groups:
        assert len(g.kept) % round_to == 0 or len(g.kept) == g.size, (g.id, len(g.kept))


def test_uniform_budget_keeps_its_uniform_ratio():
    """The give-back is the global ranking's: a uniform plan keeps one ratio for every group."""
    res = api.prune(trunk_net(), target_macs=0.5, round_to=4)
    assert "given_back" not in res.report["budget"]


def test_a_budget_with_nothing_prunable_says_so():
    """It said the most pruned plan 'keeps 1 of the params', as if pruning had been tried."""
    g = G()
    x = g.input("x", [1, 3, 8, 8])
    m = g.model([g.conv(x, 3, 4)])  # the only group reaches the graph output
    with pytest.raises(UsageError, match="no channel group of this model can be pruned"):
        api.prune(m, target_params=0.5)
