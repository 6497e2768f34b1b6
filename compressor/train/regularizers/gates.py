"""Bounded-Lp group gating (Mummadi et al., GCPR 2019): learnable per-channel gates after BN.

No official code exists; the formulas are recalled and the integration is [design] (methods.md 3).

- Placement: every BatchNorm that produces channels of a selected group is wrapped in
  :class:`GatedBatchNorm` (Conv -> BN -> gate -> activation; a gate between Conv and BN would be
  renormalised away). Gates start at 1. The wrapper changes ``state_dict`` names
  (``bn1.weight`` -> ``bn1.bn.weight``, plus ``bn1.gate`` and ``bn1.gate_mask``): build the
  regularizer *before* the optimizer (or pass ``optimizer=``/``attach()``: missing gates are then
  added to it as a new param group with ``weight_decay=0``) and before loading a gated checkpoint.
  An optimizer built afterwards from ``model.parameters()`` also weight-decays the gates (an extra L2
  pull towards 0); exclude ``reg.gate_parameters()`` from its decayed group if that is unwanted.
  Convs without BN are not gated. A model that is gated already (a second pruning round, a rebuilt
  regularizer) keeps its :class:`GatedBatchNorm` wrappers: the new regularizer takes over their
  gates, so channels whose gates were frozen at 0 stay frozen and score 0.
- Penalty on the gates, ``lam * sum rho(g)``: ``penalty="l1"`` (rho = |g|) or ``"bounded_l1"``
  (rho = 1 - exp(-|g|/sigma); the bounded variant barely penalises gates far above sigma).
- Defaults: ``sigma = 0.5``, the largest value of the sweep methods.md 3 recommends
  ({0.05, 0.1, 0.5}, no paper value retrieved), because gates start at 1: the bounded-L1 slope at
  a gate g is ``exp(-g/sigma)/sigma``, 0.27 at g = 1 for sigma = 0.5 but 4.5e-4 for sigma = 0.1 and
  4e-8 for sigma = 0.05, where the penalty does nothing until the task loss alone has brought gates
  down near sigma. Smaller sigma (closer to L0) makes sense once gates are small. A warning is
  issued at construction when the largest slope over the live gates is below 1% of the L1 slope.
  ``lam`` (1e-3) has no recommended value either: choose it so that the target sparsity is reached
  by the end of training.
- Exact zeros [design, VERIFY the paper's mechanism]: the gate penalty is applied as a proximal step
  after each optimizer update, ``g <- sign(g) * max(|g| - lr * lam * w(g), 0)`` with ``w = 1`` (L1,
  the exact prox) or ``w = exp(-|g|/sigma)/sigma`` (bounded L1: the L1 prox with the penalty's local
  slope, a linearised prox). A gate that reaches 0 is frozen for good: ``gate_mask`` (a buffer used in
  ``forward``) is set to 0, its gradient is zeroed in ``step()`` and its value reset after each update.
- Optional bounded-L2 on weight groups (``weight_lambda > 0``): ``lam_w * sum_g (1 - exp(-||theta_g||_2 /
  weight_sigma))`` over each channel's producer kernels, added to the gradient in ``step()``.
  [VERIFY: we put ``||theta_g||_p`` (not its p-th power) in the exponent.]

Output: ``importance`` = sum over the group's gates of ``|g|`` (0 iff every coupled producer's gate
is 0, the condition for removing a residual trunk channel); ``gates`` = max ``|g|`` per channel.
Deployment: :meth:`GroupGates.folded` (used by export) folds g into BN (gamma' = g*gamma,
beta' = g*beta), so a zero gate gives a channel that is exactly 0 with no bias compensation.
"""

from __future__ import annotations

import contextlib
import math
import warnings

import torch
from torch import nn

from compressor.train.groups import ParamSlice, TorchGroup
from compressor.train.regularizers import register
from compressor.train.regularizers.base import Regularizer, check_range

#: The bounded-L1 slope at the live gates, relative to L1's slope (1), below which a warning says the
#: penalty is effectively off.
NEGLIGIBLE_SLOPE = 0.01


