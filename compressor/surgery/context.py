"""What a rule's ``rewrite`` sees: old and new shapes, kept positions, and safe edit helpers."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from compressor.analysis.groups import Analysis
from compressor.analysis.layout import kept_count, positions
from compressor.ir.graph import node_attr


class SurgeryContext:
    def __init__(self, analysis: Analysis, keep: dict[int, list[int]], model: onnx.ModelProto, opset: int):
        self.analysis = analysis
        self.index = analysis.index
        self.table = analysis.ctx.table
        self.keep = keep
        self.model = model
        self.opset = opset
        self._kept_cache: dict[tuple[str, int], list[int] | None] = {}
        self._shape_cache: dict[str, tuple[int, ...]] = {}
        # names taken: the input model's initializers (apply_plan adds them to ``model`` after this)
        self._names = ({t.name for t in analysis.index.model.graph.initializer}
                       | {t.name for t in model.graph.initializer} | {o for n in model.graph.node for o in n.output})
        self._counter = 0
        #: constants an input was pointed away from (replace_input): dropped when nothing reads them
        self.replaced: set[str] = set()

    # ---- reading -----------------------------------------------------------
    def kept(self, tensor: str, axis: int) -> list[int] | None:
        key = (tensor, axis)
        if key not in self._kept_cache:
            lay = self.analysis.ctx.layout_map.get(tensor, {}).get(axis)
            self._kept_cache[key] = None if lay is None else positions(self.table, lay, self.keep)
        return self._kept_cache[key]

    def old_shape(self, tensor: str) -> tuple[int, ...]:
        return self.index.shape(tensor)

    def new_shape(self, tensor: str) -> tuple[int, ...]:
        """The tensor's shape after the plan: each axis with a layout shrinks to its kept count
        (counted from the layout, without listing the kept positions)."""
        cached = self._shape_cache.get(tensor)
        if cached is not None:
            return cached
        shape = list(self.index.shape(tensor))
        for ax, lay in self.analysis.ctx.layout_map.get(tensor, {}).items():
            n = kept_count(self.table, lay, self.keep)
            if n is not None:
                shape[ax] = n
        out = self._shape_cache[tensor] = tuple(shape)
        return out

    def value(self, name: str) -> np.ndarray | None:
        return self.index.value(name)

    def rank(self, name: str) -> int | None:
        return self.index.rank(name)

    def is_const(self, name: str) -> bool:
        return self.index.is_const(name)

    attr = staticmethod(node_attr)

    # ---- editing -----------------------------------------------------------
    def set_attr(self, node: onnx.NodeProto, name: str, value) -> None:
        self.remove_attr(node, name)
        node.attribute.append(helper.make_attribute(name, value))

    @staticmethod
    def remove_attr(node: onnx.NodeProto, name: str) -> None:
        for i, a in enumerate(node.attribute):
            if a.name == name:
                del node.attribute[i]
                return

    def _fresh(self, base: str) -> str:
        while True:
            self._counter += 1
            name = f"{base}__pruned{self._counter}"
            if name not in self._names:
                self._names.add(name)
                return name

    def replace_input(self, node: onnx.NodeProto, k: int, value: np.ndarray) -> None:
        """Point input k of ``node`` at a new initializer (never edits a possibly shared one)."""
        old = self.index.value(node.input[k]) if node.input[k] else None
        if old is not None:
            value = np.asarray(value).astype(old.dtype)
        name = self._fresh(node.input[k] or (node.name or node.op_type) + f"_in{k}")
        self.model.graph.initializer.append(numpy_helper.from_array(np.asarray(value), name))
        if node.input[k]:
            self.replaced.add(node.input[k])
        node.input[k] = name

    def add_input(self, node: onnx.NodeProto, value: np.ndarray) -> None:
        node.input.append("")
        self.replace_input(node, len(node.input) - 1, value)
