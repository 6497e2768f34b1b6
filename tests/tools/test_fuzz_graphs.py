"""tools/fuzz_graphs.py: a few seeds end to end, and its independent check must catch wrong cuts
(a check that passes everything would make the fuzzer's green runs worthless)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import onnx
import pytest
from onnx import numpy_helper

from compressor import api

TOOL = Path(__file__).resolve().parents[2] / "tools" / "fuzz_graphs.py"


def _load():
    spec = importlib.util.spec_from_file_location("_fuzz_graphs", TOOL)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


fz = _load()
#: seeds whose graphs, together, use every block of the generator (float16, a dynamic batch and
#: opsets 13 to 21 included), each removing channels
SMOKE = [35, 168, 41, 32, 341, 4]


def _pruned(seed: int):
    case = fz.generate(seed)
    res = api.prune(case.model, **fz.options(seed))
    assert res.report["channels"]["removed"] > 0, "the seed should remove channels"
    return case, res


@pytest.mark.parametrize("seed", SMOKE)
def test_seeds_neither_crash_nor_mismatch(seed):
    rec = fz.run_seed(seed)
    assert rec.status not in fz.FAILURES, f"seed {seed}: {rec.status}: {rec.error}\n{rec.traceback}"


def test_the_smoke_seeds_exercise_the_check():
    """The smoke seeds prune something, the checker compares something, and every block is used,
    else the smoke test proves little (a change of the generator moves the seeds: pick new ones)."""
    recs = [fz.run_seed(s) for s in SMOKE]
    assert all(r.status == "ok" and not r.removed.startswith("0/") for r in recs), [r.line() for r in recs]
    assert set().union(*(r.blocks for r in recs)) == set(fz.BLOCKS)


def _conv_entries(case, report) -> list[dict]:
    convs = {n.input[1] for n in case.model.graph.node if n.op_type == "Conv"}
    return [e for e in report["plan"] if e["tensor"] in convs and e["axis"] == 0 and len(e["kept"]) >= 2]


@pytest.mark.parametrize("seed", [35, 41, 341])
def test_swapped_filters_in_the_pruned_model_are_caught(seed):
    """Swap two kept filters of a pruned conv (the producer's kept channels in the wrong order):
    the check must fail, for every conv the plan cut."""
    case, res = _pruned(seed)
    assert fz.check(case, res.report, res.model) <= fz.TOLERANCE[case.dtype]
    entries = _conv_entries(case, res.report)
    assert entries, "the plan should cut a conv"
    for entry in entries:
        wrong = onnx.ModelProto()
        wrong.CopyFrom(res.model)
        init = next(t for t in wrong.graph.initializer if t.name == entry["tensor"])
        w = numpy_helper.to_array(init).copy()
        w[[0, 1]] = w[[1, 0]]
        init.CopyFrom(numpy_helper.from_array(w, init.name))
        with pytest.raises(fz.Mismatch):
            fz.check(case, res.report, wrong)


@pytest.mark.parametrize("seed", [35, 41, 341])
def test_a_plan_that_names_other_channels_is_caught(seed):
    """The report claims one removed channel was kept instead of a kept one: the masked original
    built from that claim is not what the pruned model computes."""
    case, res = _pruned(seed)
    for entry in _conv_entries(case, res.report):
        size = next(numpy_helper.to_array(t).shape[0] for t in case.model.graph.initializer
                    if t.name == entry["tensor"])
        removed = sorted(set(range(size)) - set(entry["kept"]))
        if not removed:
            continue
        plan = [dict(e) for e in res.report["plan"]]
        lie = next(e for e in plan if e["tensor"] == entry["tensor"] and e["axis"] == 0)
        lie["kept"] = sorted([*entry["kept"][1:], removed[0]])
        with pytest.raises(fz.Mismatch):
            fz.check(case, {**res.report, "plan": plan}, res.model)
        return
    pytest.fail("no conv with a removed channel")


def test_an_incoherent_plan_is_named():
    """A residual sum of a kept and a removed channel: the check says where, not just 'error'."""
    case, res = _pruned(36)
    is_kept = fz.kept_of(res.report["plan"])
    sources = next(p for c in case.consumers for p in c.prov if len(p) > 1 and all(map(is_kept, p)))
    tensor, axis, index = sorted(sources)[0]
    kept = {(e["tensor"], e["axis"]): e["kept"] for e in res.report["plan"]}
    size = next(numpy_helper.to_array(t).shape[axis] for t in case.model.graph.initializer if t.name == tensor)
    kept[(tensor, axis)] = [i for i in kept.get((tensor, axis), range(size)) if i != index]
    plan = [{"tensor": t, "axis": a, "kept": list(k)} for (t, a), k in kept.items()]
    with pytest.raises(fz.Mismatch, match="carries kept and removed channels"):
        fz.masked_original(case, plan)


def test_cli_saves_a_failure_and_exits_1(tmp_path, monkeypatch, capsys):
    """A mismatch: one line per seed, the summary, the model and a JSON to reproduce it, exit 1."""
    def failing_check(case, report, pruned):
        raise fz.Mismatch("planted")

    monkeypatch.setattr(fz, "check", failing_check)
    out = tmp_path / "fuzz.json"
    code = fz.main(["--seeds", "0:2", "--json", str(out), "--save-failures", str(tmp_path / "fail")])
    text = capsys.readouterr().out
    assert code == 1
    assert text.count("mismatch") >= 2 and "outcome" in text
    records = json.loads(out.read_text())
    assert [r["seed"] for r in records] == [0, 1]
    saved = json.loads((tmp_path / "fail" / "seed0.json").read_text())
    assert saved["error"] == "planted" and saved["options"] == fz.options(0)
    assert onnx.load(str(tmp_path / "fail" / "seed0.onnx")).graph.node
    assert (tmp_path / "fail" / "seed0.pruned.onnx").exists()


def test_cli_passes_clean_seeds(capsys):
    assert fz.main(["--seeds", "0:3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split()[1] for ln in lines[:3]] == ["0", "1", "2"]


def test_a_groupnorm_with_one_group_is_checked_over_the_kept_channels():
    """Seed 13 prunes the channels of a GroupNorm(1) written out as the exporters do. The check's
    reference computes it over the kept channels only (its region run on the kept channels); the
    zero-masked reference (the removed channels zeros inside the statistics, which the engine's
    widening computed before) is not what the pruned model computes: the check tells them apart."""
    import dataclasses

    case, res = _pruned(13)
    regions = [r for r in case.norms if r.axis == 1]
    assert regions and "gn_export" in case.blocks
    assert fz.check(case, res.report, res.model) <= 1e-5
    zero_masked = dataclasses.replace(
        case, norms=[r for r in case.norms if r.axis != 1],
        consumers=case.consumers + [fz.Consumer(r.nodes[0], 0, 1, 4, r.prov) for r in regions])
    with pytest.raises(fz.Mismatch):
        fz.check(zero_masked, res.report, res.model)
