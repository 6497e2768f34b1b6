"""Shared fixtures for the training-side tests: one CPU thread, fixed seeds, no torch -> skip."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")


@pytest.fixture(autouse=True)
def _one_thread_and_seed():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
