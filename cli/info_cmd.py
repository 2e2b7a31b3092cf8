"""`emoengine info`: versions, every backend with whether it runs here (and why not), and an artifact's metadata."""

from __future__ import annotations

import json

import typer

from emoengine.cli.main import app


@app.command("info")
def info_command(artifact: str | None = typer.Argument(None, help="An exported .onnx to describe.")) -> None:
    """What this machine can run, and what an exported model holds."""
    import importlib.util

    import onnxruntime as ort

    import emoengine
    from emoengine.engine.backends import availability, options_help

    typer.echo(f"emoengine {emoengine.__version__}")
    typer.echo(f"onnxruntime {ort.__version__}: providers {', '.join(ort.get_available_providers())}")
    if importlib.util.find_spec("torch"):
        import torch

        gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none visible"
        typer.echo(f"torch {torch.__version__}: cuda {torch.version.cuda or 'no (CPU build)'}, GPU {gpu}")
    else:
        typer.echo("torch: not installed (backends torch/torch-cuda and export unavailable)")
    typer.echo(f"tensorrt: {'installed' if importlib.util.find_spec('tensorrt') else 'not installed'}")
    typer.echo("backends:")
    available = availability()
    for name, missing in available.items():
        typer.echo(f"  {name:<11}{'available' if missing is None else 'unavailable: ' + missing}")
    typer.echo(f"  (specs: {options_help()})")
    _list_engines()
    if artifact:
        from emoengine.engine.backends import OrtRunner

        runner = OrtRunner(artifact)
        typer.echo(f"{artifact}: inputs {runner.input_names}, outputs {runner.output_names}")
        typer.echo(json.dumps(runner.metadata, indent=2))


def _list_engines() -> None:
    """Cached TensorRT engines under models/: what each was built for, and whether it would run here."""
    from emoengine.errors import UserInputError
    from emoengine.export.engine_cache import check_cached_engine, expected_here, read_sidecar
    from emoengine.paths import models_dir

    engines = sorted(models_dir().glob("*.engine")) if models_dir().is_dir() else []
    if not engines:
        return
    try:
        expected = expected_here()
    except UserInputError:   # no TensorRT or GPU here
        expected = None
    typer.echo(f"TensorRT engines in {models_dir()}:")
    for engine in engines:
        meta = read_sidecar(engine) or {}
        built = (f"{meta.get('engine_precision', '?')}, batch 1..{meta.get('engine_max_batch', '?')}, "
                 f"{meta.get('engine_device', '?')}, TensorRT {meta.get('engine_tensorrt', '?')}")
        if expected is None:
            verdict = "cannot run here (no TensorRT/GPU)"
        else:
            why = check_cached_engine(engine, expected)
            verdict = "runs here" if why is None else f"will be rebuilt: {why}"
        typer.echo(f"  {engine.name}: {built if meta else 'no sidecar'}; {verdict}")
