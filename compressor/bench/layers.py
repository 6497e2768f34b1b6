"""A latency table of a model's weighted layers, measured on the provider at several channel counts.

Each Conv, ConvTranspose, Gemm and MatMul with a constant weight is a *layer*. Its input and
output channel counts are linear in the widths of the channel groups that flow into them (a
concat input sums several groups), so any plan gives every layer a concrete (cin, cout). The
table measures each distinct layer (same op, attributes and spatial shape: the repeated blocks of a
ResNet are measured once) as a one-node model on the provider, at a grid of channel counts that
are multiples of the plan's channel step, and interpolates bilinearly between them.

Everything else (activations, pooling, adds, reshapes, attention matmuls) is the *rest*: memory-
bound work whose cost follows the number of activation elements it moves. The rest's dense cost is
the model's measured latency minus the layers' dense sum, and it scales with the activation
elements the plan keeps.

With ``--drop-layers`` the table also times, at each residual sum's shape, the constant ``Add`` a
removed block may leave there (``leftover_probe``): where a padded conv reads it, no bias can take
it (surgery/absorb.py), and it runs as a kernel of its own, with layout conversions around it, in
the place of a sum the dense model ran fused into a conv.

``predict(widths)`` is then the model's latency for any widths, in ms. The latency budget planner
(planning/allocate.py) uses it to decide where channels are cheapest to remove per unit of
importance; the whole pruned model is still measured before a plan is accepted.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper

from compressor.analysis.groups import Analysis
from compressor.ir.graph import node_attr

LAYER_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
#: Grid of channel counts per dimension, as fractions of the dense count (rounded to the step).
GRID_FRACTIONS = (0.25, 0.5, 0.75, 1.0)
#: a calibrated layer's time (slope x probe + offset, calibrate.py) never falls below this share of slope x probe
MIN_FIT_SHARE = 0.1

Linear = tuple[float, dict[int, float]]  # constant + sum of coefficient * kept channels of group


def _linear(analysis: Analysis, tensor: str, axis: int, size: int) -> Linear:
    """The channel count of ``tensor`` along ``axis`` as a linear function of group widths."""
    lay = analysis.ctx.layout_map.get(tensor, {}).get(axis)
    if lay is None:
        return float(size), {}
    table = analysis.ctx.table
    coef: dict[int, float] = {}
    const = 0.0
    prunable = {g.id for g in analysis.prunable}
    for g, inner in table.normalize(lay):
        r = table.find(g)
        if r in prunable:
            coef[r] = coef.get(r, 0.0) + inner
        else:
            const += table.size(g) * inner
    return const, coef


def _value(lin: Linear, widths: dict[int, int]) -> float:
    const, coef = lin
    return const + sum(c * widths[g] for g, c in coef.items())


@dataclass
class Layer:
    """One weighted node: how its channel counts follow the groups, and how to build a probe."""

    node: str
    op: str
    cin: Linear
    cout: Linear
    dense_cin: int
    dense_cout: int
    key: tuple  # what makes two layers run alike, apart from their channel counts
    build: Callable[[int, int], onnx.ModelProto]
    depthwise: bool = False
    multiple: int = 1  # a grouped (not depthwise) conv: its channel counts are multiples of its groups

    @property
    def grid_key(self) -> tuple:
        """Layers with the same grid key share one measured grid."""
        return (self.key, self.dense_cin, self.dense_cout)

    def channels(self, widths: dict[int, int]) -> tuple[int, int]:
        cin = int(round(_value(self.cin, widths)))
        return cin, (cin if self.depthwise else int(round(_value(self.cout, widths))))


def _probe_model(node: onnx.NodeProto, inputs: list[tuple[str, list[int], np.ndarray | None]], opset: int
                 ) -> onnx.ModelProto:
    """A one-node model: the data input is a graph input, weights are initializers."""
    graph_inputs, inits = [], []
    for name, shape, value in inputs:
        if value is None:
            graph_inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, shape))
        else:
            inits.append(onnx.numpy_helper.from_array(value.astype(np.float32), name))
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    probe = helper.make_node(node.op_type, [n for n, _, _ in inputs], ["y"])
    probe.attribute.extend(node.attribute)
    graph = helper.make_graph([probe], "layer_probe", graph_inputs, [out], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def _weights(rng: np.random.Generator, shape: list[int]) -> np.ndarray:
    return (rng.standard_normal(shape) * 0.05).astype(np.float32)


def find_layers(analysis: Analysis, opset: int) -> list[Layer]:
    """The weighted layers of the analysed model whose shapes are known."""
    index = analysis.index
    out: list[Layer] = []
    for node in index.nodes:
        if node.op_type not in LAYER_OPS or len(node.input) < 2 or not index.is_const(node.input[1]):
            continue
        x, w = index.shape(node.input[0]), index.shape(node.input[1])
        y = index.shape(node.output[0])
        if not x or not w or not y or any(not isinstance(d, int) or d <= 0 for d in (*x, *w, *y)):
            continue
        label = index.node_label(node)
        has_bias = len(node.input) > 2 and bool(node.input[2])
        op = node.op_type
        attrs = tuple(sorted((a.name, str(helper.get_attribute_value(a))) for a in node.attribute))
        multiple = 1
        if op in ("Conv", "ConvTranspose"):
            group = int(node_attr(node, "group", 1))
            cin_axis_w, cout_axis_w = (1, 0) if op == "Conv" else (0, 1)
            dense_cin, dense_cout = x[1], y[1]
            depthwise = group > 1 and group == dense_cin and op == "Conv" and w[1] == 1 and y[1] == x[1]
            cin = _linear(analysis, node.input[0], 1, dense_cin)
            cout = _linear(analysis, node.output[0], 1, dense_cout)
            key = (op, attrs, tuple(x[2:]), has_bias, depthwise)
            build = _conv_builder(node, x, w, has_bias, group, depthwise, opset, cin_axis_w, cout_axis_w)
            multiple = 1 if depthwise else group
        elif op == "Gemm":
            if node_attr(node, "transA", 0):
                continue
            trans_b = int(node_attr(node, "transB", 0))
            dense_cin, dense_cout = x[1], y[1]
            cin = _linear(analysis, node.input[0], 1, dense_cin)
            cout = _linear(analysis, node.output[0], 1, dense_cout)
            key = (op, attrs, x[0], has_bias)
            build = _gemm_builder(node, x, trans_b, has_bias, opset)
            depthwise = False
        else:  # MatMul with a constant [K, N] weight
            if len(w) != 2 or len(x) < 2:
                continue
            dense_cin, dense_cout = x[-1], y[-1]
            cin = _linear(analysis, node.input[0], len(x) - 1, dense_cin)
            cout = _linear(analysis, node.output[0], len(y) - 1, dense_cout)
            key = (op, tuple(x[:-1]))
            build = _matmul_builder(node, x, opset)
            depthwise = False
        out.append(Layer(label, op, cin, cout, dense_cin, dense_cout, key, build, depthwise, multiple))
    return out


def _conv_builder(node, x, w, has_bias, group, depthwise, opset, cin_axis_w, cout_axis_w):
    def build(cin: int, cout: int) -> onnx.ModelProto:
        rng = np.random.default_rng(0)
        g = cin if depthwise else group
        shape = list(w)
        shape[cin_axis_w] = cin // g if node.op_type == "Conv" else cin
        shape[cout_axis_w] = cout if node.op_type == "Conv" else cout // g
        n = helper.make_node(node.op_type, [], [])
        n.attribute.extend(a for a in node.attribute if a.name != "group")
        n.attribute.append(helper.make_attribute("group", g))
        inputs = [("x", [x[0], cin, *x[2:]], None), ("w", shape, _weights(rng, shape))]
        if has_bias:
            inputs.append(("b", [cout], _weights(rng, [cout])))
        return _probe_model(n, inputs, opset)
    return build


def _gemm_builder(node, x, trans_b, has_bias, opset):
    def build(cin: int, cout: int) -> onnx.ModelProto:
        rng = np.random.default_rng(0)
        shape = [cout, cin] if trans_b else [cin, cout]
        inputs = [("x", [x[0], cin], None), ("w", shape, _weights(rng, shape))]
        if has_bias:
            inputs.append(("b", [cout], _weights(rng, [cout])))
        return _probe_model(node, inputs, opset)
    return build


def _matmul_builder(node, x, opset):
    def build(cin: int, cout: int) -> onnx.ModelProto:
        rng = np.random.default_rng(0)
        return _probe_model(node, [("x", [*x[:-1], cin], None), ("w", [cin, cout], _weights(rng, [cin, cout]))],
                            opset)
    return build


def grid(dense: int, step: int, floor: int) -> list[int]:
    """Channel counts to measure: fractions of the dense count on multiples of ``step``, from the
    smallest count a plan may keep (``floor``) up to the dense count."""
    pts = {dense, max(1, min(dense, floor))}
    for f in GRID_FRACTIONS:
        c = int(math.ceil(dense * f / step) * step) if step > 1 else int(math.ceil(dense * f))
        pts.add(max(1, min(dense, max(c, floor))))
    return sorted(pts)


def _interp(points: list[int], value: float) -> tuple[int, int, float]:
    """Bracketing indices and weight of ``value`` among sorted ``points`` (linear extrapolation
    past the ends)."""
    if len(points) == 1:
        return 0, 0, 0.0
    i = int(np.searchsorted(points, value))
    i = min(max(i, 1), len(points) - 1)
    lo, hi = points[i - 1], points[i]
    return i - 1, i, (value - lo) / (hi - lo)


@dataclass
class LatencyTable:
    """Per-layer latency grids, the rest's cost model, and predictions for any widths."""

    layers: list[Layer]
    grids: dict[tuple, tuple[list[int], list[int], np.ndarray]]  # key -> (cins, couts, ms[cin, cout])
    rest_ms: float
    rest_coef: Linear  # activation elements outside the layers, linear in group widths
    dense_widths: dict[int, int]
    overhead_ms: float = 0.0
    seconds: float = 0.0
    probes: int = 0
    reference_ms: float = 0.0
    rest_nodes: list = field(default_factory=list)  # (node label, Linear elements) per rest node
    retimed: int = 0  # grid points timed again as outliers (measure_table)
    fit: dict[str, tuple[float, float, float]] = field(default_factory=dict)  # layer node -> in-graph (slope, offset ms, lowest probe ms fitted) (calibrate.py)
    calibration: dict | None = None  # what a whole-model profile changed (calibrate.py), for the report
    leftover: dict[tuple, float] = field(default_factory=dict)  # residual-sum shape -> ms of a constant Add left there

    def leftover_ms(self, shape: tuple | None, elements: float, dense_elements: float) -> float:
        """What a constant ``Add`` a removal leaves on a tensor of dense ``shape`` costs, with
        ``elements`` of its ``dense_elements`` kept (in proportion: the kernel and its layout
        conversions move every element). 0 where no probe was taken for that shape."""
        ms = self.leftover.get(tuple(shape)) if shape is not None else None
        if not ms or dense_elements <= 0:
            return 0.0
        return ms * max(elements, 0.0) / dense_elements

    def layer_ms(self, layer: Layer, cin: int, cout: int) -> float:
        if cin <= 0 or cout <= 0:
            return 0.0  # a group removed whole (--drop-layers): the layer is gone or a constant
        cins, couts, ms = self.grids[layer.grid_key]
        i0, i1, a = _interp(cins, cin)
        j0, j1, b = _interp(couts, cout)
        top = ms[i0, j0] * (1 - b) + ms[i0, j1] * b
        bottom = ms[i1, j0] * (1 - b) + ms[i1, j1] * b
        probe = float(max(0.0, top * (1 - a) + bottom * a))
        fit = self.fit.get(layer.node)
        if fit is None:
            return probe
        slope, offset, low = fit
        if probe >= low or low <= 0:
            return max(slope * probe + offset, MIN_FIT_SHARE * slope * probe)
        # below the narrowest profiled width the line is not extrapolated: the probe is scaled by the
        # in-graph / probe ratio there
        return probe * max(slope * low + offset, MIN_FIT_SHARE * slope * low) / low

    def rest(self, widths: dict[int, int], gone: Linear | None = None) -> float:
        """The rest's latency at ``widths``, in proportion to the activation elements it writes.
        ``gone``: the elements of the rest nodes that groups removed whole take out of the graph
        (surgery/drop.py). A fixed cost per node was measured too small to model here: a chain of
        small element-wise nodes costs under 1 us per node on the CPU provider (2026-11-30)."""
        dense = _value(self.rest_coef, self.dense_widths)
        if dense <= 0:
            return self.rest_ms
        elems = _value(self.rest_coef, widths) - (_value(gone, widths) if gone is not None else 0.0)
        return self.rest_ms * max(elems, 0.0) / dense

    def layers_ms(self, widths: dict[int, int]) -> float:
        """The layers' table latency (ms) at ``widths``."""
        return sum(self.layer_ms(lyr, *lyr.channels(widths)) for lyr in self.layers)

    def predict(self, widths: dict[int, int]) -> float:
        """Predicted latency (ms) of the model with ``widths`` channels kept per group."""
        return self.layers_ms(widths) + self.rest(widths)

    def dense_ms(self) -> float:
        return self.predict(self.dense_widths)

    def rows(self, widths: dict[int, int]) -> list[dict]:
        """Per layer: dense and planned channel counts and their table latencies (for the report)."""
        out = []
        for lyr in self.layers:
            cin, cout = lyr.channels(widths)
            out.append({"node": lyr.node, "op": lyr.op, "dense": [lyr.dense_cin, lyr.dense_cout],
                        "planned": [cin, cout],
                        "dense_ms": round(self.layer_ms(lyr, lyr.dense_cin, lyr.dense_cout), 5),
                        "planned_ms": round(self.layer_ms(lyr, cin, cout), 5)})
        return out

    def summary(self) -> dict:
        layer_sum = self.layers_ms(self.dense_widths)
        return {"layers": len(self.layers), "distinct_layers": len(self.grids), "probes": self.probes,
                "seconds": round(self.seconds, 2), "layers_dense_ms": round(layer_sum, 4),
                "rest_dense_ms": round(self.rest_ms, 4), "call_overhead_ms": round(self.overhead_ms, 5),
                "rest_nodes": len(self.rest_nodes), "retimed": self.retimed,
                "reference_ms": round(self.reference_ms, 4),
                **({"leftover_add_ms": {"x".join(map(str, k)): round(v, 5) for k, v in self.leftover.items()}}
                   if self.leftover else {}),
                **({"calibration": self.calibration} if self.calibration is not None else {})}


