"""Element-wise ops: activations pass channels through; broadcasting ops couple their operands.

For a broadcasting op, an operand of size 1 on an axis does not couple; operands of full size are
unified (residual adds, SE-block multiplies); a constant operand of full size is sliced with them.
An output axis whose full-size operands are all constants (a position bias plus a mask broadcast
over it) carries no channels of its own, and takes those of a later consumer that couples it with
channels (Rule.adopt): the constants are sliced with them.
"""

from __future__ import annotations

import onnx

from compressor.analysis.context import PARAM, AnalysisContext
from compressor.analysis.registry import Rule, register_rule

UNARY = (
    "Relu", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Elu", "Selu", "Celu",
    "Softplus", "Softsign", "Mish", "Gelu", "Erf", "Exp", "Log", "Sqrt", "Neg", "Abs",
    "Reciprocal", "Floor", "Ceil", "Round", "Sign", "Sin", "Cos", "Tan", "Asin", "Acos", "Atan",
    "Sinh", "Cosh", "Asinh", "Acosh", "Atanh", "ThresholdedRelu", "Not", "IsNaN", "IsInf",
    "Shrink", "Identity", "Cast", "Clip", "Dropout", "Swish",
)

BROADCAST = (
    "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "Where", "PRelu", "Equal",
    "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "And", "Or", "Xor", "Mod", "BitShift",
)


@register_rule(*UNARY)
class Unary(Rule):
    """y = f(x) per element: every output (Dropout's mask too) carries x's channels."""

    def analyze(self, node: onnx.NodeProto, ctx: AnalysisContext) -> None:
        for out in node.output:
            if out:
                ctx.copy_layouts(node.input[0], out, node=node)

    def adopt(self, node, ctx, output, axis, layout, commit) -> bool:
        x = node.input[0]
        if output != node.output[0] or ctx.shape(x) != ctx.shape(output):
            return False
        if not ctx.adopt(x, axis, layout, node, commit):
            return False
        if commit:
            ctx.set_layout(output, axis, layout)
        return True


@register_rule(*BROADCAST)
class Broadcast(Rule):
    """Numpy-style broadcasting over all inputs."""

    def analyze(self, node: onnx.NodeProto, ctx: AnalysisContext) -> None:
        out = node.output[0]
        out_shape = ctx.shape(out)
        if out_shape is None:
            ctx.barrier(node, "output shape unknown")
            return
        R = len(out_shape)
        inputs = [x for x in node.input if x]
        for a in range(R):
            operands = []
            for x in inputs:
                xs = ctx.shape(x)
                if xs is None:
                    continue
                ax = a - (R - len(xs))
                if ax < 0 or (xs[ax] == 1 and out_shape[a] != 1):
                    continue
                operands.append((x, ax))
            ctx.join(node, operands, out, a, f"axis {a}")

    def adopt(self, node, ctx, output, axis, layout, commit) -> bool:
        out_shape = ctx.shape(output)
        if output != node.output[0] or out_shape is None or out_shape[axis] == 1:
            return False
        R = len(out_shape)
        full = []
        for slot, x in enumerate(node.input):
            xs = ctx.shape(x) if x else None
            if not x:
                continue
            if xs is None:
                return False
            ax = axis - (R - len(xs))
            if ax >= 0 and xs[ax] != 1:
                full.append((slot, x, ax))
        if not full or not all(ctx.is_const(x) or ctx.adopt(x, ax, layout, node, commit) for _, x, ax in full):
            return False
        if commit:
            for slot, x, ax in full:
                if ctx.is_const(x):
                    ctx.bind(x, ax, layout, PARAM, node, slot)
            ctx.set_layout(output, axis, layout)
        return True
