"""Session options, provider resolution and fallback reporting, and the (GPU) IO-binding path.

The fallback logic is tested with fake session factories, so it is exercised whatever the machine;
the real CUDA request is checked to fall back here, and the real GPU path is skipped unless a CUDA
session can actually be created.
"""

from __future__ import annotations

import os

import numpy as np
import onnxruntime as ort
import pytest

from compressor.bench.session import (
    CPU,
    CUDA,
    TENSORRT,
    ProviderUnavailableError,
    create_with_fallback,
    cuda_provider_options,
    cuda_usable,
    make_run_fn,
    make_session,
    provider_chain,
    provider_key,
    session_options,
    summarize_native_log,
    without_benign_lines,
    tensorrt_provider_options,
)
from compressor.errors import ModelError, UsageError

ALL = [TENSORRT, CUDA, CPU]


@pytest.fixture(scope="module")
def cuda_works() -> bool:
    return cuda_usable()


# --------------------------------------------------------------------------- options


def test_session_options_disable_spinning_and_optimise_fully():
    """Both thread pools stop spinning, optimisation is ORT_ENABLE_ALL, threads as asked."""
    so = session_options(threads=3)
    for key in ("session.intra_op.allow_spinning", "session.inter_op.allow_spinning"):
        assert so.get_session_config_entry(key) == "0", f"{key} must be '0'"
    assert so.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL, "ENABLE_ALL"
    assert so.intra_op_num_threads == 3, f"intra-op threads: {so.intra_op_num_threads}"


def test_session_options_default_threads_are_the_available_cores():
    """Without --threads, intra-op threads = cores this process may use."""
    expected = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert session_options().intra_op_num_threads == expected, "default threads"


@pytest.mark.parametrize(("given", "key"), [("cpu", "cpu"), ("CUDA", "cuda"), ("trt", "tensorrt"),
                                            ("TensorrtExecutionProvider", "tensorrt")])
def test_provider_key_accepts_short_and_full_names(given, key):
    """Short names, any case, and full EP names map to cpu/cuda/tensorrt."""
    assert provider_key(given) == key, f"{given!r} should mean {key!r}"


def test_provider_key_rejects_unknown_names():
    """An unknown provider is a UsageError listing the choices."""
    with pytest.raises(UsageError, match="cpu, cuda, tensorrt"):
        provider_key("rocm")


def test_provider_chains_degrade_one_step_at_a_time():
    """tensorrt tries TRT+CUDA+CPU, then CUDA+CPU, then CPU; cuda tries CUDA+CPU, then CPU."""
    names = lambda chain: [[name for name, _ in attempt] for attempt in chain]  # noqa: E731
    assert names(provider_chain("tensorrt")) == [ALL, [CUDA, CPU], [CPU]], "tensorrt chain"
    assert names(provider_chain("cuda")) == [[CUDA, CPU], [CPU]], "cuda chain"
    assert names(provider_chain("cpu")) == [[CPU]], "cpu chain"


def test_gpu_provider_options_are_strings_with_the_device():
    """Provider options are str -> str (what onnxruntime accepts) and carry device_id."""
    for options in (cuda_provider_options(1), tensorrt_provider_options(1, engine_cache_dir="/c")):
        assert options["device_id"] == "1", f"device_id should be '1': {options}"
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in options.items()), options
    assert tensorrt_provider_options()["trt_fp16_enable"] == "0", "fp16 must be opt-in"
    assert tensorrt_provider_options(engine_cache_dir="/c")["trt_engine_cache_path"] == "/c"
    assert provider_chain("cuda", device_id=2)[0][0][1]["device_id"] == "2", "device in chain"


# --------------------------------------------------------------------------- fallback logic


class FakeSession:
    def __init__(self, providers):
        self.providers = providers

    def get_providers(self):
        return list(self.providers)


def fake_factory(behaviour):
    """behaviour: first provider -> 'ok'|'drop' (CPU instead, logs on fd 2) | 'raise' | 'model'."""
    calls = []

    def factory(payload, so, providers):
        first = providers[0][0]
        calls.append(first)
        action = behaviour.get(first, "ok")
        if action == "raise":
            raise RuntimeError(f"{first} plugin registration failed\nsecond line")
        if action == "model":
            raise RuntimeError("[ONNXRuntimeError] : 10 : INVALID_GRAPH : broken")
        if action == "drop":
            os.write(2, b"\x1b[1;31m2026 [E:onnxruntime:Default, provider_bridge_ort.cc:2458] "
                        b"Failed to load library libonnxruntime_providers_cuda.so with error: "
                        b"libcublasLt.so.13: cannot open shared object file\x1b[m\n")
            return FakeSession([CPU])
        return FakeSession([first] + [p for p, _ in providers[1:]])

    factory.calls = calls
    return factory


