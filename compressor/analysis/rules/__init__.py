"""Per-op channel rules, one module per op family. Importing this package registers them all."""

from compressor.analysis.rules import (  # noqa: F401
    concat_split,
    conv,
    depth_space,
    einsum,
    elementwise,
    gather,
    groupnorm,
    layernorm_decomposed,
    linear,
    normalization,
    passthrough,
    pooling,
    reshape,
)
