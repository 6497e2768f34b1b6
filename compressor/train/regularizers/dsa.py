"""DSA-style differentiable sparsity allocation (Ning et al., ECCV 2020) under a MACs budget.

Per selected group k (one shared mask for all its coupled BNs, the paper's primal/follower rule):

- keep ratio ``alpha_k = sigmoid(a_k)``, ``a_k`` initialised to 5 (alpha ~ 0.993);
- base importance ``b_i`` = sum over the group's BNs of ``|gamma_i|`` (detached);
- keep probability ``p_i = clip(sigmoid(beta2 (log b_i - log beta1)) + 0.01, 0, 1)`` with ``beta2 = 1``
  and ``beta1`` solved in the forward pass (bisection) so that ``mean_i p_i = alpha_k``;
- mask ``m ~ Bernoulli(p)`` with a straight-through gradient, applied after BN (``bn(x) * m``,
  :class:`MaskedBatchNorm`); the gradient to alpha is the implicit one,
  ``dp_i/dalpha = C f'_i / sum_j f'_j`` with ``f'_i = s_i (1 - s_i) beta2`` (:class:`KeepProbability`).

Budget: expected MACs ``F(alpha) = sum_l MACs_l * alpha_in(l) * alpha_out(l)`` (depthwise convs:
``alpha_out`` only), with per-layer MACs measured once by forward hooks on ``example_input`` (shapes
only; a module called several times counts every call). The in/out groups of a layer come from the
analysis groups: every slice of the layer's weight along its output axis (producer, or ``param``
for a depthwise kernel) or input axis (consumer). An axis that holds several groups (a conv reading
a concat) weights each group by its share of the axis, ``alpha_axis = 1 - sum_k share_k (1 -
alpha_k)``; channels outside the selected groups count with alpha = 1. With ``alpha_k C_k`` kept
channels in every group this is the exact MACs ratio of the pruned net (bias adds not counted).
Constraint ``F(alpha) / F(1) <= budget``.

Optimisation [design; the paper's ADMM loop is not in the released code and is recalled only]: the
weights follow the user's optimizer; ``step()`` takes one Adam step (``lr_alpha``) on the ``a_k``
with the task-loss gradient of the current training batch (no separate validation split) plus an
augmented-Lagrangian term of the inequality ``c = F/F(1) - budget <= 0``,
``(max(0, mu + rho c)^2 - mu^2) / (2 rho)``, and the dual update ``mu <- max(0, mu + dual_lr c)``. The a-optimizer is Adam without momentum
(``alpha_betas = (0, 0.99)``): scale-free steps leave alpha ~ 1 quickly, and no momentum means no
overshoot far below the budget once it is met. Defaults (``lr_alpha`` 0.1, ``rho`` 50, ``dual_lr``
0.05) were tuned on the tiny test nets only: the dual step is kept small because a fast dual ascent
against a rate-limited primal accumulates a stale multiplier and overshoots the budget.

DDP: the ``a_k`` are not module parameters, so ``step()`` all-reduces their gradients itself.

Eval mode and the result: group k keeps its ``ceil(alpha_k C_k)`` largest ``b_i`` (at least 1).
``importance()`` encodes that allocation so one global threshold at 1.0 reproduces it: kept channels
score ``1 + b_i / max b``, the others ``b_i / max b``. ``keep_ratio`` is exported per group too.
Export unwraps the masks (:meth:`DSA.folded`); channel removal is then the surgery's job.
"""

from __future__ import annotations

import contextlib
import math
from typing import NamedTuple

import torch
from torch import nn

from compressor.train.groups import TorchGroup, preserved_state
from compressor.train.regularizers import register
from compressor.train.regularizers.base import Regularizer, check_range


