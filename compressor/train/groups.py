"""Coupled channel groups on the torch side, taken from the project's ONNX dependency analysis.

There is one dependency analysis in the project (``compressor.api.analyze`` on an ONNX graph). This
module exports the torch model to ONNX in memory with parameter names preserved, runs that analysis
and maps every analysis group member (an initializer name + axis) back to the torch parameter or
buffer of the same name. There is deliberately no torch-side tracer.

Export facts this relies on (measured with torch 2.13, legacy TorchScript exporter, ``dynamo=False``):

- ``training=TrainingMode.TRAINING, do_constant_folding=False`` keeps every ``BatchNormalization``
  node and names each initializer after its ``state_dict`` key (``layer1.0.bn1.running_mean``...);
  ``num_batches_tracked`` is dropped (it is not a channel tensor).
- Tracing runs ``forward`` once, which in train mode updates BN running statistics: we snapshot and
  restore all buffers, the RNG state and every module's ``training`` flag around the export.
- ``TrainingMode.EVAL`` deduplicates initializers with equal values (freshly initialised BN
  gammas/betas) behind ``Identity`` nodes; :func:`export_proto` undoes that, so names survive in both
  modes.
- Some parameters reach their op through a view (``PReLU.weight`` goes through ``Unsqueeze``): a
  member whose tensor is the output of such a view of a parameter is mapped back to the parameter
  when the parameter has a single non-singleton axis. Members that are ONNX ``Constant`` nodes (a
  literal in ``forward``) have no torch tensor and are recorded in ``TorchGroup.notes``.

Users may also build groups by hand with :func:`make_group` (e.g. to restrict a regularizer).
"""

from __future__ import annotations

import contextlib
import io
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import torch
from torch import nn

PRODUCER, CONSUMER, PARAM = "producer", "consumer", "param"
ROLES = (PRODUCER, CONSUMER, PARAM)

#: Ops through which an initializer reaches its consumer unchanged up to singleton axes.
_VIEW_OPS = {"Identity", "Unsqueeze", "Squeeze", "Reshape", "Flatten", "Cast"}


@dataclass(eq=False)
class ParamSlice:
    """The positions of one torch tensor that belong to a channel group.

    Channel ``c`` of the group occupies ``[offset + c*inner, offset + (c+1)*inner)`` along ``dim``.
    ``kind`` says what the tensor is: ``kernel`` (conv/linear weight), ``bias``, ``bn_weight``,
    ``bn_bias``, ``bn_stat`` (running mean/var), ``gate`` or ``other``.
    """

    name: str
    tensor: torch.Tensor
    dim: int
    offset: int
    inner: int
    role: str
    kind: str = "other"

    @property
    def trainable(self) -> bool:
        return isinstance(self.tensor, nn.Parameter) and self.tensor.requires_grad

    def _narrow(self, t: torch.Tensor, size: int) -> torch.Tensor:
        return t.narrow(self.dim, self.offset, size * self.inner)

    def rows(self, size: int, source: torch.Tensor | None = None) -> torch.Tensor:
        """The slice as a ``[size, n]`` matrix (row c = everything channel c owns); a copy-or-view."""
        t = self.tensor.detach() if source is None else source
        return self._narrow(t, size).movedim(self.dim, 0).reshape(size, -1)

    def grad_rows(self, size: int) -> torch.Tensor | None:
        g = self.tensor.grad
        return None if g is None else self.rows(size, g)

    def write_rows(self, size: int, values: torch.Tensor, target: torch.Tensor | None = None) -> None:
        """Write a ``[size, n]`` matrix back into the tensor (or into ``target``, e.g. its grad)."""
        t = self.tensor.detach() if target is None else target
        view = self._narrow(t, size)
        moved_shape = view.movedim(self.dim, 0).shape
        view.copy_(values.reshape(moved_shape).movedim(0, self.dim))

    def write_grad_rows(self, size: int, values: torch.Tensor) -> None:
        if self.tensor.grad is not None:
            self.write_rows(size, values, self.tensor.grad)

    def scale_channels(self, size: int, factor: torch.Tensor, target: torch.Tensor | None = None) -> None:
        """Multiply channel c by ``factor[c]`` in place (on the tensor, or on ``target``)."""
        rows = self.rows(size, self.tensor.detach() if target is None else target)
        self.write_rows(size, rows * factor.to(rows).reshape(size, 1), target)


