"""Model I/O, shape inference and a read-only index over an ONNX graph."""

from compressor.ir.model_io import load_model, save_model, ort_max_ir_version
from compressor.ir.graph import GraphIndex

__all__ = ["load_model", "save_model", "ort_max_ir_version", "GraphIndex"]
