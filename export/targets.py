"""`emoengine export` as a table: what each request makes, step by step, from a checkpoint or a given ONNX.

Every export is a chain of steps over one artifact: `onnx` (the checkpoint exported to fp32 ONNX and verified
against PyTorch), then `fp16` (converted, fp32 kept where measured necessary) or `int8` (static QDQ calibrated
on face crops: `int8-u8s8` for ONNX Runtime, `int8-s8s8`, symmetric, for TensorRT), then
`engine` (a TensorRT engine, cached per GPU and TensorRT version). A request's precision, `--target` (which
runtime the ONNX is for: ort, or trt, the default with `--trt`) and `--trt` pick a row of TARGETS, which is
derived from the artifact table (export.artifacts: the same chains and file names the backends' lazy preparation
uses); `--onnx FILE` enters the chain after the `onnx` step. The CLI only parses into an ExportRequest and
prints the reports this returns.
"""

from __future__ import annotations

import functools
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from emoengine.errors import UserInputError
from emoengine.export.artifacts import (
    ARTIFACTS,
    DEFAULT_OPSET,
    ENGINE,
    artifact_path,
    chain,
    export_stem,
    for_target,
    given_steps,
    target_precisions,
)
from emoengine.paths import model_file

AGREEMENT_CROPS = 32  # int8 vs fp32 top-1 agreement printed after export (bench measures it on more)


@dataclass(frozen=True)
class ExportRequest:
    """The options of `emoengine export`, parsed."""

    weights: str | None = None
    classes: int | None = None
    output: Path | None = None
    full_taps: bool = False
    opset: int = DEFAULT_OPSET
    verify: bool = True
    precision: str = "fp32"
    trt: bool = False                        # also build the TensorRT engine
    target: str | None = None                # the runtime the ONNX is for: ort | trt (None: trt with --trt, else ort)
    max_batch: int = 64
    onnx: Path | None = None                 # start from this ONNX instead of exporting --weights
    calibration_crops: int = 64
    calibration_method: str = "minmax"
    keep_float: str | None = None            # int8: layer groups left in float, as typed
    min_agreement: float | None = None       # int8: choose keep_float by measurement (export.int8_search)
    taps: tuple[str, ...] = ()               # more outputs: EmoNet module paths (export.taps), full tensors


@dataclass(frozen=True)
class ExportTarget:
    """One row: the steps from a checkpoint and from `--onnx`, and why a request that lacks one is refused."""

    from_weights: tuple[str, ...] | None
    from_onnx: tuple[str, ...] | None
    no_weights: str = "give weights (a .pth checkpoint or 'random') or, with trt, onnx"
    no_onnx: str = "onnx is the source of trt (or of precision fp16); add one of them"




def _engine_option() -> str:
    """The request field that also builds an engine: named after the runtime that builds one (the backends' row
    ENGINE_TARGET), so that a refusal names it without spelling a backend here; KeyError if the two part."""
    from emoengine.engine.backends import ENGINE_TARGET

    return ExportRequest.__dataclass_fields__[ENGINE_TARGET].name


ENGINE_OPTION = _engine_option()
# the options a refusal below names, by their Python names (the CLI shows them as flags)
NAMED = ("weights", "onnx", ENGINE_OPTION, "precision")
INT8_FROM_WEIGHTS = "precision int8 needs weights (a .pth checkpoint or 'random')"
INT8_FROM_ONNX = ("precision int8 quantises an export of weights; for a TensorRT int8 engine from a QDQ model "
                  "add trt")
FP32_FROM_WEIGHTS = "weights is required (a .pth checkpoint or 'random')"


# the refusals of a precision whose chain cannot start where a request starts (default: ExportTarget's)
NO_WEIGHTS = {"fp32": FP32_FROM_WEIGHTS, "int8": INT8_FROM_WEIGHTS}
NO_ONNX = {"int8": INT8_FROM_ONNX}


