"""nn.MultiheadAttention as both torch exporters emit it (torch in the core venv).

The packed in-projection produces Q, K and V as one [.., 3E] tensor that is reshaped to [.., 3, E]
and taken apart with Gather (select) ops; heads come from reshaping E into (H, head_dim).

Property: Q, K and V lose the same whole heads, the output projection loses the matching input
rows, the MLP hidden units prune, and the pruned model reproduces the masked original.
"""

from __future__ import annotations

import io

import onnx
import pytest

torch = pytest.importorskip("torch")

from compressor import api  # noqa: E402

from _graphs import prune_ok  # noqa: E402

E, HEADS, FF, S = 32, 4, 64, 5


class Block(torch.nn.Module):
    """torchvision's ViT encoder block: pre-norm attention and MLP with residuals."""

    def __init__(self):
        super().__init__()
        self.ln_1 = torch.nn.LayerNorm(E)
        self.attn = torch.nn.MultiheadAttention(E, HEADS, batch_first=True)
        self.ln_2 = torch.nn.LayerNorm(E)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(E, FF), torch.nn.GELU(), torch.nn.Linear(FF, E))

    def forward(self, x):
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


def export_encoder(dynamo: bool) -> onnx.ModelProto:
    torch.manual_seed(0)
    layer = Block().eval()
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    torch.backends.mha.set_fastpath_enabled(False)
    x = torch.randn(1, S, E)
    buf = io.BytesIO()
    if dynamo:
        pytest.importorskip("onnxscript")
        prog = torch.onnx.export(layer, (x,), dynamo=True, input_names=["x"], output_names=["y"])
        model = prog.model_proto
    else:
        torch.onnx.export(layer, (x,), buf, dynamo=False, opset_version=17, input_names=["x"], output_names=["y"])
        model = onnx.load_from_string(buf.getvalue())
    model.ir_version = min(model.ir_version, 10)
    return model


@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "legacy"])
def test_packed_qkv_heads_prune(dynamo):
    model = export_encoder(dynamo)
    prune_ok(model, ratios=(0.25, 0.5))
    an = api.analyze(model)
    heads = [g for g in an.prunable if g.size == HEADS]
    assert len(heads) == 1, f"expected one prunable group of {HEADS} heads: {[(g.size, g.origin) for g in an.prunable]}"
    hidden = [g for g in an.prunable if g.size == FF]
    assert len(hidden) == 1, "the MLP hidden units form one prunable group"
    res = api.prune(model, ratio=0.5)
    assert res.report["groups"]["pruned"] == 2
