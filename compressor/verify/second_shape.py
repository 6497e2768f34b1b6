"""A second input shape for the proof of a model with dynamic dims.

The proof runs at one concrete shape (``--input-shape``, or the defaults for dynamic dims). A
pruned model that computes a shape operand at run time must keep computing it: a rewrite that
writes in its value at the verification shape (a Reshape target ``C x H`` becoming the literal
``C' x 32``) passes there and fails, or silently returns another shape, at every other size. So a
model whose inputs have dynamic dims is also run at a second shape: the batch one larger (one
smaller from 2 up), the other dynamic dims scaled by 0.5 and 0.75 in turn (or, where the
original cannot run so, by 0.5, by 2 and 3, by 2, then leaving the first of them alone). Dims
sharing a symbol keep sharing a value.
Candidates the original model itself cannot run at are skipped.
"""

from __future__ import annotations

import onnx

from compressor.ir.shapes import InputSpec, graph_inputs


def _declared(vi: onnx.ValueInfoProto) -> list[int | str | None] | None:
    tt = vi.type.tensor_type
    if not vi.type.HasField("tensor_type") or not tt.HasField("shape"):
        return None
    out: list[int | str | None] = []
    for d in tt.shape.dim:
        if d.HasField("dim_value") and d.dim_value > 0:
            out.append(int(d.dim_value))
        elif d.HasField("dim_param") and d.dim_param:
            out.append(d.dim_param)
        else:
            out.append(None)
    return out


def alternate_specs(model: onnx.ModelProto, spec: InputSpec) -> list[InputSpec]:
    """Second shapes to try, best first; empty when every input dim is static."""
    dynamic: dict[str, list[tuple[int, str | None]]] = {}
    for vi in graph_inputs(model):
        dims = _declared(vi)
        shape = spec.shapes.get(vi.name)
        if dims is None or shape is None or len(dims) != len(shape):
            continue
        dyn = [(k, d if isinstance(d, str) else None) for k, d in enumerate(dims) if not isinstance(d, int)]
        if dyn:
            dynamic[vi.name] = dyn
    if not dynamic:
        return []

    def make(batch_step: bool, scales: tuple[float | None, ...] | None) -> InputSpec | None:
        by_symbol: dict[str, int] = {}
        shapes = dict(spec.shapes)
        changed = False
        spatial = 0  # distinct non-batch dynamic dims so far: they alternate scales (H 0.5, W 0.75)
        for name, dyn in dynamic.items():
            shape = list(spec.shapes[name])
            for axis, symbol in dyn:
                v = shape[axis]
                if symbol is not None and symbol in by_symbol:
                    new = by_symbol[symbol]
                elif axis == 0:  # one more, or one fewer where that is cheaper and still a batch
                    new = (v - 1 if v > 1 else v + 1) if batch_step else v
                elif scales is None:
                    new = v
                else:
                    f = scales[spatial % len(scales)]
                    spatial += 1
                    new = v if f is None else int(v * f)
                    if new < 1:
                        new = v
                if symbol is not None:
                    by_symbol.setdefault(symbol, new)
                changed |= new != v
                shape[axis] = new
            shapes[name] = tuple(shape)
        return InputSpec(shapes, spec.dtypes, []) if changed else None

    out: list[InputSpec] = []
    # unequal scales first: a square second shape would not tell H from W (a Resize that keeps the
    # aspect ratio gives a square output for a square input whatever its sizes were rewritten to)
    # then halves, then whole multiples (a UNet needs sizes divisible by 32: 224 x 0.75 is not, 448
    # and 672 are), then the same leaving the first dynamic dim alone (a symbolic channel count
    # that no other value fits), then the batch alone
    tries = ((True, (0.5, 0.75)), (True, (0.5,)), (True, (2.0, 3.0)), (True, (2.0,)),
             (True, (None, 2.0, 3.0)), (True, (None, 2.0)), (True, None),
             (False, (0.5, 0.75)), (False, (2.0, 3.0)), (False, (2.0,)), (False, (None, 2.0, 3.0)),
             (False, (None, 2.0)))
    for batch_step, scales in tries:
        alt = make(batch_step, scales)
        if alt is not None and all(alt.shapes != o.shapes for o in out):
            out.append(alt)
    return out
