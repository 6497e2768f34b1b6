"""Tables (markdown) and plots (PNG) from the result JSONs under ``runs/``.

``write_report(runs, out_md, plot_dir)`` writes one table per (table, setting) and two plots per
table: accuracy vs MACs fraction and accuracy vs measured batch-1 latency. Every row names its
result JSON and its run log so each number can be traced.
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path


def load_results(runs: Path) -> list[dict]:
    out = []
    for p in sorted(runs.glob("*/*.json")):
        try:
            d = json.loads(p.read_text())
        except json.JSONDecodeError:
            continue
        if isinstance(d, dict) and d.get("schema") == "compressor.experiment/1" and d.get("status") == "done":
            d["_path"] = str(p)
            out.append(d)
    return out


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.2f}"


def _rel(path: str, root: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(root.resolve()))
    except ValueError:
        return path


def table_md(rows: list[dict], root: Path) -> str:
    head = ("| model | method | cut | seed | before pruning % | right after pruning % | after fine-tuning % | "
            "MACs (M) | MACs % | params (k) | speedup b1 | speedup b32 | wall (s) | result |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
    lines = []
    for r in rows:
        c = r["config"]
        lat = r.get("latency") or {}
        sp32 = lat.get("batch32", {}).get("speedup")
        cut = "–" if c["method"] == "dense" else f"{c['cut']:g}x"
        lines.append(
            f"| {c['model']} | {c['method']} | {cut} | {c['seed']} | "
            f"{_pct(r.get('acc_phase_a') if c['method'] != 'dense' else None)} | {_pct(r.get('acc_pruned'))} | "
            f"{_pct(r.get('acc_finetuned'))} | {r['macs'] / 1e6:.2f} | {100 * r['macs_fraction']:.1f} | "
            f"{r['params'] / 1e3:.1f} | {r['speedup']:.2f} | {'–' if sp32 is None else f'{sp32:.2f}'} | "
            f"{r['wall_s']:.0f} | `{_rel(r['_path'], root)}` |")
    return head + "\n".join(lines) + "\n"


def widths_md(rows: list[dict], source: str) -> str:
    out = [f"### Width policies (`{source}`)\n",
           "| cut | policy | round_to | kept widths | MACs % | speedup b1 | speedup b32 | ms b1 (dense → pruned) |",
           "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            out.append(f"| {r['cut']:g}x | {r['policy']} | {r['round_to']} | {r['error']} | | | | |")
            continue
        out.append(f"| {r['cut']:g}x | {r['policy']} | {r['round_to']} | {'/'.join(map(str, r['widths']))} | "
                   f"{100 * r['macs_fraction']:.1f} | {r['speedup_b1']:.2f} | {r['speedup_b32']:.2f} | "
                   f"{r['ms_b1'][0]:.3f} → {r['ms_b1'][1]:.3f} |")
    return "\n".join(out) + "\n"


ANCHORS = ("tp_groupnorm", "tp_growingreg", "tp_groupnorm_weak")


def _delta(a, b) -> str:
    return "–" if a is None or b is None else f"{100 * (a - b):+.2f}"


def _acc_cells(r: dict, refs: list[dict | None]) -> list[str]:
    """'right after → fine-tuned', then the fine-tuned difference to each reference run (pt)."""
    ft = r.get("acc_finetuned")
    return ([f"{_pct(r.get('acc_pruned'))} → {_pct(ft)}"]
            + [_delta(ft, ref.get("acc_finetuned") if ref else None) for ref in refs])


def _per_cut_rows(methods: list[str], cuts: list[float], columns: list[str], cells) -> list[str]:
    """A markdown table with one row per method and, per cut, ``columns`` (header templates with
    ``{c}`` for the cut); ``cells(method, cut)`` gives that cut's cells, or None: "not run"."""
    out = ["| method | " + " | ".join(col.format(c=f"{c:g}x") for c in cuts for col in columns) + " |",
           "|---|" + "---|" * (len(columns) * len(cuts))]
    for m in methods:
        row = []
        for c in cuts:
            got = cells(m, c)
            row += got if got is not None else ["not run"] + [""] * (len(columns) - 1)
        out.append(f"| {m + ' (anchor)' if m in ANCHORS else m} | " + " | ".join(row) + " |")
    return out


