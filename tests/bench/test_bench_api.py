"""benchmark() and compare_latency() on tiny real models, and the JSON/CSV/table renderings."""

from __future__ import annotations

import csv
import io
import json

import onnxruntime as ort
import pytest
from onnx import helper

from compressor.bench import BenchResult, benchmark, compare_latency
from compressor.bench.report import CSV_COLUMNS, ModelResult, display_names
from compressor.bench.stats import RatioSpread, latency_stats
from compressor.errors import UsageError

FAST = {"warmup": 1, "runs": 5, "threads": 1, "progress": False, "log": None}
RESULT_KEYS = {"model", "provider", "batch", "input_shapes", "mean_ms", "std_ms", "min_ms",
               "p50_ms", "p90_ms", "p99_ms", "throughput", "runs", "ratio_to_first"}


def test_one_row_per_model_and_batch_in_order(tiny_paths):
    """Two models x two batches: rows grouped by batch, models in the given order."""
    slow, fast = tiny_paths
    result = benchmark([slow, fast], batches=[1, 3], **FAST)
    rows = [(r.model, r.batch) for r in result.results]
    assert rows == [(slow, 1), (fast, 1), (slow, 3), (fast, 3)], f"got {rows}"
    assert all(r.stats.runs == 5 for r in result.results), "each model ran --runs times"
    assert result.results[2].input_shapes == {"x": (3, 32)}, "batch 3 replaces the dynamic dim"


def test_ratio_is_null_for_the_first_model_only(tiny_paths):
    """ratio_to_first is None for the first model at each batch and a spread for the others."""
    result = benchmark(list(tiny_paths), batches=[1, 2], **FAST)
    for r in result.results:
        is_first = r.model == tiny_paths[0]
        assert (r.ratio_to_first is None) == is_first, f"{r.model} batch {r.batch}"
        if not is_first:
            assert r.ratio_to_first.p10 <= r.ratio_to_first.median <= r.ratio_to_first.p90


def test_deeper_model_is_measured_slower(tiny_paths):
    """8 MatMul layers vs 1 (batch 64): the shallow one shows a speedup > 1 over the deep one."""
    result = benchmark(list(tiny_paths), batches=[64], warmup=3, runs=30, threads=1,
                       progress=False, log=None)
    speedup = result.results[1].ratio_to_first.median
    assert speedup > 1.0, f"1 layer should beat 8 layers, speedup {speedup}"


def test_in_memory_models_are_accepted(models):
    """ModelProto inputs are benchmarked from their serialized bytes and named '<memory:...>'."""
    result = benchmark([models.relu(name="a"), models.relu(name="b")], **FAST)
    assert [r.model for r in result.results] == ["<memory:a>", "<memory:b>"], "names"


def test_default_batch_comes_from_the_input_shape(models):
    """No batches given: dim 0 of --input-shape is the batch."""
    result = benchmark([models.relu(("N", 3, "H", "W"))], input_shapes=["2x3x4x4"], **FAST)
    assert (result.results[0].batch, result.results[0].input_shapes) == (2, {"x": (2, 3, 4, 4)})


def test_fixed_batch_model_runs_at_its_own_batch_by_default(models):
    """No batches given and a model fixed at batch 3: it is measured at 3 (no error)."""
    result = benchmark([models.relu((3, 4))], **FAST)
    assert result.results[0].batch == 3 and result.results[0].stats.throughput > 0, result


def test_fallback_warning_is_logged_once_and_kept(tiny_paths):
    """Requesting CUDA without a GPU: one warning line for both models, rows report CPU."""
    lines = []
    result = benchmark(list(tiny_paths), provider="cuda", **{**FAST, "log": lines.append})
    if result.results[0].provider == "CUDAExecutionProvider":
        pytest.skip("CUDA is usable here")
    warnings = [line for line in lines if line.startswith("warning:")]
    assert len(warnings) == 1 and len(result.warnings) == 1, f"one warning, got {lines}"
    assert {r.provider for r in result.results} == {"CPUExecutionProvider"}, "provider used"
    assert result.provider_requested == "cuda", "the request is kept separately"


