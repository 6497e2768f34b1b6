"""The `compress` command line: prune (the default command), inspect, bench.

Exit codes: 0 success, 1 internal error, 2 bad input or usage, 3 verification failure, 130
interrupted (Ctrl-C), 143 terminated (SIGTERM; the `compress` script's handler, see ``run``).
Errors are one line on stderr; `--debug` shows the traceback.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import sys
import traceback

import click

from compressor.errors import VerificationError, failure, raise_on_termination

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class DefaultGroup(click.Group):
    """A group whose first argument, when it is not a subcommand, goes to ``prune``."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help", "--version"):
            near = difflib.get_close_matches(args[0], list(self.commands), n=1, cutoff=0.75)
            if near and not os.path.exists(args[0]):  # a misspelt command, not a model file
                raise click.UsageError(f"no such command '{args[0]}'; did you mean '{near[0]}'?", ctx)
            args = ["prune", *args]
        return super().parse_args(ctx, args)


def _fail(exc: BaseException, debug: bool) -> None:
    if debug:
        traceback.print_exc()
    line, code = failure(exc)
    click.echo(line, err=True)
    sys.exit(code)


def _layer_rows(layers: list[dict], limit: int = 12) -> list[str]:
    """The layers whose table latency the plan cut most, as a small table."""
    rows = sorted(layers, key=lambda r: r["planned_ms"] - r["dense_ms"])[:limit]
    if not rows:
        return []
    width = max(len(r["node"]) for r in rows)
    out = [f"  {'layer':<{width}}  {'channels in/out':>21}  {'table ms':>17}"]
    for r in rows:
        ch = f"{r['dense'][0]}/{r['dense'][1]} -> {r['planned'][0]}/{r['planned'][1]}"
        out.append(f"  {r['node']:<{width}}  {ch:>21}  {r['dense_ms']:7.3f} -> {r['planned_ms']:6.3f}")
    if len(layers) > limit:
        out.append(f"  ... {len(layers) - limit} more in the JSON report (budget.layers)")
    return out


def _human(n: float | None) -> str:
    if n is None:
        return "-"
    for unit, div in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return f"{n:.0f}"


