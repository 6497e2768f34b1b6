"""Calibrate a latency table with a profile of the whole dense model, run as onnxruntime runs it.

The table (bench/layers.py) times each layer as a one-node model. Inside the whole model a layer
runs differently: its weights are no longer hot in cache, onnxruntime fuses the activation after
it, and a depthwise conv's layout conversions belong to the graph around it. Measured on
convnext_tiny (CPU provider, 2 threads, 2026-11-30): its 36 MatMuls ran a median 1.11x their
probes in the graph, its 18 depthwise convs 0.77x.

The table's *rest* (everything that is not a layer) was one pool whose cost followed the number of
activation elements it writes. In the graph, elements cost very different amounts: convnext's GELU
is 5 ONNX nodes over the 4x-wide hidden activation (80 % of the rest's elements), which
onnxruntime fuses into one kernel that took 38 % of the rest's time; its Reshapes write as many
elements and cost nothing.

``profile_model`` runs a model with onnxruntime's profiler, beside a plain session of it to take
the profiler's own cost per kernel out, and keeps onnxruntime's optimised graph.
``attribute_kernels`` credits each kernel to the original nodes it computes (a fused kernel to every
node it replaced, a layout conversion to the kernel it converts for); ``point`` turns a profile
into per-layer and per-rest-node times. ``calibrate`` fits the table to two such points, the
dense model and a copy with every group at half width: each layer's in-graph time as slope x
probe time + offset, and each rest node's cost as what its kernels took, split into a part that
follows the elements it writes and a part it costs at any size. The whole model is still
measured before a plan is accepted: the fit changes which channels the planner believes are
cheap, not what counts as meeting a target.

Calibration needs per-kernel times: the CPU provider only (CUDA's profiler events time launches).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass, field, replace

import numpy as np
import onnx

from compressor.bench.layers import LatencyTable, _value, sum_linear
from compressor.ir.graph import node_label

NCHWC_SUFFIX = "_nchwc"  # onnxruntime's blocked-layout copies of a tensor (NchwcTransformer)


def _strip(name: str) -> str:
    return name[: -len(NCHWC_SUFFIX)] if name.endswith(NCHWC_SUFFIX) else name


@dataclass
class Profile:
    """A model's kernels as onnxruntime ran them (profile_model)."""

    kernel_ms: dict[str, float]  # optimised node name -> ms per run, the profiler's own cost removed
    optimized: onnx.GraphProto  # onnxruntime's optimised graph (no weights needed)
    plain_ms: float  # the model's median run without profiling, timed interleaved with the profiled one
    profiled_ms: float
    overhead_us: float  # what profiling added per kernel, subtracted from each
    runs: int

    def wall_share(self) -> float:
        """The factor that makes the kernels sum to the plain run (within [0.5, 2])."""
        total = sum(self.kernel_ms.values())
        return min(2.0, max(0.5, self.plain_ms / total)) if total > 0 and self.plain_ms > 0 else 1.0


def _kernel_events(path: str, runs: int) -> dict[str, float]:
    """Microseconds per run of each kernel: the median over the runs of a kernel that ran once per
    run (one slow run of the machine does not inflate it), else its mean."""
    with open(path) as f:
        events = json.load(f)
    durations: dict[str, list[float]] = {}
    for e in events:
        name = e.get("name", "")
        if e.get("cat") == "Node" and name.endswith("_kernel_time"):
            durations.setdefault(name[: -len("_kernel_time")], []).append(float(e.get("dur", 0.0)))
    return {node: float(np.median(d)) if len(d) == runs else sum(d) / runs for node, d in durations.items()}


