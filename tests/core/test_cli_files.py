"""What `compress` writes, and what it refuses to write over (found by exploring the CLI).

- ``--plan-out`` may be neither the input model, nor ``-o``, nor a folder, checked before any work
  (it used to overwrite the input model with the plan, exit 0);
- ``-o`` may not be one of the input model's external-data files (it used to destroy the input);
- an output that cannot be written is a bad input (exit 2), known before pruning;
- outputs get the mode the umask gives a new file (mkstemp's 0600 used to stay);
- Ctrl-C exits 130 and SIGTERM 143, and neither leaves a temporary file behind.
"""

from __future__ import annotations

import os
import signal
import stat

import onnx
import pytest

from compressor import api
from compressor.errors import Terminated, raise_on_termination
from compressor.ir import model_io
from tests.core.test_cli import assert_error, run, small_model


@pytest.fixture
def model_path(tmp_path):
    p = tmp_path / "m.onnx"
    onnx.save(small_model(), p)
    return p

def test_plan_out_may_not_overwrite_the_input_or_the_output(model_path, tmp_path):
    before = model_path.read_bytes()
    out = tmp_path / "o.onnx"
    assert_error(run(model_path, "-o", out, "--plan-out", model_path), 2, "refusing to overwrite the input model")
    assert model_path.read_bytes() == before and not out.exists()
    assert_error(run(model_path, "-o", out, "--plan-out", out), 2, "refusing to overwrite the output model")
    assert not out.exists()
    (tmp_path / "plans").mkdir()
    assert_error(run(model_path, "-o", out, "--plan-out", tmp_path / "plans"), 2, "is a directory")
    assert not out.exists(), "a bad --plan-out is found before the model is written"
    res = run(model_path, "-o", out, "--plan-out", tmp_path / "plan.json")
    assert res.exit_code == 0 and out.exists() and (tmp_path / "plan.json").exists()


