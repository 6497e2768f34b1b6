"""Export a PyTorch model to ONNX, deterministically, with either of torch's two exporters.

Measured with torch 2.13.0 (CPU), onnx 1.23, onnxscript 0.7.2, onnxruntime 1.31:

* ``dynamo=False`` (the TorchScript exporter; deprecated since torch 2.9 but working). In eval
  mode with constant folding it **folds every BatchNorm into the preceding Conv**; the folded
  weights get generated names (``onnx::Conv_203``), only unfolded parameters such as
  ``fc.weight`` keep theirs. It writes IR version 8 (we rewrite it to 10).
  It also *deduplicates initializers with equal values* (e.g. the all-ones BN scales of a
  freshly initialised model) into ``Identity`` nodes; we export with
  ``keep_initializers_as_inputs=True`` (which skips that pass) and then drop the initializers
  from the graph inputs, so every parameter stays its own named tensor.
* ``keep_bn=True`` with ``dynamo=False``: ``training=TrainingMode.TRAINING,
  do_constant_folding=False`` does keep ``BatchNormalization`` nodes and names such as
  ``layer1.0.bn1.running_mean``, but they are exported with ``training_mode=1`` and three
  outputs, i.e. with *batch statistics*; onnxruntime's output then differs from the eval-mode
  model by O(1) (4.4 max abs on ResNet-20). We therefore use ``training=TrainingMode.PRESERVE``
  on the model in eval mode with ``do_constant_folding=False``: BN nodes with
  ``training_mode=0``, running statistics and PyTorch parameter names all survive, and the
  outputs match eval mode (~1e-6).
* ``dynamo=True`` (torch.export + onnxscript): works for every registered model. Its lowest
  supported opset is 18; asking torch for 17 makes it export 18 and then fail to down-convert
  (``ReduceMean`` from the global pool: "No initializer or constant input to node found") and
  silently keep 18. We export at ``max(opset, 18)`` and, for ``opset < 18``, convert the
  *optimised* model with ``onnx.version_converter`` ourselves; that converter leaves a
  ``noop_with_empty_axes`` attribute on ``ReduceMean`` that opset 13 does not know (onnxruntime
  rejects the model), which we remove (its value 0 is the opset-18 default, so semantics hold).
  With the default optimisation onnxscript's rewriter fuses BN into Conv but **keeps the conv
  names** (``conv1.weight`` then holds the fused weight). With ``keep_bn=True`` we export
  unoptimised and only fold constants (the unoptimised graph has ``Shape``/``Expand``/
  ``CastLike`` chains around every BN), which leaves ``Conv -> BatchNormalization`` with the
  PyTorch names; the all-zero constant biases that this path gives bias-free convs are dropped.
  Both exporters give the same node counts for every registered model except MobileNet-V2
  (TorchScript emits each ReLU6 as ``Clip`` fed by two ``Constant`` nodes).
  Dynamo export is slow: ~3-8 s per model on a small shared CPU (~10-40 s for the first call in
  a process), against ~0.3-1 s for TorchScript.

Both exporters name the graph input ``input`` and the output ``logits``; the example input is
all zeros (only its shape matters), the model is put in eval mode and restored afterwards.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from typing import Sequence

import onnx
import torch
import torch.nn as nn

IR_VERSION = 10  # onnxruntime 1.31 may reject onnx 1.23's default IR version
DYNAMO_MIN_OPSET = 18
INPUT_NAME = "input"
OUTPUT_NAME = "logits"


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike | None,
    input_shape: Sequence[int] = (1, 3, 32, 32),
    opset: int = 17,
    dynamo: bool = False,
    keep_bn: bool = False,
) -> onnx.ModelProto:
    """Export ``model`` in eval mode to ONNX; write it to ``path`` unless None; return the proto.

    ``keep_bn=False`` lets the exporter fold BatchNorm into Conv (what deployment wants);
    ``keep_bn=True`` keeps ``BatchNormalization`` nodes (eval semantics, ``training_mode=0``) and
    PyTorch's parameter names, for tools that read BN scales as channel importances.
    The returned model has ``ir_version`` 10 and the requested opset. See the module docstring
    for what each exporter does in torch 2.13.
    """
    example = torch.zeros(tuple(int(d) for d in input_shape))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            if dynamo:
                proto = _export_dynamo(model, example, opset, keep_bn)
            else:
                proto = _export_torchscript(model, example, opset, keep_bn)
    finally:
        model.train(was_training)
    proto.ir_version = IR_VERSION
    onnx.checker.check_model(proto)
    if path is not None:
        onnx.save_model(proto, os.fspath(path))
    return proto


def _export_torchscript(model: nn.Module, example: torch.Tensor, opset: int, keep_bn: bool) -> onnx.ModelProto:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        torch.onnx.export(
            model,
            (example,),
            buffer,
            dynamo=False,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            training=torch.onnx.TrainingMode.PRESERVE if keep_bn else torch.onnx.TrainingMode.EVAL,
            do_constant_folding=not keep_bn,
            keep_initializers_as_inputs=True,  # skips the initializer-deduplication pass
        )
    proto = onnx.load_model_from_string(buffer.getvalue())
    initializers = {init.name for init in proto.graph.initializer}
    real_inputs = [i for i in proto.graph.input if i.name not in initializers]
    del proto.graph.input[:]
    proto.graph.input.extend(real_inputs)
    return proto


def _export_dynamo(model: nn.Module, example: torch.Tensor, opset: int, keep_bn: bool) -> onnx.ModelProto:
    import onnx_ir as ir  # comes with onnxscript
    import onnxscript.optimizer

    with _quiet_torch_onnx_logs(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        program = torch.onnx.export(
            model,
            (example,),
            dynamo=True,
            opset_version=max(opset, DYNAMO_MIN_OPSET),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            optimize=not keep_bn,
            verbose=False,
        )
    ir_model = program.model
    if keep_bn:
        onnxscript.optimizer.fold_constants(ir_model)
        onnxscript.optimizer.remove_unused_nodes(ir_model)
    proto = ir.serde.serialize_model(ir_model)
    if keep_bn:
        _drop_zero_conv_bias(proto)
    if opset < DYNAMO_MIN_OPSET:
        proto = _downgrade_opset(proto, opset)
    return proto


def _drop_zero_conv_bias(proto: onnx.ModelProto) -> None:
    """Remove the all-zero constant biases that unoptimised dynamo export gives bias-free convs."""
    from onnx import numpy_helper

    inits = {init.name: init for init in proto.graph.initializer}
    for node in proto.graph.node:
        if node.op_type == "Conv" and len(node.input) == 3 and node.input[2] in inits:
            if not numpy_helper.to_array(inits[node.input[2]]).any():
                del node.input[2]
    used = {name for node in proto.graph.node for name in node.input}
    keep = [init for init in proto.graph.initializer if init.name in used]
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(keep)


def _downgrade_opset(proto: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    """onnx.version_converter plus a fix for its ReduceMean 18 -> 13 adapter."""
    try:
        converted = onnx.version_converter.convert_version(proto, opset)
    except Exception as exc:  # the converter raises RuntimeError/ValueError subclasses
        raise RuntimeError(
            f"dynamo export produced opset {DYNAMO_MIN_OPSET} and onnx could not convert it to {opset}: {exc}; "
            f"use opset >= {DYNAMO_MIN_OPSET} or dynamo=False"
        ) from exc
    for node in converted.graph.node:
        if node.op_type.startswith("Reduce") and any(a.name == "axes" for a in node.attribute):
            keep = [a for a in node.attribute if not (a.name == "noop_with_empty_axes" and a.i == 0)]
            del node.attribute[:]
            node.attribute.extend(keep)
    return converted


@contextlib.contextmanager
def _quiet_torch_onnx_logs():
    """Silence the dynamo exporter's progress lines and 'torchvision is not installed' notes."""
    logger = logging.getLogger("torch.onnx")
    old = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logger.setLevel(old)