def tensor_elements(analysis: Analysis, name: str) -> Linear | None:
    """The elements of tensor ``name`` as a linear function of the widths (a tensor with channels
    on two axes is linearised around the dense widths); None if its shape is not static."""
    shape = analysis.index.shape(name) if name else None
    if not shape or any(not isinstance(d, int) for d in shape):
        return None
    prunable = {g.id for g in analysis.prunable}
    table = analysis.ctx.table
    total = float(math.prod(shape))
    axes = analysis.ctx.layout_map.get(name, {})
    if not axes:
        return total, {}
    coef, shares = {}, 0.0
    for ax, lay in axes.items():
        if ax >= len(shape) or shape[ax] <= 0:
            continue
        per_channel = total / shape[ax]
        for g, inner in table.normalize(lay):
            r = table.find(g)
            if r in prunable:
                coef[r] = coef.get(r, 0.0) + per_channel * inner
                shares += table.size(g) * inner / shape[ax]
    return total * max(0.0, 1.0 - shares), coef


def _rest_nodes(analysis: Analysis, layer_nodes: set[str]) -> list[tuple[str, Linear]]:
    """Per node that is not a layer: the activation elements it writes, as a linear function of
    widths."""
    index = analysis.index
    out: list[tuple[str, Linear]] = []
    for node in index.nodes:
        label = index.node_label(node)
        if label in layer_nodes or node.op_type == "Constant":
            continue
        out.append((label, sum_linear(lin for lin in (tensor_elements(analysis, o) for o in node.output)
                                      if lin is not None)))
    return out