def test_output_may_not_be_the_inputs_external_data(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    onnx.save_model(small_model(), src / "m.onnx", save_as_external_data=True, location="m.data", size_threshold=0)
    data = (src / "m.data").read_bytes()
    assert_error(run(src / "m.onnx", "-o", src / "m.data"), 2, "the input model's external data")
    assert (src / "m.data").read_bytes() == data
    assert run(src / "m.onnx", "-o", src / "small.onnx").exit_code == 0


def test_an_output_that_cannot_be_written_is_refused_before_pruning(model_path, tmp_path, monkeypatch):
    (tmp_path / "file").write_text("x")
    calls = []
    monkeypatch.setattr(api, "apply_plan", lambda *a, **k: calls.append(1))
    assert_error(run(model_path, "-o", tmp_path / "file" / "o.onnx"), 2, "is not a folder")
    assert not calls


def test_a_failed_write_is_a_bad_input_and_leaves_no_temporary_file(model_path, tmp_path, monkeypatch):
    def full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(model_io, "write_streamed", full)
    out = tmp_path / "o" / "m.onnx"
    assert_error(run(model_path, "-o", out), 2, "No space left on device")
    assert os.listdir(out.parent) == []


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_outputs_get_the_mode_of_a_new_file(model_path, tmp_path, umask):
    old = os.umask(umask)
    try:
        res = run(model_path, "-o", tmp_path / "o.onnx", "--plan-out", tmp_path / "p.json")
    finally:
        os.umask(old)
    assert res.exit_code == 0, res.output
    for f in ("o.onnx", "p.json"):
        assert stat.S_IMODE((tmp_path / f).stat().st_mode) == 0o666 & ~umask


@pytest.mark.parametrize("exc, code, line", [(KeyboardInterrupt(), 130, "interrupted"),
                                             (Terminated(signal.SIGTERM), 143, "terminated by SIGTERM")])
def test_interrupted_while_saving(model_path, tmp_path, monkeypatch, exc, code, line):
    def stop(*a, **k):
        raise exc

    monkeypatch.setattr(model_io, "write_streamed", stop)
    out = tmp_path / "o" / "m.onnx"
    res = run(model_path, "-o", out)
    assert res.exit_code == code and res.output.strip().splitlines()[-1] == line
    assert os.listdir(out.parent) == [], "the temporary file is removed"


def test_bench_interrupted(model_path, monkeypatch):
    from compressor.bench import cli as bench_cli

    def stop(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(bench_cli, "benchmark", stop)
    res = run("bench", model_path)
    assert res.exit_code == 130 and "interrupted" in res.output and "Traceback" not in res.output


def test_sigterm_raises_terminated():
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        raise_on_termination()
        with pytest.raises(Terminated) as info:
            os.kill(os.getpid(), signal.SIGTERM)  # the handler runs in this thread right after
        assert info.value.signum == signal.SIGTERM
    finally:
        for s, h in saved.items():
            signal.signal(s, h)


def _large(monkeypatch):
    """Every model counts as large: written with its weights in OUT.data."""
    monkeypatch.setattr(model_io, "EXTERNAL_DATA_THRESHOLD", 0)


def _wide_model():
    """Weights of a few KiB (tensors of 1 KiB and more go to the data file)."""
    from tests.core.graphs import G

    g = G()
    x = g.input("x", [1, 3, 8, 8])
    return g.model([g.conv(g.op("Relu", [g.conv(x, 3, 32)]), 32, 4)])


def test_a_large_save_leaves_the_model_in_memory_whole_and_loadable(tmp_path, monkeypatch):
    """onnx.save_model's external-data path stripped the caller's model (api.prune's ``result.model``
    then pointed at a deleted temporary file, and --bench on it failed: exit 2)."""
    import numpy as np
    import onnxruntime as ort

    _large(monkeypatch)
    m = _wide_model()
    before = m.SerializeToString()
    out = tmp_path / "sub" / "o.onnx"
    model_io.save_model(m, out)
    assert m.SerializeToString() == before, "the model saved is not changed"
    assert sorted(os.listdir(out.parent)) == ["o.onnx", "o.onnx.data"]
    back = onnx.load(out, load_external_data=False)
    assert any(t.data_location == onnx.TensorProto.EXTERNAL for t in back.graph.initializer)
    x = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)
    cwd = os.getcwd()
    try:
        os.chdir("/")  # the data file is found beside the model, not in the working directory
        got = ort.InferenceSession(str(out)).run(None, {"x": x})[0]
    finally:
        os.chdir(cwd)
    want = ort.InferenceSession(before).run(None, {"x": x})[0]
    assert np.array_equal(got, want)


def test_a_large_save_that_fails_at_the_model_file_puts_the_old_data_back(tmp_path, monkeypatch):
    """The data file goes into place first: if the model file then fails, the pair that was there
    stays a pair (the old model used to run with the new weights)."""
    _large(monkeypatch)
    out = tmp_path / "o.onnx"
    model_io.save_model(_wide_model(), out)
    old = out.read_bytes(), (tmp_path / "o.onnx.data").read_bytes()
    other = _wide_model()
    for t in other.graph.initializer:
        t.raw_data = bytes(len(t.raw_data))  # other weights
    real = model_io._publish

    def fail_on_model(tmp, dest):
        if dest == out:
            raise OSError(28, "No space left on device")
        real(tmp, dest)

    monkeypatch.setattr(model_io, "_publish", fail_on_model)
    with pytest.raises(model_io.UsageError, match="No space left"):
        model_io.save_model(other, out)
    assert (out.read_bytes(), (tmp_path / "o.onnx.data").read_bytes()) == old
    assert sorted(os.listdir(tmp_path)) == ["o.onnx", "o.onnx.data"], "no temporary file is left"


def test_an_output_whose_data_file_is_the_inputs_is_refused_before_any_work(tmp_path, monkeypatch):
    src = tmp_path / "in.onnx"
    onnx.save_model(small_model(), src, save_as_external_data=True, location="o.onnx.data", size_threshold=0)
    calls = []
    monkeypatch.setattr(api, "apply_plan", lambda *a, **k: calls.append(1))
    assert_error(run(src, "-o", tmp_path / "o.onnx"), 2, "which is the input model's external data")
    assert not calls


def test_a_large_save_that_fails_at_the_data_file_keeps_the_old_pair(tmp_path, monkeypatch):
    _large(monkeypatch)
    out = tmp_path / "o.onnx"
    model_io.save_model(_wide_model(), out)
    old = out.read_bytes(), (tmp_path / "o.onnx.data").read_bytes()
    real = model_io._publish

    def fail_on_data(tmp, dest):
        if str(dest).endswith(".data"):
            raise OSError(28, "No space left on device")
        real(tmp, dest)

    monkeypatch.setattr(model_io, "_publish", fail_on_data)
    with pytest.raises(model_io.UsageError, match="No space left"):
        model_io.save_model(_wide_model(), out)
    assert (out.read_bytes(), (tmp_path / "o.onnx.data").read_bytes()) == old
    assert sorted(os.listdir(tmp_path)) == ["o.onnx", "o.onnx.data"]


def test_an_ignored_sighup_stays_ignored():
    """`nohup compress ...`: the handler is not installed over SIG_IGN (it died with exit 129)."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        raise_on_termination()
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_IGN, signal.SIG_DFL)
    finally:
        for s, h in saved.items():
            signal.signal(s, h)
