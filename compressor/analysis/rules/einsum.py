"""Einsum: channels follow the equation's letters.

``torch.einsum("bhlk,bhtk->bhlt", q, k)`` (CvT's attention) is a batched MatMul written with
letters. A letter kept in the output is a batch or outer axis: the operands that have it at full
length carry the same channels there (unified, as a broadcasting op's operands; a constant operand
is sliced with them) and so does the output. A letter summed away is a contraction: the operands'
axes are unified and the oracle masks the removed channels where they are summed (a consume point,
as a MatMul's inner axis); a constant operand there is a consumer, sliced with them. An equation
with an ellipsis, a letter repeated within one operand (a diagonal) or a contraction with an
untracked run-time operand freezes the channels it touches. Surgery changes nothing: the equation
names no lengths.
"""

from __future__ import annotations

import onnx

from compressor.analysis.context import CONSUMER, AnalysisContext
from compressor.analysis.registry import Rule, register_rule


def parse_equation(equation: str, n_inputs: int) -> tuple[list[str], str] | None:
    """The operands' and the output's letters, or None for what the rule does not follow
    (an ellipsis, a repeated letter in one term, a count of terms other than the inputs')."""
    eq = equation.replace(" ", "")
    if "." in eq:
        return None
    lhs, arrow, out = eq.partition("->")
    terms = lhs.split(",")
    if len(terms) != n_inputs or any(not t.isalpha() or len(set(t)) != len(t) for t in terms):
        return None
    if not arrow:  # implicit output: the letters that occur once, in alphabetical order
        letters = "".join(terms)
        out = "".join(sorted(c for c in set(letters) if letters.count(c) == 1))
    if not (out == "" or out.isalpha()) or len(set(out)) != len(out) or not set(out) <= set("".join(terms)):
        return None
    return terms, out


@register_rule("Einsum")
class Einsum(Rule):
    def analyze(self, node: onnx.NodeProto, ctx: AnalysisContext) -> None:
        eq = ctx.attr(node, "equation", "")
        eq = eq.decode() if isinstance(eq, bytes) else str(eq)
        inputs, y = list(node.input), node.output[0]
        parsed = parse_equation(eq, len(inputs))
        shapes = [ctx.shape(x) for x in inputs]
        where = f"Einsum '{ctx.label(node)}'"
        if parsed is None or any(s is None or len(s) != len(t) for s, t in zip(shapes, parsed[0] if parsed else [])):
            if any(ctx.tracked(x) for x in inputs):
                ctx.barrier(node, f"equation '{eq}' has an ellipsis or a diagonal, or its terms do not match "
                                  "the operands")
            return
        terms, out = parsed
        ys = ctx.shape(y)
        for letter in sorted(set("".join(terms))):
            at = [(k, terms[k].index(letter)) for k in range(len(inputs)) if letter in terms[k]]
            if letter in out:
                o = out.index(letter)
                operands = [(inputs[k], a) for k, a in at if ys is None or shapes[k][a] == ys[o]]
                ctx.join(node, operands, y, o, f"axis '{letter}'")
                continue
            lays = [(k, a, ctx.layout(inputs[k], a)) for k, a in at]
            tracked = [lay for _, _, lay in lays if lay is not None]
            if not tracked:
                continue
            lay = tracked[0]
            for other in tracked[1:]:
                lay = ctx.unify(lay, other, f"{where} contraction over '{letter}'")
            untracked = [inputs[k] for k, _, cur in lays if cur is None and not ctx.is_const(inputs[k])]
            if untracked:
                ctx.freeze_layout(lay, f"{where} contracts '{letter}' with untracked tensor '{untracked[0]}'")
                continue
            for k, a, cur in lays:
                if cur is None:
                    ctx.bind(inputs[k], a, lay, CONSUMER, node, k)
            k, a, _ = next(item for item in lays if item[2] is not None)
            ctx.consume(node, k, a)
