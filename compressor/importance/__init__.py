"""Channel importance: a function (analysis, group) -> one score per channel (higher = keep).

Criteria register by name in ``CRITERIA``; later criteria (learned, activation-based) plug in the
same way.
"""

from compressor.importance.criteria import CRITERIA, score_groups

__all__ = ["CRITERIA", "score_groups"]
