"""`emoengine bench`: throughput and parity per backend x batch, written as JSON (and optionally a Markdown table)."""

from __future__ import annotations

from pathlib import Path

import typer

from emoengine.cli.main import app
from emoengine.compare import FP32_TOLERANCE
from emoengine.engine.backends import BACKENDS
from emoengine.errors import RunFailure, UserInputError


def _int_list(text: str, option: str) -> list[int]:
    try:
        values = [int(b) for b in text.split(",") if b.strip()]
    except ValueError:
        raise UserInputError(f"{option} takes comma-separated positive integers, not {text!r}") from None
    if not values or min(values) < 1:
        raise UserInputError(f"{option} takes comma-separated positive integers, not {text!r}")
    return values


@app.command("bench")
def bench_command(
    weights: str = typer.Option("random", help="EmoNet checkpoint (.pth) or 'random'."),
    backends: str = typer.Option("torch,ort,ort-int8", help=f"Comma-separated: {', '.join(BACKENDS)}, with "
                                 "options as in torch-cuda:fp16+compile (see `emoengine info`)."),
    batch: str = typer.Option("1,8,32", help="Comma-separated batch sizes."),
    runs: int = typer.Option(7, help="Timed runs per backend x batch, at least (faces/s from their median)."),
    min_time: float = typer.Option(1.0, "--min-time", help="Seconds of timed runs per backend x batch, at least."),
    warmup: int = typer.Option(2, help="Untimed runs first."),
    parity_inputs: int = typer.Option(128, help="Face crops compared with the fp32 PyTorch reference."),
    threads: int | None = typer.Option(None, help="ONNX Runtime intra-op threads (default: its own choice)."),
    json_out: Path | None = typer.Option(
        None, "--json", help="Results JSON (default benchmarks/results/<cpu|gpu>-<device>-<date>.json); "
                             "failed rows keep their traceback there."),
    markdown: Path | None = typer.Option(None, "--markdown", help="Also write the table as Markdown."),
) -> None:
    """Time EmoNet per backend and batch, and compare every output with the fp32 PyTorch reference."""
    from emoengine.benchmarks.bench import results_path, run_bench, write_markdown, write_results

    batches = _int_list(batch, "--batch")
    names = [b.strip() for b in backends.split(",") if b.strip()]
    report = run_bench(weights, names, batches, runs=runs, warmup=warmup, parity_inputs=parity_inputs,
                       threads=threads, progress=lambda msg: typer.echo(f"  {msg}", err=True), min_time_s=min_time)
    out = results_path(report) if json_out is None else json_out
    write_results(report, out)
    if markdown is not None:
        write_markdown(report, markdown)
    failed = print_rows(report["results"])
    machine = report["machine"]
    typer.echo(f"wrote {out} ({machine['cpu']}{', ' + machine['gpu'] if machine['gpu'] else ''})")
    if failed:  # an fp32 backend that disagrees with PyTorch is a bug; other precisions' verdicts are reported
        raise RunFailure(f"parity FAIL for {', '.join(failed)}: outputs differ from PyTorch by more than "
                         f"{FP32_TOLERANCE:g} of their magnitude (see {out})")


def print_rows(rows: list[dict]) -> list[str]:
    """One line per row (one per backend that did not run); returns the fp32 backends whose parity failed."""
    failed, reported = [], set()
    for r in rows:
        if r["status"] != "measured":
            if r["backend"] not in reported:
                typer.echo(f"{r['backend']:>9}: {r['status']}: {r['reason']}")
            reported.add(r["backend"])
            continue
        par = r.get("parity", {})
        verdict = "parity unknown" if "pass" not in par else (
            f"parity {'PASS' if par['pass'] else 'FAIL'} (worst rel {par['worst_rel']:.1e}, "
            f"top-1 {par['top1_agreement']:.1%})")
        if par.get("pass") is False and r["precision"] == "fp32" and r["backend"] not in failed:
            failed.append(r["backend"])
        speed = "" if r.get("speedup_vs_torch_b1") is None else f" = {r['speedup_vs_torch_b1']:.2f}x torch b1"
        typer.echo(f"{r['backend']:>9} b{r['batch']:<3} {r['faces_per_s']:7.2f} faces/s{speed}, "
                   f"p50 {r['latency_ms']['p50']:.0f} ms, p95 {r['latency_ms']['p95']:.0f} ms; {verdict}")
    return failed