def test_silently_dropped_provider_is_detected_and_explained():
    """CUDA 'created' but running on CPU: reported as a failure with the log's reason."""
    factory = fake_factory({CUDA: "drop"})
    attempt = create_with_fallback(b"m", session_options, provider_chain("cuda"), ALL, factory)
    assert attempt.provider_used == CPU, f"should fall back to CPU, got {attempt.provider_used}"
    assert attempt.failures == [(CUDA, "libcublasLt.so.13: cannot open shared object file")], (
        f"the missing library should be the reason, got {attempt.failures}"
    )
    warning = attempt.warning
    assert warning and "\n" not in warning and warning.endswith(f"using {CPU}"), warning


def test_raising_provider_falls_through_the_chain():
    """TensorRT raises, CUDA drops: both reasons in one line, CPU used, three attempts made."""
    factory = fake_factory({TENSORRT: "raise", CUDA: "drop"})
    attempt = create_with_fallback(b"m", session_options, provider_chain("tensorrt"), ALL, factory)
    assert factory.calls == [TENSORRT, CUDA, CPU], f"attempts: {factory.calls}"
    assert [name for name, _ in attempt.failures] == [TENSORRT, CUDA], attempt.failures
    assert "plugin registration failed" in attempt.warning, "first line of the exception kept"
    assert "second line" not in attempt.warning and "\n" not in attempt.warning, "one line"


def test_provider_missing_from_the_build_is_skipped_without_trying():
    """A provider this onnxruntime build lacks is reported as such and never attempted."""
    factory = fake_factory({})
    attempt = create_with_fallback(b"m", session_options, provider_chain("cuda"), [CPU], factory)
    assert factory.calls == [CPU], f"CUDA should not be attempted, got {factory.calls}"
    assert attempt.failures == [(CUDA, "not in this onnxruntime build")], attempt.failures


def test_working_provider_gives_no_warning():
    """When the requested provider is created, there is nothing to report."""
    attempt = create_with_fallback(b"m", session_options, provider_chain("cuda"), ALL,
                                   fake_factory({}))
    assert attempt.provider_used == CUDA and attempt.warning is None, attempt


def test_model_errors_are_not_mistaken_for_provider_errors():
    """An invalid graph is a ModelError (exit 2) at once, not a fallback to CPU."""
    factory = fake_factory({CUDA: "model"})
    with pytest.raises(ModelError, match="INVALID_GRAPH"):
        create_with_fallback(b"m", session_options, provider_chain("cuda"), ALL, factory,
                             model_name="m.onnx")
    assert factory.calls == [CUDA], "no further attempt after a model error"


def test_native_log_summary_prefers_the_missing_library():
    """The summary of onnxruntime's log is the 'with error: ...' part, ANSI colours removed."""
    log = ("\x1b[1;31m... [E:onnxruntime:Default, x.cc:1 f] Failed to load library a.so with error:"
           " libcudnn.so.9: cannot open\x1b[m\n[W:onnxruntime:Default, y.cc:2 g] Failed to create "
           "CUDAExecutionProvider. Require cuDNN 9.*\n")
    assert summarize_native_log(log, CUDA) == "libcudnn.so.9: cannot open", "library reason"
    assert summarize_native_log("", CUDA) is None, "empty log, no reason"


# --------------------------------------------------------------------------- real sessions


def test_requesting_cuda_here_reports_the_provider_actually_used(models, capfd, cuda_works):
    """Without a usable GPU, 'cuda' runs on CPU, says so in one line, prints nothing on stdout."""
    if cuda_works:
        pytest.skip("CUDA is usable on this machine: there is no fallback to observe")
    session, used, warning = make_session(models.relu(("N", 4)), "cuda", threads=1)
    assert used == CPU == session.get_providers()[0], f"provider used should be CPU, got {used}"
    assert warning and CUDA in warning and "\n" not in warning, f"one-line warning: {warning!r}"
    assert capfd.readouterr().out == "", "onnxruntime's fallback chatter must not reach stdout"


