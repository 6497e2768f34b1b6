"""Channel importance: a function (analysis, group) -> one score per channel (higher = keep).

Magnitude criteria register by name in ``CRITERIA``. ``learned`` (what training stored in the
model, ``learned.py``) is resolved by ``compressor.api``, not registered: it needs the model's
metadata, not only the analysis.
"""

from compressor.importance.criteria import CRITERIA, score_groups

__all__ = ["CRITERIA", "score_groups"]
