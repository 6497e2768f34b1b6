"""`tools/experiments.py run main --quick` end to end on a Fashion-MNIST slice (256 train / 256 test
images, 1 + 1 epochs): the run trains with a regularizer, exports, prunes the ONNX with the learned
importances, fine-tunes the shrunk torch copy, measures latency, and writes a result JSON whose schema
this test checks; the pruned model must have passed the equivalence oracle. A rerun must skip it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
from compressor.data import is_available  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
TOOL = ROOT / "tools" / "experiments.py"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.torch,
    pytest.mark.skipif(not is_available("fashion-mnist"),
                       reason="Fashion-MNIST is not installed (run `make data`); the quick experiment needs it"),
]

REQUIRED = {
    "schema": str, "name": str, "key": str, "config": dict, "command": str, "log": str, "status": str,
    "acc_dense": float, "acc_pruned": float, "acc_finetuned": float, "acc_phase_a": float,
    "macs": int, "params": int, "macs_dense": int, "params_dense": int, "macs_fraction": float,
    "speedup": float, "latency": dict, "verify": dict, "torch_vs_onnx_max_abs": float,
    "widths": dict, "phases": dict, "wall_s": float,
}


def _run(runs: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(TOOL), "run", "main", "--quick", "--methods", "slimming",
                           "--runs-dir", str(runs), *extra], capture_output=True, text=True, timeout=600)


def test_quick_run_writes_a_verified_result_and_resumes(tmp_path):
    proc = _run(tmp_path)
    assert proc.returncode == 0, f"quick experiment failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    results = list((tmp_path / "main").glob("*.json"))
    assert len(results) == 1, f"expected one result JSON, found {results}"
    res = json.loads(results[0].read_text())
    for key, typ in REQUIRED.items():
        assert key in res, f"result JSON lacks {key!r}"
        assert isinstance(res[key], typ), f"{key} should be {typ.__name__}, got {type(res[key]).__name__}"
    assert res["schema"] == "compressor.experiment/1"
    assert res["status"] == "done"
    assert res["config"]["method"] == "slimming" and res["config"]["setting"]["name"] == "quick"
    assert res["verify"]["passed"] is True, f"the pruned ONNX did not pass the oracle: {res['verify']}"
    assert 0.0 <= res["acc_pruned"] <= 1.0 and 0.0 <= res["acc_finetuned"] <= 1.0
    assert res["macs"] <= res["macs_dense"] / 2, "the 2x cut should leave at most half of the MACs"
    assert res["torch_vs_onnx_max_abs"] < 1e-3, "the shrunk torch model should compute the pruned ONNX"
    assert {"batch1", "batch32"} <= set(res["latency"]), "latency should be measured at batch 1 and 32"
    assert Path(res["log"]).exists(), "the run log should exist"

    again = _run(tmp_path)
    assert again.returncode == 0
    assert "skip" in again.stdout, f"a rerun should skip the finished run:\n{again.stdout[-2000:]}"