class GatedBatchNorm(nn.Module):
    """``bn(x) * gate`` per channel; ``gate_mask`` freezes gates that reached zero."""

    def __init__(self, bn: nn.modules.batchnorm._BatchNorm) -> None:
        super().__init__()
        self.bn = bn
        ref = bn.weight if bn.weight is not None else bn.running_mean
        self.gate = nn.Parameter(torch.ones(bn.num_features, dtype=ref.dtype, device=ref.device))
        self.register_buffer("gate_mask", torch.ones(bn.num_features, dtype=ref.dtype, device=ref.device))

    def effective_gate(self) -> torch.Tensor:
        return self.gate * self.gate_mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.effective_gate()
        return self.bn(x) * g.reshape(1, -1, *([1] * (x.ndim - 2)))


@register("gates")
class GroupGates(Regularizer):
    """Gates after BN with an (bounded) L1 penalty and a proximal step to exact, frozen zeros."""

    needs_kernels = False

    def __init__(self, model, example_input=None, *, lam: float = 1e-3, sigma: float = 0.5,
                 penalty: str = "bounded_l1", weight_lambda: float = 0.0, weight_sigma: float = 1.0,
                 optimizer: torch.optim.Optimizer | None = None, **kw) -> None:
        if penalty not in ("l1", "bounded_l1"):
            raise ValueError("penalty must be 'l1' or 'bounded_l1'")
        check_range("lam", lam, low=0.0)
        check_range("sigma", sigma, low=0.0, low_open=True)
        check_range("weight_lambda", weight_lambda, low=0.0)
        check_range("weight_sigma", weight_sigma, low=0.0, low_open=True)
        self.lam, self.sigma, self.penalty = float(lam), float(sigma), penalty
        self.weight_lambda, self.weight_sigma = float(weight_lambda), float(weight_sigma)
        super().__init__(model, example_input, **kw)
        self.wrappers: dict[str, GatedBatchNorm] = {}
        self._insert_gates()
        self._warn_if_penalty_is_flat()
        if optimizer is not None:
            self.attach(optimizer)

    def accepts(self, g: TorchGroup) -> bool:
        return super().accepts(g) and bool(g.channel_slices(("bn_weight",)))

    # ------------------------------------------------------------------ insertion
    def _insert_gates(self) -> None:
        for g in self.groups:
            for s in g.channel_slices(("bn_weight",)):
                name, wrapper = self._wrapper_for(s.name.rpartition(".")[0])
                self.wrappers[name] = wrapper
                if any(t.tensor is wrapper.gate and t.offset == s.offset for t in g.slices):
                    continue
                gate_name = f"{name}.gate" if name else "gate"
                g.slices.append(ParamSlice(gate_name, wrapper.gate, 0, s.offset, s.inner, "param", "gate"))

    def _wrapper_for(self, bn_name: str) -> tuple[str, GatedBatchNorm]:
        """The gate wrapper of the BN module named ``bn_name`` and its module name; wraps if needed.

        On a model gated already, the analysis names the inner BN (``b1.bn.weight``): its parent
        ``b1`` is the wrapper to reuse, not a BN to wrap a second time.
        """
        parent_name, _, attr = bn_name.rpartition(".")
        parent = self.model.get_submodule(parent_name) if parent_name else self.model
        if attr == "bn" and isinstance(parent, GatedBatchNorm):
            return parent_name, parent
        module = getattr(parent, attr)
        if isinstance(module, GatedBatchNorm):  # wrapped already (this regularizer or an earlier one)
            return bn_name, module
        wrapper = GatedBatchNorm(module)
        setattr(parent, attr, wrapper)
        return bn_name, wrapper

    def _warn_if_penalty_is_flat(self) -> None:
        """Warn once, at construction, when bounded L1 cannot move the live gates (slope < 1% of L1's)."""
        if self.penalty != "bounded_l1" or self.lam == 0:
            return
        live = [w.gate.detach()[w.gate_mask != 0].abs() for w in self.wrappers.values()]
        live = torch.cat(live) if live else torch.zeros(0)
        if live.numel() == 0:
            return
        slope = math.exp(-float(live.min()) / self.sigma) / self.sigma
        if slope < NEGLIGIBLE_SLOPE:
            warnings.warn(
                f"gates: the bounded-L1 slope at the current gates (smallest live |g| = {float(live.min()):.3g}) "
                f"is {slope:.2g} with sigma={self.sigma:g}, so the penalty barely moves them; use a sigma on "
                f"the gates' scale (the default 0.5) or penalty='l1'", stacklevel=3)

    def attach(self, optimizer: torch.optim.Optimizer) -> None:
        super().attach(optimizer)
        known = {id(p) for group in optimizer.param_groups for p in group["params"]}
        missing = [w.gate for w in self.wrappers.values() if id(w.gate) not in known]
        if missing:
            optimizer.add_param_group({"params": missing, "weight_decay": 0.0})

    def gate_parameters(self) -> list[nn.Parameter]:
        return [w.gate for w in self.wrappers.values()]

    def _gate_slices(self, g: TorchGroup) -> list[ParamSlice]:
        return g.select("param", ("gate",))

    # ------------------------------------------------------------------ loop
    def _step(self) -> None:
        for w in self.wrappers.values():
            if w.gate.grad is not None:
                w.gate.grad.mul_(w.gate_mask)
        if self.weight_lambda > 0:
            for g in self.groups:
                kernels = [s for s in g.producer_kernels if s.trainable]
                norms = torch.zeros(g.size, dtype=torch.float64)
                for s in kernels:
                    norms += s.rows(g.size).double().square().sum(1).cpu()
                norms = norms.sqrt()
                coef = self.weight_lambda * torch.exp(-norms / self.weight_sigma) / self.weight_sigma / norms.clamp_min(1e-12)
                for s in kernels:
                    grad = s.grad_rows(g.size)
                    if grad is not None:
                        theta = s.rows(g.size)
                        s.write_grad_rows(g.size, grad + coef.to(theta).reshape(-1, 1) * theta)

    def after_optimizer_step(self) -> None:
        for w in self.wrappers.values():
            gate = w.gate.detach()
            lr = self.lr_of(w.gate)
            mag = gate.abs()
            slope = torch.ones_like(mag) if self.penalty == "l1" else torch.exp(-mag / self.sigma) / self.sigma
            new = torch.sign(gate) * torch.clamp(mag - lr * self.lam * slope, min=0.0)
            w.gate_mask.mul_((new != 0).to(w.gate_mask))
            gate.copy_(new * w.gate_mask)

    # ------------------------------------------------------------------ output
    def _gate_rows(self, g: TorchGroup) -> torch.Tensor:
        rows = []
        for s in self._gate_slices(g):
            wrapper = self.wrappers[s.name.rpartition(".")[0]]
            rows.append(s.rows(g.size, wrapper.effective_gate().detach()).double().abs().reshape(g.size).cpu())
        return torch.stack(rows)

    def importance(self) -> dict[int, torch.Tensor]:
        self.finalize()
        return {g.id: self._gate_rows(g).sum(0) for g in self.groups}

    def gates(self) -> dict[int, torch.Tensor]:
        self.finalize()
        return {g.id: self._gate_rows(g).max(0).values for g in self.groups}

    def zero_fraction(self) -> float:
        total = sum(w.gate_mask.numel() for w in self.wrappers.values())
        zeros = sum(int((w.gate_mask == 0).sum()) for w in self.wrappers.values())
        return zeros / max(total, 1)

    def learned_groups(self):
        gates = self.gates()
        out = super().learned_groups()
        for g, entry in out:
            entry["gates"] = [float(v) for v in gates[g.id]]
        return out

    # ------------------------------------------------------------------ deployment
    def _swap(self, gated: bool) -> None:
        for name, wrapper in self.wrappers.items():
            parent_name, _, attr = name.rpartition(".")
            parent = self.model.get_submodule(parent_name) if parent_name else self.model
            setattr(parent, attr, wrapper if gated else wrapper.bn)

    @contextlib.contextmanager
    def folded(self):
        """Temporarily fold the gates into BN (gamma*g, beta*g) and unwrap: the deployable model."""
        self.finalize()
        saved = []
        with torch.no_grad():
            for wrapper in self.wrappers.values():
                bn, g = wrapper.bn, wrapper.effective_gate().detach()
                saved.append((bn.weight.detach().clone(), bn.bias.detach().clone()))
                bn.weight.mul_(g)
                bn.bias.mul_(g)
        self._swap(gated=False)
        try:
            yield self.model
        finally:
            self._swap(gated=True)
            with torch.no_grad():
                for wrapper, (w, b) in zip(self.wrappers.values(), saved):
                    wrapper.bn.weight.copy_(w)
                    wrapper.bn.bias.copy_(b)
