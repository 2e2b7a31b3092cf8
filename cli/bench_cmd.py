"""`emoengine bench`: throughput and parity per backend, written as JSON under benchmarks/results/."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from emoengine.cli.main import app
from emoengine.errors import RunFailure, UserInputError


@app.command("bench")
def bench_command(
    weights: str = typer.Option("random", help="EmoNet checkpoint (.pth) or 'random'."),
    backends: str = typer.Option("torch,ort", help="Comma-separated: torch, torch-cuda, ort, ort-cuda, trt."),
    batch: str = typer.Option("1,8", help="Comma-separated batch sizes."),
    iters: int = typer.Option(5, min=1),
    out: Optional[Path] = typer.Option(
        None, help="Results JSON (default benchmarks/results/<cpu|gpu>-<device>-<date>.json)."),
) -> None:
    """Time EmoNet per backend and compare every output with the PyTorch reference."""
    from emoengine.benchmarks.bench import results_path, run_bench, write_results

    try:
        batches = [int(b) for b in batch.split(",") if b.strip()]
    except ValueError:
        raise UserInputError(f"--batch takes comma-separated positive integers, not {batch!r}") from None
    report = run_bench(weights, [b.strip() for b in backends.split(",") if b.strip()], batches, iters=iters)
    out = results_path(report) if out is None else out
    write_results(report, out)
    failed = []
    for r in report["results"]:
        if not r["ok"]:
            failing = r["error"].startswith("failed while running")
            typer.echo(f"{r['backend']:>10}: {'' if failing else 'unavailable: '}{r['error']}")
            continue
        t = ", ".join(f"b{b} {v['images_per_s']:.1f} img/s ({v['ms']:.0f} ms)"
                      for b, v in r["batch_timings"].items())
        par = "" if r["parity_pass"] is None else (
            f"; parity {'PASS' if r['parity_pass'] else 'FAIL'} (worst {max(r['parity'].values()):.2e})")
        if r.get("parity_error"):
            par = f"; parity unknown ({r['parity_error']})"
        if r["parity_pass"] is False:
            failed.append(r["backend"])
        typer.echo(f"{r['backend']:>10}: {t}{par}")
    typer.echo(f"wrote {out} ({report['device']})")
    if failed:
        raise RunFailure(f"parity FAIL for {', '.join(failed)}: outputs differ from PyTorch by more than "
                         f"{report['tolerance']:g} of their magnitude (see {out})")
