"""`emoengine report OUT_DIR`: rebuild report.html (or a batch's index.html) from the files of a finished run."""

from __future__ import annotations

import typer

from emoengine.cli.main import app


@app.command("report")
def report_command(
    out_dir: str = typer.Argument(..., help="The --out folder of a finished `run` (or of a `batch`)."),
) -> None:
    """Write report.html from a run's files, also for runs made before reports existed (a batch: index.html)."""
    from emoengine.engine.outputs.report import rebuild

    typer.echo(f"emoengine: wrote {rebuild(out_dir)}", err=True)
