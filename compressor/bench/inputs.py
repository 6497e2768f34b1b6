"""Model inputs for measurement: the `--input-shape` grammar, concrete shapes, random feeds.

Grammar of one shape spec (what `--input-shape` takes, once per input):

    NAME:1x3x224x224      a named input (the name may itself contain ':', e.g. TF's 'x:0')
    1x3x224x224           the only input of a single-input model
    NAME:[1,3,224,224]    the same, in Polygraphy's bracket form ('x' and ',' both separate dims)

Dims are positive integers. `parse_input_shapes` turns a list of specs into
`{name or None: shape}`; `resolve_input_shapes` fills every dynamic dim of a model's inputs
from those specs and the batch size, and says which defaults it used.
"""

from __future__ import annotations

import math

import re
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import onnx

from compressor.errors import UsageError

Shape = tuple[int, ...]
ShapeSpecs = dict[str | None, Shape]

_DIMS_SEPARATOR = re.compile(r"\s*[x,]\s*")
_SPEC_EXAMPLE = "expected NAME:1x3x224x224 or 1x3x224x224"


def _parse_dims(text: str, spec: str) -> Shape:
    body = text.strip()
    if body.startswith("[") and body.endswith("]"):
        body = body[1:-1].strip()
    if not body:
        raise UsageError(f"--input-shape {spec!r} has no dims ({_SPEC_EXAMPLE})")
    dims: list[int] = []
    for part in _DIMS_SEPARATOR.split(body):
        if not part.isdigit():
            raise UsageError(
                f"--input-shape {spec!r}: {part!r} is not a dim; dims are positive integers "
                f"separated by 'x' ({_SPEC_EXAMPLE})"
            )
        value = int(part)
        if value <= 0:
            raise UsageError(f"--input-shape {spec!r}: dims must be positive, got {value}")
        dims.append(value)
    return tuple(dims)


#: The most elements one --input-shape may have (2**31 - 1: 8 GiB of float32). Larger shapes used
#: to reach numpy as a MemoryError, or protobuf as "Value out of range" (exit 1).
MAX_INPUT_ELEMENTS = 2**31 - 1


def parse_input_shape(spec: str) -> tuple[str | None, Shape]:
    """Parse one spec: 'NAME:1x3x224x224' -> ('NAME', (1, 3, 224, 224)); '1x3' -> (None, (1, 3))."""
    if not isinstance(spec, str) or not spec.strip():
        raise UsageError(f"--input-shape {spec!r} is empty ({_SPEC_EXAMPLE})")
    text = spec.strip()
    name: str | None
    if ":" in text:
        # Dims never contain ':', so the last one separates the name (names like 'x:0' are kept).
        name, dims_text = text.rsplit(":", 1)
        name = name.strip()
        if not name:
            raise UsageError(f"--input-shape {spec!r} has an empty input name ({_SPEC_EXAMPLE})")
    else:
        name, dims_text = None, text
    dims = _parse_dims(dims_text, spec)
    elements = math.prod(dims)
    if elements > MAX_INPUT_ELEMENTS:
        raise UsageError(f"--input-shape {spec!r} has {elements:.3g} elements; at most {MAX_INPUT_ELEMENTS:.3g} "
                         "per input (a random input that large does not fit in memory)")
    return name, dims


def parse_input_shapes(specs: Iterable[str] | None) -> ShapeSpecs:
    """Parse repeated `--input-shape` values into {input name (None = the only input): shape}.

    Raises UsageError (one line) on bad syntax, on a name given twice, or on two unnamed specs.
    """
    shapes: ShapeSpecs = {}
    for spec in specs or ():
        name, dims = parse_input_shape(spec)
        if name in shapes:
            what = f"input {name!r}" if name is not None else "an unnamed input"
            raise UsageError(
                f"--input-shape is given twice for {what}; "
                "pass one NAME:DIMS per input (unnamed only for single-input models)"
            )
        shapes[name] = dims
    if None in shapes and len(shapes) > 1:
        raise UsageError(
            "--input-shape mixes an unnamed shape with named ones; name every input as NAME:DIMS"
        )
    return shapes


def format_shape(shape: Sequence[int]) -> str:
    """(1, 3, 224, 224) -> '1x3x224x224' (the inverse of the dims grammar)."""
    return "x".join(str(d) for d in shape)


# --------------------------------------------------------------------------- model signature


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """The graph inputs that are fed at run time (initializers listed as inputs are skipped)."""
    initializers = {init.name for init in model.graph.initializer}
    initializers.update(init.values.name for init in model.graph.sparse_initializer)
    return [vi for vi in model.graph.input if vi.name not in initializers]


def _model_dims(value_info: onnx.ValueInfoProto) -> list[int | str | None] | None:
    """Dims as declared: int (static), str (symbolic name), None (unknown); None if rank unknown."""
    tensor_type = value_info.type.tensor_type
    if not value_info.type.HasField("tensor_type"):
        raise UsageError(
            f"input {value_info.name!r} is not a tensor "
            f"({value_info.type.WhichOneof('value')}); only tensor inputs can be benchmarked"
        )
    if not tensor_type.HasField("shape"):
        return None
    dims: list[int | str | None] = []
    for dim in tensor_type.shape.dim:
        kind = dim.WhichOneof("value")
        if kind == "dim_value" and dim.dim_value >= 0:
            dims.append(int(dim.dim_value))
        elif kind == "dim_param" and dim.dim_param:
            dims.append(dim.dim_param)
        else:
            dims.append(None)
    return dims