@dataclass(eq=False)
class TorchGroup:
    """A coupled channel group: all torch slices that are kept or removed together."""

    id: int
    size: int
    prunable: bool
    slices: list[ParamSlice]
    reasons: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def select(self, role: str | None = None, kinds: Iterable[str] | None = None,
               trainable: bool | None = None) -> list[ParamSlice]:
        kinds = None if kinds is None else set(kinds)
        out = []
        for s in self.slices:
            if role is not None and s.role != role:
                continue
            if kinds is not None and s.kind not in kinds:
                continue
            if trainable is not None and s.trainable != trainable:
                continue
            out.append(s)
        return out

    def channel_slices(self, kinds: Iterable[str] | None = None, trainable: bool | None = None) -> list[ParamSlice]:
        """Slices that belong to the channel itself (producer or param role, not consumers).

        The analysis reports BN parameters as ``param`` (per-channel constants on the path), conv
        biases as ``producer``; methods that need "the channel's own tensors" select both.
        """
        return [s for s in self.select(None, kinds, trainable) if s.role in (PRODUCER, PARAM)]

    @property
    def producer_kernels(self) -> list[ParamSlice]:
        """Conv/linear weights that create the channels (the "filters" of the papers)."""
        return self.select(PRODUCER, ("kernel",))

    @property
    def trainable_slices(self) -> list[ParamSlice]:
        return [s for s in self.slices if s.trainable]

    def tensor_names(self) -> list[str]:
        return [s.name for s in self.slices]


# --------------------------------------------------------------------------- tensor lookup


