"""`emoengine batch`: many videos through `run`'s code path on Ray Data (a local Ray unless --ray-address).

Every `run` option is a `batch` option too: the command's signature is its own options plus RunSettings' fields
(but those marked batch=False: quiet and resume, which batch has its own way), so an option added to RunSettings
reaches `batch` without a second definition.
"""

from __future__ import annotations

from pathlib import Path

import typer

from emoengine.cli.main import app
from emoengine.cli.options import settings_of, with_signature


def batch_options(
    inputs: list[str] = typer.Argument(..., help="Video files, folders of videos, globs ('clips/**/*.mp4') or "
                                                 "text files with one video path a line."),
    out: Path = typer.Option(Path("emoengine-batch"), help="Output folder: <video-name>/ per video, "
                                                           "predictions.parquet, batch_summary.json."),
    ray_address: str | None = typer.Option(None, help="Join this Ray cluster (HEAD:6379, or 'auto' on "
                                                         "one of its nodes); default: a local Ray."),
    workers: int | None = typer.Option(None, min=1, help="Actors, each with its own detector and model "
                                                            "(default: GPUs / --gpus-per-worker, else CPUs/2 "
                                                            "locally, CPUs/4 on a cluster)."),
    gpus_per_worker: float = typer.Option(0.0, min=0.0, help="GPUs each actor reserves (e.g. 1, or 0.5 to "
                                                             "share one); use with --backend ort-cuda|trt."),
    cpus_per_worker: float | None = typer.Option(None, min=0.01, help="CPUs each actor reserves (default: "
                                                                         "1 on a cluster; locally a share "
                                                                         "that leaves one CPU to Ray Data)."),
    retries: int = typer.Option(3, min=0, help="Times a video is retried when its worker process dies."),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="Run again the videos an earlier batch found unreadable."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No per-video lines and no summary line."),
):
    """(signature only: see batch_command)"""


def batch(**kwargs) -> None:
    """Run many videos through `run`'s pipeline on Ray Data; per-video outputs, predictions.parquet,
    batch_summary.json. A re-run skips videos whose outputs are complete."""
    from emoengine.engine.batch.ray_driver import require_ray, run_batch
    from emoengine.engine.batch.videos import list_inputs, prepare_model

    require_ray()
    items = list_inputs(kwargs["inputs"])
    out = kwargs["out"]
    # the options are checked once here (one line, exit 2) before any Ray starts
    template = settings_of(kwargs, quiet=True, resume=False).resolve(items[0].path, out)
    if not kwargs["ray_address"]:   # on a cluster each node makes its own (its GPU, its TensorRT)
        prepare_model(template.model_args)
    summary = run_batch(items, out, template, template.model_args, address=kwargs["ray_address"],
                        workers=kwargs["workers"], cpus_per_worker=kwargs["cpus_per_worker"],
                        gpus_per_worker=kwargs["gpus_per_worker"], retries=kwargs["retries"],
                        retry_failed=kwargs["retry_failed"], quiet=kwargs["quiet"])
    if not kwargs["quiet"]:
        typer.echo(f"emoengine: batch: {summary['done']} done, {summary['skipped']} skipped, {summary['failed']} "
                   f"failed in {summary['wall_s']:.1f} s ({summary['videos_per_min']:.1f} videos/min, "
                   f"{summary['faces_per_s']:.1f} faces/s) → {out}", err=True)
    if summary["failed"]:
        failed = [v["video"] for v in summary["videos"] if v["status"] == "failed"]
        typer.echo(f"emoengine: error: {len(failed)} of {summary['inputs']} videos failed ({', '.join(failed[:5])}"
                   f"{', …' if len(failed) > 5 else ''}); reasons in {out / 'batch_summary.json'}", err=True)
        raise typer.Exit(1)


def batch_command(**kwargs) -> None:
    batch(**kwargs)


batch_command = with_signature(batch_command, batch_options, for_batch=True)
batch_command.__doc__ = batch.__doc__
app.command("batch")(batch_command)
