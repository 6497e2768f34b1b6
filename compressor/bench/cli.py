"""The `bench` click command: latency of one or more ONNX models, interleaved, as table/JSON/CSV.

Wire it into the main group with `group.add_command(bench_command)`. Errors the user can fix
are one line `error: ...` on stderr with the error's exit code (2 for usage errors), any other
failure one `internal error: ...` line (exit 1), Ctrl-C `interrupted` (130); `--debug` (here or
on the parent group) shows the traceback instead.
"""

from __future__ import annotations

import sys

import click

from compressor.bench.api import benchmark
from compressor.errors import Terminated, UsageError, failure


def parse_batches(text: str | None) -> list[int] | None:
    """'1,8,32' -> [1, 8, 32]; UsageError for anything but positive integers."""
    if text is None:
        return None
    parts = [p.strip() for p in text.split(",")]
    if not parts or any(not p.isdigit() or int(p) < 1 for p in parts):
        raise UsageError(f"--batch {text!r}: expected positive integers separated by commas, "
                         "e.g. --batch 1,8,32")
    return list(dict.fromkeys(int(p) for p in parts))


def _debug_requested(ctx: click.Context, debug: bool) -> bool:
    if debug:
        return True
    parent = ctx.parent
    while parent is not None:
        if parent.params.get("debug"):
            return True
        parent = parent.parent
    return isinstance(ctx.obj, dict) and bool(ctx.obj.get("debug"))


@click.command("bench", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("models", nargs=-1, required=True, metavar="MODEL.onnx [OTHER.onnx ...]")
@click.option("--provider", type=click.Choice(["cpu", "cuda", "tensorrt"], case_sensitive=False),
              default="cpu", show_default=True, help="onnxruntime execution provider to request.")
@click.option("--strict-provider", is_flag=True,
              help="Fail (exit 2) instead of falling back when the provider cannot be created.")
@click.option("--batch", "batch_text", metavar="B[,B...]",
              help="Batch sizes, e.g. 1,8,32 (replaces dim 0). Default: the batch the models imply "
                   "(dim 0 of --input-shape, or a fixed batch; the same for all of them), else 1.")
@click.option("--threads", type=int, default=None,
              help="intra-op threads per session. Default: the cores available.")
@click.option("--input-shape", "input_shapes", multiple=True, metavar="[NAME:]1x3x224x224",
              help="Shape of a dynamic input (repeatable); unnamed only for single-input models.")
@click.option("--warmup", type=int, default=10, show_default=True,
              help="Untimed runs per model before measuring.")
@click.option("--runs", type=int, default=None,
              help="Timed runs per model (with --interleave block or --spinning: timed blocks per model, "
                   "each of --block-time seconds).")
@click.option("--min-time", type=float, default=None, metavar="S",
              help="Run until every model has run S seconds (default: 1 s, at least 10 runs; not with --runs).")
@click.option("--spinning", is_flag=True,
              help="Keep onnxruntime's thread spinning on (its default, as most deployments run) "
                   "instead of off; implies --interleave block.")
@click.option("--interleave", type=click.Choice(["run", "block"]), default=None,
              help="Alternate models run by run (default), or in blocks of --block-time seconds "
                   "with a short pause between them, each model running back to back as when "
                   "served alone (default with --spinning); the speedup is then taken from the "
                   "blocks' medians.")
@click.option("--block-time", type=float, default=None, metavar="S",
              help="Length of one model's block with --interleave block (default 0.25 s).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random inputs.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
@click.option("--csv", "as_csv", is_flag=True, help="CSV on stdout.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar or notes (errors still shown).")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@click.pass_context
def bench_command(ctx: click.Context, models: tuple[str, ...], provider: str,
                  strict_provider: bool, batch_text: str | None, threads: int | None,
                  input_shapes: tuple[str, ...], warmup: int, runs: int | None,
                  min_time: float | None, spinning: bool, interleave: str | None,
                  block_time: float | None, seed: int,
                  as_json: bool, as_csv: bool, quiet: bool, debug: bool) -> None:
    """Measure inference latency of ONNX models with onnxruntime.

    Several models are timed interleaved in one process (the order rotates every round) and each
    is reported with its speedup over the first: first / this, per round, median [p10-p90].
    onnxruntime's thread spinning is off unless --spinning: spinning pools of sessions run in
    turn on a few cores slow each other down.
    """
    try:
        if as_json and as_csv:
            raise UsageError("--json and --csv are mutually exclusive; pick one")
        if runs is not None and min_time is not None:
            raise UsageError("--runs and --min-time are mutually exclusive; pick one")

        def log(message: str) -> None:
            if quiet and not message.startswith("warning:"):
                return
            click.echo(message, err=True)

        result = benchmark(
            list(models),
            provider=provider.lower(),
            batches=parse_batches(batch_text),
            threads=threads,
            warmup=warmup,
            runs=runs,
            min_time=min_time,
            input_shapes=list(input_shapes),
            progress=not quiet,
            seed=seed,
            strict_provider=strict_provider,
            log=log,
            spinning=spinning,
            interleave=interleave,
            block_time=block_time,
        )
    except (Exception, KeyboardInterrupt, Terminated) as exc:  # one line each; --debug: the traceback
        if _debug_requested(ctx, debug) and isinstance(exc, Exception):
            raise
        line, code = failure(exc)
        click.echo(line, err=True)
        sys.exit(code)
    if as_json:
        click.echo(result.json())
    elif as_csv:
        click.echo(result.csv(), nl=False)
    else:
        click.echo(result.table())
