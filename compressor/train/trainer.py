"""A reference training loop: regularizer hooks, evaluation, tqdm progress, resumable checkpoints.

Per batch: ``zero_grad -> forward -> loss -> backward -> (AMP: unscale) -> regularizer.step() ->
optimizer.step()``; per epoch: ``regularizer.epoch_end()``, ``scheduler.step()``, evaluation, and a
checkpoint (``checkpoint_dir/last.pt``). Checkpoints hold only tensors and plain Python values
(model, optimizer, scheduler, regularizer state, RNG state, history) and are loaded with
``torch.load(weights_only=True)``; a resumed run ends with the same weights as an uninterrupted one
when the data order is deterministic.

Data: any iterable of ``(inputs, targets)`` batches (a ``DataLoader`` or a list).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from torch import nn
from tqdm.auto import tqdm


def accuracy(output: torch.Tensor, target: torch.Tensor) -> float:
    """Top-1 accuracy of a batch of logits."""
    return float((output.argmax(1) == target).float().mean())


class Trainer:
    """Train ``model`` with an optional pruning regularizer; evaluate and checkpoint every epoch."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: Callable,
                 train_data: Iterable, *, val_data: Iterable | None = None, regularizer=None,
                 scheduler: Any = None, epochs: int = 1, device: str | torch.device | None = None,
                 checkpoint_dir: str | Path | None = None, metric: Callable = accuracy, progress: bool = True,
                 grad_scaler: Any = None, max_steps_per_epoch: int | None = None) -> None:
        self.model, self.optimizer, self.loss_fn = model, optimizer, loss_fn
        self.train_data, self.val_data = train_data, val_data
        self.regularizer, self.scheduler, self.epochs = regularizer, scheduler, int(epochs)
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.metric, self.progress, self.grad_scaler = metric, progress, grad_scaler
        self.max_steps_per_epoch = max_steps_per_epoch
        self.epoch, self.global_step = 0, 0
        self.history: list[dict[str, float]] = []
        if regularizer is not None and getattr(regularizer, "optimizer", None) is None:
            regularizer.attach(optimizer)

    def _to_device(self, batch: Any) -> Any:
        if isinstance(batch, torch.Tensor):
            return batch.to(self.device, non_blocking=True)
        if isinstance(batch, (list, tuple)):
            return type(batch)(self._to_device(b) for b in batch)
        return batch

    # ------------------------------------------------------------------ loops
    def train_epoch(self) -> float:
        self.model.train()
        total, count = 0.0, 0
        bar = tqdm(self.train_data, desc=f"epoch {self.epoch + 1}/{self.epochs}", disable=not self.progress,
                   leave=False)
        for i, batch in enumerate(bar):
            if self.max_steps_per_epoch is not None and i >= self.max_steps_per_epoch:
                break
            x, y = self._to_device(batch[0]), self._to_device(batch[1])
            self.optimizer.zero_grad(set_to_none=True)
            loss = self.loss_fn(self.model(x), y)
            if self.grad_scaler is not None:
                self.grad_scaler.scale(loss).backward()
                self.grad_scaler.unscale_(self.optimizer)  # regularizers read unscaled gradients
            else:
                loss.backward()
            if self.regularizer is not None:
                self.regularizer.step()
            if self.grad_scaler is not None:
                self.grad_scaler.step(self.optimizer)
                self.grad_scaler.update()
            else:
                self.optimizer.step()
            self.global_step += 1
            value = float(loss.detach())
            if not math.isfinite(value):
                raise FloatingPointError(f"loss became {value} at step {self.global_step}; lower the learning rate")
            n = int(y.shape[0]) if isinstance(y, torch.Tensor) and y.ndim else 1
            total, count = total + value * n, count + n
            bar.set_postfix(loss=f"{total / count:.4f}")
        return total / max(count, 1)

    @torch.no_grad()
    def evaluate(self, data: Iterable | None = None) -> dict[str, float]:
        """Mean loss and metric over ``data`` (default: the validation data) in eval mode."""
        data = data if data is not None else self.val_data
        if data is None:
            return {}
        was_training = self.model.training
        self.model.eval()
        loss_sum, metric_sum, count = 0.0, 0.0, 0
        for batch in tqdm(data, desc="eval", disable=not self.progress, leave=False):
            x, y = self._to_device(batch[0]), self._to_device(batch[1])
            out = self.model(x)
            n = int(y.shape[0]) if isinstance(y, torch.Tensor) and y.ndim else 1
            loss_sum += float(self.loss_fn(out, y)) * n
            metric_sum += float(self.metric(out, y)) * n
            count += n
        self.model.train(was_training)
        return {"val_loss": loss_sum / max(count, 1), "val_metric": metric_sum / max(count, 1)}

    def fit(self) -> list[dict[str, float]]:
        """Train from the current epoch to ``epochs``; returns the per-epoch history."""
        while self.epoch < self.epochs:
            t0 = time.perf_counter()
            train_loss = self.train_epoch()
            if self.regularizer is not None:
                self.regularizer.epoch_end()
            if self.scheduler is not None:
                self.scheduler.step()
            self.epoch += 1
            record = {"epoch": float(self.epoch), "train_loss": train_loss, **self.evaluate(),
                      "seconds": time.perf_counter() - t0}
            self.history.append(record)
            if self.checkpoint_dir is not None:
                self.save_checkpoint(self.checkpoint_dir / "last.pt")
        if self.regularizer is not None:
            self.regularizer.finalize()
        return self.history

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "regularizer": self.regularizer.state_dict() if self.regularizer is not None else None,
            "grad_scaler": self.grad_scaler.state_dict() if self.grad_scaler is not None else None,
            "epoch": self.epoch, "global_step": self.global_step, "history": self.history,
            "rng": torch.get_rng_state(),
        }

    def save_checkpoint(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        torch.save(self.state_dict(), tmp)
        tmp.replace(path)  # never leave a half-written checkpoint
        return path

    def load_checkpoint(self, path: str | Path) -> None:
        """Resume from ``path`` (loaded with ``weights_only=True``: no pickled code runs)."""
        state = torch.load(Path(path), map_location=self.device, weights_only=True)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state["scheduler"] is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        if self.regularizer is not None and state["regularizer"] is not None:
            self.regularizer.load_state_dict(state["regularizer"])
        if self.grad_scaler is not None and state["grad_scaler"] is not None:
            self.grad_scaler.load_state_dict(state["grad_scaler"])
        self.epoch, self.global_step = int(state["epoch"]), int(state["global_step"])
        self.history = list(state["history"])
        torch.set_rng_state(state["rng"].cpu())