def test_shape_errors_are_raised_before_any_session(models):
    """A missing dim is a UsageError naming the model when several are given."""
    with pytest.raises(UsageError, match=r"<memory:b>: input 'x' has a dynamic dim 1"):
        benchmark([models.relu(name="a"), models.relu(("N", "C"), name="b")], **FAST)


def test_models_with_differently_named_inputs_take_their_own_shapes(models):
    """Two dynamic models whose inputs are named apart: each named shape goes to the models that
    have that input (it used to be required in every model), and must fit one of them."""
    from onnx import TensorProto, helper

    other = models.build([("input", TensorProto.FLOAT, ["N", "C"])], [helper.make_node("Relu", ["input"], ["y"])],
                         ["y"], name="other")
    result = benchmark([models.relu(("N", "C"), name="a"), other], input_shapes=["x:2x3", "input:2x5"], **FAST)
    assert [r.input_shapes for r in result.results] == [{"x": (2, 3)}, {"input": (2, 5)}]
    with pytest.raises(UsageError, match="'nope', which is not an input of any of the models"):
        benchmark([models.relu(("N", "C"), name="a"), other], input_shapes=["x:2x3", "nope:2x5"], **FAST)


def test_the_default_batch_is_what_every_model_implies(models):
    """A fixed-batch model beside a dynamic one sets the batch whatever their order (it came from
    the first model only); contradicting batches are an error, not silently batch 1."""
    from onnx import TensorProto

    fixed = models.relu((4, 3), name="fixed")
    for order in ([fixed, models.relu(name="dyn")], [models.relu(name="dyn"), fixed]):
        res = benchmark(order, **FAST)
        assert {r.batch for r in res.results} == {4}
    two = models.build([("a", TensorProto.FLOAT, ["N", 3]), ("b", TensorProto.FLOAT, ["M", 3])],
                       [helper.make_node("Relu", ["a"], ["y"]), helper.make_node("Relu", ["b"], ["z"])], ["y", "z"])
    with pytest.raises(UsageError, match="different values \\[2, 3\\]"):
        benchmark([two], input_shapes=["a:2x3", "b:3x3"], **FAST)


def test_runtime_failure_is_a_usage_error(models):
    """A model that fails at run time on the given shapes: one-line UsageError, not a traceback."""
    from onnx import TensorProto, helper

    reshape = models.build(
        [("x", TensorProto.FLOAT, ["N", "C"])],
        [helper.make_node("Constant", [], ["s"], value=helper.make_tensor("v", 7, [1], [5])),
         helper.make_node("Reshape", ["x", "s"], ["y"])], ["y"])
    with pytest.raises(UsageError) as info:
        benchmark([reshape], input_shapes=["x:1x3"], **FAST)
    assert "onnxruntime failed to run" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(("kwargs", "pattern"), [
    ({"runs": 3, "min_time": 1.0}, "--runs or --min-time"),
    ({"runs": 0}, "--runs must be at least 1"),
    ({"warmup": -1}, "--warmup"),
    ({"threads": 0}, "--threads"),
    ({"batches": [0]}, "batch sizes must be positive"),
    ({"provider": "rocm"}, "unknown provider"),
    ({"runs": None, "min_time": float("inf")}, "--min-time must be a positive number"),
    ({"seed": -1}, "--seed must be"),
])
def test_bad_options_are_usage_errors(models, kwargs, pattern):
    """Invalid option values raise UsageError with a message naming the option."""
    options = {**FAST, **kwargs}
    with pytest.raises(UsageError, match=pattern):
        benchmark([models.relu()], **options)


def test_no_model_is_a_usage_error():
    """An empty model list is a UsageError."""
    with pytest.raises(UsageError, match="no model"):
        benchmark([], **FAST)


