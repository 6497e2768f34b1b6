"""compressor: structured pruning of ONNX CNNs by graph surgery, verified numerically."""

__version__ = "0.1.0"
