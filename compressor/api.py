"""The public Python API; the CLI is a thin layer over it.

    load -> prepare (fold constants) -> [exact transforms] -> analyze -> score -> plan -> apply
         -> finalize -> verify -> save
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass, field
from typing import Callable
from pathlib import Path

import numpy as np
import onnx

from compressor.analysis.groups import Analysis, analyze_index
from compressor.errors import CompressorError, UsageError, VerificationError
from compressor.importance import CRITERIA, score_groups
from compressor.ir.fold import Prepared, prepare_model
from compressor.ir.graph import GraphIndex
from compressor.ir.proto import detach_weights
from compressor.ir.model_io import (
    SORTED_NOTE, atomic_write_text, check_data_path, check_output_path, is_sorted, load_model, loadable_ir,
    save_model, sort_nodes, validate_model,
)
from compressor.ir.shapes import InputSpec, parse_shape_specs, resolve_inputs
from compressor.metrics import count
from compressor.planning import PlanOptions, PruningPlan, make_plan, plan_from_slices
from compressor.planning.allocate import importance_kept
from compressor.planning.budget import plan_cost, plan_for_fraction, plan_for_latency
from compressor.surgery import apply_plan
from compressor.surgery.drop import removable_groups, removal_effect
from compressor.surgery.finalize import finalize
from compressor.verify import masked_reference, pruned_norm_nodes, verify
from compressor.verify.oracle import decoy_keep
from compressor.verify.oracle import input_run_error
from compressor.verify.second_shape import alternate_specs
from compressor.verify.upcast import has_half

ModelLike = "str | os.PathLike | onnx.ModelProto"

#: Channel multiple of a --target-latency search when --round-to is not given. Measured on the ORT
#: CPU provider (tools/bench_target_latency.py, docs/benchmarks.md): with multiples of 1,
#: mobilenet_v2 at MACs 0.62 ran 1.25x *slower* than dense and needed MACs 0.16 for a 0.6x latency
#: target; with multiples of 8 it met the same target at MACs 0.51.
LATENCY_ROUND_TO = 8
#: Finer multiples the default search falls back to, in order, when no plan at the coarser one
#: meets the target (narrow layers leave few widths to choose from).
LATENCY_FALLBACK = (4, 1)
#: A proof whose decoy (other channels removed) lands within this many tolerances is reported as weak.
WEAK_PROOF_FACTOR = 3.0


def _as_model(model, data_files: list | None = None) -> tuple[onnx.ModelProto, str | None]:
    """Load (or validate) a model and fold its constant subgraphs so weights are constants.
    ``data_files`` receives the external-data files a model loaded from a path was read from."""
    prepared, path = _load(model, data_files)
    return prepared.model, path


def _load(model, data_files: list | None = None) -> tuple[Prepared, str | None]:
    """``_as_model``, with what preparing the model did and the weights it stored encoded."""
    if not isinstance(model, (onnx.ModelProto, str, os.PathLike)):
        raise UsageError(f"the model must be a path or an onnx.ModelProto, got {type(model).__name__}")
    notes: list[str] = []
    if isinstance(model, onnx.ModelProto):
        proto, path, ours = model, None, False
        if not is_sorted(model.graph):  # sorted on a copy: the caller's model is not edited
            proto, ours = onnx.ModelProto(), True
            proto.CopyFrom(model)
            if sort_nodes(proto.graph):
                notes.append(SORTED_NOTE)
        validate_model(proto)
    else:
        proto, path, ours = load_model(model, data_files, notes), str(model), True
    prepared = prepare_model(proto, inplace=ours)  # a model loaded or copied here is ours to edit
    prepared.notes[:0] = notes
    return prepared, path


def _spec(model: onnx.ModelProto, input_shapes) -> InputSpec:
    """Concrete input shapes from ``{name: dims}``, ``"NAME:1x3x224x224"`` strings (one or a list)
    or None; anything else, and a dim that is not a positive integer, is a UsageError."""
    if isinstance(input_shapes, str):
        input_shapes = [input_shapes]
    if input_shapes is None or isinstance(input_shapes, dict):
        specs = dict(input_shapes or {})
        for name, dims in specs.items():
            if (isinstance(dims, (str, bytes)) or not hasattr(dims, "__iter__")
                    or not all(isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d > 0 for d in dims)):
                raise UsageError(f"input_shapes[{name!r}] must be a sequence of positive integers, got {dims!r}")
            specs[name] = tuple(int(d) for d in dims)
    elif isinstance(input_shapes, (list, tuple)) and all(isinstance(s, str) for s in input_shapes):
        specs = parse_shape_specs(list(input_shapes))
    else:
        raise UsageError(f"input_shapes must be a dict {{name: dims}} or 'NAME:1x3x224x224' strings, got "
                         f"{type(input_shapes).__name__}")
    return resolve_inputs(model, specs)


def _patterns(exclude) -> tuple[str, ...]:
    """--exclude patterns: a string is one pattern (not its characters)."""
    if exclude is None:
        return ()
    if isinstance(exclude, str):
        return (exclude,)
    if not isinstance(exclude, (list, tuple, set, frozenset)) or not all(isinstance(p, str) for p in exclude):
        raise UsageError(f"exclude must be a pattern or a list of patterns (strings), got {exclude!r}")
    return tuple(exclude)


def _check_types(**args) -> None:
    """Arguments of ``prune`` of the wrong type are UsageErrors, not errors from deep inside."""
    for name, (value, kinds) in args.items():
        if value is None:
            continue
        ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
        if not ok:
            want = " or ".join(k.__name__ for k in kinds)
            raise UsageError(f"{name} must be {want}, got {type(value).__name__} {value!r}")


def analyze(model, input_shapes=None, exclude=(), prune_norms: bool = True) -> Analysis:
    """The coupled channel groups of a model (path or ModelProto)."""
    proto, _ = _as_model(model)
    spec = _spec(proto, input_shapes)
    return analyze_index(GraphIndex(proto, spec), exclude=_patterns(exclude), prune_norms=prune_norms)


def inspect(model, input_shapes=None, exclude=(), prune_norms: bool = True) -> dict:
    """What `compress inspect` reports: groups, barriers, MACs/params per layer."""
    t0 = time.perf_counter()
    exclude = _patterns(exclude)
    loaded, path = _load(model)
    proto = loaded.model
    spec = _spec(proto, input_shapes)
    index = GraphIndex(proto, spec)
    an = analyze_index(index, exclude=exclude, prune_norms=prune_norms)
    macs, params, per_node = count(index)
    warnings = loaded.warnings + _exclude_warnings(an, exclude)
    groups = []
    for g in an.groups:
        d = g.to_dict()
        if g.prunable:  # can --drop-layers remove it whole, and what would leave with it
            eff = removal_effect(an, {g.id})
            d["removable_whole"] = eff.why is None
            d["removal"] = {"nodes": eff.nodes} if eff.why is None else {"blocked_by": eff.why}
        groups.append(d)
    return {
        "input": path,
        "input_shapes": {k: list(v) for k, v in spec.shapes.items()},
        "defaults_used": spec.defaults_used,
        "opset": an.ctx.opset,
        "macs": macs,
        "params": params,
        "groups": {"total": len(an.groups), "prunable": len(an.prunable)},
        "group_list": groups,
        "barriers": [b.__dict__ for b in an.barriers],
        "shape_pins": _shape_pins(an),
        "layers": [{"node": k, "macs": v} for k, v in per_node.items()],
        "load_notes": loaded.notes,
        **({"warnings": warnings} if warnings else {}),
        "seconds": round(time.perf_counter() - t0, 3),
    }


def _placeholder(an: Analysis, g) -> bool:
    """Does group ``g`` only stand for the positions of an untracked tensor concatenated beside
    pruned ones (a detection head's anchors: no layer's channels, nothing to report)?"""
    return not g.members and g.id in {an.ctx.table.find(p) for p in an.ctx.placeholders}


#: A small integer tensor (a shape vector, a count) is checked for reading a pruned channel count.
SMALL_INT = 64


def _uncut(an: Analysis, sctx) -> Callable[[str], bool]:
    """Is a tensor of the input model the same under the plan: its shape, and for a small integer
    tensor its value, which reads no pruned channel count (verify pins the discrete ops that read
    and write only such tensors; ``Equal(shape, -1)`` on a shape holding C must not be pinned)?
    Unknown names are not."""
    from compressor.analysis.rules._shape_source import value_deps

    def uncut(name: str) -> bool:
        old = sctx.index.shape(name)
        if old is None or sctx.new_shape(name) != old:
            return False
        if np.dtype(sctx.index.tensor_dtype(name)).kind not in "iu" or math.prod(old) > SMALL_INT:
            return True
        return not any(sctx.new_shape(t)[a] != sctx.old_shape(t)[a] for t, a in value_deps(an.ctx, name))
    return uncut


def _shape_pins(an: Analysis, sctx=None) -> list[dict]:
    """Inputs that read a value computed from channel counts at run time, fed as the original
    model's value by the pruned model (analysis/shape_reads.py): that value is static from then on.
    With ``sctx`` (a plan's surgery), only those the plan changes the channel counts of."""
    from compressor.surgery.apply import applied_pins

    out = []
    for pin in (an.ctx.shape_pins if sctx is None else applied_pins(an, sctx)):
        node = an.index.nodes[pin.node_index]
        out.append({"node": an.index.node_label(node), "input": int(pin.slot),
                    "value": np.asarray(pin.value).tolist()})
    return out


@dataclass
class PruneResult:
    model: onnx.ModelProto
    report: dict
    plan: PruningPlan
    analysis: Analysis = field(repr=False)


def prune(model, *, ratio: float | None = None, output: str | os.PathLike | None = None, input_shapes=None,
          global_ranking: bool = False, round_to: int | str | None = None, min_channels: int = 1, exclude=(),
          importance: str = "auto", plan_in: str | os.PathLike | PruningPlan | None = None,
          target_macs: float | None = None, target_params: float | None = None,
          target_latency: float | None = None, provider: str = "cpu", latency_tolerance: float = 0.05,
          latency_table: bool = True, sensitivity: bool | None = None, calibration=None,
          merge_identical: float | None = None, merge_learned: bool = False, fold_constants: bool = False,
          prune_norms: bool = True, verify_model: bool = True, tolerance: float = 1e-4,
          seed: int = 0, spinning: bool = False, keep_macs: bool = False,
          drop_layers: bool = False, target_speedup: float | None = None,
          profile_table: bool = True, reprobe: bool = False,
          plan_out: str | os.PathLike | None = None, learned_widths: bool = False,
          log: Callable[[str], None] | None = None) -> PruneResult:
    """Prune a model; verify it against the masked original; write it atomically if ``output``
    (and the plan, as JSON, if ``plan_out``). Both paths are checked before any work: neither may
    be the input model, one of its external-data files or the other, or a place that cannot be written.

    ``ratio``: the fraction of each prunable group's channels removed (0.5 when not given); a
    budget (``target_*``), ``plan_in`` or ``learned_widths`` decides the widths instead, and excludes it.

    ``log``: receives each warning line as it happens (a provider that fell back to another while
    timing a latency target or ``round_to="auto"``); the report's ``warnings`` lists them too.

    ``learned_widths``: each group keeps the width training learned, read from the model's
    ``compressor.learned`` metadata (DSA's keep ratio, the non-zero gates of group gating, the
    C-SGD cluster count; planning.plan.learned_keep), its best channels by ``importance``.

    Exact transforms run first when asked (each proven against its own input): ``merge_learned``
    (C-SGD clusters from training), ``merge_identical`` (tolerance), ``fold_constants``.

    ``latency_table``: a latency target allocates per-group widths on a table of the model's layers
    measured on the provider (planning/allocate.py); False searches uniform (or ``global_ranking``)
    ratios by their MACs instead. Either way the whole pruned model is measured before it is kept.

    ``sensitivity``: the table allocation compares groups by how much the outputs change when each
    loses its least important channels (importance/sensitivity.py), measured on ``calibration``
    (``{input name: samples}``, or a .npz/.npy file) or, without it, on seeded random inputs;
    False: by channel scores normalised per group. None (default): on for the latency-table
    allocation, and whenever ``calibration`` is given. With ``target_macs`` (``target_params``),
    sensitivity allocates per-group widths on the layers' exact MACs (parameters); off by default
    there: those targets cut uniformly.

    ``keep_macs``: with ``target_latency`` and the latency table, each step of the allocation removes
    the fewest MACs per millisecond it saves (a table of the layers' exact MACs beside the latency
    table), so the plan keeps the most compute the latency target allows, instead of the least
    output change (sensitivity). Excludes ``sensitivity`` and ``calibration``.

    ``spinning``: time the latency target's layer table and whole models, and ``round_to="auto"``'s
    candidates, with onnxruntime's default thread spinning on (models in alternating blocks, see
    bench.runner.measure_blocks), as a deployment with default session options runs them; off by
    default, as every measurement here.

    ``profile_table``: fit the latency table to onnxruntime's profiles of the whole dense model and
    of a half-width copy (bench/calibrate.py; CPU provider): each layer costs what it takes inside
    the graph, each other node what its kernel takes, instead of one-node probes and a pool of
    activation elements. It predicted pruned plans' measured latency ratios better in 12 of 16
    model-runs of tools/table_accuracy.py; the plans it gives keep as many MACs per measured
    latency as the probes' do, within run-to-run noise (docs/benchmarks.md).

    ``latency_tolerance``: how close (relative) the measured latency must come to the target
    (5 % by default). Below 5 % each search reading is made to half the tolerance, and the search
    may take up to twice the measurements and time.

    ``target_speedup``: a latency target given as a speedup over the dense model, read against
    the dense latency the search measures itself (``target_latency`` = that reading / S): the
    ratio aimed at does not depend on a reading taken elsewhere. Everything else is as for
    ``target_latency``.

    ``drop_layers``: the budget's allocation may also remove a group whole where that can be done
    exactly (surgery/drop.py): the layers only it feeds leave the graph (a DenseNet layer, a
    residual branch, which becomes its bias), and their kernel calls with them. That bias is
    absorbed into the bias of the layer before where nothing else reads its output
    (surgery/absorb.py). Needs an allocated
    budget: ``target_latency`` with the latency table, or ``target_macs``/``target_params`` with
    sensitivity.

    ``reprobe``: with the sensitivity allocation, measure the sensitivities again on the plan the
    allocation has reached at each pivot (planning/allocate.py, ``PIVOTS``: 0.9, 0.8, ... of the
    dense cost) and go on from there with them: a group's cost is then what it costs beside the
    groups already cut, not alone on the dense model. One more sensitivity measurement per pivot
    passed.

    ``prune_norms``: a LayerNorm over the channel axis, and a GroupNorm with one group, is pruned
    through (its statistics then run over the kept channels; the oracle's reference computes it so);
    False freezes those groups.

    Memory: a model given as a path is loaded here and its large weights are kept once, as arrays
    (``result.analysis.index.model`` is then a skeleton without their payload); a ``ModelProto``
    given by the caller is never modified or taken apart.
    """
    t0 = time.perf_counter()
    num, path_like = (int, float, np.integer, np.floating), (str, os.PathLike)
    _check_types(ratio=(ratio, num), target_macs=(target_macs, num), target_params=(target_params, num),
                 target_latency=(target_latency, num), target_speedup=(target_speedup, num),
                 latency_tolerance=(latency_tolerance, num), tolerance=(tolerance, num),
                 merge_identical=(merge_identical, num), min_channels=(min_channels, (int, np.integer)),
                 seed=(seed, (int, np.integer)), round_to=(round_to, (int, np.integer, str)),
                 output=(output, path_like), plan_out=(plan_out, path_like),
                 plan_in=(plan_in, (*path_like, PruningPlan)), provider=(provider, str), importance=(importance, str),
                 calibration=(calibration, (*path_like, dict, np.ndarray)))
    exclude = _patterns(exclude)
    notices: list[str] = []

    def warn(line: str) -> None:  # each warning once: in the report, and as it happens to ``log``
        text = line.removeprefix("warning: ")
        if text not in notices:
            notices.append(text)
            if log is not None:
                log(f"warning: {text}")

    data_files: list[Path] = []
    loaded, path = _load(model, data_files)
    proto, load_notes, stored = loaded.model, loaded.notes, loaded.stored
    for line in loaded.warnings:
        warn(line)
    del loaded  # the model is ``proto`` from here (its weights may be detached below)
    # every file this run must not write over, checked before any work (a latency search takes minutes)
    forbid = [("the input model", path), *(("the input model's external data", f) for f in data_files)]
    if output is not None:
        check_output_path(output, forbid=forbid)
        check_data_path(output, forbid)  # a large output's weights go to OUTPUT.data: never the input's
    if plan_out is not None:
        check_output_path(plan_out, forbid=[*forbid, ("the output model", output)], what="plan")
    budgets = [b for b in (target_macs, target_params, target_latency, target_speedup) if b is not None]
    if len(budgets) > 1:
        raise UsageError("give at most one of --target-macs, --target-params, --target-latency, --target-speedup")
    if ratio is not None and (budgets or plan_in is not None or learned_widths):
        raise UsageError("--ratio is replaced by " + ("the plan's widths (--plan-in)" if plan_in is not None else
                                                      "the learned widths" if learned_widths else
                                                      "the budget") + "; give one of them")
    if learned_widths and (budgets or plan_in is not None or global_ranking or drop_layers):
        raise UsageError("--learned-widths prunes to the widths training learned; it excludes a --target-* budget, "
                         "--plan-in, --global and --drop-layers")
    if plan_in is not None and (global_ranking or round_to is not None):
        raise UsageError("--plan-in replays a plan's widths; --global and --round-to do not apply")
    if plan_in is not None and (budgets or sensitivity or calibration is not None or keep_macs or drop_layers
                                or reprobe):
        raise UsageError("--plan-in replays a plan's widths; a --target-* budget and the allocation's options "
                         "(--sensitivity, --calibration, --keep-macs, --drop-layers, --reprobe) do not apply")
    if target_speedup is not None and not (1.0 < target_speedup < math.inf):
        raise UsageError(f"--target-speedup must be a finite number above 1, got {target_speedup}")
    for flag, frac in (("--target-macs", target_macs), ("--target-params", target_params)):
        if frac is not None and not 0.0 < frac <= 1.0:
            raise UsageError(f"{flag} must be in (0, 1], got {frac}")
    if target_latency is not None and not (0.0 < target_latency < math.inf):
        raise UsageError(f"--target-latency must be a positive number of milliseconds, got {target_latency}")
    if not 0.0 <= tolerance < math.inf:
        raise UsageError(f"--tolerance must be a relative error >= 0, got {tolerance}")
    if merge_identical is not None and not 0.0 <= merge_identical < math.inf:
        raise UsageError(f"--merge-identical must be a relative tolerance >= 0, got {merge_identical}")
    if not 0 <= seed < 2**32:
        raise UsageError(f"--seed must be in [0, 2**32), got {seed}")
    ratio = (0.0 if learned_widths else 0.5) if ratio is None else ratio
    latency_goal = target_latency is not None or target_speedup is not None
    if not 0.005 <= latency_tolerance <= 0.5:
        raise UsageError(f"--latency-tolerance must be in [0.005, 0.5], got {latency_tolerance}")
    round_defaulted = round_to is None
    if round_to is None:
        # A latency target searches on multiples of LATENCY_ROUND_TO unless told otherwise: at odd
        # widths latency is not monotone in MACs on ORT's CPU kernels (docs/benchmarks.md)
        round_to = LATENCY_ROUND_TO if latency_goal else 1
    auto_round = round_to == "auto"
    if not auto_round:
        try:
            round_to = int(round_to)
        except (TypeError, ValueError):
            raise UsageError(f"--round-to must be a positive integer or 'auto', got {round_to!r}") from None
    if keep_macs:
        if not latency_goal or not latency_table:
            raise UsageError("--keep-macs allocates a --target-latency on the latency table; it needs --target-latency "
                             "(without --no-latency-table)")
        if sensitivity or calibration is not None:
            raise UsageError("--keep-macs and --sensitivity/--calibration are two allocation costs; pick one")
        sensitivity = False
    if global_ranking and (sensitivity or calibration is not None or keep_macs or (latency_goal and latency_table)):
        raise UsageError("--global ranks channels across groups by their scores; the allocation ("
                         + ("--sensitivity/--calibration" if sensitivity or calibration is not None else
                            "--keep-macs" if keep_macs else "the latency table of --target-latency")
                         + ") sets per-group widths instead: drop one of them (--no-latency-table searches --global "
                         "ratios for a latency target)")
    if sensitivity is None:  # the latency-table allocation's default cost; calibration data implies it
        sensitivity = calibration is not None or (latency_goal and latency_table)
    if sensitivity and not ((latency_goal and latency_table) or target_macs is not None
                            or target_params is not None):
        raise UsageError("--sensitivity allocates per-group widths for a budget: it needs --target-latency (with "
                         "the latency table), --target-macs or --target-params")
    if calibration is not None and not sensitivity:
        raise UsageError("--calibration data is used by --sensitivity only")
    if reprobe and not sensitivity:
        raise UsageError("--reprobe re-measures the sensitivity allocation's costs: it needs --sensitivity (with "
                         "--target-latency and the latency table, or --target-macs/--target-params)")
    if drop_layers and not ((latency_goal and latency_table)
                            or ((target_macs is not None or target_params is not None) and sensitivity)):
        raise UsageError("--drop-layers lets a budget's allocation remove whole groups: it needs --target-latency "
                         "(with the latency table), or --target-macs/--target-params with --sensitivity")
    calibration_data = load_calibration(calibration) if calibration is not None else None
    PlanOptions(ratio=ratio, round_to=1 if auto_round else round_to, min_channels=min_channels).validate()
    transforms = []
    if merge_learned or merge_identical is not None or fold_constants:
        from compressor import surgery

        if merge_learned:
            proto, rep = surgery.merge_learned(proto, input_shapes, exclude=exclude, verify_model=verify_model)
            transforms.append(rep)
        if merge_identical is not None:
            proto, rep = surgery.merge_identical(proto, input_shapes, tol=merge_identical, exclude=exclude,
                                                 verify_model=verify_model)
            transforms.append(rep)
        if fold_constants:
            proto, rep = surgery.fold_constant_channels(proto, input_shapes, exclude=exclude,
                                                        verify_model=verify_model)
            transforms.append(rep)
    if transforms:
        # a --target-macs/--target-params fraction is of the input model, which the transforms
        # already made smaller: the pruning after them is asked for the rest
        first, t_macs, t_params = transforms[0], transforms[-1]["macs_after"], transforms[-1]["params_after"]
        if target_macs is not None and t_macs:
            target_macs = min(1.0, target_macs * first["macs_before"] / t_macs)
        if target_params is not None and t_params:
            target_params = min(1.0, target_params * first["params_before"] / t_params)
    requested_importance = importance
    importance, importance_notes = _resolve_importance(proto, importance)
    opts = PlanOptions(ratio=ratio, global_ranking=global_ranking, round_to=1 if auto_round else round_to,
                       min_channels=min_channels, importance=importance, drop_layers=drop_layers)
    opts.validate()
    spec = _spec(proto, input_shapes)
    detached = None
    if (path is not None or transforms) and not latency_goal and not auto_round:
        # The model was loaded (or rebuilt) here, so nobody else holds it: its large weights are
        # kept once, as arrays, and the parsed protobuf is dropped (ir.proto.detach_weights). The
        # latency search and round-to auto time the dense model itself, so they keep it whole.
        proto, detached = detach_weights(proto)
    index = GraphIndex(proto, spec, detached)
    del detached
    an = analyze_index(index, exclude=exclude, prune_norms=prune_norms)

    extra: dict = {}
    if plan_in is not None:
        plan = plan_in if isinstance(plan_in, PruningPlan) else _read_plan(plan_in, an, opts)
        plan = plan.rebind(an)
        emptied = {g.id for g in plan.groups if g.size and not g.kept}
        why = removal_effect(an, emptied).why if emptied else None
        if why:
            raise UsageError(f"the plan keeps no channel of a group that cannot be removed whole: {why}")
    else:
        scores, notes, used = _scores(proto, an, importance, seed, explicit=requested_importance == "learned")
        importance_notes += notes
        if used != importance:  # learned importances that matched nothing: the plan was made on L2
            opts = dataclasses.replace(opts, importance="l2")
        importance = used

        sens_cache: list = []

        def sensitivities():
            if not sens_cache:
                from compressor.importance.sensitivity import calibration_feeds, fixed_batch_size, measure_sensitivity

                # the model's fixed batch, else the batch the user's --input-shape gave (a model
                # exported with a symbolic batch may still only run at it), else batches of 32
                ranked = [v for v in spec.shapes.values() if len(v)]  # a scalar input has no batch
                given = ranked[0][0] if input_shapes and ranked else None
                feeds, described = calibration_feeds(spec, calibration_data, seed=seed,
                                                     fixed_batch=fixed_batch_size(proto) or given)
                whole = removable_groups(an) if drop_layers else ()
                sens_cache.append(measure_sensitivity(an, scores, feeds, inputs=described, progress=True,
                                                      whole=whole))
                sens_cache.append(lambda widths: measure_sensitivity(an, scores, feeds, inputs=described,
                                                                     progress=True, whole=whole, base=widths))
            return sens_cache[0]

        def reprobes():
            if not reprobe:
                return None
            sensitivities()
            return sens_cache[1]

        def choose(o: PlanOptions) -> PruningPlan:
            if learned_widths:
                from compressor.importance.learned import learned_groups
                from compressor.planning.plan import learned_keep, plan_for_widths

                entries, _ = learned_groups(proto, an)
                n_keep, notes = learned_keep(an, entries, o)
                if not n_keep:
                    raise UsageError("--learned-widths: the model's learned metadata gives no group a width (DSA "
                                     "stores keep ratios, group gating gates, C-SGD clusters; compressor.train.export "
                                     "writes them); prune with --ratio or a budget instead")
                importance_notes.extend(notes)
                return plan_for_widths(an, scores, o, n_keep)
            if (target_macs is not None or target_params is not None) and sensitivity:
                from compressor.ir.model_io import default_opset
                from compressor.planning.allocate import plan_for_allocated

                kind, frac = ("macs", target_macs) if target_macs is not None else ("params", target_params)
                res = plan_for_allocated(an, scores, o, kind, frac, sensitivities(), default_opset(proto),
                                         reprobe=reprobes())
                res.details["importance_kept"] = importance_kept(an, scores, res.plan)
                extra["budget"] = res.to_dict()
                return res.plan
            if target_macs is not None or target_params is not None:
                kind, frac = ("macs", target_macs) if target_macs is not None else ("params", target_params)
                res = plan_for_fraction(an, scores, o, kind, frac)
                extra["budget"] = res.to_dict()
                return res.plan
            if latency_goal:
                res = _latency_plan(proto, an, scores, o, target_latency, provider, spec, latency_tolerance,
                                    speedup=target_speedup,
                                    spinning=spinning,
                                    fallback_to_1=round_defaulted, use_table=latency_table,
                                    sensitivity=sensitivities if sensitivity else None, keep_macs=keep_macs,
                                    profile_table=profile_table, reprobe=reprobes, log=warn)
                res.details["importance_kept"] = importance_kept(an, scores, res.plan)
                extra["budget"] = res.to_dict()
                return res.plan
            return make_plan(an, scores, o)

        if auto_round:
            plan, extra["round_to_auto"] = _auto_round(proto, an, opts, choose, provider, spec, spinning, extra,
                                                       log=warn)
        else:
            plan = choose(opts)
    keep = plan.keep
    surgery = apply_plan(an, keep)
    pruned = surgery.model
    importance_notes += surgery.notes  # the learned importances the output carries, sliced
    if keep and len(pruned.training_info):  # its algorithm binds the unpruned weights' shapes
        del pruned.training_info[:]
        warn("the model's training_info (an ONNX training algorithm written for the unpruned weights) was "
             "dropped: its updates no longer fit the pruned shapes")
    try:
        pruned = finalize(pruned, what="pruned")
    except VerificationError:
        from compressor.errors import ModelError
        from compressor.surgery.finalize import strict_inference_error

        why = strict_inference_error(index.model)
        if why is not None:
            raise ModelError(f"the input model fails ONNX's strict shape inference, so it is not a valid model: "
                             f"{why}") from None
        raise

    macs_b, params_b, _ = count(index)
    if transforms:  # the report's "before" is the input model's
        macs_b, params_b = transforms[0]["macs_before"], transforms[0]["params_before"]
    if surgery.dropped_nodes or surgery.widened:  # what removed layers leave, and nodes run at full width
        # between the cuts (surgery/widen.py), are counted on the model itself
        macs_a, params_a, _ = count(GraphIndex(pruned, spec))
    else:
        macs_a, params_a, _ = count(index, surgery.context.new_shape)
    # the weights the input stored encoded (int8 + DequantizeLinear, fp16 + Cast) are so again
    from compressor.surgery.encode import restore_storage

    storage = restore_storage(pruned, stored, surgery.slices, transformed=bool(transforms))
    del stored
    load_notes += storage.notes()
    for line in storage.warnings():
        warn(line)
    ver = None
    if verify_model:
        # the masked original feeds onnxruntime the index's weight arrays in place (no copy)
        reference = masked_reference(an, keep)
        reference.model.ir_version = pruned.ir_version
        if surgery.dropped_nodes and has_half(pruned):
            # removed layers leave computed biases, rounded to 11 bits in a float16 model
            from compressor.surgery._exact import HALF_EXACT_TOLERANCE

            tolerance = max(tolerance, HALF_EXACT_TOLERANCE)
        wrong = decoy_keep(an, keep)
        try:
            ver = verify(reference, pruned, spec, tolerance=tolerance, seed=seed,
                         alternates=alternate_specs(index.model, spec),
                         decoy=masked_reference(an, wrong) if wrong is not None else None,
                         uncut=_uncut(an, surgery.context))
        except CompressorError:
            raise
        except Exception:
            why = input_run_error(an, spec)
            if why is None:
                raise
            from compressor.errors import ModelError

            raise ModelError(f"onnxruntime cannot run the input model, so no pruning of it can be verified "
                             f"(--no-verify writes it unproven): {why}") from None
        del reference
        gap = ver.discrimination
        if gap is not None and ver.passed and gap < WEAK_PROOF_FACTOR * ver.tolerance:
            warn(f"a cut that removed other channels would have differed by at most {gap:.2g} (relative) on "
                 f"random inputs, less than {WEAK_PROOF_FACTOR:g}x the tolerance {ver.tolerance:g}: the proof "
                 "cannot tell this pruning from a wrong one (the outputs barely depend on these channels on "
                 "random inputs, as with an untrained model's near-constant outputs)")
    index.release_values()  # the weights' numpy copies are not needed past this point
    report = {
        "input": path,
        "output": str(output) if output is not None else None,
        "input_shapes": {k: list(v) for k, v in spec.shapes.items()},
        "defaults_used": spec.defaults_used,
        "importance": importance if plan_in is None else "replayed plan (--plan-in)",
        "importance_notes": importance_notes,
        "load_notes": load_notes,
        "options": plan.to_dict()["options"],
        "macs_before": macs_b, "macs_after": macs_a,
        "params_before": params_b, "params_after": params_a,
        "macs_ratio": macs_b / macs_a if macs_a else None,
        "groups": {"total": len(an.groups), "prunable": len(an.prunable),
                   "pruned": sum(1 for g in plan.groups if g.removed)},
        "channels": {"total": sum(g.size for g in an.prunable),
                     "removed": sum(g.removed for g in plan.groups)},
        "removed_whole": {"groups": sum(1 for g in plan.groups if g.size and not g.kept),
                          "nodes": surgery.dropped_nodes},
        "barriers": [b.__dict__ for b in an.barriers],
        # groups a rule froze without its node being a whole barrier (LayerNorm over channels, an
        # untracked operand, a graph output, ...): left as they are, each with its reasons
        "unprunable": [{"group": g.id, "channels": g.size, "reasons": g.reasons}
                       for g in an.groups if not g.prunable and not _placeholder(an, g)],
        # LayerNorms and GroupNorms with one group whose channels were pruned: their statistics now run
        # over the kept channels
        "norms_pruned": pruned_norm_nodes(an, keep),
        # nodes that mix the channels of an axis, run at full width between the cuts (surgery/widen.py)
        "widened": surgery.widened,
        # small values computed from channel counts at run time, fed as their original constants
        "shape_pins": _shape_pins(an, surgery.context),
        "verify": ver.to_dict() if ver else {"passed": None, "skipped": True},
        "plan": [s.to_dict() for s in surgery.slices],
        # the slices name tensors of the model they were applied to: after exact transforms that is
        # the transformed model (merges also changed consumer weights), not the input file
        "plan_applies_to": "model after transforms" if transforms else "input model",
        **({"transforms": transforms} if transforms else {}),
        **extra,
    }
    warnings = notices + _warnings(an, plan, exclude,
                                   ratio if plan_in is None and not budgets and not learned_widths else None)
    if warnings:
        report["warnings"] = warnings
    if ver is not None and not ver.passed:
        report["seconds"] = round(time.perf_counter() - t0, 3)
        why = ver.reason or f"max relative error {ver.max_rel_err:.3g} > {tolerance:g}"
        raise VerificationError(f"pruned model does not reproduce the masked original: {why}; nothing was written"
                                + (" (--no-verify writes it unproven)" if ver.reason else ""), report=report)
    if output is not None:
        save_model(pruned, output, forbid=forbid)
    if plan_out is not None:
        atomic_write_text(plan_out, plan.to_json())
        report["plan_out"] = str(plan_out)
    report["seconds"] = round(time.perf_counter() - t0, 3)
    return PruneResult(model=pruned, report=report, plan=plan, analysis=an)


def _exclude_warnings(an: Analysis, exclude) -> list[str]:
    return [f"--exclude '{p}' matches no node or tensor of any channel group; it protects nothing"
            for p in exclude or () if not any(f"--exclude '{p}'" in r for g in an.groups for r in g.reasons)]


def _warnings(an: Analysis, plan: PruningPlan, exclude, ratio: float | None) -> list[str]:
    """What the user asked that had no effect: an --exclude pattern that matches no group, a
    --ratio that removed nothing."""
    out = _exclude_warnings(an, exclude)
    if ratio and not any(g.removed for g in plan.groups):
        if not an.prunable:
            lists = [f"`{k}`" for k, v in (("unprunable", an.groups), ("barriers", an.barriers)) if v]
            why = (f" ({' and '.join(lists)} say{'' if len(lists) > 1 else 's'} why)" if lists else
                   ": the model has no Conv, ConvTranspose, Gemm or MatMul with constant weights")
            out.append(f"no channel group is prunable here{why}; nothing was removed")
        else:
            o = plan.options
            out.append(f"nothing was removed: at --ratio {ratio:g}, --round-to {o.round_to} and --min-channels "
                       f"{o.min_channels} leave every prunable group whole")
    return out


def _resolve_importance(proto: onnx.ModelProto, importance: str) -> tuple[str, list[str]]:
    """'auto' means learned importances when the model carries them, else L2 magnitude."""
    from compressor.importance.learned import read_learned

    names = sorted(CRITERIA) + ["auto", "learned"]
    if importance not in names:
        raise UsageError(f"unknown --importance '{importance}' (choose from {', '.join(names)})")
    has_learned = read_learned(proto) is not None
    if importance == "auto":
        return ("learned", ["the model carries learned importances"]) if has_learned else ("l2", [])
    if importance == "learned" and not has_learned:
        raise UsageError("--importance learned: the model carries no learned importances "
                         "(export it with compressor.train.export)")
    return importance, []


def _scores(proto, an: Analysis, importance: str, seed: int, explicit: bool = False) -> tuple[dict, list[str], str]:
    """(scores per group, notes, the criterion as the report names it). Learned importances that
    match no prunable group are an error when asked for (``explicit``), else L2 is used and named."""
    if importance != "learned":
        return score_groups(an, importance, seed=seed), [], importance
    from compressor.importance.learned import learned_scores

    learned, notes = learned_scores(proto, an)
    scores = score_groups(an, "l2")
    missing = [g.id for g in an.prunable if g.id not in learned or len(learned[g.id]) != g.size]
    if an.prunable and len(missing) == len(an.prunable):
        if explicit:
            raise UsageError("--importance learned: none of the model's learned entries matches a prunable channel "
                             "group of this model (was it pruned or edited after export?); use --importance l2")
        return scores, notes, "l2 (no learned entry matched)"
    for gid in scores:
        if gid not in missing:
            scores[gid] = np.asarray(learned[gid], dtype=np.float64)
    if missing:
        notes.append(f"{len(missing)} prunable group(s) had no learned importance; L2 magnitude used for them")
    return scores, notes, "learned"


def _pruned_for_timing(an: Analysis, plan: PruningPlan) -> onnx.ModelProto:
    m = apply_plan(an, plan.keep).model
    m.ir_version = loadable_ir(m.ir_version)
    return m


def _profiled_table(table, proto, an, scores, opts, spec, meter, spinning):
    """The latency table fitted to onnxruntime's profiles of the dense model and of a copy with
    every group at half width (bench/calibrate.py): each layer's time as it runs inside the graph,
    each rest node's as its kernels took. CPU provider only (other providers' profiles time kernel
    launches); where profiling fails, the table as measured, with the reason in its summary."""
    from compressor.bench.calibrate import fit_to_profiles
    from compressor.bench.inputs import random_feeds
    from compressor.bench.session import provider_key

    used = meter.provider_used or ""
    if provider_key(used) != "cpu":
        table.calibration = {"skipped": f"profiles time kernels on the CPU provider only, not {used}"}
        return table
    second = None
    try:
        half = make_plan(an, scores, dataclasses.replace(opts, ratio=0.5, drop_layers=False))
        if any(len(g.kept) < g.size for g in half.groups):
            second = (_pruned_for_timing(an, half), {g.id: len(g.kept) for g in half.groups})
    except UsageError:
        pass  # no half-width copy: each layer keeps its dense ratio (no slope)
    try:
        fitted, _ = fit_to_profiles(table, proto, random_feeds(proto, spec.shapes), second, meter.threads,
                                    spinning)
    except Exception as exc:  # noqa: BLE001 - a profile is an optimisation; the search still measures
        table.calibration = {"skipped": f"profiling failed: {str(exc).splitlines()[0][:200]}"}
        return table
    return fitted


def _latency_plan(proto, an, scores, opts, target_ms, provider, spec, tol, fallback_to_1: bool = False,
                  use_table: bool = True, sensitivity=None, spinning: bool = False, keep_macs: bool = False,
                  speedup: float | None = None, profile_table: bool = True, reprobe=None, log=None):
    """Read the target against the dense model measured here (3 s alone, after a warm-up), then
    search on pruned/dense ratios timed interleaved. ``reference_pooled_ms``: the median of every
    dense run of the search, to show how far the machine's load drifted meanwhile.

    ``fallback_to_1``: the channel multiple was the default (LATENCY_ROUND_TO), not the user's; if
    no plan at that granularity meets the target (narrow layers leave few widths to choose from),
    search again at the finer multiples of LATENCY_FALLBACK against the same reference.
    ``budget.fallback`` then lists each missed search's multiple, error and measurements.

    ``use_table``: measure the layer latency table first (bench/layers.py) and search over the
    widths the Allocator gives for fractions of its predicted latency; ``budget.layers`` then lists
    every layer's dense and planned channels and table latencies. ``sensitivity``: a callable giving
    the groups' measured output changes (importance/sensitivity.py), the allocation's costs.
    ``speedup``: the target is this reference reading / ``speedup`` (and stays that ratio: the
    reference is not re-read). ``profile_table``: fit the table to profiles of the whole model
    (``_profiled_table``). ``reprobe``: a callable giving the sensitivity re-measurement on a plan's
    widths (or None), for the Allocator's pivots."""
    from compressor.bench.ratio import RatioMeter, RatioPrecision, median_interval
    from compressor.planning.budget import LatencySearch, LatencyTargetError

    meter = RatioMeter(proto, provider=provider, input_shapes={k: list(v) for k, v in spec.shapes.items()},
                       spinning=spinning, log=log)
    dense = meter.reference_ms(min_time_s=3.0)
    lo, reference, hi = median_interval(dense)
    # a search step's reading is precise to half the tolerance (2.5 % at the default 5 %); a tighter
    # tolerance gets more measurements and time to find its plan in
    search_precision = RatioPrecision(rel_halfwidth=min(0.025, tol / 2), min_time_s=1.0, max_time_s=6.0)
    tight = max(1.0, min(2.0, 0.05 / tol))
    search = LatencySearch(tolerance=tol, max_measurements=round(16 * tight), time_budget_s=300.0 * tight)

    def reread() -> float:  # the dense model alone again, when a measurement says the machine changed speed
        return median_interval(meter.reference_ms(min_time_s=3.0))[1]

    if speedup is not None:
        target_ms = reference / speedup

    def measure(plan: PruningPlan, confirm: bool):
        candidate = _pruned_for_timing(an, plan)
        if confirm:  # a plan is accepted on a reading taken as a deployment runs it: fresh processes
            return meter.measure_fresh(candidate, processes=3, min_time_s=6.0)
        return meter.measure(candidate, search_precision)

    table = None
    if use_table:
        from compressor.bench.layers import call_overhead_ms, measure_table, ort_layer_timer
        from compressor.ir.model_io import default_opset
        from compressor.planning.allocate import fewest_kept

        timer = ort_layer_timer(provider, meter.threads, spinning=spinning)
        table = measure_table(an, default_opset(proto), timer, reference, opts.round_to,
                              lambda n: fewest_kept(n, opts.min_channels),
                              progress=True, overhead_ms=call_overhead_ms(timer), leftovers=opts.drop_layers)
        if profile_table:
            table = _profiled_table(table, proto, an, scores, opts, spec, meter, spinning)

    sens = sensitivity() if table is not None and sensitivity is not None else None
    macs = None
    if table is not None and keep_macs:
        from compressor.ir.model_io import default_opset
        from compressor.planning.allocate import cost_table, fewest_kept

        macs = cost_table(an, default_opset(proto), opts.round_to, lambda n: fewest_kept(n, opts.min_channels), "macs")

    def knob_for(o: PlanOptions):
        if table is None:
            return None
        from compressor.planning.allocate import Allocator, TableKnob
        return TableKnob(Allocator(an, scores, o, table, sensitivity=sens, macs=macs,
                                   reprobe=reprobe() if reprobe is not None and sens is not None else None))

    multiples = [opts.round_to] + ([m for m in LATENCY_FALLBACK if m < opts.round_to] if fallback_to_1 else [])
    missed = []
    try:
        for i, multiple in enumerate(multiples):
            o = dataclasses.replace(opts, round_to=multiple)
            try:
                res = plan_for_latency(an, scores, o, target_ms, measure, reference, search,
                                       knob=knob_for(o), reread_reference=reread if speedup is None else None,
                                       label=None if speedup is None else
                                       f"--target-speedup {speedup:g} ({target_ms:.4g} ms)")
                break
            except LatencyTargetError as exc:
                if i == len(multiples) - 1:
                    if missed:
                        exc.budget["fallback"] = missed
                    hint = _small_batch_gpu_hint(meter.provider_used, spec.shapes, str(exc))
                    if hint:
                        raise LatencyTargetError(f"{exc} ({hint})", exc.budget) from exc
                    raise
                missed.append({"round_to": multiple, "error": str(exc), "steps": exc.budget.get("steps", [])})
                reference = exc.budget.get("reference_ms", reference)  # as re-read during that search, if it was
    finally:
        meter.close()
    if missed:
        res.details["fallback"] = missed
    if table is not None:
        res.details["layers"] = table.rows({g.id: len(g.kept) for g in res.plan.groups})
    if speedup is not None:
        res.details["target_speedup"] = speedup
    res.details.update({"reference_interval_ms": [lo, hi], "reference_runs": len(dense),
                        "reference_pooled_ms": median_interval(meter.reference_history)[1],
                        "provider": meter.provider_used, "threads": meter.threads, "spinning": bool(spinning)})
    return res


def _small_batch_gpu_hint(provider_used: str | None, shapes, message: str) -> str | None:
    """Why a GPU target may be out of reach at batch 1: measured on an H200 (docs/benchmarks.md,
    "On a GPU"), resnet50 at --ratio 0.5 ran 1.02x faster at batch 1 and 1.84x at batch 32."""
    from compressor.bench.session import GPU_PROVIDERS

    batches = [int(shape[0]) for shape in shapes.values() if len(shape) > 0]
    if provider_used not in GPU_PROVIDERS or "unreachable" not in message or not batches or max(batches) > 1:
        return None
    return ("at batch 1 a GPU mostly waits on kernel launches, which narrower layers do not shorten: "
            "give the batch you serve with --input-shape, or let --drop-layers remove layers whole")


AUTO_ROUND_CANDIDATES = (1, 4, 8, 16, 32)


def _auto_round(proto, an, opts, choose, provider, spec, spinning: bool = False, extra: dict | None = None,
                log=None):
    """Plan with each channel multiple, time them all interleaved, keep the fastest. ``choose``
    records each plan's budget in ``extra["budget"]``: the chosen plan's is put back there."""
    from compressor.bench.api import benchmark

    extra = {} if extra is None else extra
    candidates, budgets, failed = [], [], []
    for r in AUTO_ROUND_CANDIDATES:
        try:
            plan = choose(dataclasses.replace(opts, round_to=r))
        except UsageError as exc:  # listed in the report: that multiple had no plan
            failed.append({"round_to": r, "error": str(exc)})
            continue
        candidates.append((r, plan))
        budgets.append(extra.pop("budget", None))
    if not candidates:
        raise UsageError("--round-to auto: no channel multiple meets the budget ("
                         + "; ".join(f"{f['round_to']}: {f['error']}" for f in failed) + ")")
    # multiples that give the same widths (16 and 32 on a 48-channel net, say) are timed once
    unique: dict[tuple, int] = {}
    for i, (_, plan) in enumerate(candidates):
        unique.setdefault(tuple(sorted((g, tuple(k)) for g, k in plan.keep.items())), i)
    first = sorted(unique.values())
    shapes = [f"{k}:{'x'.join(map(str, v))}" for k, v in spec.shapes.items()]
    res = benchmark([_pruned_for_timing(an, candidates[i][1]) for i in first], provider=provider,
                    input_shapes=shapes, progress=False, min_time=1.0, spinning=spinning,
                    log=(lambda line: log(line) if log and line.startswith("warning") else None))
    timed = dict(zip(first, res.results))
    table = []
    for r, plan in candidates:
        i = unique[tuple(sorted((g, tuple(k)) for g, k in plan.keep.items()))]
        m = timed[i]
        row = {"round_to": r, "macs": plan_cost(an, plan.keep)[0], "latency_ms": m.stats.p50_ms,
               "provider": m.provider}
        if candidates[i][0] != r:
            row["same_plan_as"] = candidates[i][0]
        table.append(row)
    best = min(range(len(table)), key=lambda i: (table[i]["latency_ms"], "same_plan_as" in table[i]))
    plan = candidates[best][1]
    plan.options = dataclasses.replace(plan.options, round_to=candidates[best][0])
    if budgets[best] is not None:
        extra["budget"] = budgets[best]
    return plan, {"chosen": candidates[best][0], "measured": table, "spinning": bool(spinning),
                  **({"failed": failed} if failed else {})}


def load_calibration(source) -> dict[str, np.ndarray]:
    """Calibration samples: a dict ``{input name: array}``, a .npz file of such arrays, or a .npy
    array for a model with one input (named ``None`` until matched to the model's input)."""
    if isinstance(source, np.ndarray):  # one array for a one-input model, as a .npy file gives
        source = {None: source}
    if isinstance(source, dict):
        data, where = {k: np.asarray(v) for k, v in source.items()}, "calibration data"
    else:
        path = Path(source)
        if path.is_dir():
            raise UsageError(f"calibration file {path} is a directory")
        if not path.is_file():
            raise UsageError(f"calibration file not found: {path}")
        try:
            if path.suffix == ".npz":
                with np.load(path, allow_pickle=False) as z:
                    data = {k: z[k] for k in z.files}
            else:
                data = {None: np.load(path, allow_pickle=False)}
        except (OSError, ValueError) as exc:
            raise UsageError(f"cannot read calibration data {path} (a .npz of arrays or a .npy array expected): "
                             f"{exc}") from None
        where = f"calibration data {path}"
    if not data:
        raise UsageError(f"{where} holds no arrays")
    for name, arr in data.items():
        label = f"{where}" + (f", input '{name}'" if name is not None else "")
        if arr.ndim < 1 or len(arr) < 1:
            raise UsageError(f"{label}: no samples (shape {list(arr.shape)}; samples go on the first axis)")
        if arr.dtype.kind not in "biuf":
            raise UsageError(f"{label}: numbers expected, got dtype {arr.dtype}")
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise UsageError(f"{label}: holds NaN or infinite values")
    return data


def _read_plan(path, analysis: Analysis, opts: PlanOptions) -> PruningPlan:
    """A plan file (--plan-out) or a JSON report whose ``plan`` list is replayed."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UsageError(f"plan file not found: {path}") from None
    except OSError as exc:
        raise UsageError(f"cannot read plan file {path}: {exc.strerror or exc}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"plan file {path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path} is neither a plan file nor a JSON report")
    try:
        if isinstance(data.get("plan"), list):
            return plan_from_slices(analysis, data["plan"], opts)
        return PruningPlan.from_dict(data)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:  # a field missing or of the wrong type
        what = f"missing field {exc}" if isinstance(exc, KeyError) else f"{type(exc).__name__}: {exc}"
        raise UsageError(f"plan file {path} is not a valid plan ({what})") from None
