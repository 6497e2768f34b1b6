"""Protobuf helpers that avoid copying weights the caller is about to replace."""

from __future__ import annotations

import numpy as np
import onnx
from google.protobuf.message import Message
from onnx import numpy_helper


def copy_fields(dst: Message, src: Message, skip=frozenset()) -> None:
    """Copy every set field of protobuf message ``src`` into ``dst`` except those named in ``skip``."""
    for fd, value in src.ListFields():
        if fd.name in skip:
            continue
        if hasattr(value, "extend"):  # a repeated field
            getattr(dst, fd.name).extend(value)
        elif fd.message_type is not None:
            getattr(dst, fd.name).CopyFrom(value)
        else:
            setattr(dst, fd.name, value)


def copy_without_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    """A deep copy of ``model`` whose main graph has no initializers (everything else is copied,
    subgraphs and functions included). Surgery appends the kept and the sliced weights itself, so
    the original weights it replaces are never copied (``CopyFrom`` of the whole model held them
    twice in the pruned model's arena)."""
    out = onnx.ModelProto()
    copy_fields(out, model, {"graph"})
    copy_fields(out.graph, model.graph, {"initializer"})
    return out


def tensor_nbytes(t: onnx.TensorProto) -> int:
    """Payload size of a tensor from its dims and element type, without serialising it
    (``ByteSize`` on a large payload is slow). External tensors count their declared size."""
    n = 1
    for d in t.dims:
        n *= int(d)
    try:
        item = onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
    except Exception:  # string or unknown types: fall back to the serialised size
        return t.ByteSize()
    return n * item


#: Element types that onnxruntime takes from numpy as they are (no conversion, no copy).
FEEDABLE_TYPES = {
    onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16,
    onnx.TensorProto.INT8, onnx.TensorProto.INT16, onnx.TensorProto.INT32, onnx.TensorProto.INT64,
    onnx.TensorProto.UINT8, onnx.TensorProto.UINT16, onnx.TensorProto.UINT32, onnx.TensorProto.UINT64,
    onnx.TensorProto.BOOL,
}


def feedable(t: onnx.TensorProto, min_bytes: int) -> bool:
    """Whether ``t`` is a constant worth handing to onnxruntime as a numpy array instead of inside
    the model bytes: at least ``min_bytes``, of a type numpy holds exactly, with its data here.
    The oracle, the shape probe and :func:`detach_weights` share this test, so every detached
    weight is one they feed."""
    return (t.data_type in FEEDABLE_TYPES and not t.HasField("segment")
            and t.data_location != onnx.TensorProto.EXTERNAL and tensor_nbytes(t) >= min_bytes)


#: Only initializers above this size are detached; smaller ones (shape operands, which onnx's shape
#: inference reads from the model) keep their payload. Above ir.shapes.weightless's 4096 bytes
#: and the oracle's FEED_MIN_BYTES.
DETACH_MIN_BYTES = 4097


def detach_weights(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """Split ``model`` into a skeleton (every field, large initializers reduced to name, type and
    dims) and their values as numpy arrays. Once the caller drops ``model``, its parsed protobuf
    (whose arena frees only as a whole) is gone and the weights live once, as arrays.

    Graph outputs and tensors numpy cannot hold exactly keep their payload."""
    skeleton = copy_without_initializers(model)
    outputs = {o.name for o in model.graph.output}
    values: dict[str, np.ndarray] = {}
    for t in model.graph.initializer:
        if feedable(t, DETACH_MIN_BYTES) and t.HasField("raw_data") and t.name not in outputs:
            values[t.name] = numpy_helper.to_array(t)
            stub = skeleton.graph.initializer.add()
            stub.name, stub.data_type, stub.doc_string = t.name, t.data_type, t.doc_string
            stub.dims.extend(t.dims)
            stub.metadata_props.extend(t.metadata_props)
        else:
            skeleton.graph.initializer.add().CopyFrom(t)
    return skeleton, values