def residual_shapes(analysis: Analysis) -> list[tuple[int, ...]]:
    """The distinct static 4-D shapes of the tensors residual sums write (``Add`` of two computed
    tensors): where a removed block may leave a constant ``Add`` (surgery/absorb.py)."""
    index = analysis.index
    out: list[tuple[int, ...]] = []
    for node in index.nodes:
        if node.op_type != "Add" or len(node.input) != 2 or any(index.is_const(x) for x in node.input):
            continue
        shape = index.shape(node.output[0])
        if shape and len(shape) == 4 and all(isinstance(d, int) and d > 0 for d in shape):
            if tuple(shape) not in out:
                out.append(tuple(shape))
    return out


#: channels in and out of the convs around a leftover probe's Add: narrow, so that the convs cost
#: little beside it (a multiple of onnxruntime's blocked-layout channel block)
PROBE_EDGE = 16


def leftover_probe(shape: tuple[int, ...], with_add: bool, opset: int) -> onnx.ModelProto:
    """``x -> 1x1 conv -> relu -> (+ a per-channel constant) -> a residual block`` (padded 3x3
    convs, narrow inside), the middle tensor of ``shape``: the constant ``Add`` a removed block
    leaves where the next block reads it (it passes every reader but a padded conv,
    surgery/absorb.py), to be timed against the same model without it. In the dense model the
    residual sum there ran fused into the conv before it; the ReLU keeps onnxruntime from folding
    the constant into that conv's bias, and the next block's sum reads the Add too, as it does in
    the model (onnxruntime then converts its layout)."""
    n, c, h, w = shape
    e = PROBE_EDGE
    rng = np.random.default_rng(0)
    inits = []

    def const(name: str, dims: list[int]) -> str:
        inits.append(onnx.numpy_helper.from_array(_weights(rng, dims), name))
        return name

    nodes = [helper.make_node("Conv", ["x", const("w1", [c, e, 1, 1]), const("b1", [c])], ["h0"], kernel_shape=[1, 1]),
             helper.make_node("Relu", ["h0"], ["h"])]
    mid = "h"
    if with_add:
        nodes.append(helper.make_node("Add", ["h", const("k", [1, c, 1, 1])], ["hk"]))
        mid = "hk"
    nodes += [helper.make_node("Conv", [mid, const("w2", [e, c, 3, 3]), const("b2", [e])], ["r0"],
                               kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
              helper.make_node("Relu", ["r0"], ["r"]),
              helper.make_node("Conv", ["r", const("w3", [c, e, 3, 3]), const("b3", [c])], ["s"],
                               kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
              helper.make_node("Add", [mid, "s"], ["t"]),
              helper.make_node("Relu", ["t"], ["y"])]
    graph = helper.make_graph(nodes, "leftover_probe", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n, e, h, w])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(shape))], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


