"""A read-only index over an ONNX graph: producers, consumers, constants and concrete shapes."""

from __future__ import annotations

from collections import defaultdict
from functools import cached_property

import numpy as np
import onnx
from onnx import numpy_helper

from compressor.errors import CompressorError
from compressor.ir.shapes import InputSpec, constant_node_value, graph_inputs, infer_shapes

#: Node inputs that hold shapes/indices/parameters rather than data; their run-time values are
#: probed once so that rules can read computed shape operands.
SHAPE_OPERANDS: dict[str, tuple[int, ...]] = {
    "Reshape": (1,), "Split": (1,), "Slice": (1, 2, 3, 4), "Expand": (1,), "Tile": (1,),
    "Resize": (1, 2, 3), "Upsample": (1,), "Pad": (1, 2, 3), "Unsqueeze": (1,), "Squeeze": (1,),
    "ReduceMean": (1,), "ReduceMax": (1,), "ReduceMin": (1,), "ReduceSum": (1,),
    "ReduceSumSquare": (1,), "ReduceL1": (1,), "ReduceL2": (1,), "ReduceProd": (1,),
    "ReduceLogSumExp": (1,), "ConstantOfShape": (0,), "Clip": (1, 2),
}


def node_attr(node: onnx.NodeProto, name: str, default=None):
    """A node attribute's Python value, or ``default``."""
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def subgraph_outer_refs(node: onnx.NodeProto) -> set[str]:
    """Names a control-flow node's subgraphs read from the enclosing scope."""
    refs: set[str] = set()
    for attr in node.attribute:
        graphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
        for g in graphs:
            local = {i.name for i in g.input} | {t.name for t in g.initializer}
            for n in g.node:
                local.update(n.output)
            for n in g.node:
                refs.update(i for i in n.input if i and i not in local)
                refs.update(subgraph_outer_refs(n) - local)
    return refs


def drop_unused(model: onnx.ModelProto, only: set[str] | None = None) -> None:
    """Remove the initializers (and their graph-input entries) and the Constant nodes that nothing
    reads any more, by index (rebuilding the lists would copy every weight); with ``only``, just
    those among these names."""
    g = model.graph
    used = {i for n in g.node for i in n.input} | {o.name for o in g.output}
    for n in g.node:
        used |= subgraph_outer_refs(n)
    stale = ({t.name for t in g.initializer} | {n.output[0] for n in g.node if n.op_type == "Constant" and n.output})
    stale = (stale if only is None else stale & only) - used
    if not stale:
        return
    for i in reversed(range(len(g.initializer))):
        if g.initializer[i].name in stale:
            del g.initializer[i]
    for i in reversed(range(len(g.input))):
        if g.input[i].name in stale:
            del g.input[i]
    for i in reversed(range(len(g.node))):
        if g.node[i].op_type == "Constant" and g.node[i].output and g.node[i].output[0] in stale:
            del g.node[i]


def node_label(node: onnx.NodeProto) -> str:
    """A node's name, or its op and first output where it has none."""
    return node.name or f"{node.op_type}({node.output[0] if node.output else '?'})"