def _target(steps: tuple[str, ...], precision: str, **messages: str) -> ExportTarget:
    """A chain's row: from weights all of it; from `--onnx` what a given model goes through after the export."""
    from_onnx = given_steps(steps, "fp32") or None
    defaults = {"no_weights": NO_WEIGHTS.get(precision, ""), "no_onnx": NO_ONNX.get(precision, "")}
    return ExportTarget(steps, from_onnx, **{k: v for k, v in {**defaults, **messages}.items() if v})


def _table() -> dict[tuple[str, str, bool], ExportTarget]:
    """(precision, --target, --trt) -> the chain, from the artifact table (export.artifacts): for each runtime of
    engine.backends.EXPORT_TARGETS and each precision, the chain to that precision's artifact for the runtime
    (an int8 one quantises in the flavour its runtime runs); only ENGINE_TARGET builds an engine, from it."""
    from emoengine.engine.backends import ENGINE_TARGET, EXPORT_TARGETS

    table: dict[tuple[str, str, bool], ExportTarget] = {}
    for runtime in EXPORT_TARGETS:
        for precision in target_precisions():
            steps = chain(for_target(precision, runtime).name)
            table[(precision, runtime, False)] = _target(steps, precision)
            if runtime == ENGINE_TARGET:
                table[(precision, runtime, True)] = _target(
                    (*steps, ENGINE), precision, no_weights=ENGINE_FROM_WEIGHTS.get(precision, ""))
    return table


ENGINE_FROM_WEIGHTS = {"int8": "TensorRT int8 builds from the QDQ model of `export --precision int8 --target trt`: "
                               "give weights, or that model with onnx"}
TARGETS = _table()
TARGET_RUNTIMES = tuple(dict.fromkeys(t for _, t, _ in TARGETS))
PRECISIONS = tuple(dict.fromkeys(p for p, _, _ in TARGETS))
# int8 step -> its QDQ flavour (export.quantize.INT8_FORMATS)
INT8_STEPS = {name: name.removeprefix("int8-") for name, row in ARTIFACTS.items() if row.precision == "int8"}


@dataclass
class Exported:
    """What one step wrote: the step, the file, the step's own report, and whether the file was a temporary."""

    step: str
    path: Path
    report: object = None
    temporary: bool = False
    last: bool = False        # the chain's last step
    extra: dict = field(default_factory=dict)


def steps_for(request: ExportRequest) -> tuple[str, ...]:
    """The chain for `request`, checked before any work (one line, exit 2 when the request cannot be met)."""
    if request.precision not in PRECISIONS:
        raise UserInputError(f"precision must be {', '.join(PRECISIONS[:-1])} or {PRECISIONS[-1]}, "
                             f"not {request.precision!r}", options=("precision",))
    _check_int8_options(request)
    runtime = target_runtime(request)
    target = TARGETS.get((request.precision, runtime, request.trt))
    if target is None:   # options that contradict each other, whatever is installed
        raise UserInputError(f"trt builds a TensorRT engine: drop target {runtime} (the engine's ONNX is made "
                             "for TensorRT)", options=(ENGINE_OPTION, "target"))
    if request.trt:
        from emoengine.engine.backends.cuda import require_tensorrt

        if request.max_batch < 1:
            raise UserInputError(f"max_batch must be at least 1, not {request.max_batch}", options=("max_batch",))
        require_tensorrt()   # then: without TensorRT nothing else matters
    steps = target.from_onnx if request.onnx is not None else target.from_weights
    if steps is None:
        raise UserInputError(target.no_onnx if request.onnx is not None else target.no_weights, options=NAMED)
    if request.onnx is None and request.weights is None:
        raise UserInputError(target.no_weights, options=NAMED)
    if request.taps:
        _check_taps(request)
    if request.onnx is not None:
        model_file(request.onnx)
    for step in steps:
        if step in INT8_STEPS:
            from emoengine.export.quantize import check_recipe, parse_keep_float

            check_recipe(request.calibration_crops, request.calibration_method, parse_keep_float(request.keep_float),
                         flavour=INT8_STEPS[step])
    return steps


