"""The equivalence oracle: prove numerically that a pruned model computes what it should."""

from compressor.verify.oracle import (OracleModel, VerifyResult, masked_original, masked_reference, oracle_model,
                                     pruned_norm_nodes, verify)

__all__ = ["OracleModel", "VerifyResult", "masked_original", "masked_reference", "oracle_model", "pruned_norm_nodes",
           "verify"]
