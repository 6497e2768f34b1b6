"""tools/bench_threading.py: settings grammar and table rendering only (no measurement)."""

from __future__ import annotations

import argparse

import pytest

from tests.peers.test_bench_peers_doc import _load

bt = _load("bench_threading")


@pytest.mark.parametrize(("text", "parsed"), [
    ("2:off", (2, False, "run")), ("2:on", (2, True, "block")), ("1:off:block", (1, False, "block")),
])
def test_settings_grammar(text, parsed):
    assert bt.parse_setting(text) == parsed


@pytest.mark.parametrize("text", ["2", "0:off", "2:maybe", "2:on:run", "x:off", "2:off:blocks"])
def test_bad_settings_are_rejected(text):
    """Spinning sessions alternating run by run is refused, like compress bench does."""
    with pytest.raises(argparse.ArgumentTypeError):
        bt.parse_setting(text)


def _measure(dense_ms: float, ours: float, tp: float) -> dict:
    return {"interleave": "run",
            "dense": {"p50_ms": dense_ms, "runs": 10, "speedup": 1.0, "p10": 1.0, "p90": 1.0},
            "ours r0.5": {"p50_ms": dense_ms / ours, "runs": 10, "speedup": ours, "p10": ours, "p90": ours},
            "torch-pruning": {"p50_ms": dense_ms / tp, "runs": 10, "speedup": tp, "p10": tp, "p90": tp}}


def test_markdown_takes_the_median_of_repeats_and_checks_the_goal():
    data = {"date": "2026-11-30", "onnxruntime": "1.31.1", "cpu": "x86_64", "cores": 2, "min_time": 3.0,
            "repeats": 3, "settings": ["2:off", "2:on"],
            "records": {"resnet18": {"model": "resnet18",
                                     "macs_ratio": {"dense": 1.0, "ours r0.5": 4.0, "torch-pruning": 4.0},
                                     "settings": {"2:off": [_measure(10, 3.6, 3.5), _measure(10, 3.7, 3.6),
                                                            _measure(10, 3.5, 3.6)],
                                                  "2:on": [_measure(10, 3.9, 3.8), _measure(10, 3.8, 3.8),
                                                           _measure(10, 4.0, 3.9)]}}}}
    text = bt.markdown(data, "tools/bench_threading.py")
    rows = [line for line in text.splitlines() if line.startswith("| resnet18")]
    assert len(rows) == 2, text
    off, on = rows
    assert "3.60 (3.50–3.70)" in off and "| 0.90 |" in off and off.endswith("✗ |"), off
    assert "3.90 (3.80–4.00)" in on and "| 0.97 |" in on and on.endswith("✓ |"), on
