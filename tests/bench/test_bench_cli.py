"""The `bench` click command through click's CliRunner: outputs, errors and exit codes."""

from __future__ import annotations

import csv
import io
import json

import click
import pytest
from click.testing import CliRunner

from compressor.bench.cli import bench_command, parse_batches
from compressor.errors import UsageError

QUICK = ["--runs", "3", "--warmup", "1", "--threads", "1", "--quiet"]


def invoke(*args: str):
    return CliRunner().invoke(bench_command, list(args), catch_exceptions=False)


def test_command_is_named_bench():
    """The main group registers it as `bench`."""
    assert isinstance(bench_command, click.Command) and bench_command.name == "bench"


def test_table_for_two_models(tiny_paths):
    """Default output: a table with a row per model and the speedup column, exit 0."""
    result = invoke(*tiny_paths, *QUICK)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[1].split()[0] == "model" and "speedup" in lines[1], f"header: {lines[1]!r}"
    assert lines[3].startswith("slow.onnx") and lines[4].startswith("fast.onnx"), result.stdout


def test_json_is_one_parseable_document(tiny_paths):
    """--json: stdout is exactly one JSON document of the schema (nothing else mixed in)."""
    result = invoke(*tiny_paths, *QUICK, "--json", "--batch", "1,2")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["provider_requested"] == "cpu" and doc["threads"] == 1, doc
    assert [(r["model"], r["batch"]) for r in doc["results"]] == [
        (tiny_paths[0], 1), (tiny_paths[1], 1), (tiny_paths[0], 2), (tiny_paths[1], 2)]


def test_csv_output(tiny_paths):
    """--csv: a header and one row per model and batch."""
    result = invoke(tiny_paths[0], *QUICK, "--csv", "--batch", "4")
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert len(rows) == 1 and rows[0]["batch"] == "4" and rows[0]["runs"] == "3", rows


def test_input_shape_flag(models, tmp_path):
    """--input-shape fills dynamic dims; the JSON reports the shapes used."""
    import onnx

    path = tmp_path / "img.onnx"
    onnx.save(models.relu(("N", 3, "H", "W")), path)
    result = invoke(str(path), *QUICK, "--json", "--input-shape", "x:1x3x8x8", "--batch", "2")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["results"][0]["input_shapes"] == {"x": [2, 3, 8, 8]}


def assert_one_line_error(result, *fragments: str) -> None:
    assert result.exit_code == 2, f"exit code 2 expected, got {result.exit_code}: {result.output}"
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, f"exactly one 'error:' line expected on stderr, got {lines}"
    for fragment in fragments:
        assert fragment in errors[0], f"{fragment!r} expected in {errors[0]!r}"
    assert result.stdout == "", f"nothing on stdout on error, got {result.stdout!r}"


def test_missing_file_exits_2_with_one_line(tmp_path):
    """A model path that does not exist: `error: model file not found: ...`, exit 2."""
    assert_one_line_error(invoke(str(tmp_path / "none.onnx"), *QUICK), "model file not found")


def test_corrupt_file_exits_2_with_one_line(tmp_path):
    """A file that is not ONNX: one error line saying it cannot be read, exit 2."""
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00\xffnot a model at all")
    assert_one_line_error(invoke(str(bad), *QUICK), "cannot read", "bad.onnx")


def test_missing_dim_exits_2_naming_the_flag(models, tmp_path):
    """A dynamic non-batch dim without --input-shape: exit 2, the message shows the flag."""
    import onnx

    path = tmp_path / "img.onnx"
    onnx.save(models.relu(("N", 3, "H", "W")), path)
    assert_one_line_error(invoke(str(path), *QUICK), "--input-shape x:")


@pytest.mark.parametrize(("extra", "fragment"), [
    (["--json", "--csv"], "mutually exclusive"),
    (["--min-time", "1"], "mutually exclusive"),  # QUICK already has --runs
    (["--batch", "1,x"], "--batch"),
    (["--input-shape", "x:1xx2"], "--input-shape"),
])
def test_bad_flags_exit_2_with_one_line(tiny_paths, extra, fragment):
    """Conflicting or malformed flags: one `error:` line naming the flag, exit 2."""
    assert_one_line_error(invoke(tiny_paths[0], *QUICK, *extra), fragment)


def test_cuda_request_reports_cpu_and_warns(tiny_paths):
    """--provider cuda without a GPU: rows say CPUExecutionProvider, one warning on stderr."""
    result = invoke(tiny_paths[0], *QUICK, "--provider", "cuda", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    used = doc["results"][0]["provider"]
    if used == "CUDAExecutionProvider":
        pytest.skip("CUDA is usable here")
    assert used == "CPUExecutionProvider" and doc["provider_requested"] == "cuda", doc
    warnings = [ln for ln in result.stderr.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 1 and "CUDAExecutionProvider" in warnings[0], result.stderr


def test_strict_provider_exits_2(tiny_paths):
    """--strict-provider turns the fallback into `error: ...` and exit 2."""
    result = invoke(tiny_paths[0], *QUICK, "--provider", "cuda", "--strict-provider")
    if result.exit_code == 0:
        pytest.skip("CUDA is usable here")
    assert_one_line_error(result, "CUDAExecutionProvider", "--strict-provider")


def test_debug_shows_the_exception(tmp_path):
    """--debug re-raises instead of printing one line (for bug reports)."""
    result = CliRunner().invoke(bench_command, [str(tmp_path / "none.onnx"), "--debug"])
    assert isinstance(result.exception, UsageError), f"got {result.exception!r}"


def test_parse_batches():
    """'1,8,32' -> [1, 8, 32], duplicates dropped; anything else is a UsageError."""
    assert parse_batches("1, 8,32,8") == [1, 8, 32], "parsed in order without duplicates"
    assert parse_batches(None) is None, "not given"
    for bad in ("", "0", "1,-2", "a", "1.5"):
        with pytest.raises(UsageError):
            parse_batches(bad)


def test_quiet_hides_notes_but_not_warnings(tiny_paths):
    """Without --quiet the batch default is noted on stderr; --quiet removes the note."""
    loud = invoke(tiny_paths[0], "--runs", "2", "--warmup", "0", "--threads", "1")
    quiet = invoke(tiny_paths[0], "--runs", "2", "--warmup", "0", "--threads", "1", "--quiet")
    assert "note: dynamic batch dims set to 1" in loud.stderr, loud.stderr
    assert quiet.stderr == "", f"--quiet should print nothing here, got {quiet.stderr!r}"


def test_tools_script_prints_the_table(tiny_paths, capsys):
    """tools/bench_latency.py compares the given files and prints the table (exit 0)."""
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "tools" / "bench_latency.py"
    spec = importlib.util.spec_from_file_location("bench_latency_tool", script)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    assert tool.main([*tiny_paths, "--runs", "2", "--warmup", "0", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "slow.onnx" in out and "speedup" in out, f"table expected, got {out!r}"
    assert tool.main(["/nonexistent.onnx"]) == 2, "missing file: exit code 2"


def test_spinning_flag_reports_blocks_in_json(tiny_paths):
    """--spinning --block-time: the JSON says spinning on, block interleave."""
    result = invoke(*tiny_paths, *QUICK, "--spinning", "--block-time", "0.01", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert (doc["spinning"], doc["interleave"], doc["block_time_s"]) == (True, "block", 0.01), doc


def test_block_time_without_blocks_exits_2(tiny_paths):
    assert_one_line_error(invoke(*tiny_paths, *QUICK, "--block-time", "0.1"), "--block-time")
