"""`make demo` end to end: the bundled trained model is pruned, proven, timed and evaluated."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import onnx

ROOT = Path(__file__).resolve().parents[2]


def _demo_module():
    spec = importlib.util.spec_from_file_location("demo", ROOT / "tools" / "demo.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_demo_prunes_the_trained_model_and_keeps_its_accuracy(tmp_path, monkeypatch, capsys):
    demo = _demo_module()
    monkeypatch.setattr(demo, "OUT", tmp_path / "pruned.onnx")
    assert demo.run([]) == 0
    out = capsys.readouterr().out
    assert "verification: passed" in out
    assert "importance: learned" in out
    assert re.search(r"latency \(CPUExecutionProvider\)", out)
    m = re.search(r"(\d+\.\d)% before, (\d+\.\d)% after pruning", out)
    assert m, out
    before, after = float(m.group(1)), float(m.group(2))
    assert before > 70.0                      # a trained model, not a random one
    assert after >= before - 1.0              # the learned importances make the cut nearly free
    macs = re.search(r"MACs\s+\S+\s+\S+\s+(\d+\.\d+)x", out)
    assert macs and float(macs.group(1)) >= 2.0, out      # --target-macs 0.5 reached
    onnx.checker.check_model(str(tmp_path / "pruned.onnx"), full_check=True)
    assert demo.MODEL.stat().st_size <= 2 * 2**20 and demo.TEST_SLICE.stat().st_size <= 2**20
