"""`emoengine export --precision int8`: fp32 export (verified as usual), then static int8 quantisation of it."""

from __future__ import annotations

import tempfile
from pathlib import Path

from emoengine.paths import models_dir

AGREEMENT_CROPS = 32  # int8 vs fp32 top-1 agreement printed after export (bench measures it on more)


def export_int8(weights: str, classes: int | None, output: Path | None, full_taps: bool, opset: int, verify: bool,
                calibration_crops: int, method: str, keep_float_text: str | None, taps: tuple[str, ...] = ()) -> None:
    from rich.console import Console

    from emoengine.export.checkpoint import load_emonet
    from emoengine.export.onnx_export import export_onnx
    from emoengine.export.quantize import check_recipe, parse_keep_float, quantize_int8

    keep_float = parse_keep_float(keep_float_text)
    check_recipe(calibration_crops, method, keep_float)  # before any work
    loaded = load_emonet(weights, classes)
    if output is None:
        tag = "-random" if loaded.is_random else ""
        output = models_dir() / f"emonet{loaded.num_classes}{tag}-int8.onnx"
    elif output.is_dir():
        output = output / f"emonet{loaded.num_classes}-int8.onnx"
    console = Console(highlight=False)
    with tempfile.TemporaryDirectory(prefix="emoengine-int8-") as tmp:
        fp32 = export_onnx(loaded, Path(tmp) / "fp32.onnx", full_taps=full_taps, opset=opset, verify=verify,
                           taps=taps)  # taps stay float32 outputs; the quantised graph is the same without them
        if fp32.worst_rel_diff is not None:
            console.print(f"fp32 export verified (worst rel. diff {max(fp32.worst_rel_diff.values()):.1e})")
        report = quantize_int8(fp32.path, output, calibration_crops, method, keep_float)
        console.print(f"wrote [bold]{report.path}[/bold] ({report.path.stat().st_size / 1e6:.1f} MB) in "
                      f"{report.quantize_s:.1f} s: {report.quantized_nodes} Conv/Gemm in int8, {report.float_nodes} "
                      f"kept float ({', '.join(keep_float) or 'none'})")
        console.print(f"  calibration: {method} on {calibration_crops} face crops, ranges cached in "
                      f"{report.calibration_cache}")
        if verify:
            agreement = int8_agreement(fp32.path, report.path, AGREEMENT_CROPS)
            console.print(f"  expression top-1 agreement with fp32 on {AGREEMENT_CROPS} face crops: "
                          f"{agreement:.1%} (emoengine bench measures it on more)")


def int8_agreement(fp32_path: Path, int8_path: Path, n: int) -> float:
    from emoengine.engine.backends import OrtRunner
    from emoengine.export.face_crops import EVALUATION_SEED, face_crops

    crops = face_crops(n, seed=EVALUATION_SEED)
    top = []
    for path in (fp32_path, int8_path):
        with OrtRunner(path) as runner:
            top.append(runner.infer(crops)["expression"].argmax(1))
    return float((top[0] == top[1]).mean())
