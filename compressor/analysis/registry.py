"""The rule registry: op_type -> the rule that knows how that op moves channels.

Rules register with ``@register_rule("Relu", "Sigmoid", ...)``; a duplicate registration is an
error. An op with no rule is a barrier: the groups on its inputs are frozen.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Callable

import onnx

if TYPE_CHECKING:
    from compressor.analysis.context import AnalysisContext
    from compressor.surgery.context import SurgeryContext


class Rule(ABC):
    """How one op family moves channels (analysis) and fixes its attributes after pruning (rewrite)."""

    #: Opset range the rule was written for (inclusive); outside it the op is a barrier.
    min_opset: int = 1
    max_opset: int = 10_000

    @abstractmethod
    def analyze(self, node: onnx.NodeProto, ctx: "AnalysisContext") -> None:
        """Declare the layouts of the node's outputs and the constants it slices."""

    def rewrite(self, node: onnx.NodeProto, ctx: "SurgeryContext") -> None:
        """Update attributes/shape operands after the tensors around ``node`` were pruned."""

    def adopt(self, node: onnx.NodeProto, ctx: "AnalysisContext", output: str, axis: int, layout,
              commit: bool) -> bool:
        """Can axis ``axis`` of ``output``, which this node left untracked, carry ``layout`` after the
        fact, exactly? (A later consumer couples it with channels: ``x / norm.expand(..., C)``.) It can
        where the axis's positions are copies of one value or positions of constants that can be
        sliced with the channels. With ``commit`` the layouts are set and the constants bound;
        without, nothing changes. Default: no."""
        return False


_RULES: dict[str, Rule] = {}


def register_rule(*op_types: str) -> Callable[[type[Rule]], type[Rule]]:
    def deco(cls: type[Rule]) -> type[Rule]:
        inst = cls()
        for op in op_types:
            if op in _RULES:
                raise ValueError(f"a rule for {op} is already registered ({type(_RULES[op]).__name__})")
            _RULES[op] = inst
        return cls

    return deco


def get_rule(op_type: str, domain: str = "", opset: int = 0) -> Rule | None:
    if domain not in ("", "ai.onnx"):
        return None
    _load_rules()
    rule = _RULES.get(op_type)
    if rule is None or not (rule.min_opset <= opset <= rule.max_opset or opset == 0):
        return None
    return rule


_QUANTIZED = "quantized op: prune the float model, then quantize"
_ORT_FUSED = "onnxruntime-optimised op: prune the model before onnxruntime's optimisation"

#: Ops known to have no channel rule for a reason a user can act on: (domain, predicate, hint).
_NO_RULE_HINTS: tuple[tuple[str, Callable[[str], bool], str], ...] = (
    ("", lambda op: op.startswith("QLinear") or op.endswith("Integer")
     or op in ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"), _QUANTIZED),
    ("com.microsoft", lambda op: op.startswith(("QLinear", "QGemm", "QAttention", "QOrdered", "MatMulNBits",
                                                "MatMulBnb4", "GatherBlockQuantized", "DynamicQuantize"))
     or op.endswith(("Integer", "IntegerToFloat")) or op in ("QuantizeLinear", "DequantizeLinear"), _QUANTIZED),
    ("com.microsoft", lambda op: op.startswith(("Fused", "Skip", "Embed", "Bias", "QuickGelu", "FastGelu",
                                                "Gelu", "Attention", "MultiHeadAttention", "GroupQueryAttention",
                                                "SimplifiedLayerNormalization", "RotaryEmbedding", "NhwcConv")),
     _ORT_FUSED),
    ("com.microsoft.nchwc", lambda op: True, _ORT_FUSED),
)


def no_rule_reason(op_type: str, domain: str = "") -> str:
    """Why a node without a channel rule is a barrier, with what to do about it where that is known."""
    domain = "" if domain == "ai.onnx" else domain
    reason = f"no channel rule for {domain}::{op_type}" if domain else f"no channel rule for {op_type}"
    hint = next((h for d, known, h in _NO_RULE_HINTS if d == domain and known(op_type)), None)
    return f"{reason} ({hint})" if hint else reason


def registered_ops() -> list[str]:
    _load_rules()
    return sorted(_RULES)


_loaded = False


def _load_rules() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        import compressor.analysis.rules  # noqa: F401  (registers on import)
