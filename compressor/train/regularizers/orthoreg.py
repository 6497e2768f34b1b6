"""OrthoReg (Lubana & Dick et al., 2020): push each layer's filters to an orthonormal set.

Penalty, added to the gradients in ``step()`` (computed with autograd on the current weights):

    R = sum_l w_l * sum_ij |(G_l - I)_ij|,    w_l = sqrt(m_l) / sum_l' sqrt(m_l'),  m_l = min(C_out, d_l)

with ``P_l`` = the layer's filters flattened to ``[C_out, d_l]`` (bias appended as one more column
when the layer has one) and ``G_l`` the *smaller* Gram matrix: ``P P^T`` if ``C_out <= d_l`` (filters
orthonormal) else ``P^T P`` (columns; the stem, 1x1 up-projections, depthwise layers). Entrywise L1,
so orthonormality, not just orthogonality. ``lam`` = 1e-2 (VGG/ResNet) or 1e-3 (MobileNet). Layers:
every conv (``include_linear=True`` adds Linear) whose filters carry the channels of a selected
group: its producers and its depthwise convs (the analysis reports a depthwise kernel as a
``param`` of the group it passes through; methods.md 1 regularizes all MobileNet-V1 layers,
depthwise ``[C x 9] -> 9 x 9`` included). Turn the optimizer's weight decay off while this is on
(the penalty fixes the norms).

:meth:`orthogonality` is the paper's diagnostic ``||diag(G)||_1 / ||G||_1`` (1 = orthogonal),
computed on the same smaller Gram.

Importance (loss preservation, first-order Taylor; methods.md 1): in eval mode, the dataset-mean
gradient ``g_bar = (1/N) sum_b n_b grad L_b`` over about ``num_samples`` samples, then per filter
``I_f = (<theta_f, g_bar_f>)^2`` over kernel + conv bias (BN excluded); a coupled group sums ``I_f``
over the filters it removes [design]: its producer layers and its depthwise layers (a depthwise
filter goes with its channel; the official MobileNet code lets the depthwise layer follow the
preceding pointwise layer's kept set rather than score it). The mean gradient is squared after
averaging, as in the code.
Magnitude scores are meaningless under OrthoReg (all norms ~1): use this one.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable

import torch
from torch import nn

from compressor.errors import UsageError
from compressor.train.groups import ParamSlice
from compressor.train.regularizers import register
from compressor.train.regularizers.base import Regularizer, check_range


def _filters(weight: torch.Tensor, dim: int, bias: torch.Tensor | None) -> torch.Tensor:
    p = weight.movedim(dim, 0).reshape(weight.shape[dim], -1)
    if bias is not None:
        p = torch.cat([p, bias.reshape(-1, 1)], dim=1)
    return p


def _filter_kernels(g) -> list[ParamSlice]:
    """Conv/linear weights whose filters are the group's channels: producers, and depthwise kernels
    (analysis role ``param``: the channel passes through them)."""
    return g.channel_slices(("kernel",))


def smaller_gram(p: torch.Tensor) -> torch.Tensor:
    return p @ p.T if p.shape[0] <= p.shape[1] else p.T @ p


@register("orthoreg")
class OrthoReg(Regularizer):
    """Orthonormality penalty per layer; first-order loss-preservation group importance."""

    def __init__(self, model, example_input=None, *, lam: float = 1e-2, include_linear: bool = False,
                 data: Iterable | None = None, loss_fn: Callable | None = None, num_samples: int = 10000,
                 **kw) -> None:
        check_range("lam", lam, low=0.0)
        check_range("num_samples", num_samples, low=1)
        self.lam, self.include_linear = float(lam), include_linear
        self.data, self.loss_fn, self.num_samples = data, loss_fn, int(num_samples)
        super().__init__(model, example_input, **kw)
        self.layers: dict[str, tuple[nn.Parameter, int, nn.Parameter | None]] = {}
        for g in self.groups:
            for s in _filter_kernels(g):
                module_name = s.name.rpartition(".")[0]
                module = model.get_submodule(module_name) if module_name else model
                if module_name in self.layers or not s.trainable:
                    continue
                if s.tensor.ndim < 3 and not include_linear:
                    continue
                bias = getattr(module, "bias", None)
                bias = bias if isinstance(bias, nn.Parameter) and bias.requires_grad else None
                self.layers[module_name] = (s.tensor, s.dim, bias)
        if not self.layers:
            raise UsageError("orthoreg: no conv layer among the groups' producers or depthwise layers")
        sizes = {n: min(w.shape[d], w.numel() // w.shape[d] + (b is not None)) for n, (w, d, b) in self.layers.items()}
        total = sum(math.sqrt(m) for m in sizes.values())
        self.layer_weights = {n: math.sqrt(m) / total for n, m in sizes.items()}
        self._scores: dict[int, torch.Tensor] | None = None

    # ------------------------------------------------------------------ penalty
    def _penalty(self, tensors: dict[str, tuple[torch.Tensor, torch.Tensor | None]]) -> torch.Tensor:
        total = 0.0
        for name, (w, b) in tensors.items():
            gram = smaller_gram(_filters(w, self.layers[name][1], b))
            eye = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
            total = total + self.layer_weights[name] * (gram - eye).abs().sum()
        return total

    def penalty(self) -> float:
        with torch.no_grad():
            return float(self._penalty({n: (w, b) for n, (w, _, b) in self.layers.items()}))

    def _step(self) -> None:
        with torch.enable_grad():
            leaves = {n: (w.detach().requires_grad_(), None if b is None else b.detach().requires_grad_())
                      for n, (w, _, b) in self.layers.items()}
            flat = [t for pair in leaves.values() for t in pair if t is not None]
            grads = torch.autograd.grad(self._penalty(leaves), flat)
        params = [t for (w, _, b) in self.layers.values() for t in (w, b) if t is not None]
        for p, g in zip(params, grads):
            if p.grad is None:
                p.grad = self.lam * g
            else:
                p.grad.add_(g, alpha=self.lam)

    def orthogonality(self, per_layer: bool = False):
        """Degree of orthogonality ||diag(G)||_1 / ||G||_1 (mean over layers, or per layer)."""
        out = {}
        with torch.no_grad():
            for name, (w, d, b) in self.layers.items():
                gram = smaller_gram(_filters(w, d, b).double())
                out[name] = float(gram.diagonal().abs().sum() / gram.abs().sum())
        return out if per_layer else sum(out.values()) / len(out)

    # ------------------------------------------------------------------ importance
    def importance(self, data: Iterable | None = None, loss_fn: Callable | None = None,
                   num_samples: int | None = None) -> dict[int, torch.Tensor]:
        data = data if data is not None else self.data
        loss_fn = loss_fn if loss_fn is not None else self.loss_fn
        if data is None or loss_fn is None:
            if self._scores is not None:
                return self._scores
            raise UsageError("orthoreg importance needs data: importance(data=loader, loss_fn=loss)")
        self._scores = self._taylor_scores(data, loss_fn, num_samples or self.num_samples)
        return self._scores

    def _taylor_scores(self, data: Iterable, loss_fn: Callable, num_samples: int) -> dict[int, torch.Tensor]:
        model = self.model
        params = [p for p in model.parameters() if p.requires_grad]
        saved = [None if p.grad is None else p.grad.detach().clone() for p in params]
        modes = {m: m.training for m in model.modules()}
        device = next(iter(params)).device
        try:
            model.eval()
            for p in params:
                p.grad = None
            seen = 0
            for batch in data:
                x, y = batch[0], batch[1]
                x = x.to(device) if isinstance(x, torch.Tensor) else x
                y = y.to(device) if isinstance(y, torch.Tensor) else y
                n = int(y.shape[0]) if isinstance(y, torch.Tensor) and y.ndim else 1
                (loss_fn(model(x), y) * n).backward()
                seen += n
                if seen >= num_samples:
                    break
            if seen == 0:
                raise UsageError("orthoreg importance: the data loader yielded no samples")
            scores = {}
            with torch.no_grad():
                for g in self.groups:
                    total = torch.zeros(g.size, dtype=torch.float64)
                    by_module: dict[str, list[ParamSlice]] = {}
                    for s in g.channel_slices(("kernel", "bias")):
                        by_module.setdefault(s.name.rpartition(".")[0], []).append(s)
                    for slices in by_module.values():
                        dot = torch.zeros(g.size, dtype=torch.float64)
                        for s in slices:
                            if s.tensor.grad is None:
                                continue
                            mean_grad = s.rows(g.size, s.tensor.grad.detach()).double() / seen
                            dot += (s.rows(g.size).double() * mean_grad).sum(1).cpu()
                        total += dot.square()
                    scores[g.id] = total
            return scores
        finally:
            for p, gr in zip(params, saved):
                p.grad = gr
            for m, flag in modes.items():
                m.training = flag

    def learned_groups(self):
        if self._scores is None and (self.data is None or self.loss_fn is None):
            raise UsageError("orthoreg: compute importance(data=..., loss_fn=...) before export")
        return super().learned_groups()

    def _extra_state(self) -> dict[str, Any]:
        return {"scores": None if self._scores is None else {str(k): v for k, v in self._scores.items()}}

    def _load_extra_state(self, extra: dict[str, Any]) -> None:
        s = extra.get("scores")
        self._scores = None if s is None else {int(k): v.clone() for k, v in s.items()}