#: readings of each leftover probe, with and without its Add (the fastest of them counts)
LEFTOVER_REPEATS = 3


def time_leftover(time_layer: TimeFn, shape: tuple[int, ...], opset: int, repeats: int = LEFTOVER_REPEATS) -> float:
    """ms a constant Add left at ``shape`` adds (:func:`leftover_probe` with and without it, each
    the fastest of ``repeats`` readings taken in turn)."""
    with_add, without = leftover_probe(shape, True, opset), leftover_probe(shape, False, opset)
    best = [math.inf, math.inf]
    for _ in range(repeats):
        best[0] = min(best[0], time_layer(with_add))
        best[1] = min(best[1], time_layer(without))
    return max(0.0, best[0] - best[1])


def sum_linear(parts) -> Linear:
    """The sum of linear functions of the widths."""
    const, coef = 0.0, {}
    for c, k in parts:
        const += c
        for g, v in k.items():
            coef[g] = coef.get(g, 0.0) + v
    return const, coef


TimeFn = Callable[[onnx.ModelProto], float]


OUTLIER = 1.3  # a probe this much slower than a probe of the same layer with more channels is retimed


def _retime_outliers(ms: np.ndarray, retime: Callable[[int, int], float]) -> int:
    """Time again (keeping the faster reading) each grid point that came out more than OUTLIER
    times slower than a point of the same layer with more channels: on this machine a single
    probe now and then reads 1.7-2.2x its neighbours. Returns how many were retimed."""
    n = 0
    rows, cols = ms.shape
    for i in range(rows):
        for j in range(cols):
            larger = [ms[i + 1, j]] if i + 1 < rows else []
            larger += [ms[i, j + 1]] if j + 1 < cols else []
            if larger and ms[i, j] > OUTLIER * max(larger):
                ms[i, j] = min(ms[i, j], retime(i, j))
                n += 1
    return n


