"""Concrete shapes for every tensor: fix the graph inputs' shapes, infer, and probe with onnxruntime.

onnx's shape inference misses tensors behind data-dependent shape subgraphs; those (and the run-time
values of shape operands such as a computed Reshape target) are read from one onnxruntime run on
random inputs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from compressor.errors import UsageError
from compressor.ir.proto import copy_without_initializers, feedable, tensor_nbytes


@dataclass
class InputSpec:
    """Concrete shapes for the model's graph inputs and which defaults were applied."""

    shapes: dict[str, tuple[int, ...]]
    dtypes: dict[str, np.dtype]
    defaults_used: list[str] = field(default_factory=list)


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """Real graph inputs (those that are not also initializers)."""
    inits = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def parse_shape_specs(specs: list[str] | tuple[str, ...] | None) -> dict[str | None, tuple[int, ...]]:
    """Parse ``NAME:1x3x224x224`` (repeatable) or a bare ``1x3x224x224`` for a one-input model.

    One grammar for every command: the bench package's parser is the implementation.
    """
    from compressor.bench.inputs import parse_input_shapes

    return parse_input_shapes(list(specs or ()))


def resolve_inputs(model: onnx.ModelProto, specs: dict[str | None, tuple[int, ...]] | None = None,
                   default_batch: int = 1) -> InputSpec:
    """Concrete input shapes: user specs, then static dims, symbolic dims bound by another input's
    spec, then batch dims defaulted to ``default_batch``; dtypes from the model.

    One resolution for every command: the bench package's resolver is the implementation.
    """
    from compressor.bench.inputs import resolve_input_shapes

    for vi in graph_inputs(model):
        if not vi.type.HasField("tensor_type"):
            raise UsageError(f"input '{vi.name}' is not a tensor; only tensor inputs are supported")
    shapes, defaults = resolve_input_shapes(model, specs, default_batch=default_batch)
    dtypes = {vi.name: helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
              for vi in graph_inputs(model)}
    return InputSpec(shapes, dtypes, defaults)


