"""Apply a pruning plan to the ONNX graph: slice constants, fix attributes and shape operands."""

from compressor.surgery.apply import apply_plan

__all__ = ["apply_plan"]
