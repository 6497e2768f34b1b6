"""Half-precision models are proven in float32.

The proof compares the pruned model with the masked original. Run in float16, both round every
intermediate to 11 bits, and summing fewer terms in another order flips roundings: a correct
pruning of a 5-conv float16 net differed by 5e-4 relative (one ulp), above the 1e-4 tolerance,
while a planted bug (two input channels swapped) showed only as 2e-3. Slicing a float16 weight is
exact, and so is widening it, so both models are widened to float32 the same way and compared
there: the structure is proven to float32's precision (the same pruning then compared at 4e-7).

``upcast`` rewrites every float16/bfloat16 type of a model (its inputs, outputs, constants, the
``to`` of a Cast, a ConstantOfShape's value, an op's ``dtype``) to float32, in subgraphs too.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

HALF = (TensorProto.FLOAT16, TensorProto.BFLOAT16)


def _tensor_is_half(t: onnx.TensorProto) -> bool:
    return t.data_type in HALF


def _widen_tensor(t: onnx.TensorProto) -> onnx.TensorProto:
    arr = numpy_helper.to_array(t).astype(np.float32)
    out = numpy_helper.from_array(arr, t.name)
    out.doc_string = t.doc_string
    return out


def _widen_type(tp: onnx.TypeProto) -> None:
    which = tp.WhichOneof("value")
    if which == "tensor_type" and tp.tensor_type.elem_type in HALF:
        tp.tensor_type.elem_type = TensorProto.FLOAT
    elif which in ("sequence_type", "optional_type"):
        _widen_type(getattr(tp, which).elem_type)
    elif which == "map_type":
        _widen_type(tp.map_type.value_type)


def _graph_has_half(g: onnx.GraphProto) -> bool:
    if any(_tensor_is_half(t) for t in g.initializer):
        return True
    for vi in list(g.input) + list(g.output):
        if vi.type.tensor_type.elem_type in HALF:
            return True
    for n in g.node:
        for a in n.attribute:
            if a.type == onnx.AttributeProto.INT and a.name in ("to", "dtype", "output_dtype") and a.i in HALF:
                return True
            if a.type == onnx.AttributeProto.TENSOR and _tensor_is_half(a.t):
                return True
            if a.type == onnx.AttributeProto.GRAPH and _graph_has_half(a.g):
                return True
            if a.type == onnx.AttributeProto.GRAPHS and any(_graph_has_half(s) for s in a.graphs):
                return True
    return False


def has_half(model: onnx.ModelProto, weights: dict[str, np.ndarray] | None = None) -> bool:
    """Whether the model computes anything in float16/bfloat16."""
    if weights and any(a.dtype == np.float16 or a.dtype.name == "bfloat16" for a in weights.values()):
        return True
    return _graph_has_half(model.graph)


def _widen_graph(g: onnx.GraphProto) -> None:
    for k, t in enumerate(g.initializer):
        if _tensor_is_half(t):
            g.initializer[k].CopyFrom(_widen_tensor(t))
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        _widen_type(vi.type)
    for n in g.node:
        for a in n.attribute:
            if a.type == onnx.AttributeProto.INT and a.name in ("to", "dtype", "output_dtype") and a.i in HALF:
                a.i = TensorProto.FLOAT
            elif a.type == onnx.AttributeProto.TENSOR and _tensor_is_half(a.t):
                a.t.CopyFrom(_widen_tensor(a.t))
            elif a.type == onnx.AttributeProto.GRAPH:
                _widen_graph(a.g)
            elif a.type == onnx.AttributeProto.GRAPHS:
                for s in a.graphs:
                    _widen_graph(s)


def upcast(model: onnx.ModelProto, weights: dict[str, np.ndarray]) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """A float32 copy of ``model`` and its fed ``weights`` (see the module docstring)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    _widen_graph(m.graph)
    for f in m.functions:
        for n in f.node:
            for a in n.attribute:
                if a.type == onnx.AttributeProto.INT and a.name in ("to", "dtype") and a.i in HALF:
                    a.i = TensorProto.FLOAT
                elif a.type == onnx.AttributeProto.TENSOR and _tensor_is_half(a.t):
                    a.t.CopyFrom(_widen_tensor(a.t))
    wide = {n: (a.astype(np.float32) if a.dtype == np.float16 or a.dtype.name == "bfloat16" else a)
            for n, a in weights.items()}
    return m, wide


def widen_feeds(feeds: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    """The same input values as float32 where they were float16/bfloat16."""
    return [{k: (v.astype(np.float32) if v.dtype == np.float16 or v.dtype.name == "bfloat16" else v)
             for k, v in f.items()} for f in feeds]
