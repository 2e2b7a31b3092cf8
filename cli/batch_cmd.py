"""`emoengine batch`: many videos through `run`'s code path on Ray Data (a local Ray unless --ray-address).

Every `run` option is a `batch` option too: the command's signature is its own options plus `run_command`'s
(minus INPUT, --out, --quiet and --resume), so an option added to `run` reaches `batch` without a second definition.
"""

from __future__ import annotations

import inspect
import typing
from pathlib import Path

import typer

from emoengine.cli.main import app
from emoengine.cli.run_cmd import run_command, run_config

NOT_FROM_RUN = ("input", "out", "quiet", "resume")   # batch skips complete videos itself
# batch's own options with a name run also uses (batch's --workers counts Ray actors, run's detect threads)
BATCH_OWN = ("workers",)


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


def _run_options(kwargs: dict) -> dict:
    run_params = inspect.signature(run_command).parameters
    return {k: v for k, v in kwargs.items() if k in run_params and k not in NOT_FROM_RUN + BATCH_OWN}


def batch(**kwargs) -> None:
    """Run many videos through `run`'s pipeline on Ray Data; per-video outputs, predictions.parquet,
    batch_summary.json. A re-run skips videos whose outputs are complete."""
    from emoengine.engine.batch.ray_driver import require_ray, run_batch
    from emoengine.engine.batch.videos import list_inputs, prepare_model

    require_ray()
    items = list_inputs(kwargs["inputs"])
    out = kwargs["out"]
    # the options are checked once here (one line, exit 2) before any Ray starts
    template, model_args = run_config(input=items[0].path, out=out, quiet=True, **_run_options(kwargs))
    if not kwargs["ray_address"]:   # on a cluster each node makes its own (its GPU, its TensorRT)
        prepare_model(model_args)
    summary = run_batch(items, out, template, model_args, address=kwargs["ray_address"],
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


def _signature() -> tuple[inspect.Signature, dict]:
    """batch's own parameters, then run's (types resolved, so typer needs no module globals to read them)."""
    own, own_hints = inspect.signature(batch_options), typing.get_type_hints(batch_options)
    run, run_hints = inspect.signature(run_command), typing.get_type_hints(run_command)
    params = [p.replace(annotation=own_hints[p.name]) for p in own.parameters.values()]
    params += [p.replace(annotation=run_hints[p.name]) for p in run.parameters.values()
               if p.name not in NOT_FROM_RUN and p.name not in own.parameters]
    return inspect.Signature(params), {p.name: p.annotation for p in params}


def batch_command(**kwargs) -> None:
    batch(**kwargs)


batch_command.__signature__, batch_command.__annotations__ = _signature()
batch_command.__doc__ = batch.__doc__
app.command("batch")(batch_command)
