"""The equivalence oracle: prove numerically that a pruned model computes what it should."""

from compressor.verify.oracle import VerifyResult, masked_original, verify

__all__ = ["VerifyResult", "masked_original", "verify"]
