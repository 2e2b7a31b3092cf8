"""`emoengine info`: versions, backends available here, and an artifact's metadata."""

from __future__ import annotations

import json
from typing import Optional

import typer

from emoengine.cli.main import app


@app.command("info")
def info_command(artifact: Optional[str] = typer.Argument(None, help="An exported .onnx to describe.")) -> None:
    """What this machine can run, and what an exported model holds."""
    import importlib.util

    import onnxruntime as ort

    import emoengine

    typer.echo(f"emoengine {emoengine.__version__}")
    typer.echo(f"onnxruntime {ort.__version__}: providers {', '.join(ort.get_available_providers())}")
    torch_spec = importlib.util.find_spec("torch")
    if torch_spec:
        import torch

        typer.echo(f"torch {torch.__version__}: cuda {'yes' if torch.cuda.is_available() else 'no'}")
    else:
        typer.echo("torch: not installed (backends torch/torch-cuda and export unavailable)")
    typer.echo(f"tensorrt: {'installed' if importlib.util.find_spec('tensorrt') else 'not installed'}")
    if artifact:
        from emoengine.engine.backends import OrtRunner

        runner = OrtRunner(artifact)
        typer.echo(f"{artifact}: inputs {runner.input_names}, outputs {runner.output_names}")
        typer.echo(json.dumps(runner.metadata, indent=2))