def measure_table(analysis: Analysis, opset: int, time_layer: TimeFn, reference_ms: float, step: int,
                  floor: Callable[[int], int], progress: bool = False, overhead_ms: float = 0.0,
                  leftovers: bool = False) -> LatencyTable:
    """Measure each distinct layer on its grid with ``time_layer(model) -> ms`` (one-node models).

    ``reference_ms``: the whole dense model measured on the same provider; what the layers' dense
    sum leaves of it is the rest. ``floor(dense_count)``: the fewest channels a plan may keep of a
    dimension of that size (the grid starts there). ``overhead_ms``: the cost of one run call of an
    empty model on this provider, subtracted from every probe (the whole model pays it once).
    ``leftovers``: also time, at each residual sum's shape, the constant ``Add`` a removed block
    may leave there (:func:`leftover_probe`, for ``--drop-layers``)."""
    start = time.monotonic()
    layers = find_layers(analysis, opset)
    widths = {g.id: g.size for g in analysis.prunable}
    jobs: dict[tuple, tuple[Layer, list[int], list[int]]] = {}
    for lyr in layers:
        gkey = lyr.grid_key
        if gkey in jobs:
            continue
        varies_in, varies_out = bool(lyr.cin[1]), bool(lyr.cout[1]) and not lyr.depthwise
        st = math.lcm(step, lyr.multiple)  # a grouped conv runs only at multiples of its groups

        def low(dense: int) -> int:
            return min(dense, int(math.ceil(floor(dense) / lyr.multiple)) * lyr.multiple)

        cins = grid(lyr.dense_cin, st, low(lyr.dense_cin)) if varies_in else [lyr.dense_cin]
        couts = (grid(lyr.dense_cout, st, low(lyr.dense_cout)) if varies_out else [lyr.dense_cout])
        if lyr.depthwise:
            couts = [0]  # depthwise: cout follows cin; one dimension
        jobs[gkey] = (lyr, cins, couts)
    total = sum(len(c) * len(o) for _, c, o in jobs.values())
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=total, desc="latency table", unit="probe", leave=False, disable=None)
    grids: dict[tuple, tuple[list[int], list[int], np.ndarray]] = {}
    probes = retimed = 0
    for gkey, (lyr, cins, couts) in jobs.items():
        ms = np.zeros((len(cins), len(couts)))

        def probe(i: int, j: int) -> float:
            return time_layer(lyr.build(cins[i], cins[i] if lyr.depthwise else couts[j]))

        for i in range(len(cins)):
            for j in range(len(couts)):
                ms[i, j] = probe(i, j)
                probes += 1
                if bar is not None:
                    bar.update()
        retimed += _retime_outliers(ms, probe)
        grids[gkey] = (cins, [lyr.dense_cout] if lyr.depthwise else couts, np.maximum(0.0, ms - overhead_ms))
    if bar is not None:
        bar.close()
    leftover = {}
    if leftovers:
        for shape in residual_shapes(analysis):
            leftover[shape] = time_leftover(time_layer, shape, opset)
            probes += 2 * LEFTOVER_REPEATS
    rest_nodes = _rest_nodes(analysis, {lyr.node for lyr in layers})
    table = LatencyTable(layers, grids, 0.0, sum_linear(lin for _, lin in rest_nodes), widths,
                         overhead_ms, 0.0, probes, reference_ms, rest_nodes=rest_nodes, retimed=retimed,
                         leftover=leftover)
    table.rest_ms = max(0.0, reference_ms - table.layers_ms(widths))
    table.seconds = time.monotonic() - start
    return table


