"""Apply a pruning plan to the ONNX graph: slice constants, fix attributes and shape operands.
Exact transforms with their own proofs: merge identical filters, fold gates and constant channels."""

from compressor.surgery.apply import apply_plan
from compressor.surgery.fold import fold_constant_channels, fold_gates
from compressor.surgery.merge import find_identical, merge_clusters, merge_identical, merge_learned

__all__ = ["apply_plan", "find_identical", "fold_constant_channels", "fold_gates", "merge_clusters",
           "merge_identical", "merge_learned"]