class GraphIndex:
    """Producer/consumer maps, constant lookup and shapes for one model at fixed input shapes."""

    @cached_property
    def declared_dims(self) -> dict[str, tuple[int | None, ...]]:
        """Every tensor's lengths as the model declares them, without the verification shape: a
        length onnx infers from the declared inputs alone is an int, a dynamic one None (tensors
        inference does not reach are absent). Computed once, on a weightless copy."""
        from compressor.ir.shapes import weightless

        try:
            graph = onnx.shape_inference.infer_shapes(weightless(self.model), data_prop=True).graph
        except Exception:  # noqa: BLE001 - no inference: only what the model itself declares
            graph = self.model.graph
        out: dict[str, tuple[int | None, ...]] = {}
        for vi in list(graph.input) + list(graph.value_info) + list(graph.output):
            if vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape"):
                out[vi.name] = tuple(d.dim_value if d.HasField("dim_value") else None
                                     for d in vi.type.tensor_type.shape.dim)
        return out

    @cached_property
    def alternate_shapes(self) -> dict[str, tuple[int, ...]] | None:
        """Every tensor's shape at a second input shape (the first that shape inference takes, of
        those the proof tries: verify/second_shape.py), for a model with dynamic input lengths; None
        for a static model or when none is inferred. A length equal at both shapes does not follow
        the dynamic ones."""
        from compressor.verify.second_shape import alternate_specs

        for spec in alternate_specs(self.model, self.spec)[:2]:
            try:
                return infer_shapes(self.model, spec, set(), const=self.const)[0]
            except Exception:  # noqa: BLE001 - the model may not take that shape
                continue
        return None

    def __init__(self, model: onnx.ModelProto, spec: InputSpec, detached: dict[str, np.ndarray] | None = None):
        """``detached``: the values of initializers that ``model`` holds without payload
        (``ir.proto.detach_weights``); they are served from these arrays."""
        self.model = model
        self.detached: frozenset[str] = frozenset(detached or ())
        self.graph = model.graph
        self.spec = spec
        self.nodes: list[onnx.NodeProto] = list(self.graph.node)
        self.initializers: dict[str, onnx.TensorProto] = {t.name: t for t in self.graph.initializer}
        self.constant_nodes: dict[str, onnx.NodeProto] = {
            n.output[0]: n for n in self.nodes if n.op_type == "Constant" and n.output
        }
        self.producer: dict[str, tuple[int, onnx.NodeProto]] = {}
        self.consumers: dict[str, list[tuple[onnx.NodeProto, int]]] = defaultdict(list)
        for idx, node in enumerate(self.nodes):
            for o in node.output:
                if o:
                    self.producer[o] = (idx, node)
            for k, i in enumerate(node.input):
                if i:
                    self.consumers[i].append((node, k))
            if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
                for ref in subgraph_outer_refs(node):
                    self.consumers[ref].append((node, -1))
        self.input_names = [i.name for i in graph_inputs(model)]
        self.output_names = [o.name for o in self.graph.output]
        self._const_cache: dict[str, np.ndarray] = dict(detached or {})
        wanted = set()
        for node in self.nodes:
            for k in SHAPE_OPERANDS.get(node.op_type, ()):
                if k < len(node.input) and node.input[k] and not self.is_const(node.input[k]):
                    wanted.add(node.input[k])
        self.shapes, self.values, self.dtypes = infer_shapes(model, spec, wanted, const=self.const)

    def is_const(self, name: str) -> bool:
        return name in self.initializers or name in self.constant_nodes

    def const(self, name: str) -> np.ndarray | None:
        """Value of an initializer or Constant-node output, else None."""
        if name in self._const_cache:
            return self._const_cache[name]
        if name in self.detached:
            raise CompressorError(f"internal: the detached weight '{name}' was read after release_values()")
        if name in self.initializers:
            v = numpy_helper.to_array(self.initializers[name])
        elif name in self.constant_nodes:
            v = constant_node_value(self.constant_nodes[name])
        else:
            return None
        self._const_cache[name] = v
        return v

    def release_values(self) -> None:
        """Drop cached numpy copies of the constants (rebuilt on demand, except detached ones)."""
        self._const_cache.clear()

    def value(self, name: str) -> np.ndarray | None:
        """A constant's value, or the probed run-time value of a shape operand."""
        v = self.const(name)
        return v if v is not None else self.values.get(name)

    def shape(self, name: str) -> tuple[int, ...] | None:
        return self.shapes.get(name)

    def tensor_dtype(self, name: str) -> np.dtype:
        """Element type of a tensor (float32 when nothing says otherwise)."""
        c = self.const(name)
        if c is not None:
            return c.dtype
        return np.dtype(self.dtypes.get(name, np.float32))

    def rank(self, name: str) -> int | None:
        s = self.shapes.get(name)
        return None if s is None else len(s)

    @cached_property
    def float_constants(self) -> list[str]:
        """Constants of a floating-point type, bfloat16 and float8 (ml_dtypes, numpy kind 'V') included."""
        names = []
        for name in list(self.initializers) + list(self.constant_nodes):
            v = self.const(name)
            if v is not None and (v.dtype.kind == "f" or v.dtype.name.startswith(("bfloat", "float"))):
                names.append(name)
        return names

    def node_label(self, node: onnx.NodeProto) -> str:
        return node_label(node)
