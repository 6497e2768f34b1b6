"""Idiom tests run with strict rules: a rule that crashes fails the test instead of becoming a
barrier, so coverage gaps show up as failures, not as silently frozen groups."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(autouse=True)
def _strict_rules(monkeypatch):
    monkeypatch.setenv("COMPRESSOR_STRICT_RULES", "1")
    yield
