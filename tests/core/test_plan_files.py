"""--plan-in reads a plan file or a report's ``plan`` list strictly: a group or tensor axis listed
twice, an index or axis that is not an integer, an unknown field, or options of the wrong type or
range exit 2 with one line that names the entry, instead of being coerced, echoed or miscounted."""

from __future__ import annotations

import json

import onnx
import pytest

from tests.core.test_cli import assert_error, run, small_model


@pytest.fixture
def model_path(tmp_path):
    p = tmp_path / "m.onnx"
    onnx.save(small_model(), p)
    return p


def _plan(model_path, tmp_path) -> dict:
    out = tmp_path / "plan.json"
    assert run(model_path, "--dry-run", "--ratio", "0.5", "--plan-out", out).exit_code == 0
    return json.loads(out.read_text())


def _replay(model_path, tmp_path, data: dict):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    return run(model_path, "--dry-run", "--json", "--plan-in", bad)


def test_a_group_listed_twice_is_refused(model_path, tmp_path):
    """Two entries for one group (the model took the last, the report counted both: '7 pruned of 6')."""
    plan = _plan(model_path, tmp_path)
    pruned = next(g for g in plan["groups"] if len(g["kept"]) < g["size"])
    plan["groups"].append({**pruned, "kept": pruned["kept"][:1]})
    assert_error(_replay(model_path, tmp_path, plan), 2, "twice")


@pytest.mark.parametrize("edit, fragment", [
    (lambda p: p["options"].update(ratio=7), "'ratio' must be a number in [0, 1)"),
    (lambda p: p["options"].update(ratio="0.5"), "'ratio' must be a number"),
    (lambda p: p["options"].update(round_to="eight"), "'round_to' must be an integer"),
    (lambda p: p["options"].update(round_to=0), "'round_to' must be >= 1"),
    (lambda p: p["options"].update(min_channels=1.0), "'min_channels' must be an integer"),
    (lambda p: p["options"].update(global_ranking="yes"), "'global_ranking' must be true or false"),
    (lambda p: p["options"].update(importance=5), "'importance' must be one of"),
    (lambda p: p["options"].update(bogus=1), "unknown field 'bogus'"),
    (lambda p: p["groups"][0].update(note="x"), "plan group 0 has unknown field 'note'"),
    (lambda p: p["groups"][0].update(id="0"), "plan group 0: 'id' must be an integer"),
    (lambda p: p["groups"][0].update(kept=[1.0]), "plan group 0: a kept channel index must be an integer"),
    (lambda p: p["groups"][0].update(signature=[1]), "plan group 0: 'signature' must be a list"),
    (lambda p: p.update(extra=1), "unknown field 'extra'"),
])
def test_plan_file_fields_are_checked(model_path, tmp_path, edit, fragment):
    """Every field of a plan file has its type and range checked; the error names the entry (an
    unknown key used to show Python's 'GroupDecision.__init__() got an unexpected keyword argument')."""
    plan = _plan(model_path, tmp_path)
    edit(plan)
    res = _replay(model_path, tmp_path, plan)
    assert_error(res, 2, fragment)
    assert "__init__" not in res.output and "TypeError" not in res.output, res.output


@pytest.mark.parametrize("edit, fragment", [
    (lambda e: e.update(kept=[k + 0.9 for k in e["kept"]]), "plan entry 0: a kept index must be an integer"),
    (lambda e: e.update(axis=str(e["axis"])), "plan entry 0: 'axis' must be an integer"),
    (lambda e: e.update(axis=True), "plan entry 0: 'axis' must be an integer"),
    (lambda e: e.update(extra=1), "plan entry 0 has unknown field 'extra'"),
    (lambda e: e.pop("kept"), "plan entry 0 is missing field 'kept'"),
])
def test_report_plan_lists_are_not_coerced(model_path, tmp_path, edit, fragment):
    """A report's plan list held to the plan file's standard: kept 2.9 used to become channel 2 and
    axis "0" axis 0."""
    report = json.loads(run(model_path, "--dry-run", "--ratio", "0.5", "--json").output)
    edit(report["plan"][0])
    assert_error(_replay(model_path, tmp_path, report), 2, fragment)


def test_a_report_slicing_one_tensor_axis_twice_is_refused(model_path, tmp_path):
    report = json.loads(run(model_path, "--dry-run", "--ratio", "0.5", "--json").output)
    report["plan"].append({**report["plan"][0], "kept": report["plan"][0]["kept"][:1]})
    assert_error(_replay(model_path, tmp_path, report), 2, "twice")


def test_a_valid_plan_and_report_still_replay(model_path, tmp_path):
    """The checks refuse nothing a plan file or report written by compress holds."""
    plan = _plan(model_path, tmp_path)
    res = _replay(model_path, tmp_path, plan)
    assert res.exit_code == 0, res.output
    report = json.loads(run(model_path, "--dry-run", "--ratio", "0.5", "--json").output)
    again = _replay(model_path, tmp_path, report)
    assert again.exit_code == 0, again.output
    assert json.loads(again.output)["plan"] == report["plan"]


def test_a_plan_with_groups_that_have_no_constant_members_replays(tmp_path):
    """Concat operands whose channels nothing tracks (the graph input) make groups with no constant
    members: empty signatures, which all matched one group on replay, so a plan or report from the
    same model was refused ("no group of 4 channels with members []"; found by random-graph fuzzing)."""
    import json

    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    from compressor import api

    rng = np.random.default_rng(0)
    w = lambda n, *s: numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n)  # noqa: E731
    c = lambda n, v: numpy_helper.from_array(np.array(v, np.int64), n)  # noqa: E731
    # x's own channels join two concats (3 and 2 of them): two groups with no constant member; the
    # convs between stay prunable (a Gather after each concat freezes only the concat's groups)
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"]), helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w1b"], ["c1b"]),
             helper.make_node("Concat", ["c1b", "x"], ["cat1"], axis=1),
             helper.make_node("Gather", ["cat1", "idx"], ["g1"], axis=1), helper.make_node("Conv", ["g1", "w2"], ["c2"]),
             helper.make_node("Slice", ["x", "st", "en", "ax"], ["xs"]),
             helper.make_node("Concat", ["c2", "xs"], ["cat2"], axis=1),
             helper.make_node("Gather", ["cat2", "idx2"], ["y"], axis=1)]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5, 8, 8])],
                          [w("w1", 8, 3, 1, 1), w("w1b", 4, 8, 1, 1), w("w2", 3, 7, 1, 1), c("idx", [0, 2, 1, 4, 3, 5, 6]),
                           c("idx2", [1, 0, 2, 3, 4]), c("st", [0]), c("en", [2]), c("ax", [1])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    res = api.prune(m, ratio=0.5)
    assert sum(1 for grp in res.plan.groups if not grp.signature) >= 2, "the case needs two member-less groups"
    assert res.report["channels"]["removed"] > 0
    (tmp_path / "plan.json").write_text(res.plan.to_json())
    (tmp_path / "report.json").write_text(json.dumps(res.report, default=str))
    for name in ("plan.json", "report.json"):
        again = api.prune(m, plan_in=tmp_path / name)
        assert again.model.SerializeToString() == res.model.SerializeToString(), name
