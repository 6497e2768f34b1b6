"""CLI behaviour: every bad input gets one clear line, the right exit code, and loses nothing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import helper

from compressor.cli import main
from tests.core.graphs import G


def small_model(opset: int = 17) -> onnx.ModelProto:
    g = G(opset=opset)
    x = g.input("x", ["N", 3, 8, 8])
    h = g.cbr(x, 3, 8)
    return g.model([g.conv(h, 8, 2)])


@pytest.fixture
def model_path(tmp_path) -> Path:
    p = tmp_path / "m.onnx"
    onnx.save(small_model(), p)
    return p


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_error(res, code: int, fragment: str):
    assert res.exit_code == code, f"expected exit {code}, got {res.exit_code}: {res.output}"
    lines = [l for l in res.output.strip().splitlines() if l.startswith("error:")]
    assert len(lines) == 1, f"expected exactly one error line: {res.output!r}"
    assert fragment in lines[0], f"error should mention {fragment!r}: {lines[0]}"
    assert "Traceback" not in res.output


def test_prune_writes_verified_model_and_json_report(model_path, tmp_path):
    out = tmp_path / "small.onnx"
    res = run(model_path, "-o", out, "--ratio", "0.5", "--json")
    assert res.exit_code == 0, res.output
    report = json.loads(res.output)
    for key in ("input", "output", "input_shapes", "macs_before", "macs_after", "params_before", "params_after",
                "groups", "barriers", "verify", "seconds", "plan"):
        assert key in report, f"report lacks {key}"
    assert report["verify"]["passed"] and report["verify"]["max_rel_err"] < 1e-5
    assert report["defaults_used"], "the dynamic batch default must be reported"
    assert out.exists() and onnx.load(out).graph.node


def test_report_plan_lists_exact_slices_and_replays_to_same_model(model_path, tmp_path):
    out1, out2, rep = tmp_path / "a.onnx", tmp_path / "b.onnx", tmp_path / "r.json"
    res = run(model_path, "-o", out1, "--ratio", "0.4", "--global", "--json")
    rep.write_text(res.output)
    plan = json.loads(res.output)["plan"]
    orig = {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(model_path).graph.initializer}
    pruned = {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(out1).graph.initializer}
    rebuilt = dict(orig)
    for entry in plan:
        rebuilt[entry["tensor"]] = np.take(rebuilt[entry["tensor"]], entry["kept"], axis=entry["axis"])
    for name, arr in rebuilt.items():
        np.testing.assert_array_equal(arr, pruned[name], err_msg=f"plan does not reproduce tensor {name}")
    res2 = run(model_path, "-o", out2, "--plan-in", rep)
    assert res2.exit_code == 0, res2.output
    assert out1.read_bytes() == out2.read_bytes(), "replaying the report's plan must give the same model"


def test_plan_out_plan_in_round_trip(model_path, tmp_path):
    plan = tmp_path / "plan.json"
    assert run(model_path, "-o", tmp_path / "a.onnx", "--ratio", "0.3", "--plan-out", plan).exit_code == 0
    assert json.loads(plan.read_text())["schema"] == "compressor.plan/1"
    assert run(model_path, "-o", tmp_path / "b.onnx", "--plan-in", plan).exit_code == 0
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()


def test_inspect_table_and_json(model_path):
    res = run("inspect", model_path)
    assert res.exit_code == 0 and "prunable" in res.output
    info = json.loads(run("inspect", model_path, "--json").output)
    assert info["groups"]["prunable"] == 1 and info["layers"]


def test_missing_file(tmp_path):
    assert_error(run(tmp_path / "nope.onnx", "-o", tmp_path / "o.onnx"), 2, "not found")


def test_directory(tmp_path):
    assert_error(run(tmp_path, "-o", tmp_path / "o.onnx"), 2, "directory")


def test_truncated_file(model_path, tmp_path):
    bad = tmp_path / "trunc.onnx"
    bad.write_bytes(model_path.read_bytes()[:200])
    res = run(bad, "-o", tmp_path / "o.onnx")
    assert res.exit_code == 2 and res.output.startswith("error:"), res.output


def test_not_onnx(tmp_path):
    bad = tmp_path / "text.onnx"
    bad.write_text("this is not a model\n" * 10)
    res = run(bad, "-o", tmp_path / "o.onnx")
    assert res.exit_code == 2 and res.output.startswith("error:"), res.output


def _graph_with(nodes, inits=()):
    g = helper.make_graph(nodes, "bad", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 2])],
                          [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 2])], list(inits))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 10
    return m


@pytest.mark.parametrize("kind,fragment", [
    ("dangling", "which no node"),
    ("cycle", "before it is produced"),
    ("missing_init", "missing initializer"),
])
def test_invalid_graphs(tmp_path, kind, fragment):
    if kind == "dangling":
        m = _graph_with([helper.make_node("Add", ["x", "ghost"], ["y"])])
    elif kind == "cycle":
        m = _graph_with([helper.make_node("Add", ["x", "b"], ["a"]), helper.make_node("Relu", ["a"], ["b"]),
                         helper.make_node("Identity", ["b"], ["y"])])
    else:
        m = _graph_with([helper.make_node("Mul", ["x", "w"], ["y"])])
    p = tmp_path / "bad.onnx"
    onnx.save(m, p)
    assert_error(run(p, "-o", tmp_path / "o.onnx"), 2, fragment)


def test_unsupported_opset(tmp_path):
    m = small_model()
    m.opset_import[0].version = 5
    p = tmp_path / "old.onnx"
    onnx.save(m, p)
    assert_error(run(p, "-o", tmp_path / "o.onnx"), 2, "opset 5")


@pytest.mark.parametrize("ratio", ["1.0", "-0.1", "1.5"])
def test_ratio_out_of_range(model_path, tmp_path, ratio):
    assert_error(run(model_path, "-o", tmp_path / "o.onnx", "--ratio", ratio), 2, "--ratio")


def test_input_shape_contradicting_model(model_path, tmp_path):
    assert_error(run(model_path, "-o", tmp_path / "o.onnx", "--input-shape", "1x4x8x8"), 2, "contradicts the model")


def test_bad_input_shape_syntax(model_path, tmp_path):
    res = run(model_path, "-o", tmp_path / "o.onnx", "--input-shape", "1xAx8")
    assert res.exit_code == 2 and "error:" in res.output


def test_refuses_to_overwrite_input(model_path):
    before = model_path.read_bytes()
    assert_error(run(model_path, "-o", model_path), 2, "overwrite")
    assert model_path.read_bytes() == before, "the input model must be untouched"


def test_external_data_escaping_folder_is_refused(tmp_path):
    m = small_model()
    t = m.graph.initializer[0]
    t.ClearField("raw_data")
    del t.float_data[:]
    t.data_location = onnx.TensorProto.EXTERNAL
    e = t.external_data.add()
    e.key, e.value = "location", "../../etc/passwd"
    p = tmp_path / "ext.onnx"
    p.write_bytes(m.SerializeToString())
    assert_error(run(p, "-o", tmp_path / "o.onnx"), 2, "outside the model's folder")


def test_external_data_model_round_trip(tmp_path):
    m = small_model()
    src = tmp_path / "src"
    src.mkdir()
    onnx.save_model(m, src / "m.onnx", save_as_external_data=True, location="m.data", size_threshold=0)
    res = run(src / "m.onnx", "-o", tmp_path / "o.onnx")
    assert res.exit_code == 0, res.output


def test_verification_failure_exits_3_and_writes_nothing(model_path, tmp_path, monkeypatch):
    from compressor import api
    from compressor.verify.oracle import VerifyResult

    def broken(*a, **k):
        return VerifyResult(False, 0.5, 1.0, 1e-4, 2, {"y": 0.5}, "CPUExecutionProvider")

    monkeypatch.setattr(api, "verify", broken)
    out = tmp_path / "o.onnx"
    res = run(model_path, "-o", out)
    assert_error(res, 3, "does not reproduce")
    assert not out.exists(), "nothing may be written when verification fails"


def test_internal_error_exit_1_traceback_only_with_debug(model_path, tmp_path, monkeypatch):
    from compressor import api

    def boom(*a, **k):
        raise RuntimeError("kaboom")

    monkeypatch.setattr(api, "apply_plan", boom)
    res = run(model_path, "-o", tmp_path / "o.onnx")
    assert res.exit_code == 1 and "internal error" in res.output and "Traceback" not in res.output
    res = run(model_path, "-o", tmp_path / "o.onnx", "--debug")
    assert res.exit_code == 1 and "Traceback" in res.output


def test_no_output_without_dry_run(model_path):
    assert_error(run(model_path), 2, "--output")


def test_cli_starts_without_torch(model_path, tmp_path):
    """The CLI must prune with torch unavailable (torch is only the [train] extra)."""
    import subprocess
    import sys

    code = ("import sys; sys.modules['torch'] = None; from compressor.cli import main; "
            f"main([{str(model_path)!r}, '-o', {str(tmp_path / 'o.onnx')!r}])")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "verification: passed" in r.stdout


def test_merge_identical_and_fold_constants_flags(tmp_path):
    """Duplicated filters are merged exactly before pruning; the report carries the transform."""
    g = G()
    x = g.input("x", [1, 3, 8, 8])
    h = g.conv(x, 3, 6)
    m = g.model([g.conv(g.op("Relu", [h]), 6, 2)])
    w = {t.name: t for t in m.graph.initializer}[m.graph.node[0].input[1]]
    arr = onnx.numpy_helper.to_array(w).copy()
    arr[3] = arr[0]
    w.CopyFrom(onnx.numpy_helper.from_array(arr, w.name))
    b = {t.name: t for t in m.graph.initializer}[m.graph.node[0].input[2]]
    barr = onnx.numpy_helper.to_array(b).copy()
    barr[3] = barr[0]
    b.CopyFrom(onnx.numpy_helper.from_array(barr, b.name))
    src = tmp_path / "dup.onnx"
    onnx.save(m, src)
    res = run(src, "-o", tmp_path / "o.onnx", "--ratio", "0", "--merge-identical", "1e-6", "--fold-constants", "--json")
    assert res.exit_code == 0, res.output
    report = json.loads(res.output)
    merge = report["transforms"][0]
    assert merge["channels_removed"] == 1 and merge["max_rel_err"] <= 1e-5, merge
    assert report["plan_applies_to"] == "model after transforms"
    assert report["verify"]["passed"]


@pytest.mark.parametrize("spinning", [False, True])
def test_bench_adds_latency_and_macs_ratio_to_the_report(model_path, tmp_path, spinning):
    """--bench: the report gains latency {provider, before_ms, after_ms, speedup} and macs_ratio;
    --spinning times it with onnxruntime's default spinning, models in blocks, and says so."""
    out = tmp_path / "small.onnx"
    res = run(model_path, "-o", out, "--ratio", "0.5", "--bench", "--json", *(["--spinning"] if spinning else []))
    assert res.exit_code == 0, res.output
    report = json.loads(res.output[res.output.index("{"):])
    lat = report["latency"]
    assert lat["provider"] == "CPUExecutionProvider" and lat["before_ms"] > 0 and lat["after_ms"] > 0, lat
    assert lat["speedup"] > 0 and report["macs_ratio"] > 1, report
    assert (lat["spinning"], lat["interleave"]) == (spinning, "block" if spinning else "run"), lat
    table = run(model_path, "-o", tmp_path / "t.onnx", "--ratio", "0.5", "--bench", *(["--spinning"] if spinning else []))
    assert table.exit_code == 0 and ("latency (CPUExecutionProvider, spinning)" in table.output) == spinning, table.output
