"""`emoengine run`: its options are emoengine.RunSettings' fields (cli/options.py); build the settings, call
engine.run.driver.run_pipeline, print one summary line."""

from __future__ import annotations

from pathlib import Path

import typer

from emoengine.cli.main import app
from emoengine.cli.options import settings_of, with_signature


def summary_line(summary: dict, out_dir: Path) -> str:
    s = summary["stages"]
    return (f"emoengine: {summary['frames']} frames, {summary['faces']} faces in {summary['wall_s']:.1f} s "
            f"({summary['frames_per_s']:.1f} frames/s, {summary['faces_per_s']:.1f} faces/s; busy s: "
            + ", ".join(f"{k} {v:.1f}" for k, v in s.items()) + f") on {summary['backend']} → {out_dir}")


def run_options(
    input: str = typer.Argument(..., help="Video file, image, folder of images, camera index or stream URL."),
    out: Path = typer.Option(Path("emoengine-out"), help="Output folder."),
):
    """Detect faces, run EmoNet, write predictions, annotated video and feature-map videos."""


def run_command(**options) -> None:
    from emoengine.cli.progress import progress_bar
    from emoengine.engine.model.emonet_model import open_emonet
    from emoengine.engine.run.driver import no_progress, run_pipeline

    settings = settings_of(options)
    cfg = settings.resolve(options["input"], options["out"])
    summary = run_pipeline(cfg, lambda: open_emonet(**cfg.model_args),
                           progress=no_progress if settings.quiet else progress_bar)
    if not settings.quiet and not summary.get("resumed"):
        typer.echo(summary_line(summary, options["out"]), err=True)


app.command("run")(with_signature(run_command, run_options))
