"""The regularizer protocol shared by every training-time pruning method.

A regularizer is built from ``(model, example_input)`` (it asks :func:`compressor.train.groups.from_model`
for the coupled channel groups) or from explicit ``groups=``. In a training loop:

- ``reg.step()`` after ``loss.backward()`` and before ``optimizer.step()``: edits gradients;
- ``reg.after_optimizer_step()``: direct weight edits that must follow the update (proximal steps,
  masks). It runs by itself when an optimizer is attached (``optimizer=`` or :meth:`attach`, via
  ``Optimizer.register_step_post_hook``); without one, ``step()`` applies the pending edit of the
  previous update first and :meth:`finalize` applies the last one (``importance()`` calls it);
- ``reg.epoch_end()`` once per epoch (methods that act per epoch: the SFP family);
- ``reg.importance()`` -> ``{group_id: tensor[size]}``, higher = keep;
- ``state_dict()`` / ``load_state_dict()`` hold only tensors and plain Python values, so checkpoints
  load with ``torch.load(weights_only=True)``. The state includes whether an edit is still owed
  (no optimizer attached, saved between ``optimizer.step()`` and the next ``step()``): the resumed
  run applies it at its first ``step()``, as the uninterrupted run would. An edit owed when an
  optimizer is attached (after steps without one, or to a resumed regularizer) is applied the same
  way, at the next ``step()``; the hook then takes over.

Hyperparameters are checked at construction with :func:`check_range` (a ``ValueError`` naming the
parameter and its allowed range), before any model analysis or wrapping.
"""

from __future__ import annotations

import math
from typing import Any, Callable, ClassVar, Iterable, Sequence

import torch
from torch import nn

from compressor.errors import UsageError
from compressor.train.groups import ParamSlice, TorchGroup, from_model


