"""Load and save ONNX models safely: clear errors for bad files, atomic writes, sane IR versions."""

from __future__ import annotations

import functools
import heapq
import os
import tempfile
from pathlib import Path

import onnx
from onnx import numpy_helper

from compressor.errors import ModelError, UsageError
from compressor.ir.proto import copy_without_initializers, tensor_nbytes

MIN_OPSET = 7
#: Models above this size are written with their weights in an external data file.
EXTERNAL_DATA_THRESHOLD = 1_800_000_000


#: Every onnxruntime this project installs (>= 1.20) loads IR versions up to this one.
ORT_SURE_IR = 10


def loadable_ir(ir_version: int) -> int:
    """``ir_version``, capped at the newest onnxruntime loads: asked of onnxruntime only above
    ORT_SURE_IR (a session or two, ~25 ms once per process, that most models do not need)."""
    return ir_version if ir_version <= ORT_SURE_IR else min(ir_version, ort_max_ir_version())


@functools.lru_cache(maxsize=1)
def ort_max_ir_version() -> int:
    """The newest IR version that the installed onnxruntime loads, asked of onnxruntime itself: a
    one-node model at each IR version from onnx's newest down (a table of releases went stale:
    onnxruntime 1.31 loads IR 13, and models at opset 23+ need IR 11+)."""
    try:
        import onnxruntime as ort
    except Exception:  # pragma: no cover - onnxruntime is a hard dependency
        return 9
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["y"])], "probe", [x], [y])
    opts = ort.SessionOptions()
    opts.log_severity_level = 4
    for ir in range(onnx.IR_VERSION, 7, -1):
        model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 13)])
        model.ir_version = ir
        try:
            ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        except Exception:
            continue
        return ir
    return 8


def _check_external_data(model: onnx.ModelProto, base_dir: Path) -> None:
    """Refuse external-data locations that escape the model's folder."""
    base = base_dir.resolve()
    for tensor, location, target in _external_refs(model, base):
        if Path(location).is_absolute() or base not in target.parents and target != base:
            link = base / location
            via = (f" (it is a symbolic link to {target}; copy the file, or point the link inside the folder)"
                   if not Path(location).is_absolute() and link.is_symlink() else "")
            raise ModelError(
                f"tensor '{tensor.name}' points to external data '{location}' outside the "
                f"model's folder {base}; refusing to read it{via}"
            )
        if not target.is_file():
            raise ModelError(
                f"tensor '{tensor.name}' needs external data file '{location}', which is missing "
                f"next to the model"
            )


def _all_tensors(model: onnx.ModelProto):
    yield from model.graph.initializer
    for node in model.graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                yield attr.t


def _external_refs(model: onnx.ModelProto, base_dir: str | os.PathLike):
    """(tensor, location, resolved file) of every tensor kept in external data."""
    for tensor in _all_tensors(model):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            location = {e.key: e.value for e in tensor.external_data}.get("location", "")
            yield tensor, location, (Path(base_dir) / location).resolve()


def external_data_files(model: onnx.ModelProto, base_dir: str | os.PathLike) -> list[Path]:
    """The external-data files a model (loaded without its external data) reads, resolved."""
    return list(dict.fromkeys(f for _, _, f in _external_refs(model, base_dir)))


def _reads(node: onnx.NodeProto) -> set[str]:
    """The tensors a node needs before it runs: its inputs and what its subgraphs read."""
    names = {i for i in node.input if i}
    for a in node.attribute:
        for g in ([a.g] if a.type == onnx.AttributeProto.GRAPH else
                  list(a.graphs) if a.type == onnx.AttributeProto.GRAPHS else []):
            for n in g.node:
                names |= _reads(n)
    return names


def _sources(graph: onnx.GraphProto) -> set[str]:
    return ({i.name for i in graph.input} | {t.name for t in graph.initializer}
            | {t.values.name for t in graph.sparse_initializer})


def is_sorted(graph: onnx.GraphProto) -> bool:
    """Whether no node reads a tensor that a later node produces."""
    produced = {o for n in graph.node for o in n.output if o}
    seen = _sources(graph)
    for n in graph.node:
        if any(r in produced and r not in seen for r in _reads(n)):
            return False
        seen.update(n.output)
    return True


