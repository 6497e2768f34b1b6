"""Hugging Face transformers' vision blocks as both torch exporters write them (torch in the core venv).

Small torch modules that reproduce, line for line where it matters, the blocks of transformers'
image models that froze channels or had no rule (tools/hf_coverage.py found them; transformers
itself is not needed here):

- Swin-V2's cosine attention: ``F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).T`` (the dynamo
  exporter writes the norm Expand-ed to the channels before the Div);
- SwiftFormer's additive attention: normalized query and key, a softmax-weighted global query
  ``repeat``-ed over the tokens (Tile);
- Swin's window attention: a position bias plus a mask made at run time (a padding mask here;
  the shifted-window mask in Swin's TorchScript export) broadcast over the heads, with eager
  attention (the dynamo exporter's SDPA pattern, which merges the keys with the windows to
  transpose them, is tests/core/test_merged_copies.py: torch's decomposition of SDPA with such a
  mask fails on these small shapes);
- CvT's attention written with ``torch.einsum``;
- MobileViTV2's ``F.unfold`` / ``F.fold`` around its linear attention (Col2Im; the TorchScript
  exporter cannot export ``fold``, so the dynamo one only).

Property: every channel group prunes except the ones that reach the graph output and single
channels (a one-channel score); no op is a barrier; the proof passes.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from compressor import api  # noqa: E402
from tests.core.graphs import torch_onnx  # noqa: E402

F = torch.nn.functional


class CosineAttention(torch.nn.Module):
    """Swin-V2's window attention: cosine similarity scaled by a learned logit scale."""

    def __init__(self, dim: int = 16, heads: int = 4):
        super().__init__()
        self.heads, self.d = heads, dim // heads
        self.qkv = torch.nn.ModuleList(torch.nn.Linear(dim, dim) for _ in range(3))
        self.logit_scale = torch.nn.Parameter(torch.log(10 * torch.ones(heads, 1, 1)))
        self.proj = torch.nn.Linear(dim, dim)

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = (m(x).view(b, t, self.heads, self.d).transpose(1, 2) for m in self.qkv)
        attn = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)
        attn = (attn * torch.clamp(self.logit_scale, max=4.6).exp()).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, t, c))


class AdditiveAttention(torch.nn.Module):
    """SwiftFormer's efficient additive attention."""

    def __init__(self, dim: int = 16):
        super().__init__()
        self.to_query, self.to_key = torch.nn.Linear(dim, dim), torch.nn.Linear(dim, dim)
        self.w_g = torch.nn.Parameter(torch.randn(dim, 1))
        self.scale_factor = dim ** -0.5
        self.proj, self.final = torch.nn.Linear(dim, dim), torch.nn.Linear(dim, dim)

    def forward(self, x):
        query = F.normalize(self.to_query(x), dim=-1)
        key = F.normalize(self.to_key(x), dim=-1)
        weights = ((query @ self.w_g) * self.scale_factor).softmax(dim=-1)
        global_queries = torch.sum(weights * query, dim=1).unsqueeze(1).repeat(1, key.shape[1], 1)
        return self.final(self.proj(global_queries * key) + query)


class ShiftedWindowAttention(torch.nn.Module):
    """Swin's window attention with a relative position bias and a shifted-window mask."""

    def __init__(self, dim: int = 16, heads: int = 4, window: int = 3):
        super().__init__()
        self.heads, self.d, self.area = heads, dim // heads, window * window
        self.q_proj, self.k_proj, self.v_proj = (torch.nn.Linear(dim, dim) for _ in range(3))
        self.bias_table = torch.nn.Parameter(torch.randn((2 * window - 1) ** 2, heads))
        coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
        self.register_buffer("index", (rel[..., 0] * (2 * window - 1) + rel[..., 1]).reshape(-1), persistent=False)
        self.o_proj = torch.nn.Linear(dim, dim)

    def forward(self, windows):  # [B * nW, T, C]
        b, t, c = windows.shape
        hidden = (b, t, -1, self.d)
        q, k, v = (m(windows).view(hidden).transpose(1, 2) for m in (self.q_proj, self.k_proj, self.v_proj))
        bias = self.bias_table[self.index].view(self.area, self.area, -1).permute(2, 0, 1).unsqueeze(0)
        # a mask made at run time, broadcast over the heads (Swin's shifted-window mask is one in
        # its TorchScript export; here: padding tokens, all-zero ones, masked)
        pad = (windows.abs().sum(dim=-1) == 0).to(windows.dtype) * -100.0  # [B * nW, T]
        mask = pad[:, None, None, :].expand(b, 1, t, t)
        # transformers' eager attention (its SDPA path is the dynamo pattern of test_merged_copies.py)
        scores = torch.matmul(q, k.transpose(2, 3)) * self.d ** -0.5 + (bias + mask)
        out = torch.matmul(scores.softmax(dim=-1), v)
        return self.o_proj(out.transpose(1, 2).contiguous().reshape(b, t, c))


