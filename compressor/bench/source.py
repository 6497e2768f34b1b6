"""What a model argument refers to: a path or an in-memory onnx.ModelProto.

A `ModelSource` carries the display name, the graph signature (the proto, weights not needed)
and what to hand onnxruntime: the path itself (so external data next to it resolves) or the
serialized bytes of an in-memory model (protobuf caps these at 2 GB).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import onnx

from compressor.errors import ModelError, UsageError

_PROTOBUF_LIMIT = 2**31 - 1


@dataclass(frozen=True)
class ModelSource:
    """One model to benchmark."""

    name: str  # path as given, or '<memory:graph-name>'
    signature: onnx.ModelProto  # inputs, outputs, initializer names; no weights (signature_of)
    payload: str | bytes  # for onnxruntime.InferenceSession

    @property
    def is_path(self) -> bool:
        return isinstance(self.payload, str)


def load_source(model: str | os.PathLike | onnx.ModelProto, index: int = 0) -> ModelSource:
    """Accept a path or a ModelProto; raise ModelError (exit 2) for a missing or unreadable file."""
    if isinstance(model, onnx.ModelProto):
        size = model.ByteSize()
        if size > _PROTOBUF_LIMIT:
            raise UsageError(
                f"in-memory model #{index} is {size / 2**30:.1f} GB; models over 2 GB must be "
                "saved with external data and given as a path"
            )
        graph_name = model.graph.name or f"model{index}"
        if any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
            raise UsageError(
                f"in-memory model <memory:{graph_name}> keeps weights in external data files, "
                "which onnxruntime cannot find from bytes; pass the model's path instead"
            )
        return ModelSource(
            name=f"<memory:{graph_name}>", signature=signature_of(model),
            payload=model.SerializeToString(),
        )
    if not isinstance(model, (str, os.PathLike)):
        raise UsageError(
            f"model #{index} is a {type(model).__name__}; pass a path or an onnx.ModelProto"
        )
    path = os.fspath(model)
    if not os.path.exists(path):
        raise ModelError(f"model file not found: {path}")
    if os.path.isdir(path):
        raise ModelError(f"{path} is a directory, not an ONNX model file")
    try:
        signature = onnx.load(path, load_external_data=False)
    except Exception as exc:  # protobuf raises DecodeError, onnx raises various errors
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelError(f"cannot read {path} as an ONNX model: {reason}") from exc
    if not signature.HasField("graph") or not signature.graph.node and not signature.graph.output:
        raise ModelError(f"cannot read {path} as an ONNX model: it has no graph")
    return ModelSource(name=path, signature=signature_of(signature), payload=path)


def signature_of(model: onnx.ModelProto) -> onnx.ModelProto:
    """A weightless copy: graph inputs, outputs and initializer names (to tell inputs apart)."""
    light = onnx.ModelProto(ir_version=model.ir_version)
    light.opset_import.extend(model.opset_import)
    light.graph.name = model.graph.name
    light.graph.input.extend(model.graph.input)
    light.graph.output.extend(model.graph.output)
    for tensor in model.graph.initializer:
        light.graph.initializer.add(name=tensor.name)
    for sparse in model.graph.sparse_initializer:
        light.graph.sparse_initializer.add().values.name = sparse.values.name
    return light