class KeepProbability(torch.autograd.Function):
    """p(alpha) with mean(p) = alpha; backward is the implicit derivative through the root beta1."""

    @staticmethod
    def forward(ctx, alpha: torch.Tensor, log_b: torch.Tensor, beta2: float) -> torch.Tensor:
        target = float(alpha)
        lo = float(log_b.min()) - 60.0 / beta2
        hi = float(log_b.max()) + 60.0 / beta2

        def probs(t: float) -> tuple[torch.Tensor, torch.Tensor]:
            s = torch.sigmoid(beta2 * (log_b - t))
            return torch.clamp(s + 0.01, 0.0, 1.0), s

        for _ in range(200):  # mean(p) decreases in t
            mid = 0.5 * (lo + hi)
            if float(probs(mid)[0].mean()) > target:
                lo = mid
            else:
                hi = mid
        p, s = probs(0.5 * (lo + hi))
        ctx.save_for_backward(s, p)
        ctx.beta2 = beta2
        return p

    @staticmethod
    def backward(ctx, grad_p: torch.Tensor):
        s, p = ctx.saved_tensors
        slope = s * (1 - s) * ctx.beta2 * ((p > 0) & (p < 1)).to(s)
        total = slope.sum()
        if float(total) <= 0:
            return torch.zeros((), dtype=grad_p.dtype, device=grad_p.device), None, None
        dp_dalpha = s.numel() * slope / total
        return (grad_p * dp_dalpha).sum(), None, None


class LayerMacs(NamedTuple):
    """One conv/linear layer of the budget: full MACs and the groups on its output and input axes."""

    macs: float
    inputs: tuple[tuple[int, float], ...]   # (group id, share of the input axis)
    outputs: tuple[tuple[int, float], ...]  # (group id, share of the output axis)
    depthwise: bool


class MaskedBatchNorm(nn.Module):
    """``bn(x) * mask``; the mask is set by the owning :class:`DSA` before each forward."""

    def __init__(self, bn: nn.modules.batchnorm._BatchNorm) -> None:
        super().__init__()
        self.bn = bn
        self.mask: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(x)
        if self.mask is None:
            return y
        return y * self.mask.to(y).reshape(1, -1, *([1] * (x.ndim - 2)))


