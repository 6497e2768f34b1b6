"""Gemm and MatMul. With a constant weight, the hidden units they produce are a new prunable
group and the weight's contraction axis consumes the input's channels; between two activations
(attention), the contracted axes are unified and the outer axes carried through."""

from __future__ import annotations

import onnx

from compressor.analysis.context import CONSUMER, PRODUCER, AnalysisContext
from compressor.analysis.registry import Rule, register_rule


def _bind_bias(node, ctx: AnalysisContext, bias: str, out_lay, out_rank: int, slot: int) -> None:
    bs = ctx.shape(bias)
    if not bs or bs[-1] == 1:
        return
    if ctx.is_const(bias):
        ctx.bind(bias, len(bs) - 1, out_lay, PRODUCER, node, slot)
    else:
        ctx.freeze_layout(out_lay, f"{node.op_type} '{ctx.label(node)}' adds a run-time bias")


@register_rule("Gemm")
class Gemm(Rule):
    def analyze(self, node: onnx.NodeProto, ctx: AnalysisContext) -> None:
        a, b, y = node.input[0], node.input[1], node.output[0]
        ta, tb = int(ctx.attr(node, "transA", 0)), int(ctx.attr(node, "transB", 0))
        ka, ma = (0, 1) if ta else (1, 0)
        kb, nb = (1, 0) if tb else (0, 1)
        lay_k = ctx.layout(a, ka)
        if ctx.is_const(b):
            out = ctx.new_group(y, 1, node=node)
            ctx.bind(b, nb, out, PRODUCER, node, 1)
            if len(node.input) > 2 and node.input[2]:
                _bind_bias(node, ctx, node.input[2], out, 2, 2)
            if lay_k is not None:
                ctx.bind(b, kb, lay_k, CONSUMER, node, 1)
                ctx.consume(node, 0, ka)
            lay_m = ctx.layout(a, ma)
            if lay_m is not None:
                ctx.set_layout(y, 0, lay_m)
            return
        if ctx.is_const(a):
            ctx.barrier(node, "constant left operand with a run-time right operand")
            return
        lay_kb = ctx.layout(b, kb)
        if lay_k is not None or lay_kb is not None:
            if lay_k is None or lay_kb is None:
                ctx.freeze_layout(lay_k or lay_kb, f"Gemm '{ctx.label(node)}' contracts with an untracked tensor")
            else:
                ctx.unify(lay_k, lay_kb, f"Gemm '{ctx.label(node)}' contraction")
                ctx.consume(node, 0, ka)
        if ctx.layout(a, ma) is not None:
            ctx.set_layout(y, 0, ctx.layout(a, ma))
        if ctx.layout(b, nb) is not None:
            ctx.set_layout(y, 1, ctx.layout(b, nb))
        if len(node.input) > 2 and node.input[2] and ctx.layout(y, 1) is not None:
            _bind_bias(node, ctx, node.input[2], ctx.layout(y, 1), 2, 2)


@register_rule("MatMul")
class MatMul(Rule):
    def analyze(self, node: onnx.NodeProto, ctx: AnalysisContext) -> None:
        a, b, y = node.input[0], node.input[1], node.output[0]
        ra, rb, ry = ctx.rank(a), ctx.rank(b), ctx.rank(y)
        if ra is None or rb is None or ry is None:
            ctx.barrier(node, "operand ranks unknown")
            return
        if ra < 2 or rb < 2:
            ctx.barrier(node, "vector operand")
            return
        lay_k = ctx.layout(a, ra - 1)
        if ctx.is_const(b) and rb == 2:
            out = ctx.new_group(y, ry - 1, node=node)
            ctx.bind(b, 1, out, PRODUCER, node, 1)
            if lay_k is not None:
                ctx.bind(b, 0, lay_k, CONSUMER, node, 1)
                ctx.consume(node, 0, ra - 1)
            ctx.copy_layouts(a, y, {ax: ax + ry - ra for ax in ctx.layouts(a) if ax < ra - 1}, node=node)
            return
        if ctx.is_const(a) and ra == 2 and not ctx.is_const(b):
            out = ctx.new_group(y, ry - 2, node=node)
            ctx.bind(a, 0, out, PRODUCER, node, 0)
            lay_kb = ctx.layout(b, rb - 2)
            if lay_kb is not None:
                ctx.bind(a, 1, lay_kb, CONSUMER, node, 0)
                ctx.consume(node, 1, rb - 2)
            amap = {ax: ax + ry - rb for ax in ctx.layouts(b) if ax != rb - 2}
            ctx.copy_layouts(b, y, amap, node=node)
            return
        if ctx.is_const(a) or ctx.is_const(b):
            if ctx.tracked(a) or ctx.tracked(b):
                ctx.barrier(node, "batched constant operand")
            return
        # two activations: contraction axes unify, outer axes pass, batch axes broadcast
        lay_kb = ctx.layout(b, rb - 2)
        if lay_k is not None or lay_kb is not None:
            if lay_k is None or lay_kb is None:
                ctx.freeze_layout(lay_k or lay_kb, f"MatMul '{ctx.label(node)}' contracts with an untracked tensor")
            else:
                ctx.unify(lay_k, lay_kb, f"MatMul '{ctx.label(node)}' contraction")
                ctx.consume(node, 0, ra - 1)
        if ctx.layout(a, ra - 2) is not None:
            ctx.set_layout(y, ry - 2, ctx.layout(a, ra - 2))
        if ctx.layout(b, rb - 1) is not None:
            ctx.set_layout(y, ry - 1, ctx.layout(b, rb - 1))
        ys = ctx.shape(y)
        for ay in range(ry - 2):
            operands = [(x, ay - (ry - r)) for x, r in ((a, ra), (b, rb))
                        if ay - (ry - r) >= 0 and ctx.shape(x)[ay - (ry - r)] == ys[ay]]
            ctx.join(node, operands, y, ay, f"batch axis {ay}")