class EinsumAttention(torch.nn.Module):
    """CvT's attention, written with torch.einsum."""

    def __init__(self, dim: int = 16, heads: int = 4):
        super().__init__()
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        self.q, self.k, self.v, self.proj = (torch.nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = (m(x).view(b, t, self.heads, -1).permute(0, 2, 1, 3) for m in (self.q, self.k, self.v))
        attn = (torch.einsum("bhlk,bhtk->bhlt", q, k) * self.scale).softmax(dim=-1)
        out = torch.einsum("bhlt,bhtv->bhlv", attn, v)
        return self.proj(out.permute(0, 2, 1, 3).reshape(b, t, c))


class FoldedLinearAttention(torch.nn.Module):
    """MobileViTV2's block: conv, unfold into 2x2 patches, separable linear attention, fold back, conv."""

    def __init__(self, c: int = 8):
        super().__init__()
        self.conv_in = torch.nn.Conv2d(3, c, 3, padding=1)
        self.qkv = torch.nn.Conv2d(c, 1 + 2 * c, 1)
        self.out_proj = torch.nn.Conv2d(c, c, 1)
        self.conv_out = torch.nn.Conv2d(c, 4, 1)
        self.c = c

    def forward(self, x):
        h = self.conv_in(x)
        n, c, height, width = h.shape
        patches = F.unfold(h, kernel_size=2, stride=2).reshape(n, c, 4, -1)
        query, key, value = torch.split(self.qkv(patches), [1, self.c, self.c], dim=1)
        scores = F.softmax(query, dim=-1)
        context = torch.sum(key * scores, dim=-1, keepdim=True)
        out = self.out_proj(F.relu(value) * context.expand_as(value))
        folded = F.fold(out.reshape(n, c * 4, -1), output_size=(height, width), kernel_size=2, stride=2)
        return self.conv_out(folded)


CASES = {
    "cosine_attention": (CosineAttention, (3, 4, 16)),
    "additive_attention": (AdditiveAttention, (1, 6, 16)),
    "shifted_window_attention": (ShiftedWindowAttention, (3, 9, 16)),
    "einsum_attention": (EinsumAttention, (1, 5, 16)),
    "folded_linear_attention": (FoldedLinearAttention, (1, 3, 8, 8)),
}


def _export(case: str, how: str):
    cls, shape = CASES[case]
    torch.manual_seed(0)
    net = cls().eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return torch_onnx(net, torch.randn(*shape), how)


@pytest.mark.parametrize("how", ["legacy17", "dynamo18"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_hf_block_prunes_every_group_but_the_output(case, how):
    if case == "folded_linear_attention" and how == "legacy17":
        pytest.skip("the TorchScript exporter cannot export F.fold (aten::col2im) at opset 17")
    rep = api.prune(_export(case, how), ratio=0.5).report
    assert rep["verify"]["passed"], rep["verify"]
    assert not rep["barriers"], f"{case} ({how}): no op should be a barrier: {rep['barriers']}"
    whole = [u for u in rep["unprunable"]
             if u["channels"] > 1 and not any(r.startswith("reaches graph output") for r in u["reasons"])]
    assert not whole, f"{case} ({how}): groups left whole: {whole}"
    assert rep["channels"]["removed"] > 0, rep["channels"]
