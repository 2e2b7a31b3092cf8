"""The artifact table: every file EmoNet runs from, what it is made from, by which step, under which names, and
which backends run it. `emoengine export` (export.targets) walks it with a request's options; the backends' lazy
preparation (export.prepare) walks it for a run. A new export precision is a new row here (and the step that
makes it, in both STEPS tables), nothing else.

`artifact_path` is the one naming function, `chain` the one walk from a checkpoint to an artifact, `load_onnx`
the one loader that refuses a file that is not an ONNX model, `DEFAULT_OPSET` the one opset default.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from emoengine.errors import UserInputError
from emoengine.paths import models_dir

DEFAULT_OPSET = 17        # `emoengine export --opset` and every lazy export
PER_PRECISION = "the ONNX of its precision"   # an engine's source: the fp32, fp16 or int8 model it is built from


@dataclass(frozen=True)
class Artifact:
    """One kind of file. `name` is also the step that makes it (export.targets.STEPS, export.prepare.STEPS)."""

    name: str
    what: str                      # the file in words, for notices and refusals
    precision: str                 # what its graph computes in: fp32 | fp16 | int8
    suffix: str                    # after the stem: `emonet8` + `.fp16.onnx` (export), `<cached source>` + it (cache)
    source: str | None             # the artifact it is made from; None: the checkpoint
    make: str                      # the function that does the work, for the table's readers
    cache: str                     # the name the lazy preparation caches it under
    backends: tuple[str, ...]      # the backend rows that run it as it is
    targets: tuple[str, ...] = ()  # the `export --target` runtimes it is made for (int8: one flavour each)
    from_given: bool = True        # made from a given ONNX too; False: a given ONNX stands for it as it is
    doing: str = "exporting"       # what the notice of a run that makes it first says


# name, what, precision, export's suffix, source, the function that makes it, the cache name, run by, made for
ARTIFACTS: dict[str, Artifact] = {row.name: row for row in (
    Artifact("onnx", "fp32 ONNX export", "fp32", ".onnx", None, "export.onnx_export.export_onnx",
             "emonet<C>-<sha12>[-fulltaps][-taps<n>-<hash>].onnx", ("ort", "ort-cuda"), ("ort", "trt")),
    Artifact("fp16", "fp16 ONNX conversion", "fp16", ".fp16.onnx", "onnx", "export.fp16.export_fp16",
             "<source stem>.fp16.onnx", ("ort-cuda",), ("ort", "trt"), doing="converting"),
    Artifact("int8-u8s8", "int8 QDQ ONNX (U8S8, ONNX Runtime's)", "int8", "-int8.onnx", "onnx",
             "export.quantize.quantize_int8", "<source stem>-<recipe>.onnx", ("ort-int8",), ("ort",),
             from_given=False, doing="quantising"),
    Artifact("int8-s8s8", "int8 QDQ ONNX (S8S8, TensorRT's)", "int8", "-int8-s8s8.onnx", "onnx",
             "export.quantize.quantize_int8", "<source stem>-<recipe>.onnx (the recipe ends -s8s8)", (), ("trt",),
             from_given=False, doing="quantising"),
    Artifact("engine", "TensorRT engine", "any", ".engine", PER_PRECISION, "export.trt_engine.ensure_engine",
             "<source stem>-<precision>-b<N>-<gpu>-trt<version>-<sha12>.engine", ("trt",), doing="building"),
)}
ENGINE = "engine"


def for_target(precision: str, runtime: str) -> Artifact:
    """The ONNX artifact of `precision` made for `runtime` (an `export --target`); KeyError when none is."""
    for row in ARTIFACTS.values():
        if row.precision == precision and runtime in row.targets:
            return row
    raise KeyError((precision, runtime))


def target_precisions() -> tuple[str, ...]:
    """The precisions `emoengine export` makes, in the table's order."""
    return tuple(dict.fromkeys(row.precision for row in ARTIFACTS.values() if row.targets))


def for_backend(backend: str, precision: str) -> Artifact:
    """The artifact a backend row runs at `precision`: the row that names it, of that precision (or any)."""
    for row in ARTIFACTS.values():
        if backend in row.backends and row.precision in (precision, "any"):
            return row
    raise KeyError((backend, precision))


def source_of(artifact: str, precision: str = "fp32") -> str | None:
    """What `artifact` is made from; an engine: the ONNX of its precision made for the runtime that builds it."""
    source = ARTIFACTS[artifact].source
    if source != PER_PRECISION:
        return source
    from emoengine.engine.backends import ENGINE_TARGET

    return for_target(precision, ENGINE_TARGET).name


def chain(artifact: str, precision: str = "fp32") -> tuple[str, ...]:
    """The steps from a checkpoint to `artifact`, first to last: `chain("engine", "fp16")` is onnx, fp16, engine."""
    steps: list[str] = []
    step: str | None = artifact
    while step is not None:
        steps.insert(0, step)
        step = source_of(step, precision)
    return tuple(steps)


def given_steps(steps: tuple[str, ...], given_precision: str) -> tuple[str, ...]:
    """The steps left of a chain when a given ONNX of `given_precision` enters it: those after the step of that
    precision that a given model goes through (quantising is for an export of weights: a given model stands for
    the int8 model as it is); none when the chain has no step of that precision (the model runs as it is)."""
    start = next((i for i, s in enumerate(steps) if ARTIFACTS[s].precision == given_precision), None)
    if start is None:
        return ()
    return tuple(s for s in steps[start + 1:] if ARTIFACTS[s].from_given)


def artifact_path(artifact: str, stem: str, folder: str | os.PathLike | None = None, tag: str = "") -> Path:
    """The one naming function: `<folder>/<stem><suffix>`, or `<stem>-<tag>.<ext>` where a tag names what the
    file was made with (an int8 recipe, an engine's build keys). `emoengine export` names from the export's stem
    (`emonet8`, `emonet8-random`, a given ONNX's stem), the lazy cache from the cached source's stem."""
    row = ARTIFACTS[artifact]
    ext = row.suffix[row.suffix.rindex("."):]
    name = f"{stem}-{tag}{ext}" if tag else f"{stem}{row.suffix}"
    return Path(folder if folder is not None else models_dir()) / name


def export_stem(num_classes: int, random: bool) -> str:
    """The stem of `emoengine export`'s files: emonet8, emonet8-random."""
    return f"emonet{num_classes}{'-random' if random else ''}"


def cache_stem(num_classes: int, tag: str, full_taps: bool, taps=()) -> str:
    """The stem of a cached export: emonet<C>-<sha12|random>[-fulltaps][-taps<n>-<hash>] (one per tap set)."""
    from emoengine.export.taps import taps_tag

    return f"emonet{num_classes}-{tag}{'-fulltaps' if full_taps else ''}{taps_tag(taps)}"


def load_onnx(path: str | os.PathLike, external_data: bool = False):
    """onnx.ModelProto of `path`, or one UserInputError line when it is not an ONNX model."""
    import onnx

    from emoengine.errors import first_line
    from emoengine.paths import model_file

    model_file(path)
    try:
        return onnx.load(str(path), load_external_data=external_data)
    except Exception as e:  # noqa: BLE001  protobuf DecodeError, onnx's own types and friends
        raise UserInputError(f"not an ONNX model: {path} ({first_line(e)})") from None


def onnx_precision(onnx_path: str | os.PathLike) -> str:
    """fp32 / fp16 / int8, read off the graph: QuantizeLinear nodes = QDQ int8, fp16 initializers = fp16."""
    import onnx

    model = load_onnx(onnx_path)
    if any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node):
        return "int8"
    if any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer):
        return "fp16"
    return "fp32"
