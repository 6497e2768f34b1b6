"""The last step of every graph edit: an IR version onnxruntime loads, shapes re-inferred (strict), checked."""

from __future__ import annotations

import onnx

from compressor.errors import ModelError, VerificationError
from compressor.ir.model_io import checkable, loadable_ir
from compressor.ir.shapes import weightless


def finalize(model: onnx.ModelProto, what: str = "pruned") -> onnx.ModelProto:
    """Cap the IR version at what the installed onnxruntime accepts, drop every ``value_info``
    (stale after an edit) and re-infer it, then run ``onnx.checker``.

    The model is given back the re-inferred ``value_info`` of the tensors it declared one for, and
    no other: a model exported without them is written without them. Given all of them, onnxruntime
    (1.31) rewrites a Reshape whose target is read from another tensor's Shape into a literal
    ``[0, -1]`` where the two share a symbolic dim, which fails on an empty tensor: torchvision's
    RetinaNet, pruned, crashed on every image with no candidate box at a level, where the export
    itself runs (tests/core/test_finalize.py).

    A failure is a VerificationError naming ``what`` model failed: an edit that produces an
    invalid graph is a bug of the edit, never something to write out.
    """
    model.ir_version = loadable_ir(model.ir_version)
    declared_info = {vi.name for vi in model.graph.value_info}
    del model.graph.value_info[:]
    try:
        inferred = onnx.shape_inference.infer_shapes(weightless(model), check_type=True, strict_mode=True)
    except Exception as exc:
        raise VerificationError(f"{what} model fails shape inference: {str(exc).splitlines()[0]}") from None
    declared = {i.name for i in model.graph.input} | {o.name for o in model.graph.output}
    model.graph.value_info.extend(vi for vi in inferred.graph.value_info
                                  if vi.name in declared_info and vi.name not in declared)
    try:
        # what check_model(full_check=True) adds to the plain check is the strict, type-checked
        # shape inference just run; the plain check sees large weights as size-checked stubs
        # (ir.model_io.checkable), so the pruned model is not serialised once more for it
        onnx.checker.check_model(checkable(model, what), full_check=False)
    except ModelError as exc:
        raise VerificationError(f"{what} model fails onnx.checker: {str(exc).split(': ', 1)[-1]}") from None
    except Exception as exc:
        raise VerificationError(f"{what} model fails onnx.checker: {str(exc).splitlines()[0]}") from None
    return model


def strict_inference_error(model: onnx.ModelProto) -> str | None:
    """Why ``model`` fails ONNX's strict, type-checked shape inference, or None if it passes: when
    an edited model fails :func:`finalize`, an input that fails too is a bad input (exit 2), not a
    failed edit (``onnx.checker``'s plain check, which loading runs, does not type-check ops)."""
    try:
        onnx.shape_inference.infer_shapes(weightless(model), check_type=True, strict_mode=True)
    except Exception as exc:
        return str(exc).splitlines()[0]
    return None