def cuts_md(results: list[dict], setting: str = "cpu", seed: int = 0) -> str:
    """One row per method, both cuts side by side (tables ``main`` = 2x and ``cut4`` = 4x): accuracy
    right after pruning and after fine-tuning, and the fine-tuned difference to the dense baseline
    and to the Torch-Pruning GroupNorm anchor of the same cut."""
    cell: dict[tuple[str, float], dict] = {}
    table_cut = {"main": 2.0, "cut4": 4.0}
    for r in results:
        c = r["config"]
        if c["setting"]["name"] != setting or c["seed"] != seed or c["table"] not in table_cut:
            continue
        if c["method"] == "dense":  # one dense run per table (same phase-A checkpoint)
            cell[("dense", table_cut[c["table"]])] = r
            continue
        cell[(c["method"], c["cut"])] = r
    if not cell:
        return ""
    cuts = [2.0, 4.0]
    methods = sorted({m for m, _ in cell if m != "dense"}, key=lambda m: (m in ANCHORS, m))
    best = {}  # strongest Torch-Pruning row per cut (highest fine-tuned accuracy): the conservative anchor
    for c in cuts:
        tps = [cell[(m, c)] for m in ANCHORS if (m, c) in cell]
        if tps:
            best[c] = max(tps, key=lambda r: r["acc_finetuned"])
    best_note = "; ".join(f"{c:g}x: {r['config']['method']} ({_pct(r['acc_finetuned'])} %)" for c, r in best.items())
    dense_note = "; ".join(f"{c:g}x: {_pct(cell[('dense', c)]['acc_finetuned'])} % "
                           f"(`{Path(cell[('dense', c)]['_path']).name}`)" for c in cuts if ("dense", c) in cell)

    out = [f"### Both cuts side by side (setting `{setting}`, seed {seed}; tables `main` = 2x, `cut4` = 4x)\n",
           "Accuracy % right after pruning (no fine-tuning) → after fine-tuning; Δ = fine-tuned minus the dense "
           "baseline / minus the Torch-Pruning GroupNorm anchor / minus the best Torch-Pruning row at the same "
           "cut (pt). "
           + (f"Dense baseline (8 epochs, the dense run of each table): {dense_note}. " if dense_note
              else "No dense run. ")
           + (f"Best Torch-Pruning row: {best_note}." if best_note else "") + "\n"]

    def cells(m: str, c: float) -> list[str] | None:
        r = cell.get((m, c))
        return None if r is None else _acc_cells(r, [cell.get(("dense", c)), cell.get(("tp_groupnorm", c)),
                                                       best.get(c)])

    out += _per_cut_rows(methods, cuts, ["{c} right after → fine-tuned", "{c} Δ dense", "{c} Δ TP-GroupNorm",
                                         "{c} Δ best TP"], cells)
    return "\n".join(out) + "\n"


def models_md(results: list[dict], table: str, setting: str = "cpu", seed: int = 0) -> str:
    """Per model of a table that holds both cuts (``models``): one row per method, each cut's accuracy
    right after pruning → after fine-tuning, the fine-tuned difference to the dense baseline and to
    the best Torch-Pruning row of that model and cut, and the measured batch-1 speedup."""
    cell: dict[tuple[str, str, float], dict] = {}
    for r in results:
        c = r["config"]
        if c["table"] == table and c["setting"]["name"] == setting and c["seed"] == seed:
            cell[(c["model"], c["method"], c["cut"])] = r
    if not cell:
        return ""
    cuts = sorted({k[2] for k in cell})
    out = []

    for model in sorted({k[0] for k in cell}):
        best = {}
        for c in cuts:
            tps = [cell[(model, m, c)] for m in ANCHORS if (model, m, c) in cell]
            if tps:
                best[c] = max(tps, key=lambda r: r["acc_finetuned"])
        dense = {c: cell.get((model, "dense", c)) for c in cuts}
        dense_note = "; ".join(f"{c:g}x table: {_pct(r['acc_finetuned'])} %" for c, r in dense.items() if r)
        best_note = "; ".join(f"{c:g}x: {r['config']['method']} ({_pct(r['acc_finetuned'])} %)"
                              for c, r in best.items())
        methods = sorted({k[1] for k in cell if k[0] == model and k[1] != "dense"},
                         key=lambda m: (m in ANCHORS, m))
        out += [f"#### {model} (table `{table}`, setting `{setting}`, seed {seed})\n",
                f"Dense baseline after the same 8 epochs: {dense_note or 'not run'}. "
                f"Best Torch-Pruning row: {best_note or 'none'}. Accuracy % right after pruning → after "
                "fine-tuning; Δ = fine-tuned minus the dense baseline / minus the best Torch-Pruning row (pt); "
                "speedup = measured ORT CPU batch-1 latency of the dense model over the pruned one.\n"]

        def cells(m: str, c: float, model=model, dense=dense, best=best) -> list[str] | None:
            r = cell.get((model, m, c))
            if r is None:
                return None
            return _acc_cells(r, [dense.get(c), best.get(c)]) + [f"{100 * r['macs_fraction']:.1f}",
                                                                  f"{r['speedup']:.2f}"]

        out += _per_cut_rows(methods, cuts, ["{c} right after → fine-tuned", "{c} Δ dense", "{c} Δ best TP",
                                             "{c} MACs %", "{c} speedup"], cells)
        out.append("")
    return "\n".join(out) + "\n"


