"""Option values and files that `compress` must refuse with one clear line and exit 2, before any
work (found by exploring the CLI: each of these was an internal error, exit 1, a wrong category,
or silently ignored)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from tests.core.test_cli import assert_error, run, small_model


@pytest.fixture
def model_path(tmp_path):
    p = tmp_path / "m.onnx"
    onnx.save(small_model(), p)
    return p


@pytest.mark.parametrize("args, fragment", [
    (["--seed", "-1"], "--seed must be"),
    (["--target-latency", "nan"], "--target-latency must be a positive number"),
    (["--target-latency", "0"], "--target-latency must be a positive number"),
    (["--target-speedup", "inf"], "--target-speedup must be a finite number above 1"),
    (["--tolerance", "-1"], "--tolerance must be"),
    (["--tolerance", "nan"], "--tolerance must be"),
    (["--merge-identical", "-0.1"], "--merge-identical must be"),
    (["--ratio", "0.3", "--target-macs", "0.5"], "--ratio is replaced by the budget"),
])
def test_bad_option_values(model_path, args, fragment, monkeypatch):
    from compressor import api

    monkeypatch.setattr(api, "_latency_plan", lambda *a, **k: pytest.fail("measured before refusing"))
    assert_error(run(model_path, "--dry-run", *args), 2, fragment)


def test_bench_bad_option_values(model_path):
    assert_error(run("bench", model_path, "--seed", "-1"), 2, "--seed must be")
    assert_error(run("bench", model_path, "--min-time", "inf"), 2, "--min-time must be a positive number")


def _plan(model_path, tmp_path) -> dict:
    out = tmp_path / "plan.json"
    assert run(model_path, "--dry-run", "--plan-out", out).exit_code == 0
    return json.loads(out.read_text())


@pytest.mark.parametrize("edit, fragment", [
    (lambda p: p.pop("options"), "missing field 'options'"),
    (lambda p: p["options"].update(bogus=1), "not a valid plan"),
    (lambda p: p["groups"][0].pop("kept"), "not a valid plan"),
    (lambda p: p["groups"][0].update(kept=["a"]), "a kept channel index must be an integer"),
    (lambda p: p["groups"][0].update(kept=[0.5]), "a kept channel index must be an integer"),
    (lambda p: p.update(groups=None), "not a valid plan"),
])
def test_malformed_plan_files(model_path, tmp_path, edit, fragment):
    plan = _plan(model_path, tmp_path)
    edit(plan)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(plan))
    assert_error(run(model_path, "--dry-run", "--plan-in", bad), 2, fragment)


def test_report_plans_with_bad_indices_and_a_directory(model_path, tmp_path):
    res = run(model_path, "--dry-run", "--json")
    report = json.loads(res.output)
    report["plan"][0]["kept"] = [0, 999]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(report))
    assert_error(run(model_path, "--dry-run", "--plan-in", bad), 2, "invalid indices")
    assert_error(run(model_path, "--dry-run", "--plan-in", tmp_path), 2, "cannot read plan file")


def test_a_plan_emptying_a_group_that_cannot_go_whole(model_path, tmp_path):
    plan = _plan(model_path, tmp_path)
    for g in plan["groups"]:
        if g["kept"] != list(range(g["size"])):  # the one prunable group: without it the graph
            g["kept"] = []                       # output would be a constant (the last conv's bias)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(plan))
    assert_error(run(model_path, "--dry-run", "--plan-in", bad), 2, "cannot be removed whole")


def test_plan_in_excludes_width_options(model_path, tmp_path):
    _plan(model_path, tmp_path)
    assert_error(run(model_path, "--dry-run", "--plan-in", tmp_path / "plan.json", "--round-to", "8"), 2,
                 "--plan-in replays")


@pytest.mark.parametrize("array, fragment", [
    (np.zeros((0, 3, 8, 8), np.float32), "no samples"),
    (np.float32(1.0), "no samples"),
    (np.full((2, 3, 8, 8), np.nan, np.float32), "NaN or infinite"),
])
def test_degenerate_calibration_data(model_path, tmp_path, array, fragment):
    np.save(tmp_path / "c.npy", array)
    assert_error(run(model_path, "--dry-run", "--target-macs", "0.5", "--calibration", tmp_path / "c.npy"), 2,
                 fragment)


def test_calibration_directory(model_path, tmp_path):
    assert_error(run(model_path, "--dry-run", "--target-macs", "0.5", "--calibration", tmp_path), 2,
                 "is a directory")


def test_options_without_effect_are_warned_about(model_path):
    res = run(model_path, "--dry-run", "--json", "--exclude", "nomatch*", "--round-to", "1000")
    assert res.exit_code == 0
    report = json.loads(res.output[res.output.index("{"):])
    assert any("--exclude 'nomatch*' matches no node" in w for w in report["warnings"])
    assert any("nothing was removed" in w for w in report["warnings"])


def test_a_misspelt_command_is_named(tmp_path):
    res = run("inpsect", tmp_path / "m.onnx")
    assert res.exit_code == 2 and "did you mean 'inspect'" in res.output


def test_global_is_refused_beside_an_allocation(model_path):
    assert_error(run(model_path, "--dry-run", "--global", "--target-macs", "0.5", "--sensitivity"), 2,
                 "--global ranks channels")
    assert run(model_path, "--dry-run", "--global", "--target-macs", "0.5").exit_code == 0


def test_inspect_lists_the_largest_layers_and_warns_about_an_unmatched_exclude(model_path):
    res = run("inspect", model_path, "--exclude", "zzz*")
    assert res.exit_code == 0
    lines = res.output.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("layer") and "MACs" in line)
    assert "%" in lines[head + 1], "a layer row: name, MACs, share of the model's"
    assert any(line.startswith("warning: --exclude 'zzz*' matches no node") for line in lines)


def test_timing_options_without_anything_timed_are_warned_about(model_path):
    res = run(model_path, "--dry-run", "--json", "--provider", "cpu", "--latency-tolerance", "0.1")
    assert res.exit_code == 0
    report = json.loads(res.output[res.output.index("{"):])
    idle = [w for w in report["warnings"] if "has no effect here" in w]
    assert [w.split()[0] for w in idle] == ["--latency-tolerance", "--provider"]
    res = run(model_path, "--dry-run", "--json")
    assert "warnings" not in json.loads(res.output[res.output.index("{"):]), "defaults are not warned about"


@pytest.mark.parametrize("extra", [["--target-macs", "0.3"], ["--target-latency", "1"], ["--drop-layers"],
                                   ["--keep-macs"], ["--sensitivity"]])
def test_plan_in_refuses_budgets_and_allocation_options(model_path, tmp_path, extra, monkeypatch):
    """They were accepted and silently ignored (exit 0, no budget in the report)."""
    from compressor import api

    monkeypatch.setattr(api, "_latency_plan", lambda *a, **k: pytest.fail("measured before refusing"))
    _plan(model_path, tmp_path)
    assert_error(run(model_path, "--dry-run", "--plan-in", tmp_path / "plan.json", *extra), 2, "--plan-in replays")


def test_plan_in_reports_the_replayed_plan_and_warns_about_importance(model_path, tmp_path):
    _plan(model_path, tmp_path)
    res = run(model_path, "--dry-run", "--json", "--plan-in", tmp_path / "plan.json", "--importance", "random")
    assert res.exit_code == 0
    report = json.loads(res.output[res.output.index("{"):])
    assert report["importance"] == "replayed plan (--plan-in)"
    assert any(w.startswith("--importance has no effect here") for w in report["warnings"])


def test_learned_widths_need_widths(model_path):
    m = onnx.load(model_path)
    doc = {"schema": "compressor.learned/1", "method": "l1", "groups": [
        {"members": [{"tensor": m.graph.node[0].input[1], "axis": 0, "offset": 0, "inner": 1}], "size": 8,
         "importance": [1.0] * 8}]}
    m.metadata_props.append(onnx.StringStringEntryProto(key="compressor.learned", value=json.dumps(doc)))
    onnx.save(m, model_path)
    assert_error(run(model_path, "--dry-run", "--learned-widths"), 2, "gives no group a width")
