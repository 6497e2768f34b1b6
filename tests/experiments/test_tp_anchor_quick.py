"""Torch-Pruning anchors (`tp_groupnorm`, `tp_growingreg`) in the quick setting: TP regularizes phase A,
prunes the torch model to the same widths as our runs of the cut (the runner raises when MACs or
params differ), the pruned model is exported, fine-tuned and timed. Skips cleanly when torch_pruning
is not installed (it is not a project dependency: `pip install torch-pruning==1.6.1 --no-deps`)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("torch_pruning")
from compressor.data import is_available  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
TOOL = ROOT / "tools" / "experiments.py"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.torch,
    pytest.mark.skipif(not is_available("fashion-mnist"),
                       reason="Fashion-MNIST is not installed (run `make data`); the quick experiment needs it"),
]


@pytest.mark.parametrize("table,cut_fraction", [("main", 0.5), ("cut4", 0.25)])
def test_tp_anchors_prune_to_our_widths(tmp_path, table, cut_fraction):
    methods = "tp_groupnorm,tp_growingreg" if table == "main" else "tp_growingreg"
    proc = subprocess.run([sys.executable, str(TOOL), "run", table, "--quick", "--methods", methods,
                           "--runs-dir", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"quick TP run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    results = sorted((tmp_path / table).glob("*.json"))
    assert len(results) == len(methods.split(","))
    for path in results:
        res = json.loads(path.read_text())
        assert res["status"] == "done" and res["config"]["method"] in methods.split(",")
        reg = res["regularizer"]
        assert reg["torch_pruning"] == "1.6.1" and reg["optimizer_weight_decay"] == 0.0
        assert reg["importance"] == "GroupMagnitudeImportance(p=2)"
        # every group TP pruned ends at the kept count of our widths
        assert res["tp_pruned"] == reg["pruned_groups"]
        assert res["macs"] <= res["macs_dense"] * cut_fraction
        if table == "main":  # the 2x "internal" policy: the trunk is left to TP as ignored layers
            assert "conv1" in reg["ignored_groups"] and all(k.endswith(".conv1") and k != "conv1"
                                                            for k in reg["pruned_groups"])
        else:
            assert reg["ignored_groups"] == [] and "conv1" in reg["pruned_groups"]
        assert res["torch_vs_onnx_max_abs"] < 1e-3
        assert 0.0 <= res["acc_pruned"] <= 1.0 and 0.0 <= res["acc_finetuned"] <= 1.0
        assert {"batch1", "batch32"} <= set(res["latency"])