def seeds_md(results: list[dict], table: str, setting: str = "cpu") -> str:
    """Per model of a table run with more than one seed: per method and cut, the accuracy right after
    pruning and after fine-tuning as mean ± sample std over the seeds that finished (n)."""
    runs: dict[tuple[str, str, float], list[dict]] = defaultdict(list)
    for r in results:
        c = r["config"]
        if c["table"] == table and c["setting"]["name"] == setting:
            runs[(c["model"], c["method"], c["cut"])].append(r)
    out = []
    for model in sorted({k[0] for k in runs}):
        seeds = sorted({r["config"]["seed"] for k, rs in runs.items() if k[0] == model for r in rs})
        if len(seeds) < 2:
            continue
        cuts = sorted({k[2] for k in runs if k[0] == model})
        methods = sorted({k[1] for k in runs if k[0] == model}, key=lambda m: (m != "dense", m in ANCHORS, m))

        def stat(rs: list[dict], key: str) -> str:
            vals = [100 * r[key] for r in rs if r.get(key) is not None]
            if not vals:
                return "–"
            sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
            return f"{statistics.fmean(vals):.2f} ± {sd:.2f}"

        out += [f"#### {model} over seeds {', '.join(map(str, seeds))} (table `{table}`, setting `{setting}`)\n",
                "Accuracy %: mean ± sample std over the seeds that finished (n), right after pruning → after "
                "fine-tuning.\n"]

        def cells(m: str, c: float, model=model) -> list[str]:
            rs = runs.get((model, m, c), [])
            return [stat(rs, "acc_pruned") if m != "dense" else "–", stat(rs, "acc_finetuned"), str(len(rs))]

        out += _per_cut_rows(methods, cuts, ["{c} right after", "{c} fine-tuned", "{c} n"], cells)
        out.append("")
    return "\n".join(out) + "\n" if out else ""


def plots(rows: list[dict], plot_dir: Path, stem: str) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plot_dir.mkdir(parents=True, exist_ok=True)
    made = []
    dense = [r for r in rows if r["config"]["method"] == "dense"]
    pruned = [r for r in rows if r["config"]["method"] != "dense"]
    for xkey, xlabel, fname in (("macs_fraction", "MACs (fraction of dense)", f"{stem}_acc_vs_macs.png"),
                                ("latency", "latency as a fraction of the dense model's (ORT CPU, batch 1, 1 thread, interleaved)",
                                 f"{stem}_acc_vs_latency.png")):
        fig, ax = plt.subplots(figsize=(7, 4.5))

        def xval(r):
            if xkey == "macs_fraction":
                return r["macs_fraction"]
            lat = (r.get("latency") or {}).get("batch1")
            return 1.0 / lat["speedup"] if lat else None  # absolute ms drift with machine load

        for r in pruned:
            x = xval(r)
            if x is None:
                continue
            anchor = r["config"]["method"] in ANCHORS  # Torch-Pruning rows: squares
            ax.scatter([x], [100 * r["acc_finetuned"]], marker="s" if anchor else "o")
            ax.annotate(r["config"]["method"], (x, 100 * r["acc_finetuned"]), fontsize=7,
                        xytext=(3, 3), textcoords="offset points")
            if r.get("acc_pruned") is not None:
                ax.scatter([x], [100 * r["acc_pruned"]], marker="x", color="grey")
        for r in dense:
            ax.axhline(100 * r["acc_finetuned"], color="k", ls="--", lw=0.8, label=f"dense seed {r['config']['seed']}")
            ax.scatter([1.0], [100 * r["acc_finetuned"]], marker="*", s=120, color="k")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("test accuracy % (o: fine-tuned, x: right after pruning)", fontsize=8)
        ax.set_title(stem + " (squares: Torch-Pruning anchors)" if any(
            r["config"]["method"] in ANCHORS for r in pruned) else stem)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
        fig.tight_layout()
        path = plot_dir / fname
        fig.savefig(path, dpi=110)
        plt.close(fig)
        made.append(path)
    return made