def target_runtime(request: ExportRequest) -> str:
    """--target as given; else the engine's runtime with --trt, and the first runtime (ONNX Runtime) without."""
    from emoengine.engine.backends import ENGINE_TARGET

    runtime = request.target or (ENGINE_TARGET if request.trt else TARGET_RUNTIMES[0])
    if runtime not in TARGET_RUNTIMES:
        raise UserInputError(f"target must be {' or '.join(TARGET_RUNTIMES)}, not {runtime!r}", options=("target",))
    return runtime


def _check_int8_options(request: ExportRequest) -> None:
    """--keep-float and --min-agreement choose an int8 export's float layers: one or the other, int8 only."""
    from emoengine.export.int8_search import check_min_agreement

    for option, value in (("keep_float", request.keep_float), ("min_agreement", request.min_agreement)):
        if value is not None and request.precision != "int8":
            raise UserInputError(f"{option} chooses the layers an int8 export leaves in float: add precision int8",
                                 options=(option, "precision"))
    if request.keep_float is not None and request.min_agreement is not None:
        raise UserInputError("give keep_float (the float layers) or min_agreement (measure them), not both",
                             options=("keep_float", "min_agreement"))
    check_min_agreement(request.min_agreement)


def _check_taps(request: ExportRequest) -> None:
    """Tap names are checked against the module tree before any file is read."""
    from emoengine.export.taps import check_taps, emonet_module_paths

    if request.onnx is not None:
        raise UserInputError("taps applies to an export from weights; an onnx model has the taps it was "
                             "exported with", options=("taps", "weights", "onnx"))
    check_taps(request.taps, emonet_module_paths())


def run_export(request: ExportRequest, say: Callable[[str], None],
               on_step: Callable[[Exported], None] = lambda _e: None) -> list[Exported]:
    """Run the request's chain, each step's file feeding the next; `on_step` hears of each step as it ends.
    `--output` names the last file of the chain; the ONNX an engine is built from is kept (default: in models/),
    the fp32 ONNX an fp16 or int8 file is made from is a temporary."""
    steps = steps_for(request)
    loaded, default, onnx = None, None, request.onnx
    if onnx is None:
        from emoengine.export.checkpoint import load_emonet

        assert request.weights is not None   # steps_for refuses a request with neither weights nor onnx
        loaded = load_emonet(request.weights, request.classes)
        stem = export_stem(loaded.num_classes, loaded.is_random)
    files = [s for s in steps if s != ENGINE]
    done: list[Exported] = []
    source = request.onnx
    with tempfile.TemporaryDirectory(prefix="emoengine-export-") as tmp:
        for step in steps:
            default = artifact_path(step, stem) if onnx is None else artifact_path(step, onnx.stem, onnx.parent)
            temporary = step != ENGINE and step != files[-1] and ENGINE not in steps
            if temporary:
                target = artifact_path(step, "fp32", tmp)
            else:
                target = _final(request.output, default) if files and step == files[-1] else default
            result = STEPS[step](request, loaded, source, target, say)
            result.temporary, result.last = temporary, step == steps[-1]
            on_step(result)
            done.append(result)
            source = result.path
    return done


def _final(output: Path | None, default: Path) -> Path:
    """--output as given; a folder gets the default name (without `-random`)."""
    if output is None:
        return default
    return output / default.name.replace("-random", "") if output.is_dir() else output


def _onnx_step(request: ExportRequest, loaded, source, target: Path, say) -> Exported:
    from emoengine.export.onnx_export import export_onnx

    report = export_onnx(loaded, target, full_taps=request.full_taps, opset=request.opset, verify=request.verify,
                         taps=request.taps)
    return Exported("onnx", report.path, report)