def sort_nodes(graph: onnx.GraphProto) -> bool:
    """Put the graph's nodes in topological order, in place, keeping the given order wherever it
    already is one (onnxruntime's own float16 converter appends its input Casts at the end, and
    onnx requires the order). Returns whether anything moved; a graph with a cycle or a read of a
    tensor nothing produces is left as it is, for validation to name the node."""
    if is_sorted(graph):
        return False
    producer = {o: k for k, n in enumerate(graph.node) for o in n.output if o}
    waiting = [0] * len(graph.node)  # how many producing nodes each node still waits for
    readers: dict[int, list[int]] = {}
    for k, n in enumerate(graph.node):
        for p in {producer[r] for r in _reads(n) if r in producer}:
            waiting[k] += 1
            readers.setdefault(p, []).append(k)
    ready = [k for k, w in enumerate(waiting) if w == 0]
    heapq.heapify(ready)  # the earliest ready node first: the given order wherever it is one
    order: list[int] = []
    while ready:
        k = heapq.heappop(ready)
        order.append(k)
        for r in readers.get(k, ()):
            waiting[r] -= 1
            if waiting[r] == 0:
                heapq.heappush(ready, r)
    if len(order) < len(graph.node):
        return False  # a cycle: leave it to validation
    if order == sorted(order):
        return False
    nodes = [graph.node[k] for k in order]
    copies = [onnx.NodeProto() for _ in nodes]
    for c, n in zip(copies, nodes):
        c.CopyFrom(n)
    del graph.node[:]
    graph.node.extend(copies)
    return True


def load_model(path: str | os.PathLike, data_files: list[Path] | None = None,
               notes: list[str] | None = None) -> onnx.ModelProto:
    """Load and validate an ONNX model, raising ModelError with a one-line message on failure.
    ``data_files``, when given, receives the external-data files the model was read from;
    ``notes`` what loading changed (nodes put in topological order)."""
    p = Path(path)
    if not p.exists():
        raise ModelError(f"model file not found: {p}")
    if p.is_dir():
        raise ModelError(f"{p} is a directory, not an ONNX model file")
    try:
        with open(p, "rb") as fh:  # read, not stat: a pipe or /dev/fd/N has no size
            raw = fh.read()
    except OSError as exc:
        raise ModelError(f"cannot read {p}: {exc.strerror or exc}") from None
    if not raw:
        raise ModelError(f"{p} is empty")
    try:
        model = onnx.load_model_from_string(raw)
    except Exception as exc:  # protobuf raises DecodeError and friends
        raise ModelError(f"{p} is not a readable ONNX model ({type(exc).__name__}: {exc})") from None
    del raw
    if not model.graph.node and not model.graph.output:
        raise ModelError(f"{p} does not contain an ONNX graph (truncated or not an ONNX file?)")
    _check_external_data(model, p.parent)
    if data_files is not None:
        data_files.extend(external_data_files(model, p.parent))
    try:
        onnx.load_external_data_for_model(model, str(p.parent))
    except Exception as exc:
        raise ModelError(f"cannot read external data of {p}: {exc}") from None
    if sort_nodes(model.graph) and notes is not None:
        notes.append(SORTED_NOTE)
    validate_model(model, str(p))
    return model


SORTED_NOTE = "the graph's nodes were not in topological order (as ONNX requires); they were sorted"