def profile_model(model: onnx.ModelProto, feeds: dict[str, np.ndarray], threads: int | None = None,
                  spinning: bool = False, min_time_s: float = 2.0, max_runs: int = 200) -> Profile:
    """Profile ``model`` on the CPU provider: a profiled and a plain session run in turn (so the
    profiler's cost per kernel can be measured and taken out), after a warm-up."""
    import onnxruntime as ort

    from compressor.bench.session import session_options

    with tempfile.TemporaryDirectory(prefix="compressor_profile_") as tmp:
        so = session_options(threads, spinning=spinning)
        so.enable_profiling = True
        so.profile_file_prefix = os.path.join(tmp, "profile")
        so.optimized_model_filepath = os.path.join(tmp, "optimized.onnx")
        payload = model.SerializeToString()
        profiled = ort.InferenceSession(payload, so, providers=["CPUExecutionProvider"])
        plain = ort.InferenceSession(payload, session_options(threads, spinning=spinning),
                                     providers=["CPUExecutionProvider"])
        for s in (plain, profiled):
            for _ in range(3):
                s.run(None, feeds)
        t_plain, t_prof = [], []
        end = time.perf_counter() + min_time_s
        while len(t_plain) < 5 or (time.perf_counter() < end and len(t_plain) < max_runs):
            for s, times in ((plain, t_plain), (profiled, t_prof)):
                t0 = time.perf_counter()
                s.run(None, feeds)
                times.append((time.perf_counter() - t0) * 1e3)
        runs = len(t_prof) + 3
        kernels_us = _kernel_events(profiled.end_profiling(), runs)
        optimized = onnx.load(so.optimized_model_filepath, load_external_data=False).graph
    del profiled, plain
    plain_ms, profiled_ms = float(np.median(t_plain)), float(np.median(t_prof))
    n = max(1, len(kernels_us))
    overhead_us = max(0.0, (profiled_ms - plain_ms) * 1e3 / n)
    kernel_ms = {}
    for name, per_run in kernels_us.items():
        kernel_ms[name] = max(per_run - overhead_us, 0.2 * per_run) / 1e3
    return Profile(kernel_ms, optimized, plain_ms, profiled_ms, overhead_us, runs)


def attribute_kernels(original: onnx.GraphProto, optimized: onnx.GraphProto, kernel_ms: dict[str, float]
                      ) -> tuple[dict[str, list[onnx.NodeProto]], dict[str, float], float]:
    """Which original nodes each kernel computes, and its time.

    Returns (kernel -> the original nodes it covers, kernel -> ms, ms of kernels covering nothing).
    A kernel covers the original producer of each tensor it writes, and through the tensors that
    exist only in the original graph (fused away), every producer behind them. A kernel that writes
    only tensors of its own (a Reshape onnxruntime wrapped around a Gemm) covers what the kernel
    reading its output covers; a layout conversion (its tensor under another name, ``_nchwc``)
    covers what the kernel on its blocked side covers. onnxruntime names a blocked-layout kernel
    after the original tensor it computes (``<tensor>_nchwc``) and may give its output an internal
    name: that tensor then counts as present and written by that kernel."""
    producer = {out: n for n in original.node for out in n.output if out}
    present: set[str] = set()
    opt_producer: dict[str, onnx.NodeProto] = {}
    opt_consumers: dict[str, list[onnx.NodeProto]] = {}
    for k in optimized.node:
        if k.name.endswith(NCHWC_SUFFIX):  # a blocked-layout kernel is named after the tensor it computes
            present.add(_strip(k.name))
        for t in k.input:
            if t:
                present.add(_strip(t))
                opt_consumers.setdefault(t, []).append(k)
        for t in k.output:
            if t:
                present.add(_strip(t))
                opt_producer[t] = k

    def covered(tensors: list[str]) -> list[onnx.NodeProto]:
        out, seen = [], set()
        stack = [producer[t] for t in tensors if t in producer]
        while stack:
            n = stack.pop()
            if id(n) in seen:
                continue
            seen.add(id(n))
            out.append(n)
            stack.extend(producer[i] for i in n.input if i in producer and i not in present)
        return out

    def is_conversion(k: onnx.NodeProto) -> bool:
        outs = {_strip(t) for t in k.output if t}
        return bool(outs) and any(t != _strip(t) for t in (*k.input, *k.output)) and \
            outs <= {_strip(t) for t in k.input if t}

    def targets(k: onnx.NodeProto, depth: int = 0) -> list[str] | None:
        if depth > 8:
            return None
        if is_conversion(k):
            blocked = [t for t in k.output if t != _strip(t)]
            if blocked:  # into the blocked layout: the kernels reading it
                nxt = [c for t in blocked for c in opt_consumers.get(t, [])]
            else:  # out of it: the kernel that wrote the blocked tensor
                nxt = [opt_producer[t] for t in k.input if t != _strip(t) and t in opt_producer]
            for n in nxt:
                if not is_conversion(n):
                    found = targets(n, depth + 1)
                    if found:
                        return found
            return None
        outs = [_strip(t) for t in k.output if t and _strip(t) in producer]
        if outs:
            return outs
        if k.name.endswith(NCHWC_SUFFIX) and _strip(k.name) in producer:
            return [_strip(k.name)]  # its output is an internal name (``reorder_token_N``)
        for t in k.output:
            for c in opt_consumers.get(t, []):
                found = targets(c, depth + 1)
                if found:
                    return found
        return None

    cover: dict[str, list[onnx.NodeProto]] = {}
    times: dict[str, float] = {}
    lost = 0.0
    by_name = {k.name: k for k in optimized.node}
    for name, ms in kernel_ms.items():
        k = by_name.get(name)
        tensors = targets(k) if k is not None else None
        nodes = covered(tensors) if tensors else []
        if not nodes:
            lost += ms
            continue
        cover[name], times[name] = nodes, ms
    return cover, times, lost


