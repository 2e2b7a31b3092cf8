"""The backends' lazy preparation: the artifact a run needs, made once from its weights (or from its given ONNX)
along the artifact table's chain (export.artifacts) and cached, so that `run --weights` works without an
`emoengine export` first. Each step that must do work first says so in one INFO line; a request with
`no_implicit_export` is refused instead (exit 2), naming the `emoengine export` command that makes the file.

Each function takes the request that names the model (anything with `weights`, `classes`, `full_taps`, `taps`,
e.g. engine.backends.ModelRequest), so that a new property of a model is one new field of the request.
"""

from __future__ import annotations

import functools
import logging
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from emoengine.errors import UserInputError, warn_random_weights
from emoengine.export.artifacts import (
    ARTIFACTS,
    ENGINE,
    artifact_path,
    cache_stem,
    chain,
    given_steps,
    load_onnx,
    onnx_precision,
)
from emoengine.paths import model_file, sha256_file

log = logging.getLogger(__name__)


def prepare(request, artifact: str, precision: str = "fp32", given_precision: str | None = None) -> Path:
    """The file of `artifact` for `request`: each step of its chain from the weights, or those left after the
    request's given model (of `given_precision`, read off the graph unless given), found or made once."""
    steps = chain(artifact, precision)
    source: Path | None = None
    if request.model is not None:
        source = model_file(request.model)
        steps = given_steps(steps, given_precision or onnx_precision(source)) if len(steps) > 1 else ()
    notice = Notice(request, artifact, precision)
    for step in steps:
        source = STEPS[step](request, source, precision, notice)
    assert source is not None   # a chain starts at the weights' export, or at the given model
    return source


@dataclass(frozen=True)
class Notice:
    """What a step says before it does work: one INFO line, or, with no_implicit_export, the refusal."""

    request: Any
    artifact: str        # the artifact the run needs (the chain's end)
    precision: str

    def check(self) -> None:
        """Refuse here when the request forbids implicit exports (before anything slow is imported)."""
        if getattr(self.request, "no_implicit_export", False):
            source = getattr(self.request, "model", None) or getattr(self.request, "weights", None)
            raise UserInputError(f"this run must make the {ARTIFACTS[self.artifact].what} of {source} first, and "
                                 f"no_implicit_export is set: run `{export_command(self)}` and pass the file "
                                 "it writes as model", options=("no_implicit_export", "model"))

    def __call__(self, step: str, source, path: Path, why: str = "") -> None:
        self.check()
        log.info(f"{ARTIFACTS[step].doing} {source} to {path} first (once; cached{'; ' + why if why else ''})")


def export_command(notice: Notice) -> str:
    """The `emoengine export` command line that makes the artifact a notice is about, from the request."""
    request = notice.request
    model = getattr(request, "model", None)
    words = ["emoengine export", *(["--onnx", shlex.quote(str(model))] if model is not None else
                                   ["--weights", shlex.quote(str(getattr(request, "weights", None)))])]
    if getattr(request, "classes", None) and model is None:
        words += ["--classes", str(request.classes)]
    if getattr(request, "full_taps", False) and model is None:
        words.append("--full-taps")
    if getattr(request, "taps", ()) and model is None:
        words += ["--taps", shlex.quote(",".join(request.taps))]
    if notice.precision != "fp32":
        words += ["--precision", notice.precision]
    if notice.artifact == ENGINE:
        from emoengine.engine.backends.tensorrt import engine_max_batch

        words += ["--trt", "--max-batch", str(engine_max_batch(request))]
    elif ARTIFACTS[notice.artifact].targets[:1] != ARTIFACTS["onnx"].targets[:1]:
        words += ["--target", ARTIFACTS[notice.artifact].targets[0]]
    return " ".join(words)


# --- the steps: each finds its cached file, or makes it after the notice ------------------------------------------


def cached_onnx_for(request, notice: Notice | None = None) -> Path:
    """Export the request's weights to ONNX once and reuse it (artifacts: the `onnx` row's cache name)."""
    if (found := _current_export(request)) is not None:
        return found
    notice = notice or Notice(request, "onnx", "fp32")
    notice.check()
    try:
        from emoengine.export.checkpoint import load_emonet
        from emoengine.export.onnx_export import export_onnx
    except ImportError as e:
        raise UserInputError("exporting weights to ONNX needs PyTorch: pip install torch, or pass model "
                             "(an exported .onnx)", options=("model",)) from e
    loaded = load_emonet(request.weights, request.classes)
    path = _export_path(request, loaded.num_classes, "random" if loaded.is_random else loaded.sha256[:12])
    from emoengine import __version__

    stale = path.is_file() and _exporter_version(path) != __version__
    if stale or not path.is_file():   # a different exporter may have made a different graph
        notice("onnx", request.weights, path, "made by another emoengine" if stale else "")
        path.parent.mkdir(parents=True, exist_ok=True)
        export_onnx(loaded, path, full_taps=request.full_taps, verify=False, taps=sorted(set(request.taps)))
    return path


