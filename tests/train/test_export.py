"""export.py + importance/learned.py: the ONNX model runs, carries readable metadata, and maps back."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from compressor.importance.learned import KEY, SCHEMA, learned_groups, learned_scores, read_learned
from compressor.train.export import export
from compressor.train.regularizers import CentripetalSGD, GroupGates, L1Norm, OrthoReg

from ._nets import ConcatNet, TinyResNet, teacher_data, train

ort = pytest.importorskip("onnxruntime")
api = pytest.importorskip("compressor.api")


def _run_ort(proto, x):
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]


def test_export_runs_in_onnxruntime_and_scores_map_back_by_name(tmp_path):
    """C-SGD export: IR 10, same outputs as torch, metadata schema valid, every group matched by names."""
    model = TinyResNet()
    x = torch.randn(2, 3, 8, 8)
    reg = CentripetalSGD(model, x, keep_ratio=0.5)
    train(model, reg, teacher_data(n_batches=2), steps=4)
    path = tmp_path / "m.onnx"
    export(model, x, path, regularizer=reg)
    proto = onnx.load(str(path))
    assert proto.ir_version == 10, "IR version must be 10 for onnxruntime 1.31"
    model.eval()
    with torch.no_grad():
        ref = model(x).numpy()
    assert np.allclose(_run_ort(proto, x), ref, atol=1e-5), "exported model must match torch in eval mode"
    doc = read_learned(proto)
    assert doc["schema"] == SCHEMA and doc["method"] == "csgd" and len(doc["groups"]) == 2
    assert all("clusters" in g and "fingerprint" in g for g in doc["groups"]), "C-SGD writes clusters + fingerprint"
    analysis = api.analyze(proto)
    scores, notes = learned_scores(proto, analysis)
    assert len(scores) == 2 and all("tensor names" in n for n in notes if "->" in n), notes
    want = {g.id: reg.importance()[g.id].numpy() for g in reg.groups}
    assert sorted(map(tuple, scores.values())) == sorted(map(tuple, want.values())), "scores must round-trip"
    entries, _ = learned_groups(proto, analysis)
    assert all(len(e["clusters"]) == 4 for e in entries.values()), "merge maps survive the round trip"


def test_fingerprint_matches_renamed_tensors(tmp_path):
    """When the deployed model's initializers were renamed, the fingerprint still finds the group."""
    model = ConcatNet()
    x = torch.randn(2, 3, 8, 8)
    reg = L1Norm(model, x)
    proto = export(model, x, None, regularizer=reg)
    rename = {i.name: f"w{k}" for k, i in enumerate(proto.graph.initializer)}
    for init in proto.graph.initializer:
        init.name = rename[init.name]
    for node in proto.graph.node:
        for j, name in enumerate(node.input):
            if name in rename:
                node.input[j] = rename[name]
    scores, notes = learned_scores(proto, api.analyze(proto))
    assert len(scores) == len(reg.groups), f"every group must be found by fingerprint: {notes}"
    assert all("fingerprint" in n for n in notes if "->" in n), notes


def test_gates_are_folded_on_export_and_zero_gates_zero_bn(tmp_path):
    """Gated model: the exported graph has no gate Mul; zero gates appear as zero BN gamma/beta."""
    model = TinyResNet()
    x = torch.randn(2, 3, 8, 8)
    reg = GroupGates(model, x, lam=0.5, sigma=0.1, penalty="l1")
    train(model, reg, teacher_data(), steps=40)
    proto = export(model, x, None, regularizer=reg)
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in proto.graph.initializer}
    assert "bn1.weight" in inits and not any("gate" in n for n in inits), "gates must be folded into BN"
    dead = (model.bn1.effective_gate() == 0).numpy()
    assert dead.any() and (inits["bn1.weight"][dead] == 0).all() and (inits["bn1.bias"][dead] == 0).all()
    model.eval()
    with torch.no_grad():
        ref = model(x).numpy()
    assert np.allclose(_run_ort(proto, x), ref, atol=1e-5), "folded export must compute the gated function"
    doc = read_learned(proto)
    assert all(len(g["gates"]) == g["size"] for g in doc["groups"]), "gates field has one value per channel"


def test_orthoreg_export_needs_importance_first():
    """OrthoReg's score needs data: export says so instead of writing empty scores."""
    from compressor.errors import UsageError

    model = TinyResNet()
    x = torch.randn(2, 3, 8, 8)
    reg = OrthoReg(model, x)
    with pytest.raises(UsageError, match="importance"):
        export(model, x, None, regularizer=reg)
    reg.importance(data=teacher_data(n_batches=1), loss_fn=torch.nn.CrossEntropyLoss())
    assert read_learned(export(model, x, None, regularizer=reg))["method"] == "orthoreg"


def test_read_learned_rejects_bad_documents():
    """Malformed metadata is a one-line UsageError; absent metadata is None."""
    from compressor.errors import UsageError

    proto = onnx.helper.make_model(onnx.helper.make_graph([], "g", [], []))
    assert read_learned(proto) is None
    proto.metadata_props.append(onnx.StringStringEntryProto(key=KEY, value=json.dumps({"schema": "x"})))
    with pytest.raises(UsageError, match="schema"):
        read_learned(proto)
