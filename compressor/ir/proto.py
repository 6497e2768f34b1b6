"""Protobuf helpers that avoid copying weights the caller is about to replace."""

from __future__ import annotations

import onnx
from google.protobuf.message import Message


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