def _describe(dims: Sequence[int | str | None]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"


def resolve_input_shapes(
    model: onnx.ModelProto,
    specs: Mapping[str | None, Sequence[int]] | None,
    default_batch: int = 1,
) -> tuple[dict[str, Shape], list[str]]:
    """Give every run-time input of `model` a concrete shape.

    Order of precedence per dim: the model's static value; the user's spec (which must agree with
    static dims); a symbolic dim ('N', 'seq') bound by another input's spec; for dim 0 only,
    `default_batch`. Anything else is a UsageError naming the input and the flag to pass.

    Returns (shapes, defaults_used): `defaults_used` lists, one readable line each, every dim that
    the user did not give (batch defaults and symbolic dims bound through another input).
    """
    specs = dict(specs or {})
    inputs = graph_inputs(model)
    names = [vi.name for vi in inputs]
    if None in specs:
        if len(inputs) != 1:
            raise UsageError(
                f"an unnamed --input-shape needs a single-input model, this one has {len(inputs)} "
                f"inputs ({', '.join(names) or 'none'}); pass --input-shape NAME:DIMS"
            )
        specs[names[0]] = specs.pop(None)
    unknown = [name for name in specs if name not in names]
    if unknown:
        raise UsageError(
            f"--input-shape names {unknown[0]!r}, which is not an input of the model "
            f"(inputs: {', '.join(names) or 'none'})"
        )

    declared = {vi.name: _model_dims(vi) for vi in inputs}

    # 1. Check the specs against the model and collect symbolic-dim bindings from them.
    bindings: dict[str, tuple[int, str]] = {}  # dim_param -> (value, input that fixed it)
    for name, shape in specs.items():
        shape = tuple(int(d) for d in shape)
        dims = declared[name]
        if dims is None:
            continue
        if len(shape) != len(dims):
            raise UsageError(
                f"--input-shape {name}:{format_shape(shape)} has rank {len(shape)} but input "
                f"{name!r} has rank {len(dims)} {_describe(dims)}"
            )
        for axis, (given, dim) in enumerate(zip(shape, dims)):
            if isinstance(dim, int) and dim != given:
                raise UsageError(
                    f"--input-shape {name}:{format_shape(shape)} contradicts the model: input "
                    f"{name!r} has dim {axis} fixed to {dim} {_describe(dims)}"
                )
            if isinstance(dim, str):
                bound = bindings.setdefault(dim, (given, name))
                if bound[0] != given:
                    raise UsageError(
                        f"--input-shape gives dim {dim!r} two values: {bound[0]} (input "
                        f"{bound[1]!r}) and {given} (input {name!r})"
                    )

    # 2. Fill the inputs.
    shapes: dict[str, Shape] = {}
    defaults_used: list[str] = []
    for name in names:
        dims = declared[name]
        if name in specs:
            shapes[name] = tuple(int(d) for d in specs[name])
            continue
        if dims is None:
            raise UsageError(
                f"input {name!r} has no declared shape; pass --input-shape {name}:DIMS"
            )
        resolved: list[int] = []
        for axis, dim in enumerate(dims):
            if isinstance(dim, int):
                resolved.append(dim)
            elif isinstance(dim, str) and dim in bindings:
                value, source = bindings[dim]
                resolved.append(value)
                defaults_used.append(
                    f"{name}[{axis}] = {value} (dim {dim!r}, as given for input {source!r})"
                )
            elif axis == 0:
                resolved.append(int(default_batch))
                label = f"dim {dim!r}" if isinstance(dim, str) else "unknown dim"
                defaults_used.append(f"{name}[0] = {default_batch} (batch, {label})")
            else:
                label = f"{dim!r}" if isinstance(dim, str) else "?"
                example = _example(dims, default_batch)
                raise UsageError(
                    f"input {name!r} has a dynamic dim {axis} ({label}) in {_describe(dims)}; "
                    f"pass --input-shape {name}:{example} with a size for each D"
                )
        shapes[name] = tuple(resolved)
    for name, shape in shapes.items():  # declared by the model, or given to the Python API
        if math.prod(shape) > MAX_INPUT_ELEMENTS:
            raise UsageError(f"input {name!r} at {format_shape(shape)} has {math.prod(shape):.3g} elements; at most "
                             f"{MAX_INPUT_ELEMENTS:.3g} per input (a random input that large does not fit in memory)")
    return shapes, defaults_used


def _example(dims: Sequence[int | str | None], batch: int) -> str:
    """A shape template for an error message: static dims kept, the batch as ``batch``, the other
    dynamic ones as placeholders D<axis>."""
    parts = []
    for axis, dim in enumerate(dims):
        if isinstance(dim, int):
            parts.append(str(dim))
        elif axis == 0:
            parts.append(str(batch))
        else:  # a placeholder, not the dim's name: an exporter's '32*h' would read as part of the spec
            parts.append(f"D{axis}")
    return "x".join(parts)


def _name_specs(
    model: onnx.ModelProto, specs: Mapping[str | None, Sequence[int]] | None
) -> dict[str | None, Shape]:
    """Specs with the unnamed one given the single input's name (left as None if ambiguous)."""
    named = {name: tuple(int(d) for d in shape) for name, shape in (specs or {}).items()}
    inputs = graph_inputs(model)
    if None in named and len(inputs) == 1:
        named[inputs[0].name] = named.pop(None)
    return named


def _dim0(model: onnx.ModelProto) -> dict[str, int | str | None]:
    """{input: its declared dim 0} for run-time inputs of known rank >= 1."""
    out = {}
    for vi in graph_inputs(model):
        dims = _model_dims(vi)
        if dims:
            out[vi.name] = dims[0]
    return out


def natural_batch(
    model: onnx.ModelProto, specs: Mapping[str | None, Sequence[int]] | None = None
) -> int | None:
    """The batch a run without --batch implies: dim 0 of the specs of dynamic-batch inputs if they
    agree, else the model's own batch when every input fixes dim 0; None when nothing says."""
    named = _name_specs(model, specs)
    dim0 = _dim0(model)
    given = {shape[0] for name, shape in named.items()
             if shape and not isinstance(dim0.get(name), int)}
    if len(given) > 1:  # every dynamic dim 0 is the batch (shapes_for_batch sets them all)
        raise UsageError(f"--input-shape gives the batch (dim 0) of the dynamic-batch inputs different values "
                         f"{sorted(given)}; give them one, or pass --batch")
    if len(given) == 1:
        return given.pop()
    if dim0 and all(isinstance(d, int) for d in dim0.values()):
        return next(iter(dim0.values()))
    return None


def shapes_for_batch(
    model: onnx.ModelProto,
    specs: Mapping[str | None, Sequence[int]] | None,
    batch: int,
) -> tuple[dict[str, Shape], list[str]]:
    """`resolve_input_shapes` for one `--batch` value.

    The batch replaces dim 0 of every spec whose input has a dynamic dim 0, and fills unknown
    batch dims. Inputs with a static dim 0 keep it: when some input has a dynamic dim 0 they are
    taken as unbatched (a scale, a table); when every input fixes dim 0, the model has a fixed
    batch and `batch` must be one of those values, else UsageError.
    """
    named = _name_specs(model, specs)
    dim0 = _dim0(model)
    fixed = {name: d for name, d in dim0.items() if isinstance(d, int)}
    if dim0 and len(fixed) == len(dim0) and batch not in fixed.values():
        name, value = next(iter(fixed.items()))
        raise UsageError(
            f"input {name!r} has a fixed batch size of {value}, so batch {batch} cannot run; "
            f"pass --batch {value} (or export the model with a dynamic batch)"
        )
    with_batch = {
        name: (batch, *shape[1:]) if shape and name not in fixed else shape
        for name, shape in named.items()
    }
    return resolve_input_shapes(model, with_batch, default_batch=batch)


# --------------------------------------------------------------------------- random feeds

_INT_HIGH = 10  # small non-negative integers: safe as token ids, indices and class labels


def input_dtype(value_info: onnx.ValueInfoProto) -> np.dtype:
    """The numpy dtype onnxruntime expects for this input; UsageError for unsupported types."""
    elem_type = value_info.type.tensor_type.elem_type
    type_name = onnx.TensorProto.DataType.Name(elem_type)
    try:
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type))
    except (KeyError, TypeError, ValueError):
        dtype = None
    if dtype is None or dtype.kind not in "fiub" or dtype.name == "bfloat16" or dtype.itemsize == 0:
        raise UsageError(
            f"input {value_info.name!r} has type {type_name}, for which no random input can be "
            "made (supported: float16/32/64, signed/unsigned ints, bool)"
        )
    return dtype


def random_feeds(
    model: onnx.ModelProto, shapes: Mapping[str, Sequence[int]], seed: int = 0
) -> dict[str, np.ndarray]:
    """Seeded random inputs of each input's dtype and the given shape.

    Floats are standard normal, integers uniform in [0, 10), bools fair coin flips. Each input
    draws from its own stream (seed, position), so adding an input does not change the others.
    """
    feeds: dict[str, np.ndarray] = {}
    for position, vi in enumerate(graph_inputs(model)):
        if vi.name not in shapes:
            raise UsageError(f"no shape for input {vi.name!r}; resolve the input shapes first")
        shape = tuple(int(d) for d in shapes[vi.name])
        dtype = input_dtype(vi)
        rng = np.random.default_rng([seed, position])
        if dtype.kind == "f":
            array = rng.standard_normal(shape, dtype=np.float32).astype(dtype)
        elif dtype.kind == "b":
            array = rng.integers(0, 2, size=shape).astype(np.bool_)
        else:
            array = rng.integers(0, _INT_HIGH, size=shape).astype(dtype)
        feeds[vi.name] = np.ascontiguousarray(array)
    return feeds
