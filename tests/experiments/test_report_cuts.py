"""The generated "both cuts" table: one row per method with the 2x and 4x results side by side and the
fine-tuned differences to the dense run of each table and to the Torch-Pruning GroupNorm anchor."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
from exp.report import cuts_md  # noqa: E402


def _r(table, method, cut, pruned, ft, seed=0, setting="cpu"):
    return {"config": {"table": table, "method": method, "cut": cut, "seed": seed, "setting": {"name": setting}},
            "acc_pruned": pruned, "acc_finetuned": ft, "_path": f"runs/{table}/{method}.json"}


def test_cuts_table_rows_and_deltas():
    rows = [_r("main", "dense", 2.0, None, 0.80), _r("cut4", "dense", 4.0, None, 0.70),
            _r("main", "sfp", 2.0, 0.78, 0.79), _r("cut4", "sfp", 4.0, 0.60, 0.65),
            _r("main", "tp_groupnorm", 2.0, 0.50, 0.77), _r("main", "tp_growingreg", 2.0, 0.20, 0.78),
            _r("main", "l1", 2.0, 0.10, 0.76),
            _r("main", "l1", 2.0, 0.10, 0.10, seed=1), _r("main", "l1", 2.0, 0.1, 0.1, setting="quick")]
    md = cuts_md(rows)
    lines = {ln.split(" | ")[0].lstrip("| "): ln for ln in md.splitlines() if ln.startswith("| ")}
    assert "| 78.00 → 79.00 | -1.00 | +2.00 | +1.00 | 60.00 → 65.00 | -5.00 | – | – |" in lines["sfp"]
    assert "not run" in lines["l1"] and "| -4.00 | -1.00 | -2.00 |" in lines["l1"]  # seed 1 / quick rows ignored
    assert "2x: tp_growingreg (78.00 %)" in md  # the best TP row names itself
    assert "tp_groupnorm (anchor)" in lines
    assert list(lines)[-2:] == ["tp_groupnorm (anchor)", "tp_growingreg (anchor)"], "anchors come last"
    assert "80.00 %" in md and "70.00 %" in md
    assert cuts_md([_r("seeds", "l1", 2.0, 0.1, 0.7)]) == ""


def test_seeds_table_gives_mean_and_std_over_the_seeds_that_finished():
    from exp.report import seeds_md

    rows = []
    for seed, (p, f) in enumerate([(0.10, 0.80), (0.30, 0.84)]):
        for r in (_r("models", "l1", 2.0, p, f, seed=seed), _r("models", "dense", 2.0, None, 0.9, seed=seed)):
            r["config"]["model"] = "vgg"
            rows.append(r)
    only = _r("models", "sfp", 4.0, 0.5, 0.6)
    only["config"]["model"] = "vgg"
    md = seeds_md(rows + [only], "models")
    lines = {ln.split(" | ")[0].lstrip("| "): ln for ln in md.splitlines() if ln.startswith("| ")}
    assert "vgg over seeds 0, 1" in md
    assert "| 20.00 ± 14.14 | 82.00 ± 2.83 | 2 |" in lines["l1"]
    assert "| – | 90.00 ± 0.00 | 2 |" in lines["dense"]
    assert lines["sfp"].endswith("| 50.00 ± 0.00 | 60.00 ± 0.00 | 1 |")
    one_seed = [r for r in rows if r["config"]["seed"] == 0]
    assert seeds_md(one_seed, "models") == ""  # a single seed: no table