def write_report(runs: Path, out_md: Path, plot_dir: Path, header: str = "", tables: list[str] | None = None) -> str:
    """All tables into the GENERATED block of ``out_md``; with ``tables``, only those tables, into a
    block of their own (the other blocks, and the results they were made from, are left alone)."""
    results = load_results(runs)
    if tables:
        return _write_tables(results, tables, out_md, plot_dir)
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in results:
        groups[(r["config"]["table"], r["config"]["setting"]["name"])].append(r)
    root = out_md.parent.parent
    parts = [header] if header else []
    probe = runs / "widths" / "probe.json"
    if probe.exists():
        parts.append(widths_md(json.loads(probe.read_text()), _rel(str(probe), root)))
    both = cuts_md(results)
    if both:
        parts.append(both)
    for (table, setting), rows in sorted(groups.items()):
        rows.sort(key=lambda r: (r["config"]["model"], r["config"]["cut"], r["config"]["method"] != "dense",
                                 r["config"]["method"], r["config"]["seed"]))
        stem = f"{table}_{setting}"
        parts.append(f"### Table `{table}`, setting `{setting}`\n\n" + table_md(rows, root))
        for p in plots(rows, plot_dir, stem):
            parts.append(f"![{p.stem}]({_rel(str(p), out_md.parent)})\n")
    text = "\n".join(parts)
    begin, end = "<!-- BEGIN GENERATED (tools/experiments.py report) -->", "<!-- END GENERATED -->"
    block = f"{begin}\n{text}\n{end}"
    old = out_md.read_text() if out_md.exists() else ""
    if begin in old and end in old:
        new = old[: old.index(begin)] + block + old[old.index(end) + len(end):]
    else:
        new = (old + "\n\n" if old else "# Results\n\n") + block + "\n"
    out_md.parent.mkdir(parents=True, exist_ok=True)
    out_md.write_text(new)
    return text


def _write_tables(results: list[dict], tables: list[str], out_md: Path, plot_dir: Path) -> str:
    root = out_md.parent.parent
    parts = []
    for table in tables:
        rows = [r for r in results if r["config"]["table"] == table]
        if not rows:
            raise SystemExit(f"no finished runs of table {table!r} under the runs folder")
        both = models_md(results, table)
        if both:
            parts.append(both)
        over_seeds = seeds_md(results, table)
        if over_seeds:
            parts.append(over_seeds)
        by_setting: dict[str, list[dict]] = defaultdict(list)
        for r in rows:
            by_setting[r["config"]["setting"]["name"]].append(r)
        for setting, srows in sorted(by_setting.items()):
            srows.sort(key=lambda r: (r["config"]["model"], r["config"]["cut"], r["config"]["method"] != "dense",
                                      r["config"]["method"], r["config"]["seed"]))
            parts.append(f"#### All runs of table `{table}`, setting `{setting}`\n\n" + table_md(srows, root))
            for model in sorted({r["config"]["model"] for r in srows}):
                mrows = [r for r in srows if r["config"]["model"] == model]
                for p in plots(mrows, plot_dir, f"{table}_{model}_{setting}"):
                    parts.append(f"![{p.stem}]({_rel(str(p), out_md.parent)})\n")
    text = "\n".join(parts)
    key = ",".join(tables)
    begin = f"<!-- BEGIN GENERATED (tools/experiments.py report --tables {key}) -->"
    end = f"<!-- END GENERATED {key} -->"
    block = f"{begin}\n{text}\n{end}"
    old = out_md.read_text() if out_md.exists() else ""
    if begin in old and end in old:
        new = old[: old.index(begin)] + block + old[old.index(end) + len(end):]
    else:
        new = (old.rstrip("\n") + "\n\n" if old else "# Results\n\n") + block + "\n"
    out_md.parent.mkdir(parents=True, exist_ok=True)
    out_md.write_text(new)
    return text
