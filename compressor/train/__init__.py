"""Training-side compression: pruning regularizers, a reference trainer and ONNX export (needs torch).

Everything here needs the ``[train]`` extra (torch). The rest of ``compressor`` never imports this
package, so the CLI keeps working without torch.

Typical loop (three added lines)::

    reg = regularizers.create("csgd", model, example_input, optimizer=opt)   # 1
    for x, y in loader:
        opt.zero_grad(); loss_fn(model(x), y).backward()
        reg.step()                                                              # 2
        opt.step()
    scores = reg.importance()                                                   # 3
    export(model, example_input, "model.onnx", regularizer=reg)

After pruning, ``compressor.train.finetune`` fine-tunes the plan in torch (the dense model under the
plan's masks, so plans that remove groups whole work too) and the same plan prunes the result.
"""

from __future__ import annotations

try:
    import torch  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "compressor.train needs PyTorch: install the training extra with `pip install compressor[train]`"
    ) from exc

from compressor.train.groups import ParamSlice, TorchGroup, from_model, make_group

__all__ = ["ParamSlice", "TorchGroup", "from_model", "make_group"]