def ort_layer_timer(provider: str = "cpu", threads: int | None = None, min_time_s: float = 0.03,
                    min_runs: int = 10, warmup: int = 3, spinning: bool = False) -> TimeFn:
    """``time_layer`` for measure_table: a session per probe on the provider, the median of its
    runs after a warm-up (spinning off unless ``spinning``, as the whole-model measurement it
    serves). Inputs and outputs are bound to buffers allocated once, so a probe's time is its
    kernel's, not a copy of its output."""
    import onnxruntime as ort

    from compressor.bench.session import device_for, make_session

    def time_layer(model: onnx.ModelProto) -> float:
        session, used, _ = make_session(model, provider, threads, spinning=spinning)
        device = device_for(used)
        binding = session.io_binding()
        keep = []
        rng = np.random.default_rng(0)
        for i in session.get_inputs():
            value = ort.OrtValue.ortvalue_from_numpy(rng.standard_normal(i.shape).astype(np.float32), device, 0)
            binding.bind_ortvalue_input(i.name, value)
            keep.append(value)
        for o in session.get_outputs():
            binding.bind_output(o.name, device, 0)
        session.run_with_iobinding(binding)  # allocates the outputs; later runs reuse them
        outputs = binding.get_outputs()
        for o, value in zip(session.get_outputs(), outputs):
            binding.bind_ortvalue_output(o.name, value)

        def run() -> None:
            session.run_with_iobinding(binding)
            binding.synchronize_outputs()

        for _ in range(warmup):
            run()
        times = []
        t_end = time.perf_counter() + min_time_s
        while len(times) < min_runs or time.perf_counter() < t_end:
            t0 = time.perf_counter()
            run()
            times.append((time.perf_counter() - t0) * 1e3)
        return float(np.median(times))
    return time_layer


def call_overhead_ms(time_layer: TimeFn) -> float:
    """What one run of a trivial model costs on this provider (session call, feeds, output)."""
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "empty",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    return time_layer(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8))
