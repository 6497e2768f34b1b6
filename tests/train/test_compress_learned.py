"""The round trip train -> export -> `compress` uses the learned importances automatically."""

from __future__ import annotations

import numpy as np
import onnx
import torch
from click.testing import CliRunner

from compressor.cli import main
from compressor.train.export import export
from compressor.train.regularizers import NetworkSlimming

from ._nets import TinyResNet, teacher_data, train


def test_compress_picks_learned_importance_and_keeps_the_learned_channels(tmp_path):
    torch.set_num_threads(1)
    model = TinyResNet()
    x = torch.randn(2, 3, 8, 8)
    reg = NetworkSlimming(model, x)
    train(model, reg, teacher_data(n_batches=2), steps=6)
    src = tmp_path / "m.onnx"
    export(model, x, src, regularizer=reg)
    out = tmp_path / "p.onnx"
    res = CliRunner().invoke(main, [str(src), "-o", str(out), "--ratio", "0.5", "--json"])
    assert res.exit_code == 0, res.output
    import json

    report = json.loads(res.output)
    assert report["importance"] == "learned", report["importance_notes"]
    assert report["verify"]["passed"]
    # the kept channels of every pruned group are the top half of the learned scores
    learned = {g.id: s.numpy() for g, s in ((g, reg.importance()[g.id]) for g in reg.groups)}
    kept_sets = [set(e["kept"]) for e in report["plan"] if e["axis"] == 0]
    tops = [set(np.argsort(-s, kind="stable")[: len(s) - len(s) // 2].tolist()) for s in learned.values()]
    assert any(k in tops for k in kept_sets), "some producer slice must keep exactly the learned top channels"
    assert onnx.load(out).graph.node


def _kept_per_group(report) -> dict[str, int]:
    return {e["tensor"]: len(e["kept"]) for e in report["plan"] if e["axis"] == 0}


def test_learned_widths_reproduce_dsas_allocation(tmp_path):
    """DSA learns a keep ratio per group; --learned-widths prunes each group to ceil(ratio x size),
    its hard mask's width (a --ratio, uniform or --global, cannot reproduce an allocation)."""
    import json

    from compressor import api
    from compressor.train.regularizers import DSA

    from ._nets import tinyresnet_groups

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = TinyResNet()
    x = torch.randn(2, 3, 8, 8)
    reg = DSA(model, x, groups=tinyresnet_groups(model), budget=0.4)
    train(model, reg, teacher_data(), steps=60, lr=0.02)
    want = reg.keep_counts()
    src = tmp_path / "dsa.onnx"
    export(model, x, src, regularizer=reg)
    res = CliRunner().invoke(main, [str(src), "-o", str(tmp_path / "p.onnx"), "--learned-widths", "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.output)
    assert report["verify"]["passed"] and report["importance"] == "learned"
    doc = {tuple(m["tensor"] for m in g["members"] if m.get("role") == "producer")[0]: g
           for g in json.loads(next(p.value for p in onnx.load(src).metadata_props if p.key == "compressor.learned"))["groups"]}
    kept = _kept_per_group(report)
    assert len(doc) == len(want)
    for (tensor, g), gid in zip(doc.items(), want):
        assert kept.get(tensor, g["size"]) == want[gid] < g["size"], (tensor, kept, want)
    import pytest

    from compressor.errors import UsageError

    with pytest.raises(UsageError, match="excludes a --target-\\* budget"):
        api.prune(str(src), learned_widths=True, target_macs=0.5)


def test_learned_widths_keep_the_live_gates(tmp_path):
    import json
    import warnings

    from compressor.train.regularizers import GroupGates

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = TinyResNet()
    x = torch.randn(2, 3, 8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reg = GroupGates(model, x, lam=0.5, sigma=0.1, penalty="l1")
    train(model, reg, teacher_data(), steps=40)
    src = tmp_path / "g.onnx"
    export(model, x, src, regularizer=reg)
    doc = json.loads(next(p.value for p in onnx.load(src).metadata_props if p.key == "compressor.learned"))
    live = {g["members"][0]["tensor"]: sum(v != 0 for v in g["gates"]) for g in doc["groups"]}
    assert any(n < g["size"] for n, g in zip(live.values(), doc["groups"])), "some gates reached zero"
    res = CliRunner().invoke(main, [str(src), "-o", str(tmp_path / "p.onnx"), "--learned-widths", "--json"])
    assert res.exit_code == 0, res.output
    kept = _kept_per_group(json.loads(res.output))
    for tensor, n in live.items():
        assert kept.get(tensor, n) == n, (tensor, kept, live)