class Regularizer:
    """Base class: group selection, optimizer attachment, lr lookup, checkpoint state."""

    name: ClassVar[str] = ""
    #: Methods that score or penalise filters need a conv/linear weight among the producers.
    needs_kernels: ClassVar[bool] = True

    def __init__(self, model: nn.Module, example_input: Any = None, *,
                 groups: Sequence[TorchGroup] | None = None, optimizer: torch.optim.Optimizer | None = None,
                 lr: float | None = None, group_filter: Callable[[TorchGroup], bool] | None = None) -> None:
        self.model = model
        if groups is None:
            if example_input is None:
                raise UsageError("give example_input (to find the channel groups) or explicit groups=")
            groups = from_model(model, example_input)
        self.all_groups = list(groups)
        self.groups = [g for g in self.all_groups if self.accepts(g) and (group_filter is None or group_filter(g))]
        if not self.groups:
            raise UsageError(f"{self.name or type(self).__name__}: no prunable channel group to work on")
        self.lr = lr
        self.optimizer: torch.optim.Optimizer | None = None
        self._hook = None
        self.steps = 0
        self.epochs = 0
        self._pending_post_step = False
        #: the pending edit belongs to an update no hook saw (it must run at the next step())
        self._pending_owed = False
        if optimizer is not None:
            self.attach(optimizer)

    # ------------------------------------------------------------------ selection
    def accepts(self, g: TorchGroup) -> bool:
        if not g.prunable or g.size < 2:
            return False
        if self.needs_kernels:
            return bool(g.producer_kernels)
        return bool(g.channel_slices(trainable=True))

    @staticmethod
    def per_group(value: float | dict[int, float], g: TorchGroup, default: float | None = None) -> float:
        """A hyperparameter given as one number or as ``{group_id: number}``."""
        if isinstance(value, dict):
            if g.id in value:
                return float(value[g.id])
            if default is None:
                raise UsageError(f"no value for group {g.id} in {value}")
            return float(default)
        return float(value)

    # ------------------------------------------------------------------ optimizer
    def attach(self, optimizer: torch.optim.Optimizer) -> None:
        """Run :meth:`after_optimizer_step` after every ``optimizer.step()``; read lr from it."""
        owed = self._pending_post_step and (self._hook is None or self._pending_owed)
        self.detach()
        self._pending_owed = owed
        self.optimizer = optimizer
        self._hook = optimizer.register_step_post_hook(lambda opt, args, kwargs: self._post_step_hook())

    def detach(self) -> None:
        if self._hook is not None:
            self._hook.remove()
        self._hook, self.optimizer = None, None

    def _post_step_hook(self) -> None:
        self._pending_post_step = False
        with torch.no_grad():
            self.after_optimizer_step()

    def lr_of(self, tensor: torch.Tensor) -> float:
        if self.optimizer is not None:
            for group in self.optimizer.param_groups:
                if any(p is tensor for p in group["params"]):
                    return float(group["lr"])
        if self.lr is not None:
            return float(self.lr)
        raise UsageError(f"{self.name}: pass optimizer= (or lr=) so the proximal step knows the learning rate")

    def optimizer_weight_decay(self, tensor: torch.Tensor) -> float:
        """The L2 decay the attached optimizer adds to this tensor's gradient (0 if decoupled/none)."""
        if self.optimizer is None:
            return 0.0
        for group in self.optimizer.param_groups:
            if any(p is tensor for p in group["params"]):
                if group.get("decoupled_weight_decay", False) or isinstance(self.optimizer, torch.optim.AdamW):
                    return 0.0
                return float(group.get("weight_decay", 0.0))
        return 0.0

    # ------------------------------------------------------------------ loop protocol
    def step(self) -> None:
        """Call after ``loss.backward()`` and before ``optimizer.step()``."""
        with torch.no_grad():
            self._apply_pending()
            self.steps += 1
            self._step()
        self._pending_post_step = True

    def _apply_pending(self) -> None:
        """Apply the edit owed to the previous update: without an optimizer hook, or when no hook
        saw that update (attached since, or resumed from a checkpoint that owed it)."""
        if self._pending_post_step and (self._hook is None or self._pending_owed):
            with torch.no_grad():
                self.after_optimizer_step()
        self._pending_owed = False

    def _step(self) -> None:  # gradient edits of the method
        pass

    def after_optimizer_step(self) -> None:  # direct weight edits after the update
        pass

    def finalize(self) -> None:
        """Apply the edit that follows the last update when no optimizer is attached."""
        self._apply_pending()
        self._pending_post_step = False

    def epoch_end(self) -> None:
        self.epochs += 1

    def importance(self) -> dict[int, torch.Tensor]:
        raise NotImplementedError

    def learned_groups(self) -> list[tuple[TorchGroup, dict[str, Any]]]:
        """What export writes per group: ``(group, {"importance": [...], optional extras})``."""
        self.finalize()
        scores = self.importance()
        return [(g, {"importance": [float(v) for v in scores[g.id]]}) for g in self.groups if g.id in scores]

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Checkpoint state. ``pending_post_step``: the last update's edit is still owed (only
        without an attached optimizer; with one, the hook has applied it)."""
        pending = self._pending_post_step and (self._hook is None or self._pending_owed)
        return {"name": self.name, "steps": self.steps, "epochs": self.epochs,
                "group_ids": [g.id for g in self.groups], "pending_post_step": bool(pending),
                "extra": self._extra_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("name") != self.name:
            raise UsageError(f"checkpoint holds {state.get('name')!r} state, not {self.name!r}")
        if list(state["group_ids"]) != [g.id for g in self.groups]:
            raise UsageError("checkpoint was written for other channel groups; rebuild with the same model")
        self.steps, self.epochs = int(state["steps"]), int(state["epochs"])
        self._pending_post_step = self._pending_owed = bool(state.get("pending_post_step", False))
        self._load_extra_state(state["extra"])

    def _extra_state(self) -> dict[str, Any]:
        return {}

    def _load_extra_state(self, extra: dict[str, Any]) -> None:
        pass


# ---------------------------------------------------------------------- hyperparameter checks


def check_range(name: str, value: Any, *, low: float | None = None, high: float | None = None,
                low_open: bool = False, high_open: bool = False) -> None:
    """Raise ``ValueError`` unless ``value`` lies in the interval (NaN never does).

    ``value`` is one number or ``{group_id: number}`` (per-group hyperparameters); every number is
    checked. The message names the parameter, the allowed range and the offending value.
    """
    values = value.items() if isinstance(value, dict) else [(None, value)]
    for key, v in values:
        x = float(v)
        ok = not math.isnan(x)
        if ok and low is not None:
            ok = x > low if low_open else x >= low
        if ok and high is not None:
            ok = x < high if high_open else x <= high
        if not ok:
            where = name if key is None else f"{name}[{key!r}]"
            raise ValueError(f"{where} must be {_interval(low, high, low_open, high_open)}, got {v!r}")


def _interval(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    if high is None:
        return f"{'>' if low_open else '>='} {low:g}"
    if low is None:
        return f"{'<' if high_open else '<='} {high:g}"
    return f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"


# ---------------------------------------------------------------------- per-channel helpers


def channel_sum(g: TorchGroup, slices: Iterable[ParamSlice], fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Sum over slices of ``fn(rows).sum(1)``: a ``[size]`` float64 tensor."""
    total = torch.zeros(g.size, dtype=torch.float64)
    for s in slices:
        total += fn(s.rows(g.size).double()).sum(1).cpu()
    return total


def channel_count(g: TorchGroup, slices: Iterable[ParamSlice]) -> int:
    return sum(s.rows(g.size).shape[1] for s in slices)


def l1(g: TorchGroup, slices: Iterable[ParamSlice]) -> torch.Tensor:
    return channel_sum(g, slices, torch.abs)


def l2(g: TorchGroup, slices: Iterable[ParamSlice]) -> torch.Tensor:
    return channel_sum(g, slices, torch.square).sqrt()


def zero_channels(g: TorchGroup, slices: Iterable[ParamSlice], drop: torch.Tensor, *, grads: bool = True) -> None:
    """Zero channels where ``drop`` is True, in the tensors and (optionally) their gradients."""
    keep = (~drop).to(torch.float64)
    for s in slices:
        s.scale_channels(g.size, keep)
        if grads and s.tensor.grad is not None:
            s.scale_channels(g.size, keep, s.tensor.grad)


def lowest(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Boolean mask of the ``count`` lowest scores (ties broken by index, deterministic)."""
    mask = torch.zeros(scores.numel(), dtype=torch.bool)
    if count > 0:
        order = torch.argsort(scores, stable=True)
        mask[order[:count]] = True
    return mask
