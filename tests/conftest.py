"""Suite-wide settings: rule failures raise instead of silently becoming barriers."""

import os

os.environ["COMPRESSOR_STRICT_RULES"] = "1"
os.environ.setdefault("OMP_NUM_THREADS", "1")
