"""`emoengine bench`: throughput and parity per backend, written as JSON under benchmarks/results/."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from emoengine.cli.main import app


@app.command("bench")
def bench_command(
    weights: str = typer.Option("random", help="EmoNet checkpoint (.pth) or 'random'."),
    backends: str = typer.Option("torch,ort", help="Comma-separated: torch, torch-cuda, ort, ort-cuda, trt."),
    batch: str = typer.Option("1,8", help="Comma-separated batch sizes."),
    iters: int = typer.Option(5, min=1),
    out: Optional[Path] = typer.Option(None, help="Results JSON (default benchmarks/results/<device>-<date>.json)."),
) -> None:
    """Time EmoNet per backend and compare every output with the PyTorch reference."""
    import re

    from emoengine.benchmarks.bench import run_bench, write_results

    report = run_bench(weights, [b.strip() for b in backends.split(",") if b.strip()],
                       [int(b) for b in batch.split(",")], iters=iters)
    if out is None:
        slug = re.sub(r"[^A-Za-z0-9]+", "-", report["device"]).strip("-").lower()[:40]
        out = Path("benchmarks/results") / f"{slug}-{report['date'][:10]}.json"
    write_results(report, out)
    for r in report["results"]:
        if not r["ok"]:
            typer.echo(f"{r['backend']:>10}: unavailable: {r['error']}")
            continue
        t = ", ".join(f"b{b} {v['images_per_s']:.1f} img/s" for b, v in r["batch_timings"].items())
        par = "" if r["parity_pass"] is None else (
            f"; parity {'PASS' if r['parity_pass'] else 'FAIL'} (worst {max(r['parity'].values()):.2e})")
        typer.echo(f"{r['backend']:>10}: {t}{par}")
    typer.echo(f"wrote {out} ({report['device']})")