@dataclass
class Point:
    """One profiled model: its widths and what its kernels took per layer and per rest node (ms,
    at the table's reference level)."""

    widths: dict[int, int]
    layers: dict[str, float]  # layer node -> ms of the kernels that compute it
    rest: dict[str, float]  # rest node label -> its share of the kernels that compute it
    unattributed_ms: float = 0.0


def point(table: LatencyTable, graph: onnx.GraphProto, profile: Profile, widths: dict[int, int],
          level: float = 1.0) -> Point:
    """Credit ``profile``'s kernels (of the model ``graph``, at ``widths``) to the table's layers and
    rest nodes. A kernel that computes a layer is the layer's (with what onnxruntime fused into it;
    split by probe time if it computes several); a kernel of rest nodes is shared among them by the
    elements they write. The kernels are first scaled to sum to the model's plain run (the
    profiler's cost is not the same for every kernel, and the time between kernels belongs to
    them too); ``level`` then scales every kernel (to the table's reference reading)."""
    cover, times, lost = attribute_kernels(graph, profile.optimized, profile.kernel_ms)
    level *= profile.wall_share()
    layer_of = {lyr.node: lyr for lyr in table.layers}
    rest_lin = dict(table.rest_nodes)
    layers: dict[str, float] = {}
    rest: dict[str, float] = {}
    for name, nodes in cover.items():
        ms = times[name] * level
        lbls = [node_label(n) for n in nodes]
        hit = [lb for lb in lbls if lb in layer_of]
        if hit:
            weights = np.array([max(table.layer_ms(layer_of[lb], *layer_of[lb].channels(widths)), 1e-9) for lb in hit])
            for lb, w in zip(hit, weights / weights.sum()):
                layers[lb] = layers.get(lb, 0.0) + ms * float(w)
            continue
        hit = [lb for lb in lbls if lb in rest_lin]
        if not hit:
            lost += times[name]
            continue
        elems = np.array([max(_value(rest_lin[lb], widths), 0.0) for lb in hit])
        weights = elems / elems.sum() if elems.sum() > 0 else np.full(len(hit), 1.0 / len(hit))
        for lb, w in zip(hit, weights):
            rest[lb] = rest.get(lb, 0.0) + ms * float(w)
    return Point(dict(widths), layers, rest, lost * level)


#: bounds of a layer's slope (in-graph ms per probe ms): a fit outside them is noise
SLOPE = (0.25, 4.0)


def fit_layer(probes: list[float], in_graph: list[float]) -> tuple[float, float, float]:
    """(slope, offset, lowest probe) of in-graph time against probe time over the profiled points:
    the line through two points far enough apart (used from the lower one up; LatencyTable scales
    the probe by the ratio there below it), else the ratio at the one point (offset 0, from 0 up).
    Extrapolating the line below the half-width point over-charged mobilenet_v2's narrow layers."""
    if len(probes) >= 2 and abs(probes[0] - probes[1]) > 0.1 * max(probes[0], probes[1]):
        slope = (in_graph[0] - in_graph[1]) / (probes[0] - probes[1])
        if SLOPE[0] <= slope <= SLOPE[1]:
            return slope, in_graph[0] - slope * probes[0], min(probes[0], probes[1])
    return (in_graph[0] / probes[0] if probes[0] > 0 else 1.0), 0.0, 0.0


@dataclass
class Calibration:
    """What the profiles changed in a table (reported in the budget's details)."""

    fit: dict[str, tuple[float, float, float]] = field(default_factory=dict)  # layer node -> (slope, offset ms, low)
    rest_ms: dict[str, float] = field(default_factory=dict)  # rest node label -> its kernels' ms (dense)
    constant_ms: float = 0.0  # the reference minus every kernel: the run's own cost
    rest_fixed_ms: float = 0.0  # the rest nodes' parts that do not follow their elements (two profiles)
    unattributed_ms: float = 0.0  # kernel time no original node could be found for
    kernels: int = 0
    points: int = 0
    profile: Profile | None = None  # the dense model's

    def summary(self) -> dict:
        slopes = np.array([a for a, _, _ in self.fit.values()] or [1.0])
        p = self.profile
        return {"kernels": self.kernels, "profiled_models": self.points, "layers_fitted": len(self.fit),
                "slope_median": round(float(np.median(slopes)), 3),
                "slope_p10_p90": [round(float(np.percentile(slopes, 10)), 3),
                                  round(float(np.percentile(slopes, 90)), 3)],
                "rest_nodes_costed": sum(1 for v in self.rest_ms.values() if v > 0),
                "rest_kernels_ms": round(sum(self.rest_ms.values()), 4),
                "rest_fixed_ms": round(self.rest_fixed_ms, 4),
                "constant_ms": round(self.constant_ms, 4), "unattributed_ms": round(self.unattributed_ms, 4),
                **({"profiled_ms": round(p.profiled_ms, 4), "plain_ms": round(p.plain_ms, 4),
                    "profiler_overhead_us_per_kernel": round(p.overhead_us, 2), "runs": p.runs} if p else {})}


