"""tools/bench_peers.py and tools/bench_target_latency.py: argument parsing and table rendering only
(no torch, no measurement)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

TOOLS = Path(__file__).resolve().parents[2] / "tools"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"_peers_{name}", TOOLS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


bp = _load("bench_peers")
tl = _load("bench_target_latency")


def _row(tool: str, macs: int, speedup: float | None, prune_s: float | None = 1.0, **kw) -> dict:
    r = bp.Row(model="resnet50", tool=tool, macs=macs, params=10, macs_ratio=1000 / macs,
               macs_fraction=macs / 1000, params_ratio=1.0, p50_ms=10.0 / (speedup or 1), speedup=speedup,
               speedup_p10=speedup, speedup_p90=speedup, prune_s=prune_s, **kw)
    return bp.asdict(r)


def _record() -> dict:
    rows = [
        _row("dense", 1000, 1.0, prune_s=None),
        _row("torch-pruning", 250, 3.0, prune_s=0.6, export_s=5.0),
        _row("ours r0.5", 250, 3.9, prune_s=2.0, max_rel_err=1e-6),
        _row("ours @TP-MACs", 250, 3.5, prune_s=2.0, max_rel_err=1e-6),
        bp.asdict(bp.Row(model="resnet50", tool="onnxsim 0.8.1", status="error", note="ValueError: x | y")),
    ]
    return {"model": "resnet50", "date": "2025-01-01T00:00:00+00:00", "onnxruntime": "1.0", "torch": "2",
            "min_time": 3.0, "loadavg_before": [2.0, 2, 2], "loadavg_after": [3.0, 3, 3], "rows": rows}


def test_defaults_cover_every_model_and_variant():
    args = bp.parse_args([])
    assert args.model_list == bp.MODELS, "the default run covers all ten models"
    assert set(args.variant_list) == set(bp.OUR_VARIANTS) | {"onnxsim"}, "all variants by default"


def test_unknown_variant_is_a_usage_error():
    with pytest.raises(SystemExit):
        bp.parse_args(["--variants", "ours r0.7"])


def test_efficiency_is_speedup_over_macs_ratio():
    r = bp.Row.from_dict(_row("ours r0.5", 250, 3.0))
    assert r.efficiency == pytest.approx(0.75), "efficiency = speedup / (dense MACs / pruned MACs)"


def test_markdown_has_every_row_and_the_goal_verdicts():
    text = bp.markdown([_record()], "cmd")
    assert text.count("| resnet50 |") >= 5, "one table row per tool, dense included"
    assert "ValueError: x \\| y" in text, "a failed peer keeps its reason, pipes escaped"
    assert "3.50 (1.17×) ✓" in text, "goal 1: ours at TP's MACs compared to TP's speedup"
    assert "0.60 + 5.00 = 5.60" in text, "goal 3: TP graph+prune + export"


def test_write_block_replaces_its_block_and_keeps_the_rest(tmp_path):
    doc = tmp_path / "b.md"
    bp.write_block(doc, bp.BEGIN, bp.END, "one\n", "## Peers")
    tl_text = "tl\n"
    bp.write_block(doc, tl.BEGIN, tl.END, tl_text, "## Latency")
    doc.write_text(doc.read_text() + "\nhand-written notes\n")
    bp.write_block(doc, bp.BEGIN, bp.END, "two\n", "## Peers")
    text = doc.read_text()
    assert "two\n" in text and "one\n" not in text, "the generated block is replaced"
    assert text.count("## Peers") == 1 and "tl\n" in text and "hand-written notes" in text, \
        "text outside the block survives"


def test_target_latency_error_and_table():
    """The verdict is the fresh-process ratio against target / engine reference, not raw ms."""
    row = tl.Row(model="m", fraction=0.5, dense_ms=10.0, target_ms=5.0, reference_ms=12.5, target_ratio=0.4,
                 engine_ratio=0.41, check_ratio=0.416, check_low=0.39, check_high=0.44, raw_p50_ms=6.0,
                 macs_fraction=0.4, steps=[{"macs_fraction": 0.4, "ratio": 0.41, "role": "confirm"}], seconds=3.0)
    assert row.error == pytest.approx(0.04), "error = check ratio / target ratio - 1"
    assert row.raw_error == pytest.approx(0.2) and row.met, "raw ms drift does not decide the verdict"
    failed = tl.Row(model="m", fraction=0.4, dense_ms=10.0, target_ms=4.0, status="exit 2",
                    note="error: --target-latency 4 ms (ratio 0.320 to the dense model's 12.5 ms measured here) ...")
    meta = {"command": "c", "date": "d", "onnxruntime": "1", "load_before": 1.0, "load_after": 2.0}
    text = tl.markdown([row, failed], meta)
    assert "**+4.0%**" in text and "✓" in text and "1/2 targets met" in text, "error and verdict rendered"
    assert "✗ exit 2" in text and tl._ratio_in(failed.note) == pytest.approx(0.32)


def test_target_latency_gpu_header_and_cache(monkeypatch):
    """A CUDA run's table names the provider, batch and GPU (not CPU threads); its cache and files
    carry the provider and batch, so a GPU run never overwrites the CPU one."""
    meta = {"command": "c", "date": "d", "onnxruntime": "1", "load_before": 1.0, "load_after": 2.0,
            "provider_used": "CUDA provider", "batch": 32, "gpu": "NVIDIA H200, 580"}
    head = tl.markdown([], meta).splitlines()[1]
    assert "CUDA provider, IO binding, batch 32, on NVIDIA H200, 580" in head and "threads" not in head, head
    cpu = tl.markdown([], {**meta, "provider_used": "CPU provider", "batch": 1, "gpu": None}).splitlines()[1]
    assert f"CPU provider, {tl.THREADS} threads, spinning off, batch 1," in cpu, cpu
    monkeypatch.setattr(tl, "PROVIDER", "cuda")
    monkeypatch.setattr(tl, "INPUT_SHAPE", "32x3x224x224")
    assert tl.cache_path().name == "target_latency_cuda_b32.json"
    monkeypatch.setattr(tl, "PROVIDER", "cpu")
    monkeypatch.setattr(tl, "INPUT_SHAPE", "1x3x224x224")
    assert tl.cache_path().name == "target_latency.json", "the CPU cache keeps its name"