@pytest.mark.parametrize("provider", ["cuda", "tensorrt"])
def test_strict_provider_turns_the_fallback_into_an_error(models, provider, cuda_works):
    """With strict=True an unusable provider raises ProviderUnavailableError (exit code 2)."""
    if cuda_works and provider == "cuda":
        pytest.skip("CUDA is usable on this machine")
    if cuda_works and TENSORRT not in ort.get_available_providers():
        pytest.skip("cannot predict TensorRT here")
    with pytest.raises(ProviderUnavailableError) as info:
        make_session(models.relu(("N", 4)), provider, threads=1, strict=True)
    assert info.value.exit_code == 2 and "--strict-provider" in str(info.value), str(info.value)


def test_cpu_session_runs_without_warning(models):
    """The CPU provider is created as asked, and its run function executes the model."""
    session, used, warning = make_session(models.relu(("N", 4)), "cpu", threads=1)
    assert (used, warning) == (CPU, None), f"got {used}, {warning}"
    run = make_run_fn(session, {"x": np.ones((2, 4), np.float32)}, used)
    run()  # raises if the feeds do not fit


def test_missing_file_is_a_model_error():
    """A path that does not exist: ModelError (exit 2) saying so."""
    with pytest.raises(ModelError) as info:
        make_session("/nonexistent/model.onnx", "cpu")
    assert "not found" in str(info.value) and info.value.exit_code == 2, str(info.value)


def test_graph_onnxruntime_rejects_is_a_one_line_model_error(models):
    """An unknown operator: ModelError naming onnxruntime's reason, in one line."""
    from onnx import TensorProto, helper

    model = models.build([("x", TensorProto.FLOAT, [1])],
                         [helper.make_node("NoSuchOp", ["x"], ["y"])], ["y"])
    with pytest.raises(ModelError) as info:
        make_session(model, "cpu", threads=1)
    message = str(info.value)
    assert message.startswith("onnxruntime cannot load") and "\n" not in message, message


# --------------------------------------------------------------------------- IO binding


class RecordingBinding:
    def __init__(self, log):
        self.log = log

    def bind_ortvalue_input(self, name, value):
        self.log.append(("bind_input", name, value["device"]))

    def bind_output(self, name, device_type="cpu", device_id=0):
        self.log.append(("bind_output", name, device_type, device_id))

    def synchronize_inputs(self):
        self.log.append(("sync_inputs",))

    def synchronize_outputs(self):
        self.log.append(("sync_outputs",))


class RecordingSession:
    class Output:
        def __init__(self, name):
            self.name = name

    def __init__(self):
        self.log = []
        self.binding = RecordingBinding(self.log)

    def get_outputs(self):
        return [self.Output("y"), self.Output("z")]

    def io_binding(self):
        return self.binding

    def run_with_iobinding(self, binding):
        assert binding is self.binding, "must run the binding it created"
        self.log.append(("run",))

    def run(self, *args):
        raise AssertionError("the GPU path must not use session.run (host copies every call)")


@pytest.mark.parametrize("provider_used", [CUDA, TENSORRT])
def test_gpu_run_uses_device_resident_io_binding(provider_used):
    """CUDA/TensorRT: inputs copied to 'cuda' once, outputs bound on the device, each run syncs."""
    session, copies = RecordingSession(), []

    def to_device(array, device, device_id):
        copies.append((array.shape, device, device_id))
        return {"device": device}

    run = make_run_fn(session, {"x": np.zeros((1, 3), np.float32)}, provider_used, device_id=1,
                      ortvalue_from_numpy=to_device)
    assert copies == [((1, 3), "cuda", 1)], f"one copy to cuda:1 at setup, got {copies}"
    assert session.log == [("bind_input", "x", "cuda"), ("bind_output", "y", "cuda", 1),
                           ("bind_output", "z", "cuda", 1), ("sync_inputs",)], session.log
    session.log.clear()
    run()
    run()
    assert session.log == [("run",), ("sync_outputs",)] * 2, f"run then sync: {session.log}"
    assert len(copies) == 1, "no host-to-device copy inside the timed call"


def test_real_cuda_io_binding(models, cuda_works):
    """On a machine with a working CUDA provider, outputs of a bound run stay on the GPU."""
    if not cuda_works:
        pytest.skip("no usable CUDA execution provider on this machine")
    session, used, _ = make_session(models.relu(("N", 4)), "cuda", threads=1, strict=True)
    run = make_run_fn(session, {"x": -np.ones((2, 4), np.float32)}, used)
    run()
    outputs = run.binding.get_outputs()
    assert outputs[0].device_name().lower() == "cuda", "output should be device-resident"
    assert np.array_equal(outputs[0].numpy(), np.zeros((2, 4), np.float32)), "Relu(-1) = 0"