def test_compare_latency_returns_the_documented_keys(tiny_paths):
    """compare_latency gives before/after medians and the speedup's median, p10, p90."""
    out = compare_latency(*tiny_paths, runs=5, warmup=1, threads=1, log=None)
    expected = {"provider", "before_ms", "after_ms", "speedup", "speedup_p10", "speedup_p90"}
    assert expected <= set(out), f"missing keys: {expected - set(out)}"
    assert out["provider"] == "CPUExecutionProvider" and out["runs"] == 5, out
    assert out["speedup_p10"] <= out["speedup"] <= out["speedup_p90"], out
    assert out["before_ms"] > 0 and out["after_ms"] > 0, out


# --------------------------------------------------------------------------- renderings


def sample_result() -> BenchResult:
    stats = latency_stats([1.0, 2.0, 3.0], batch=2)
    return BenchResult(
        provider_requested="cpu", threads=2, onnxruntime=ort.__version__,
        results=[
            ModelResult("dir/a.onnx", "CPUExecutionProvider", 2, {"x": (2, 3)}, stats),
            ModelResult("dir/b.onnx", "CPUExecutionProvider", 2, {"x": (2, 3)}, stats,
                        RatioSpread(median=1.5, p10=1.25, p90=1.75)),
        ],
    )


def test_json_follows_the_schema():
    """Top-level and per-result keys of the documented schema, with JSON-native types."""
    doc = json.loads(sample_result().json())
    assert {"provider_requested", "results", "threads", "onnxruntime"} <= set(doc), set(doc)
    for row in doc["results"]:
        assert RESULT_KEYS == set(row), f"result keys differ: {set(row) ^ RESULT_KEYS}"
        assert row["input_shapes"] == {"x": [2, 3]}, "shapes are lists of ints"
    assert doc["results"][0]["ratio_to_first"] is None, "first model: null"
    assert doc["results"][1]["ratio_to_first"] == {"median": 1.5, "p10": 1.25, "p90": 1.75}


def test_csv_has_the_header_and_one_row_per_result():
    """CSV: the documented columns, shapes as name:AxB, empty ratio cells for the first model."""
    rows = list(csv.DictReader(io.StringIO(sample_result().csv())))
    assert len(rows) == 2 and tuple(rows[0]) == CSV_COLUMNS, f"columns: {tuple(rows[0])}"
    assert rows[0]["input_shapes"] == "x:2x3" and rows[0]["ratio_median"] == "", rows[0]
    assert float(rows[1]["ratio_median"]) == 1.5 and float(rows[1]["mean_ms"]) == 2.0, rows[1]
    assert (rows[0]["spinning"], rows[0]["interleave"]) == ("0", "run"), rows[0]


def test_table_has_fixed_width_columns():
    """Every table line after the title has the header's column starts; ratio shown with spread."""
    lines = sample_result().table().splitlines()
    header, rule = lines[1], lines[2]
    assert header.split()[:3] == ["model", "provider", "batch"], header
    assert set(rule.replace(" ", "")) == {"-"}, "a rule line under the header"
    starts = [i for i, ch in enumerate(rule) if ch == "-" and (i == 0 or rule[i - 1] == " ")]
    for row in lines[3:5]:
        for start in starts[1:]:
            assert row[start - 2:start] == "  ", f"columns misaligned in {row!r}"
    assert "1.50x [1.25-1.75]" in lines[4], f"ratio with p10-p90 expected in {lines[4]!r}"
    assert lines[3].startswith("a.onnx") and "(first)" in lines[3], lines[3]


def test_display_names_fall_back_to_paths_when_file_names_clash():
    """Same file name in two folders: the table shows the paths."""
    names = display_names(["x/m.onnx", "y/m.onnx", "z/n.onnx"])
    assert names == {"x/m.onnx": "x/m.onnx", "y/m.onnx": "y/m.onnx", "z/n.onnx": "n.onnx"}


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(("progress", "tty", "drawn"), [
    (True, True, True), (True, False, False), (False, True, False)])
