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


def _type_is_half(tp: onnx.TypeProto) -> bool:
    which = tp.WhichOneof("value")
    if which == "tensor_type":
        return tp.tensor_type.elem_type in HALF
    if which in ("sequence_type", "optional_type"):
        return _type_is_half(getattr(tp, which).elem_type)
    return which == "map_type" and _type_is_half(tp.map_type.value_type)


def _widen_type(tp: onnx.TypeProto) -> None:
    which = tp.WhichOneof("value")
    if which == "tensor_type" and tp.tensor_type.elem_type in HALF:
        tp.tensor_type.elem_type = TensorProto.FLOAT
    elif which in ("sequence_type", "optional_type"):
        _widen_type(getattr(tp, which).elem_type)
    elif which == "map_type":
        _widen_type(tp.map_type.value_type)


def _bodies(model: onnx.ModelProto):
    """(initializers, value infos, nodes) of the main graph, every subgraph and every function."""
    def graph(g: onnx.GraphProto):
        yield g.initializer, list(g.input) + list(g.output) + list(g.value_info), g.node
        for n in g.node:
            yield from attributes(n)

    def attributes(n: onnx.NodeProto):
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                yield from graph(a.g)
            elif a.type == onnx.AttributeProto.GRAPHS:
                for sub in a.graphs:
                    yield from graph(sub)

    yield from graph(model.graph)
    for f in model.functions:
        yield [], list(f.value_info), f.node
        for n in f.node:
            yield from attributes(n)


def _half_attributes(node: onnx.NodeProto):
    """The attributes of ``node`` that name or hold a half-precision type."""
    for a in node.attribute:
        if a.type == onnx.AttributeProto.INT and a.name in TYPE_ATTRIBUTES and a.i in HALF:
            yield a
        elif a.type == onnx.AttributeProto.TENSOR and _tensor_is_half(a.t):
            yield a


#: Integer attributes that name an element type (Cast's ``to``, EyeLike's ``dtype``, ...).
TYPE_ATTRIBUTES = ("to", "dtype", "output_dtype")


def has_half(model: onnx.ModelProto, weights: dict[str, np.ndarray] | None = None) -> bool:
    """Whether the model computes anything in float16/bfloat16 (functions and subgraphs included)."""
    if weights and any(a.dtype == np.float16 or a.dtype.name == "bfloat16" for a in weights.values()):
        return True
    for inits, infos, nodes in _bodies(model):
        if (any(_tensor_is_half(t) for t in inits) or any(_type_is_half(v.type) for v in infos)
                or any(True for n in nodes for _ in _half_attributes(n))):
            return True
    return False


def _round_half_decodes(nodes, half: dict[str, int]) -> None:
    """A DequantizeLinear with a half-precision scale writes half-precision values: widened, it
    would compute them in float32 and skip that rounding, which the folded constant it stands for
    in the other model (the masked original) has. Its output is rounded back through float16."""
    k = 0
    while k < len(nodes):
        n = nodes[k]
        if n.op_type == "DequantizeLinear" and len(n.input) > 1 and n.input[1] in half and n.output:
            out = n.output[0]
            n.output[0] = out + "__upcast_wide"
            rnd = onnx.helper.make_node("Cast", [out + "__upcast_wide"], [out + "__upcast_half"], to=half[n.input[1]])
            back = onnx.helper.make_node("Cast", [out + "__upcast_half"], [out], to=TensorProto.FLOAT)
            nodes.insert(k + 1, back)
            nodes.insert(k + 1, rnd)
            k += 2
        k += 1


def upcast(model: onnx.ModelProto, weights: dict[str, np.ndarray]) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """A float32 copy of ``model`` and its fed ``weights`` (see the module docstring)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    half = {n: (TensorProto.FLOAT16 if a.dtype == np.float16 else TensorProto.BFLOAT16)
            for n, a in weights.items() if a.dtype == np.float16 or a.dtype.name == "bfloat16"}
    for inits, _, nodes in _bodies(m):  # the half-precision constants, by their type
        half.update({t.name: t.data_type for t in inits if _tensor_is_half(t)})
        half.update({n.output[0]: a.t.data_type for n in nodes if n.op_type == "Constant" and n.output
                     for a in n.attribute if a.type == onnx.AttributeProto.TENSOR and _tensor_is_half(a.t)})
    for inits, infos, nodes in _bodies(m):
        for t in inits:
            if _tensor_is_half(t):
                t.CopyFrom(_widen_tensor(t))
        for v in infos:
            _widen_type(v.type)
        for n in nodes:
            for a in _half_attributes(n):
                if a.type == onnx.AttributeProto.INT:
                    a.i = TensorProto.FLOAT
                else:
                    a.t.CopyFrom(_widen_tensor(a.t))
    for _, _, nodes in _bodies(m):  # after the widening, which would widen these Casts too
        _round_half_decodes(nodes, half)
    wide = {n: (a.astype(np.float32) if a.dtype == np.float16 or a.dtype.name == "bfloat16" else a)
            for n, a in weights.items()}
    return m, wide


def widen_feeds(feeds: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    """The same input values as float32 where they were float16/bfloat16."""
    return [{k: (v.astype(np.float32) if v.dtype == np.float16 or v.dtype.name == "bfloat16" else v)
             for k, v in f.items()} for f in feeds]
