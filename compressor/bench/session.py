"""onnxruntime sessions for measurement: provider resolution, session options, IO binding.

Provider requests ('cpu', 'cuda', 'tensorrt') become a chain of attempts, best first:
tensorrt -> [TensorRT, CUDA, CPU], then [CUDA, CPU], then [CPU]; cuda -> [CUDA, CPU], then [CPU].
onnxruntime either raises for a provider it cannot create (TensorRT) or silently drops it and
logs an error (CUDA without its libraries), so after each attempt the provider actually used
(`session.get_providers()[0]`) is compared with the one asked for. A fallback is reported as one
line, and is an error (exit 2) under `strict`. onnxruntime's own fallback, which prints to
stdout, is disabled so that `--json` output stays clean; its native log lines are captured while
a GPU session is created and summarised into that one line.

On CUDA and TensorRT the run function uses IO binding with device-resident inputs and outputs,
so the timed region is the model, not host-device copies. Before the first GPU session, the CUDA
and cuDNN libraries of pip's nvidia-* packages are loaded (`preload_gpu_libraries`).
"""

from __future__ import annotations

import io
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, redirect_stdout
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnxruntime as ort

from compressor.bench.source import ModelSource, load_source
from compressor.errors import ModelError, UsageError

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"

PROVIDER_NAMES = {"cpu": CPU, "cuda": CUDA, "tensorrt": TENSORRT}
GPU_PROVIDERS = frozenset({CUDA, TENSORRT})

ProviderEntry = tuple[str, dict[str, str]]


class ProviderUnavailableError(UsageError):
    """The requested execution provider cannot be created and fallback was not allowed."""


def provider_key(provider: str) -> str:
    """'cpu' | 'cuda' | 'tensorrt' (also accepts the full EP names); UsageError otherwise."""
    key = provider.strip().lower()
    for short, full in PROVIDER_NAMES.items():
        if key in (short, full.lower()):
            return short
    if key == "trt":
        return "tensorrt"
    raise UsageError(f"unknown provider {provider!r}; choose one of: cpu, cuda, tensorrt")


def short_provider_name(provider: str) -> str:
    """'CUDAExecutionProvider' -> 'CUDA' (for tables)."""
    return provider.removesuffix("ExecutionProvider") or provider


