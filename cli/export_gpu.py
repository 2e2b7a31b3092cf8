"""`emoengine export --precision fp16` and `export --trt`: the fp16 ONNX and the TensorRT engine, from the same
fp32 export (or a given ONNX, e.g. the QDQ int8 model). Called by export_cmd; kept apart so the plain export stays
as it was."""

from __future__ import annotations

import os
from pathlib import Path

from emoengine.errors import UserInputError
from emoengine.paths import models_dir


def export_gpu(weights: str | None, classes: int | None, output: Path | None, full_taps: bool, opset: int,
               precision: str, trt: bool, max_batch: int, onnx_source: Path | None, taps: tuple[str, ...] = ()) -> None:
    from rich.console import Console

    console = Console(highlight=False, soft_wrap=True)
    if max_batch < 1:
        raise UserInputError(f"--max-batch must be at least 1, not {max_batch}")
    if trt:  # first: without TensorRT or a GPU nothing else about the request matters (and nothing is written)
        from emoengine.engine.trt_runner import require_tensorrt

        require_tensorrt()
    if precision == "int8" and not trt:
        raise UserInputError("--precision int8 here means a TensorRT int8 engine: add --trt and give the QDQ model "
                             "with --onnx")
    if onnx_source is not None and not trt and precision != "fp16":
        raise UserInputError("--onnx is the source of --trt (or of --precision fp16); add one of them")
    if precision == "int8" and onnx_source is None:
        raise UserInputError("TensorRT int8 builds from the QDQ model of `emoengine export --precision int8`: "
                             "pass it with --onnx")
    if onnx_source is not None and taps:
        raise UserInputError("--taps applies to an export from --weights; an --onnx model has the taps it was "
                             "exported with")
    if onnx_source is not None:
        if not onnx_source.is_file():
            raise UserInputError(f"no such model file: {onnx_source}")
        source = onnx_source
        temp = None
    else:
        if weights is None:
            raise UserInputError("give --weights (a .pth checkpoint or 'random') or, with --trt, --onnx")
        from emoengine.export.checkpoint import load_emonet
        from emoengine.export.onnx_export import export_onnx

        loaded = load_emonet(weights, classes)
        fp32_out = output if (trt and output is not None and precision == "fp32") else None
        if precision == "fp16" and not trt:
            final = output or models_dir() / f"emonet{loaded.num_classes}{'-random' if loaded.is_random else ''}.fp16.onnx"
            if final.is_dir():
                final = final / f"emonet{loaded.num_classes}.fp16.onnx"
            fp32_out = final.with_name(f".{final.stem}.{os.getpid()}.fp32.onnx")
        elif fp32_out is None:
            fp32_out = models_dir() / f"emonet{loaded.num_classes}{'-random' if loaded.is_random else ''}.onnx"
        report = export_onnx(loaded, fp32_out, full_taps=full_taps, opset=opset, verify=True, taps=taps)
        source = report.path
        temp = source if precision == "fp16" and not trt else None
        if temp is None:
            console.print(f"wrote [bold]{source}[/bold] (fp32, verified against PyTorch)")
    try:
        if precision == "fp16":
            from emoengine.engine.trt_runner import onnx_precision
            from emoengine.export.fp16 import export_fp16

            if onnx_precision(source) == "fp32":
                fp16_out = final if (temp is not None) else (
                    output if (output is not None and not trt) else source.with_name(f"{source.stem}.fp16.onnx"))
                console.print("converting to fp16: measuring activation ranges, then emulated-fp16 parity "
                              "(about 30 s on 2 CPU cores)...")
                rep = export_fp16(source, fp16_out)
                console.print(f"wrote [bold]{rep.path}[/bold] ({rep.size_bytes / 1e6:.1f} MB, fp16) in "
                              f"{rep.convert_s:.1f} s; largest fp32 activation {rep.max_abs:.0f} (fp16 max 65504); "
                              f"kept fp32: {', '.join(rep.kept_fp32) or 'nothing'}")
                console.print("  emulated fp16 vs fp32, worst rel. diff (tolerance): " + ", ".join(
                    f"{k} {v:.1e} ({rep.tolerance[k]:g})" for k, v in rep.worst_rel_diff.items()))
                source = rep.path
    finally:
        if temp is not None:
            Path(temp).unlink(missing_ok=True)
    if trt:
        from emoengine.engine.trt_runner import engine_precision, ensure_engine, onnx_precision, sidecar_path

        built_precision = engine_precision(onnx_precision(source), precision, source)
        engine = ensure_engine(source, built_precision, max_batch, announce=lambda m: console.print(m))
        console.print(f"TensorRT engine [bold]{engine}[/bold] ({built_precision}, batch 1..{max_batch}); "
                      f"sidecar {sidecar_path(engine).name}")
