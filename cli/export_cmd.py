"""`emoengine export`: checkpoint (or random weights) -> verified single-file ONNX model with metadata."""

from __future__ import annotations

from pathlib import Path

import typer

from emoengine.cli.main import app
from emoengine.errors import UserInputError
from emoengine.export.artifacts import DEFAULT_OPSET


@app.command("export")
def export_command(
    weights: str | None = typer.Option(None, "--weights", help="Upstream EmoNet checkpoint (.pth), or 'random'."),
    classes: int | None = typer.Option(None, "--classes", help="5 or 8; must agree with the checkpoint."),
    output: Path | None = typer.Option(None, "--output", "-o", help="Default: models/emonet{C}.onnx (emonet{C}-random.onnx for random weights)."),
    full_taps: bool = typer.Option(False, "--full-taps", help="Also output the full conv1 and emo_conv1 maps."),
    taps: str | None = typer.Option(None, "--taps", help="More outputs: EmoNet module paths, comma-separated "
                                       "(`emoengine layers` lists them), each the module's full output."),
    opset: int = typer.Option(DEFAULT_OPSET, "--opset", help="ONNX opset (13-20)."),
    verify: bool = typer.Option(True, "--verify/--no-verify", help="Check the file under ONNX Runtime CPU."),
    precision: str = typer.Option("fp32", "--precision", help="fp32 | fp16 (fp32 kept where measured necessary) | "
                                  "int8 (static QDQ calibrated on face crops, in the flavour --target runs)."),
    target: str | None = typer.Option(None, "--target", help="The runtime the ONNX is for: ort (int8: U8S8, ONNX "
                                      "Runtime's CPU fast path) or trt (int8: symmetric S8S8, zero points 0, float "
                                      "bias, what TensorRT builds). Default: ort; trt with --trt."),
    trt: bool = typer.Option(False, "--trt", help="Also build the TensorRT engine (cached in models/, keyed by GPU, "
                             "TensorRT version and ONNX sha256)."),
    max_batch: int = typer.Option(64, "--max-batch", help="With --trt: the engine takes batches 1..N."),
    onnx_source: Path | None = typer.Option(None, "--onnx", help="With --trt: build from this ONNX instead of "
                                               "exporting --weights."),
    calibration_crops: int = typer.Option(64, "--calibration-crops", help="int8: face crops to calibrate on."),
    calibration_method: str = typer.Option("minmax", "--calibration-method", help="int8: minmax, percentile "
                                             "or entropy (these two hold ~0.5 GB per calibration crop in memory)."),
    keep_float: str | None = typer.Option(None, "--keep-float", help="int8: layer groups left in float, "
                                             "comma-separated (stem, hourglass0, hourglass1, emotion, fc; 'none')."),
    min_agreement: float | None = typer.Option(None, "--min-agreement", help="int8: choose the layer groups left "
                                                  "in float by measurement: the fewest that keep expression top-1 "
                                                  "agreement with fp32 >= X (0-1) on the calibration crops."),
) -> None:
    """Export EmoNet to ONNX: uint8 NHWC RGB crops in, expression/valence/arousal/heatmap/taps out."""
    try:  # heavy imports here so `emoengine --help` and other commands stay fast
        import torch  # noqa: F401
    except ImportError as e:
        raise UserInputError(f"export needs PyTorch ({e.name} is missing): pip install torch, then "
                             "pip install 'emoengine[export]'") from e
    from rich.console import Console

    from emoengine.export.taps import parse_taps
    from emoengine.export.targets import ExportRequest, run_export

    request = ExportRequest(weights=weights, classes=classes, output=output, full_taps=full_taps, opset=opset,
                            verify=verify, precision=precision, trt=trt, target=target, max_batch=max_batch,
                            onnx=onnx_source, calibration_crops=calibration_crops,
                            calibration_method=calibration_method, keep_float=keep_float,
                            min_agreement=min_agreement, taps=parse_taps(taps))
    console = Console(highlight=False, soft_wrap=True)
    run_export(request, say=console.print,
               on_step=lambda exported: PRINTERS.get(exported.step, _print_int8)(console, exported))


def _print_onnx(console, exported) -> None:
    report = exported.report
    if exported.temporary:   # the fp32 model an fp16/int8 file is made from
        if report.worst_rel_diff is not None:
            console.print(f"fp32 export verified (worst rel. diff {max(report.worst_rel_diff.values()):.1e})")
    elif not exported.last:  # the fp32 model an engine (or its fp16 model) is built from
        verified = ", verified against PyTorch" if report.worst_rel_diff is not None else ""
        console.print(f"wrote [bold]{report.path}[/bold] (fp32{verified})")
    else:
        _print_report(console, report)


def _print_report(console, report) -> None:
    from rich.table import Table

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


def _print_fp16(console, exported) -> None:
    rep = exported.report
    if rep is None:   # the source was fp16 already
        return
    console.print(f"wrote [bold]{rep.path}[/bold] ({rep.size_bytes / 1e6:.1f} MB, fp16) in {rep.convert_s:.1f} s; "
                  f"largest fp32 activation {rep.max_abs:.0f} (fp16 max 65504); kept fp32: "
                  f"{', '.join(rep.kept_fp32) or 'nothing'}")
    console.print("  emulated fp16 vs fp32, worst rel. diff (tolerance): " + ", ".join(
        f"{k} {v:.1e} ({rep.tolerance[k]:g})" for k, v in rep.worst_rel_diff.items()))


def _print_int8(console, exported) -> None:
    import json

    from emoengine.export.targets import AGREEMENT_CROPS

    report = exported.report
    recipe = json.loads(report.metadata["int8_recipe"])
    console.print(f"wrote [bold]{report.path}[/bold] ({report.path.stat().st_size / 1e6:.1f} MB, "
                  f"{recipe['format']}) in {report.quantize_s:.1f} s: {report.quantized_nodes} Conv/Gemm in int8, "
                  f"{report.float_nodes} kept float ({', '.join(report.keep_float) or 'none'})")
    console.print(f"  calibration: {report.method} on {report.calibration_crops} face crops, ranges cached in "
                  f"{report.calibration_cache}")
    search = recipe.get("search")
    if search:
        met = "met" if search["met"] else "NOT met"
        console.print(f"  float layers chosen for top-1 agreement >= {search['min_agreement']:.1%} ({met}: "
                      f"{search['top1_agreement']:.1%} on {search['agreement_crops']} calibration crops, "
                      f"{len(search['tried'])} recipes tried)")
    if "agreement" in exported.extra:
        console.print(f"  expression top-1 agreement with fp32 on {AGREEMENT_CROPS} face crops: "
                      f"{exported.extra['agreement']:.1%} (emoengine bench measures it on more)")


def _print_engine(console, exported) -> None:
    from emoengine.export.engine_cache import sidecar_path

    console.print(f"TensorRT engine [bold]{exported.path}[/bold] ({exported.extra['precision']}, batch "
                  f"1..{exported.extra['max_batch']}); sidecar {sidecar_path(exported.path).name}")


PRINTERS = {"onnx": _print_onnx, "fp16": _print_fp16, "engine": _print_engine}   # every other step: an int8 one