@register("dsa")
class DSA(Regularizer):
    """Differentiable per-group keep ratios under an expected-MACs budget."""

    needs_kernels = True

    def __init__(self, model, example_input=None, *, budget: float = 0.5, lr_alpha: float = 0.1,
                 rho: float = 50.0, dual_lr: float = 0.05, alpha_betas: tuple[float, float] = (0.0, 0.99),
                 beta2: float = 1.0, a_init: float = 5.0, **kw) -> None:
        if not 0.0 < budget <= 1.0:
            raise ValueError("budget is the kept fraction of MACs, in (0, 1]")
        if example_input is None:
            raise ValueError("DSA measures per-layer MACs on example_input; pass it (with or without groups=)")
        check_range("rho", rho, low=0.0, low_open=True)
        check_range("beta2", beta2, low=0.0, low_open=True)
        check_range("lr_alpha", lr_alpha, low=0.0, low_open=True)
        check_range("dual_lr", dual_lr, low=0.0)
        self.budget, self.rho, self.beta2, self.dual_lr = float(budget), float(rho), float(beta2), float(dual_lr)
        super().__init__(model, example_input, **kw)
        self.a = {g.id: torch.tensor(float(a_init), dtype=torch.float64, requires_grad=True) for g in self.groups}
        self.alpha_opt = torch.optim.Adam(list(self.a.values()), lr=lr_alpha, betas=alpha_betas)
        self.mu = 0.0
        self.wrappers: dict[str, MaskedBatchNorm] = {}
        self.bn_slices: dict[str, list[tuple[TorchGroup, int]]] = {}
        self._wrap()
        self.layers = self._measure_macs(example_input)
        self.full_macs = sum(layer.macs for layer in self.layers)
        self._hook_handle = model.register_forward_pre_hook(lambda mod, args: self._set_masks())

    def accepts(self, g: TorchGroup) -> bool:
        return super().accepts(g) and bool(g.channel_slices(("bn_weight",)))

    # ------------------------------------------------------------------ setup
    def _wrap(self) -> None:
        for g in self.groups:
            for s in g.channel_slices(("bn_weight",)):
                bn_name = s.name.rpartition(".")[0]
                if bn_name not in self.wrappers:
                    parent_name, _, attr = bn_name.rpartition(".")
                    parent = self.model.get_submodule(parent_name) if parent_name else self.model
                    wrapper = MaskedBatchNorm(getattr(parent, attr))
                    setattr(parent, attr, wrapper)
                    self.wrappers[bn_name] = wrapper
                    self.bn_slices[bn_name] = []
                self.bn_slices[bn_name].append((g, s.offset))

    def _measure_macs(self, example_input) -> list[LayerMacs]:
        """MACs and in/out groups of every conv/linear layer, from one forward on ``example_input``."""
        macs: dict[nn.Module, float] = {}
        handles = []
        for module in self.model.modules():
            if isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)):
                def hook(mod, inputs, output):
                    per_sample = output.numel() / max(output.shape[0], 1)
                    if isinstance(mod, nn.Linear):
                        count = per_sample * mod.in_features
                    else:
                        count = per_sample * (mod.in_channels // mod.groups) * math.prod(mod.kernel_size)
                    macs[mod] = macs.get(mod, 0.0) + count
                handles.append(module.register_forward_hook(hook))
        args = example_input if isinstance(example_input, tuple) else (example_input,)
        try:
            with preserved_state(self.model), torch.no_grad():
                self.model.eval()
                self.model(*args)
        finally:
            for h in handles:
                h.remove()
        return [self._layer_entry(mod, float(count)) for mod, count in macs.items()]

    def _layer_entry(self, mod: nn.Module, count: float) -> LayerMacs:
        """Which selected groups sit on ``mod``'s output and input axes, and what share of each."""
        transposed = isinstance(mod, nn.modules.conv._ConvTransposeNd)
        out_dim, in_dim = (1, 0) if transposed else (0, 1)
        depthwise = isinstance(mod, nn.modules.conv._ConvNd) and mod.groups > 1 and mod.groups == mod.in_channels
        inputs, outputs = [], []
        for g in self.groups:
            for s in g.slices:
                if s.kind != "kernel" or s.tensor is not mod.weight:
                    continue
                share = g.size * s.inner / mod.weight.shape[s.dim]
                if s.dim == out_dim:
                    outputs.append((g.id, share))
                elif s.dim == in_dim and not depthwise:
                    inputs.append((g.id, share))
        return LayerMacs(count, tuple(inputs), tuple(outputs), depthwise)

    # ------------------------------------------------------------------ masks
    def alpha(self, gid: int) -> torch.Tensor:
        return torch.sigmoid(self.a[gid])

    def base_importance(self, g: TorchGroup) -> torch.Tensor:
        b = torch.zeros(g.size, dtype=torch.float64)
        for s in g.channel_slices(("bn_weight",)):
            b += s.rows(g.size).double().abs().reshape(g.size).cpu()
        return b

    def keep_counts(self) -> dict[int, int]:
        return {g.id: max(1, min(g.size, math.ceil(float(self.alpha(g.id).detach()) * g.size - 1e-9))) for g in self.groups}

    def hard_masks(self) -> dict[int, torch.Tensor]:
        out = {}
        for g, k in zip(self.groups, self.keep_counts().values()):
            mask = torch.zeros(g.size, dtype=torch.float64)
            mask[torch.argsort(self.base_importance(g), descending=True, stable=True)[:k]] = 1.0
            out[g.id] = mask
        return out

    def _set_masks(self) -> None:
        if self.model.training:
            masks = {}
            for g in self.groups:
                log_b = torch.log(self.base_importance(g) + 1e-12)
                p = KeepProbability.apply(self.alpha(g.id), log_b, self.beta2)
                sample = torch.bernoulli(p.detach())
                masks[g.id] = p + (sample - p).detach()  # straight-through
        else:
            masks = self.hard_masks()
        for name, wrapper in self.wrappers.items():
            full = torch.ones(wrapper.bn.num_features, dtype=torch.float64)
            parts = []
            for g, offset in self.bn_slices[name]:
                parts.append((offset, g, masks[g.id]))
            if all(not m.requires_grad for _, _, m in parts):
                for offset, g, m in parts:
                    full[offset:offset + g.size] = m
            else:
                pieces, pos = [], 0
                for offset, g, m in sorted(parts, key=lambda t: t[0]):
                    if offset > pos:
                        pieces.append(full[pos:offset])
                    pieces.append(m)
                    pos = offset + g.size
                if pos < full.numel():
                    pieces.append(full[pos:])
                full = torch.cat(pieces)
            wrapper.mask = full

    # ------------------------------------------------------------------ budget
    def _axis_ratio(self, members: tuple[tuple[int, float], ...]) -> torch.Tensor:
        """Expected kept fraction of one axis: ``1 - sum_k share_k (1 - alpha_k)``."""
        ratio = torch.ones((), dtype=torch.float64)
        for gid, share in members:
            ratio = ratio - share * (1 - self.alpha(gid))
        return ratio

    def expected_macs_ratio(self) -> torch.Tensor:
        """``F(alpha) / F(1)``, differentiable in the ``a_k`` (see the module docstring)."""
        total = torch.zeros((), dtype=torch.float64)
        for layer in self.layers:
            total = total + layer.macs * self._axis_ratio(layer.outputs) * self._axis_ratio(layer.inputs)
        return total / self.full_macs

    def _step(self) -> None:
        with torch.enable_grad():
            excess = self.expected_macs_ratio() - self.budget
            # augmented Lagrangian of the inequality excess <= 0: (max(0, mu + rho*c)^2 - mu^2) / (2 rho)
            (torch.clamp(self.mu + self.rho * excess, min=0.0) ** 2 / (2 * self.rho)).backward()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            world = torch.distributed.get_world_size()
            for a in self.a.values():  # the a_k live outside the DDP module: average their grads here
                if a.grad is not None:
                    torch.distributed.all_reduce(a.grad)
                    a.grad /= world
        self.alpha_opt.step()
        self.alpha_opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            self.mu = max(0.0, self.mu + self.dual_lr * float(self.expected_macs_ratio() - self.budget))

    # ------------------------------------------------------------------ output
    def importance(self) -> dict[int, torch.Tensor]:
        out = {}
        for g, mask in zip(self.groups, self.hard_masks().values()):
            b = self.base_importance(g)
            out[g.id] = b / max(float(b.max()), 1e-12) + mask
        return out

    def learned_groups(self):
        out = super().learned_groups()
        for g, entry in out:
            entry["keep_ratio"] = float(self.alpha(g.id).detach())
        return out

    @contextlib.contextmanager
    def folded(self):
        """The model without mask wrappers (weights untouched), e.g. for export."""
        def swap(to_wrapper: bool) -> None:
            for name, wrapper in self.wrappers.items():
                parent_name, _, attr = name.rpartition(".")
                parent = self.model.get_submodule(parent_name) if parent_name else self.model
                setattr(parent, attr, wrapper if to_wrapper else wrapper.bn)
        swap(False)
        self._hook_handle.remove()
        try:
            yield self.model
        finally:
            swap(True)
            self._hook_handle = self.model.register_forward_pre_hook(lambda mod, args: self._set_masks())

    def _extra_state(self) -> dict:
        return {"a": {str(k): v.detach().clone() for k, v in self.a.items()}, "mu": self.mu,
                "alpha_opt": self.alpha_opt.state_dict()}

    def _load_extra_state(self, extra: dict) -> None:
        with torch.no_grad():
            for k, v in extra["a"].items():
                self.a[int(k)].copy_(v)
        self.mu = float(extra["mu"])
        self.alpha_opt.load_state_dict(extra["alpha_opt"])