def default_threads() -> int:
    """Cores this process may use (the affinity mask where the OS has one, else os.cpu_count())."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def cuda_provider_options(device_id: int = 0) -> dict[str, str]:
    """CUDA EP options for measurement: exhaustive cuDNN algorithm search, full workspace."""
    return {
        "device_id": str(device_id),
        "cudnn_conv_algo_search": "EXHAUSTIVE",
        "cudnn_conv_use_max_workspace": "1",
        "do_copy_in_default_stream": "1",
    }


def tensorrt_provider_options(
    device_id: int = 0, fp16: bool = False, engine_cache_dir: str | None = None
) -> dict[str, str]:
    """TensorRT EP options. fp16 off by default (it changes numerics); optional engine cache."""
    options = {"device_id": str(device_id), "trt_fp16_enable": "1" if fp16 else "0"}
    if engine_cache_dir:
        options["trt_engine_cache_enable"] = "1"
        options["trt_engine_cache_path"] = engine_cache_dir
    return options


def provider_chain(provider: str, device_id: int = 0) -> list[list[ProviderEntry]]:
    """The attempts for a request, best first; each attempt is a full providers list."""
    key = provider_key(provider)
    cpu: ProviderEntry = (CPU, {})
    cuda: ProviderEntry = (CUDA, cuda_provider_options(device_id))
    trt: ProviderEntry = (TENSORRT, tensorrt_provider_options(device_id))
    if key == "cpu":
        return [[cpu]]
    if key == "cuda":
        return [[cuda, cpu], [cpu]]
    return [[trt, cuda, cpu], [cuda, cpu], [cpu]]


def session_options(threads: int | None = None, log_severity: int = 3,
                    spinning: bool = False) -> ort.SessionOptions:
    """Options for measurement: full graph optimisation, `threads` intra-op threads, no spinning.

    Spinning is off for both thread pools by default: a spinning pool keeps its cores busy after a
    run, and two sessions alternating on the same few cores then slow each other down badly.
    `spinning=True` keeps onnxruntime's default (threads spin between ops, as most deployments
    run); time such sessions in blocks (`runner.measure_blocks`), not run by run.
    """
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.intra_op_num_threads = int(threads) if threads else default_threads()
    so.inter_op_num_threads = 1
    spin = "1" if spinning else "0"
    so.add_session_config_entry("session.intra_op.allow_spinning", spin)
    so.add_session_config_entry("session.inter_op.allow_spinning", spin)
    so.log_severity_level = log_severity
    return so


# --------------------------------------------------------------------------- native log capture


@dataclass
class _Captured:
    text: str = ""


@contextmanager
def capture_native_stderr() -> Iterator[_Captured]:
    """Redirect file descriptor 2 (where onnxruntime's C++ logger writes) into a buffer."""
    captured = _Captured()
    try:
        saved = os.dup(2)
    except OSError:  # no stderr at all: nothing to capture
        yield captured
        return
    with tempfile.TemporaryFile(mode="w+b") as sink:
        try:
            sys.stderr.flush()
        except (AttributeError, ValueError, OSError):
            pass
        os.dup2(sink.fileno(), 2)
        try:
            yield captured
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            captured.text = sink.read().decode("utf-8", errors="replace")


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_LIBRARY_ERROR = re.compile(r"with error: (.+)$")


def summarize_native_log(text: str, provider: str) -> str | None:
    """The most useful line of onnxruntime's log about `provider` failing, or None."""
    lines = [_ANSI.sub("", line).strip() for line in text.splitlines()]
    lines = [line for line in lines if line]
    for line in lines:  # a provider library that cannot be loaded names the missing dependency
        match = _LIBRARY_ERROR.search(line)
        if match and "Failed to load library" in line:
            return match.group(1).strip()
    short = short_provider_name(provider)
    for line in lines:
        if f"Failed to create {provider}" in line or (short in line and "[E:" in line):
            return line.split("] ", 2)[-1].strip()
    for line in lines:
        if "[E:" in line:
            return line.split("] ", 2)[-1].strip()
    return None


# onnxruntime >= 1.31 warns on every CUDA session it creates the classic way (not as a plugin EP),
# although the session runs on CUDA: seen on an H200, onnxruntime-gpu 1.31.1, 2026-11-30.
_BENIGN = (re.compile(r"No registered plugin EP device found for '\w+' with device_id="),)


def without_benign_lines(text: str) -> str:
    """onnxruntime's log of a session that was created as asked, less its known-benign warnings."""
    kept = [line for line in text.splitlines(keepends=True)
            if not any(pattern.search(line) for pattern in _BENIGN)]
    return "".join(kept)


def _one_line(text: str, limit: int = 200) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


# --------------------------------------------------------------------------- session creation

SessionFactory = Callable[[str | bytes, ort.SessionOptions, list[ProviderEntry]], object]


def _ort_session(payload: str | bytes, so: ort.SessionOptions, providers: list[ProviderEntry]):
    return ort.InferenceSession(
        payload,
        sess_options=so,
        providers=[name for name, _ in providers],
        provider_options=[options for _, options in providers],
        enable_fallback=0,
    )


@dataclass
class SessionAttempt:
    """How a provider request was resolved: the session and why better providers were dropped."""

    session: object
    provider_requested: str
    provider_used: str
    failures: list[tuple[str, str]] = field(default_factory=list)  # (provider, reason)

    @property
    def reasons(self) -> str:
        return "; ".join(f"{name} is unavailable ({reason})" for name, reason in self.failures)

    @property
    def warning(self) -> str | None:
        if not self.failures:
            return None
        return f"{self.reasons}; using {self.provider_used}"


_PRELOADED: dict[str, str] = {}


def preload_gpu_libraries() -> str:
    """Load the CUDA and cuDNN libraries of pip's nvidia-* packages, once per process.

    onnxruntime-gpu does not find CUDA libraries that pip installed (``pip install
    compressor[cuda]``, or beside a CUDA build of torch) unless they are loaded first: its
    ``preload_dlls`` does that where it exists (onnxruntime >= 1.21). What it prints goes into the
    returned text, not to stdout (JSON output stays clean); a failure here is not an error, the
    session's creation then says which library is missing.
    """
    if "done" in _PRELOADED:
        return _PRELOADED["done"]
    preload = getattr(ort, "preload_dlls", None)
    buffer, native = io.StringIO(), _Captured()
    if preload is not None:
        try:
            with redirect_stdout(buffer), capture_native_stderr() as native:
                preload()
        except Exception as exc:  # noqa: BLE001 - best effort: the session reports what is missing
            buffer.write(f"preload_dlls failed: {exc}\n")
    text = _ANSI.sub("", buffer.getvalue() + native.text).strip()
    _PRELOADED["done"] = text
    return text


def create_with_fallback(
    payload: str | bytes,
    so_factory: Callable[[], ort.SessionOptions],
    chain: Sequence[list[ProviderEntry]],
    available: Sequence[str],
    factory: SessionFactory = _ort_session,
    model_name: str = "model",
) -> SessionAttempt:
    """Try each providers list of `chain` until a session runs on its first provider.

    A session whose first provider is not the one asked for (onnxruntime dropped it silently) is a
    failed attempt for that provider, unless nothing better is left, in which case it is kept.
    Errors that are not about the provider (a corrupt or unsupported model) raise ModelError.
    """
    requested = chain[0][0][0]
    failures: list[tuple[str, str]] = []
    for position, providers in enumerate(chain):
        wanted = providers[0][0]
        is_last = position == len(chain) - 1
        if wanted not in available and not is_last:
            failures.append((wanted, "not in this onnxruntime build"))
            continue
        capture = wanted in GPU_PROVIDERS
        log = _Captured()
        try:
            if capture:
                with capture_native_stderr() as log:
                    session = factory(payload, so_factory(), providers)
            else:
                session = factory(payload, so_factory(), providers)
        except Exception as exc:  # onnxruntime's exception types derive from Exception only
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if is_last or _looks_like_model_error(str(exc)):
                raise ModelError(
                    f"onnxruntime cannot load {model_name}: {_one_line(reason)}"
                ) from exc
            failures.append((wanted, _one_line(summarize_native_log(log.text, wanted) or reason)))
            continue
        used = session.get_providers()[0]
        if used != wanted and not is_last:
            reason = summarize_native_log(log.text, wanted) or "onnxruntime did not create it"
            failures.append((wanted, _one_line(reason)))
            continue
        if capture and used == wanted:
            sys.stderr.write(without_benign_lines(log.text))  # nothing was wrong: give the rest back
        return SessionAttempt(session, requested, used, failures)
    raise AssertionError("unreachable: the last attempt either returns or raises")


_MODEL_ERROR_MARKERS = (
    "INVALID_GRAPH",
    "INVALID_PROTOBUF",
    "Failed to load model",
    "NO_MODEL",
    "Load model",
    "Unsupported model IR version",
    "is not a registered function/op",
    "NOT_IMPLEMENTED",
    "Type Error",
    "ShapeInferenceError",
)


def _looks_like_model_error(message: str) -> bool:
    return any(marker in message for marker in _MODEL_ERROR_MARKERS)


def make_session(
    model: str | os.PathLike | onnx.ModelProto | ModelSource,
    provider: str = "cpu",
    threads: int | None = None,
    *,
    device_id: int = 0,
    strict: bool = False,
    spinning: bool = False,
    factory: SessionFactory = _ort_session,
) -> tuple[object, str, str | None]:
    """An onnxruntime session for measurement: (session, provider actually used, warning or None).

    The warning is one line saying which provider could not be created and why, and which one is
    used instead. With `strict`, that situation raises ProviderUnavailableError (exit 2).
    `spinning`: let the thread pools spin (onnxruntime's default; see `session_options`).
    """
    source = model if isinstance(model, ModelSource) else load_source(model)
    chain = provider_chain(provider, device_id)
    if provider_key(provider) != "cpu" and GPU_PROVIDERS & set(ort.get_available_providers()):
        preload_gpu_libraries()
    attempt = create_with_fallback(
        source.payload,
        lambda: session_options(threads, spinning=spinning),
        chain,
        ort.get_available_providers(),
        factory=factory,
        model_name=source.name,
    )
    if attempt.failures and strict:
        raise ProviderUnavailableError(
            f"{attempt.reasons}; --strict-provider forbids falling back to {attempt.provider_used}"
        )
    return attempt.session, attempt.provider_used, attempt.warning


# --------------------------------------------------------------------------- run functions


def device_for(provider_used: str) -> str:
    """Where inputs live for a provider: 'cuda' for CUDA/TensorRT, else 'cpu'."""
    return "cuda" if provider_used in GPU_PROVIDERS else "cpu"


def make_run_fn(
    session,
    feeds: Mapping[str, np.ndarray],
    provider_used: str,
    device_id: int = 0,
    ortvalue_from_numpy: Callable = ort.OrtValue.ortvalue_from_numpy,
) -> Callable[[], None]:
    """A no-argument function that runs the model once on `feeds`, ready to be timed.

    CPU: `session.run` on the numpy feeds. CUDA/TensorRT: IO binding with inputs copied to the
    device once, outputs left on the device, and a synchronisation so the time covers the work.
    """
    device = device_for(provider_used)
    output_names = [out.name for out in session.get_outputs()]
    if device == "cpu":
        cpu_feeds = dict(feeds)

        def run_cpu() -> None:
            session.run(output_names, cpu_feeds)

        return run_cpu

    binding = session.io_binding()
    device_values = {}  # kept alive by the closure: the binding only holds pointers
    for name, array in feeds.items():
        value = ortvalue_from_numpy(np.ascontiguousarray(array), device, device_id)
        binding.bind_ortvalue_input(name, value)
        device_values[name] = value
    for name in output_names:
        binding.bind_output(name, device, device_id)
    binding.synchronize_inputs()

    def run_bound() -> None:
        session.run_with_iobinding(binding)
        binding.synchronize_outputs()

    run_bound.device_values = device_values  # type: ignore[attr-defined]
    run_bound.binding = binding  # type: ignore[attr-defined]
    return run_bound


def cuda_usable(device_id: int = 0) -> bool:
    """Whether a CUDA session can really be created here (not just listed by onnxruntime)."""
    if CUDA not in ort.get_available_providers():
        return False
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["x"], ["y"])],
        "probe",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
    )
    probe = onnx.helper.make_model(
        graph, opset_imports=[onnx.helper.make_opsetid("", 17)], ir_version=10
    )
    try:
        _, used, _ = make_session(probe, "cuda", threads=1, device_id=device_id)
    except UsageError:
        return False
    return used == CUDA
