"""`emoengine layers`: every EmoNet module a tap can name, with its output shape and size per 256x256 crop."""

from __future__ import annotations

import typer

from emoengine.cli.main import app
from emoengine.errors import UserInputError


@app.command("layers")
def layers_command(
    classes: int = typer.Option(8, "--classes", help="5 or 8 (only the last layer's width differs)."),
    plain: bool = typer.Option(False, "--plain", help="Tab-separated text instead of a table."),
) -> None:
    """List EmoNet's modules by upstream name (what `--taps` takes): output shape and bytes per crop."""
    try:
        from emoengine.export.taps import layer_table
    except ImportError as e:
        raise UserInputError(f"layers needs PyTorch ({e.name} is missing): pip install torch") from e
    if classes not in (5, 8):
        raise UserInputError(f"--classes must be 5 or 8, not {classes}")
    layers = layer_table(classes)
    rows = [(layer.name, layer.kind, "x".join(map(str, layer.shape)), str(layer.bytes),
             "vector" if layer.is_vector else "map") for layer in layers]
    header = ("module", "type", "shape per crop", "bytes per crop", "kind")
    if plain:
        for row in (header, *rows):
            typer.echo("\t".join(row))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"EmoNet ({classes} classes): {len(rows)} modules, float32 outputs for one 256x256 crop")
    for i, name in enumerate(header):
        table.add_column(name, justify="right" if i == 3 else "left", no_wrap=True)
    for row in rows:
        table.add_row(*row)
    Console(highlight=False).print(table)