def _export_path(request, num_classes: int, tag: str) -> Path:
    return artifact_path("onnx", cache_stem(num_classes, tag, request.full_taps, request.taps))


def _current_export(request) -> Path | None:
    """The export cached_onnx_for made earlier, found without PyTorch, whose import alone keeps ~200 MB resident
    for the whole run: `random` names its file by class count, a checkpoint by its sha256 (the one file of that
    hash; the class count is checked when the model opens). None: not made yet, or by another emoengine."""
    from emoengine import __version__

    weights = str(request.weights)
    if weights == "random":
        paths = [_export_path(request, request.classes or 8, "random")]
    elif Path(weights).is_file():
        tag = sha256_file(weights)[:12]
        paths = [_export_path(request, c, tag) for c in ((request.classes,) if request.classes else (5, 8))]
    else:
        return None
    found = [path for path in paths if path.is_file()]
    if len(found) != 1 or _exporter_version(found[0]) != __version__:
        return None
    if weights == "random":
        warn_random_weights()
    return found[0]


def _exporter_version(path: Path) -> str | None:
    """The emoengine version an export's metadata records (None: unreadable, so it is exported again)."""
    try:
        props = load_onnx(path).metadata_props
    except UserInputError:
        return None
    return next((p.value for p in props if p.key == "emoengine_version"), None)


def cached_int8_onnx_for(request, calibration_crops: int | None = None, method: str | None = None,
                         keep_float: tuple[str, ...] | None = None, ops: str | None = None,
                         flavour: str | None = None, fp32: Path | None = None,
                         notice: Notice | None = None) -> Path:
    """The int8 model of the request's weights (or of `fp32`, their export) for a recipe (the default recipe
    unless given) in a QDQ flavour (export.quantize.INT8_FORMATS; default ONNX Runtime's), made once:
    `<fp32 stem>-<recipe>.onnx`, the flavour part of the recipe's name so that each flavour is cached apart."""
    from emoengine.export import quantize
    from emoengine.export.onnx_export import read_metadata

    calibration_crops = calibration_crops or quantize.DEFAULT_CALIBRATION_CROPS
    method = method or quantize.DEFAULT_METHOD
    keep_float = tuple(sorted(quantize.DEFAULT_KEEP_FLOAT if keep_float is None else keep_float))
    ops = ops or quantize.DEFAULT_OPS
    flavour = flavour or quantize.DEFAULT_FORMAT
    fp32 = fp32 or cached_onnx_for(request)   # the int8 name and ranges follow its tap tag
    tag = quantize.recipe_tag(calibration_crops, method, keep_float, ops, flavour)
    path = artifact_path(f"int8-{flavour}", fp32.stem, fp32.parent, tag=tag)
    if path.is_file() and path.stat().st_mtime >= fp32.stat().st_mtime and \
            read_metadata(path).get("precision") == "int8":
        return path
    (notice or Notice(request, f"int8-{flavour}", "int8"))(f"int8-{flavour}", fp32.name, path)
    # ranges depend on the fp32 model, the method and the crops, not on which layers stay float nor on the
    # flavour: shared
    cache = fp32.with_name(f"{fp32.stem}.calib-{ops}-{method}{calibration_crops}.json")
    quantize.quantize_int8(fp32, path, calibration_crops, method, keep_float, calibration_cache=cache, ops=ops,
                           flavour=flavour)
    return path


def cached_fp16_onnx(fp32_path: Path, notice: Notice | None = None) -> Path:
    """<stem>.fp16.onnx beside the fp32 model, converted once (and again when the fp32 model changes)."""
    from emoengine.engine.outputs.writers import write_bytes_atomic
    from emoengine.export.fp16 import export_fp16

    out = artifact_path("fp16", fp32_path.stem, fp32_path.parent)
    stamp = out.with_name(out.name + ".source-sha256")
    sha = sha256_file(fp32_path)
    if out.is_file() and stamp.is_file() and stamp.read_text().strip() == sha:
        return out
    (notice or Notice(None, "fp16", "fp16"))("fp16", fp32_path.name, out, "fp32 kept where measured necessary")
    export_fp16(fp32_path, out)
    try:
        write_bytes_atomic(stamp, sha.encode())
    except OSError as e:
        raise UserInputError(f"cannot write {stamp}: {e.strerror or e}") from e
    return out


def _engine(request, source: Path, precision: str, notice: Notice) -> Path:
    from emoengine.engine.backends.tensorrt import engine_max_batch
    from emoengine.export.trt_engine import ensure_engine

    return ensure_engine(source, precision, engine_max_batch(request), before=notice)


def _int8(request, source: Path | None, precision: str, notice: Notice, flavour: str) -> Path:
    return cached_int8_onnx_for(request, flavour=flavour, fp32=source, notice=notice)


STEPS = {
    "onnx": lambda request, source, precision, notice: cached_onnx_for(request, notice),
    "fp16": lambda request, source, precision, notice: cached_fp16_onnx(source, notice),
    ENGINE: _engine,
    **{name: functools.partial(_int8, flavour=name.removeprefix("int8-"))
       for name, row in ARTIFACTS.items() if row.precision == "int8"},
}
