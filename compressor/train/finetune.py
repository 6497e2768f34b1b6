"""Fine-tune a pruning plan in torch: the dense model under the plan's masks, then the ONNX pruned again.

A plan's pruned model can be rebuilt as smaller torch modules only where every group keeps a
channel: torch has no convolution or BatchNorm with zero channels, so a plan that removes groups
whole (``--drop-layers``) has no such form. This route keeps the dense architecture instead and
makes it compute exactly what the pruned model computes. It needs a torch model whose state-dict
names are the ONNX initializer names (``compressor.train.export`` writes them so)::

    res = api.prune("model.onnx", target_latency=4.0, drop_layers=True, output="small.onnx")
    load_onnx_weights(model, onnx.load("model.onnx"))
    masks = PlanMasks(model, res.report["plan"])
    settle_constant_bn(model, x_batch)
    masks.attach(optimizer)
    ...  # train as usual
    settle_constant_bn(model, x_batch, keep="train")
    proto = onnx.load("model.onnx"); store_onnx_weights(model, proto); onnx.save(proto, "tuned.onnx")
    api.prune("tuned.onnx", plan_in=res.plan, output="small_tuned.onnx")  # verified as always

0. ``load_onnx_weights(model, proto)``: the ONNX weights into the torch model, by name.
1. ``PlanMasks(model, slices)``: every tensor the report's ``plan`` slices is zeroed outside its
   kept indices (weights, biases, BN affine), and ``reapply()`` zeroes them again after each
   optimizer step. A removed channel is then exactly 0 wherever it is produced and no consumer
   reads it (its input columns are 0 too), which is the masked original that compressor's oracle
   compares a pruned model with.
2. ``settle_constant_bn(model, x)``: a branch whose input group was removed whole feeds its last
   BatchNorm a constant (0, or the conv's bias). In eval mode that BN outputs
   ``beta + (c - running_mean) * gamma / sqrt(running_var + eps)``, in train mode only ``beta``.
   For each BN channel whose input is constant on ``x``, the eval output is moved into ``beta``
   and the running mean set to the constant, so that training and inference agree and fine-tuning
   starts from the pruned model's own outputs (the branch's constant stays trainable through beta).
3. After training, ``store_onnx_weights(model, proto)`` writes the weights back into the dense ONNX
   (initializers named like state-dict entries, as ``compressor.train.export`` writes them), and the
   same plan prunes it: compressor's surgery and oracle run on the fine-tuned weights, and the
   caller checks the pruned ONNX against the masked torch model.
"""

from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn


def load_onnx_weights(model: nn.Module, proto: onnx.ModelProto) -> list[str]:
    """Copy every initializer named like a state-dict entry into ``model`` (shapes must agree);
    returns the state-dict keys that no initializer supplied (``num_batches_tracked`` aside)."""
    inits = {i.name: i for i in proto.graph.initializer}
    state = model.state_dict()
    missing = []
    new = {}
    for key, value in state.items():
        if key in inits:
            arr = numpy_helper.to_array(inits[key])
            if tuple(arr.shape) != tuple(value.shape):
                raise ValueError(f"{key}: ONNX shape {arr.shape} != torch {tuple(value.shape)}")
            new[key] = torch.from_numpy(np.array(arr)).to(value.dtype)
        else:
            new[key] = value
            if not key.endswith("num_batches_tracked"):
                missing.append(key)
    model.load_state_dict(new)
    return missing


class PlanMasks:
    """0/1 masks for the parameters a plan slices (buffers are left: no kept channel reads them)."""

    def __init__(self, model: nn.Module, slices: list[dict]):
        params = dict(model.named_parameters())
        buffers = dict(model.named_buffers())
        self.masks: dict[str, tuple[nn.Parameter, torch.Tensor]] = {}
        unknown = []
        for s in slices:
            name = s["tensor"]
            if name not in params:
                if name not in buffers:
                    unknown.append(name)
                continue
            p = params[name]
            mask = self.masks[name][1] if name in self.masks else torch.ones_like(p, dtype=torch.bool)
            axis = int(s["axis"])
            keep = torch.zeros(p.shape[axis], dtype=torch.bool)
            keep[torch.as_tensor([int(k) for k in s["kept"]], dtype=torch.long)] = True
            shape = [1] * p.dim()
            shape[axis] = -1
            self.masks[name] = (p, mask & keep.view(shape))
        if unknown:
            raise KeyError(f"plan slices tensors that the torch model lacks: {sorted(set(unknown))[:5]}")
        self.reapply()

    @torch.no_grad()
    def reapply(self) -> None:
        for p, mask in self.masks.values():
            p.mul_(mask)

    def removed(self) -> int:
        """Parameter entries held at 0."""
        return int(sum((~m).sum() for _, m in self.masks.values()))

    def attach(self, opt: torch.optim.Optimizer):
        """Zero the masked entries again after every step of ``opt`` (momentum and weight decay
        would otherwise move them). Returns the hook's handle."""
        return opt.register_step_post_hook(lambda *_: self.reapply())


@torch.no_grad()
def settle_constant_bn(model: nn.Module, x: torch.Tensor, keep: str = "eval") -> int:
    """Make train-mode and eval-mode BatchNorm agree on the channels whose input is constant on
    ``x``; returns how many channels were settled. ``keep="eval"`` (before training) keeps the
    eval-mode output (moved into ``beta``, see the module docstring); ``keep="train"`` (after
    training) keeps the train-mode output, ``beta``: the running mean is set to the constant again
    (weight decay on a bias before the BN may have moved the constant while training could not see
    it)."""
    if keep not in ("eval", "train"):
        raise ValueError(f"keep must be 'eval' or 'train', not {keep!r}")
    seen: dict[nn.Module, tuple[torch.Tensor, torch.Tensor]] = {}

    def hook(module, args):
        inp = args[0].detach()
        dims = [d for d in range(inp.dim()) if d != 1]
        seen[module] = (inp.amin(dim=dims), inp.amax(dim=dims))

    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    handles = [m.register_forward_pre_hook(hook) for m in bns]
    was = model.training
    model.eval()
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    settled = 0
    for m in bns:
        if m not in seen or m.running_mean is None:
            continue
        lo, hi = seen[m]
        const = hi == lo
        if not bool(const.any()):
            continue
        c = lo[const]
        if keep == "eval":
            gamma = m.weight[const] if m.weight is not None else torch.ones_like(c)
            out = (c - m.running_mean[const]) * gamma / torch.sqrt(m.running_var[const] + m.eps)
            if m.bias is None:
                raise ValueError("a BatchNorm without a bias cannot hold a settled constant")
            m.bias[const] += out
        m.running_mean[const] = c
        settled += int(const.sum())
    return settled


def store_onnx_weights(model: nn.Module, proto: onnx.ModelProto) -> int:
    """Write ``model``'s state into ``proto``'s initializers of the same names and shapes (in place);
    returns how many were written. The inverse of ``load_onnx_weights``."""
    state = model.state_dict()
    written = 0
    for i, init in enumerate(proto.graph.initializer):
        if init.name not in state:
            continue
        value = state[init.name].detach().cpu().numpy()
        if tuple(init.dims) != tuple(value.shape):
            raise ValueError(f"{init.name}: ONNX shape {tuple(init.dims)} != torch {value.shape}")
        dtype = onnx.helper.tensor_dtype_to_np_dtype(init.data_type)
        proto.graph.initializer[i].CopyFrom(numpy_helper.from_array(value.astype(dtype), init.name))
        written += 1
    return written