def test_real_cuda_computes_what_the_cpu_computes(cuda_works):
    """The bundled demo CNN on CUDA (cuDNN convolutions, IO binding) matches the CPU provider."""
    if not cuda_works:
        pytest.skip("no usable CUDA execution provider on this machine")
    path = os.path.join(os.path.dirname(__file__), "..", "..", "models", "demo_fmnist.onnx")
    x = np.random.default_rng(0).standard_normal((8, 1, 28, 28)).astype(np.float32)
    outs = {}
    for provider in ("cpu", "cuda"):
        session, used, _ = make_session(path, provider, threads=1, strict=True)
        name = session.get_inputs()[0].name
        run = make_run_fn(session, {name: x}, used)
        run()
        outs[provider] = (run.binding.get_outputs()[0].numpy() if provider == "cuda"
                          else session.run(None, {name: x})[0])
    scale = float(np.abs(outs["cpu"]).max())
    err = float(np.abs(outs["cuda"] - outs["cpu"]).max()) / scale
    assert err < 1e-2, f"CUDA vs CPU relative error {err:.2e} (TF32 convolutions: ~1e-3)"


def test_real_tensorrt_request_on_a_cuda_machine_says_what_it_used(models, cuda_works):
    """'tensorrt' on a CUDA machine either runs on TensorRT or falls back to CUDA, saying why."""
    if not cuda_works:
        pytest.skip("no usable CUDA execution provider on this machine")
    session, used, warning = make_session(models.relu(("N", 4)), "tensorrt", threads=1)
    assert used == session.get_providers()[0] and used in (TENSORRT, CUDA), f"used {used}"
    if used == CUDA:
        assert warning and TENSORRT in warning and "\n" not in warning, f"one line: {warning!r}"


def test_benign_plugin_ep_warning_is_dropped_from_a_working_sessions_log():
    """onnxruntime 1.31 warns 'No registered plugin EP device found' for every CUDA session, which
    then runs on CUDA; that line is dropped, any other line is given back."""
    log = ("\x1b[0;93m2026-11-30 21:31:28.30 [W:onnxruntime:Default, onnxruntime_pybind_state.cc:856 "
           "operator()] No registered plugin EP device found for 'CUDAExecutionProvider' with "
           "device_id=0\x1b[m\n"
           "2026-11-30 21:31:28.31 [W:onnxruntime:, session_state.cc:1280] Some nodes were not "
           "assigned to the preferred execution providers\n")
    kept = without_benign_lines(log)
    assert "plugin EP" not in kept and "Some nodes were not assigned" in kept, kept


def test_gpu_libraries_are_preloaded_once_and_quietly(monkeypatch, capfd):
    """onnxruntime's preload_dlls runs once per process, before a GPU session; its prints stay
    off stdout (JSON output) and come back as text."""
    import compressor.bench.session as session_module

    calls = []

    def fake_preload():
        calls.append(1)
        print("Failed to load libcublas.so.13: not found")

    monkeypatch.setattr(session_module, "_PRELOADED", {})
    monkeypatch.setattr(ort, "preload_dlls", fake_preload, raising=False)
    first = session_module.preload_gpu_libraries()
    again = session_module.preload_gpu_libraries()
    assert calls == [1], f"preloaded {len(calls)} times"
    assert "libcublas.so.13" in first and again == first, f"text: {first!r}"
    assert capfd.readouterr().out == "", "nothing on stdout"


def test_cpu_requests_do_not_preload_gpu_libraries(models, monkeypatch):
    """A CPU session never touches the GPU libraries."""
    import compressor.bench.session as session_module

    monkeypatch.setattr(session_module, "_PRELOADED", {})
    monkeypatch.setattr(ort, "preload_dlls", lambda: pytest.fail("preloaded for CPU"), raising=False)
    make_session(models.relu(("N", 4)), "cpu", threads=1)
    assert session_module._PRELOADED == {}, "no preload for a CPU request"


def test_session_options_can_keep_onnxruntime_spinning():
    """spinning=True: both pools spin, as onnxruntime does by default."""
    so = session_options(threads=2, spinning=True)
    for key in ("session.intra_op.allow_spinning", "session.inter_op.allow_spinning"):
        assert so.get_session_config_entry(key) == "1", f"{key} must be '1'"