def random_feeds(spec: InputSpec, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded random inputs: standard normal floats, small non-negative integers, random bools."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for name, shape in spec.shapes.items():
        dt = np.dtype(spec.dtypes[name])
        # np.asarray: for a scalar input (shape ()) numpy returns scalars, which onnxruntime rejects
        if dt.kind == "f":
            feeds[name] = np.asarray(rng.standard_normal(shape), dtype=dt)
        elif dt.kind in "iu":
            feeds[name] = np.asarray(rng.integers(0, 8, size=shape), dtype=dt)
        elif dt.kind == "b":
            feeds[name] = np.asarray(rng.random(shape) > 0.5)
        else:
            raise UsageError(f"input '{name}' has dtype {dt}, which random inputs cannot be made for")
    return feeds


def weightless(model: onnx.ModelProto, max_bytes: int = 4096) -> onnx.ModelProto:
    """A copy of the model for shape inference: large initializers become typed graph inputs.

    Shape inference needs their shapes, not their values; serialising 100 MB of weights for
    each inference call is what made it slow. Small constants (shape operands) are kept.
    """
    m = onnx.ModelProto()
    for field_name in ("ir_version", "producer_name", "producer_version", "domain", "model_version"):
        setattr(m, field_name, getattr(model, field_name))
    m.opset_import.extend(model.opset_import)
    m.functions.extend(model.functions)
    g = m.graph
    g.name = model.graph.name
    g.node.extend(model.graph.node)
    g.input.extend(model.graph.input)
    g.output.extend(model.graph.output)
    g.value_info.extend(model.graph.value_info)
    declared = {i.name for i in model.graph.input}
    for t in model.graph.initializer:
        if tensor_nbytes(t) <= max_bytes:
            g.initializer.append(t)
        elif t.name not in declared:
            g.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    return m


def with_fixed_inputs(model: onnx.ModelProto, spec: InputSpec) -> onnx.ModelProto:
    """A copy of the model whose graph inputs have the concrete shapes (no value_info)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    _fix_inputs(m, spec)
    return m


def _fix_inputs(m: onnx.ModelProto, spec: InputSpec) -> None:
    del m.graph.value_info[:]
    for vi in m.graph.input:
        if vi.name in spec.shapes:
            shape = vi.type.tensor_type.shape
            del shape.dim[:]
            for d in spec.shapes[vi.name]:
                shape.dim.add().dim_value = d


def infer_shapes(model: onnx.ModelProto, spec: InputSpec,
                 value_names: set[str] | None = None, const: Callable[[str], np.ndarray | None] | None = None,
                 ) -> tuple[dict[str, tuple[int, ...]], dict[str, np.ndarray], dict[str, np.dtype]]:
    """Shapes of all tensors at the given input shapes, and run-time values of ``value_names``.

    Returns (shapes, values, dtypes). Tensors missing from onnx's static inference and every name in
    ``value_names`` are read from one onnxruntime run, which is given the large initializers as
    inputs (``const(name)`` supplies their arrays, e.g. a GraphIndex's own decoded ones) instead of
    a serialised copy of the model.
    """
    fixed = with_fixed_inputs(weightless(model), spec)
    shapes: dict[str, tuple[int, ...]] = {}
    dtypes: dict[str, np.dtype] = dict(spec.dtypes)
    try:
        inferred = onnx.shape_inference.infer_shapes(fixed, data_prop=True)
        for vi in list(inferred.graph.value_info) + list(inferred.graph.output) + list(inferred.graph.input):
            s = _static_shape(vi)
            if s is not None:
                shapes[vi.name] = s
            et = vi.type.tensor_type.elem_type if vi.type.HasField("tensor_type") else 0
            if et:
                dtypes[vi.name] = helper.tensor_dtype_to_np_dtype(et)
    except Exception:
        pass
    for t in model.graph.initializer:
        shapes[t.name] = tuple(t.dims)
    for node in model.graph.node:
        if node.op_type == "Constant":
            v = constant_node_value(node)
            if v is not None:
                shapes[node.output[0]] = tuple(v.shape)
    wanted = set(value_names or ())
    missing = [o for n in model.graph.node for o in n.output if o and o not in shapes]
    probe = sorted(set(missing) | wanted)
    values: dict[str, np.ndarray] = {}
    if probe:
        values = _ort_probe(model, spec, probe, const)
        for name, arr in values.items():
            shapes.setdefault(name, tuple(arr.shape))
            dtypes.setdefault(name, arr.dtype)
    return shapes, {k: v for k, v in values.items() if k in wanted}, dtypes


def _static_shape(vi: onnx.ValueInfoProto) -> tuple[int, ...] | None:
    if not vi.type.HasField("tensor_type") or not vi.type.tensor_type.HasField("shape"):
        return None
    dims = []
    for d in vi.type.tensor_type.shape.dim:
        if not d.HasField("dim_value"):
            return None
        dims.append(d.dim_value)
    return tuple(dims)


#: Initializers of at least this many bytes are fed to the probe instead of embedded.
_PROBE_FEED_MIN_BYTES = 1024


def _ort_probe(model: onnx.ModelProto, spec: InputSpec, names: list[str],
               const: Callable[[str], np.ndarray | None] | None = None) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    m = copy_without_initializers(model)
    _fix_inputs(m, spec)
    present = {o.name for o in m.graph.output}
    for name in names:
        if name not in present:
            m.graph.output.append(helper.make_empty_tensor_value_info(name))
    feeds = random_feeds(spec)
    declared = {i.name for i in m.graph.input}
    weights: dict[str, np.ndarray] = {}
    for t in model.graph.initializer:
        if feedable(t, _PROBE_FEED_MIN_BYTES) and t.name not in present:
            arr = const(t.name) if const is not None else None
            weights[t.name] = numpy_helper.to_array(t) if arr is None else arr
            if t.name not in declared:
                m.graph.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
        else:
            m.graph.initializer.append(t)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.disable_prepacking", "1")
    sess = None
    try:
        try:
            sess = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
            outs = sess.run(names, {**feeds, **weights})
        except Exception:
            if not weights:
                raise
            # a kernel that insists on a constant operand: run once more with the weights embedded
            sess = None
            sess = ort.InferenceSession(with_fixed_inputs(model, spec).SerializeToString(), opts,
                                        providers=["CPUExecutionProvider"])
            outs = sess.run(names, feeds)
    except Exception as exc:
        raise UsageError(f"onnxruntime cannot run the model at input shapes {spec.shapes}: {exc}".splitlines()[0]) from None
    return dict(zip(names, outs))


def constant_node_value(node: onnx.NodeProto) -> np.ndarray | None:
    """The value of a Constant node, whatever attribute form it uses."""
    for attr in node.attribute:
        if attr.name == "value":
            return numpy_helper.to_array(attr.t)
        if attr.name == "value_float":
            return np.array(attr.f, dtype=np.float32)
        if attr.name == "value_floats":
            return np.array(list(attr.floats), dtype=np.float32)
        if attr.name == "value_int":
            return np.array(attr.i, dtype=np.int64)
        if attr.name == "value_ints":
            return np.array(list(attr.ints), dtype=np.int64)
        if attr.name == "sparse_value":
            return _dense(attr.sparse_tensor)
    return None


def _dense(sparse: onnx.SparseTensorProto) -> np.ndarray:
    """A sparse tensor's dense value (indices linear, [NNZ], or per axis, [NNZ, rank])."""
    values = numpy_helper.to_array(sparse.values)
    out = np.zeros(tuple(sparse.dims), dtype=values.dtype)
    if values.size:
        idx = numpy_helper.to_array(sparse.indices)
        if idx.ndim == 1:
            out.reshape(-1)[idx] = values
        else:
            out[tuple(idx.T)] = values
    return out