def _fp16_step(request: ExportRequest, loaded, source: Path, target: Path, say) -> Exported:
    from emoengine.export.artifacts import onnx_precision
    from emoengine.export.fp16 import export_fp16

    if onnx_precision(source) != "fp32":   # already fp16 (or int8): nothing to convert
        return Exported("fp16", source)
    say("converting to fp16: measuring activation ranges, then emulated-fp16 parity (about 30 s on 2 CPU cores)...")
    report = export_fp16(source, target)
    return Exported("fp16", report.path, report)


def _int8_step(request: ExportRequest, loaded, source: Path, target: Path, say, step: str) -> Exported:
    from emoengine.export.quantize import parse_keep_float, quantize_int8

    flavour = INT8_STEPS[step]
    if request.min_agreement is not None:
        report = choose_keep_float(request, source, target, flavour, say)
    else:
        report = quantize_int8(source, target, request.calibration_crops, request.calibration_method,
                               parse_keep_float(request.keep_float), flavour=flavour)
    extra = {"agreement": int8_agreement(source, report.path, AGREEMENT_CROPS)} if request.verify else {}
    return Exported(step, report.path, report, extra=extra)


def choose_keep_float(request: ExportRequest, source: Path, target: Path, flavour: str, say):
    """--min-agreement: the layer groups kept in float, searched on the calibration crops (export.int8_search),
    each candidate quantised into a scratch folder with the calibration ranges shared; the chosen one, its
    recipe noting the search, becomes `target` (its Int8Report)."""
    from emoengine.export.face_crops import CALIBRATION_SEED, face_crops
    from emoengine.export.int8_search import AgreementCheck, search_keep_float, search_record
    from emoengine.export.quantize import quantize_int8, record_search

    n, min_agreement = request.calibration_crops, request.min_agreement
    if min_agreement is None:
        raise ValueError("choose_keep_float searches for request.min_agreement, which is not set")
    check = AgreementCheck.against_model(source, face_crops(n, seed=CALIBRATION_SEED))
    cache = target.with_name(f"{target.stem}.calib-conv-{request.calibration_method}{n}.json")
    say(f"choosing the layers kept in float for top-1 agreement >= {request.min_agreement:.1%} on {n} "
        "calibration crops...")
    target.parent.mkdir(parents=True, exist_ok=True)   # the shared calibration cache goes beside the model
    reports = {}
    with tempfile.TemporaryDirectory(prefix="emoengine-int8-search-") as tmp:
        def make(keep: tuple[str, ...]) -> Path:
            out = Path(tmp) / f"{'+'.join(keep) or 'none'}.onnx"
            reports[keep] = quantize_int8(source, out, n, request.calibration_method, keep, calibration_cache=cache,
                                          flavour=flavour)
            return out

        best, trials = search_keep_float(make, check, min_agreement, say=say)
        if best.agreement < min_agreement:
            say(f"no recipe reaches {request.min_agreement:.1%}: the best, {best.agreement:.1%}, keeps "
                f"{', '.join(best.keep_float) or 'nothing'} in float")
        return record_search(reports[best.keep_float], search_record(best, trials, min_agreement, n), target)


def _engine_step(request: ExportRequest, loaded, source: Path, target, say) -> Exported:
    from emoengine.export.artifacts import onnx_precision
    from emoengine.export.trt_engine import engine_precision, ensure_engine

    precision = engine_precision(onnx_precision(source), request.precision, source)
    engine = ensure_engine(source, precision, request.max_batch, announce=say)
    return Exported("engine", engine, extra={"precision": precision, "max_batch": request.max_batch})


STEPS = {"onnx": _onnx_step, "fp16": _fp16_step, ENGINE: _engine_step,
         **{step: functools.partial(_int8_step, step=step) for step in INT8_STEPS}}


def int8_agreement(fp32_path: Path, int8_path: Path, n: int) -> float:
    """Expression top-1 agreement of the int8 model with the fp32 one on n face crops (export.face_crops)."""
    from emoengine.export.face_crops import EVALUATION_SEED, face_crops
    from emoengine.export.int8_search import AgreementCheck

    return AgreementCheck.against_model(fp32_path, face_crops(n, seed=EVALUATION_SEED))(int8_path)