def test_progress_bar_only_on_a_terminal_and_when_asked(models, monkeypatch, progress, tty, drawn):
    """The tqdm bar goes to stderr when it is a terminal and progress is on; otherwise nothing."""
    err = FakeTTY() if tty else io.StringIO()
    monkeypatch.setattr("sys.stderr", err)
    benchmark([models.relu()], **{**FAST, "progress": progress})
    assert ("batch 1:" in err.getvalue()) == drawn, f"stderr was {err.getvalue()!r}"


def test_signature_keeps_inputs_and_drops_weights(tiny_paths):
    """A path's signature lists the inputs and initializer names, without the weight bytes."""
    from compressor.bench.source import load_source

    source = load_source(tiny_paths[0])
    assert [vi.name for vi in source.signature.graph.input] == ["x"], "inputs kept"
    assert [t.name for t in source.signature.graph.initializer] == ["w"], "names kept"
    assert source.signature.ByteSize() < 1000, "weights dropped from the signature"


def test_in_memory_model_with_external_data_is_refused(models):
    """A ModelProto whose weights live in external files must be given by path: UsageError."""
    from onnx import TensorProto, helper

    weight = helper.make_tensor("w", TensorProto.FLOAT, [1], [1.0])
    weight.ClearField("float_data")
    weight.data_location = TensorProto.EXTERNAL
    weight.external_data.add(key="location", value="weights.bin")
    model = models.build([("x", TensorProto.FLOAT, [1])],
                         [helper.make_node("Add", ["x", "w"], ["y"])], ["y"], [weight])
    with pytest.raises(UsageError, match="external data"):
        benchmark([model], **FAST)


# --------------------------------------------------------------------------- spinning and blocks


def test_spinning_times_models_in_blocks(tiny_paths):
    """spinning=True: interleave 'block', paired block ratios, and the mode in the JSON and table."""
    result = benchmark(list(tiny_paths), spinning=True, block_time=0.01, runs=3, warmup=1,
                       threads=1, progress=False, log=None)
    assert (result.spinning, result.interleave, result.block_time_s) == (True, "block", 0.01)
    slow, fast = result.results
    assert slow.stats.runs >= 3 and fast.stats.runs >= 3, "runs is a minimum per model"
    assert fast.ratio_to_first.p10 <= fast.ratio_to_first.median <= fast.ratio_to_first.p90
    doc = result.to_dict()
    assert (doc["spinning"], doc["interleave"], doc["block_time_s"]) == (True, "block", 0.01), doc
    title = result.table().splitlines()[0]
    assert "spinning on" in title and "0.01 s blocks" in title, title


def test_blocks_without_spinning_and_the_default_mode(tiny_paths):
    """interleave='block' works with spinning off; the default is run by run, spinning off."""
    result = benchmark(list(tiny_paths), interleave="block", block_time=0.01, **FAST)
    assert (result.spinning, result.interleave) == (False, "block")
    result = benchmark(list(tiny_paths), **FAST)
    assert (result.spinning, result.interleave, result.block_time_s) == (False, "run", None)
    assert "spinning off" in result.table().splitlines()[0]


@pytest.mark.parametrize(("kwargs", "fragment"), [
    ({"spinning": True, "interleave": "run"}, "--interleave block"),
    ({"block_time": 0.1}, "--block-time"),
    ({"interleave": "block", "block_time": 0.0}, "--block-time"),
    ({"interleave": "rounds"}, "--interleave"),
])
def test_bad_interleave_choices_are_usage_errors(tiny_paths, kwargs, fragment):
    """Spinning sessions alternating run by run, a block time without blocks, a bad mode."""
    with pytest.raises(UsageError, match=fragment.replace("-", r"\-")):
        benchmark(list(tiny_paths), **FAST, **kwargs)


def test_compare_latency_echoes_the_mode(tiny_paths):
    out = compare_latency(*tiny_paths, runs=3, warmup=1, threads=1, log=None, spinning=True)
    assert (out["spinning"], out["interleave"]) == (True, "block"), out