def _table(rows: list[tuple[str, str, str, str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = []
    for k, row in enumerate(rows):
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _summarise_notes(notes: list[str]) -> list[str]:
    """Per-group matching notes become one count per way of matching (the JSON keeps every note)."""
    kept, matched = [], {}
    for n in notes:
        m = re.fullmatch(r"learned group .* -> analysis group \d+: matched by (.+)", n)
        if m:
            matched[m.group(1)] = matched.get(m.group(1), 0) + 1
        else:
            kept.append(n)
    summary = [f"{k} learned group(s) matched by {how}" for how, k in matched.items()]
    if len(kept) > 4:
        kept = kept[:3] + [f"{len(kept) - 3} more note(s) in the JSON report"]
    return kept[:1] + summary + kept[1:]


def _unprunable_line(groups: list[dict]) -> str:
    """One line: how many groups stay whole and the commonest reasons (op and cause, names dropped)."""
    kinds: dict[str, int] = {}
    for g in groups:
        seen = set()
        for reason in g["reasons"]:
            kind = re.sub(r"\s*\([^()]*\)", "", re.sub(r"'[^']*'", "'…'", reason))
            if kind not in seen:
                seen.add(kind)
                kinds[kind] = kinds.get(kind, 0) + 1
    top = sorted(kinds.items(), key=lambda kv: -kv[1])[:3]
    return (f"left whole: {len(groups)} group(s), {sum(g['channels'] for g in groups)} channels ("
            + "; ".join(f"{k} x{n}" for k, n in top) + ("; ..." if len(kinds) > 3 else "")
            + "); `compress inspect` lists each")


def render_prune_report(r: dict) -> str:
    rows = [("", "before", "after", "ratio")]
    rows.append(("MACs", _human(r["macs_before"]), _human(r["macs_after"]),
                 f"{r['macs_before'] / max(r['macs_after'], 1):.2f}x"))
    rows.append(("params", _human(r["params_before"]), _human(r["params_after"]),
                 f"{r['params_before'] / max(r['params_after'], 1):.2f}x"))
    lat = r.get("latency")
    if lat:
        where = lat["provider"] + (", spinning" if lat.get("spinning") else "")
        rows.append((f"latency ({where})", f"{lat['before_ms']:.2f} ms", f"{lat['after_ms']:.2f} ms",
                     f"{lat['speedup']:.2f}x"))
    g, ch = r["groups"], r["channels"]
    out = [_table(rows), ""]
    out.append(f"groups: {g['pruned']} pruned of {g['prunable']} prunable ({g['total']} total); "
               f"channels removed: {ch['removed']} of {ch['total']}")
    rw = r.get("removed_whole") or {}
    if rw.get("groups"):
        how = " (--drop-layers)" if (r.get("options") or {}).get("drop_layers") else ""
        out.append(f"removed whole: {rw['groups']} group(s), {rw['nodes']} node(s) left the graph{how}")
    v = r["verify"]
    if v.get("skipped"):
        out.append("verification: SKIPPED (--no-verify): this model has not been proven")
    else:
        status = "passed" if v["passed"] else "FAILED"
        out.append(f"verification: {status}, max relative error {v['max_rel_err']:.2e} "
                   f"(tolerance {v['tolerance']:g}, {v['trials']} random inputs, {v['provider']}"
                   + (", compared in float32" if v.get("compared_in", "").startswith("float32") else "") + ")")
        second = v.get("second_shape")
        if second and "skipped" in second:
            out.append("second shape: none run (the original model runs at none of the other shapes tried: this "
                       "dynamic model is proven at the verification shape only)")
        elif second:
            where = ", ".join(f"{n} {'x'.join(map(str, d))}" for n, d in second["shapes"].items())
            out.append(f"second shape: {where}, " + (f"max relative error {second['max_rel_err']:.2e}"
                                                      if "max_rel_err" in second else second.get("error", "failed")))
    if r.get("barriers"):
        out.append(f"barriers: {len(r['barriers'])} (run `compress inspect` for details)")
    if r.get("unprunable"):
        out.append(_unprunable_line(r["unprunable"]))
    if r.get("shape_pins"):
        out.append(f"pinned: {len(r['shape_pins'])} value(s) computed from channel counts at run time now fed as "
                   "the original constants (report: shape_pins)")
    if r.get("widened"):
        out.append(f"widened: {len(r['widened'])} node(s) that mix channels run at full width between the cuts "
                   "(report: widened)")
    if r.get("norms_pruned"):
        out.append(f"norms pruned through: {len(r['norms_pruned'])} (LayerNorms, GroupNorms with one group: their "
                   "statistics now cover the kept channels; --freeze-norms keeps them whole)")
    for t in r.get("transforms", []):
        proof = ("not proven (--no-verify)" if t.get("max_rel_err") is None
                 else f"max relative error {t['max_rel_err']:.2e} against its input")
        out.append(f"{t['transform']}: {t['channels_removed']} channel(s) removed, "
                   f"MACs {_human(t['macs_before'])} -> {_human(t['macs_after'])}, {proof}")
    if r.get("budget"):
        b = r["budget"]
        unit = " ms" if b["kind"] == "latency" else " of the original"
        speedup = f" (--target-speedup {b['target_speedup']:g})" if b.get("target_speedup") else ""
        roles = [st.get("role", "search") for st in b["steps"]]
        counted = (f"{roles.count('search')} search and {roles.count('confirm')} confirmation measurements"
                   if b["kind"] == "latency" else f"{len(roles)} candidate plans")
        out.append(f"budget: {b['kind']} target {b['target']:.4g}{unit}{speedup}, reached {b['achieved']:.4g}{unit} "
                   f"({counted})")
        if b.get("rereads"):
            moved = [r for r in b["rereads"] if r["reanchored"]]
            out.append(f"reference: the dense model re-read {len(b['rereads'])} time(s) when a measurement's dense runs "
                       f"drifted; first {b['reference_first_ms']:.4g} ms, target read against {b['reference_ms']:.4g} ms"
                       + (" (re-aimed)" if moved else " (confirmed)"))
        if b.get("latency_table"):
            t = b["latency_table"]
            out.append(f"latency table: {t['layers']} layers ({t['distinct_layers']} distinct) measured in "
                       f"{t['probes']} probes, {t['seconds']:.1f} s; allocation {b['allocation']} "
                       f"by {b.get('allocation_cost', 'importance')}")
            c = t.get("calibration")
            if c and "skipped" in c:
                out.append(f"latency table not fitted to profiles: {c['skipped']}")
            elif c:
                out.append(f"latency table fitted to {c['profiled_models']} whole-model profile(s): {c['layers_fitted']} "
                           f"layers at a median {c['slope_median']:.2f}x their probes, {c['rest_nodes_costed']} other "
                           f"nodes costed by their kernels ({c['rest_kernels_ms']:.3g} ms dense)")
            out += _layer_rows(b.get("layers", []))
        if b.get("allocation") in ("macs-table", "params-table"):
            what = "MACs" if b["allocation"] == "macs-table" else "parameters"
            out.append(f"allocation: per-group widths on the layers' exact {what} by {b['allocation_cost']}, "
                       f"at most {b['max_group_ratio']:.0%} of a group removed"
                       + (" unless all of it (--drop-layers)" if (r.get("options") or {}).get("drop_layers") else ""))
        if b.get("sensitivity"):
            sv = b["sensitivity"]
            out.append(f"sensitivity: {sv['groups']} groups probed on {sv['inputs']}, {sv['runs']} runs, "
                       f"{sv['seconds']:.1f} s")
        if b.get("reprobed"):
            rp = b["reprobed"]
            out.append("re-probed at " + ", ".join(f"{p['at_fraction']:g} (output change {p['output_change']:.3g})"
                                                   for p in rp)
                       + f", {sum(p['seconds'] for p in rp):.1f} s")
    if r.get("round_to_auto"):
        ra = r["round_to_auto"]
        out.append("round-to auto: " + ", ".join(f"{m['round_to']}: {m['latency_ms']:.3f} ms" for m in ra["measured"])
                   + f" -> {ra['chosen']}"
                   + "".join(f"; {f['round_to']}: no plan ({f['error'][:80]})" for f in ra.get("failed", [])))
    out.append(f"importance: {r['importance']}" + "".join(f"; {n}" for n in _summarise_notes(r.get("importance_notes", []))))
    for d in r.get("defaults_used", []):
        out.append(f"default used: {d}")
    for n in r.get("load_notes", []):
        out.append(f"loading: {n}")
    if r.get("output"):
        out.append(f"wrote {r['output']} in {r['seconds']:.2f} s")
    return "\n".join(out)


def _idle_options(ctx: click.Context, latency: bool, timing: bool, replay: bool) -> list[str]:
    """Options given on the command line that this run does not use (a latency search's options
    without a latency target, a provider with nothing timed, how to pick channels when a plan is
    replayed)."""
    from click.core import ParameterSource

    latency_only = "--target-latency/--target-speedup"
    uses = {"latency_tolerance": (latency, latency_only), "latency_table": (latency, latency_only),
            "profile_table": (latency, latency_only),
            "provider": (latency or timing, "--target-latency/--target-speedup, --round-to auto and --bench"),
            "spinning": (latency or timing, "--target-latency/--target-speedup, --round-to auto and --bench"),
            "importance": (not replay, "planning (--plan-in replays the plan's channels)"),
            "min_channels": (not replay, "planning (--plan-in replays the plan's channels)")}
    flags = {"latency_tolerance": "--latency-tolerance", "latency_table": "--latency-table/--no-latency-table",
             "profile_table": "--profile-table/--no-profile-table", "provider": "--provider",
             "spinning": "--spinning", "importance": "--importance", "min_channels": "--min-channels"}
    return [f"{flags[name]} has no effect here: it applies to {where}"
            for name, (used, where) in uses.items()
            if not used and ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE]


@click.group(cls=DefaultGroup, context_settings=CONTEXT)
@click.version_option(package_name="compressor")
def main() -> None:
    """Structured pruning of ONNX models, proven numerically.

    \b
      compress MODEL.onnx -o small.onnx --ratio 0.5 [--json]
      compress inspect MODEL.onnx [--json]
      compress bench MODEL.onnx [OTHER.onnx ...]
    """


shape_option = click.option("--input-shape", "input_shapes", multiple=True, metavar="[NAME:]1x3x224x224",
                            help="Concrete shape of a dynamic input (repeatable; bare form for single-input "
                                 "models). Unknown batch dims default to 1.")


@main.command("prune", context_settings=CONTEXT)
@click.argument("model", type=click.Path(dir_okay=True))
@click.option("-o", "--output", type=click.Path(), help="Where to write the pruned model (required unless "
              "--dry-run).")
@click.option("--ratio", type=float, default=None,
              help="Fraction of channels removed from each prunable group (in [0, 1)).  [default: 0.5, unless a "
              "--target-* budget, --plan-in or --learned-widths decides]")
@click.option("--learned-widths", is_flag=True,
              help="Prune each group to the width training learned (DSA's keep ratio, group gating's non-zero "
              "gates, C-SGD's cluster count), read from the model's compressor.learned metadata.")
@click.option("--global", "global_ranking", is_flag=True, help="Rank channels across all groups instead of "
              "removing the same fraction from each (with --ratio, --target-macs/--target-params, or "
              "--target-latency --no-latency-table; not with --sensitivity, --keep-macs or the latency table).")
@click.option("--round-to", default=None, metavar="N|auto",
              help="Keep channel counts multiples of N; 'auto' times 1/4/8/16/32 on --provider and keeps the fastest. "
              "[default: 1; 8 with --target-latency/--target-speedup, falling back to 4, then 1, when no plan "
              "at the coarser multiple meets the target]")
@click.option("--target-macs", type=float, metavar="F", help="Keep at most fraction F of the MACs (instead of --ratio).")
@click.option("--target-params", type=float, metavar="F", help="Keep at most fraction F of the parameters.")
@click.option("--target-latency", type=float, metavar="MS",
              help="Prune until the measured latency on --provider is within --latency-tolerance of MS milliseconds.")
@click.option("--target-speedup", type=float, metavar="S",
              help="A latency target as a speedup (S > 1): S times faster than the dense model as the search "
              "measures it (as --target-latency, which then is that reading / S).")
@click.option("--latency-tolerance", type=float, default=0.05, show_default=True, metavar="F",
              help="How close (relative, in [0.005, 0.5]) the measured latency must come to "
              "--target-latency/--target-speedup. Tighter takes more measurements.")
@click.option("--latency-table/--no-latency-table", default=True, show_default=True,
              help="With --target-latency: allocate per-group widths on a latency table of the model's layers "
              "measured on --provider (--no-latency-table: search uniform or --global ratios by MACs).")
@click.option("--profile-table/--no-profile-table", default=True, show_default=True,
              help="With the latency table: fit it to onnxruntime's profiles of the whole model and of a half-width "
              "copy (CPU provider), so each layer costs what it takes inside the graph, not as a one-node probe.")
@click.option("--sensitivity/--no-sensitivity", default=None,
              help="Allocate per-group widths by how much the outputs change when each group loses its least "
              "important channels, measured on --calibration data, else on random inputs: on the latency table "
              "with --target-latency (the default there; --no-sensitivity: by channel scores over their group's "
              "mean), on the layers' MACs or parameters with --target-macs / --target-params (off by default "
              "there: uniform).")
@click.option("--keep-macs", is_flag=True,
              help="With --target-latency: allocate the cut so that the plan keeps the most MACs the target allows "
              "(each step removes the fewest MACs per millisecond saved) instead of by sensitivity.")
@click.option("--reprobe", is_flag=True,
              help="With --sensitivity: measure the sensitivities again on the plan the allocation has reached at "
              "0.9, 0.8, 0.7, ... of the dense cost, and go on from each with them (a group then costs what it "
              "costs beside the groups already cut). One more measurement per step passed.")
@click.option("--drop-layers", is_flag=True,
              help="Let the budget's allocation also remove a channel group whole where that is exact: the layers "
              "only it feeds leave the graph (a DenseNet layer, a residual branch, which becomes its bias). Needs "
              "--target-latency/--target-speedup with the latency table, or --target-macs/--target-params with "
              "--sensitivity. Such plans are meant to be "
              "fine-tuned: compressor.train.finetune trains them in PyTorch under the plan's masks.")
@click.option("--calibration", type=click.Path(), metavar="FILE.npz|FILE.npy",
              help="Real input samples for --sensitivity (implies it): a .npz keyed by input name, or a .npy for "
              "a one-input model (first axis = samples).")
@click.option("--min-channels", type=int, default=1, show_default=True, help="Never keep fewer channels in a group.")
@click.option("--exclude", multiple=True, metavar="GLOB", help="Protect groups touching these node or tensor "
              "names (repeatable).")
@click.option("--importance", default="auto", show_default=True,
              type=click.Choice(["auto", "learned", "l1", "l2", "bn", "random"]),
              help="Channel criterion: auto (learned when the model carries it, else l2), learned, l1, l2, bn, random.")
@shape_option
@click.option("--plan-out", type=click.Path(), help="Write the pruning plan (JSON) here.")
@click.option("--plan-in", type=click.Path(), help="Replay a plan written by --plan-out (or a --json report's plan) "
              "on the same model; the plan's widths replace --ratio, budgets and the allocation's options.")
@click.option("--merge-identical", "merge_tol", type=float, default=None, metavar="TOL",
              help="First merge channels whose filters are identical within relative TOL (proven against the "
              "input within 1e-5, or 10 x TOL).")
@click.option("--merge-learned", is_flag=True, help="First merge the C-SGD clusters stored by training (exact, proven).")
@click.option("--fold-constants", is_flag=True,
              help="First fold gates and constant-output channels into the next layer's bias where exact.")
@click.option("--freeze-norms", is_flag=True, help="Keep the channels a LayerNorm or a GroupNorm with one group "
              "normalises whole (by default they are pruned and leave its statistics; the proof computes the reference "
              "that way).")
@click.option("--no-verify", is_flag=True, help="Skip the numerical proof (the model is then unverified).")
@click.option("--tolerance", type=float, default=1e-4, show_default=True, help="Max relative error allowed.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for random inputs / random importance.")
@click.option("--bench", is_flag=True, help="Also measure latency before/after (interleaved).")
@click.option("--provider", default="cpu", show_default=True, type=click.Choice(["cpu", "cuda", "tensorrt"]),
              help="Provider for --bench, --target-latency and --round-to auto.")
@click.option("--spinning", is_flag=True, help="Time --bench, --target-latency and --round-to auto with onnxruntime's "
              "default thread spinning on, as a deployment with default session options runs (models then "
              "alternate in blocks, see `compress bench --spinning`); off by default.")
@click.option("--dry-run", is_flag=True, help="Plan, prune and verify, but write no model (a --plan-out file is still written).")
@click.option("--json", "as_json", is_flag=True, help="Print the JSON report on stdout.")
@click.option("--debug", is_flag=True, help="Show tracebacks on errors.")
def prune_command(model, output, ratio, learned_widths, global_ranking, round_to, target_macs, target_params, target_latency,
                  target_speedup, latency_tolerance,
                  latency_table, profile_table, sensitivity, keep_macs, reprobe, drop_layers, calibration, min_channels, exclude, importance, input_shapes, plan_out, plan_in, merge_tol, merge_learned,
                  fold_constants, freeze_norms, no_verify, tolerance, seed, bench, provider, spinning, dry_run,
                  as_json, debug):
    """Prune MODEL's channel groups and write a verified, smaller model."""
    from compressor import api
    from compressor.errors import UsageError

    printed: set[str] = set()

    def warn_now(line: str) -> None:  # a warning as it happens (on stderr: stdout may be JSON)
        if line not in printed:
            printed.add(line)
            click.echo(line, err=True)

    try:
        if output is None and not dry_run:
            raise UsageError("missing -o/--output (or pass --dry-run)")
        res = api.prune(model, ratio=ratio, output=None if dry_run else output, input_shapes=input_shapes,
                        global_ranking=global_ranking, round_to=round_to, min_channels=min_channels,
                        target_macs=target_macs, target_params=target_params, target_latency=target_latency,
                        target_speedup=target_speedup, latency_tolerance=latency_tolerance,
                        provider=provider, latency_table=latency_table, profile_table=profile_table,
                        sensitivity=sensitivity, keep_macs=keep_macs, reprobe=reprobe,
                        drop_layers=drop_layers,
                        calibration=calibration, merge_identical=merge_tol, merge_learned=merge_learned,
                        fold_constants=fold_constants, prune_norms=not freeze_norms,
                        exclude=exclude, importance=importance, plan_in=plan_in, verify_model=not no_verify,
                        tolerance=tolerance, seed=seed, spinning=spinning, plan_out=plan_out or None,
                        learned_widths=learned_widths, log=warn_now)
        report = res.report
        if bench:
            from compressor.bench.api import compare_latency

            def warn_only(line: str) -> None:  # the report already lists the defaults used
                if line.startswith("warning"):
                    warn_now(line)
                    text = line.removeprefix("warning: ")
                    if text not in report.setdefault("warnings", []):
                        report["warnings"].append(text)

            report["latency"] = compare_latency(model, res.model, provider=provider,
                                                input_shapes=list(input_shapes) or None, progress=not as_json,
                                                log=warn_only, spinning=spinning)
    except VerificationError as exc:
        if as_json and exc.report is not None:
            click.echo(json.dumps(exc.report, indent=1))
        _fail(exc, debug)
    except BaseException as exc:  # noqa: BLE001 - the CLI reports every failure in one line
        if isinstance(exc, SystemExit):
            raise
        _fail(exc, debug)
    idle = _idle_options(click.get_current_context(), latency=target_latency is not None or target_speedup is not None,
                         timing=bench or round_to == "auto", replay=plan_in is not None)
    if idle:
        report.setdefault("warnings", []).extend(idle)
    for line in report.get("warnings", ()):
        warn_now(f"warning: {line}")
    if as_json:
        click.echo(json.dumps(report, indent=1))
    else:
        click.echo(render_prune_report(report))


@main.command("inspect", context_settings=CONTEXT)
@click.argument("model", type=click.Path(dir_okay=True))
@shape_option
@click.option("--exclude", multiple=True, metavar="GLOB", help="Groups to treat as protected.")
@click.option("--freeze-norms", is_flag=True, help="Keep the groups a LayerNorm over channels or a GroupNorm with "
              "one group normalises whole (listed as not prunable, as prune does with it).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
@click.option("--debug", is_flag=True, help="Show tracebacks on errors.")
def inspect_command(model, input_shapes, exclude, freeze_norms, as_json, debug):
    """Show MODEL's channel groups, what blocks pruning and why, and MACs per layer."""
    from compressor import api

    try:
        info = api.inspect(model, input_shapes=input_shapes, exclude=exclude, prune_norms=not freeze_norms)
    except BaseException as exc:  # noqa: BLE001
        if isinstance(exc, SystemExit):
            raise
        _fail(exc, debug)
    for line in info.get("warnings", ()):
        click.echo(f"warning: {line}", err=True)
    if as_json:
        click.echo(json.dumps(info, indent=1))
        return
    click.echo(f"{info['input']}: opset {info['opset']}, inputs "
               + ", ".join(f"{k}={'x'.join(map(str, v))}" for k, v in info["input_shapes"].items()))
    click.echo(f"MACs {_human(info['macs'])}, params {_human(info['params'])}; "
               f"groups: {info['groups']['prunable']} prunable of {info['groups']['total']}")
    click.echo("")
    click.echo(f"{'group':>5}  {'channels':>8}  {'prunable':<8}  {'whole':<5}  members / reason")
    for g in info["group_list"]:
        members = ", ".join(sorted({m["tensor"] for m in g["members"]}))
        if len(members) > 70:
            members = members[:67] + "..."
        what = members if g["prunable"] else "; ".join(g["reasons"])[:160]
        whole = ("yes" if g.get("removable_whole") else "no") if g["prunable"] else "-"
        click.echo(f"{g['id']:>5}  {g['size']:>8}  {'yes' if g['prunable'] else 'no':<8}  {whole:<5}  {what}")
    if any(g.get("removable_whole") for g in info["group_list"]):
        click.echo("whole: --drop-layers may remove the group entirely (the JSON gives the nodes that would leave, "
                   "or what blocks it)")
    if info["barriers"]:
        click.echo("")
        click.echo("barriers:")
        for b in info["barriers"]:
            click.echo(f"  {b['op_type']} '{b['node']}': {b['reason']}")
    layers = sorted(info["layers"], key=lambda r: -r["macs"])
    if layers and info["macs"]:
        top = layers[:10]
        width = max(len(r["node"]) for r in top)
        click.echo("")
        click.echo(f"{'layer':<{width}}  {'MACs':>8}  share")
        for r in top:
            click.echo(f"{r['node']:<{width}}  {_human(r['macs']):>8}  {r['macs'] / info['macs']:5.1%}")
        if len(layers) > len(top):
            click.echo(f"... {len(layers) - len(top)} more layers in --json (layers)")
    for d in info["defaults_used"]:
        click.echo(f"default used: {d}")
    for n in info.get("load_notes", []):
        click.echo(f"loading: {n}")


def _register_bench() -> None:
    from compressor.bench.cli import bench_command

    main.add_command(bench_command)


_register_bench()

def run() -> None:
    """The `compress` console script: SIGTERM/SIGHUP unwind like Ctrl-C (no partial output is left
    behind), then the command runs."""
    raise_on_termination()
    main()


if __name__ == "__main__":  # pragma: no cover
    run()
