"""`emoengine export`: checkpoint (or random weights) -> verified single-file ONNX model with metadata."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from emoengine.cli.main import app
from emoengine.errors import UserInputError
from emoengine.paths import models_dir


@app.command("export")
def export_command(
    weights: Optional[str] = typer.Option(None, "--weights", help="Upstream EmoNet checkpoint (.pth), or 'random'."),
    classes: Optional[int] = typer.Option(None, "--classes", help="5 or 8; must agree with the checkpoint."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Default: models/emonet{C}.onnx (emonet{C}-random.onnx for random weights)."),
    full_taps: bool = typer.Option(False, "--full-taps", help="Also output the full conv1 and emo_conv1 maps."),
    taps: str | None = typer.Option(None, "--taps", help="More outputs: EmoNet module paths, comma-separated "
                                       "(`emoengine layers` lists them), each the module's full output."),
    opset: int = typer.Option(17, "--opset", help="ONNX opset (13-20)."),
    verify: bool = typer.Option(True, "--verify/--no-verify", help="Check the file under ONNX Runtime CPU."),
    precision: str = typer.Option("fp32", "--precision", help="fp32 | fp16 (fp32 kept where measured necessary) | "
                                  "int8 (static QDQ calibrated on face crops, for ort-int8; with --trt: an engine "
                                  "from the QDQ model given by --onnx)."),
    trt: bool = typer.Option(False, "--trt", help="Also build the TensorRT engine (cached in models/, keyed by GPU, "
                             "TensorRT version and ONNX sha256)."),
    max_batch: int = typer.Option(64, "--max-batch", help="With --trt: the engine takes batches 1..N."),
    onnx_source: Optional[Path] = typer.Option(None, "--onnx", help="With --trt: build from this ONNX instead of "
                                               "exporting --weights."),
    calibration_crops: int = typer.Option(64, "--calibration-crops", help="int8: face crops to calibrate on."),
    calibration_method: str = typer.Option("minmax", "--calibration-method", help="int8: minmax, percentile "
                                             "or entropy (these two hold ~0.5 GB per calibration crop in memory)."),
    keep_float: Optional[str] = typer.Option(None, "--keep-float", help="int8: layer groups left in float, "
                                             "comma-separated (stem, hourglass0, hourglass1, emotion, fc; 'none')."),
) -> None:
    """Export EmoNet to ONNX: uint8 NHWC RGB crops in, expression/valence/arousal/heatmap/taps out."""
    # heavy imports here so `emoengine --help` and other commands stay fast
    try:
        from emoengine.export.checkpoint import load_emonet
        from emoengine.export.onnx_export import export_onnx
        from emoengine.export.taps import check_taps, emonet_module_paths, parse_taps
    except ImportError as e:
        raise UserInputError(f"export needs PyTorch ({e.name} is missing): pip install torch, then "
                             "pip install 'emoengine[export]'") from e
    tap_names = check_taps(parse_taps(taps), emonet_module_paths()) if taps else ()  # before any file is read

    if precision not in ("fp32", "fp16", "int8"):
        raise UserInputError(f"--precision must be fp32, fp16 or int8, not {precision!r}")
    if keep_float is not None and precision != "int8":
        raise UserInputError("--keep-float chooses the layers an int8 export leaves in float: add --precision int8")
    if precision == "int8" and not trt and onnx_source is None:  # QDQ model for ort-int8: cli/export_int8.py
        from emoengine.cli.export_int8 import export_int8

        if weights is None:
            raise UserInputError("--precision int8 needs --weights (a .pth checkpoint or 'random')")
        export_int8(weights, classes, output, full_taps, opset, verify, calibration_crops, calibration_method,
                    keep_float, taps=tap_names)
        return
    if trt or precision != "fp32" or onnx_source is not None:  # fp16 ONNX / TensorRT engine: cli/export_gpu.py
        from emoengine.cli.export_gpu import export_gpu

        return export_gpu(weights, classes, output, full_taps, opset, precision, trt, max_batch, onnx_source,
                          taps=tap_names)
    if weights is None:
        raise UserInputError("--weights is required (a .pth checkpoint or 'random')")
    if output is None and weights == "random":  # never overwrite a real export with random weights
        output = models_dir() / f"emonet{classes or 8}-random.onnx"
    loaded = load_emonet(weights, classes)
    report = export_onnx(loaded, output, full_taps=full_taps, opset=opset, verify=verify, taps=tap_names)
    _print_report(report)


def _print_report(report) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False)
    meta = report.metadata
    console.print(f"wrote [bold]{report.path}[/bold] ({report.size_bytes / 1e6:.1f} MB) "
                  f"in {report.export_s:.1f} s")
    console.print(f"  {meta['num_classes']} classes: {', '.join(meta['class_names'])}")
    console.print(f"  input: image {meta['input_layout']}")
    console.print(f"  taps: {', '.join(meta['taps'])}")
    console.print(f"  checkpoint: {meta['checkpoint_source']} (sha256 {meta['checkpoint_sha256'][:16]})")
    console.print(f"  producer: {meta['producer']}")
    if report.worst_rel_diff is None:
        console.print("  not verified (--no-verify)")
        return
    table = Table(title=f"ORT CPU vs PyTorch, batch {report.verify_batch} ({report.verify_s:.1f} s)",
                  caption="worst rel. diff = max |ort - torch| / max |torch|")
    table.add_column("output")
    table.add_column("shape")
    table.add_column("worst rel. diff", justify="right")
    for name, diff in report.worst_rel_diff.items():
        table.add_row(name, "x".join(map(str, report.output_shapes.get(name, ()))), f"{diff:.1e}")
    console.print(table)
