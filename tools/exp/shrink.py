"""Carry an ONNX pruning plan back to torch: load exported weights, then slice modules in place.

Route (the simplest correct one for models exported with ``compressor.train.export``, which keeps
torch parameter names as ONNX initializer names):

1. ``compressor.train.finetune.load_onnx_weights(model, proto)``: copy every initializer whose name is a state-dict key into
   a *plain* model of the same architecture (this also absorbs gates folded into BN at export);
2. ``shrink(model, slices)``: apply the report's ``plan`` list (``{"tensor", "axis", "kept"}``) to
   those tensors and rebuild each Conv/BatchNorm/Linear with the new sizes (depthwise convs keep
   ``groups == channels``).

The result computes what the pruned ONNX computes; ``runner`` checks that on real images.
"""

from __future__ import annotations

import torch
from torch import nn


def _sliced(tensor: torch.Tensor, cuts: list[tuple[int, list[int]]]) -> torch.Tensor:
    for axis, kept in cuts:
        tensor = tensor.index_select(axis, torch.as_tensor(kept, dtype=torch.long))
    return tensor.contiguous()


def shrink(model: nn.Module, slices: list[dict]) -> nn.Module:
    """Apply plan slices to ``model`` in place (and return it); unknown tensors raise."""
    by_tensor: dict[str, list[tuple[int, list[int]]]] = {}
    for s in slices:
        by_tensor.setdefault(s["tensor"], []).append((int(s["axis"]), [int(k) for k in s["kept"]]))
    state = model.state_dict()
    unknown = sorted(set(by_tensor) - set(state))
    if unknown:
        raise KeyError(f"plan slices tensors that the torch model lacks: {unknown[:5]}")
    for name, module in list(model.named_modules()):
        prefix = f"{name}." if name else ""
        own = {k: v for k, v in module.named_parameters(recurse=False)} | \
              {k: v for k, v in module.named_buffers(recurse=False) if v is not None}
        cut = {k: by_tensor[prefix + k] for k in own if prefix + k in by_tensor}
        if not cut:
            continue
        for k, v in own.items():
            if k in cut:
                new = _sliced(v.detach(), cut[k])
                if isinstance(v, nn.Parameter):
                    setattr(module, k, nn.Parameter(new, requires_grad=v.requires_grad))
                else:
                    module.register_buffer(k, new)
        _fix_attributes(module)
    return model


def _fix_attributes(module: nn.Module) -> None:
    if isinstance(module, nn.modules.conv._ConvNd):
        w = module.weight
        depthwise = module.groups > 1 and module.groups == module.in_channels
        module.out_channels = w.shape[0]
        if depthwise:
            module.groups = w.shape[0]
            module.in_channels = w.shape[0]
        else:
            module.in_channels = w.shape[1] * module.groups
    elif isinstance(module, nn.modules.batchnorm._BatchNorm):
        module.num_features = module.weight.shape[0] if module.weight is not None else module.running_mean.shape[0]
    elif isinstance(module, nn.Linear):
        module.out_features, module.in_features = module.weight.shape