def calibrate(table: LatencyTable, points: list[Point], profile: Profile | None = None
              ) -> tuple[LatencyTable, Calibration]:
    """A copy of ``table`` fitted to profiled ``points`` (the first: the dense model).

    Layers: in-graph time = slope x probe time + offset, fitted per layer over the points where it
    ran (a probe carries its own layout conversions and hot weights; the graph its cold weights and
    fused activations). Rest: each rest node costs what its kernels took in the dense model, and
    keeps following the elements it writes, less a part that it costs at any size where the second
    point shows one (the kernel's dispatch; a removed node takes it along). What the kernels leave
    of the reference is a constant."""
    dense = table.dense_widths
    fit: dict[str, tuple[float, float, float]] = {}
    for lyr in table.layers:
        probes, seen = [], []
        for pt in points:
            if lyr.node in pt.layers:
                probes.append(table.layer_ms(lyr, *lyr.channels(pt.widths)))
                seen.append(pt.layers[lyr.node])
        if probes:
            fit[lyr.node] = fit_layer(probes, seen)
    cal = replace(table, fit={**table.fit, **fit})
    budget = max(0.0, table.reference_ms - cal.layers_ms(dense))
    rest_ms = points[0].rest if points else {}
    kernels_rest = sum(rest_ms.values())
    shrink = min(1.0, budget / kernels_rest) if kernels_rest > 0 else 1.0
    second = points[1] if len(points) > 1 else None
    nodes, const, fixed = [], 0.0, 0.0
    for label, lin in table.rest_nodes:
        ms = rest_ms.get(label, 0.0) * shrink
        at_dense = _value(lin, dense)
        if ms > 0 and at_dense > 0:
            per_elem, base = ms / at_dense, 0.0
            if second is not None and label in second.rest:  # a fixed part: what the node costs at any size
                at_2, ms_2 = _value(lin, second.widths), second.rest[label] * shrink
                if abs(at_dense - at_2) > 0.1 * at_dense:
                    slope = (ms - ms_2) / (at_dense - at_2)
                    if 0 <= slope <= per_elem:
                        per_elem, base = slope, ms - slope * at_dense
            fixed += base
            nodes.append((label, (lin[0] * per_elem + base, {g: c * per_elem for g, c in lin[1].items()})))
        else:
            const += ms  # a node whose elements are unknown keeps its cost
            nodes.append((label, (0.0, {})))
    constant = max(0.0, budget - kernels_rest * shrink) + const
    cal.rest_nodes = nodes
    cal.rest_coef = sum_linear([*(lin for _, lin in nodes), (constant, {})])
    cal.rest_ms = _value(cal.rest_coef, dense)
    info = Calibration(fit, {lb: ms * shrink for lb, ms in rest_ms.items()}, constant, fixed,
                       sum(pt.unattributed_ms for pt in points), len(profile.kernel_ms) if profile else 0,
                       len(points), profile)
    cal.calibration = info.summary()
    return cal, info


def fit_to_profiles(table: LatencyTable, dense: onnx.ModelProto, feeds: dict[str, np.ndarray],
                    second: tuple[onnx.ModelProto, dict[int, int]] | None = None, threads: int | None = None,
                    spinning: bool = False, min_time_s: float = 2.0) -> tuple[LatencyTable, Calibration]:
    """Profile ``dense`` (and ``second``: a pruned copy and its widths, for each layer's slope) on
    the CPU provider and return the table fitted to them. The kernels are brought to the table's
    reference level by the dense model's plain reading taken beside its profile."""
    if table.fit:
        raise ValueError("the table is already calibrated")
    prof = profile_model(dense, feeds, threads, spinning, min_time_s)
    level = table.reference_ms / prof.plain_ms if prof.plain_ms > 0 else 1.0
    points = [point(table, dense.graph, prof, table.dense_widths, level)]
    if second is not None:
        model, widths = second
        points.append(point(table, model.graph, profile_model(model, feeds, threads, spinning, min_time_s),
                            widths, level))
    return calibrate(table, points, prof)