def default_opset(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    return 0


def validate_model(model: onnx.ModelProto, label: str = "model") -> None:
    """Structural checks with messages a user can act on, then ``onnx.checker`` (see checkable)."""
    opset = default_opset(model)
    if opset and opset < MIN_OPSET:
        raise ModelError(f"{label}: opset {opset} is not supported (need opset >= {MIN_OPSET})")
    if opset > onnx.defs.onnx_opset_version():
        raise ModelError(
            f"{label}: opset {opset} is newer than this onnx package supports "
            f"({onnx.defs.onnx_opset_version()})"
        )
    g = model.graph
    known = ({i.name for i in g.input} | {t.name for t in g.initializer} | {s.values.name for s in g.sparse_initializer}
             | {""})
    for node in g.node:
        for name in node.input:
            if name not in known:
                produced_later = any(name in n.output for n in g.node)
                if produced_later:
                    raise ModelError(
                        f"{label}: node '{node.name or node.op_type}' reads '{name}' before it is "
                        "produced (cycle or unsorted graph)"
                    )
                raise ModelError(
                    f"{label}: node '{node.name or node.op_type}' reads '{name}', which no node, "
                    "input or initializer provides (missing initializer?)"
                )
        known.update(node.output)
    for out in g.output:
        if out.name not in known:
            raise ModelError(f"{label}: graph output '{out.name}' is not produced by any node")
    names: set[str] = set()
    for node in g.node:  # onnx.checker allows this; onnxruntime refuses to load the model
        if node.name and node.name in names:
            raise ModelError(f"{label}: two nodes are named '{node.name}' (onnxruntime refuses such a model; "
                             "give the nodes unique names)")
        names.add(node.name)
    for kind, values in (("input", g.input), ("output", g.output)):
        for vi in values:  # the checker's own message names neither the tensor nor the fix
            if vi.type.HasField("tensor_type") and not vi.type.tensor_type.HasField("shape"):
                raise ModelError(f"{label}: graph {kind} '{vi.name}' declares no shape, which ONNX requires of "
                                 "graph inputs and outputs: declare its rank (its dims may be symbolic)")
    try:  # the checker sees the model with its large weights replaced by stubs (see checkable)
        onnx.checker.check_model(checkable(model, label), full_check=False)
    except onnx.checker.ValidationError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "invalid model"
        raise ModelError(f"{label}: invalid ONNX graph: {first}") from None


#: Initializers of at least this many bytes are checked here and stubbed for onnx.checker.
STUB_MIN_BYTES = 1024
#: Element types stored one value per whole byte(s): raw_data holds dims x itemsize bytes.
_BYTE_ALIGNED = {
    onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16,
    onnx.TensorProto.INT8, onnx.TensorProto.INT16, onnx.TensorProto.INT32, onnx.TensorProto.INT64,
    onnx.TensorProto.UINT8, onnx.TensorProto.UINT16, onnx.TensorProto.UINT32, onnx.TensorProto.UINT64,
    onnx.TensorProto.BOOL, onnx.TensorProto.COMPLEX64, onnx.TensorProto.COMPLEX128,
}


def checkable(model: onnx.ModelProto, label: str) -> onnx.ModelProto:
    """The model as ``onnx.checker`` needs to see it, without serialising its weights.

    The checker's only test of a raw-data initializer's payload is that it is large enough for
    the declared shape and type; that test is made here, and each large raw-data initializer is
    handed to the checker as a one-element stub of the same name and type (every other check:
    names, nodes, schemas, opsets, attributes, sub-graphs, small tensors, runs on the real thing).
    Checking the full model instead would serialise it, and the checker's C++ copy would double
    its memory for the duration.
    """
    m = copy_without_initializers(model)
    for t in model.graph.initializer:
        if (t.data_type not in _BYTE_ALIGNED or not t.HasField("raw_data") or t.HasField("segment")
                or t.data_location == onnx.TensorProto.EXTERNAL or any(
                    f.name.endswith("_data") and f.name != "raw_data" for f, _ in t.ListFields())):
            m.graph.initializer.append(t)
            continue
        need = tensor_nbytes(t)
        if need < STUB_MIN_BYTES:
            m.graph.initializer.append(t)
            continue
        have = len(t.raw_data)
        if have < need:
            raise ModelError(f"{label}: invalid ONNX graph: tensor '{t.name}' raw_data size ({have} bytes) is "
                             f"too small for the declared shape and type ({need} bytes required)")
        one = onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
        m.graph.initializer.append(onnx.TensorProto(name=t.name, data_type=t.data_type, dims=[1], raw_data=bytes(one)))
    _stand_in_deprecated(m)
    return m


#: The domain the checker's copy moves deprecated ops to (see _stand_in_deprecated); never written out.
STAND_IN_DOMAIN = "compressor.checker.deprecated"


@functools.lru_cache(maxsize=None)
def _deprecated(domain: str, op_type: str, opset: int) -> bool:
    try:
        return bool(onnx.defs.get_schema(op_type, opset, domain).deprecated)
    except Exception:  # no schema: the checker reports that itself
        return False


def _stand_in_deprecated(m: onnx.ModelProto) -> None:
    """Move the checker's copy of every op ONNX lists as deprecated at the model's opset
    (GroupNormalization at opsets 18-20, Upsample from 10, Scatter from 11) to a domain of its own.

    ``onnx.checker`` refuses such a node outright ("Op registered for GroupNormalization is
    deprecated"), although the op keeps its specification and onnxruntime may run it (it runs
    GroupNormalization-18, which exporters wrote and users have; it refuses Upsample-10 and
    Scatter-11, and the tool then reports onnxruntime's reason). In its own domain the node is not
    schema-checked, while the rest of the graph (names, topology, every other node's schema) still
    is; the op itself is judged by onnxruntime, which proves every pruning anyway, and the model
    written out keeps the op as it was."""
    imports = {imp.domain or "": imp.version for imp in m.opset_import}
    moved = False

    def visit(graph: onnx.GraphProto) -> None:
        nonlocal moved
        for node in graph.node:
            domain = node.domain if node.domain != "ai.onnx" else ""
            if domain in imports and _deprecated(domain, node.op_type, imports[domain]):
                node.domain = STAND_IN_DOMAIN
                moved = True
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    visit(attr.g)
                elif attr.type == onnx.AttributeProto.GRAPHS:
                    for sub in attr.graphs:
                        visit(sub)

    visit(m.graph)
    if moved:
        m.opset_import.append(onnx.helper.make_opsetid(STAND_IN_DOMAIN, 1))


def _umask() -> int:
    """The process umask, read without changing it where Linux says it (os.umask can only be read by
    setting it, which other threads would see for a moment)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


class _Deferred:
    """Termination signals (and Ctrl-C) held back while the output's files are renamed into place
    and the bookkeeping that says so is updated; delivered right after (main thread, POSIX)."""

    SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP")

    def __enter__(self):
        import signal
        import threading

        self._old = None
        if hasattr(signal, "pthread_sigmask") and threading.current_thread() is threading.main_thread():
            sigs = {getattr(signal, s) for s in self.SIGNALS if hasattr(signal, s)}
            self._old = signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
        return self

    def __exit__(self, *exc):
        import signal

        if self._old is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, self._old)
        return False


def _publish(tmp: str | os.PathLike, out: Path) -> None:
    """Give the finished temp file the mode a new file gets (or the mode of the file it replaces;
    mkstemp makes it 0600), then rename it over ``out``."""
    try:
        mode = out.stat().st_mode & 0o777
    except OSError:
        mode = 0o666 & ~_umask()
    os.chmod(tmp, mode)
    os.replace(tmp, out)


#: (label, path) pairs of files an output must not be written over
Forbidden = list[tuple[str, "str | os.PathLike | None"]]


def check_output_path(path: str | os.PathLike, *, forbid: Forbidden | None = None, what: str = "output") -> Path:
    """Refuse an output path before any work: a folder, one of the ``forbid`` files ((label, path)
    pairs: the input model, its external data, another output), or a place that cannot be written."""
    out = Path(path)
    if out.is_dir():
        raise UsageError(f"{what} path {out} is a directory")
    target = out.resolve()
    for label, f in forbid or ():
        if f is not None and target == Path(f).resolve():
            raise UsageError(f"refusing to overwrite {label} {out}; choose another {what} path")
    folder = target.parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        raise UsageError(f"cannot write {what} {out}: {folder} is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"cannot write {what} {out}: no write permission in {folder}")
    return out


def check_data_path(path: str | os.PathLike, forbid: Forbidden | None) -> Path:
    """The external-data file a large model saved as ``path`` gets (``PATH.data``), refused when it
    is one of the ``forbid`` files (the input model's own external data, say)."""
    out = Path(path)
    data = out.parent / (out.name + ".data")
    for label, f in forbid or ():
        if f is not None and data.resolve() == Path(f).resolve():
            raise UsageError(f"refusing the output path {out}: a large model's weights are written beside it to "
                             f"{data}, which is {label}; choose another output path")
    return data


def save_model(model: onnx.ModelProto, path: str | os.PathLike, *,
               forbid: str | os.PathLike | Forbidden | None = None) -> Path:
    """Write a model atomically (temp files + renames); large models get external data beside it
    (``OUT.data``). ``model`` itself is never changed.

    ``forbid``: the input model's path, or (label, path) of every file that must not be written
    over (the input model, its external data); the external-data file is checked too.
    A file that cannot be written raises UsageError (exit 2) and leaves no temporary file.

    A large model is two files. Its data file is moved into place first, then the model file:
    should that last step fail (or a signal arrive between them), the data file that was there
    before is put back, so an existing ``OUT`` never runs with weights it was not written with.
    """
    out = Path(path)
    if forbid is not None and not isinstance(forbid, list):
        forbid = [("the input model", forbid)]
    check_output_path(out, forbid=forbid)
    large = serialized_size(model) > EXTERNAL_DATA_THRESHOLD
    data = check_data_path(out, forbid)
    if large:
        check_output_path(data, what="external data")
    tmp = tmp_data = backup = None
    moved = False
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
        os.close(fd)
        if large:
            tmp_data = out.parent / (Path(tmp).name + ".data")
            with open(tmp_data, "wb") as fh_data, open(tmp, "wb") as fh:
                write_with_external_data(model, fh, fh_data, data.name)
        else:
            with open(tmp, "wb") as fh:
                write_streamed(model, fh)
        with _Deferred():  # the renames and what records them: no signal lands in between
            if large:
                if data.exists():
                    backup = out.parent / (Path(tmp).name + ".previous.data")
                    os.replace(data, backup)
                _publish(tmp_data, data)
                tmp_data, moved = None, True
            _publish(tmp, out)
            tmp = None
    except OSError as exc:
        raise UsageError(f"cannot write {out}: {exc.strerror or exc}") from None
    finally:  # on any failure, a signal included (the CLI turns SIGTERM into an exception)
        if tmp is not None and (moved or backup is not None):  # the model file did not follow: undo
            if moved:
                data.unlink(missing_ok=True)
            if backup is not None:
                os.replace(backup, data)
                backup = None
        for t in (tmp_data, tmp, backup):  # None, or renamed away, after a success
            if t is not None:
                Path(t).unlink(missing_ok=True)
    return out


def write_with_external_data(model: onnx.ModelProto, fh, fh_data, location: str, min_bytes: int = 1024) -> None:
    """Write ``model`` to ``fh`` with every initializer of at least ``min_bytes`` stored in
    ``fh_data`` (read as ``location``, beside the model), one tensor at a time: neither ``model``
    nor a copy of its weights is made (onnx.save_model's external-data path edits the model in
    place and leaves it pointing at the file it wrote)."""
    offset = 0

    def externalize(t: onnx.TensorProto, part: onnx.TensorProto) -> None:
        nonlocal offset
        if (tensor_nbytes(t) < min_bytes or t.data_location == onnx.TensorProto.EXTERNAL
                or t.data_type == onnx.TensorProto.STRING):
            part.CopyFrom(t)
            return
        payload = t.raw_data if t.HasField("raw_data") else numpy_helper.to_array(t).tobytes()
        pad = (-offset) % 4096  # aligned, as onnx writes them (mmap-friendly)
        fh_data.write(b"\0" * pad)
        fh_data.write(payload)
        part.name, part.data_type, part.doc_string = t.name, t.data_type, t.doc_string
        part.dims.extend(t.dims)
        part.metadata_props.extend(t.metadata_props)
        part.data_location = onnx.TensorProto.EXTERNAL
        for key, value in (("location", location), ("offset", str(offset + pad)), ("length", str(len(payload)))):
            entry = part.external_data.add()
            entry.key, entry.value = key, value
        offset += pad + len(payload)

    write_streamed(model, fh, externalize)


def write_streamed(model: onnx.ModelProto, fh, tensor=None) -> None:
    """Write ``model``'s serialisation without building it in memory at once.

    ``SerializeToString`` of a whole model holds it twice (the encoder's buffer and the bytes
    object). Protobuf merges repeated occurrences of an embedded message field, so the model
    without its initializers followed by one ``graph { initializer: t }`` fragment per initializer
    parses to the same ModelProto (initializers in the same order); each fragment is encoded alone.
    ``tensor(t, part)``, when given, fills each fragment's tensor ``part`` from ``t`` instead of a
    copy (write_with_external_data writes a reference to the data file there).
    """
    fh.write(copy_without_initializers(model).SerializeToString())
    for t in model.graph.initializer:
        part = onnx.ModelProto()
        if tensor is None:
            part.graph.initializer.add().CopyFrom(t)
        else:
            tensor(t, part.graph.initializer.add())
        fh.write(part.SerializeToString())
        del part


def serialized_size(model: onnx.ModelProto) -> int:
    """About the model's serialised size (within a few bytes per initializer), without serialising
    its weights: upb's ByteSize encodes the whole message to measure it (the model's size again)."""
    return (copy_without_initializers(model).ByteSize()
            + sum(tensor_nbytes(t) + len(t.name) + 16 * (len(t.dims) + 2) for t in model.graph.initializer))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write a text file atomically (temp file in the same folder, then rename); a file that
    cannot be written raises UsageError (exit 2) and leaves no temporary file."""
    out = Path(path)
    check_output_path(out, what="file")
    tmp = None
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        _publish(tmp, out)
        tmp = None
    except OSError as exc:
        raise UsageError(f"cannot write {out}: {exc.strerror or exc}") from None
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
    return out
