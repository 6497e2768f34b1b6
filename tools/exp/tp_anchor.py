"""Torch-Pruning (1.6.1) anchors run under our protocol: GroupNormPruner and GrowingRegPruner.

Same protocol as every other row (``settings``): phase A from scratch with the same epochs and lr
schedule, TP's regularizer applied the way TP's ``reproduce/main.py`` applies it
(``loss.backward(); pruner.regularize(model); optimizer.step()``, optimizer weight decay 0 while the
pruner regularizes; GrowingReg's ``update_reg()`` grows the penalty), then TP prunes the torch model
to **the same kept channel count per group** as our runs of that cut (local ranking inside each
group by TP's importance, ``GroupMagnitudeImportance(p=2)``), the pruned torch model is exported to
ONNX and evaluated, fine-tuned in phase B and measured like the other rows.

Same layers: groups that our cut leaves at full width (the residual trunk at the 2x "internal"
policy, the classifier always) are passed to TP as ``ignored_layers``, so TP neither regularizes
nor prunes them; the resulting MACs are checked against the ONNX widths of our runs.

Strengths: TP's reference commands (``reproduce/readme.md``, ResNet-56 / CIFAR-10:
``group_sl --reg 5e-4``; ``growing_reg --reg 1e-4 --delta_reg 1e-5`` with ``update_reg()`` once per
epoch) run 100 sparse-learning epochs at lr 0.01 (x0.1 at 60 and 80) with 390 steps per epoch. As
for our own regularizers, coefficients are rescaled by the summed learning rate so that phase A
applies the same total shrinkage as TP's reference run (``scale = TP_REF_SUM_LR / sum_lr``);
GrowingReg's 100 increments are spread over phase A (one ``update_reg()`` every ``steps / n``
steps, ``n = min(100, steps)``, increment ``delta_reg * 100 / n``) so that its final strength is
TP's final strength times ``scale``.

``update_regularizer()`` (TP's name) only re-reads the group list after a pruning step; with a single
pruning step after phase A it has nothing to do, so it is not called.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import torch
from torch import nn

#: Summed learning rate of TP's reference sparse-learning run (100 epochs x 390 steps; lr 0.01,
#: x0.1 at epochs 60 and 80): 390 * (60 * 0.01 + 20 * 0.001 + 20 * 0.0001).
TP_REF_SUM_LR = 390 * (60 * 0.01 + 20 * 0.001 + 20 * 0.0001)
#: Each method's TP recipe; ``strength`` in ``settings.METHODS`` multiplies the rescaled coefficients.
TP_REF = {
    "tp_groupnorm": {"pruner": "GroupNormPruner", "reg": 5e-4, "alpha": 2 ** 4},
    "tp_growingreg": {"pruner": "GrowingRegPruner", "reg": 1e-4, "delta_reg": 1e-5, "updates": 100},
}
METHODS = tuple(TP_REF)


def available() -> bool:
    return importlib.util.find_spec("torch_pruning") is not None


def tp_version() -> str:
    from importlib.metadata import version
    return version("torch-pruning")  # torch_pruning.__version__ of the 1.6.1 wheel still says 1.6.0


def _is_depthwise(m: nn.Module) -> bool:
    return isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels == m.out_channels


def _producers(dg, group) -> list[nn.Module]:
    """The kernels whose output channels define the group. A depthwise conv's outputs are pruned
    with its inputs (TP lists it as an out-channel member), but it passes channels through like
    a BatchNorm: counting it would make every MobileNetV2 expansion group look like a trunk,
    which is how ``exp.widths.is_trunk`` (one producer kernel) would never see it."""
    return [dep.target.module for dep, _ in group
            if dg.is_out_channel_pruning_fn(dep.handler) and isinstance(dep.target.module, (nn.Conv2d, nn.Linear))
            and not _is_depthwise(dep.target.module)]


class TPAnchor:
    """The TP pruner of one run plus the step hooks ``runner.train_phase`` calls (``step`` after
    ``backward``, ``epoch_end``). ``by_shape`` maps (group size, is-trunk) to the kept count of our
    run's cut; ``num_classes`` marks the classifier (never pruned, as in TP's reproduce script)."""

    def __init__(self, method: str, model: nn.Module, example: torch.Tensor, by_shape: dict, *,
                 steps: int, sum_lr: float, num_classes: int = 10, strength: float = 1.0) -> None:
        import torch_pruning as tp

        if method not in TP_REF:
            raise KeyError(method)
        self.method, self.model, self.steps = method, model, steps
        ref = TP_REF[method]
        self.strength = strength  # multiplier on TP's (rescaled) reference coefficients
        self.scale = TP_REF_SUM_LR / sum_lr * strength
        names = {m: n for n, m in model.named_modules()}
        was_training = model.training
        model.eval()  # tracing runs a forward pass: keep the zero example out of BN running stats
        try:
            dg = tp.DependencyGraph().build_dependency(model, example_inputs=example)
            ignored = [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == num_classes]
            ratios, self.targets, self.skipped = {}, {}, []
            for group in dg.get_all_groups(ignored_layers=list(ignored), root_module_types=[nn.Conv2d, nn.Linear]):
                prods = _producers(dg, group)
                root = group[0].dep.target.module
                size = dg.get_out_channels(root)
                trunk = len(set(prods)) > 1
                kept = by_shape.get((size, trunk), size)
                if kept >= size:  # left at full width by this cut: TP must not touch it either
                    ignored.extend(prods)
                    self.skipped.append(names[root])
                    continue
                # n_pruned = size - int(size * (1 - ratio)); the -1e-9 keeps int() from rounding down
                ratios[root] = (size - kept) / size - 1e-9
                self.targets[names[root]] = (size, kept)
            imp = tp.importance.GroupMagnitudeImportance(p=2)
            common = dict(importance=imp, pruning_ratio=0.0, pruning_ratio_dict=ratios, ignored_layers=ignored,
                          global_pruning=False, iterative_steps=1)
            if method == "tp_groupnorm":
                self.reg = ref["reg"] * self.scale
                self.pruner = tp.pruner.GroupNormPruner(model, example, reg=self.reg, alpha=4, **common)
                self.hparams = {"reg": self.reg, "alpha": ref["alpha"]}
            else:
                self.n_updates = max(1, min(ref["updates"], steps))
                self.every = max(1, steps // self.n_updates)
                self.reg = ref["reg"] * self.scale
                self.delta = ref["delta_reg"] * ref["updates"] / self.n_updates * self.scale
                self.pruner = tp.pruner.GrowingRegPruner(model, example, reg=self.reg, delta_reg=self.delta, **common)
                self.hparams = {"reg": self.reg, "delta_reg": self.delta, "update_reg_every_steps": self.every,
                                "n_updates": self.n_updates}
        finally:
            model.train(was_training)
        self.regularized_groups = len(self.pruner._groups)
        self.t = 0
        self.updates = 0

    # ------------------------------------------------------------------ phase A hooks
    def step(self) -> None:
        """After ``loss.backward()``, before ``optimizer.step()`` (TP's reproduce/main.py order)."""
        self.pruner.regularize(self.model)
        self.t += 1
        if self.method == "tp_growingreg" and self.t % self.every == 0 and self.updates < self.n_updates:
            self.pruner.update_reg()
            self.updates += 1

    def epoch_end(self) -> None:
        pass

    def describe(self) -> dict[str, Any]:
        return {"name": self.method, "torch_pruning": tp_version(), "pruner": TP_REF[self.method]["pruner"],
                "importance": "GroupMagnitudeImportance(p=2)", "scale_vs_tp_reference": self.scale,
                "strength_multiplier": self.strength,
                "tp_reference": TP_REF[self.method], "tp_reference_sum_lr": TP_REF_SUM_LR,
                "optimizer_weight_decay": 0.0, "hyperparameters": self.hparams,
                "pruned_groups": {k: f"{v[1]}/{v[0]}" for k, v in self.targets.items()},
                "ignored_groups": self.skipped, "regularized_groups": self.regularized_groups}

    # ------------------------------------------------------------------ pruning
    @torch.no_grad()
    def prune(self) -> dict[str, str]:
        """One TP pruning step to the target counts; raises if any group ends at another width."""
        was_training = self.model.training
        self.model.eval()
        try:
            self.pruner.step()
        finally:
            self.model.train(was_training)
        mods = dict(self.model.named_modules())
        got = {}
        for name, (size, kept) in self.targets.items():
            m = mods[name]
            n = m.out_channels if isinstance(m, nn.Conv2d) else m.out_features
            got[name] = f"{n}/{size}"
            if n != kept:
                raise RuntimeError(f"Torch-Pruning left {name} at {n} channels, expected {kept} of {size}")
        return got


def kept_list(dense_state: dict[str, torch.Tensor], model: nn.Module) -> list[dict]:
    """Tensors whose shape changed, as ``{"tensor", "axis", "n"}`` like the ONNX runs' ``kept``."""
    out = []
    for k, v in model.state_dict().items():
        d = dense_state.get(k)
        if d is None or d.dim() == 0:
            continue
        for axis, (a, b) in enumerate(zip(d.shape, v.shape)):
            if a != b:
                out.append({"tensor": k, "axis": axis, "n": int(b)})
    return out
