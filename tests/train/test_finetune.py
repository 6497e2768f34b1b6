"""Masked fine-tuning (compressor/train/finetune.py) of a plan that removes groups whole (--drop-layers):
the dense torch model under the plan's masks computes the pruned ONNX before training, and after
training steps (momentum, weight decay) the weights written back into the dense ONNX and pruned by
the same plan compute the masked torch model."""

from __future__ import annotations


import numpy as np
import pytest

torch = pytest.importorskip("torch")
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402

import models  # noqa: E402
from compressor import api  # noqa: E402
from compressor.train.export import export  # noqa: E402
from compressor.train.finetune import PlanMasks, load_onnx_weights, settle_constant_bn, store_onnx_weights  # noqa: E402

pytestmark = pytest.mark.torch
SHAPE = ["1x1x28x28"]


def _logits(model: onnx.ModelProto | str, x: np.ndarray) -> np.ndarray:
    payload = model if isinstance(model, str) else model.SerializeToString()
    sess = ort.InferenceSession(payload, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def _close(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-6))


def _train_eval_gap(model, x: np.ndarray) -> float:
    """Largest |train-mode - eval-mode| BatchNorm output over the channels whose input is constant
    on ``x`` (the branches a removed group leaves)."""
    inputs = {}
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    handles = [m.register_forward_pre_hook(lambda m, a: inputs.__setitem__(m, a[0].detach())) for m in bns]
    model.eval()
    with torch.no_grad():
        model(torch.from_numpy(x))
    for h in handles:
        h.remove()
    gap = 0.0
    for m, inp in inputs.items():
        m.requires_grad_(False)
        const = (inp.amax(dim=(0, 2, 3)) - inp.amin(dim=(0, 2, 3))) == 0
        if not bool(const.any()):
            continue
        f = torch.nn.functional.batch_norm
        ev = f(inp, m.running_mean, m.running_var, m.weight, m.bias, False, 0.0, m.eps)
        tr = f(inp, None, None, m.weight, m.bias, True, 0.0, m.eps)
        gap = max(gap, float((ev - tr)[:, const].abs().max()))
        m.requires_grad_(True)
    return gap


@pytest.mark.parametrize("name", ["resnet20", "mobilenet_v2_small"])
def test_masked_training_of_a_drop_layers_plan_matches_the_pruned_onnx(tmp_path, name):
    torch.manual_seed(0)
    net = models.create_model(name, in_channels=1, num_classes=10, input_size=28)
    with torch.no_grad():  # BN statistics away from the identity, so constants matter
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.bias.uniform_(-0.3, 0.3)
    net.eval()
    dense = tmp_path / "dense.onnx"
    export(net, torch.zeros(1, 1, 28, 28), dense, dynamic_batch=True)
    res = api.prune(str(dense), output=str(tmp_path / "pruned.onnx"), target_macs=0.5, drop_layers=True,
                    sensitivity=True, input_shapes=SHAPE)
    slices = res.report["plan"]
    assert any(not s["kept"] for s in slices), "the plan should remove at least one group whole"

    x = np.random.default_rng(0).standard_normal((16, 1, 28, 28)).astype(np.float32)
    model = models.create_model(name, in_channels=1, num_classes=10, input_size=28)
    load_onnx_weights(model, onnx.load(dense))
    masks = PlanMasks(model, slices)
    assert masks.removed() > 0
    assert _train_eval_gap(model, x) > 1e-3, "a removed branch's BN should differ in train and eval mode"
    assert settle_constant_bn(model, torch.from_numpy(x)) > 0, "a removed branch leaves constant BN inputs"
    assert _train_eval_gap(model, x) < 1e-5, "settled, the constant channels read the same in both modes"
    model.eval()
    with torch.no_grad():
        before = model(torch.from_numpy(x)).numpy()
    assert _close(before, _logits(str(tmp_path / "pruned.onnx"), x)) < 1e-4, \
        "the masked dense model should compute the pruned model"

    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-3)
    masks.attach(opt)
    y = torch.randint(0, 10, (16,))
    for _ in range(4):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(torch.from_numpy(x)), y).backward()
        opt.step()
    settle_constant_bn(model, torch.from_numpy(x), keep="train")
    model.eval()
    with torch.no_grad():
        after = model(torch.from_numpy(x)).numpy()
    assert _close(after, before) > 1e-3, "training should have changed the model"

    proto = onnx.load(dense)
    assert store_onnx_weights(model, proto) > 0
    tuned = tmp_path / "tuned.onnx"
    onnx.save(proto, tuned)
    pruned = api.prune(str(tuned), output=str(tmp_path / "tuned_pruned.onnx"), plan_in=res.plan, input_shapes=SHAPE)
    assert pruned.report["verify"]["passed"]
    assert pruned.report["macs_after"] == res.report["macs_after"]
    assert _close(_logits(str(tmp_path / "tuned_pruned.onnx"), x), after) < 1e-4, \
        "the fine-tuned weights pruned by the same plan should compute the masked torch model"


def test_masks_reject_a_plan_for_another_model():
    model = models.create_model("resnet20", in_channels=1, num_classes=10, input_size=28)
    with pytest.raises(KeyError, match="lacks"):
        PlanMasks(model, [{"tensor": "nope.weight", "axis": 0, "kept": [0]}])
