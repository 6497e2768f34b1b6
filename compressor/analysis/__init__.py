"""Channel-dependency analysis: the coupled channel groups of an ONNX graph."""

from compressor.analysis.groups import Analysis, Group, Member, analyze_index

__all__ = ["Analysis", "Group", "Member", "analyze_index"]
