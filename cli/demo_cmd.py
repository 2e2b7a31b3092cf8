"""`emoengine demo`: make a clip from shipped photos and run the whole pipeline on it, offline."""

from __future__ import annotations

from pathlib import Path

import typer

from emoengine.cli.main import app
from emoengine.engine.backends import BACKENDS, DEFAULT_BACKEND


@app.command("demo")
def demo_command(
    out: Path = typer.Option(Path("emoengine-demo"), help="Where the clip and every output go."),
    weights: str = typer.Option("random", help="EmoNet checkpoint (.pth); default random weights."),
    backend: str = typer.Option(DEFAULT_BACKEND, help=" | ".join(BACKENDS)),
    frames: int = typer.Option(96, min=8, help="Length of the generated clip."),
) -> None:
    """Run everything on a generated clip (photos from insightface's wheel; no network needed)."""
    from emoengine.cli.progress import progress_bar
    from emoengine.cli.run_cmd import summary_line
    from emoengine.engine.model.emonet_model import open_emonet
    from emoengine.engine.run.demo import demo_frames, write_clip
    from emoengine.engine.run.driver import run_pipeline
    from emoengine.settings import RunSettings

    out.mkdir(parents=True, exist_ok=True)
    clip = write_clip(out / "demo_input.mp4", demo_frames(frames))
    typer.echo(f"emoengine demo: wrote the input clip {clip} ({frames} frames)", err=True)
    cfg = RunSettings(weights=weights, backend=backend, smooth=0.5).resolve(clip, out)
    summary = run_pipeline(cfg, lambda: open_emonet(**cfg.model_args), progress=progress_bar)
    typer.echo(summary_line(summary, out), err=True)
    typer.echo("wrote:")
    for p in sorted(out.iterdir()):
        if p.is_file() and not p.name.startswith("."):
            typer.echo(f"  {p}  ({p.stat().st_size / 1024:.0f} KiB)")