def named_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer by its ``state_dict`` name (tied tensors under every name)."""
    out: dict[str, torch.Tensor] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        out[name] = p
    for name, b in model.named_buffers(remove_duplicate=False):
        out[name] = b
    return out


def tensor_kind(model: nn.Module, name: str) -> str:
    """Classify a named tensor by the module that owns it (no tracing: just its type)."""
    module_name, _, attr = name.rpartition(".")
    try:
        module = model.get_submodule(module_name) if module_name else model
    except AttributeError:
        return "other"
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return {"weight": "bn_weight", "bias": "bn_bias", "running_mean": "bn_stat",
                "running_var": "bn_stat"}.get(attr, "other")
    if attr == "gate":
        return "gate"
    weight = getattr(module, "weight", None)
    if attr == "weight" and isinstance(weight, torch.Tensor) and weight.ndim >= 2:
        return "kernel"
    if attr == "bias" and isinstance(weight, torch.Tensor) and weight.ndim >= 2:
        return "bias"
    return "other"


def make_group(model: nn.Module, id: int, producers: Sequence[Any] = (), consumers: Sequence[Any] = (),
               params: Sequence[Any] = (), *, size: int | None = None, prunable: bool = True) -> TorchGroup:
    """Build a group by hand from ``state_dict`` names.

    Each entry is a name or a tuple ``(name, dim[, offset[, inner]])``. Default dims: producers 0,
    consumers 1 (0 for 1-D tensors), params: their single non-singleton axis. ``size`` defaults to
    what the first producer holds.
    """
    tensors = named_tensors(model)
    slices: list[ParamSlice] = []
    for role, entries in ((PRODUCER, producers), (CONSUMER, consumers), (PARAM, params)):
        for entry in entries:
            name, *rest = (entry,) if isinstance(entry, str) else tuple(entry)
            if name not in tensors:
                raise KeyError(f"{name!r} is not a parameter or buffer of the model")
            t = tensors[name]
            if rest:
                dim = rest[0]
            elif role == PRODUCER or t.ndim == 1:
                dim = 0
            elif role == CONSUMER:
                dim = 1
            else:
                dim = _single_axis(tuple(t.shape))
            offset = rest[1] if len(rest) > 1 else 0
            inner = rest[2] if len(rest) > 2 else 1
            slices.append(ParamSlice(name, t, dim, offset, inner, role, tensor_kind(model, name)))
    if size is None:
        if not slices:
            raise ValueError("a group needs at least one member or an explicit size")
        first = slices[0]
        size = (first.tensor.shape[first.dim] - first.offset) // first.inner
    for s in slices:
        if s.offset + size * s.inner > s.tensor.shape[s.dim]:
            raise ValueError(f"{s.name}: {size} channels x {s.inner} from {s.offset} exceed axis {s.dim}")
    return TorchGroup(id=id, size=size, prunable=prunable, slices=slices)


def _single_axis(shape: tuple[int, ...]) -> int:
    big = [i for i, n in enumerate(shape) if n != 1]
    return big[0] if len(big) == 1 else (len(shape) - 1 if not big else big[0])


# --------------------------------------------------------------------------- ONNX round trip


@contextlib.contextmanager
def preserved_state(model: nn.Module):
    """Restore buffers, RNG state and train/eval flags after a tracing pass."""
    buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
    modes = {m: m.training for m in model.modules()}
    rng = torch.get_rng_state()
    try:
        yield
    finally:
        torch.set_rng_state(rng)
        live = dict(model.named_buffers())
        with torch.no_grad():
            for n, b in buffers.items():
                if n in live:
                    live[n].copy_(b)
        for m, flag in modes.items():
            m.training = flag


def export_proto(model: nn.Module, example_input: Any, *, training: bool = True, opset: int = 17,
                 input_names: Sequence[str] | None = None, output_names: Sequence[str] | None = None,
                 dynamic_batch: bool = False):
    """Export ``model`` to an in-memory ``onnx.ModelProto`` whose initializers keep torch names.

    ``training=True`` (for the analysis) keeps BN nodes in training form; ``training=False`` gives
    the inference graph (``export.py``). The model's state is left exactly as it was.
    """
    import onnx

    args = example_input if isinstance(example_input, tuple) else (example_input,)
    if training:
        # BatchNorm in training mode needs more than one value per channel: a batch of 1 fails on a
        # network whose last feature map is 1x1 (VGG on 28x28). Channel groups do not depend on it.
        args = tuple(a.expand(2, *a.shape[1:]).contiguous() if isinstance(a, torch.Tensor) and a.dim() > 1
                     and a.shape[0] == 1 else a for a in args)
    mode = torch.onnx.TrainingMode.TRAINING if training else torch.onnx.TrainingMode.EVAL
    kwargs: dict[str, Any] = {}
    if input_names:
        kwargs["input_names"] = list(input_names)
    if output_names:
        kwargs["output_names"] = list(output_names)
    if dynamic_batch:
        names = list(input_names or [f"input_{i}" for i in range(len(args))])
        kwargs["input_names"] = names
        outs = list(output_names or ["output"])
        kwargs["output_names"] = outs
        kwargs["dynamic_axes"] = {n: {0: "batch"} for n in names + outs}
    buf = io.BytesIO()
    with preserved_state(model), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if not training:
            model.eval()
        torch.onnx.export(model, args, buf, dynamo=False, training=mode, do_constant_folding=False,
                          opset_version=opset, **kwargs)
    proto = onnx.load_from_string(buf.getvalue())
    undo_initializer_dedup(proto)
    return proto


def undo_initializer_dedup(proto) -> int:
    """Replace ``Identity(initializer) -> name`` nodes by a copy of the initializer named ``name``.

    The TorchScript exporter merges equal-valued initializers in eval mode; this restores one
    initializer per torch tensor so names map one to one. Returns the number of restored tensors.
    """
    import onnx

    graph = proto.graph
    inits = {i.name: i for i in graph.initializer}
    keep, restored = [], 0
    for node in graph.node:
        if node.op_type == "Identity" and node.input[0] in inits and node.output[0] not in inits:
            copy = onnx.TensorProto()
            copy.CopyFrom(inits[node.input[0]])
            copy.name = node.output[0]
            graph.initializer.append(copy)
            inits[copy.name] = copy
            restored += 1
        else:
            keep.append(node)
    if restored:
        del graph.node[:]
        graph.node.extend(keep)
    return restored


def from_model(model: nn.Module, example_input: Any, *, opset: int = 17, analysis: Any = None) -> list[TorchGroup]:
    """Coupled channel groups of ``model``, from the project's ONNX analysis.

    ``analysis`` may be passed when it was computed already (it must come from
    :func:`export_proto` of the same model, so that tensor names are torch names).
    """
    proto = export_proto(model, example_input, training=True, opset=opset)
    if analysis is None:
        try:
            from compressor.api import analyze
        except ImportError as exc:
            raise ImportError(
                "compressor.api.analyze is not available; pass explicit groups (see make_group)"
            ) from exc
        analysis = analyze(proto)
    return map_analysis(model, proto, analysis)


def map_analysis(model: nn.Module, proto, analysis) -> list[TorchGroup]:
    """Turn analysis groups (ONNX tensor names) into :class:`TorchGroup` (torch tensors)."""
    tensors = named_tensors(model)
    producers_of = {out: node for node in proto.graph.node for out in node.output}
    shapes = {i.name: tuple(i.dims) for i in proto.graph.initializer}
    groups: list[TorchGroup] = []
    for g in analysis.groups:
        slices: list[ParamSlice] = []
        notes: list[str] = []
        for m in g.members:
            resolved = _resolve_member(m.tensor, m.axis, tensors, producers_of, shapes)
            if isinstance(resolved, str):
                notes.append(resolved)
                continue
            name, dim = resolved
            t = tensors[name]
            if m.offset + g.size * m.inner > t.shape[dim]:
                notes.append(f"{m.tensor}: axis {dim} of {tuple(t.shape)} is shorter than the group; skipped")
                continue
            slices.append(ParamSlice(name, t, dim, m.offset, m.inner, m.role, tensor_kind(model, name)))
        groups.append(TorchGroup(id=g.id, size=g.size, prunable=bool(g.prunable), slices=slices,
                                 reasons=list(getattr(g, "reasons", []) or []), notes=notes))
    return groups


def _resolve_member(onnx_name: str, axis: int, tensors: dict[str, torch.Tensor], producers_of: dict,
                    shapes: dict[str, tuple[int, ...]]) -> tuple[str, int] | str:
    """Map an ONNX constant + axis to a torch tensor name + dim, or return why it cannot be."""
    if onnx_name in tensors:
        t = tensors[onnx_name]
        onnx_shape = shapes.get(onnx_name, tuple(t.shape))
        if onnx_shape == tuple(t.shape):
            return onnx_name, axis
        return _match_single_axis(onnx_name, onnx_name, axis, t, onnx_shape)
    name, seen = onnx_name, 0
    while name not in tensors and seen < 8:
        node = producers_of.get(name)
        if node is None:
            return f"{onnx_name}: not a torch parameter or buffer; skipped"
        if node.op_type == "Constant":
            return f"{onnx_name}: an ONNX Constant (a literal in forward), not trainable; skipped"
        if node.op_type not in _VIEW_OPS or not node.input:
            return f"{onnx_name}: computed by {node.op_type}, not a view of a parameter; skipped"
        name, seen = node.input[0], seen + 1
    if name not in tensors:
        return f"{onnx_name}: no torch tensor found behind it; skipped"
    return _match_single_axis(onnx_name, name, axis, tensors[name], None)


def _match_single_axis(onnx_name: str, torch_name: str, axis: int, t: torch.Tensor,
                       onnx_shape: tuple[int, ...] | None) -> tuple[str, int] | str:
    big = [i for i, n in enumerate(t.shape) if n != 1]
    if t.ndim == 1:
        return torch_name, 0
    if len(big) == 1:
        return torch_name, big[0]
    return f"{onnx_name}: a reshaped view of {torch_name} {tuple(t.shape)}; axis {axis} not mappable; skipped"
